"""Exact nearest-neighbour search over a gallery of embeddings: ``siamax.Index``.

An index holds the embeddings of a gallery (one ``str`` label per item, optionally a path) together
with what the model needs to compare two embeddings: its energy and head parameters. ``search``
ranks the gallery by the model's own score (``siamax.score_embeddings``, the energy's logit) and
returns, for each query, the ``k`` best items and their same-class probabilities.

How the search runs (``backend="jax"``, the default): the gallery lives on the device in a buffer
of a whole number of 1024-row blocks; queries go in blocks of at most 1024, padded to a power of
two; the gallery is scanned in fixed-size chunks (one chunk where the scores of all of it fit in
16 MB) in one jitted loop whose trip count is an argument. Repeated searches with the same ``k`` and
query bucket therefore compile once, and an ``add`` recompiles only when the gallery crosses a
1024-row boundary. Each chunk's keys (larger = higher logit) cost

* ``euclidean`` / ``cosine``: one matrix product (``2 q.g - |g|^2``, or ``q.g / |g|`` with unit
  ``q``), which orders the gallery as the distance does, so as the calibrated logit does;
* ``weighted_l1`` (Koch's ``alpha . |q - g| + b``): no matrix identity exists, so the chunk is
  sized for the ``(queries, chunk, D)`` differences to stay under 16 MB (and fewer queries go per
  block), never the whole ``Q x G x D``;

and the running top-k keeps the k blocks of 128 rows with the highest maxima seen so far (the k
best rows lie in them), one small top-k per chunk. A single query (``siamax identify``) is bound by
memory speed rather than arithmetic: it first reads a bfloat16 copy of the gallery (half the
bytes), whose keys are within a proven bound of the float32 ones, and then the float32 rows of only
the 32 candidates that bound cannot rule out; where the bound cannot settle the top-k (near-equal
items) the float32 pass runs instead. The answer is the same either way; the copy costs half the
gallery's memory again (euclidean and cosine, below 4096 dimensions: see ``_WIDE``).

The ``k`` winners are then scored again exactly as ``siamax.score_embeddings`` scores them and
sorted by that score, so the probabilities returned are the model's.

``backend="faiss"`` keeps the gallery in host memory in a faiss-cpu ``IndexFlatL2`` (euclidean) or
``IndexFlatIP`` on unit vectors (cosine), for galleries beyond the device's memory; the winners are
scored as above, so both backends give the same answers (up to float ties). ``weighted_l1`` is not
a faiss metric and is refused there.

Ids are row positions: ``remove`` renumbers the items after the removed ones (as faiss's
``remove_ids`` does). Labels and paths are what identify an item across changes.

Files (``save`` / ``Index.load``): one ``.npz`` (NumPy's zip of arrays, read with
``allow_pickle=False``: loading cannot run code) holding the embeddings, the head's parameters and
a JSON record with the labels, paths, energy, spec and the model's fingerprint (:func:`fingerprint`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from siamax import energies
from siamax.api import Params, _check_embeddings, _check_params
from siamax.errors import ConfigError, DataError, InputError, InputTypeError, ModelError
from siamax.model import ModelSpec

BACKENDS = ("jax", "faiss")
INDEX_FORMAT = "siamax-index/1"
INDEX_NAME = "index.npz"
FAISS_INSTALL = "pip install 'siamax[faiss]' (or: pip install faiss-cpu)"

_ROWS = 1024  # the device gallery is stored in whole blocks of this many rows
_QUERY_BLOCK = 1024  # most queries per jitted call (matrix-product energies)
_BUDGET = 1 << 22  # most elements of one chunk's scores (Q x C) or weighted-L1 differences (Q x C x D): 16 MB
_MAX_CHUNK = 8192  # rows per chunk when the gallery needs several: longer ones gained nothing on CPU
_MIN_L1_CHUNK = 64
_BLOCK = 128  # rows per block of the running top-k (_search_ids)
_CANDIDATES = 32  # rows a single query's bfloat16 pre-pass keeps (at least 2k); 0: no pre-pass
# From a contraction of 4096 on, XLA's CPU compiler (jax 0.10) copies the gallery transposed before
# a (Q, D) x (D, C) product (18x slower for one query at D = 4096, 1.6x at 32 queries), and has no
# fast bfloat16 one: there the product is written gallery-major and the pre-pass is off (in so
# many dimensions distances also crowd together, and its bound would seldom settle the top-k).
_WIDE = 4096
_META = "meta"
_EMBEDDINGS = "embeddings"
_HEAD = "head/"


class Match(NamedTuple):
    """One search result: the item's label, its same-class probability, its id (row) and path."""

    label: str
    score: float
    id: int
    path: str | None


def fingerprint(params: Params) -> str:
    """sha256 (hex) of a model: its spec and every weight (name, dtype, shape and bytes).

    ``conv_impl`` is left out: it picks among implementations of the same maths, so a model run
    with another one computes the same embeddings.
    """
    _check_params(params, "fingerprint")
    h = hashlib.sha256()
    spec = params.spec.to_dict()
    spec.pop("conv_impl", None)
    h.update(json.dumps(spec, sort_keys=True).encode())
    leaves = jax.tree_util.tree_flatten_with_path(params.weights)[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The jitted search.


def _pow2_at_most(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def _query_block(energy: str, dim: int) -> int:
    if energy == "weighted_l1":
        return max(1, min(_QUERY_BLOCK, _pow2_at_most(_BUDGET // (_MIN_L1_CHUNK * dim))))
    return _QUERY_BLOCK


def _chunk(energy: str, queries: int, dim: int, capacity: int) -> int:
    per_row = queries * (dim if energy == "weighted_l1" else 1)
    if per_row * capacity <= _BUDGET:
        return capacity  # one chunk: no loop, and for one query no padding beyond the last block
    return min(capacity, _MAX_CHUNK, max(_MIN_L1_CHUNK, _pow2_at_most(_BUDGET // per_row)))


class _Plan(NamedTuple):
    """The static choices of one search program (so part of its compilation cache's key)."""

    chunk: int  # gallery rows per step
    block: int  # rows per block of the running top-k
    wide: bool  # gallery-major products (see _WIDE)
    candidates: int  # rows kept by a single query's bfloat16 pre-pass; 0: none


def _plan(energy: str, queries: int, k: int, dim: int, capacity: int, prepass: bool) -> _Plan:
    chunk = _chunk(energy, queries, dim, capacity)
    block = math.gcd(min(_BLOCK, _pow2_at_most(max(1, _BUDGET // (queries * k)))), chunk)
    candidates = min(capacity, max(_CANDIDATES, 2 * k)) if prepass and queries == 1 else 0
    return _Plan(chunk, block, dim >= _WIDE, candidates)


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


def _aux(energy: str, gallery: jax.Array) -> jax.Array:
    """Per-item numbers the rank key needs: |g|^2 (euclidean), 1/|g| (cosine), nothing (weighted_l1)."""
    sq = jnp.sum(jnp.square(gallery), axis=-1)
    if energy == "euclidean":
        return sq
    if energy == "cosine":
        return jax.lax.rsqrt(jnp.maximum(sq, energies._EPS))  # as energies._normalise
    return jnp.zeros_like(sq)


def _rank_keys(energy: str, head, q, g, aux, wide: bool = False):
    """(Q, D) prepared queries x (C, D) gallery rows -> (Q, C): larger = higher logit."""
    if energy == "weighted_l1":
        alpha = head["kernel"][:, 0].astype(jnp.float32)
        return jnp.sum(jnp.abs(q[:, None, :] - g[None, :, :]) * alpha, axis=-1)
    # HIGHEST: a reduced-precision product (TF32 on GPUs) would swamp small differences of distance.
    if wide:
        qg = jnp.matmul(g, q.T, precision=jax.lax.Precision.HIGHEST).T
    else:
        qg = jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)
    return 2.0 * qg - aux[None, :] if energy == "euclidean" else qg * aux[None, :]


def _score_rows(energy: str, dtype: str, head, q, rows, ids):
    """Queries (Q, D), their candidates' embeddings (Q, k, D) and ids (Q, k) -> the candidates'
    probabilities as ``score_embeddings`` computes them, and their ids, sorted best first."""
    nq, k, d = rows.shape
    e1 = jnp.broadcast_to(q[:, None, :], (nq, k, d)).reshape(nq * k, d)
    logits = energies.logit(energy, head, e1, rows.reshape(nq * k, d), jnp.dtype(dtype))
    p = jax.nn.sigmoid(logits).reshape(nq, k)
    order = jnp.argsort(-p, axis=1, stable=True)  # ties keep the rank key's order
    return jnp.take_along_axis(p, order, 1), jnp.take_along_axis(ids, order, 1)


score_rows = jax.jit(_score_rows, static_argnums=(0, 1))


def _bf16_error(dim: int) -> float:
    """A bound on |bf16(q) . bf16(g) - q . g| (either product summed in float32) relative to
    sum_j |q_j g_j| <= |q| |g|: each rounding to bfloat16 is within 2^-8, and float32 sums of ``dim``
    terms within dim 2^-24 of that sum (once for each product), with 1% to spare."""
    u, gamma = 2.0**-8, dim * 2.0**-24
    return 1.01 * (2 * u + u * u + 3 * gamma)


def _candidates(energy: str, k: int, plan: _Plan, gallery, aux, gallery16, norms, n, q):
    """The ``k`` best rows for one prepared query (1, D) from a bfloat16 pass: (ids (1, k), certain).

    The pass reads half the bytes of the float32 one (a single query is bound by memory speed). Each
    item's bfloat16 key is within ``bound`` of its float32 one, so an item outside the best m of
    ``key16 + bound`` has a float32 key of at most the m-th of them; where the k-th best exact key of
    those m candidates reaches that far, the top-k is certain. Otherwise (near-equal items, e.g.
    duplicates) ``certain`` is False and the caller runs the float32 pass."""
    capacity, dim = gallery.shape
    qg = jnp.matmul(q.astype(jnp.bfloat16), gallery16.T, preferred_element_type=jnp.float32)
    # An absolute 1e-30 covers bfloat16's flushed subnormals (of absurdly small embeddings).
    bound = _bf16_error(dim) * jnp.sqrt(jnp.sum(jnp.square(q))) * norms + 1e-30
    if energy == "euclidean":  # and the float32 rounding of subtracting |g|^2, in either pass
        key16, bound = 2.0 * qg - aux, 2.0 * bound + 2.0**-21 * aux
    else:
        key16, bound = qg * aux, bound * aux
    ids = jnp.arange(capacity, dtype=jnp.int32)
    upper, cand = _top_k(jnp.where(ids < n, key16 + bound, -jnp.inf), plan.candidates, plan.block)
    exact = _rank_keys(energy, None, q, gallery[cand[0]], aux[cand[0]])
    top, pos = jax.lax.top_k(jnp.where(cand < n, exact, -jnp.inf), k)
    # min, not [-1]: XLA turns a top-k whose last value alone is read into a sort of the whole row.
    return jnp.take_along_axis(cand, pos, 1), jnp.min(top) >= jnp.min(upper)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _search(energy: str, dtype: str, k: int, plan: _Plan, gallery, aux, n, head, queries, gallery16=None, norms=None):
    """Exact top-k of ``queries`` (Qp, D) over the first ``n`` rows of ``gallery`` (capacity, D);
    for a single query, by way of ``gallery16`` (bfloat16) and ``norms`` (|g|) where given."""
    nq = queries.shape[0]
    q = energies._normalise(queries) if energy == "cosine" else queries
    if plan.candidates and nq == 1:
        ids, certain = _candidates(energy, k, plan, gallery, aux, gallery16, norms, n, q)
        exact = functools.partial(_search_ids, energy, k, plan, gallery, aux, n, head, q)
        ids = jax.lax.cond(certain, lambda: ids, exact)
    else:
        ids = _search_ids(energy, k, plan, gallery, aux, n, head, q)
    return _score_rows(energy, dtype, head, queries, gallery[ids], ids)


def _search_ids(energy: str, k: int, plan: _Plan, gallery, aux, n, head, q):
    """The float32 pass: ids (Qp, k) of the best rows of the gallery for prepared queries ``q``.

    Chunk by chunk it keeps the k blocks of rows with the highest maxima seen so far, and their
    keys: the k best rows lie in those blocks (a block holding none of them has a maximum below the
    k-th best key). A chunk then costs one top-k over k + chunk / block maxima instead of one over
    all its keys (on CPU, 1024 queries over 100k rows: 383 ms instead of 460 ms)."""
    nq, capacity = q.shape[0], gallery.shape[0]
    chunk, b = plan.chunk, plan.block  # b: _BLOCK, less for a large k (kept keys within budget)

    def body(i, best):
        maxima, first, kept = best
        lo = i * chunk
        # The last chunk is shifted back to end at the buffer's end; the rows it shares with the
        # chunk before are masked, as are the rows past n.
        start = jnp.minimum(lo, capacity - chunk)
        g = jax.lax.dynamic_slice_in_dim(gallery, start, chunk)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        keys = _rank_keys(energy, head, q, g, jax.lax.dynamic_slice_in_dim(aux, start, chunk), plan.wide)
        keys = jnp.where((ids >= lo) & (ids < n), keys, -jnp.inf).reshape(nq, chunk // b, b)
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
        _, first, kept = jax.lax.fori_loop(0, (n + chunk - 1) // chunk, body, init)
    _, pos = jax.lax.top_k(kept.reshape(nq, k * b), k)
    return jnp.take_along_axis(first, pos // b, 1) + pos % b


@jax.jit
def _halved(gallery):
    return gallery.astype(jnp.bfloat16), jnp.sqrt(jnp.sum(jnp.square(gallery), axis=-1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stored(energy: str, capacity: int, rows):
    gallery = jnp.zeros((capacity, rows.shape[1]), jnp.float32).at[: rows.shape[0]].set(rows)
    return gallery, _aux(energy, gallery)


def _pad_rows(x, rows: int):
    if x.shape[0] == rows:
        return x
    pad = ((0, rows - x.shape[0]), (0, 0))
    return np.pad(x, pad) if isinstance(x, np.ndarray) else jnp.pad(x, pad)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(
            f"backend='faiss' needs the faiss-cpu package, which is not installed: {FAISS_INSTALL}"
        ) from e
    return faiss


# ---------------------------------------------------------------------------------------------
# The index.


class Index:
    """A searchable gallery of embeddings of one model; see the module docstring.

    ``Index(params)`` is empty; :meth:`build` makes one from embeddings, :meth:`load` reads one.
    """

    def __init__(self, params: Params, backend: str = "jax"):
        params = _check_params(params, "Index")
        self._init(params.spec, params.weights["head"], fingerprint(params), backend)

    def _init(self, spec: ModelSpec, head, model_fingerprint: str, backend: str) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss":
            if spec.energy == "weighted_l1":
                raise ConfigError(
                    "backend='faiss' cannot search a weighted_l1 model: Koch's head alpha . |e1 - e2| + b, with "
                    "learned (possibly negative) weights alpha, is not a faiss metric. Use backend='jax' (exact, "
                    "chunked), or a model trained with energy='euclidean' or 'cosine'"
                )
            _faiss()
        self.spec, self.backend, self.fingerprint = spec, backend, model_fingerprint
        self._head = {name: jnp.asarray(v, jnp.float32) for name, v in head.items()}
        self._labels: list[str] = []
        self._paths: list[str | None] = []
        self._store(np.zeros((0, spec.embedding_dim), np.float32))

    @classmethod
    def build(
        cls, params: Params, embeddings, labels: Sequence[str], paths: Sequence[str] | None = None, backend: str = "jax"
    ) -> Index:
        """An index of ``embeddings`` (N, D) from ``siamax.embed(params, ...)``, item i labelled
        ``labels[i]`` (its class name) and, optionally, ``paths[i]`` (the file it came from)."""
        index = cls(params, backend=backend)
        index.add(embeddings, labels, paths)
        return index

    @property
    def energy(self) -> str:
        return self.spec.energy

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        return (
            f"Index({len(self)} items, energy={self.energy!r}, dim={self.spec.embedding_dim}, "
            f"backend={self.backend!r}, model {self.fingerprint[:12]})"
        )

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def paths(self) -> list[str | None]:
        return list(self._paths)

    @property
    def embeddings(self) -> jax.Array | np.ndarray:
        """The gallery (N, D) float32: a device array (jax backend) or a NumPy array (faiss)."""
        if self.backend == "faiss":
            return self._rows
        return self._gallery[: len(self)]

    # -- changes ---------------------------------------------------------------------------

    def _store(self, rows) -> None:
        """Make ``rows`` (N, D) the gallery: on the device padded to whole blocks, or in faiss."""
        if self.backend == "faiss":
            self._rows = np.ascontiguousarray(np.asarray(rows, np.float32))
            faiss = _faiss()
            d = self.spec.embedding_dim
            if self.energy == "euclidean":
                self._faiss_index = faiss.IndexFlatL2(d)
                self._faiss_index.add(self._rows)
            else:
                self._faiss_index = faiss.IndexFlatIP(d)
                self._faiss_index.add(np.asarray(energies._normalise(jnp.asarray(self._rows))))
            return
        capacity = max(_ROWS, -(-rows.shape[0] // _ROWS) * _ROWS)
        self._gallery, self._aux = _stored(self.energy, capacity, jnp.asarray(rows, jnp.float32))
        self._n = jnp.asarray(rows.shape[0], jnp.int32)  # on the device once, not at every search
        self._gallery16 = self._norms = None
        if _CANDIDATES and self.energy != "weighted_l1" and self.spec.embedding_dim < _WIDE:  # see _candidates
            self._gallery16, self._norms = _halved(self._gallery)

    def add(self, embeddings, labels: Sequence[str], paths: Sequence[str] | None = None) -> np.ndarray:
        """Append items; returns their ids. ``paths``: one per item, or None (no paths)."""
        e = embeddings if isinstance(embeddings, (np.ndarray, jax.Array)) else np.asarray(embeddings)
        _check_embeddings(self.spec, e, "embeddings")
        m = e.shape[0]
        labels = _checked_labels(labels, m)
        paths = _checked_paths(paths, m)
        n = len(self)
        if m:
            if self.backend == "faiss":
                rows = np.concatenate([self._rows, np.asarray(e, np.float32)])
            else:
                rows = jnp.concatenate([self.embeddings, jnp.asarray(e, jnp.float32)])
            self._store(rows)
            self._labels += labels
            self._paths += paths
        return np.arange(n, n + m)

    def remove(self, items) -> int:
        """Remove items by label (a ``str`` or a list of them: every item of those labels) or by id
        (an ``int`` or a list / array of them). Returns how many were removed; the later items' ids
        move down. A label or id that is not in the index is an error."""
        n = len(self)
        if isinstance(items, str):
            items = [items]
        elif isinstance(items, (int, np.integer)):
            items = [int(items)]
        values = list(items.tolist() if isinstance(items, (np.ndarray, jax.Array)) else items)
        if all(isinstance(v, str) for v in values):
            missing = sorted(set(values) - set(self._labels))
            if missing:
                raise InputError(
                    f"remove: {len(missing)} label(s) not in the index: {missing[:5]}"
                    + ("..." if len(missing) > 5 else "")
                    + f" (it holds {len(set(self._labels))} labels)"
                )
            drop = np.isin(np.asarray(self._labels, dtype=object), np.asarray(values, dtype=object))
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            ids = np.asarray(values, np.int64)
            bad = ids[(ids < 0) | (ids >= n)]
            if bad.size:
                raise InputError(f"remove: ids {bad[:5].tolist()} are out of range: the index holds ids 0..{n - 1}")
            drop = np.zeros(n, bool)
            drop[ids] = True
        else:
            raise InputTypeError(
                f"remove: expected labels (str) or ids (int), not a mix or other types; got {values[:5]!r}"
            )
        keep = np.flatnonzero(~drop)
        if keep.size < n:
            rows = self._rows[keep] if self.backend == "faiss" else self.embeddings[jnp.asarray(keep)]
            self._store(rows)
            self._labels = [self._labels[i] for i in keep]
            self._paths = [self._paths[i] for i in keep]
        return int(n - keep.size)

    # -- search ----------------------------------------------------------------------------

    def search(self, query_embeddings, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery items for each query (Q, D): (scores (Q, k) float32 same-class
        probabilities, best first, as ``siamax.score_embeddings`` gives them; ids (Q, k) int64)."""
        q = query_embeddings
        q = q if isinstance(q, (np.ndarray, jax.Array)) else np.asarray(q)
        _check_embeddings(self.spec, q, "query_embeddings")
        n = len(self)
        if n == 0:
            raise InputError("search: the index is empty; add embeddings first (Index.build or index.add)")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"search: k must be a positive int, got {k!r}")
        if k > n:
            raise InputError(f"search: k={k} is larger than the index, which holds {n} items; pass k <= {n}")
        k, nq = int(k), q.shape[0]
        if nq == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if isinstance(q, np.ndarray):
            q = q.astype(np.float32, copy=False)
        else:
            q = q.astype(jnp.float32)
        block = _query_block(self.energy, self.spec.embedding_dim) if self.backend == "jax" else _QUERY_BLOCK
        scores, ids = [], []
        for lo in range(0, nq, block):
            part = q[lo : lo + block]
            rows = _pow2_at_least(part.shape[0])  # a few query shapes, each compiled once
            s, i = self._search_block(_pad_rows(part, rows), k)
            scores.append(np.asarray(s)[: part.shape[0]])
            ids.append(np.asarray(i, np.int64)[: part.shape[0]])
        if len(scores) == 1:
            return scores[0], ids[0]
        return np.concatenate(scores), np.concatenate(ids)

    def _search_block(self, q, k: int):
        dtype = self.spec.dtype
        if self.backend == "jax":
            prepass = self._gallery16 is not None
            plan = _plan(self.energy, q.shape[0], k, self.spec.embedding_dim, self._gallery.shape[0], prepass)
            args = (self._gallery, self._aux, self._n, self._head, q, self._gallery16, self._norms)
            return _search(self.energy, dtype, k, plan, *args)
        qh = np.ascontiguousarray(np.asarray(q, np.float32))
        if self.energy == "cosine":
            qh = np.ascontiguousarray(np.asarray(energies._normalise(jnp.asarray(qh))))
        _, ids = self._faiss_index.search(qh, k)
        return score_rows(self.energy, dtype, self._head, jnp.asarray(q), jnp.asarray(self._rows[ids]), ids)

    def lookup(self, ids) -> np.ndarray:
        """Labels of ``ids`` (any shape), as a NumPy array of ``str`` objects of the same shape."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise InputError(f"lookup: ids must be in 0..{len(self) - 1}; got values in [{ids.min()}, {ids.max()}]")
        return np.asarray(self._labels, dtype=object)[ids] if ids.size else np.empty(ids.shape, dtype=object)

    def matches(self, query_embeddings, k: int = 1) -> list[list[Match]]:
        """:meth:`search` with each result as a :class:`Match` (label, score, id, path), best first."""
        scores, ids = self.search(query_embeddings, k)
        return [
            [Match(self._labels[i], float(s), int(i), self._paths[i]) for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores, ids)
        ]

    # -- files -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (a ``.npz`` file, or a directory -> DIR/index.npz)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path / INDEX_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": INDEX_FORMAT,
            "fingerprint": self.fingerprint,
            "energy": self.energy,
            "spec": self.spec.to_dict(),
            "count": len(self),
            "labels": self._labels,
            "paths": self._paths,
        }
        arrays = {
            _META: np.frombuffer(json.dumps(meta).encode(), np.uint8),
            _EMBEDDINGS: np.asarray(self.embeddings, np.float32),
            **{_HEAD + name: np.asarray(v) for name, v in self._head.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path, params: Params | None = None, backend: str = "jax") -> Index:
        """Read an index written by :meth:`save`. With ``params``, refuse an index of another model
        (:class:`~siamax.errors.ModelError` naming both fingerprints); without, trust the file."""
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_NAME
        if not path.is_file():
            raise DataError(f"no siamax index at {path} (expected a file written by Index.save, or its directory)")
        not_index = f"{path} is not a siamax index file (one written by siamax.Index.save)"
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ModelError(f"{not_index}: it holds a single NumPy array")
            with z:
                if _META not in z.files:
                    raise ModelError(f"{not_index}: it has no index record")
                meta = json.loads(bytes(z[_META]).decode())
                rows = z[_EMBEDDINGS] if _EMBEDDINGS in z.files else None
                head = {f[len(_HEAD) :]: z[f] for f in z.files if f.startswith(_HEAD)}
        except ModelError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise ModelError(f"{not_index}: {type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ModelError(f"{not_index}: its format is {found!r}, expected {INDEX_FORMAT!r}")
        try:
            spec = ModelSpec.from_dict(meta["spec"])
            labels, paths, count = meta["labels"], meta["paths"], meta["count"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: damaged index record ({type(e).__name__}: {e})") from e
        expected_head = energies.head_shapes(spec.energy, spec.embedding_dim)
        if (
            rows is None
            or rows.dtype != np.float32
            or rows.shape != (count, spec.embedding_dim)
            or len(labels) != count
            or len(paths) != count
            or {name: tuple(v.shape) for name, v in head.items()} != expected_head
        ):
            raise ModelError(
                f"{path}: damaged index: its arrays do not match its record ({count} items of dimension "
                f"{spec.embedding_dim}, energy {spec.energy})"
            )
        if not np.isfinite(rows).all():
            raise ModelError(f"{path}: damaged index: its embeddings hold non-finite values")
        if params is not None:
            _check_params(params, "Index.load")
            ours = fingerprint(params)
            if ours != meta["fingerprint"]:
                raise ModelError(
                    f"{path} was built with another model: the index's model fingerprint is {meta['fingerprint']}, "
                    f"the given params' is {ours}. Embeddings of different models are not comparable: rebuild the "
                    f"index with this model (Index.build(params, siamax.embed(params, images), labels)), or load "
                    f"the model the index was built with"
                )
        index = cls.__new__(cls)
        index._init(spec, head, meta["fingerprint"], backend)
        index.add(rows, labels, paths)
        return index


def _checked_labels(labels, m: int) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise InputTypeError(f"labels must be a sequence of str, one per embedding; got {type(labels).__name__}")
    labels = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    if len(labels) != m:
        raise InputError(f"labels has {len(labels)} entries for {m} embeddings; expected one label per embedding")
    bad = [x for x in labels if not isinstance(x, str)]
    if bad:
        raise InputTypeError(f"labels must be str (class names); got {type(bad[0]).__name__} {bad[0]!r}")
    return labels


def _checked_paths(paths, m: int) -> list[str | None]:
    if paths is None:
        return [None] * m
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Iterable):
        raise InputTypeError(f"paths must be None or a sequence of paths, one per embedding; got {paths!r:.80}")
    paths = list(paths.tolist() if isinstance(paths, np.ndarray) else paths)
    if len(paths) != m:
        raise InputError(f"paths has {len(paths)} entries for {m} embeddings; expected one path per embedding")
    bad = [p for p in paths if p is not None and not isinstance(p, (str, os.PathLike))]
    if bad:
        raise InputTypeError(f"paths must be str or os.PathLike (or None); got {type(bad[0]).__name__} {bad[0]!r}")
    return [None if p is None else os.fspath(p) for p in paths]
