"""Losses: pure ``jnp`` functions of logits, labels and weights."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax


def pair_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy of same (1) / different (0) labels, computed stably from logits.

    ``weights`` (optional, same shape) re-weights pairs, e.g. to balance the many different pairs
    of an all-pairs batch against the few same pairs; the result is the weighted mean.
    """
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def layer_kernels(weights: Mapping) -> dict[str, jax.Array]:
    """The weight matrix of each layer by name (conv1.., fc, head); biases are not regularised."""
    return {name: layer["kernel"] for name, layer in weights.items() if "kernel" in layer}


def l2_penalty(weights: Mapping, lambdas: Mapping[str, float]) -> jax.Array:
    """The paper's per-layer L2 term: sum_j lambda_j * ||W_j||^2 over the layers named in ``lambdas``."""
    kernels = layer_kernels(weights)
    unknown = set(lambdas) - set(kernels)
    if unknown:
        raise ValueError(f"l2 lambdas name unknown layers {sorted(unknown)}; layers: {sorted(kernels)}")
    total = jnp.zeros((), jnp.float32)
    for name, lam in lambdas.items():
        if lam:
            total = total + lam * jnp.sum(jnp.square(kernels[name].astype(jnp.float32)))
    return total
