"""Retrieval: ``Retrieval(images, labels).run(model)``: precision@1, recall@k, MAP@R.

Every image is embedded (``embed`` with ``ink``) and, leave-one-out, a query against all the others
(or, with ``gallery`` and ``gallery_labels``, against that separate set), ranked by the embedder's own
energy and head (``siamax.metrics.retrieval_report``: its definitions; raw pixels rank by distance).
``run(model)`` returns ``{"precision_at_1", "recall_at_{k}", "map_at_r", "queries"}``; the evaluator's
``figures`` keep ``{"embeddings", "images", "labels"}`` of the last run for plots.
"""

from __future__ import annotations

import numpy as np

from siamax import metrics
from siamax.evaluators.embedders import as_embedder


class Retrieval:
    """Retrieval metrics of ``images`` with classes ``labels`` (module docstring).

    Args:
      images: (N, H, W) the queries (a table's model-format images: ``ink="light"``).
      labels: (N,) their classes.
      ink: the images' ink polarity, as ``embed`` takes it.
      k: recall@k's k.
      gallery, gallery_labels: a separate searched set (same ``ink``); default: leave-one-out.
      chunk: queries per ranking block (``metrics.knn``).
    """

    kind = "retrieval"

    def __init__(self, images, labels, *, ink: str = "light", k: int = 5, gallery=None, gallery_labels=None,
                 chunk: int = 256):  # fmt: skip
        if (gallery is None) != (gallery_labels is None):
            raise ValueError("gallery and gallery_labels go together: pass both or neither")
        self.images, self.labels, self.ink, self.k = images, labels, ink, int(k)
        self.gallery, self.gallery_labels, self.chunk = gallery, gallery_labels, chunk
        self.figures = None

    def run(self, model) -> dict:
        model = as_embedder(model)
        emb = np.asarray(model.embed(np.asarray(self.images), self.ink))
        gallery = None if self.gallery is None else np.asarray(model.embed(np.asarray(self.gallery), self.ink))
        result = metrics.retrieval_report(
            emb,
            self.labels,
            model.energy,
            model.head,
            self.k,
            gallery=gallery,
            gallery_labels=self.gallery_labels,
            chunk=self.chunk,
            dtype=model.dtype,
        )
        self.figures = {"embeddings": emb, "images": np.asarray(self.images), "labels": np.asarray(self.labels)}
        return result
