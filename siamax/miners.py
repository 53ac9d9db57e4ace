"""Triplet miners over in-batch labels. Pure ``jnp`` functions: masks, no Python loops.

A miner picks, from a ``(B, B)`` distance matrix of one batch and its labels, the
(anchor, positive, negative) distances the triplet loss ``max(0, d(a, p) - d(a, n) + m)`` sees. It
returns ``(d_ap, d_an, valid)``, three arrays of one shape, ``valid`` saying which entries are real
triplets. Anchors without a positive (a class with one image) or without a negative (a batch of one
class) give none.

* ``all``: every valid triplet, shape (B, B, B) indexed [a, p, n] (B^3 floats of memory: 4 MB at
  B = 100). The loss averages over the triplets whose loss is positive ("batch all", Hermans et al.
  2017): averaging over every triplet would let the many already-satisfied ones dilute the gradient.
* ``batch_hard``: per anchor, its farthest positive and its closest negative, shape (B,)
  (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").
* ``semi_hard``: per (anchor, positive) pair, the closest negative that is farther than the positive,
  ``d(a, n) > d(a, p)``; where there is none, the farthest negative; shape (B, B) [a, p] (Schroff et
  al. 2015, FaceNet; the rule of TensorFlow Addons' ``triplet_semihard_loss``). It works on a
  (B, B, B) mask.

The one list of miners: ``MINERS``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MINERS = ("all", "batch_hard", "semi_hard")


def pair_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,) labels -> (positive, negative) (B, B) bool masks: same label and not the same image;
    different label."""
    same = labels[:, None] == labels[None, :]
    return same & ~jnp.eye(labels.shape[0], dtype=bool), ~same


def _masked_max(x, mask, axis):
    return jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis)


def _masked_min(x, mask, axis):
    return jnp.min(jnp.where(mask, x, jnp.inf), axis=axis)


def batch_all(dist: jax.Array, labels: jax.Array):
    pos, neg = pair_masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]
    shape = valid.shape
    return jnp.broadcast_to(dist[:, :, None], shape), jnp.broadcast_to(dist[:, None, :], shape), valid


def batch_hard(dist: jax.Array, labels: jax.Array):
    pos, neg = pair_masks(labels)
    valid = pos.any(axis=1) & neg.any(axis=1)
    # Zeros where there is no triplet: no infinity ever reaches the loss (nor NaN its gradient).
    d_ap = jnp.where(valid, _masked_max(dist, pos, axis=1), 0.0)
    d_an = jnp.where(valid, _masked_min(dist, neg, axis=1), 0.0)
    return d_ap, d_an, valid


def semi_hard(dist: jax.Array, labels: jax.Array):
    pos, neg = pair_masks(labels)
    valid = pos & neg.any(axis=1)[:, None]
    d_an_all = dist[:, None, :]  # [a, (p), n]
    farther = neg[:, None, :] & (d_an_all > dist[:, :, None])  # [a, p, n]: d(a, n) > d(a, p)
    closest_farther = _masked_min(d_an_all, farther, axis=2)
    farthest = _masked_max(dist, neg, axis=1)[:, None]
    d_an = jnp.where(farther.any(axis=2), closest_farther, farthest)
    return jnp.where(valid, dist, 0.0), jnp.where(valid, d_an, 0.0), valid


_MINE = {"all": batch_all, "batch_hard": batch_hard, "semi_hard": semi_hard}


def mine(miner: str, dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(d_ap, d_an, valid)`` of ``miner`` (one of ``MINERS``) for a (B, B) distance matrix and (B,) labels."""
    if miner not in MINERS:
        raise ValueError(f"miner must be one of {MINERS}, got {miner!r}")
    return _MINE[miner](dist, labels)
