"""Evaluators, in the manner of big_vision's: ``make(kind, **kwargs).run(model) -> dict`` (JSON-able).

* ``"oneshot"``: :class:`OneShot` (tasks; accuracy, Wilson CI, trials, groupings);
* ``"verification"``: :class:`Verification` (pairs; threshold from validation pairs, a given one or
  the EER of these pairs; accuracy, ROC AUC, EER);
* ``"retrieval"``: :class:`Retrieval` (labelled images; precision@1, recall@k, MAP@R).

``model`` is what the images go through: siamax Params or an embedder (``embedders``):
:class:`ModelEmbedder` (a siamax network), :class:`EnsembleEmbedder` (several: mean probability; a
``siamax.Ensemble`` becomes one), :func:`with_tta` (test-time augmentation: an ensemble of one model
under fixed distortions),
:class:`PixelEmbedder` (raw pixels, the baseline) or :class:`EigenfaceEmbedder` (PCA fitted on training
images, the face baseline), :class:`MfccDtwEmbedder` and :class:`MfccMeanEmbedder` (MFCCs of log-mel
images by DTW or by their mean: the audio baselines), so
the model and its baselines are scored by one evaluator on the very same trials. After ``run`` an
evaluator's ``figures`` hold what the plots need (arrays, not in the result), or ``None``.
"""

from __future__ import annotations

from siamax.evaluators.embedders import (
    EigenfaceEmbedder,
    EnsembleEmbedder,
    MfccDtwEmbedder,
    MfccMeanEmbedder,
    ModelEmbedder,
    PixelEmbedder,
    as_embedder,
    dtw_distance,
    embed_blocks,
    ink_vectors,
    score_pairs,
    with_tta,
)
from siamax.evaluators.oneshot import TIES, OneShot, one_shot_accuracy, proportion, trial_credit, wilson_interval
from siamax.evaluators.retrieval import Retrieval
from siamax.evaluators.verification import Verification

REGISTRY = {"oneshot": OneShot, "verification": Verification, "retrieval": Retrieval}

__all__ = [
    "REGISTRY",
    "TIES",
    "EigenfaceEmbedder",
    "EnsembleEmbedder",
    "MfccDtwEmbedder",
    "MfccMeanEmbedder",
    "ModelEmbedder",
    "OneShot",
    "PixelEmbedder",
    "Retrieval",
    "Verification",
    "as_embedder",
    "dtw_distance",
    "embed_blocks",
    "ink_vectors",
    "make",
    "one_shot_accuracy",
    "proportion",
    "score_pairs",
    "trial_credit",
    "wilson_interval",
    "with_tta",
]


def make(kind: str, **kwargs):
    """The evaluator ``REGISTRY[kind](**kwargs)``."""
    if kind not in REGISTRY:
        raise ValueError(f"no evaluator {kind!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[kind](**kwargs)
