"""Honest one-shot (N-way K-shot) accuracy: ``OneShot(tasks).run(model)``.

* Every query is one *trial*. For an embedder of its own (``ModelEmbedder``: a siamax network), every
  distinct image of all tasks is embedded exactly once (grouped by ink, size and dtype), then all
  query x support pairs of all tasks are scored in one flat list (``pair_scores``, in fixed-size
  chunks). An embedder with a ``score_matrix`` (``PixelEmbedder``, the 1-NN raw-pixel baseline)
  scores each task's (Q, S) matrix itself. A callable ``score_fn(x1, x2)`` receives the task images
  as they are (native form), its pairs in a shuffled order.
* With K > 1 support images per class (``Task.support_classes``) a class's score is the max over
  its shots (``shots="max"``, "the nearest shot wins", the paper's rule for K = 1) or their mean.
* The candidate order is shuffled per trial (seeded), so the position of the right answer carries
  no information.
* Ties: ``"split"`` (default) gives 1/k credit when the right answer is one of k tied maxima (the
  expectation of random tie-breaking, with no noise: a constant model scores exactly chance);
  ``"random"`` takes the first maximum in the shuffled order; ``"fail"`` counts any tie as wrong.
* The 95% interval is Wilson's score interval on the (possibly fractional) number of successes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from siamax.evaluators.embedders import ModelEmbedder, as_embedder, is_embedder

TIES = ("split", "random", "fail")
SHOTS = ("max", "mean")


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1, unlike p +- 2se)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(credit) -> dict:
    """``{"accuracy", "ci95": [lo, hi], "trials"}`` of per-trial credits in [0, 1]."""
    credit = np.asarray(credit)
    n = int(credit.size)
    s = float(credit.sum())
    return {"accuracy": s / n if n else float("nan"), "ci95": list(wilson_interval(s, n)), "trials": n}


def trial_credit(scores: np.ndarray, task, rng: np.random.Generator, ties: str, shots: str) -> np.ndarray:
    """Credit per query of one task from its (Q, S) query x support score matrix."""
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    classes, n = task.classes, task.n_way
    if shots == "max":
        cs = np.full((scores.shape[0], n), -np.inf)
        np.maximum.at(cs.T, classes, scores.T)
    elif shots == "mean":
        cs = np.zeros((scores.shape[0], n))
        np.add.at(cs.T, classes, scores.T)
        cs /= np.bincount(classes, minlength=n)
    else:
        raise ValueError(f"shots must be 'max' or 'mean', got {shots!r}")
    q = cs.shape[0]
    perm = rng.permuted(np.tile(np.arange(n), (q, 1)), axis=1)  # shuffled candidate order per trial
    cs = np.take_along_axis(cs, perm, axis=1)
    pos = np.argmax(perm == task.answers[:, None], axis=1)  # where the right answer went
    tied = cs == cs.max(axis=1, keepdims=True)
    hit = tied[np.arange(q), pos]
    if ties == "split":
        return hit / tied.sum(axis=1)
    if ties == "fail":
        return (hit & (tied.sum(axis=1) == 1)).astype(float)
    return (np.argmax(tied, axis=1) == pos).astype(float)  # "random": first max in shuffled order


def _score_matrices_callable(score_fn, tasks, rng) -> list[np.ndarray]:
    """(Q, S) scores per task from ``score_fn(x1, x2)``, pairs presented in a shuffled order."""
    out = []
    for t in tasks:
        q, s = t.query.shape[0], t.support.shape[0]
        perm = rng.permuted(np.tile(np.arange(s), (q, 1)), axis=1)
        x1 = np.repeat(t.query, s, axis=0)
        x2 = t.support[perm.reshape(-1)]
        flat = np.asarray(score_fn(x1, x2), np.float64).reshape(q, s)
        scores = np.empty_like(flat)
        np.put_along_axis(scores, perm, flat, axis=1)
        out.append(scores)
    return out


def _score_matrices_embedder(embedder, tasks) -> list[np.ndarray]:
    """(Q, S) scores per task, each distinct image embedded once, all pairs scored in one flat list."""
    groups: dict = {}  # (ink, shape, dtype) -> {image bytes: row}
    rows = []  # per task: (group key, support rows, query rows)
    for t in tasks:
        key = (t.ink, t.support.shape[1:], t.support.dtype.str)
        g = groups.setdefault(key, {})
        r = [[g.setdefault(np.ascontiguousarray(im).tobytes(), len(g)) for im in x] for x in (t.support, t.query)]
        rows.append((key, *r))
    offsets, embs, start = {}, [], 0
    for (ink, shape, dtype), g in groups.items():
        images = np.frombuffer(b"".join(g), dtype=np.dtype(dtype)).reshape(len(g), *shape)
        e = embedder.embed(images, ink)
        offsets[(ink, shape, dtype)] = start
        embs.append(e)
        start += e.shape[0]
    if len(embs) == 1:
        emb = embs[0]
    else:
        emb = jnp.concatenate(embs) if isinstance(embs[0], jnp.ndarray) else np.concatenate(embs)
    i1, i2, sizes = [], [], []
    for key, sup, qry in rows:
        o = offsets[key]
        i1.append(np.repeat(np.asarray(qry) + o, len(sup)))
        i2.append(np.tile(np.asarray(sup) + o, len(qry)))
        sizes.append((len(qry), len(sup)))
    flat = embedder.pair_scores(emb, np.concatenate(i1), np.concatenate(i2))
    out, lo = [], 0
    for q, s in sizes:
        out.append(flat[lo : lo + q * s].reshape(q, s))
        lo += q * s
    return out


def score_matrices(embedder, tasks) -> list[np.ndarray]:
    """(Q, S) query x support scores of every task by ``embedder`` (its ``score_matrix`` per task where
    it has one, else embedding reuse over all tasks)."""
    if callable(getattr(embedder, "score_matrix", None)):
        return [embedder.score_matrix(embedder.embed(t.query, t.ink), embedder.embed(t.support, t.ink)) for t in tasks]
    return _score_matrices_embedder(embedder, tasks)


class OneShot:
    """One-shot accuracy over all trials (queries) of ``tasks`` (``siamax.data.Task``; module docstring).

    Args:
      tasks: the tasks; every query is one trial.
      seed: the candidate shuffles (and ``ties="random"``) depend on it only.
      ties: "split" | "random" | "fail"; shots: "max" | "mean" over K shots (module docstring).
      by: a function of a task (e.g. ``lambda t: t.alphabet``); then the result also holds
        ``"by": {key: {"accuracy", "ci95", "trials"}}``, the same trials grouped by that key. A mapping
        ``{name: function}`` groups the same scores several ways: ``"by": {name: {key: ...}}``.

    ``run(model)``: model is siamax Params, an embedder (``ModelEmbedder``, ``PixelEmbedder``: the 1-NN
    baseline) or a callable ``score_fn(x1, x2) -> (B,)`` (higher = more alike). Returns
    ``{"accuracy", "ci95": [lo, hi], "trials"[, "by"]}``. ``figures`` is ``None`` (nothing to plot).
    """

    kind = "oneshot"

    def __init__(
        self,
        tasks: Sequence,
        *,
        seed: int = 0,
        ties: str = "split",
        shots: str = "max",
        by: Callable | Mapping[str, Callable] | None = None,
    ):
        if ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
        if shots not in SHOTS:
            raise ValueError(f"shots must be 'max' or 'mean', got {shots!r}")
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("no tasks")
        self.seed, self.ties, self.shots, self.by = seed, ties, shots, by
        self.figures = None

    def run(self, model) -> dict:
        model = as_embedder(model, score_fn=True)
        tasks = self.tasks
        rng = np.random.default_rng(self.seed)
        if is_embedder(model):
            scores = score_matrices(model, tasks)
        else:
            scores = _score_matrices_callable(model, tasks, rng)
        credits = [trial_credit(s, t, rng, self.ties, self.shots) for s, t in zip(scores, tasks)]
        result = proportion(np.concatenate(credits))
        by = self.by
        if by is not None:
            ways = by if isinstance(by, Mapping) else {None: by}
            grouped = {}
            for name, key_of in ways.items():
                groups: dict = {}
                for t, c in zip(tasks, credits):
                    groups.setdefault(str(key_of(t)), []).append(c)
                grouped[name] = {k: proportion(np.concatenate(v)) for k, v in sorted(groups.items())}
            result["by"] = grouped if isinstance(by, Mapping) else grouped[None]
        return result


def one_shot_accuracy(
    model, tasks: Sequence, *, batch_size: int | None = None, pair_chunk: int | None = None, **kwargs
) -> dict:
    """``OneShot(tasks, **kwargs).run(model)``; ``batch_size`` / ``pair_chunk`` (siamax Params only) go
    to its ``ModelEmbedder``."""
    if batch_size is not None or pair_chunk is not None:
        sizes = {"batch_size": batch_size or 256, "pair_chunk": pair_chunk or 4096}
        model = ModelEmbedder(model, **sizes)
    return OneShot(tasks, **kwargs).run(model)
