"""Verification (same / different pairs): ``Verification(images, pairs, ...).run(model)``.

Every pair of ``pairs`` (``siamax.data.Pairs``: rows i1, i2 of ``images`` and a label, 1 = same class)
gets the embedder's score (a siamax network: its same-class probability; raw pixels: ``-distance``
or cosine similarity), each image a pair uses embedded once. A pair is accepted as "same" when its
score is at least the threshold, which comes from, in this order:

* ``threshold``: a given one (e.g. the one a stored model was exported with): ``"given"``;
* ``validation=(images, pairs)``: chosen on those other pairs by ``siamax.metrics.choose_threshold``
  with ``rule`` ("accuracy": the most accurate threshold, the paper's protocol; "eer": where false
  accepts and false rejects are equally frequent): ``"validation"``;
* neither: the EER threshold of these very pairs: ``"eer_on_these_pairs"``, an optimistic accuracy.

``run(model)`` returns the JSON-able ``{"threshold", "threshold_from", "threshold_rule",
["validation_accuracy",] "accuracy", "ci95", "trials", "roc_auc", "eer", "eer_threshold", "pairs"}``
(``ci95``: Wilson's interval on the accuracy; ``trials`` = ``pairs``, the number of test pairs;
``threshold_rule`` is ``None`` for a given threshold). The raw scores, for plots, are left in the
evaluator's ``figures``: ``{"scores", "labels"}`` of the last run (NumPy arrays, not in the result).
"""

from __future__ import annotations

import numpy as np

from siamax import metrics
from siamax.evaluators.embedders import as_embedder, score_pairs
from siamax.evaluators.oneshot import proportion


class Verification:
    """Verification accuracy, ROC AUC and EER of ``pairs`` into ``images`` (module docstring).

    Args:
      images: (N, H, W) images the pairs index (a table's model-format images: ``ink="light"``).
      pairs: ``siamax.data.Pairs`` (i1, i2, label).
      ink: the images' ink polarity, as ``embed`` takes it.
      validation: ``(images, pairs)`` that choose the threshold by ``rule`` (same ``ink``).
      threshold: a given threshold (wins over ``validation``, which is then not scored), e.g. a stored
        model's; ``threshold_from`` says where it came from ("given" by default; a stored model's
        metadata says "validation", chosen on its validation classes, or "default").
      rule: ``siamax.metrics.choose_threshold``'s rule: "accuracy" (the paper's) or "eer".
    """

    kind = "verification"

    def __init__(
        self,
        images,
        pairs,
        *,
        ink: str = "light",
        validation=None,
        threshold=None,
        threshold_from: str = "given",
        rule: str = "accuracy",
    ):
        if rule not in metrics.THRESHOLD_RULES:
            raise ValueError(f"rule must be one of {metrics.THRESHOLD_RULES}, got {rule!r}")
        if validation is not None and len(validation) != 2:
            raise ValueError("validation must be (images, pairs)")
        self.images, self.pairs, self.ink = images, pairs, ink
        self.validation, self.threshold, self.rule = validation, threshold, rule
        self.threshold_from = threshold_from
        self.figures = None

    def run(self, model) -> dict:
        model = as_embedder(model)
        labels = np.asarray(self.pairs.label)
        scores = score_pairs(model, self.images, self.pairs.i1, self.pairs.i2, ink=self.ink)
        head: dict = {}
        if self.threshold is not None:
            t = float(self.threshold)
            head = {"threshold": t, "threshold_from": self.threshold_from, "threshold_rule": None}
        elif self.validation is not None:
            v_images, v_pairs = self.validation
            v_scores = score_pairs(model, v_images, v_pairs.i1, v_pairs.i2, ink=self.ink)
            t = float(metrics.choose_threshold(v_scores, v_pairs.label, self.rule))
            head = {
                "threshold": t,
                "threshold_from": "validation",
                "threshold_rule": self.rule,
                "validation_accuracy": metrics.accuracy_at(v_scores, v_pairs.label, t),
            }
        else:
            t = None
        report = metrics.verification_report(scores, labels, threshold=t)
        if t is None:
            t = report["threshold"]
            head = {"threshold": t, "threshold_from": "eer_on_these_pairs", "threshold_rule": "eer"}
        hits = ((np.asarray(scores) >= t) == (labels > 0)).astype(float)
        self.figures = {"scores": np.asarray(scores), "labels": labels}
        return {
            **head,
            **proportion(hits),
            "roc_auc": report["roc_auc"],
            "eer": report["eer"],
            "eer_threshold": report["eer_threshold"],
            "pairs": int(labels.size),
        }
