"""Winograd minimal filtering F(m x m, 3x3) (``"winograd"``; Lavin & Gray 2016), with a custom VJP.

Input tiles ((m+2)^2, stride m) and the kernel go through the small constant Toom-Cook transforms
(adds and a few scalings, fused loops), then one batched matmul over the channels per tile
position needs 4x (F(4x4): 36 products per 16 outputs) or 5x (F(6x6): 64 per 36) fewer multiplies
than the direct form, less the padding of partial tiles; the output transform recombines them. The
weight gradient is again one batched matmul in the Winograd domain (the forward's transformed input
is kept as the residual); the input gradient shares the grad's transform, one more batched matmul
and the input transform's exact transpose (overlap-add of the tiles). The tile m is the plan's
(:func:`tile` picks it per layer). Computes in float32: ~1e-5 of the output's scale (F(6x6); F(4x4)
~6e-6) where XLA's convolution is ~1e-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from siamax.conv._common import pads as _pads

# F(m x m, 3 x 3) minimal filtering (Lavin & Gray 2016): y = A^T [(G w G^T) . (B^T d B)] A per
# (m+2) x (m+2) input tile d, summed over input channels.
_POINTS = (0, 1, -1, 2, -2, 0.5, -0.5)  # the finite interpolation points, then infinity


@functools.cache
def matrices(m: int):
    """(A^T, G, B^T) of F(m, 3) by Toom-Cook on the first m + 1 points and infinity.

    m = 2, 4, 6 use the points {0, +-1}, {0, +-1, +-2} and {0, +-1, +-2, +-1/2}, as in Lavin &
    Gray and NNPACK; B^T is the solution of A^T diag(G g) B^T d = (d * g) for all d and g, exact on
    a 2^-10 grid for these points (asserted).
    """
    a = m + 2
    pts = np.array(_POINTS[: a - 1], np.float64)
    at = np.zeros((m, a))
    at[:, :-1] = pts[None, :] ** np.arange(m)[:, None]
    at[-1, -1] = 1
    f = np.array([np.prod([p - q for q in pts if q != p]) for p in pts])
    g = np.zeros((a, 3))
    g[:-1] = pts[:, None] ** np.arange(3)[None, :] / f[:, None]
    g[-1, -1] = 1
    # sum_j at[i, j] g[j, k] bt[j, l] = [l == i + k]: one small linear system per column
    lhs = np.einsum("ij,jk->ikj", at, g).reshape(3 * m, a)
    rhs = np.array([[float(col == i + k) for col in range(a)] for i in range(m) for k in range(3)])
    bt = np.round(np.linalg.lstsq(lhs, rhs, rcond=None)[0] * 1024) / 1024
    assert np.abs(lhs @ bt - rhs).max() < 1e-12, m
    return at, g, bt


def tile(ho: int, wo: int) -> int:
    """The output tile m of F(m x m, 3x3) that :func:`siamax.conv.plan` takes for an ho x wo output.

    F(4x4) or F(6x6), whichever needs fewer Winograd-domain products for the output (partial tiles
    included): F(6x6) on the small model's 17x17 conv2 (576 vs 900 products per channel pair and
    image; 64 per 36 outputs), F(4x4) on its 8x8 and 4x4 planes. F(6x6) is ~1e-5 relative to the
    output's scale in float32, F(4x4) ~6e-6, XLA's ~1e-6.
    """
    return min((4, 6), key=lambda m: (m + 2) ** 2 * -(-ho // m) * -(-wo // m))


def _lincomb(coefs, terms):
    """sum_i coefs[i] * terms[i] with the zero terms dropped and +-1 as additions (Python floats)."""
    out = None
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * float(c))
        out = v if out is None else out + v
    return out


def _geometry(h, w, k, pads, m):
    """Output size, tile counts and the zero padding that makes (m*th + k - 1) x (m*tw + k - 1) inputs."""
    (lo, hi), (lo2, hi2) = pads
    ho, wo = h + lo + hi - k + 1, w + lo2 + hi2 - k + 1
    th, tw = -(-ho // m), -(-wo // m)
    return ho, wo, th, tw, ((0, 0), (lo, m * th + k - 1 - h - lo), (lo2, m * tw + k - 1 - w - lo2), (0, 0))


def _input(xp, m, th, tw, bt):
    """B^T d B of every overlapping tile: (B, m*th+2, m*tw+2, C) -> (a, a, B, th, tw, C), a = m + 2.

    Separable (rows, then columns), each step a few strided slices combined with the transform's
    small integer coefficients; the tile positions lead, so they batch the matmul.
    """
    a = bt.shape[0]
    rows = [jax.lax.slice_in_dim(xp, i, i + m * (th - 1) + 1, m, axis=1) for i in range(a)]
    r = jnp.stack([_lincomb(bt[p], rows) for p in range(a)])  # (a, B, th, Wp, C)
    cols = [jax.lax.slice_in_dim(r, j, j + m * (tw - 1) + 1, m, axis=3) for j in range(a)]
    # no reshape to (a*a, N, C): under the tower's vmap that would move the twin axis (a copy)
    return jnp.stack([_lincomb(bt[q], cols) for q in range(a)], axis=1)


def _output(mt, m, b, th, tw, at):
    """A^T M A: (a, a, B, th, tw, K) -> (B, m*th, m*tw, K)."""
    a, k = at.shape[1], mt.shape[-1]
    t = jnp.stack([_lincomb(at[v], [mt[:, q] for q in range(a)]) for v in range(m)], axis=1)  # (a, m, B, th, tw, K)
    y = jnp.stack([_lincomb(at[u], [t[p] for p in range(a)]) for u in range(m)])  # (m, m, B, th, tw, K)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(b, th * m, tw * m, k)


def _output_transposed(gp, m, th, tw, at):
    """The transpose of :func:`_output` (A g A^T per m x m tile of the padded grad):
    (B, m*th, m*tw, K) -> (a, a, B, th, tw, K)."""
    a, b, k = at.shape[1], gp.shape[0], gp.shape[-1]
    g6 = gp.reshape(b, th, m, tw, m, k)
    r = jnp.stack([_lincomb(at[:, p], [g6[:, :, u] for u in range(m)]) for p in range(a)])  # (a, B, th, tw, m, K)
    return jnp.stack([_lincomb(at[:, q], [r[:, :, :, :, v] for v in range(m)]) for q in range(a)], axis=1)


def _fwd_impl(x, kernel, pads, m):
    at, g, bt = matrices(m)
    b, h, w, cin = x.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    ho, wo, th, tw, pp = _geometry(h, w, k, pads, m)
    v = _input(jnp.pad(x, pp), m, th, tw, bt)
    a = m + k - 1
    u = (jnp.asarray(np.kron(g, g), kernel.dtype) @ kernel.reshape(k * k, cin * cout)).reshape(a, a, cin, cout)
    mt = jnp.einsum("pqbhwc,pqck->pqbhwk", v, u)  # one matmul per tile position, over the channels
    return _output(mt, m, b, th, tw, at)[:, :ho, :wo], (v, u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, pads, m):
    return _fwd_impl(x, kernel, pads, m)[0]


def _conv_fwd(x, kernel, pads, m):
    # residuals: the transformed input and kernel, both used again by the backward pass
    return _fwd_impl(x, kernel, pads, m)


def _conv_bwd(pads, m, res, gy):
    v, u = res
    at, g, bt = matrices(m)
    a, _, cin, cout = u.shape
    k = a - m + 1
    b, ho, wo, _ = gy.shape
    th, tw = -(-ho // m), -(-wo // m)
    # The output transform's transpose (A g A^T per tile) serves both gradients.
    gp = jnp.pad(gy, ((0, 0), (0, m * th - ho), (0, m * tw - wo), (0, 0)))
    gt = _output_transposed(gp, m, th, tw, at)
    # weight gradient in the Winograd domain: dU = V^T gt per tile position, dW = G^T dU G
    du = jnp.einsum("pqbhwc,pqbhwk->pqck", v, gt)
    dw = (jnp.asarray(np.kron(g, g).T, du.dtype) @ du.reshape(a * a, -1)).reshape(k, k, cin, cout)
    # input gradient: dV = gt U^T per tile position, then the input transform's exact transpose
    # (overlap-add of the tiles); one transform fewer than a Winograd convolution of the grad
    dv = jnp.einsum("pqbhwk,pqck->pqbhwc", gt, u)
    xp = jax.ShapeDtypeStruct((b, m * th + k - 1, m * tw + k - 1, cin), dv.dtype)
    (dxp,) = jax.linear_transpose(lambda xp: _input(xp, m, th, tw, bt), xp)(dv)
    (lo, hi), (lo2, hi2) = pads
    dx = dxp[:, lo : lo + ho - lo - hi + k - 1, lo2 : lo2 + wo - lo2 - hi2 + k - 1]
    return dx.astype(gy.dtype), dw.astype(u.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, padding, m):
    """Stride-1 ``padding`` convolution of x (B, H, W, Cin) with a 3x3 kernel by F(m x m, 3x3)."""
    # float32 inside: the transforms' coefficients (up to 8 and 1/90) cost bf16 too much precision
    y = _conv(x.astype(jnp.float32), kernel.astype(jnp.float32), _pads(kernel.shape[0], padding), m)
    return y.astype(x.dtype)
