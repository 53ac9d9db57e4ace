"""Nearest-neighbour search over a gallery of embeddings: ``siamax.Index``.

An index holds the embeddings of a gallery (one ``str`` label per item, optionally a path) together
with what the model needs to compare two embeddings: its energy and head parameters. ``search``
ranks the gallery by the model's own score (``siamax.score_embeddings``, the energy's logit) and
returns, for each query, the ``k`` best items and their same-class probabilities.

The gallery lives in a backend, chosen once at construction (``BACKENDS``):

* ``backend="jax"`` (the default): on the device, searched by ``siamax.neighbours`` (its module
  docstring says how: blocked matrix products for euclidean / cosine, bounded chunks of pair
  differences for weighted_l1, a bfloat16 pre-pass for a single query); an ``add`` recompiles only
  when the gallery crosses a 1024-row boundary. Exact.
* ``backend="faiss"``: in host memory in a faiss-cpu flat index (L2 for euclidean, inner product on
  unit vectors for cosine). Exact.
* ``backend="hnsw"``: **approximate**, a faiss HNSW graph over the same vectors: far fewer distances
  per query on a large gallery, at the price of missing some of the true k best (``Index.recall``
  measures how many, against exact search). Its graph is saved with the index.

``weighted_l1`` is not a faiss metric and is refused by both faiss backends.

Whatever the backend, the ``k`` winners are then scored again exactly as ``siamax.score_embeddings``
scores them and sorted by that score, so the probabilities returned are the model's, and the two
exact backends give the same answers (up to float ties).

Ids are row positions: ``remove`` renumbers the items after the removed ones (as faiss's
``remove_ids`` does). Labels and paths are what identify an item across changes.

Files (``save`` / ``Index.load``): one ``.npz`` (NumPy's zip of arrays, read with
``allow_pickle=False``: loading cannot run code) holding the embeddings, the head's parameters and
a JSON record with the labels, paths, energy, spec and the model's fingerprint
(``siamax.checkpoint.fingerprint``).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from siamax import energies, neighbours
from siamax.api import _check_embedding_values
from siamax.checkpoint import fingerprint
from siamax.energies import Energy
from siamax.errors import ConfigError, DataError, InputError, InputTypeError, ModelError, one_line
from siamax.model import Ensemble, ModelSpec, Params, _check_params

INDEX_FORMAT = "siamax-index/1"
INDEX_NAME = "index.npz"
FAISS_INSTALL = "pip install 'siamax[faiss]' (or: pip install faiss-cpu)"

_META = "meta"
_EMBEDDINGS = "embeddings"
_HEAD = "head/"
_GRAPH = "hnsw_graph"


class Match(NamedTuple):
    """One search result: the item's label, its same-class probability, its id (row) and path."""

    label: str
    score: float
    id: int
    path: str | None


# ---------------------------------------------------------------------------------------------
# The backends: where the gallery lives and how its winners are found. Each holds the rows (N, D)
# float32 and has store / add / remove / search / embeddings.


class _DeviceGallery:
    """The gallery on the device (a ``neighbours.Gallery``), searched by ``neighbours.search``."""

    approximate = False

    def __init__(self, energy: Energy, dim: int):
        self.energy, self.dim = energy, dim
        self.store(jnp.zeros((0, dim), jnp.float32))

    def store(self, rows) -> None:
        """Make ``rows`` (N, D) the gallery, padded to whole blocks (with the pre-pass's copy)."""
        self.gallery = neighbours.store(self.energy, rows)
        self._count = rows.shape[0]

    @property
    def embeddings(self) -> jax.Array:
        return self.gallery.rows[: self._count]

    def add(self, rows) -> None:
        self.store(jnp.concatenate([self.embeddings, jnp.asarray(rows, jnp.float32)]))

    def remove(self, keep: np.ndarray) -> None:
        self.store(self.embeddings[jnp.asarray(keep)])

    def search(self, head, dtype: str, q, k: int):
        return neighbours.search(self.energy, head, self.gallery, q, k, dtype=dtype)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(
            f"backend='faiss' needs the faiss-cpu package, which is not installed: {FAISS_INSTALL}"
        ) from e
    return faiss


# The faiss metric of each energy it can search, and whether it holds the energy's prepared (unit) vectors.
_FAISS_METRICS = {"euclidean": ("METRIC_L2", False), "cosine": ("METRIC_INNER_PRODUCT", True)}


class _FaissGallery:
    """The gallery in host memory, in a faiss flat index; its winners scored by ``neighbours.score_rows``."""

    name, approximate = "faiss", False

    def __init__(self, energy: Energy, dim: int):
        if energy.name not in _FAISS_METRICS:
            raise ConfigError(
                f"backend={self.name!r} cannot search a {energy.name} model: Koch's head alpha . |e1 - e2| + b, with "
                "learned (possibly negative) weights alpha, is not a faiss metric. Use backend='jax' (exact, "
                "chunked), or a model trained with energy='euclidean' or 'cosine'"
            )
        self.faiss = _faiss()
        self.energy, self.dim = energy, dim
        metric, self.unit = _FAISS_METRICS[energy.name]
        self.metric = getattr(self.faiss, metric)
        self.store(np.zeros((0, dim), np.float32))

    def _new_index(self):
        return self.faiss.IndexFlat(self.dim, self.metric)

    def _prepared(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self.energy.prepare(jnp.asarray(x)))) if self.unit else x

    def store(self, rows) -> None:
        self.rows = np.ascontiguousarray(np.asarray(rows, np.float32))
        self.index = self._new_index()
        self.index.add(self._prepared(self.rows))

    @property
    def embeddings(self) -> np.ndarray:
        return self.rows

    def add(self, rows) -> None:
        rows = np.ascontiguousarray(np.asarray(rows, np.float32))
        self.index.add(self._prepared(rows))
        self.rows = np.concatenate([self.rows, rows])

    def remove(self, keep: np.ndarray) -> None:
        self.store(self.rows[keep])

    def _candidates(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(self._prepared(q), k)[1]

    def search(self, head, dtype: str, q, k: int):
        def search_block(_, part):
            ids = self._candidates(np.ascontiguousarray(np.asarray(part, np.float32)), k)
            return neighbours.score_rows(
                self.energy, dtype, "probability", head, jnp.asarray(part), jnp.asarray(self.rows[ids]), ids
            )

        return neighbours.in_blocks(q, neighbours._QUERY_BLOCK, search_block)


class _HnswGallery(_FaissGallery):
    """Approximate: a faiss HNSW graph (Malkov & Yashunin 2018) over the same vectors. A search visits
    a small part of the gallery, so it may miss some of the true k best (``Index.recall`` measures how
    many); the winners it finds are scored exactly, like every backend's. ``add`` extends the graph;
    ``remove`` rebuilds it (HNSW cannot unlink a node)."""

    name, approximate = "hnsw", True
    # Links per node, candidates kept while building and while searching (at least k): common HNSW
    # settings, not tuned; what they give at 1M items is in docs/performance.md (approximate_search.py).
    M, EF_CONSTRUCTION, EF_SEARCH = 32, 80, 96

    def _new_index(self):
        index = self.faiss.IndexHNSWFlat(self.dim, self.M, self.metric)
        index.hnsw.efConstruction = self.EF_CONSTRUCTION
        return index

    def _candidates(self, q: np.ndarray, k: int) -> np.ndarray:
        params = self.faiss.SearchParametersHNSW()
        params.efSearch = max(self.EF_SEARCH, k)
        ids = self.index.search(self._prepared(q), k, params=params)[1]
        if (ids < 0).any():  # fewer than k reachable: cannot happen on a connected graph with ef >= k
            raise DataError(f"the HNSW graph returned fewer than k={k} items; rebuild the index")
        return ids

    def graph(self) -> np.ndarray:
        """The graph as bytes (uint8), to save beside the embeddings: loading it skips a rebuild."""
        return self.faiss.serialize_index(self.index)

    def restore(self, rows: np.ndarray, graph: np.ndarray) -> None:
        try:
            index = self.faiss.deserialize_index(np.ascontiguousarray(graph, np.uint8))
        except RuntimeError as e:
            raise ModelError(f"damaged index: its HNSW graph cannot be read ({one_line(str(e))})") from e
        if not isinstance(index, self.faiss.IndexHNSWFlat) or index.ntotal != len(rows) or index.d != self.dim:
            raise ModelError(f"damaged index: its HNSW graph does not match its {len(rows)} embeddings")
        self.rows, self.index = np.ascontiguousarray(rows, np.float32), index


BACKENDS = {"jax": _DeviceGallery, "faiss": _FaissGallery, "hnsw": _HnswGallery}


# ---------------------------------------------------------------------------------------------
# The index.


class Index:
    """A searchable gallery of embeddings of one model; see the module docstring.

    ``Index(params)`` is empty; :meth:`build` makes one from embeddings, :meth:`load` reads one.
    """

    def __init__(self, params: Params | Ensemble, backend: str = "jax"):
        if isinstance(params, Ensemble):
            specs = tuple(m.spec for m in params.members)
            head = energies.MeanProbability.joined_head(m.weights["head"] for m in params.members)
        else:
            specs, head = (_check_params(params, "Index").spec,), params.weights["head"]
        self._init(specs, head, fingerprint(params), backend)

    def _init(self, specs: tuple[ModelSpec, ...], head, model_fingerprint: str, backend: str) -> None:
        """``specs``: the model's spec, or an ensemble's members' (two or more)."""
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
        self.specs = tuple(specs)
        self.spec = specs[0] if len(specs) == 1 else None  # one model's spec; None for an ensemble
        self.dim = sum(s.embedding_dim for s in specs)
        self._dtype = specs[0].dtype if len(specs) == 1 else "float32"  # an ensemble's members keep their own
        self._energy = _energy_of(self.specs)
        self._gallery = BACKENDS[backend](self._energy, self.dim)
        self.backend, self.fingerprint = backend, model_fingerprint
        self._head = {name: jnp.asarray(v, jnp.float32) for name, v in head.items()}
        self._labels: list[str] = []
        self._paths: list[str | None] = []
        # The last Index.recall of this gallery ({"k", "queries", "recall"}), saved with it; None once changed.
        self.measured_recall: dict | None = None

    @classmethod
    def build(
        cls,
        params: Params | Ensemble,
        embeddings,
        labels: Sequence[str],
        paths: Sequence[str] | None = None,
        backend: str = "jax",
    ) -> Index:
        """An index of ``embeddings`` (N, D) from ``siamax.embed(params, ...)``, item i labelled
        ``labels[i]`` (its class name) and, optionally, ``paths[i]`` (the file it came from)."""
        index = cls(params, backend=backend)
        index.add(embeddings, labels, paths)
        return index

    @property
    def energy(self) -> str:
        """The energy's name; ``"mean_probability"`` for an ensemble (``energies.MeanProbability``)."""
        return self._energy.name

    @property
    def approximate(self) -> bool:
        """True when :meth:`search` may miss some of the true k best items (``backend="hnsw"``)."""
        return self._gallery.approximate

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        return (
            f"Index({len(self)} items, energy={self.energy!r}, dim={self.dim}, "
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
        return self._gallery.embeddings

    # -- changes ---------------------------------------------------------------------------

    def _check(self, e, name: str) -> None:
        if getattr(e, "ndim", None) != 2 or e.shape[-1] != self.dim:
            what = "siamax.embed" if self.spec else f"siamax.embed of the ensemble (its {len(self.specs)} members')"
            shape = getattr(e, "shape", None)
            raise InputError(f"{name} has shape {shape}; expected (B, {self.dim}) embeddings from {what}")
        _check_embedding_values(e, name)

    def add(self, embeddings, labels: Sequence[str], paths: Sequence[str] | None = None) -> np.ndarray:
        """Append items; returns their ids. ``paths``: one per item, or None (no paths)."""
        e = embeddings if isinstance(embeddings, (np.ndarray, jax.Array)) else np.asarray(embeddings)
        self._check(e, "embeddings")
        m = e.shape[0]
        labels = _checked_labels(labels, m)
        paths = _checked_paths(paths, m)
        n = len(self)
        if m:
            self._gallery.add(e)
            self._labels += labels
            self._paths += paths
            self.measured_recall = None
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
            self._gallery.remove(keep)
            self.measured_recall = None
            self._labels = [self._labels[i] for i in keep]
            self._paths = [self._paths[i] for i in keep]
        return int(n - keep.size)

    def shards(self, n: int) -> list[Index]:
        """The items split into ``n`` contiguous parts, each an index of its own (same model and backend):
        shard ``i`` holds ids ``offsets[i] ..`` of this one, in order. :func:`search_shards` (one process)
        or :func:`search_across_processes` (one shard per process) answer as this index does."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= max(len(self), 1):
            raise InputError(
                f"shards: n must be in 1..{max(len(self), 1)} (the index holds {len(self)} items), got {n!r}"
            )
        rows = np.asarray(self.embeddings)
        bounds = np.linspace(0, len(self), int(n) + 1).round().astype(int)
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = Index.__new__(Index)
            part._init(self.specs, self._head, self.fingerprint, self.backend)
            part.add(rows[lo:hi], self._labels[lo:hi], self._paths[lo:hi])
            out.append(part)
        return out

    # -- search ----------------------------------------------------------------------------

    def search(self, query_embeddings, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery items for each query (Q, D): (scores (Q, k) float32 same-class
        probabilities, best first, as ``siamax.score_embeddings`` gives them; ids (Q, k) int64)."""
        q = query_embeddings
        q = q if isinstance(q, (np.ndarray, jax.Array)) else np.asarray(q)
        self._check(q, "query_embeddings")
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
        return self._gallery.search(self._head, self._dtype, q, k)

    def recall(self, k: int = 10, queries: int = 1000, seed: int = 0) -> float:
        """Recall@k of :meth:`search` against exact search of the same gallery: the mean share of the
        exact k best that the search returns, over ``queries`` gallery items drawn at random (each left
        out of both answers, so that finding itself does not count). 1.0 for an exact backend."""
        n = len(self)
        if not 1 <= k < n:
            raise InputError(f"recall: k must be in 1..{n - 1} (the index holds {n} items), got {k!r}")
        if not self.approximate:
            return 1.0
        picked = np.random.default_rng(seed).choice(n, min(queries, n), replace=False)
        q = np.asarray(self.embeddings[picked], np.float32)
        exact = _DeviceGallery(self._energy, self.dim)
        exact.store(jnp.asarray(self.embeddings))
        truth = exact.search(self._head, self._dtype, q, k + 1)[1]
        found = self.search(q, k + 1)[1]

        def others(row, item):  # the k best other than the query's own item
            return [i for i in row if i != item][:k]

        hits = [len(set(others(t, i)) & set(others(f, i))) for t, f, i in zip(truth, found, picked)]
        self.measured_recall = {"k": k, "queries": len(picked), "recall": float(np.mean(hits)) / k}
        return self.measured_recall["recall"]

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
            **({"spec": self.spec.to_dict()} if self.spec else {"members": [s.to_dict() for s in self.specs]}),
            "count": len(self),
            "labels": self._labels,
            "paths": self._paths,
            "backend": self.backend,
            "measured_recall": self.measured_recall,
        }
        arrays = {
            _META: np.frombuffer(json.dumps(meta).encode(), np.uint8),
            _EMBEDDINGS: np.asarray(self.embeddings, np.float32),
            **{_HEAD + name: np.asarray(v) for name, v in self._head.items()},
            **({_GRAPH: self._gallery.graph()} if self.approximate else {}),
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path, params: Params | None = None, backend: str | None = None) -> Index:
        """Read an index written by :meth:`save`, into ``backend`` (default: the one it was saved
        from; an HNSW graph saved with it is reused). With ``params``, refuse an index of another model
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
                graph = z[_GRAPH] if _GRAPH in z.files else None
        except ModelError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise ModelError(f"{not_index}: {type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ModelError(f"{not_index}: its format is {found!r}, expected {INDEX_FORMAT!r}")
        try:
            specs = tuple(map(ModelSpec.from_dict, meta["members"] if "members" in meta else [meta["spec"]]))
            labels, paths, count = meta["labels"], meta["paths"], meta["count"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: damaged index record ({type(e).__name__}: {e})") from e
        dim = sum(s.embedding_dim for s in specs)
        expected_head = _energy_of(specs).head_shapes(dim)
        if (
            rows is None
            or rows.dtype != np.float32
            or rows.shape != (count, dim)
            or len(labels) != count
            or len(paths) != count
            or {name: tuple(v.shape) for name, v in head.items()} != expected_head
        ):
            raise ModelError(
                f"{path}: damaged index: its arrays do not match its record ({count} items of dimension "
                f"{dim}, energy {meta.get('energy')})"
            )
        if not np.isfinite(rows).all():
            raise ModelError(f"{path}: damaged index: its embeddings hold non-finite values")
        if params is not None:
            if not isinstance(params, Ensemble):
                _check_params(params, "Index.load")
            ours = fingerprint(params)
            if ours != meta["fingerprint"]:
                raise ModelError(
                    f"{path} was built with another model: the index's model fingerprint is {meta['fingerprint']}, "
                    f"the given params' is {ours}. Embeddings of different models are not comparable: rebuild the "
                    f"index with this model (Index.build(params, siamax.embed(params, images), labels)), or load "
                    f"the model the index was built with"
                )
        backend = backend or meta.get("backend", "jax")
        index = cls.__new__(cls)
        index._init(specs, head, meta["fingerprint"], backend)
        if graph is not None and backend == "hnsw":
            index._gallery.restore(rows, graph)
            index._labels, index._paths = _checked_labels(labels, count), _checked_paths(paths, count)
        else:
            index.add(rows, labels, paths)
        index.measured_recall = meta.get("measured_recall")
        return index


def _energy_of(specs: tuple[ModelSpec, ...]) -> Energy:
    """One model's energy, or an ensemble's (its members' mean probability)."""
    if len(specs) == 1:
        return energies.get(specs[0].energy)
    return energies.MeanProbability.of(specs)


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


# ---------------------------------------------------------------------------------------------
# A gallery in parts: several files, or one part per process.


def _check_k(k, total: int) -> None:
    if not 1 <= k <= total:
        raise InputError(f"search: k={k!r}, but the parts hold {total} items; pass 1 <= k <= {total}")


def _same_model(parts: Sequence[Index]) -> None:
    if len({p.fingerprint for p in parts}) > 1:
        raise ModelError(
            "the index parts were made by different models: " + ", ".join(p.fingerprint[:12] for p in parts)
        )


def search_shards(parts: Sequence[Index], query_embeddings, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Index.search` of a gallery held in ``parts`` (e.g. :meth:`Index.shards`, or index files of
    one model loaded one by one), exactly: each part answers its own ``k`` best, the answers are merged
    (``siamax.neighbours.merge_top_k``). Ids: positions in the parts' concatenation, in order."""
    parts = list(parts)
    if not parts:
        raise InputError("search_shards: no index parts given")
    _same_model(parts)
    _check_k(k, sum(len(p) for p in parts))
    scores, ids, offset = [], [], 0
    for p in parts:
        if len(p):
            s, i = p.search(query_embeddings, min(k, len(p)))
            scores.append(s)
            ids.append(i + offset)
        offset += len(p)
    return neighbours.merge_top_k(scores, ids, k)


def search_across_processes(part: Index, query_embeddings, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_shards` with one part per process (``jax.distributed``): every process passes its
    own part and the same queries, and every process gets the whole answer (ids: positions in the
    parts' concatenation in process order). Collective: all processes must call it."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(part)], np.int64))).reshape(-1)
    offset = int(sizes[: jax.process_index()].sum())
    _check_k(k, int(sizes.sum()))
    nq = np.asarray(query_embeddings).shape[0]
    scores = np.full((nq, k), -np.inf, np.float32)
    ids = np.full((nq, k), np.iinfo(np.int64).max, np.int64)  # a part with fewer than k items pads its answer
    if len(part):
        s, i = part.search(query_embeddings, min(k, len(part)))
        scores[:, : s.shape[1]], ids[:, : i.shape[1]] = s, i + offset
    every_s = np.asarray(multihost_utils.process_allgather(scores))  # (P, Q, k)
    every_i = np.asarray(multihost_utils.process_allgather(ids))
    return neighbours.merge_top_k(list(every_s), list(every_i), k)
