"""Exact top-k search of a gallery of embeddings by an energy: the one kernel behind ``siamax.Index``
(so ``siamax identify`` and ``siamax index search``) and ``siamax.metrics.knn``.

A gallery is stored once (:func:`store`: a :class:`Gallery` on the device, in a buffer of a whole
number of 1024-row blocks, with the energy's per-row numbers); :func:`search` ranks it for a batch of
queries and returns, for each, the ``k`` best rows and their scores, best first.

How the search runs: queries go in blocks of at most 1024 (fewer for weighted_l1, below), padded to
a power of two; the gallery is scanned in fixed-size chunks (one chunk where the keys of all of it
fit in 16 MB) in one jitted loop whose trip count is an argument. Repeated searches with the same
``k`` and query bucket therefore compile once, and a gallery that grows recompiles only when it
crosses a 1024-row boundary. Each chunk's keys (``Energy.rank_keys``: larger = higher logit) cost

* ``euclidean`` / ``cosine``: one matrix product (``2 q.g - |g|^2``, or ``q.g / |g|`` with unit
  ``q``), which orders the gallery as the distance does, so as the calibrated logit does;
* ``weighted_l1`` (Koch's ``alpha . |q - g| + b``): no matrix identity exists, so the chunk is
  sized for the ``(queries, chunk, D)`` differences to stay under 16 MB (and fewer queries go per
  block), never the whole ``Q x G x D``;

and the running top-k keeps the k blocks of 128 rows with the highest maxima seen so far (the k
best rows lie in them), one small top-k per chunk. Equal keys go to the lower row. A query may
exclude one row (``exclude``: leave-one-out, where the queries are the gallery).

A single query (``siamax identify``) is bound by memory speed rather than arithmetic: where the
gallery was stored with its bfloat16 copy (``store(..., prepass=True)``: euclidean and cosine, below
4096 dimensions, see ``_WIDE``) it first reads that copy (half the bytes), whose keys are within a
proven bound of the float32 ones, and then the float32 rows of only the 32 candidates that bound
cannot rule out; where the bound cannot settle the top-k (near-equal items) the float32 pass runs
instead. The answer is the same either way (up to the order of exactly equal keys); the copy costs
half the gallery's memory again.

The ``k`` winners are then scored again pair by pair (``score``): ``"probability"``, the model's
same-class probability exactly as ``siamax.score_embeddings`` computes it (``Index``);
``"logit"``, the energy's logit; ``"negative_distance"``, ``-distance`` (no head needed: euclidean,
cosine). They are returned sorted by that score (ties keep the rank order).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from siamax import energies
from siamax.energies import Energy

SCORES = ("probability", "logit", "negative_distance")

_ROWS = 1024  # a gallery is stored in whole blocks of this many rows
_QUERY_BLOCK = 1024  # most queries per jitted call (matrix-product energies)
_BUDGET = 1 << 22  # most elements of one chunk's keys (Q x C) or weighted-L1 differences (Q x C x D): 16 MB
_MAX_CHUNK = 8192  # rows per chunk when the gallery needs several: longer ones gained nothing on CPU
_MIN_L1_CHUNK = 64
_BLOCK = 128  # rows per block of the running top-k (_search_ids)
_CANDIDATES = 32  # rows a single query's bfloat16 pre-pass keeps (at least 2k); 0: no pre-pass
# From a contraction of 4096 on, XLA's CPU compiler (jax 0.10) copies the gallery transposed before
# a (Q, D) x (D, C) product (18x slower for one query at D = 4096, 1.6x at 32 queries), and has no
# fast bfloat16 one: there the product is written gallery-major and the pre-pass is off (in so
# many dimensions distances also crowd together, and its bound would seldom settle the top-k).
_WIDE = 4096


class Gallery(NamedTuple):
    """A gallery as :func:`search` reads it (made by :func:`store`)."""

    rows: jax.Array  # (capacity, D) float32; the rows from n on are 0
    aux: jax.Array  # (capacity,) float32: Energy.rank_aux of the rows
    n: jax.Array  # () int32: the rows in use
    rows16: jax.Array | None = None  # (capacity, D) bfloat16 copy for the single-query pre-pass
    norms: jax.Array | None = None  # (capacity,) |row|, for the pre-pass's bound


# ---------------------------------------------------------------------------------------------
# Storage.


@jax.jit
def _halved(gallery):
    return gallery.astype(jnp.bfloat16), jnp.sqrt(jnp.sum(jnp.square(gallery), axis=-1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stored(energy: Energy, capacity: int, rows):
    gallery = jnp.zeros((capacity, rows.shape[1]), jnp.float32).at[: rows.shape[0]].set(rows)
    return gallery, energy.rank_aux(gallery)


def store(energy: str | Energy, rows, prepass: bool = True) -> Gallery:
    """``rows`` (N, D) on the device, padded to whole 1024-row blocks, ready for :func:`search`;
    ``prepass``: with the bfloat16 copy of a single query's pre-pass, where the energy allows it."""
    energy = energies.get(energy)
    capacity = max(_ROWS, -(-rows.shape[0] // _ROWS) * _ROWS)
    gallery, aux = _stored(energy, capacity, jnp.asarray(rows, jnp.float32))
    n = jnp.asarray(rows.shape[0], jnp.int32)  # on the device once, not at every search
    if prepass and _CANDIDATES and energy.matmul and rows.shape[1] < _WIDE:  # see _candidates
        return Gallery(gallery, aux, n, *_halved(gallery))
    return Gallery(gallery, aux, n)


# ---------------------------------------------------------------------------------------------
# The plan of one search program.


def _pow2_at_most(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def query_block(energy: str | Energy, dim: int) -> int:
    """Most queries per jitted call: 1024, fewer for weighted_l1 (its differences within budget)."""
    if not energies.get(energy).matmul:
        return max(1, min(_QUERY_BLOCK, _pow2_at_most(_BUDGET // (_MIN_L1_CHUNK * dim))))
    return _QUERY_BLOCK


def chunk_rows(energy: str | Energy, queries: int, dim: int, capacity: int) -> int:
    """Gallery rows per step of the scan for a block of ``queries``: all of a gallery whose keys fit
    the budget (16 MB), else the most that fit (at most 8192; weighted_l1 at least 64)."""
    per_row = queries * (1 if energies.get(energy).matmul else dim)
    if per_row * capacity <= _BUDGET:
        return capacity  # one chunk: no loop, and for one query no padding beyond the last block
    return min(capacity, _MAX_CHUNK, max(_MIN_L1_CHUNK, _pow2_at_most(_BUDGET // per_row)))


class _Plan(NamedTuple):
    """The static choices of one search program (so part of its compilation cache's key)."""

    chunk: int  # gallery rows per step
    block: int  # rows per block of the running top-k
    wide: bool  # gallery-major products (see _WIDE)
    candidates: int  # rows kept by a single query's bfloat16 pre-pass; 0: none


def _plan(energy: Energy, queries: int, k: int, dim: int, capacity: int, prepass: bool, chunk=None) -> _Plan:
    chunk = chunk_rows(energy, queries, dim, capacity) if chunk is None else min(int(chunk), capacity)
    block = math.gcd(min(_BLOCK, _pow2_at_most(max(1, _BUDGET // (queries * k)))), chunk)
    candidates = min(capacity, max(_CANDIDATES, 2 * k)) if prepass and queries == 1 else 0
    return _Plan(chunk, block, dim >= _WIDE, candidates)


def block_bytes(energy: str | Energy, dim: int, k: int, queries: int, chunk: int, dtype: str = "float32") -> int:
    """At most the bytes of the intermediates of one block of ``queries`` (padded to a power of two:
    c) against ``chunk`` gallery rows (g), top-k blocks of b rows (``_plan``): the keys (the product
    and its masked copy: ``8 c g``), the block maxima and their merge (value and position: ``8 c (k +
    g / b)``), the kept blocks' keys (loop carry and update: ``12 c k b``) and the winners' rows for
    their scores (query and row: ``8 c k D``, and for weighted_l1 their differences in ``dtype``);
    for weighted_l1 also the chunk's ``c g D`` float32 pair differences (where XLA does not fuse
    them into their sum)."""
    energy = energies.get(energy)
    c = _pow2_at_least(queries)
    plan = _plan(energy, c, k, dim, chunk, False, chunk)
    g, b = plan.chunk, plan.block
    total = 8 * c * g + 8 * c * (k + g // b) + 12 * c * k * b + 8 * c * k * dim
    if not energy.matmul:
        total += 4 * c * g * dim + c * k * dim * jnp.dtype(dtype).itemsize
    return total


# ---------------------------------------------------------------------------------------------
# The jitted search.


def _top_k(keys, k: int, block: int):
    """``lax.top_k`` of (Q, C) keys, in two steps where C allows: the k blocks of ``block`` columns
    with the highest maxima hold the k highest keys (a block without one has a maximum below the
    k-th), so one top-k over C / block maxima and one over k * block keys replace one over C."""
    nq, c = keys.shape
    if c % block or c // block < 2 * k:
        return jax.lax.top_k(keys, k)
    _, blocks = jax.lax.top_k(keys.reshape(nq, c // block, block).max(axis=2), k)
    cols = (blocks[:, :, None] * block + jnp.arange(block, dtype=blocks.dtype)).reshape(nq, k * block)
    top, pos = jax.lax.top_k(jnp.take_along_axis(keys, cols, 1), k)
    return top, jnp.take_along_axis(cols, pos, 1)


def _score_rows(energy: Energy, dtype: str, score: str, head, q, rows, ids):
    """Queries (Q, D), their candidates' embeddings (Q, k, D) and ids (Q, k) -> the candidates'
    scores (``score``: module docstring) and their ids, sorted best first."""
    nq, k, d = rows.shape
    e1 = jnp.broadcast_to(q[:, None, :], (nq, k, d)).reshape(nq * k, d)
    e2 = rows.reshape(nq * k, d)
    if score == "negative_distance":
        s = -energy.distance(e1, e2)
    else:
        s = energy.logit(head, e1, e2, jnp.dtype(dtype))
        if score == "probability":  # as siamax.score_embeddings
            s = jax.nn.sigmoid(s)
    s = s.reshape(nq, k)
    order = jnp.argsort(-s, axis=1, stable=True)  # ties keep the rank key's order
    return jnp.take_along_axis(s, order, 1), jnp.take_along_axis(ids, order, 1)


score_rows = jax.jit(_score_rows, static_argnums=(0, 1, 2))


def _bf16_error(dim: int) -> float:
    """A bound on |bf16(q) . bf16(g) - q . g| (either product summed in float32) relative to
    sum_j |q_j g_j| <= |q| |g|: each rounding to bfloat16 is within 2^-8, and float32 sums of ``dim``
    terms within dim 2^-24 of that sum (once for each product), with 1% to spare."""
    u, gamma = 2.0**-8, dim * 2.0**-24
    return 1.01 * (2 * u + u * u + 3 * gamma)


def _candidates(energy: Energy, k: int, plan: _Plan, gallery: Gallery, q):
    """The ``k`` best rows for one prepared query (1, D) from a bfloat16 pass: (ids (1, k), certain).

    The pass reads half the bytes of the float32 one (a single query is bound by memory speed). Each
    item's bfloat16 key is within ``bound`` of its float32 one, so an item outside the best m of
    ``key16 + bound`` has a float32 key of at most the m-th of them; where the k-th best exact key of
    those m candidates reaches that far, the top-k is certain. Otherwise (near-equal items, e.g.
    duplicates) ``certain`` is False and the caller runs the float32 pass."""
    capacity, dim = gallery.rows.shape
    qg = jnp.matmul(q.astype(jnp.bfloat16), gallery.rows16.T, preferred_element_type=jnp.float32)
    # An absolute 1e-30 covers bfloat16's flushed subnormals (of absurdly small embeddings).
    bound = _bf16_error(dim) * jnp.sqrt(jnp.sum(jnp.square(q))) * gallery.norms + 1e-30
    key16, bound = energy.keys_from_products(qg, gallery.aux), energy.key_error(bound, gallery.aux)
    ids = jnp.arange(capacity, dtype=jnp.int32)
    upper, cand = _top_k(jnp.where(ids < gallery.n, key16 + bound, -jnp.inf), plan.candidates, plan.block)
    exact = energy.rank_keys(None, q, gallery.rows[cand[0]], gallery.aux[cand[0]])
    top, pos = jax.lax.top_k(jnp.where(cand < gallery.n, exact, -jnp.inf), k)
    # min, not [-1]: XLA turns a top-k whose last value alone is read into a sort of the whole row.
    return jnp.take_along_axis(cand, pos, 1), jnp.min(top) >= jnp.min(upper)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _search(energy: Energy, dtype: str, score: str, k: int, plan: _Plan, gallery: Gallery, head, queries, exclude):
    """Exact top-k of ``queries`` (Qp, D) over the first ``gallery.n`` rows, ``exclude`` (Qp,) (or
    None) the row each query leaves out; for a single query, by way of the pre-pass where planned."""
    nq = queries.shape[0]
    q = energy.prepare(queries)
    if plan.candidates and nq == 1 and exclude is None:
        ids, certain = _candidates(energy, k, plan, gallery, q)
        exact = functools.partial(_search_ids, energy, k, plan, gallery, head, q, None)
        ids = jax.lax.cond(certain, lambda: ids, exact)
    else:
        ids = _search_ids(energy, k, plan, gallery, head, q, exclude)
    return _score_rows(energy, dtype, score, head, queries, gallery.rows[ids], ids)


def _search_ids(energy: Energy, k: int, plan: _Plan, gallery: Gallery, head, q, exclude):
    """The float32 pass: ids (Qp, k) of the best rows of the gallery for prepared queries ``q``.

    Chunk by chunk it keeps the k blocks of rows with the highest maxima seen so far, and their
    keys: the k best rows lie in those blocks (a block holding none of them has a maximum below the
    k-th best key, or an equal one after k blocks of lower rows). A chunk then costs one top-k over
    k + chunk / block maxima instead of one over all its keys (on CPU, 1024 queries over 100k rows:
    383 ms instead of 460 ms)."""
    nq, capacity = q.shape[0], gallery.rows.shape[0]
    chunk, b = plan.chunk, plan.block  # b: _BLOCK, less for a large k (kept keys within budget)

    def body(i, best):
        maxima, first, kept = best
        lo = i * chunk
        # The last chunk is shifted back to end at the buffer's end; the rows it shares with the
        # chunk before are masked, as are the rows past n.
        start = jnp.minimum(lo, capacity - chunk)
        g = jax.lax.dynamic_slice_in_dim(gallery.rows, start, chunk)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        aux = jax.lax.dynamic_slice_in_dim(gallery.aux, start, chunk)
        keys = energy.rank_keys(head, q, g, aux, plan.wide)
        valid = (ids >= lo) & (ids < gallery.n)
        if exclude is not None:
            valid = valid & (ids[None, :] != exclude[:, None])
        keys = jnp.where(valid, keys, -jnp.inf).reshape(nq, chunk // b, b)
        # The kept blocks come first and hold lower rows: top_k's ties go to them.
        maxima, pos = jax.lax.top_k(jnp.concatenate([maxima, keys.max(axis=2)], axis=1), k)
        old = pos < k  # a block kept from before, or one of this chunk's
        pos_old, pos_new = jnp.where(old, pos, 0), jnp.where(old, 0, pos - k)
        first = jnp.where(old, jnp.take_along_axis(first, pos_old, 1), start + pos_new * b)
        kept = jnp.where(
            old[:, :, None],
            jnp.take_along_axis(kept, pos_old[:, :, None], 1),
            jnp.take_along_axis(keys, pos_new[:, :, None], 1),
        )
        return maxima, first, kept

    init = (
        jnp.full((nq, k), -jnp.inf, jnp.float32),
        jnp.zeros((nq, k), jnp.int32),
        jnp.full((nq, k, b), -jnp.inf, jnp.float32),
    )
    if chunk == capacity:  # one chunk (n >= 1): no loop to run
        _, first, kept = body(0, init)
    else:
        _, first, kept = jax.lax.fori_loop(0, (gallery.n + chunk - 1) // chunk, body, init)
    # The kept blocks in row order, so that the last top-k's ties go to the lower row.
    order = jnp.argsort(first, axis=1)
    first, kept = jnp.take_along_axis(first, order, 1), jnp.take_along_axis(kept, order[:, :, None], 1)
    _, pos = jax.lax.top_k(kept.reshape(nq, k * b), k)
    return jnp.take_along_axis(first, pos // b, 1) + pos % b


# ---------------------------------------------------------------------------------------------
# The search of a batch of queries.


def _pad_rows(x, rows: int, value=0):
    if x.shape[0] == rows:
        return x
    pad = ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1)
    return (np if isinstance(x, np.ndarray) else jnp).pad(x, pad, constant_values=value)


def in_blocks(queries, block: int, search_block: Callable) -> tuple[np.ndarray, np.ndarray]:
    """``search_block(lo, q)`` -> (scores, ids) for each block ``q`` of at most ``block`` queries,
    from row ``lo``, padded to a power of two (a few query shapes, each compiled once); the results
    without the padding, concatenated: (scores (Q, k) float32, ids (Q, k) int64) as NumPy arrays."""
    scores, ids = [], []
    for lo in range(0, queries.shape[0], block):
        part = queries[lo : lo + block]
        s, i = search_block(lo, _pad_rows(part, _pow2_at_least(part.shape[0])))
        scores.append(np.asarray(s)[: part.shape[0]])
        ids.append(np.asarray(i, np.int64)[: part.shape[0]])
    if len(scores) == 1:
        return scores[0], ids[0]
    return np.concatenate(scores), np.concatenate(ids)


def search(
    energy: str | Energy,
    head,
    gallery: Gallery,
    queries,
    k: int,
    *,
    dtype: str = "float32",
    score: str = "probability",
    exclude=None,
    block: int | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows of ``gallery`` for each of ``queries`` (Q, D) float32 (module docstring):
    ``(scores (Q, k) float32, ids (Q, k) int64)``, best first, as NumPy arrays.

    Args:
      energy, head: the model's energy and head parameters (None: for ``score="negative_distance"``
        of euclidean / cosine).
      gallery: from :func:`store`; ``1 <= k <= gallery.n`` (less the excluded row) is the caller's to check.
      dtype: the model's compute dtype, as ``Energy.logit`` takes it.
      score: ``"probability"``, ``"logit"`` or ``"negative_distance"``.
      exclude: (Q,) ints, the row each query leaves out (-1: none), or None; no pre-pass then.
      block: most queries per jitted call (default and upper bound: ``query_block``).
      chunk: gallery rows per step of the scan (default: ``chunk_rows``).
    """
    energy = energies.get(energy)
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    capacity, dim = gallery.rows.shape
    most = query_block(energy, dim)
    block = most if block is None else max(1, min(int(block), most))
    prepass = gallery.rows16 is not None and exclude is None
    if exclude is not None:
        exclude = np.asarray(exclude, np.int32)

    def search_block(lo: int, q):
        plan = _plan(energy, q.shape[0], k, dim, capacity, prepass, chunk)
        ex = None if exclude is None else jnp.asarray(_pad_rows(exclude[lo : lo + q.shape[0]], q.shape[0], -1))
        return _search(energy, dtype, score, k, plan, gallery, head, q, ex)

    return in_blocks(queries, block, search_block)


def merge_top_k(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of several parts' answers (each (Q, k_i) scores, best first, and global ids), per
    query: by score, ties by the lower id (as one search orders them). A part's entries of score
    ``-inf`` (none to give) sort last."""
    scores = [np.asarray(x, np.float32) for x in scores]
    ids = [np.asarray(x, np.int64) for x in ids]
    n = scores[0].shape[0]
    out_s, out_i = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    for lo in range(0, n, _MERGE_ROWS):  # in rows: a deep merge's sort keys stay small
        s = np.concatenate([x[lo : lo + _MERGE_ROWS] for x in scores], axis=1)
        i = np.concatenate([x[lo : lo + _MERGE_ROWS] for x in ids], axis=1)
        order = np.lexsort((i, -s), axis=1)[:, :k]
        out_s[lo : lo + _MERGE_ROWS], out_i[lo : lo + _MERGE_ROWS] = (np.take_along_axis(x, order, 1) for x in (s, i))
    return out_s, out_i


_MERGE_ROWS = 2048
