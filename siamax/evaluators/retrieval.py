"""Retrieval: ``Retrieval(images, labels).run(model)``: precision@1, recall@k, MAP@R.

Leave-one-out: every image (or, above ``max_queries`` images, that many drawn from ``seed``; fewer
where the queries' rankings, as deep as the largest class, would pass ``RANKED`` entries) a query
against all the others, ranked by the embedder's own energy and head (``siamax.metrics``: the
definitions; raw pixels rank by distance). The images are embedded and searched one block of
``block`` rows at a time (``siamax.metrics.retrieval_in_blocks``), so a packed table of a million
images is scored without its images or its embeddings ever held at once. With ``gallery`` and
``gallery_labels`` the queries are searched against that separate set instead
(``metrics.retrieval_report``). ``run(model)`` returns ``{"precision_at_1", "recall_at_{k}",
"map_at_r", "queries"}`` (and ``"sampled": {"queries", "of", "seed"}`` when the queries are a
sample); the evaluator's ``figures`` keep ``{"embeddings", "images", "labels"}`` of the last run's
queries for plots.
"""

from __future__ import annotations

import numpy as np

from siamax import metrics
from siamax.evaluators.embedders import as_embedder, embed_blocks

MAX_QUERIES = 20_000  # above this many images, a sample of them is the queries (each against all the images)
RANKED = 10 << 20  # ... and fewer where queries x ranking depth (the largest class) would pass this many entries
BLOCK = 65_536  # most images embedded and searched at a time
BLOCK_BYTES = 32 << 20  # ... and at most this much of their pixels (raw-pixel vectors are 4 times as large)


class Retrieval:
    """Retrieval metrics of ``images`` with classes ``labels`` (module docstring).

    Args:
      images: (N, H, W) the items (a table's model-format images: ``ink="light"``; an array or a
        packed table's ``PackedImages``).
      labels: (N,) their classes.
      ink: the images' ink polarity, as ``embed`` takes it.
      k: recall@k's k.
      gallery, gallery_labels: a separate searched set (same ``ink``); default: leave-one-out.
      chunk: queries per ranking block (``metrics.knn``).
      max_queries, seed: at most this many queries, drawn from ``seed`` where there are more images.
      block: most images embedded and searched at a time (None: ``BLOCK``), fewer where their pixels
        would pass ``BLOCK_BYTES``.
    """

    kind = "retrieval"

    def __init__(self, images, labels, *, ink: str = "light", k: int = 5, gallery=None, gallery_labels=None,
                 chunk: int = 256, max_queries: int = MAX_QUERIES, seed: int = 0, block=None):  # fmt: skip
        if (gallery is None) != (gallery_labels is None):
            raise ValueError("gallery and gallery_labels go together: pass both or neither")
        self.images, self.labels, self.ink, self.k = images, np.asarray(labels), ink, int(k)
        self.gallery, self.gallery_labels, self.chunk = gallery, gallery_labels, chunk
        self.max_queries, self.seed, self.block = int(max_queries), int(seed), block
        self.figures = None

    def run(self, model) -> dict:
        model = as_embedder(model)
        if self.gallery is not None:
            return self._against_gallery(model)
        n = len(self.labels)
        depth = max(self.k, int(np.unique(self.labels, return_counts=True)[1].max()) - 1)  # MAP@R ranks R deep
        most = min(self.max_queries, max(1_000, RANKED // depth))
        sampled = n > most
        draw = np.random.default_rng(self.seed)
        rows = np.sort(draw.choice(n, most, replace=False)) if sampled else np.arange(n)
        per_image = int(np.prod(np.shape(self.images)[1:]))
        block = max(1, min(self.block or BLOCK, BLOCK_BYTES // per_image))
        if n <= block:  # one block: the queries' embeddings are the gallery's
            emb = model.embed(np.asarray(self.images), self.ink)
            queries, blocks = np.asarray(emb)[rows], [emb]
        else:
            queries = np.concatenate([np.asarray(e) for e in embed_blocks(model, self.images[rows], self.ink, block)])
            blocks = embed_blocks(model, self.images, self.ink, block)
        result = metrics.retrieval_in_blocks(
            queries, rows, blocks, self.labels, model.energy, model.head, self.k, chunk=self.chunk, dtype=model.dtype
        )
        if sampled:
            result["sampled"] = {"queries": len(rows), "of": n, "seed": self.seed}
        images = self.images[rows] if sampled else self.images  # a packed table's stay on disk: a plot reads a few
        self.figures = {"embeddings": queries, "images": images, "labels": self.labels[rows]}
        return result

    def _against_gallery(self, model) -> dict:
        emb = np.asarray(model.embed(np.asarray(self.images), self.ink))
        gallery = np.asarray(model.embed(np.asarray(self.gallery), self.ink))
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
        self.figures = {"embeddings": emb, "images": np.asarray(self.images), "labels": self.labels}
        return result
