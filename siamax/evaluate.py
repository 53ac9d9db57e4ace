"""Honest one-shot evaluation, the 1-NN pixel baseline and verification accuracy.

One-shot scoring (``one_shot_accuracy``):

* Every query is one *trial*. For a params tree, every distinct image of all tasks goes through
  the one route to model format (``siamax.data.labelled.to_model``: ``siamax.preprocess`` with the
  task's ``ink``, rounded to uint8, so evaluation sees the pixels training sees) and the tower
  exactly once, in jitted chunks of a fixed size (the last one padded: one compilation); queries are
  then scored against their supports with ``siamax.score_embeddings`` (also in fixed-size chunks).
* With K > 1 support images per class (``Task.support_classes``) a class's score is the max over
  its shots (``shots="max"``, "the nearest shot wins", the paper's rule for K = 1) or their mean.
* The candidate order is shuffled per trial (seeded), so the position of the right answer carries
  no information, and a callable ``score_fn`` sees its pairs in that shuffled order.
* Ties: ``"split"`` (default) gives 1/k credit when the right answer is one of k tied maxima (the
  expectation of random tie-breaking, with no noise: a constant model scores exactly chance);
  ``"random"`` takes the first maximum in the shuffled order; ``"fail"`` counts any tie as wrong.
* The 95% interval is Wilson's score interval on the (possibly fractional) number of successes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from siamax.data.labelled import to_model

TIES = ("split", "random", "fail")


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1, unlike p +- 2se)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _result(credit: np.ndarray) -> dict:
    n = int(credit.size)
    s = float(credit.sum())
    return {"accuracy": s / n if n else float("nan"), "ci95": list(wilson_interval(s, n)), "trials": n}


def _trial_credit(scores: np.ndarray, task, rng: np.random.Generator, ties: str, shots: str) -> np.ndarray:
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


@functools.partial(jax.jit, static_argnames="ink")
def _embed_raw(params, raw, ink):
    import siamax  # pylint: disable=g-import-not-at-top

    # The one route (siamax.data.labelled.to_model): the very pixels training sees, uint8 included.
    return siamax.embed(params, to_model(params, raw, ink))


@jax.jit
def _score_rows(params, emb, i1, i2):
    import siamax  # pylint: disable=g-import-not-at-top

    return siamax.score_embeddings(params, emb[i1], emb[i2])


def embed_images(params, images: np.ndarray, *, ink: str, batch_size: int = 256) -> jax.Array:
    """Embeddings (N, D) of images (N, H, W): native, or model format (uint8, ``ink="light"``),
    brought to model format by ``to_model`` and computed in jitted chunks of exactly ``batch_size``
    (the last padded; rows beyond N are padding)."""
    images = np.asarray(images)
    if images.dtype == bool:  # JAX copies raw bytes: make True exactly 1 (see canonical_bool)
        images = images.view(np.uint8) != 0
    n = images.shape[0]
    n_pad = -(-n // batch_size) * batch_size
    padded = np.concatenate([images, np.repeat(images[:1], n_pad - n, axis=0)]) if n_pad > n else images
    return jnp.concatenate(
        [_embed_raw(params, padded[lo : lo + batch_size], ink) for lo in range(0, n_pad, batch_size)]
    )


def _score_index_pairs(params, emb, i1, i2, chunk: int) -> np.ndarray:
    """``score_embeddings`` on rows (i1, i2) of ``emb``, in fixed-size jitted chunks."""
    n = len(i1)
    n_pad = max(chunk, -(-n // chunk) * chunk)
    i1 = np.pad(np.asarray(i1, np.int32), (0, n_pad - n))
    i2 = np.pad(np.asarray(i2, np.int32), (0, n_pad - n))
    out = [_score_rows(params, emb, i1[lo : lo + chunk], i2[lo : lo + chunk]) for lo in range(0, n_pad, chunk)]
    return np.asarray(jnp.concatenate(out))[:n]


def _score_matrices_params(params, tasks, batch_size: int, pair_chunk: int) -> list[np.ndarray]:
    """(Q, S) probabilities per task, each distinct image embedded once."""
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
        e = embed_images(params, images, ink=ink, batch_size=batch_size)
        offsets[(ink, shape, dtype)] = start
        embs.append(e)
        start += e.shape[0]
    emb = jnp.concatenate(embs) if len(embs) > 1 else embs[0]
    i1, i2, sizes = [], [], []
    for key, sup, qry in rows:
        o = offsets[key]
        i1.append(np.repeat(np.asarray(qry) + o, len(sup)))
        i2.append(np.tile(np.asarray(sup) + o, len(qry)))
        sizes.append((len(qry), len(sup)))
    flat = _score_index_pairs(params, emb, np.concatenate(i1), np.concatenate(i2), pair_chunk)
    out, lo = [], 0
    for q, s in sizes:
        out.append(flat[lo : lo + q * s].reshape(q, s))
        lo += q * s
    return out


def one_shot_accuracy(
    model,
    tasks: Sequence,
    *,
    seed: int = 0,
    ties: str = "split",
    shots: str = "max",
    batch_size: int = 256,
    pair_chunk: int = 4096,
    by: Callable | Mapping[str, Callable] | None = None,
) -> dict:
    """Accuracy over all trials (queries) of ``tasks``: ``{"accuracy", "ci95": [lo, hi], "trials"}``.

    ``by``: a function of a task (e.g. ``lambda t: t.alphabet``); then the result also holds
    ``"by": {key: {"accuracy", "ci95", "trials"}}``, the same trials grouped by that key. A mapping
    ``{name: function}`` groups the same scores several ways: ``"by": {name: {key: ...}}``.

    Args:
      model: a ``siamax.Params`` (embedding reuse; task images go through ``siamax.preprocess`` with
        ``task.ink``), or any callable ``score_fn(x1, x2) -> (B,)`` (higher = more alike) that
        receives the task images as they are (native form), in a shuffled candidate order.
      tasks: ``siamax.data.Task``s.
      seed: the candidate shuffles (and ``ties="random"``) depend on it only.
      ties: "split" | "random" | "fail" (module docstring). shots: "max" | "mean" over K shots.
      batch_size: images per tower call; pair_chunk: pairs per head call (fixed shapes, one compile).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks")
    rng = np.random.default_rng(seed)
    if hasattr(model, "spec") and hasattr(model, "weights"):
        scores = _score_matrices_params(model, tasks, batch_size, pair_chunk)
    elif callable(model):
        scores = _score_matrices_callable(model, tasks, rng)
    else:
        raise TypeError(f"model must be siamax Params or a callable score_fn(x1, x2), got {type(model).__name__}")
    credits = [_trial_credit(s, t, rng, ties, shots) for s, t in zip(scores, tasks)]
    result = _result(np.concatenate(credits))
    if by is not None:
        ways = by if isinstance(by, Mapping) else {None: by}
        grouped = {}
        for name, key_of in ways.items():
            groups: dict = {}
            for t, c in zip(tasks, credits):
                groups.setdefault(str(key_of(t)), []).append(c)
            grouped[name] = {k: _result(np.concatenate(v)) for k, v in sorted(groups.items())}
        result["by"] = grouped if isinstance(by, Mapping) else grouped[None]
    return result


def ink_vectors(images: np.ndarray, ink: str) -> np.ndarray:
    """Native images (N, H, W) -> float (N, H*W) with ink = 1, paper = 0."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if ink == "dark":
        x = 1.0 - x
    return x.reshape(x.shape[0], -1)


def nearest_neighbour(
    tasks: Sequence, metric: str = "euclidean", *, seed: int = 0, ties: str = "split", shots: str = "max"
) -> dict:
    """The 1-NN raw-pixel baseline on the same tasks, same return form as ``one_shot_accuracy``.

    Pixels are compared as ink = 1 vectors at the tasks' native size (Omniglot 105x105, MNIST as
    stored). ``metric``: "euclidean" (smallest distance wins; polarity-independent) or "cosine"
    (largest cosine similarity of the ink vectors; an empty image has similarity 0).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    rng = np.random.default_rng(seed)
    credit = []
    for t in tasks:
        s, q = ink_vectors(t.support, t.ink), ink_vectors(t.query, t.ink)
        if metric == "euclidean":
            d2 = (q * q).sum(1)[:, None] + (s * s).sum(1)[None, :] - 2 * q @ s.T
            scores = -np.sqrt(np.maximum(np.round(d2, 6), 0.0))
        else:
            norm = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(s, axis=1)[None, :]
            scores = np.where(norm > 0, q @ s.T / np.where(norm > 0, norm, 1.0), 0.0)
        credit.append(_trial_credit(scores, t, rng, ties, shots))
    return _result(np.concatenate(credit))


# ---------------------------------------------------------------------------------------------
# Verification (same / different pairs).


def pair_probabilities(
    params, images: np.ndarray, i1, i2, *, ink: str = "dark", batch_size: int = 256, pair_chunk: int = 4096
) -> np.ndarray:
    """``score`` for pairs of rows of images (N, H, W) (e.g. a table's model-format images with
    ``ink="light"`` and indices from ``siamax.data.make_pairs``), embedding each distinct image once."""
    i1, i2 = np.asarray(i1), np.asarray(i2)
    chex.assert_equal_shape([i1, i2])
    used, inverse = np.unique(np.concatenate([i1, i2]), return_inverse=True)
    emb = embed_images(params, np.asarray(images)[used], ink=ink, batch_size=batch_size)
    return _score_index_pairs(params, emb, inverse[: len(i1)], inverse[len(i1) :], pair_chunk)


def threshold_accuracy(probs, labels, threshold: float) -> float:
    """Fraction of pairs with ``(probs >= threshold) == labels``."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    chex.assert_equal_shape([probs, labels])
    return float(((probs >= threshold) == (labels > 0)).mean())


def best_threshold(probs, labels) -> tuple[float, float]:
    """The threshold maximising accuracy on (probs, labels): ``(threshold, accuracy)``.

    Candidates are midpoints between consecutive distinct probabilities (plus both ends); among
    equally good ones, the one closest to 0.5.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels) > 0
    chex.assert_equal_shape([probs, labels])
    order = np.argsort(probs, kind="stable")
    p, y = probs[order], labels[order]
    # Cutting before position i predicts "different" for the first i pairs.
    neg_before = np.concatenate([[0], np.cumsum(~y)])
    pos_from = y.sum() - np.concatenate([[0], np.cumsum(y)])
    acc = (neg_before + pos_from) / len(p)
    cut = np.concatenate([[p[0] - 1e-6], (p[:-1] + p[1:]) / 2, [p[-1] + 1e-6]])
    valid = np.concatenate([[True], p[1:] > p[:-1], [True]])
    best = acc[valid].max()
    candidates = cut[valid & (acc == best)]
    t = float(candidates[np.argmin(np.abs(candidates - 0.5))])
    return t, float(best)


def verification_accuracy(val_probs, val_labels, test_probs, test_labels) -> dict:
    """The paper's verification protocol: pick the threshold on validation pairs, report test accuracy.

    Returns ``{"threshold", "validation_accuracy", "accuracy", "ci95", "trials"}`` (test numbers).
    """
    t, val_acc = best_threshold(val_probs, val_labels)
    test_probs, test_labels = np.asarray(test_probs), np.asarray(test_labels)
    hits = ((test_probs >= t) == (test_labels > 0)).astype(float)
    return {"threshold": t, "validation_accuracy": val_acc, **_result(hits)}
