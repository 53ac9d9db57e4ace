"""Energies: how two embeddings are compared. Small objects of pure, jittable ``jnp`` maths.

Each energy (an :class:`Energy`: ``WeightedL1``, ``Euclidean``, ``Cosine``, one instance of each in
``ENERGIES``) gives

* a **distance** ``d(e1, e2) >= 0``, what the metric objectives (contrastive, triplet) push apart or
  together. It has no parameters, so a metric loss trains the tower only:

  - ``weighted_l1``: the *mean* absolute difference over the D dimensions, ``mean_j |e1_j - e2_j|``.
    Unweighted, because Koch's weights alpha_j may turn negative (no longer a distance) and would let
    a metric loss shrink the head instead of moving embeddings; a mean rather than a sum, so that a
    margin means the same whatever D.
  - ``euclidean``: ``||e1 - e2||_2``, with a gradient of 0 (not NaN) at ``e1 == e2``.
  - ``cosine``: ``1 - cos(e1, e2)``, in [0, 2].

* a **logit** (higher = more likely the same class); ``sigmoid(logit)`` is ``siamax.score``:

  - ``weighted_l1``: Koch et al.'s ``alpha . |e1 - e2| + b``, parameters ``head/kernel`` (D, 1) and
    ``head/bias`` (1,), exactly the paper's head (a ``nn.Dense(1)`` in the model's dtype).
  - ``euclidean`` and ``cosine``: ``b - softplus(a) * d``, a calibrated, decreasing map of the
    distance with two scalars, ``head/scale`` (a) and ``head/bias`` (b). softplus keeps the slope
    positive: a larger distance is never more likely the same class.

* a **rank key** for searching a gallery (``siamax.neighbours``): larger = higher logit. euclidean and
  cosine rank by one matrix product (``matmul``: ``2 q.g - |g|^2``, or ``q.g / |g|`` with unit ``q``),
  which orders the gallery as the distance does, so as the calibrated logit does; weighted_l1 has no
  such identity and ranks by Koch's ``alpha . |q - g|`` from the pairs' differences.

Pairwise ``(B, B)`` forms serve the in-batch objectives. ``euclidean`` and ``cosine`` use one
``B x B x D`` matrix product (``lax.Precision.HIGHEST``: a reduced-precision product would swamp small
distances); ``weighted_l1`` has no such identity and forms the ``(B * B, D)`` absolute differences
(for its logits, and again for its distance under a metric objective), ``4 B^2 D`` bytes each
(B = 80, D = 4096: 105 MB, and as much again for the backward pass), as the all-pairs objective
always has.

The calibration of the euclidean / cosine heads changes no decision between candidates: their
logit is decreasing in the distance, so a one-shot trial picks the nearest candidate whatever a, b.
weighted_l1's logit is not a function of a distance (a positive alpha_j rewards a difference), so
an item need not be its own best match (``tests/test_energies.py`` shows one).

The one list of energies: ``ENERGIES`` ({name: Energy}; iterating it gives the names); ``get(name)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp

# softplus(INIT_SCALE) = 1: the calibrated head starts as logit = INIT_BIAS - d.
INIT_SCALE = math.log(math.e - 1.0)
INIT_BIAS = 1.0
_EPS = 1e-12  # below this a squared norm or distance counts as 0 (float32 resolution of |e|^2 ~ 1)
_HIGHEST = jax.lax.Precision.HIGHEST


def _safe_sqrt(x):
    # sqrt has an infinite derivative at 0; the double where gives 0 there instead of NaN.
    positive = x > _EPS
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _normalise(e):
    return e * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(e), axis=-1, keepdims=True), _EPS))


def _zero_diagonal(d):
    # Exactly 0 on the diagonal: the matrix product leaves rounding there, and no pair is ever
    # compared with itself anyway (the objectives mask it).
    return jnp.where(jnp.eye(d.shape[0], dtype=bool), 0.0, d)


class Energy:
    """How two embeddings are compared (module docstring). Stateless: instances of one class are
    equal (and hash alike), so an energy can be a static argument of ``jax.jit``.

    Attributes:
      name: its name in ``ENERGIES`` (``ModelSpec.energy``).
      default_margin: the contrastive / triplet margin on its distance when none is given.
      matmul: whether ``rank_keys`` is one matrix product (and ``siamax.neighbours`` may use its
        bfloat16 pre-pass); if not, ranking forms the (queries, rows, D) differences.
    """

    name: str
    default_margin: float
    matmul: bool = False

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- the head -------------------------------------------------------------------------------

    def head_shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        """The head's parameters for embeddings of width ``dim``: {name: shape}."""
        raise NotImplementedError

    def head_init(self, kernel_init: Callable, bias_init: Callable) -> dict[str, Callable]:
        """The head's initialisers {name: init}; ``kernel_init`` / ``bias_init``: the fc layers' (Koch's head)."""
        raise NotImplementedError

    # -- pairs ----------------------------------------------------------------------------------

    def distance(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """(B, D), (B, D) -> (B,) float32 distances (module docstring)."""
        raise NotImplementedError

    def pairwise_distance(self, e: jax.Array) -> jax.Array:
        """(B, D) -> (B, B) float32 with [i, j] = ``distance(e[i], e[j])``; the diagonal is 0."""
        raise NotImplementedError

    def logit(self, head: Mapping, e1: jax.Array, e2: jax.Array, dtype=jnp.float32) -> jax.Array:
        """(B, D), (B, D) -> (B,) float32 logits; ``head``: the head's parameters; ``dtype``: the model's
        compute dtype (used by weighted_l1, as the paper's Dense layer; the others compute in float32)."""
        raise NotImplementedError

    def pairwise_logits(self, head: Mapping, e: jax.Array, dtype=jnp.float32) -> jax.Array:
        """(B, D) -> (B, B) float32 with [i, j] = ``logit(e[i], e[j])`` (symmetric)."""
        raise NotImplementedError

    def block_logits(self, head: Mapping, q: jax.Array, g: jax.Array, dtype=jnp.float32) -> jax.Array:
        """A query block (Q, D) against a gallery block (G, D): (Q, G) float32 with [i, j] =
        ``logit(q[i], g[j])``, by broadcasting (a (Q, G, D) intermediate)."""
        return self.logit(head, q[:, None, :], g[None, :, :], dtype)

    # -- ranking a gallery (siamax.neighbours) ----------------------------------------------------

    def rank_logits(self, head: Mapping, q: jax.Array, g: jax.Array, dtype=jnp.float32) -> jax.Array:
        """``block_logits`` for ranking: the same (Q, G) logits, perhaps rounded otherwise (euclidean and
        cosine: by a matrix product). What an ensemble's search ranks by (:class:`MeanProbability`); the
        winners are then scored again exactly."""
        return self.block_logits(head, q, g, dtype)

    def prepare(self, q: jax.Array) -> jax.Array:
        """Queries (Q, D) as ``rank_keys`` takes them."""
        return q

    def rank_aux(self, gallery: jax.Array) -> jax.Array:
        """Per-row numbers (G,) that ``rank_keys`` needs, computed once per stored gallery."""
        return jnp.zeros_like(jnp.sum(jnp.square(gallery), axis=-1))

    def rank_keys(self, head: Mapping, q: jax.Array, g: jax.Array, aux: jax.Array, wide: bool = False) -> jax.Array:
        """(Q, D) prepared queries x (C, D) gallery rows with their ``aux`` (C,) -> (Q, C) float32:
        larger = higher logit. ``wide``: write a matrix product gallery-major (``siamax.neighbours``)."""
        raise NotImplementedError


class WeightedL1(Energy):
    """Koch et al.'s head ``alpha . |e1 - e2| + b``; its distance the unweighted mean |e1 - e2|."""

    name = "weighted_l1"
    # weighted_l1's mean |e1 - e2| and euclidean's norm grow with the embedding's scale (ReLU
    # features of the small model: mean |diff| ~0.5, norm ~10 at initialisation), cosine's 1 - cos
    # lies in [0, 2] (in [0, 1] for non-negative features). Defaults, not tuned: --margin overrides.
    default_margin = 0.5

    def head_shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        return {"kernel": (dim, 1), "bias": (1,)}

    def head_init(self, kernel_init, bias_init):
        return {"kernel": kernel_init, "bias": bias_init}

    def distance(self, e1, e2):
        e1, e2 = e1.astype(jnp.float32), e2.astype(jnp.float32)
        return jnp.mean(jnp.abs(e1 - e2), axis=-1)

    def pairwise_distance(self, e):
        e = e.astype(jnp.float32)
        return _zero_diagonal(jnp.mean(jnp.abs(e[:, None, :] - e[None, :, :]), axis=-1))

    @staticmethod
    def _head(head: Mapping, diff: jax.Array, dtype) -> jax.Array:
        # The paper's head as flax's nn.Dense(1, dtype=dtype) computes it, operation for operation, so
        # that models trained before energies existed score bit-identically.
        x, kernel, bias = (jnp.asarray(v, dtype) for v in (diff, head["kernel"], head["bias"]))
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y[..., 0].astype(jnp.float32)

    def logit(self, head, e1, e2, dtype=jnp.float32):
        return self._head(head, jnp.abs(e1 - e2), dtype)

    def pairwise_logits(self, head, e, dtype=jnp.float32):
        b = e.shape[0]
        diff = jnp.abs(e[:, None, :] - e[None, :, :]).reshape(b * b, -1)
        return self._head(head, diff, dtype).reshape(b, b)

    def rank_keys(self, head, q, g, aux, wide=False):
        # The logit less its bias, in float32: no matrix identity, so the (Q, C, D) differences.
        alpha = head["kernel"][:, 0].astype(jnp.float32)
        return jnp.sum(jnp.abs(q[:, None, :] - g[None, :, :]) * alpha, axis=-1)


class _Calibrated(Energy):
    """A distance with the calibrated head ``b - softplus(a) * d`` and a matrix-product rank key."""

    matmul = True

    def head_shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        return {"scale": (), "bias": ()}

    def head_init(self, kernel_init, bias_init):
        constant = jax.nn.initializers.constant
        return {"scale": constant(INIT_SCALE), "bias": constant(INIT_BIAS)}

    @staticmethod
    def logit_from_distance(head: Mapping, d: jax.Array) -> jax.Array:
        """The calibration ``b - softplus(a) * d`` (float32)."""
        return head["bias"].astype(jnp.float32) - jax.nn.softplus(head["scale"].astype(jnp.float32)) * d

    def logit(self, head, e1, e2, dtype=jnp.float32):
        return self.logit_from_distance(head, self.distance(e1, e2))

    def pairwise_logits(self, head, e, dtype=jnp.float32):
        return self.logit_from_distance(head, self.pairwise_distance(e))

    def _gram(self, e):
        return jnp.matmul(e, e.T, precision=_HIGHEST)

    def rank_logits(self, head, q, g, dtype=jnp.float32):
        # By one matrix product (the rank key's), not the (Q, G, D) differences of block_logits.
        q, g = q.astype(jnp.float32), g.astype(jnp.float32)
        keys = self.rank_keys(head, self.prepare(q), g, self.rank_aux(g), False)
        return self.logit_from_distance(head, self.distance_from_keys(q, keys))

    def distance_from_keys(self, q: jax.Array, keys: jax.Array) -> jax.Array:
        """The distances (Q, G) of raw queries ``q`` (Q, D) to the rows whose rank keys are ``keys``."""
        raise NotImplementedError

    def keys_from_products(self, qg: jax.Array, aux: jax.Array) -> jax.Array:
        """Rank keys from the products ``q . g`` of prepared queries and gallery rows, and ``aux``."""
        raise NotImplementedError

    def key_error(self, bound: jax.Array, aux: jax.Array) -> jax.Array:
        """A bound on a key's error from a bound on its product's (``siamax.neighbours``' bfloat16 pre-pass)."""
        raise NotImplementedError

    def rank_keys(self, head, q, g, aux, wide=False):
        # HIGHEST: a reduced-precision product (TF32 on GPUs) would swamp small differences of distance.
        if wide:
            qg = jnp.matmul(g, q.T, precision=_HIGHEST).T
        else:
            qg = jnp.matmul(q, g.T, precision=_HIGHEST)
        return self.keys_from_products(qg, aux[None, :])


class Euclidean(_Calibrated):
    """``||e1 - e2||_2`` with the calibrated head."""

    name = "euclidean"
    default_margin = 1.0

    def distance(self, e1, e2):
        e1, e2 = e1.astype(jnp.float32), e2.astype(jnp.float32)
        return _safe_sqrt(jnp.sum(jnp.square(e1 - e2), axis=-1))

    def pairwise_distance(self, e):
        gram = self._gram(e.astype(jnp.float32))
        sq = jnp.diagonal(gram)
        return _zero_diagonal(_safe_sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)))

    def rank_aux(self, gallery):
        return jnp.sum(jnp.square(gallery), axis=-1)  # |g|^2

    def keys_from_products(self, qg, aux):
        return 2.0 * qg - aux  # |q|^2 - |q - g|^2

    def key_error(self, bound, aux):
        return 2.0 * bound + 2.0**-21 * aux  # and the float32 rounding of subtracting |g|^2, in either pass

    def distance_from_keys(self, q, keys):
        return _safe_sqrt(jnp.maximum(jnp.sum(jnp.square(q), axis=-1, keepdims=True) - keys, 0.0))


class Cosine(_Calibrated):
    """``1 - cos(e1, e2)`` with the calibrated head."""

    name = "cosine"
    default_margin = 0.4

    def distance(self, e1, e2):
        e1, e2 = e1.astype(jnp.float32), e2.astype(jnp.float32)
        return jnp.maximum(1.0 - jnp.sum(_normalise(e1) * _normalise(e2), axis=-1), 0.0)

    def pairwise_distance(self, e):
        n = _normalise(e.astype(jnp.float32))
        return _zero_diagonal(jnp.maximum(1.0 - self._gram(n), 0.0))

    def prepare(self, q):
        return _normalise(q)

    def rank_aux(self, gallery):
        return jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(gallery), axis=-1), _EPS))  # 1/|g|, as _normalise

    def keys_from_products(self, qg, aux):
        return qg * aux  # cos(q, g)

    def key_error(self, bound, aux):
        return bound * aux

    def distance_from_keys(self, q, keys):
        return jnp.maximum(1.0 - keys, 0.0)


def logit_of_mean(logits: jax.Array) -> jax.Array:
    """Logits (M, ...) of M models -> the logit of their mean probability (...), without forming a
    probability that rounds to 0 or 1: log(mean p) - log(mean (1 - p)), each by logsumexp."""
    return jax.nn.logsumexp(jax.nn.log_sigmoid(logits), 0) - jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), 0)


class MeanProbability(Energy):
    """An ensemble's comparison (``siamax.ensemble``): embeddings are its members' side by side, and
    the logit is that of the members' mean probability (:func:`logit_of_mean`), each member's
    energy and head on its own part. Not a model's energy (not in ``ENERGIES``): it has no distance,
    so no metric objective trains it; it is what ``siamax.Index`` ranks an ensemble's gallery by.

    ``members``: one ``(energy name, embedding width, compute dtype)`` per member. Its head is the
    members' heads in one flat dict, ``"{i}/{name}"`` (as an index file stores a head)."""

    name = "mean_probability"
    default_margin = float("nan")

    def __init__(self, members: tuple[tuple[str, int, str], ...]):
        self.members = tuple((get(e).name, int(d), str(t)) for e, d, t in members)

    @classmethod
    def of(cls, specs) -> MeanProbability:
        """The energy of an ensemble of networks of these specs (``siamax.ModelSpec``s), in order."""
        return cls(tuple((s.energy, s.embedding_dim, s.dtype) for s in specs))

    @staticmethod
    def joined_head(heads) -> dict:
        """The members' heads (one dict each, in order) as this energy's one flat head."""
        return {f"{i}/{n}": v for i, head in enumerate(heads) for n, v in head.items()}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.members == other.members

    def __hash__(self) -> int:
        return hash((type(self), self.members))

    def __repr__(self) -> str:
        return f"MeanProbability({self.members})"

    def head_shapes(self, dim: int) -> dict[str, tuple[int, ...]]:
        if dim != sum(d for _, d, _ in self.members):
            raise ValueError(f"{self!r} compares embeddings of {sum(d for _, d, _ in self.members)}, not {dim}")
        return self.joined_head(get(e).head_shapes(d) for e, d, _ in self.members)

    def _member_logits(self, head: Mapping, e1: jax.Array, e2: jax.Array, block: bool) -> jax.Array:
        """(M, ...) member logits of pairs (``block``: (M, Q, G) of a query block and a gallery block)."""
        out, lo = [], 0
        for i, (name, d, dtype) in enumerate(self.members):
            h = {k.split("/", 1)[1]: v for k, v in head.items() if k.split("/", 1)[0] == str(i)}
            a, b = e1[..., lo : lo + d], e2[..., lo : lo + d]
            fn = get(name).rank_logits if block else get(name).logit
            out.append(fn(h, a, b, jnp.dtype(dtype)))
            lo += d
        return jnp.stack(out)

    def logit(self, head, e1, e2, dtype=jnp.float32):
        return logit_of_mean(self._member_logits(head, e1, e2, block=False))

    def rank_keys(self, head, q, g, aux, wide=False):
        return logit_of_mean(self._member_logits(head, q, g, block=True))  # each member's rank_logits


ENERGIES: Mapping[str, Energy] = MappingProxyType({e.name: e for e in (WeightedL1(), Euclidean(), Cosine())})


def get(energy: str | Energy) -> Energy:
    """The :class:`Energy` of a name in ``ENERGIES`` (an Energy is returned as it is)."""
    if isinstance(energy, Energy):
        return energy
    try:
        return ENERGIES[energy]
    except (KeyError, TypeError):
        raise ValueError(f"energy must be one of {tuple(ENERGIES)}, got {energy!r}") from None
