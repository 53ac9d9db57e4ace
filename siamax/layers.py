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

IMPLS = ("xla", "matmul", "fft", "hybrid", "s2d", "auto")


def conv2d(x: jax.Array, kernel: jax.Array, padding: str = "VALID", impl: str = "xla") -> jax.Array:
    """Stride-1 NHWC convolution. x: (B, H, W, Cin), kernel: (k, k, Cin, Cout) -> (B, H', W', Cout)."""
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"conv2d expects x (B, H, W, Cin) and a square kernel (k, k, Cin, Cout); got "
                         f"x {tuple(x.shape)}, kernel {tuple(kernel.shape)}")
    if impl == "auto":
        impl = choose_impl(x.shape, kernel.shape, padding)
    if impl in ("xla", "s2d"):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl not in ("matmul", "fft", "hybrid"):
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {IMPLS}")
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
    * ``"xla"`` otherwise (small 3x3 layers, the paper's conv4 on 9x9 planes).
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
    return "xla"


def _pad_same(x, k):
    lo = (k - 1) // 2
    return jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))


# ----------------------------------------------------------------------------- patches + matmul
def _patches(x, k):
    """VALID k x k patches. Cin > 1: (B, Ho, Wo, k*k*Cin) ordered (i, j, c); Cin == 1: (k*k, B, Ho, Wo)."""
    b, h, w, cin = x.shape
    ho, wo = h - k + 1, w - k + 1
    if cin == 1:
        x2 = x[..., 0]
        return jnp.stack([x2[:, i:i + ho, j:j + wo] for i in range(k) for j in range(k)], axis=0)
    return jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(k) for j in range(k)], axis=-1)


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
    p = jax.lax.optimization_barrier(_patches(x, k))  # rebuilt, not stored: the paper's conv2 patches would be ~1.4 GB at batch 32
    if cin == 1:
        dw = jax.lax.dot_general(p, g, (((1, 2, 3), (0, 1, 2)), ((), ())))  # (k*k, Cout)
    else:
        dw = jax.lax.dot_general(p, g, (((0, 1, 2), (0, 1, 2)), ((), ())))  # (k*k*Cin, Cout)
    dw = dw.reshape(kernel.shape).astype(kernel.dtype)
    # d x = "full" correlation of g with the spatially flipped, in/out-swapped kernel.
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    kf = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
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
        p = jnp.stack([x2[:, i:i + ho, j:j + wo] for j in range(k)], axis=0)
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
    kf = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = jax.lax.conv_general_dilated(gp, kf, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dx.astype(x.dtype), dw.astype(kernel.dtype)


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


# ----------------------------------------------------------------------------- FFT
@functools.lru_cache(maxsize=None)
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
    xf = jnp.fft.rfft2(jnp.transpose(x, (0, 3, 1, 2)))            # (B, Cin, H, Wf) complex
    xf = jnp.transpose(xf, (2, 3, 0, 1))                           # (H, Wf, B, Cin): frequencies batch the matmul
    kr, ki = _kernel_spectrum(kernel, h)
    kf = jax.lax.complex(kr, ki)
    yf = jnp.einsum("hwbi,hwio->hwbo", xf, kf)                     # (H, Wf, B, Cout)
    y = jnp.fft.irfft2(jnp.transpose(yf, (2, 3, 0, 1)), s=(h, w))  # (B, Cout, H, W)
    return jnp.transpose(y[:, :, :ho, :wo], (0, 2, 3, 1)).astype(dtype)


# ----------------------------------------------------------------------------- space-to-depth blocks
def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str = "VALID",
                   impl: str = "xla") -> jax.Array:
    """One pooled tower block, ``max_pool_2x2(relu(conv2d(x, kernel, padding) + bias))``.

    ``impl="s2d"`` computes it by space-to-depth (module docstring); ``"auto"`` uses that where
    :func:`prefers_s2d` says so and otherwise :func:`conv2d`'s own choice.
    """
    if impl == "auto" and prefers_s2d(kernel.shape):
        impl = "s2d"
    if impl != "s2d":
        return max_pool_2x2(jax.nn.relu(conv2d(x, kernel, padding, impl) + bias))
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
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


@functools.lru_cache(maxsize=None)
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
    x = jnp.pad(x, ((0, 0), (0, max(0, 2 * n - h)), (0, max(0, 2 * n - w)), (0, 0)))[:, :2 * n, :2 * n]
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


def conv_flops(x_shape, kernel_shape, padding: str = "VALID") -> int:
    """Multiply-adds x 2 of the direct convolution (what the benchmark's GFLOP/s figures count)."""
    b, h, w, cin = x_shape
    k, _, _, cout = kernel_shape
    ho, wo = (h, w) if padding == "SAME" else (h - k + 1, w - k + 1)
    return 2 * b * ho * wo * k * k * cin * cout


__all__ = ["IMPLS", "choose_impl", "conv2d", "conv_flops", "conv_relu_pool", "max_pool_2x2", "prefers_s2d"]
