"""Padding and kernel helpers shared by the implementations."""

import jax.numpy as jnp


def pads(k, padding):
    """((lo, hi), (lo, hi)) zero padding of H and W that turns ``padding`` into a VALID convolution."""
    lo = (k - 1) // 2 if padding == "SAME" else 0
    hi = k - 1 - lo if padding == "SAME" else 0
    return ((lo, hi), (lo, hi))


def grad_pads(k, pads):
    """Padding of the output gradient whose VALID correlation with :func:`flipped` is the input gradient."""
    return tuple((k - 1 - lo, k - 1 - hi) for lo, hi in pads)


def flipped(kernel):
    """The spatially flipped, in/out-swapped kernel that maps output gradients to input gradients."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def pad_same(x, k):
    return jnp.pad(x, ((0, 0), *pads(k, "SAME"), (0, 0)))
