"""Energies: how two embeddings are compared. Pure ``jnp`` functions, jittable.

Each energy gives

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

Pairwise ``(B, B)`` forms serve the in-batch objectives. ``euclidean`` and ``cosine`` use one
``B x B x D`` matrix product (``lax.Precision.HIGHEST``: a reduced-precision product would swamp small
distances); ``weighted_l1`` has no such identity and forms the ``(B * B, D)`` absolute differences
(for its logits, and again for its distance under a metric objective), ``4 B^2 D`` bytes each
(B = 80, D = 4096: 105 MB, and as much again for the backward pass), as the all-pairs objective
always has.

The calibration of the euclidean / cosine heads changes no decision between candidates: their
logit is decreasing in the distance, so a one-shot trial picks the nearest candidate whatever a, b.

The one list of energies: ``ENERGIES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

ENERGIES = ("weighted_l1", "euclidean", "cosine")

# The margin of the metric objectives (contrastive, triplet) when none is given, on each energy's
# distance: weighted_l1's mean |e1 - e2| and euclidean's norm grow with the embedding's scale (ReLU
# features of the small model: mean |diff| ~0.5, norm ~10 at initialisation), cosine's 1 - cos lies in
# [0, 2] (in [0, 1] for non-negative features). Defaults, not tuned: --margin overrides.
DEFAULT_MARGIN = {"weighted_l1": 0.5, "euclidean": 1.0, "cosine": 0.4}

# softplus(INIT_SCALE) = 1: the calibrated head starts as logit = INIT_BIAS - d.
INIT_SCALE = math.log(math.e - 1.0)
INIT_BIAS = 1.0
_EPS = 1e-12  # below this a squared norm or distance counts as 0 (float32 resolution of |e|^2 ~ 1)


def head_shapes(energy: str, dim: int) -> dict[str, tuple[int, ...]]:
    """The head's parameters for embeddings of width ``dim``: {name: shape}."""
    _check(energy)
    if energy == "weighted_l1":
        return {"kernel": (dim, 1), "bias": (1,)}
    return {"scale": (), "bias": ()}


def _check(energy: str) -> None:
    if energy not in ENERGIES:
        raise ValueError(f"energy must be one of {ENERGIES}, got {energy!r}")


def _safe_sqrt(x):
    # sqrt has an infinite derivative at 0; the double where gives 0 there instead of NaN.
    positive = x > _EPS
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _normalise(e):
    return e * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(e), axis=-1, keepdims=True), _EPS))


def distance(energy: str, e1: jax.Array, e2: jax.Array) -> jax.Array:
    """(B, D), (B, D) -> (B,) float32 distances (see the module docstring)."""
    _check(energy)
    e1, e2 = e1.astype(jnp.float32), e2.astype(jnp.float32)
    if energy == "weighted_l1":
        return jnp.mean(jnp.abs(e1 - e2), axis=-1)
    if energy == "euclidean":
        return _safe_sqrt(jnp.sum(jnp.square(e1 - e2), axis=-1))
    return jnp.maximum(1.0 - jnp.sum(_normalise(e1) * _normalise(e2), axis=-1), 0.0)


def pairwise_distance(energy: str, e: jax.Array) -> jax.Array:
    """(B, D) -> (B, B) float32 with [i, j] = ``distance(e[i], e[j])``; the diagonal is 0."""
    _check(energy)
    e = e.astype(jnp.float32)
    b = e.shape[0]
    if energy == "weighted_l1":
        d = jnp.mean(jnp.abs(e[:, None, :] - e[None, :, :]), axis=-1)
    else:
        n = _normalise(e) if energy == "cosine" else e
        gram = jnp.matmul(n, n.T, precision=jax.lax.Precision.HIGHEST)
        if energy == "cosine":
            d = jnp.maximum(1.0 - gram, 0.0)
        else:
            sq = jnp.diagonal(gram)
            d = _safe_sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0))
    # Exactly 0 on the diagonal: the matrix product leaves rounding there, and no pair is ever
    # compared with itself anyway (the objectives mask it).
    return jnp.where(jnp.eye(b, dtype=bool), 0.0, d)


def logit_from_distance(head: Mapping, d: jax.Array) -> jax.Array:
    """The euclidean / cosine calibration ``b - softplus(a) * d`` (float32)."""
    return head["bias"].astype(jnp.float32) - jax.nn.softplus(head["scale"].astype(jnp.float32)) * d


def _weighted_l1(head: Mapping, diff: jax.Array, dtype) -> jax.Array:
    # The paper's head as flax's nn.Dense(1, dtype=dtype) computes it, operation for operation, so
    # that models trained before energies existed score bit-identically.
    x, kernel, bias = (jnp.asarray(v, dtype) for v in (diff, head["kernel"], head["bias"]))
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y[..., 0].astype(jnp.float32)


def logit(energy: str, head: Mapping, e1: jax.Array, e2: jax.Array, dtype=jnp.float32) -> jax.Array:
    """(B, D), (B, D) -> (B,) float32 logits; ``head``: the head's parameters; ``dtype``: the model's
    compute dtype (used by weighted_l1, as the paper's Dense layer; the others compute in float32)."""
    _check(energy)
    if energy == "weighted_l1":
        return _weighted_l1(head, jnp.abs(e1 - e2), dtype)
    return logit_from_distance(head, distance(energy, e1, e2))


def pairwise_logits(energy: str, head: Mapping, e: jax.Array, dtype=jnp.float32) -> jax.Array:
    """(B, D) -> (B, B) float32 with [i, j] = ``logit(e[i], e[j])`` (symmetric)."""
    _check(energy)
    if energy == "weighted_l1":
        b = e.shape[0]
        diff = jnp.abs(e[:, None, :] - e[None, :, :]).reshape(b * b, -1)
        return _weighted_l1(head, diff, dtype).reshape(b, b)
    return logit_from_distance(head, pairwise_distance(energy, e))
