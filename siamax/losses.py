"""Losses: pure ``jnp`` functions of logits or distances, labels and weights.

The in-batch objectives take one batch of B labelled images (P classes x K images) and score all
its pairs: ``all_pairs`` and ``episodic`` from the head's ``(B, B)`` logit matrix, ``contrastive`` and
``triplet`` from the energy's ``(B, B)`` distance matrix (``siamax.energies``). The metric objectives
(contrastive, triplet) do not train the head: ``siamax.train`` fits its calibration (logit from
distance) by :func:`all_pairs` on gradient-stopped embeddings, so that ``siamax.score`` is a
probability whatever the objective.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from siamax import miners

# Every objective and the batch form it trains on: "pairs" (independent same/different pairs) or
# "classes" (P classes x K images, scored in-batch). The one list of objectives.
OBJECTIVES = {
    "pairs": "pairs",  # Koch et al.: binary cross-entropy on independent pairs
    "all_pairs": "classes",  # the same cross-entropy on every pair of a batch
    "episodic": "classes",  # pick the same-class candidate (softmax) + the all-pairs cross-entropy
    "contrastive": "classes",  # Hadsell, Chopra & LeCun (2006): margin loss on the distance
    "triplet": "classes",  # anchor/positive/negative margin loss over mined in-batch triplets
}


def pair_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy of same (1) / different (0) labels, computed stably from logits.

    ``weights`` (optional, same shape) re-weights pairs, e.g. to balance the many different pairs
    of an all-pairs batch against the few same pairs; the result is the weighted mean.
    """
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def balanced_pairs(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,) labels -> (same, weights), both (B, B) float32: 1 where two images share a label, and
    per-pair weights under which same and different pairs weigh equally, however few same pairs a
    batch has (half each; the diagonal, an image with itself, weighs 0). Both matrices are
    symmetric, so a weighted mean over them equals one over the pairs i < j."""
    same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    off_diag = 1.0 - jnp.eye(labels.shape[0])
    pos, neg = same * off_diag, (1.0 - same)
    return same, pos / jnp.maximum(pos.sum(), 1.0) + neg / jnp.maximum(neg.sum(), 1.0)


def all_pairs(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The balanced binary cross-entropy of every in-batch pair: (B, B) logits, (B,) labels ->
    (loss, accuracy), the accuracy of the pairs at p = 0.5 under the same balanced weights."""
    same, weights = balanced_pairs(labels)
    ce = pair_cross_entropy(logits, same, weights)
    accuracy = (((logits > 0) == (same > 0.5)) * weights).sum() / weights.sum()
    return ce, accuracy


def episodic(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Each image a query, every other image of the batch a candidate: the softmax cross-entropy of
    picking a same-class candidate by the (B, B) logits, averaged over the queries that have one."""
    same = labels[:, None] == labels[None, :]
    off_diag = ~jnp.eye(labels.shape[0], dtype=bool)
    pos = same & off_diag
    has_pos = pos.any(axis=1)
    masked = jnp.where(off_diag, logits, -jnp.inf)
    log_p_same = jax.nn.logsumexp(jnp.where(pos, logits, -jnp.inf), axis=1) - jax.nn.logsumexp(masked, axis=1)
    return -jnp.sum(jnp.where(has_pos, log_p_same, 0.0)) / jnp.maximum(has_pos.sum(), 1)


def contrastive(dist: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
    """Hadsell, Chopra & LeCun (2006): ``y d^2 + (1 - y) max(0, m - d)^2`` over every in-batch pair
    i < j of a (B, B) distance matrix, same and different pairs weighing equally as in
    :func:`all_pairs`: ``(mean over same pairs of d^2 + mean over different ones of the hinge^2) / 2``
    (the paper's factors of 1/2)."""
    same, weights = balanced_pairs(labels)
    per_pair = same * jnp.square(dist) + (1.0 - same) * jnp.square(jnp.maximum(margin - dist, 0.0))
    return (per_pair * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def triplet(dist: jax.Array, labels: jax.Array, margin: float, miner: str) -> tuple[jax.Array, jax.Array]:
    """``max(0, d(a, p) - d(a, n) + m)`` over the triplets ``miner`` picks (``siamax.miners``) from a
    (B, B) distance matrix -> (loss, active), ``active`` the fraction of those triplets with a
    positive loss. ``miner="all"`` averages over the active triplets ("batch all"), the others over
    every mined one; a batch without a valid triplet gives 0 (and no gradient)."""
    d_ap, d_an, valid = miners.mine(miner, dist, labels)
    hinge = jnp.where(valid, jnp.maximum(d_ap - d_an + margin, 0.0), 0.0)
    n_valid, n_active = valid.sum(), (hinge > 0).sum()
    loss = hinge.sum() / jnp.maximum(n_active if miner == "all" else n_valid, 1)
    return loss, n_active / jnp.maximum(n_valid, 1)


def layer_kernels(weights: Mapping) -> dict[str, jax.Array]:
    """The weight matrix of each layer by name (conv1.., fc, head); biases are not regularised, nor is
    the euclidean / cosine head, which has no weight matrix (a scale and a bias)."""
    return {name: layer["kernel"] for name, layer in weights.items() if "kernel" in layer}


def l2_penalty(weights: Mapping, lambdas: Mapping[str, float]) -> jax.Array:
    """The paper's per-layer L2 term: sum_j lambda_j * ||W_j||^2 over the layers named in ``lambdas``
    (a layer without a weight matrix adds nothing)."""
    kernels = layer_kernels(weights)
    unknown = set(lambdas) - set(weights)
    if unknown:
        raise ValueError(f"l2 lambdas name unknown layers {sorted(unknown)}; layers: {sorted(weights)}")
    total = jnp.zeros((), jnp.float32)
    for name, lam in lambdas.items():
        if lam and name in kernels:
            total = total + lam * jnp.sum(jnp.square(kernels[name].astype(jnp.float32)))
    return total
