"""k*k shifted multiply-adds for single-channel inputs (``"direct"``), and the whole pooled block fused.

The small model's conv1 (3x3 on a 35x35 image): k*k multiply-adds in one fused loop, weight
gradient as one patches^T @ grad matmul. As a pooled block (:func:`block`) it is one op with a
custom VJP: the four 2x2-pool phases of conv + bias are computed side by side and reduced to their
max and a one-byte mask of the phases that reach it, without materialising the full-resolution map;
the backward pass routes the gradient through the mask (shared on ties, as autodiff of
``max_pool_2x2`` does) and contracts it with the phase patches for the weight gradient.
"""

import functools

import jax
import jax.numpy as jnp

from siamax.conv._common import flipped, grad_pads
from siamax.conv._common import pads as _pads
from siamax.conv.pooling import max_and_hits, route, unpool


def _shifted(xp, i, j, ho, wo, stride=1):
    """xp[:, i + stride*y, j + stride*x, 0] for y < ho, x < wo: (B, ho, wo)."""
    b = xp.shape[0]
    return jax.lax.slice(
        xp[..., 0], (0, i, j), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1), (1, stride, stride)
    )


def _dx(g, kernel, pads):
    """Input gradient of a VALID-after-``pads`` convolution: XLA's correlation of g with the flipped kernel."""
    return jax.lax.conv_general_dilated(
        g, flipped(kernel), (1, 1), grad_pads(kernel.shape[0], pads), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, pads):
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    return _lincomb_arrays(
        [_shifted(xp, i, j, ho, wo)[..., None] for i in range(k) for j in range(k)], kernel.reshape(k * k, -1)
    )


def _lincomb_arrays(terms, weights):
    """sum_t terms[t] * weights[t] (terms broadcast over the last axis)."""
    out = None
    for t, wt in zip(terms, weights):
        out = t * wt if out is None else out + t * wt
    return out


def _conv_fwd(x, kernel, pads):
    return _conv(x, kernel, pads), (x, kernel)


def _conv_bwd(pads, res, g):
    x, kernel = res
    k, cout = kernel.shape[0], kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = g.shape[1], g.shape[2]
    p = jnp.stack([_shifted(xp, i, j, ho, wo).reshape(-1) for i in range(k) for j in range(k)])  # (k*k, N)
    dw = (p @ g.reshape(-1, cout)).reshape(kernel.shape)
    return _dx(g, kernel, pads).astype(x.dtype), dw.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _phases(x, kernel, bias, pads):
    """conv + bias at the four 2x2-pool phases: a list of (B, Hp, Wp, Cout), phase 2r + s at (2y+r, 2x+s)."""
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    hp, wp = (xp.shape[1] - k + 1) // 2, (xp.shape[2] - k + 1) // 2
    wk = kernel.reshape(k * k, -1)
    return [
        _lincomb_arrays([_shifted(xp, r + i, s + j, hp, wp, 2)[..., None] for i in range(k) for j in range(k)], wk)
        + bias
        for r in range(2)
        for s in range(2)
    ]


def _max4(z):
    # elementwise, not a reduction over a stacked axis (XLA:CPU's reductions are slow here)
    return jnp.maximum(jnp.maximum(z[0], z[1]), jnp.maximum(z[2], z[3]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _block(x, kernel, bias, pads):
    return jax.nn.relu(_max4(_phases(x, kernel, bias, pads)))


def _block_fwd(x, kernel, bias, pads):
    zmax, hits = max_and_hits(_phases(x, kernel, bias, pads))
    y = jax.nn.relu(zmax)
    return y, (x, kernel, y, hits)


def _block_bwd(pads, res, g):
    x, kernel, y, hits = res
    k, cout = kernel.shape[0], kernel.shape[-1]
    # As autodiff of max_pool_2x2(relu(.)): the window's maxima share the gradient, ReLU passes it where > 0.
    gz = jnp.where(y > 0, g, 0)
    dz = route(hits, gz)  # 4 x (B, Hp, Wp, K)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    hp, wp = g.shape[1], g.shape[2]
    dw = None
    for (r, s), dzr in zip(((0, 0), (0, 1), (1, 0), (1, 1)), dz):
        p = jnp.stack([_shifted(xp, r + i, s + j, hp, wp, 2).reshape(-1) for i in range(k) for j in range(k)])
        part = p @ dzr.reshape(-1, cout)  # (k*k, K)
        dw = part if dw is None else dw + part
    dw = dw.reshape(kernel.shape)
    db = gz.sum(axis=(0, 1, 2))
    # input gradient (unused when x is data): the phases back on the conv output grid, then XLA's correlation
    dy = unpool(dz, xp.shape[1] - k + 1, xp.shape[2] - k + 1)
    return _dx(dy, kernel, pads).astype(x.dtype), dw.astype(kernel.dtype), db.astype(g.dtype)


_block.defvjp(_block_fwd, _block_bwd)


def conv2d(x, kernel, padding):
    """Stride-1 ``padding`` convolution of a single-channel x (B, H, W, 1)."""
    return _conv(x, kernel, _pads(kernel.shape[0], padding))


def block(x, kernel, bias, padding):
    """``max_pool_2x2(relu(conv2d(x, kernel, padding) + bias))`` of a single-channel x as one op."""
    return _block(x, kernel, bias, _pads(kernel.shape[0], padding))
