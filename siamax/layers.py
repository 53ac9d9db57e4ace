"""Primitive ops the tower is built from, with interchangeable implementations of equal maths.

All implementations compute the same stride-1 NHWC cross-correlation as
``lax.conv_general_dilated`` (to float rounding) and are differentiable with ``jax.grad``:

``impl="xla"``
    ``lax.conv_general_dilated``. The right choice on GPU/TPU (cuDNN & co.); on XLA's CPU backend
    its weight gradients are slow (10-30 GFLOP/s for the paper's conv1/conv2).
``impl="matmul"``
    Patch extraction (k*k shifted slices) + one matmul, with a custom VJP: the weight gradient is
    ``patches^T @ grad_out`` (patches rebuilt in the backward pass instead of stored) and the
    input gradient is the "full" correlation of ``grad_out`` with the flipped kernel, again as
    patches + matmul. Single-channel inputs (conv1) stack the k*k slices on a leading axis so both
    matmuls read them contiguously.
``impl="fft"``
    Convolution theorem: real FFTs of the input over (H, W), one batched (per-frequency) complex
    matmul over channels, inverse FFT, crop. A 7x7 64->128 layer does ~18x fewer multiply-adds
    than the direct form; the gradients (by autodiff) are again FFTs and per-frequency matmuls.
    Exact up to float rounding (the circular period equals the padded input size, so nothing
    wraps into the valid output).
``impl="hybrid"``
    XLA's forward convolution with a custom VJP whose weight gradient is a patches^T @ grad_out
    matmul (single-channel inputs: one kernel row of patches at a time, so they stay in cache)
    and whose input gradient is XLA's convolution of the padded grad_out with the flipped kernel.
    For layers whose forward XLA does well but whose weight gradient it does not (conv1).
``impl="winograd"`` (3x3 kernels)
    Winograd minimal filtering F(m x m, 3x3) (Lavin & Gray 2016), m = 4 or 6 per layer (whichever
    needs fewer products for the layer's output size, :func:`winograd_tile`), with a custom VJP:
    input tiles ((m+2)^2, stride m) and the kernel go through the small constant Toom-Cook
    transforms (adds and a few scalings, fused loops), then one batched matmul over the channels
    per tile position needs 4x (F(4x4): 36 products per 16 outputs) or 5x (F(6x6): 64 per 36)
    fewer multiplies than the direct form, less the padding of partial tiles; the output
    transform recombines them. The weight gradient is again one batched matmul in the Winograd
    domain (the forward's transformed input is kept as the residual); the input gradient shares
    the grad's transform, one more batched matmul and the input transform's exact transpose
    (overlap-add of the tiles). Computes in float32; ~1e-5
    of the output's scale (F(6x6); F(4x4) ~6e-6) where XLA's convolution is ~1e-6.
``impl="direct"`` (single-channel inputs)
    k*k shifted multiply-adds in one fused loop (the small model's conv1: 3x3 on a 35x35 image),
    weight gradient as one patches^T @ grad matmul. Inside :func:`conv_relu_pool` the whole
    block is one op with a custom VJP: the four 2x2-pool phases of conv + bias are computed side
    by side and reduced to their max and a one-byte mask of the phases that reach it, without
    materialising the full-resolution map; the backward pass routes the gradient through the
    mask (shared on ties, as autodiff of :func:`max_pool_2x2` does) and contracts it with the
    phase patches for the weight gradient.
``impl="s2d"`` (whole pooled blocks only: :func:`conv_relu_pool`)
    Space-to-depth: each 2x2 block of input pixels becomes 4*Cin channels and each 2x2 block of
    output pixels 4*Cout channels, so the convolution runs directly on the pooled grid with a
    (k//2+1)^2 kernel assembled from the k^2 one (zeros where a tap falls outside it), and the
    2x2 max-pooling is a max over the 4 output channel groups. About (2(k//2+1)/k)^2 times the
    multiply-adds (1.44x for the paper's conv1, 1.31x for conv2), but in matrix shapes that GPU
    tensor cores run well: the paper's conv1 (one input channel) ran 18 TFLOP/s as XLA's/cuDNN's
    convolution on an H100. A plain :func:`conv2d` under ``impl="s2d"`` is XLA's.
``impl="auto"`` (the presets' default)
    ``"xla"`` on every backend except CPU; on CPU a per-layer choice from the layer's shape
    (:func:`choose_impl`), measured on the paper and small networks.

Everything is shape-static and backend-neutral (no host callbacks), so all of it also compiles
for GPU; the dtype of the inputs (float32 or bfloat16) is the compute dtype, except that the FFT
path computes in float32 (bf16 FFTs lose too much precision) and casts back.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("xla", "matmul", "fft", "hybrid", "winograd", "direct", "s2d", "auto")


def conv2d(x: jax.Array, kernel: jax.Array, padding: str = "VALID", impl: str = "xla") -> jax.Array:
    """Stride-1 NHWC convolution. x: (B, H, W, Cin), kernel: (k, k, Cin, Cout) -> (B, H', W', Cout)."""
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"conv2d expects x (B, H, W, Cin) and a square kernel (k, k, Cin, Cout); got "
            f"x {tuple(x.shape)}, kernel {tuple(kernel.shape)}"
        )
    if impl == "auto":
        impl = choose_impl(x.shape, kernel.shape, padding)
    if impl in ("xla", "s2d"):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl not in ("matmul", "fft", "hybrid", "winograd", "direct"):
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {IMPLS}")
    if impl in ("winograd", "direct"):
        pads = _pads(kernel.shape[0], padding)
        if impl == "direct":
            _check_direct(x.shape, kernel.shape)
            return _conv_direct(x, kernel, pads)
        if kernel.shape[0] != 3:
            raise ValueError(f"impl='winograd' is for 3x3 kernels, got {kernel.shape[0]}x{kernel.shape[0]}")
        # float32 inside: the transforms' coefficients (up to 8 and 1/90) cost bf16 too much precision
        (lo, hi), (lo2, hi2) = pads
        m = winograd_tile(x.shape[1] + lo + hi - 2, x.shape[2] + lo2 + hi2 - 2)
        y = _conv_winograd(x.astype(jnp.float32), kernel.astype(jnp.float32), pads, m)
        return y.astype(x.dtype)
    x = _pad_same(x, kernel.shape[0]) if padding == "SAME" else x
    if impl == "matmul":
        return _conv_matmul(x, kernel)
    if impl == "hybrid":
        return _conv_hybrid(x, kernel)
    return _conv_fft(x, kernel)


def choose_impl(x_shape, kernel_shape, padding: str = "VALID", backend: str | None = None) -> str:
    """The implementation ``impl="auto"`` uses for this layer on ``backend`` (default: JAX's default).

    Non-CPU backends: ``"xla"`` (cuDNN/oneDNN-class libraries handle convolutions well there).
    On CPU, measured per layer on the paper and small networks (see docs/performance.md):

    * ``"fft"`` where the direct form's multiply-adds per output pixel (k*k*Cin) dwarf the FFT's
      per-frequency work: k >= 4 with >= 32 input channels on planes of >= 16 pixels (the
      paper's conv2 and conv3: 7x7x64 and 4x4x128);
    * ``"hybrid"`` for single-channel inputs on large planes (the paper's conv1, 10x10 on
      105x105): XLA's forward convolution is fine there, its weight gradient is not;
    * ``"winograd"`` for 3x3 kernels with >= 16 input channels (the small model's conv2-conv4):
      F(4x4) or F(6x6) needs 4-5x fewer multiplies than the direct form and its weight gradient
      is one batched matmul, where XLA's weight-gradient convolution is slow;
    * ``"direct"`` for single-channel inputs with small kernels (the small model's conv1, 3x3 on
      35x35): k*k multiply-adds per output in one fused loop, the weight gradient as one
      patches^T @ grad matmul; inside :func:`conv_relu_pool` the whole block is fused;
    * ``"xla"`` otherwise (the paper's conv4, 4x4 on 9x9 planes).
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "xla"
    k, cin = kernel_shape[0], kernel_shape[2]
    h = x_shape[1] + (k - 1 if padding == "SAME" else 0)
    if k >= 4 and cin >= 32 and h >= 16:
        return "fft"
    if cin == 1 and h >= 48:
        return "hybrid"
    if k == 3 and cin >= 16:
        return "winograd"
    if cin == 1 and k <= 5:
        return "direct"
    return "xla"


def _pads(k, padding):
    """((lo, hi), (lo, hi)) zero padding of H and W that turns ``padding`` into a VALID convolution."""
    lo = (k - 1) // 2 if padding == "SAME" else 0
    hi = k - 1 - lo if padding == "SAME" else 0
    return ((lo, hi), (lo, hi))


def _grad_pads(k, pads):
    """Padding of the output gradient whose VALID correlation with :func:`_flipped` is the input gradient."""
    return tuple((k - 1 - lo, k - 1 - hi) for lo, hi in pads)


def _flipped(kernel):
    """The spatially flipped, in/out-swapped kernel that maps output gradients to input gradients."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def _check_direct(x_shape, kernel_shape):
    if x_shape[-1] != 1:
        raise ValueError(f"impl='direct' is for single-channel inputs, got {x_shape[-1]} channels")


def _pad_same(x, k):
    return jnp.pad(x, ((0, 0), *_pads(k, "SAME"), (0, 0)))


# ----------------------------------------------------------------------------- patches + matmul
def _patches(x, k):
    """VALID k x k patches. Cin > 1: (B, Ho, Wo, k*k*Cin) ordered (i, j, c); Cin == 1: (k*k, B, Ho, Wo)."""
    b, h, w, cin = x.shape
    ho, wo = h - k + 1, w - k + 1
    if cin == 1:
        x2 = x[..., 0]
        return jnp.stack([x2[:, i : i + ho, j : j + wo] for i in range(k) for j in range(k)], axis=0)
    return jnp.concatenate([x[:, i : i + ho, j : j + wo, :] for i in range(k) for j in range(k)], axis=-1)


def _conv_matmul_fwd_impl(x, kernel):
    k, _, cin, cout = kernel.shape
    # The barrier materialises the patches: left to itself XLA:CPU fuses the slices into the dot's
    # operand and falls off its fast matmul path (several times slower).
    p = jax.lax.optimization_barrier(_patches(x, k))
    wmat = kernel.reshape(k * k * cin, cout)
    if cin == 1:  # p: (k*k, B, Ho, Wo) -> contract the leading axis
        return jax.lax.dot_general(p, wmat, (((0,), (0,)), ((), ())))
    return p @ wmat


@jax.custom_vjp
def _conv_matmul(x, kernel):
    return _conv_matmul_fwd_impl(x, kernel)


def _conv_matmul_fwd(x, kernel):
    return _conv_matmul_fwd_impl(x, kernel), (x, kernel)


def _conv_matmul_bwd(res, g):
    x, kernel = res
    k, _, cin, cout = kernel.shape
    p = jax.lax.optimization_barrier(
        _patches(x, k)
    )  # rebuilt, not stored: the paper's conv2 patches would be ~1.4 GB at batch 32
    if cin == 1:
        dw = jax.lax.dot_general(p, g, (((1, 2, 3), (0, 1, 2)), ((), ())))  # (k*k, Cout)
    else:
        dw = jax.lax.dot_general(p, g, (((0, 1, 2), (0, 1, 2)), ((), ())))  # (k*k*Cin, Cout)
    dw = dw.reshape(kernel.shape).astype(kernel.dtype)
    # d x = "full" correlation of g with the spatially flipped, in/out-swapped kernel.
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    kf = _flipped(kernel)
    dx = _conv_matmul_fwd_impl(gp, kf).astype(x.dtype)
    return dx, dw


_conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


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
def _conv_hybrid(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_hybrid_fwd(x, kernel):
    return _conv_hybrid(x, kernel), (x, kernel)


def _conv_hybrid_bwd(res, g):
    x, kernel = res
    k, _, cin, cout = kernel.shape
    if cin == 1:
        dw = _weight_grad_rows(x, g, k).reshape(kernel.shape)
    else:
        p = _patches(x, k)
        dw = jax.lax.dot_general(p, g, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(kernel.shape)
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    kf = _flipped(kernel)
    dx = jax.lax.conv_general_dilated(gp, kf, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dx.astype(x.dtype), dw.astype(kernel.dtype)


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


# ----------------------------------------------------------------------------- FFT
@functools.cache
def _dft_matrices(n: int, k: int, sign: float):
    """cos/sin of the first k columns of the n-point DFT (rows 0..n-1) and of its rfft half (rows 0..n//2)."""
    t = np.outer(np.arange(n), np.arange(k)) * (2 * np.pi / n)
    c, s = np.cos(t), sign * np.sin(t)
    nf = n // 2 + 1
    return (c.astype(np.float32), s.astype(np.float32), c[:nf].astype(np.float32), s[:nf].astype(np.float32))


def _kernel_spectrum(kernel, n):
    """conj(rfft2(kernel zero-padded to n x n)) as real and imaginary parts, each (n, n//2+1, Cin, Cout).

    Computed with two small real DFT matmuls (k taps each) instead of FFTs of n x n mostly-zero planes.
    """
    k = kernel.shape[0]
    ch, sh, cw, sw = (jnp.asarray(a) for a in _dft_matrices(n, k, 1.0))  # e^{+i theta}: the conjugate
    # along the kernel's W axis (b): (k_a, nf, Cin, Cout)
    tr = jnp.einsum("fb,abio->afio", cw, kernel)
    ti = jnp.einsum("fb,abio->afio", sw, kernel)
    # along the H axis (a): (n, nf, Cin, Cout); (ch + i sh)(tr + i ti)
    re = jnp.einsum("ha,afio->hfio", ch, tr) - jnp.einsum("ha,afio->hfio", sh, ti)
    im = jnp.einsum("ha,afio->hfio", ch, ti) + jnp.einsum("ha,afio->hfio", sh, tr)
    return re, im


def _conv_fft(x, kernel):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    kernel = kernel.astype(jnp.float32)
    b, h, w, cin = x.shape
    k, _, _, cout = kernel.shape
    ho, wo = h - k + 1, w - k + 1
    if h != w:
        raise ValueError(f"impl='fft' needs square inputs, got {h}x{w}")
    xf = jnp.fft.rfft2(jnp.transpose(x, (0, 3, 1, 2)))  # (B, Cin, H, Wf) complex
    xf = jnp.transpose(xf, (2, 3, 0, 1))  # (H, Wf, B, Cin): frequencies batch the matmul
    kr, ki = _kernel_spectrum(kernel, h)
    kf = jax.lax.complex(kr, ki)
    yf = jnp.einsum("hwbi,hwio->hwbo", xf, kf)  # (H, Wf, B, Cout)
    y = jnp.fft.irfft2(jnp.transpose(yf, (2, 3, 0, 1)), s=(h, w))  # (B, Cout, H, W)
    return jnp.transpose(y[:, :, :ho, :wo], (0, 2, 3, 1)).astype(dtype)


# ----------------------------------------------------------------------------- Winograd (3x3)
# F(m x m, 3 x 3) minimal filtering (Lavin & Gray 2016): y = A^T [(G w G^T) . (B^T d B)] A per
# (m+2) x (m+2) input tile d, summed over input channels.
_WINOGRAD_POINTS = (0, 1, -1, 2, -2, 0.5, -0.5)  # the finite interpolation points, then infinity


@functools.cache
def _winograd_matrices(m: int):
    """(A^T, G, B^T) of F(m, 3) by Toom-Cook on the first m + 1 points and infinity.

    m = 2, 4, 6 use the points {0, +-1}, {0, +-1, +-2} and {0, +-1, +-2, +-1/2}, as in Lavin &
    Gray and NNPACK; B^T is the solution of A^T diag(G g) B^T d = (d * g) for all d and g, exact on
    a 2^-10 grid for these points (asserted).
    """
    a = m + 2
    pts = np.array(_WINOGRAD_POINTS[: a - 1], np.float64)
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


# None: per layer, F(4x4) or F(6x6), whichever needs fewer Winograd-domain products for the layer's
# output (partial tiles included): F(6x6) on the small model's 17x17 conv2 (576 vs 900 products per
# channel pair and image; 64 per 36 outputs), F(4x4) on its 8x8 and 4x4 planes. An int forces the tile
# (tests). F(6x6) is ~1e-5 relative to the output's scale in float32, F(4x4) ~6e-6, XLA's ~1e-6.
WINOGRAD_TILE: int | None = None


def winograd_tile(ho: int, wo: int) -> int:
    """The output tile m of F(m x m, 3x3) for an ho x wo output (see ``WINOGRAD_TILE``)."""
    if WINOGRAD_TILE is not None:
        return WINOGRAD_TILE
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


def _winograd_geometry(h, w, k, pads, m):
    """Output size, tile counts and the zero padding that makes (m*th + k - 1) x (m*tw + k - 1) inputs."""
    (lo, hi), (lo2, hi2) = pads
    ho, wo = h + lo + hi - k + 1, w + lo2 + hi2 - k + 1
    th, tw = -(-ho // m), -(-wo // m)
    return ho, wo, th, tw, ((0, 0), (lo, m * th + k - 1 - h - lo), (lo2, m * tw + k - 1 - w - lo2), (0, 0))


def _winograd_input(xp, m, th, tw, bt):
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


def _winograd_output(mt, m, b, th, tw, at):
    """A^T M A: (a, a, B, th, tw, K) -> (B, m*th, m*tw, K)."""
    a, k = at.shape[1], mt.shape[-1]
    t = jnp.stack([_lincomb(at[v], [mt[:, q] for q in range(a)]) for v in range(m)], axis=1)  # (a, m, B, th, tw, K)
    y = jnp.stack([_lincomb(at[u], [t[p] for p in range(a)]) for u in range(m)])  # (m, m, B, th, tw, K)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(b, th * m, tw * m, k)


def _winograd_output_transposed(gp, m, th, tw, at):
    """The transpose of :func:`_winograd_output` (A g A^T per m x m tile of the padded grad):
    (B, m*th, m*tw, K) -> (a, a, B, th, tw, K)."""
    a, b, k = at.shape[1], gp.shape[0], gp.shape[-1]
    g6 = gp.reshape(b, th, m, tw, m, k)
    r = jnp.stack([_lincomb(at[:, p], [g6[:, :, u] for u in range(m)]) for p in range(a)])  # (a, B, th, tw, m, K)
    return jnp.stack([_lincomb(at[:, q], [r[:, :, :, :, v] for v in range(m)]) for q in range(a)], axis=1)


def _winograd_fwd_impl(x, kernel, pads, m):
    at, g, bt = _winograd_matrices(m)
    b, h, w, cin = x.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    ho, wo, th, tw, pp = _winograd_geometry(h, w, k, pads, m)
    v = _winograd_input(jnp.pad(x, pp), m, th, tw, bt)
    a = m + k - 1
    u = (jnp.asarray(np.kron(g, g), kernel.dtype) @ kernel.reshape(k * k, cin * cout)).reshape(a, a, cin, cout)
    mt = jnp.einsum("pqbhwc,pqck->pqbhwk", v, u)  # one matmul per tile position, over the channels
    return _winograd_output(mt, m, b, th, tw, at)[:, :ho, :wo], (v, u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_winograd(x, kernel, pads, m):
    return _winograd_fwd_impl(x, kernel, pads, m)[0]


def _conv_winograd_fwd(x, kernel, pads, m):
    # residuals: the transformed input and kernel, both used again by the backward pass
    return _winograd_fwd_impl(x, kernel, pads, m)


def _conv_winograd_bwd(pads, m, res, gy):
    v, u = res
    at, g, bt = _winograd_matrices(m)
    a, _, cin, cout = u.shape
    k = a - m + 1
    b, ho, wo, _ = gy.shape
    th, tw = -(-ho // m), -(-wo // m)
    # The output transform's transpose (A g A^T per tile) serves both gradients.
    gp = jnp.pad(gy, ((0, 0), (0, m * th - ho), (0, m * tw - wo), (0, 0)))
    gt = _winograd_output_transposed(gp, m, th, tw, at)
    # weight gradient in the Winograd domain: dU = V^T gt per tile position, dW = G^T dU G
    du = jnp.einsum("pqbhwc,pqbhwk->pqck", v, gt)
    dw = (jnp.asarray(np.kron(g, g).T, du.dtype) @ du.reshape(a * a, -1)).reshape(k, k, cin, cout)
    # input gradient: dV = gt U^T per tile position, then the input transform's exact transpose
    # (overlap-add of the tiles); one transform fewer than a Winograd convolution of the grad
    dv = jnp.einsum("pqbhwk,pqck->pqbhwc", gt, u)
    xp = jax.ShapeDtypeStruct((b, m * th + k - 1, m * tw + k - 1, cin), dv.dtype)
    (dxp,) = jax.linear_transpose(lambda xp: _winograd_input(xp, m, th, tw, bt), xp)(dv)
    (lo, hi), (lo2, hi2) = pads
    dx = dxp[:, lo : lo + ho - lo - hi + k - 1, lo2 : lo2 + wo - lo2 - hi2 + k - 1]
    return dx.astype(gy.dtype), dw.astype(u.dtype)


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


# ----------------------------------------------------------------------------- direct (one input channel)
def _shifted(xp, i, j, ho, wo, stride=1):
    """xp[:, i + stride*y, j + stride*x, 0] for y < ho, x < wo: (B, ho, wo)."""
    b = xp.shape[0]
    return jax.lax.slice(
        xp[..., 0], (0, i, j), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1), (1, stride, stride)
    )


def _direct_dx(g, kernel, pads):
    """Input gradient of a VALID-after-``pads`` convolution: XLA's correlation of g with the flipped kernel."""
    return jax.lax.conv_general_dilated(
        g, _flipped(kernel), (1, 1), _grad_pads(kernel.shape[0], pads), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_direct(x, kernel, pads):
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


def _conv_direct_fwd(x, kernel, pads):
    return _conv_direct(x, kernel, pads), (x, kernel)


def _conv_direct_bwd(pads, res, g):
    x, kernel = res
    k, cout = kernel.shape[0], kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = g.shape[1], g.shape[2]
    p = jnp.stack([_shifted(xp, i, j, ho, wo).reshape(-1) for i in range(k) for j in range(k)])  # (k*k, N)
    dw = (p @ g.reshape(-1, cout)).reshape(kernel.shape)
    return _direct_dx(g, kernel, pads).astype(x.dtype), dw.astype(kernel.dtype)


_conv_direct.defvjp(_conv_direct_fwd, _conv_direct_bwd)


def _direct_pre(x, kernel, bias, pads):
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
def _direct_relu_pool(x, kernel, bias, pads):
    return jax.nn.relu(_max4(_direct_pre(x, kernel, bias, pads)))


def _max_and_hits(z):
    """Max over the 4 pooling phases and a bitmask (uint8) of the phases that reach it (ties: several).

    One variadic reduction, so the phases are computed once and the mask is materialised: the
    backward pass reads 1 byte per output instead of recomputing the four phases (XLA would
    otherwise fuse their k*k multiply-adds into every consumer of the residual).
    """
    z = jnp.stack(z)
    bits = jnp.broadcast_to((2 ** jnp.arange(4, dtype=jnp.uint8)).reshape((4,) + (1,) * (z.ndim - 1)), z.shape)

    def pick(a, b):
        (va, ma), (vb, mb) = a, b
        return jnp.maximum(va, vb), jnp.where(va > vb, ma, jnp.where(vb > va, mb, ma | mb))

    return jax.lax.reduce((z, bits), (jnp.array(-jnp.inf, z.dtype), jnp.array(0, jnp.uint8)), pick, (0,))


def _route(hits, g):
    """The 4 phases' share of the pooled gradient g: g / (number of maxima) where the phase is one."""
    hit = [(hits >> r) & 1 for r in range(4)]
    share = g / ((hit[0] + hit[1]) + (hit[2] + hit[3])).astype(g.dtype)
    return [jnp.where(h == 1, share, 0) for h in hit]


def _unpool(phases, h, w):
    """The 4 pooling phases (B, Hp, Wp, C), phase 2r + s at (2y+r, 2x+s), back on an h x w grid
    (zeros in the row/column that floor pooling dropped)."""
    b, hp, wp, c = phases[0].shape
    y = jnp.stack(phases).reshape(2, 2, b, hp, wp, c).transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * hp, 2 * wp, c)
    return jnp.pad(y, ((0, 0), (0, h - 2 * hp), (0, w - 2 * wp), (0, 0)))


def _direct_relu_pool_fwd(x, kernel, bias, pads):
    zmax, hits = _max_and_hits(_direct_pre(x, kernel, bias, pads))
    y = jax.nn.relu(zmax)
    return y, (x, kernel, y, hits)


def _direct_relu_pool_bwd(pads, res, g):
    x, kernel, y, hits = res
    k, cout = kernel.shape[0], kernel.shape[-1]
    # As autodiff of max_pool_2x2(relu(.)): the window's maxima share the gradient, ReLU passes it where > 0.
    gz = jnp.where(y > 0, g, 0)
    dz = _route(hits, gz)  # 4 x (B, Hp, Wp, K)
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
    dy = _unpool(dz, xp.shape[1] - k + 1, xp.shape[2] - k + 1)
    return _direct_dx(dy, kernel, pads).astype(x.dtype), dw.astype(kernel.dtype), db.astype(g.dtype)


_direct_relu_pool.defvjp(_direct_relu_pool_fwd, _direct_relu_pool_bwd)


# ----------------------------------------------------------------------------- pooled blocks
def conv_relu_pool(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str = "VALID", impl: str = "xla"
) -> jax.Array:
    """One pooled tower block, ``max_pool_2x2(relu(conv2d(x, kernel, padding) + bias))``.

    ``impl="s2d"`` computes it by space-to-depth, ``"direct"`` (one input channel) as one fused
    op with its own VJP (module docstring); ``"auto"`` takes s2d where :func:`prefers_s2d` says
    so, the fused direct block where :func:`choose_impl` picks ``"direct"``, and otherwise
    :func:`conv2d` with its own choice followed by ReLU and pooling.
    """
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    if impl == "auto" and prefers_s2d(kernel.shape):
        impl = "s2d"
    if impl == "auto" and choose_impl(x.shape, kernel.shape, padding) == "direct":
        impl = "direct"
    if impl == "direct":
        _check_direct(x.shape, kernel.shape)
        return _direct_relu_pool(x, kernel, bias, _pads(kernel.shape[0], padding))
    if impl != "s2d":
        pool = _max_pool_2x2_masked if jax.default_backend() == "cpu" else max_pool_2x2
        return pool(jax.nn.relu(conv2d(x, kernel, padding, impl) + bias))
    x = _pad_same(x, kernel.shape[0]) if padding == "SAME" else x
    return _s2d_conv_relu_pool(x, kernel, bias)


def prefers_s2d(kernel_shape, backend: str | None = None) -> bool:
    """Whether ``impl="auto"`` computes a pooled block by space-to-depth on ``backend``.

    Measured on an H100 (docs/performance.md): the paper's conv1 (10x10, one input channel) and
    conv2 (7x7, 64 -> 128) blocks ran faster so, its conv3 (4x4: 2.25x the multiply-adds) slower.
    So on GPU/TPU: one input channel, or at most 1.5x the direct form's multiply-adds. Never on
    CPU (not measured to help there).
    """
    if (backend or jax.default_backend()) == "cpu":
        return False
    k, cin = kernel_shape[0], kernel_shape[2]
    return cin == 1 or (2 * (k // 2 + 1) / k) ** 2 <= 1.5


@functools.cache
def _s2d_taps(k: int):
    """Tap indices and mask that assemble the space-to-depth kernel from a k x k one.

    Output pixel (2Y + r, 2X + s) reads input pixel (2(Y + a) + p, 2(X + b) + q) through the
    original tap (2a + p - r, 2b + q - s), a, b in [0, k//2]; taps outside [0, k) are zero.
    """
    ka = k // 2 + 1
    tap = 2 * np.arange(ka)[:, None, None] + np.arange(2)[None, :, None] - np.arange(2)[None, None, :]  # (a, p, r)
    inside = (tap >= 0) & (tap < k)
    return np.clip(tap, 0, k - 1), inside


def _s2d_conv_relu_pool(x, kernel, bias):
    b, h, w, cin = x.shape
    k, _, _, cout = kernel.shape
    if h != w:
        raise ValueError(f"impl='s2d' needs square inputs, got {h}x{w}")
    hp = (h - k + 1) // 2  # pooled output size (floor, as max_pool_2x2)
    if hp < 1:
        raise ValueError(f"a {k}x{k} convolution and 2x2 pooling leave nothing of a {h}x{w} input")
    ka = k // 2 + 1
    n = hp + ka - 1  # space-to-depth rows needed; rows past the image meet only zero taps
    x = jnp.pad(x, ((0, 0), (0, max(0, 2 * n - h)), (0, max(0, 2 * n - w)), (0, 0)))[:, : 2 * n, : 2 * n]
    xs = x.reshape(b, n, 2, n, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, n, n, 4 * cin)
    tap, inside = _s2d_taps(k)
    # ws[a, b, p, q, r, s] = kernel[tap[a, p, r], tap[b, q, s]]: (ka, ka, 2, 2, 2, 2, Cin, Cout)
    ws = kernel[tap[:, None, :, None, :, None], tap[None, :, None, :, None, :]]
    mask = (inside[:, None, :, None, :, None] & inside[None, :, None, :, None, :])[..., None, None]
    ws = jnp.where(mask, ws, jnp.zeros((), ws.dtype))
    ws = ws.transpose(0, 1, 2, 3, 6, 4, 5, 7).reshape(ka, ka, 4 * cin, 4 * cout)  # in (p, q, c), out (r, s, o)
    y = jax.lax.conv_general_dilated(xs, ws, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # max before bias + ReLU: both are monotonic, so this equals pooling after them, on a quarter of the data
    y = y.reshape(b, hp, hp, 4, cout).max(axis=3)
    return jax.nn.relu(y + bias)


# ----------------------------------------------------------------------------- pooling
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/2 max-pooling (floor: an odd trailing row/column is dropped), as reshape + max."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def _max_pool_2x2_masked(x):
    """:func:`max_pool_2x2` whose VJP routes the gradient through a one-byte mask of the window's maxima
    (shared on ties, as autodiff does) saved by the forward pass, instead of comparing the input with
    the broadcast maxima again (measured on CPU: a few ms less per small-model training step)."""
    return max_pool_2x2(x)


def _pool_phases(x):
    hp, wp = x.shape[1] // 2, x.shape[2] // 2
    return [x[:, r : 2 * hp : 2, s : 2 * wp : 2] for r in range(2) for s in range(2)]


def _max_pool_2x2_masked_fwd(x):
    y, hits = _max_and_hits(_pool_phases(x))
    return y, (hits, jnp.zeros((0,) + x.shape[1:], x.dtype))


def _max_pool_2x2_masked_bwd(res, g):
    hits, like = res
    return (_unpool(_route(hits, g), like.shape[1], like.shape[2]),)


_max_pool_2x2_masked.defvjp(_max_pool_2x2_masked_fwd, _max_pool_2x2_masked_bwd)


def conv_flops(x_shape, kernel_shape, padding: str = "VALID") -> int:
    """Multiply-adds x 2 of the direct convolution (what the benchmark's GFLOP/s figures count)."""
    b, h, w, cin = x_shape
    k, _, _, cout = kernel_shape
    ho, wo = (h, w) if padding == "SAME" else (h - k + 1, w - k + 1)
    return 2 * b * ho * wo * k * k * cin * cout


__all__ = ["IMPLS", "choose_impl", "conv2d", "conv_flops", "conv_relu_pool", "max_pool_2x2", "prefers_s2d"]
