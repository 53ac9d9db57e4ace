"""Patches + matmul (``"matmul"``) and XLA's forward with a patches^T @ grad weight gradient (``"hybrid"``).

``"matmul"``: patch extraction (k*k shifted slices) and one matmul, with a custom VJP: the weight
gradient is ``patches^T @ grad_out`` (patches rebuilt in the backward pass instead of stored) and
the input gradient is the "full" correlation of ``grad_out`` with the flipped kernel, again as
patches + matmul. Single-channel inputs (conv1) stack the k*k slices on a leading axis so both
matmuls read them contiguously.

``"hybrid"``: XLA's forward convolution with a custom VJP whose weight gradient is a
patches^T @ grad_out matmul (single-channel inputs: one kernel row of patches at a time, so they
stay in cache) and whose input gradient is XLA's convolution of the padded grad_out with the
flipped kernel. For layers whose forward XLA does well but whose weight gradient it does not
(the paper's conv1).

Both take VALID convolutions (the registry pads first under SAME).
"""

import jax
import jax.numpy as jnp

from siamax.conv._common import flipped


def _patches(x, k):
    """VALID k x k patches. Cin > 1: (B, Ho, Wo, k*k*Cin) ordered (i, j, c); Cin == 1: (k*k, B, Ho, Wo)."""
    b, h, w, cin = x.shape
    ho, wo = h - k + 1, w - k + 1
    if cin == 1:
        x2 = x[..., 0]
        return jnp.stack([x2[:, i : i + ho, j : j + wo] for i in range(k) for j in range(k)], axis=0)
    return jnp.concatenate([x[:, i : i + ho, j : j + wo, :] for i in range(k) for j in range(k)], axis=-1)


def _matmul_fwd_impl(x, kernel):
    k, _, cin, cout = kernel.shape
    # The barrier materialises the patches: left to itself XLA:CPU fuses the slices into the dot's
    # operand and falls off its fast matmul path (several times slower).
    p = jax.lax.optimization_barrier(_patches(x, k))
    wmat = kernel.reshape(k * k * cin, cout)
    if cin == 1:  # p: (k*k, B, Ho, Wo) -> contract the leading axis
        return jax.lax.dot_general(p, wmat, (((0,), (0,)), ((), ())))
    return p @ wmat


@jax.custom_vjp
def conv(x, kernel):
    return _matmul_fwd_impl(x, kernel)


def _conv_fwd(x, kernel):
    return _matmul_fwd_impl(x, kernel), (x, kernel)


def _conv_bwd(res, g):
    x, kernel = res
    k, _, cin, cout = kernel.shape
    # rebuilt, not stored: the paper's conv2 patches would be ~1.4 GB at batch 32
    p = jax.lax.optimization_barrier(_patches(x, k))
    if cin == 1:
        dw = jax.lax.dot_general(p, g, (((1, 2, 3), (0, 1, 2)), ((), ())))  # (k*k, Cout)
    else:
        dw = jax.lax.dot_general(p, g, (((0, 1, 2), (0, 1, 2)), ((), ())))  # (k*k*Cin, Cout)
    dw = dw.reshape(kernel.shape).astype(kernel.dtype)
    # d x = "full" correlation of g with the spatially flipped, in/out-swapped kernel.
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    kf = flipped(kernel)
    dx = _matmul_fwd_impl(gp, kf).astype(x.dtype)
    return dx, dw


conv.defvjp(_conv_fwd, _conv_bwd)


def _weight_grad_rows(x, g, k):
    """patches^T @ g for a single-channel input, one kernel row at a time.

    Each row's k width-shifted slices (k, B, Ho, Wo) stay cache-sized (the paper's conv1: 24 MB
    per row instead of 236 MB for all k*k patches at batch 32 pairs).
    """
    x2 = x[..., 0]
    ho, wo = g.shape[1], g.shape[2]
    rows = []
    for i in range(k):
        p = jnp.stack([x2[:, i : i + ho, j : j + wo] for j in range(k)], axis=0)
        rows.append(jax.lax.dot_general(p, g, (((1, 2, 3), (0, 1, 2)), ((), ()))))  # (k, Cout)
    return jnp.stack(rows, axis=0)  # (k, k, Cout)


@jax.custom_vjp
def hybrid(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _hybrid_fwd(x, kernel):
    return hybrid(x, kernel), (x, kernel)


def _hybrid_bwd(res, g):
    x, kernel = res
    k, _, cin, cout = kernel.shape
    if cin == 1:
        dw = _weight_grad_rows(x, g, k).reshape(kernel.shape)
    else:
        p = _patches(x, k)
        dw = jax.lax.dot_general(p, g, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(kernel.shape)
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    kf = flipped(kernel)
    dx = jax.lax.conv_general_dilated(gp, kf, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dx.astype(x.dtype), dw.astype(kernel.dtype)


hybrid.defvjp(_hybrid_fwd, _hybrid_bwd)
