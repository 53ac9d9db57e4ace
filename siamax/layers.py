"""Primitive ops the tower is built from, with interchangeable implementations of equal maths.

``impl="xla"`` is ``lax.conv_general_dilated``. ``impl="matmul"`` writes the convolution as patch
extraction (shifted slices) + one matmul, which XLA's CPU backend runs (and differentiates) much
faster than its native convolution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def conv2d(x: jax.Array, kernel: jax.Array, padding: str = "VALID", impl: str = "xla") -> jax.Array:
    """Stride-1 NHWC convolution. x: (B, H, W, Cin), kernel: (k, k, Cin, Cout)."""
    if impl == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl == "matmul":
        return _conv2d_matmul(x, kernel, padding)
    raise ValueError(f"unknown conv impl {impl!r}; expected 'xla' or 'matmul'")


def _conv2d_matmul(x, kernel, padding):
    k = kernel.shape[0]
    if padding == "SAME":
        lo = (k - 1) // 2
        x = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    b, h, w, cin = x.shape
    ho, wo = h - k + 1, w - k + 1
    patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(k) for j in range(k)], axis=-1)
    return patches @ kernel.reshape(k * k * cin, -1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/2 max-pooling (floor: an odd trailing row/column is dropped), as reshape + max."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
