"""The paper's affine distortions, in JAX (jit, vmap; runs wherever the images are).

A transform is 7 numbers ``(rotation_deg, shear_x, shear_y, scale_x, scale_y, translate_x,
translate_y)``; identity = ``(0, 0, 0, 1, 1, 0, 0)``. ``sample_affine`` draws them as the paper
says: each of the four components (rotation, shear, scale, translation) is switched on with
probability 0.5, and when on its values are uniform in rotation [-10, 10] deg, shear [-0.3, 0.3],
scale [0.8, 1.2], translation [-2, 2] px. Choice (the paper is silent): x and y of one component
share the coin (a "component" is the whole shear, scale or translation) but get independent values.

Geometry: output pixel p' = A (p - c) + c + t with A = R(theta) @ [[1, sh_x], [sh_y, 1]] @
diag(s_x, s_y), c the image centre ((S - 1) / 2) and x = column, y = row. Translations are in pixels
of the paper's 105x105 images and scaled by S / 105 for other sizes, so the geometry is the same
at every model size. Sampling is bilinear (``jax.scipy.ndimage.map_coordinates(order=1)``) with zero
fill: images must be in model format (float, ink = 1, background = 0), where bilinear blending of
binary strokes is harmless. The identity reproduces an image exactly.

Both of the paper's modes: on the fly (``distort`` each batch, a fresh key per step, one key per
image of a pair), and the fixed "8 distorted copies per pair" set (``expand_pairs``: 9x the pairs,
each row carrying its two transforms, applied when the batch is gathered).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

IDENTITY = (0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
PAPER_RANGES = {"rotation": 10.0, "shear": 0.3, "scale": (0.8, 1.2), "translation": 2.0}
REFERENCE_SIZE = 105


def sample_affine(key: jax.Array, n: int, *, p: float = 0.5, ranges: dict | None = None) -> jax.Array:
    """(n, 7) transform parameters, each component on with probability ``p`` (see module docstring)."""
    r = {**PAPER_RANGES, **(ranges or {})}
    k_on, k_rot, k_sh, k_sc, k_tr = jax.random.split(key, 5)
    on = jax.random.bernoulli(k_on, p, (n, 4))
    u = lambda k, lo, hi, m: jax.random.uniform(k, (n, m), minval=lo, maxval=hi)  # noqa: E731
    rot = jnp.where(on[:, :1], u(k_rot, -r["rotation"], r["rotation"], 1), 0.0)
    shear = jnp.where(on[:, 1:2], u(k_sh, -r["shear"], r["shear"], 2), 0.0)
    scale = jnp.where(on[:, 2:3], u(k_sc, *r["scale"], 2), 1.0)
    trans = jnp.where(on[:, 3:4], u(k_tr, -r["translation"], r["translation"], 2), 0.0)
    return jnp.concatenate([rot, shear, scale, trans], axis=1)


def identity(n: int) -> jax.Array:
    """(n, 7) identity transforms."""
    return jnp.tile(jnp.asarray(IDENTITY, jnp.float32), (n, 1))


def affine_matrix(params: jax.Array, size: int) -> jax.Array:
    """(..., 2, 3) maps from output pixel (x, y, 1) to input pixel (x, y) for an S x S image."""
    theta = jnp.deg2rad(params[..., 0])
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    one = jnp.ones_like(theta)
    shear = jnp.stack([jnp.stack([one, params[..., 1]], -1), jnp.stack([params[..., 2], one], -1)], -2)
    scale = params[..., 3:5][..., None, :] * jnp.eye(2)  # diag(s_x, s_y)
    a = rot @ shear @ scale
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    inv = (
        jnp.stack([jnp.stack([a[..., 1, 1], -a[..., 0, 1]], -1), jnp.stack([-a[..., 1, 0], a[..., 0, 0]], -1)], -2)
        / det[..., None, None]
    )
    c = (size - 1) / 2.0
    t = params[..., 5:7] * (size / REFERENCE_SIZE)
    offset = c - (inv @ (c + t)[..., None])[..., 0]
    return jnp.concatenate([inv, offset[..., None]], axis=-1)


def _warp(image, matrix):
    s = image.shape[0]
    y, x = jnp.mgrid[0:s, 0:s].astype(image.dtype)
    xi = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    yi = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    return jax.scipy.ndimage.map_coordinates(image, [yi, xi], order=1, mode="constant", cval=0.0)


@jax.jit
def apply_affine(images: jax.Array, params: jax.Array) -> jax.Array:
    """Warp model-format images (B, S, S) float by transforms (B, 7); zero (background) fill."""
    chex.assert_rank(images, 3)
    chex.assert_shape(params, (images.shape[0], 7))
    images = jnp.asarray(images, jnp.float32)
    return jax.vmap(_warp)(images, affine_matrix(params, images.shape[-1]))


@jax.jit
def distort(key: jax.Array, images: jax.Array) -> jax.Array:
    """Each image of (B, S, S) gets its own random paper-style transform. For a pair batch, call
    it on each side with its own key (``jax.random.split``)."""
    return apply_affine(images, sample_affine(key, images.shape[0]))


class AugmentedPairs(NamedTuple):
    """A pair set with a transform per image: rows [k*n, (k+1)*n) are copy k; copy 0 is undistorted."""

    i1: np.ndarray
    i2: np.ndarray
    label: np.ndarray
    t1: np.ndarray  # (rows, 7)
    t2: np.ndarray


def expand_pairs(pairs, *, copies: int = 8, seed: int = 0) -> AugmentedPairs:
    """The paper's fixed augmented set: every pair plus ``copies`` distorted copies (9x by default).

    Deterministic from ``seed``: copy k's transforms come from ``fold_in(key(seed), k)``, one per
    image of each pair. Images are warped when a batch is gathered (``apply_affine(x, t)``), so the
    9x set costs 14 floats per row, not 9x the images.
    """
    i1, i2, label = (np.asarray(x) for x in pairs)
    n = len(i1)
    key = jax.random.key(seed)
    t = [np.asarray(identity(2 * n))]
    for k in range(1, copies + 1):
        t.append(np.asarray(sample_affine(jax.random.fold_in(key, k), 2 * n)))
    t = np.stack(t)  # (copies + 1, 2n, 7): first n rows for image 1, next n for image 2
    tile = lambda x: np.tile(x, copies + 1)  # noqa: E731
    return AugmentedPairs(tile(i1), tile(i2), tile(label), t[:, :n].reshape(-1, 7), t[:, n:].reshape(-1, 7))
