"""Pooled blocks by space-to-depth (``"s2d"``).

Each 2x2 block of input pixels becomes 4*Cin channels and each 2x2 block of output pixels 4*Cout
channels, so the convolution runs directly on the pooled grid with a (k//2+1)^2 kernel assembled
from the k^2 one (zeros where a tap falls outside it), and the 2x2 max-pooling is a max over the 4
output channel groups. About (2(k//2+1)/k)^2 times the multiply-adds (1.44x for the paper's conv1,
1.31x for conv2), but in matrix shapes that GPU tensor cores run well: the paper's conv1 (one input
channel) ran 18 TFLOP/s as XLA's/cuDNN's convolution on an H100. Only whole pooled blocks: a layer
without pooling under ``"s2d"`` runs XLA's convolution (and its plan says so).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from siamax.conv._common import pad_same


@functools.cache
def _taps(k: int):
    """Tap indices and mask that assemble the space-to-depth kernel from a k x k one.

    Output pixel (2Y + r, 2X + s) reads input pixel (2(Y + a) + p, 2(X + b) + q) through the
    original tap (2a + p - r, 2b + q - s), a, b in [0, k//2]; taps outside [0, k) are zero.
    """
    ka = k // 2 + 1
    tap = 2 * np.arange(ka)[:, None, None] + np.arange(2)[None, :, None] - np.arange(2)[None, None, :]  # (a, p, r)
    inside = (tap >= 0) & (tap < k)
    return np.clip(tap, 0, k - 1), inside


def block(x, kernel, bias, padding):
    """``max_pool_2x2(relu(conv2d(x, kernel, padding) + bias))`` by space-to-depth."""
    x = pad_same(x, kernel.shape[0]) if padding == "SAME" else x
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
    tap, inside = _taps(k)
    # ws[a, b, p, q, r, s] = kernel[tap[a, p, r], tap[b, q, s]]: (ka, ka, 2, 2, 2, 2, Cin, Cout)
    ws = kernel[tap[:, None, :, None, :, None], tap[None, :, None, :, None, :]]
    mask = (inside[:, None, :, None, :, None] & inside[None, :, None, :, None, :])[..., None, None]
    ws = jnp.where(mask, ws, jnp.zeros((), ws.dtype))
    ws = ws.transpose(0, 1, 2, 3, 6, 4, 5, 7).reshape(ka, ka, 4 * cin, 4 * cout)  # in (p, q, c), out (r, s, o)
    y = jax.lax.conv_general_dilated(xs, ws, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # max before bias + ReLU: both are monotonic, so this equals pooling after them, on a quarter of the data
    y = y.reshape(b, hp, hp, 4, cout).max(axis=3)
    return jax.nn.relu(y + bias)
