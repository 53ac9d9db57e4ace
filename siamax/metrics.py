"""Verification and retrieval metrics: ROC, AUC, EER, thresholds; precision@1, recall@k, MAP@R; blocked k-NN.

Verification (pairs with a score, higher = "same", and a label, 1 / True = same class)
------------------------------------------------------------------------------------
A pair is accepted as "same" when ``score >= threshold`` (``accuracy_at``).
FAR (false-accept rate) is the fraction of different pairs accepted, the ROC's false-positive rate;
FRR (false-reject rate) the fraction of same pairs rejected, 1 - true-positive rate.

* ``roc_curve``: exact, one point per distinct score (scikit-learn's ``roc_curve`` with
  ``drop_intermediate=False``): tied scores move together, as one diagonal step. The first point is
  ``(0, 0)`` at threshold ``+inf`` (accept nothing).
* ``roc_auc``: exact, the Mann-Whitney U statistic over all (same, different) pairs with ties counted
  1/2, i.e. the probability that a random same pair outscores a random different one (= the area
  under the ROC curve drawn with its diagonal tie steps). Computed in integers, then divided once.
* ``eer``: where FAR and FRR cross. FAR rises and FRR falls along the ROC curve; between the last
  point with FAR < FRR and the first with FAR >= FRR both are linear along the ROC segment, so they
  are equal at exactly one fraction ``lam`` of it: the EER is that common value (the ROC polyline
  meeting the line ``tpr = 1 - fpr``, as the usual ``brentq(1 - x - interp(fpr, tpr)(x))`` recipe,
  but also right on vertical segments). Its threshold is interpolated linearly in score at the same
  ``lam`` between the segment's two thresholds (on the first segment, whose upper end is ``+inf``,
  the segment's finite one). EER 0 for perfectly separated scores, 1 for perfectly inverted ones.
* ``threshold_at_far``: the lowest threshold, among the scores themselves (and ``+inf``), whose FAR
  is <= ``far``: the operating point of highest acceptance within the FAR budget on these pairs.

Retrieval (from a ranking: gallery indices sorted best-first, one row per query)
--------------------------------------------------------------------------------
Any index or energy can produce the ranking (``knn`` below is one). ``gallery_labels=None`` means
leave-one-out: the gallery is the query set itself and a query is skipped in its own row (whether or
not the ranking holds it). For each query, R is the number of gallery items of its class (itself
excluded).

* ``precision_at_1``: the fraction of queries whose nearest neighbour is of their class.
* ``recall_at_k``: the fraction of queries with at least one item of their class among their k
  nearest: the metric-learning convention (Song et al. 2016, pytorch-metric-learning, TF
  Similarity), not the information-retrieval recall (the fraction of the R relevant items found).
* ``map_at_r``: Musgrave et al. 2020 ("A metric learning reality check"): per query
  ``(1/R) sum_{i <= R} P(i) [item i is of the class]``, ``P(i)`` the precision among the top i; the
  mean over queries. The ranking must hold at least R items per query.

Queries with R = 0 (their class has no other item in the gallery) have no right answer: they are
left out of all three (as pytorch-metric-learning leaves out its "lone" queries); ``retrieval_report``
says how many queries were scored.

k-NN (``knn``)
--------------
Ranks the gallery by the model's own logit (``siamax.energies``; higher = nearer) with the search
kernel of ``siamax.Index`` (``siamax.neighbours``), on the device, in blocks of at most ``chunk``
queries x ``gallery_chunk`` gallery items with a running top-k, so no Q x G matrix exists beyond one
block. Euclidean and cosine rank by one matrix product per block (``2 q.g - |g|^2``; cosine on unit
vectors): their logit ``b - softplus(a) d`` is decreasing in the distance, so ranking by distance
is ranking by it. weighted_l1 (Koch's head, no matrix-product identity) ranks by its head's
``alpha . |q - g|`` on the block's pairs. The k found are then scored pair by pair, by the energy's
``logit`` as ``siamax.score_embeddings`` computes it (or, with ``head=None``, its ``-distance``), and
sorted by that score. Equal keys go to the lower gallery index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from siamax import energies, neighbours
from siamax.errors import InputError

# ---------------------------------------------------------------------------------------------
# Verification.


def _scores_labels(scores, labels, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 scores and bool labels, both flattened."""
    s, y = np.asarray(scores), np.asarray(labels)
    if s.shape != y.shape:
        raise InputError(f"scores and labels differ in shape: {s.shape} vs {y.shape}; expected one label per score")
    if s.size == 0:
        raise InputError("scores and labels are empty; expected at least one scored pair")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer) or s.dtype == bool):
        raise InputError(f"scores have dtype {s.dtype}; expected numbers (higher = more likely the same class)")
    s, y = s.astype(np.float64).ravel(), y.ravel()
    bad = ~np.isfinite(s)
    if bad.any():
        raise InputError(
            f"scores hold {int(np.isnan(s).sum())} NaN and {int(np.isinf(s).sum())} infinite values "
            f"(of {s.size}); expected finite scores: check the model or the embeddings that produced them"
        )
    if y.dtype != bool:
        values = np.unique(y)
        if not (np.issubdtype(y.dtype, np.number) and np.isin(values, (0, 1)).all()):
            raise InputError(
                f"labels hold {values[:5].tolist()}{'...' if values.size > 5 else ''}; "
                f"expected bool or 0/1 (1 = same class)"
            )
        y = y == 1
    if need_both:
        n_same = int(y.sum())
        if n_same in (0, y.size):
            which = "same (1)" if n_same else "different (0)"
            raise InputError(
                f"all {y.size} labels are {which}: the ROC curve, its AUC and the EER need both same and "
                f"different pairs (undefined otherwise); pass pairs of both kinds"
            )
    return s, y


def _roc(s: np.ndarray, y: np.ndarray):
    """Counts (false positives, true positives) and thresholds, one per distinct score, plus (0, 0) at +inf."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # the end of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, s[last]]


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds decreasing from ``+inf``; point i accepts ``score >= thresholds[i]``."""
    s, y = _scores_labels(scores, labels)
    fps, tps, thresholds = _roc(s, y)
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(same pair outscores different pair), ties 1/2 (Mann-Whitney U / (P N))."""
    s, y = _scores_labels(scores, labels)
    neg = np.sort(s[~y])
    pos = s[y]
    # Twice U, in integers: each different pair below a same pair counts 2, each tie 1.
    u2 = int(np.searchsorted(neg, pos, side="left").sum()) + int(np.searchsorted(neg, pos, side="right").sum())
    return u2 / (2 * pos.size * neg.size)


def eer(scores, labels) -> tuple[float, float]:
    """``(equal error rate, its threshold)``, interpolated where FAR and FRR cross (module docstring)."""
    s, y = _scores_labels(scores, labels)
    fps, tps, thresholds = _roc(s, y)
    far, frr = fps / fps[-1], 1.0 - tps / tps[-1]
    gap = far - frr  # -1 at +inf (accept nothing), +1 at the lowest score (accept all)
    i = int(np.argmax(gap >= 0))
    lam = -gap[i - 1] / (gap[i] - gap[i - 1])
    rate = far[i - 1] + lam * (far[i] - far[i - 1])
    hi, lo = thresholds[i - 1], thresholds[i]
    threshold = lo if math.isinf(hi) else hi + lam * (lo - hi)
    return float(rate), float(threshold)


def threshold_at_far(scores, labels, far: float) -> float:
    """The lowest threshold (one of the scores, or ``+inf`` if none qualifies) with false-accept rate <= ``far``."""
    if not 0.0 <= far <= 1.0:
        raise InputError(f"far is {far}; expected a false-accept rate in [0, 1]")
    s, y = _scores_labels(scores, labels, need_both=False)
    if y.all():
        raise InputError(f"all {y.size} labels are same (1): a false-accept rate needs different (0) pairs")
    fps, _, thresholds = _roc(s, y)
    ok = fps / fps[-1] <= far  # true up to some point: FAR only grows as the threshold falls
    return float(thresholds[np.flatnonzero(ok)[-1]])


def accuracy_at(scores, labels, threshold: float) -> float:
    """Fraction of pairs with ``(score >= threshold) == label``."""
    s, y = _scores_labels(scores, labels, need_both=False)
    return float(((s >= threshold) == y).mean())


def best_threshold(scores, labels) -> tuple[float, float]:
    """The threshold maximising accuracy on (scores, labels): ``(threshold, accuracy)`` (the paper's rule).

    Candidates are midpoints between consecutive distinct scores (plus both ends); among equally good
    ones, the one closest to 0.5. On few or badly separated pairs this rule can land at an end (every
    pair "same" or every pair "different"); ``choose_threshold(..., rule="eer")`` cannot.
    """
    probs, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
    if probs.shape != labels.shape:
        raise InputError(f"scores and labels differ in shape: {probs.shape} vs {labels.shape}")
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


THRESHOLD_RULES = ("accuracy", "eer")


def choose_threshold(scores, labels, rule: str = "accuracy") -> float:
    """The same/different threshold chosen on (validation) pairs: ``"accuracy"`` (``best_threshold``, the
    paper's) or ``"eer"`` (where false accepts and false rejects are equally frequent: always inside the
    score range, so a usable operating point even on a handful of classes)."""
    if rule == "accuracy":
        return best_threshold(scores, labels)[0]
    if rule == "eer":
        return eer(scores, labels)[1]
    raise InputError(f"threshold rule {rule!r}; expected one of {THRESHOLD_RULES}")


def verification_report(scores, labels, threshold: float | None = None) -> dict:
    """``{"roc_auc", "eer", "eer_threshold", "threshold", "accuracy"}``; accuracy at ``threshold``.

    ``threshold=None`` uses the EER threshold of these very scores: an optimistic accuracy. For an
    honest one, pass a threshold chosen on other pairs (e.g. ``choose_threshold`` on validation pairs).
    """
    rate, t_eer = eer(scores, labels)
    t = t_eer if threshold is None else float(threshold)
    return {
        "roc_auc": roc_auc(scores, labels),
        "eer": rate,
        "eer_threshold": t_eer,
        "threshold": t,
        "accuracy": accuracy_at(scores, labels, t),
    }


# ---------------------------------------------------------------------------------------------
# Retrieval from a ranking.


def _labels(labels, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise InputError(f"{name} has shape {y.shape}; expected a non-empty 1-D array, one class per item")
    return y


def _retrieval(ranking, labels, gallery_labels, self_rows=None):
    """Per query: ``(valid, hit, pos, R)``: entries other than the query itself, those of its class,
    their 1-based rank among the valid ones, and R (gallery items of its class, itself not counted).
    Leave-one-out without ``gallery_labels``; ``self_rows``: the gallery row each query is (a
    leave-one-out over some of the gallery's items)."""
    q_labels = _labels(labels, "labels")
    loo = gallery_labels is None
    if loo:
        self_rows = np.arange(q_labels.size)
    g_labels = q_labels if loo else _labels(gallery_labels, "gallery_labels")
    n_q, n_g = q_labels.size, g_labels.size
    r = np.asarray(ranking)
    if r.ndim != 2 or r.shape[0] != n_q or r.shape[1] == 0:
        raise InputError(
            f"ranking has shape {r.shape}; expected ({n_q}, k): a row of gallery indices, best first, for each query"
        )
    if not np.issubdtype(r.dtype, np.integer):
        raise InputError(f"ranking has dtype {r.dtype}; expected integer gallery indices")
    if r.min() < 0 or r.max() >= n_g:
        raise InputError(f"ranking holds indices in [{r.min()}, {r.max()}]; expected gallery indices in [0, {n_g})")
    srt = np.sort(r, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup.size:
        raise InputError(f"ranking repeats a gallery index in row {int(dup[0])} ({dup.size} rows in all)")
    _, codes = np.unique(np.concatenate([q_labels, g_labels]), return_inverse=True)
    q_code, g_code = codes[:n_q], codes[n_q:]
    inside = self_rows is not None
    valid = r != np.asarray(self_rows)[:, None] if inside else np.ones(r.shape, bool)
    hit = valid & (g_code[r] == q_code[:, None])
    pos = np.cumsum(valid, axis=1)
    big_r = np.bincount(g_code, minlength=codes.max() + 1)[q_code] - int(inside)
    return valid, hit, pos, big_r


def _scored(big_r: np.ndarray) -> np.ndarray:
    keep = big_r > 0
    if not keep.any():
        raise InputError(
            "no query has an item of its class in the gallery (besides itself): retrieval metrics are "
            "undefined; use classes with at least two items"
        )
    return keep


def _need(valid: np.ndarray, keep: np.ndarray, depth: np.ndarray, what: str) -> None:
    short = keep & (valid.sum(axis=1) < depth)
    if short.any():
        i = int(np.flatnonzero(short)[0])
        raise InputError(
            f"{what} needs the top {int(depth[i])} neighbours of query {i}, but its ranking row holds "
            f"{int(valid[i].sum())} (besides the query itself); rank more neighbours (a larger k)"
        )


def _recall(valid, hit, pos, big_r, k: int) -> float:
    keep = _scored(big_r)
    _need(valid, keep, np.full(big_r.shape, k), f"recall@{k}")
    return float((hit & (pos <= k)).any(axis=1)[keep].mean())


def _map_at_r(valid, hit, pos, big_r) -> float:
    keep = _scored(big_r)
    _need(valid, keep, big_r, "MAP@R")
    precision = np.cumsum(hit, axis=1) / np.maximum(pos, 1)
    ap = (precision * (hit & (pos <= big_r[:, None]))).sum(axis=1) / np.maximum(big_r, 1)
    return float(ap[keep].mean())


def precision_at_1(ranking, labels, *, gallery_labels=None) -> float:
    """Fraction of queries whose nearest neighbour (the first in their row, besides themselves) is of their class."""
    return _recall(*_retrieval(ranking, labels, gallery_labels), 1)


def recall_at_k(ranking, labels, k: int, *, gallery_labels=None) -> float:
    """Fraction of queries with at least one item of their class among their ``k`` nearest (module docstring)."""
    if int(k) != k or k < 1:
        raise InputError(f"k is {k}; expected a whole number >= 1")
    return _recall(*_retrieval(ranking, labels, gallery_labels), int(k))


def map_at_r(ranking, labels, *, gallery_labels=None) -> float:
    """MAP@R of Musgrave et al. 2020 (module docstring); rows must hold at least R neighbours each."""
    return _map_at_r(*_retrieval(ranking, labels, gallery_labels))


# ---------------------------------------------------------------------------------------------
# k-NN in blocks.


def _embeddings(x, name: str) -> jax.Array:
    if np.ndim(x) != 2:
        raise InputError(f"{name} has shape {np.shape(x)}; expected (N, D) embeddings")
    if 0 in np.shape(x):
        raise InputError(f"{name} has shape {np.shape(x)}; expected at least one embedding of at least one value")
    x = jnp.asarray(x, jnp.float32)
    if not bool(jnp.isfinite(x).all()):
        raise InputError(f"{name} holds NaN or infinite values; expected finite embeddings")
    return x


def _energy(energy) -> energies.Energy:
    try:
        return energies.get(energy)
    except ValueError:
        raise InputError(f"energy is {energy!r}; expected one of {tuple(energies.ENERGIES)}") from None


def _check_head(energy: energies.Energy, head, dim: int):
    if head is None:
        if not energy.matmul:
            raise InputError(f"{energy.name} ranks by its head's logit: pass head=params.weights['head']")
        return None
    shapes = energy.head_shapes(dim)
    if not isinstance(head, Mapping) or set(head) != set(shapes):
        keys = sorted(head) if isinstance(head, Mapping) else type(head).__name__
        raise InputError(f"head has {keys}; expected the {energy.name} head {shapes} (params.weights['head'])")
    for name, shape in shapes.items():
        if tuple(np.shape(head[name])) != shape:
            raise InputError(f"head[{name!r}] has shape {np.shape(head[name])}; expected {shape} for D = {dim}")
    return {name: jnp.asarray(v) for name, v in head.items()}


def knn_block_bytes(energy, dim: int, k: int, chunk: int, gallery_chunk: int, dtype=jnp.float32) -> int:
    """Bytes of one block's intermediates, ``knn``'s peak beyond its inputs, the gallery's stored copy
    and the results: ``siamax.neighbours.block_bytes`` of a block of ``chunk`` queries (padded to a
    power of two) and ``gallery_chunk`` gallery items."""
    return neighbours.block_bytes(_energy(energy), dim, k, chunk, gallery_chunk, jnp.dtype(dtype).name)


def knn(
    queries,
    gallery,
    k: int,
    *,
    energy: str | energies.Energy,
    head: Mapping | None = None,
    chunk: int = 256,
    gallery_chunk: int | None = None,
    leave_one_out: bool = False,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """The ``k`` nearest gallery items of each query: ``(indices (Q, k) int32, scores (Q, k) float32)``, best first.

    Args:
      queries, gallery: embeddings (Q, D), (G, D) (e.g. from ``siamax.embed``).
      k: neighbours per query, at most G (G - 1 with ``leave_one_out``).
      energy: a name in ``siamax.energies.ENERGIES`` (or an ``Energy``); ``head``: the model's head
        parameters (``params.weights["head"]``). Scores are the energy's logits (higher = nearer).
        Required for weighted_l1; for euclidean / cosine ``None`` scores by ``-distance`` (the same order).
      chunk: most queries per block (weighted_l1 may take fewer: ``siamax.neighbours.query_block``);
        gallery_chunk: gallery items per block (``None``: ``siamax.neighbours.chunk_rows``, keys of
        at most 2^22 values per block).
      leave_one_out: queries are the gallery (Q == G): query i never gets gallery item i.
      dtype: the model's compute dtype (``params.spec.dtype``), used by weighted_l1 as the model does.

    Memory: the gallery's stored copy (padded to whole 1024 rows, plus a value per row), the (Q, k)
    results and at most ``knn_block_bytes(energy, D, k, chunk, gallery_chunk)`` for one block: with
    c = chunk (padded to a power of two) and g = gallery_chunk, ``8 c g`` bytes of keys, plus ``4 c g
    D`` for weighted_l1's pair differences (``siamax.neighbours.block_bytes`` counts the rest). By
    default one block's keys stay within 2^22 values. Each block of queries is one compiled call
    (one compilation per set of shapes: the blocks are padded to a power of two).
    """
    q, g = _embeddings(queries, "queries"), _embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise InputError(f"queries have {q.shape[1]} dimensions and the gallery {g.shape[1]}; expected the same D")
    if leave_one_out and q.shape[0] != g.shape[0]:
        raise InputError(
            f"leave_one_out needs the queries to be the gallery, got {q.shape[0]} queries and {g.shape[0]} items"
        )
    most = g.shape[0] - int(leave_one_out)
    if int(k) != k or not 1 <= k <= most:
        raise InputError(
            f"k is {k}; expected 1 <= k <= {most} (the gallery's {g.shape[0]} items"
            f"{', less the query itself' if leave_one_out else ''})"
        )
    for name, v in (("chunk", chunk), ("gallery_chunk", gallery_chunk)):
        if v is not None and (int(v) != v or v < 1):
            raise InputError(f"{name} is {v}; expected a whole number >= 1")
    energy = _energy(energy)
    head = _check_head(energy, head, int(q.shape[1]))
    scores, ids = neighbours.search(
        energy,
        head,
        neighbours.store(energy, g, prepass=False),
        q,
        int(k),
        dtype=jnp.dtype(dtype).name,
        score="negative_distance" if head is None else "logit",
        exclude=np.arange(q.shape[0]) if leave_one_out else None,
        block=min(int(chunk), q.shape[0]),
        chunk=None if gallery_chunk is None else int(gallery_chunk),
    )
    return jnp.asarray(ids, jnp.int32), jnp.asarray(scores)


def retrieval_report(
    embeddings,
    labels,
    energy: str | energies.Energy,
    head: Mapping | None = None,
    k: int = 5,
    *,
    gallery=None,
    gallery_labels=None,
    chunk: int = 256,
    gallery_chunk: int | None = None,
    dtype=jnp.float32,
) -> dict:
    """``{"precision_at_1", "recall_at_{k}", "map_at_r", "queries"}`` by ``knn`` with the model's energy.

    Leave-one-out by default: every embedding a query against all the others. With ``gallery`` and
    ``gallery_labels``, ``embeddings`` are the queries and ``gallery`` the searched set. "queries" is
    the number scored (those with R > 0, module docstring). ``knn`` ranks max(k, largest R)
    neighbours per query, as MAP@R needs; memory as ``knn``'s.
    """
    q_labels = _labels(labels, "labels")
    if np.shape(embeddings)[:1] != q_labels.shape:
        raise InputError(f"embeddings have shape {np.shape(embeddings)} for {q_labels.size} labels; expected one each")
    loo = gallery is None
    if loo != (gallery_labels is None):
        raise InputError("gallery and gallery_labels go together: pass both or neither")
    g_labels = q_labels if loo else _labels(gallery_labels, "gallery_labels")
    if not loo and np.shape(gallery)[:1] != g_labels.shape:
        raise InputError(f"gallery has shape {np.shape(gallery)} for {g_labels.size} gallery labels; expected one each")
    _, codes = np.unique(np.concatenate([q_labels, g_labels]), return_inverse=True)
    counts = np.bincount(codes[q_labels.size :], minlength=codes.max() + 1)
    # R <= G (- 1), so a depth beyond the gallery is k's, and knn refuses it.
    depth = max(int(k), int((counts[codes[: q_labels.size]] - int(loo)).max()))
    idx, _ = knn(
        embeddings,
        embeddings if loo else gallery,
        depth,
        energy=energy,
        head=head,
        chunk=chunk,
        gallery_chunk=gallery_chunk,
        leave_one_out=loo,
        dtype=dtype,
    )
    return _report(_retrieval(np.asarray(idx), q_labels, None if loo else g_labels), k)


def _report(parts, k: int) -> dict:
    return {
        "precision_at_1": _recall(*parts, 1),
        f"recall_at_{int(k)}": _recall(*parts, int(k)),
        "map_at_r": _map_at_r(*parts),
        "queries": int(_scored(parts[3]).sum()),
    }


_SEARCH_BYTES = 256 << 20  # retrieval_in_blocks: most bytes of one search call's intermediates


def _search_bytes(energy, dim: int, k: int, queries: int, capacity: int, dtype: str) -> int:
    return neighbours.block_bytes(energy, dim, k, queries, neighbours.chunk_rows(energy, queries, dim, capacity), dtype)


def retrieval_in_blocks(
    queries,
    query_rows,
    blocks: Iterable,
    labels,
    energy: str | energies.Energy,
    head: Mapping | None = None,
    k: int = 5,
    *,
    chunk: int = 256,
    dtype=jnp.float32,
) -> dict:
    """:func:`retrieval_report`'s leave-one-out figures for some items of a gallery that is seen one
    block at a time (a gallery too large to hold, embedded as it is read: ``siamax.evaluators.Retrieval``).

    ``queries`` (Q, D) are the embeddings of the gallery items ``query_rows`` (Q,); ``blocks`` yields
    the gallery's embeddings (G_i, D) in order, ``labels`` (G,) their classes. Each query is ranked
    against every other item: per block its ``max(k, largest R)`` best (``siamax.neighbours.search``,
    as ``knn``), merged into the running best (``neighbours.merge_top_k``: ties by the lower row, as
    one search orders them). With every item a query and one block, the very figures of
    ``retrieval_report``. Memory: one block, its stored copy, the search's intermediates (queries
    per call made fewer where they would pass ``_SEARCH_BYTES``: ``neighbours.block_bytes``) and the
    (Q, depth) running best; never the gallery's embeddings.
    """
    g_labels = _labels(labels, "labels")
    rows = np.asarray(query_rows).reshape(-1)
    if rows.size == 0 or not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= g_labels.size:
        raise InputError(f"query_rows must be rows of the gallery's {g_labels.size} items, got {rows[:5]}...")
    q = _embeddings(queries, "queries")
    if q.shape[0] != rows.size:
        raise InputError(f"{q.shape[0]} query embeddings for {rows.size} query rows; expected one each")
    _, codes = np.unique(g_labels, return_inverse=True)
    depth = max(int(k), int((np.bincount(codes)[codes[rows]] - 1).max()))
    if depth > g_labels.size - 1:
        raise InputError(f"k is {k}; expected k <= {g_labels.size - 1} (the gallery's items, less the query itself)")
    energy = _energy(energy)
    head = _check_head(energy, head, int(q.shape[1]))
    best_s = best_i = None
    offset = 0
    for part in blocks:
        g = _embeddings(part, "gallery block")
        del part  # one block alive at a time (the generator makes the next one while this one is held)
        n = g.shape[0]
        local = rows - offset
        exclude = np.where((local >= 0) & (local < n), local, -1)
        stored, depth_n, name = neighbours.store(energy, g, prepass=False), min(depth, n), jnp.dtype(dtype).name
        # A deep ranking (MAP@R over large classes) of wide vectors gathers k rows of D values per query
        # to score them: fewer queries per call keep that within _SEARCH_BYTES.
        per_call, capacity = min(int(chunk), q.shape[0]), stored.rows.shape[0]
        while per_call > 1 and _search_bytes(energy, q.shape[1], depth_n, per_call, capacity, name) > _SEARCH_BYTES:
            per_call = neighbours._pow2_at_most(per_call - 1)  # pylint: disable=protected-access
        s, i = neighbours.search(
            energy,
            head,
            stored,
            q,
            depth_n,
            dtype=name,
            score="negative_distance" if head is None else "logit",
            exclude=exclude,
            block=per_call,
        )
        s = np.where(i == exclude[:, None], -np.inf, s)  # k = n gives back the excluded row, last
        i = i + offset
        if best_s is None:
            best_s, best_i = s, i
        else:
            best_s, best_i = neighbours.merge_top_k([best_s, s], [best_i, i], min(depth, offset + n))
        offset += n
        del g, stored
    if offset != g_labels.size:
        raise InputError(f"the blocks held {offset} items for {g_labels.size} labels; expected one label each")
    if rows.size <= _REPORT_ROWS:
        return _report(_retrieval(best_i[:, :depth], g_labels[rows], g_labels, self_rows=rows), k)
    # Many deep rows: the figures summed over chunks of queries (the (Q, depth) masks stay small).
    sums, scored = np.zeros(3), 0
    for lo in range(0, rows.size, _REPORT_ROWS):
        r = rows[lo : lo + _REPORT_ROWS]
        valid, hit, pos, big_r = _retrieval(best_i[lo : lo + _REPORT_ROWS, :depth], g_labels[r], g_labels, self_rows=r)
        keep = big_r > 0
        if keep.any():
            n = int(keep.sum())
            sums += n * np.array([_recall(valid, hit, pos, big_r, 1), _recall(valid, hit, pos, big_r, int(k)),
                                  _map_at_r(valid, hit, pos, big_r)])  # fmt: skip
            scored += n
    _scored(np.array([scored]))
    p1, rk, ap = (float(x / scored) for x in sums)
    return {"precision_at_1": p1, f"recall_at_{int(k)}": rk, "map_at_r": ap, "queries": scored}


_REPORT_ROWS = 2048  # retrieval_in_blocks: queries whose figures are computed at a time
