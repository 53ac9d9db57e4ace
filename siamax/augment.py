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

Photo augmentations (for faces and other photographs, not in the paper), jitted, batched, one draw
per image from a ``jax.random`` key, on model-format float images (B, S, S) or (B, S, S, C):
:func:`random_resized_crop`, :func:`horizontal_flip`, :func:`color_jitter` (brightness, contrast,
saturation, hue), and :func:`augment`, which applies a named set of :data:`OPS` (``"affine"``, the
paper's distortion, among them) in the order given. The paper's path (``distort``, ``apply_affine``)
is untouched by them.

Log-mel augmentations (``siamax.audio``'s images, not in the paper): :func:`time_shift`, :func:`gain`
and :func:`spec_mask` (SpecAugment's time and frequency masks), the set ``"audio"``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
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
    """Warp model-format images (B, S, S) float by transforms (B, 7); zero (background) fill.

    (B, S, S, C) images: every channel of an image by that image's transform."""
    chex.assert_rank(images, {3, 4})
    chex.assert_shape(params, (images.shape[0], 7))
    images = jnp.asarray(images, jnp.float32)
    matrices = affine_matrix(params, images.shape[2])
    if images.ndim == 3:
        return jax.vmap(_warp)(images, matrices)
    per_channel = jax.vmap(_warp, in_axes=(2, None), out_axes=2)  # (S, S, C), one matrix
    return jax.vmap(per_channel)(images, matrices)


@jax.jit
def distort(key: jax.Array, images: jax.Array) -> jax.Array:
    """Each image of (B, S, S) (or (B, S, S, C)) gets its own random paper-style transform. For a pair
    batch, call it on each side with its own key (``jax.random.split``)."""
    return apply_affine(images, sample_affine(key, images.shape[0]))


def tta_transforms(n: int, seed: int = 0) -> jax.Array:
    """(n, 7) fixed transforms for test-time augmentation: the identity, then ``n - 1`` draws of the
    paper's distortion as training draws it (``sample_affine``, each component on with probability
    0.5), from ``seed`` alone, so an evaluation is repeatable. A draw that came out as the identity is
    drawn again (it would only repeat the first)."""
    if n < 1:
        raise ValueError(f"test-time augmentation needs n >= 1 transforms, got {n}")
    out, key = [identity(1)], jax.random.key(seed)
    while sum(len(t) for t in out) < n:
        key, sub = jax.random.split(key)
        t = sample_affine(sub, 1)
        if not bool(jnp.all(t == jnp.asarray(IDENTITY))):
            out.append(t)
    return jnp.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Photo augmentations.

CROP_SCALE = (0.6, 1.0)  # area fraction of the crop (torchvision's 0.08 is for 224-pixel ImageNet photos)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.0}
_LUMA = (0.299, 0.587, 0.114)


def _channels_last(images: jax.Array) -> tuple[jax.Array, bool]:
    """(B, S, S, C) float32 view of (B, S, S) or (B, S, S, C) images, and whether a channel axis was added."""
    images = jnp.asarray(images, jnp.float32)
    chex.assert_rank(images, {3, 4})
    return (images[..., None], True) if images.ndim == 3 else (images, False)


def _crop_one(image, box):
    """(S, S, C) -> (S, S, C): the box (top, left, height, width, in pixels) resampled to S x S, bilinear."""
    s = image.shape[0]
    top, left, h, w = box
    grid = (jnp.arange(s, dtype=jnp.float32) + 0.5) / s
    y, x = jnp.meshgrid(top + grid * h - 0.5, left + grid * w - 0.5, indexing="ij")
    sample = lambda c: jax.scipy.ndimage.map_coordinates(c, [y, x], order=1, mode="nearest")  # noqa: E731
    return jax.vmap(sample, in_axes=2, out_axes=2)(image)


@functools.partial(jax.jit, static_argnames=("scale", "ratio"))
def random_resized_crop(
    key: jax.Array, images: jax.Array, scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO
) -> jax.Array:
    """Each image: a random box of ``scale`` of its area and aspect ``ratio`` (log-uniform), clipped to
    the frame, resized back to S x S (bilinear). (B, S, S[, C]) -> the same shape."""
    x, added = _channels_last(images)
    b, s = x.shape[0], x.shape[1]
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1]) * s * s
    aspect = jnp.exp(jax.random.uniform(k_ratio, (b,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    w = jnp.clip(jnp.sqrt(area * aspect), 1.0, s)
    h = jnp.clip(jnp.sqrt(area / aspect), 1.0, s)
    top = jax.random.uniform(k_y, (b,)) * (s - h)
    left = jax.random.uniform(k_x, (b,)) * (s - w)
    out = jax.vmap(_crop_one)(x, jnp.stack([top, left, h, w], axis=1))
    return out[..., 0] if added else out


@functools.partial(jax.jit, static_argnames=("p",))
def horizontal_flip(key: jax.Array, images: jax.Array, p: float = 0.5) -> jax.Array:
    """Each image mirrored left-right with probability ``p``. (B, S, S[, C]) -> the same shape."""
    images = jnp.asarray(images, jnp.float32)
    flip = jax.random.bernoulli(key, p, (images.shape[0],)).reshape((-1,) + (1,) * (images.ndim - 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def _gray(x):
    return x @ jnp.asarray(_LUMA, x.dtype) if x.shape[-1] == 3 else x[..., 0]


def _rotate_hue(x, angle):
    """(B, S, S, 3) rotated about the gray axis by ``angle`` (B,) radians (YIQ chroma rotation)."""
    to_yiq = jnp.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], jnp.float32)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(angle), jnp.zeros_like(angle)
    rot = jnp.stack(
        [jnp.stack([one, zero, zero], -1), jnp.stack([zero, cos, -sin], -1), jnp.stack([zero, sin, cos], -1)], -2
    )
    m = jnp.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return jnp.einsum("bij,bhwj->bhwi", m, x)


@functools.partial(jax.jit, static_argnames=("brightness", "contrast", "saturation", "hue"))
def color_jitter(
    key: jax.Array,
    images: jax.Array,
    brightness: float = JITTER["brightness"],
    contrast: float = JITTER["contrast"],
    saturation: float = JITTER["saturation"],
    hue: float = JITTER["hue"],
) -> jax.Array:
    """Per image, in this order: brightness (x a factor in [1 - b, 1 + b]), contrast (blend with the
    image's mean gray, factor in [1 - c, 1 + c]), saturation (blend with its own gray image, RGB only)
    and hue (a rotation about the gray axis of up to +-``hue`` of a turn, RGB only); clipped to [0, 1].
    A strength of 0 leaves that step out. (B, S, S[, C]) -> the same shape."""
    x, added = _channels_last(images)
    b = x.shape[0]
    kb, kc, ks, kh = jax.random.split(key, 4)
    factor = lambda k, r: jax.random.uniform(k, (b, 1, 1, 1), minval=1 - r, maxval=1 + r)  # noqa: E731
    if brightness:
        x = x * factor(kb, brightness)
    if contrast:
        mean = jnp.mean(_gray(x), axis=(1, 2))[:, None, None, None]
        x = mean + factor(kc, contrast) * (x - mean)
    if x.shape[-1] == 3 and saturation:
        gray = _gray(x)[..., None]
        x = gray + factor(ks, saturation) * (x - gray)
    if x.shape[-1] == 3 and hue:
        x = _rotate_hue(x, 2 * jnp.pi * jax.random.uniform(kh, (b,), minval=-hue, maxval=hue))
    x = jnp.clip(x, 0.0, 1.0)
    return x[..., 0] if added else x


# ---- Log-mel images (siamax.audio: row = mel band, column = frame, 1 = the clip's loudest cell, 0 = its
# floor, top_db below): time shift, gain, SpecAugment's masks (Park et al. 2019).

AUDIO = {"shift": 0.15, "gain_db": 6.0, "top_db": 80.0, "time_mask": 0.15, "freq_mask": 0.15}


def _planes(images):
    """(B, M, T) or the model's (B, M, T, 1) as (B, M, T) float32, and the function that restores the shape."""
    images = jnp.asarray(images, jnp.float32)
    chex.assert_rank(images, {3, 4})
    if images.ndim == 3:
        return images, lambda y: y
    chex.assert_axis_dimension(images, 3, 1)
    return images[..., 0], lambda y: y[..., None]


@functools.partial(jax.jit, static_argnames=("fraction",))
def time_shift(key: jax.Array, images: jax.Array, fraction: float = AUDIO["shift"]) -> jax.Array:
    """Each spectrogram moved along time (columns) by up to +-``fraction`` of its frames, the frames
    shifted in silent (the floor, 0), as the same word said a little earlier or later. (B, M, T) or (B, M, T, 1)."""
    images, shaped = _planes(images)
    t = images.shape[2]
    most = int(fraction * t)
    if not most:
        return shaped(images)
    shift = jax.random.randint(key, (images.shape[0], 1, 1), -most, most + 1)
    src = jnp.arange(t)[None, None, :] - shift
    rolled = jnp.take_along_axis(images, jnp.clip(src, 0, t - 1), axis=2)
    return shaped(jnp.where((src >= 0) & (src < t), rolled, 0.0))


@functools.partial(jax.jit, static_argnames=("gain_db", "top_db"))
def gain(key: jax.Array, images: jax.Array, gain_db: float = AUDIO["gain_db"], top_db: float = AUDIO["top_db"]):
    """Each spectrogram louder or quieter by up to +-``gain_db`` against the floor: the cells above the
    floor move by ``g / top_db`` (the image's scale), clipped to [0, 1], the floor stays silent.
    (B, M, T) or (B, M, T, 1)."""
    images, shaped = _planes(images)
    g = jax.random.uniform(key, (images.shape[0], 1, 1), minval=-gain_db, maxval=gain_db) / top_db
    return shaped(jnp.where(images > 0, jnp.clip(images + g, 0.0, 1.0), 0.0))


def _band_mask(key, b: int, n: int, fraction: float) -> jax.Array:
    """(b, n) True inside one random band of 0 .. ``fraction * n`` of the ``n`` positions per row."""
    k_w, k_0 = jax.random.split(key)
    width = jax.random.randint(k_w, (b, 1), 0, max(1, int(fraction * n)) + 1)
    start = (jax.random.uniform(k_0, (b, 1)) * (n - width + 1)).astype(jnp.int32)
    pos = jnp.arange(n)[None, :]
    return (pos >= start) & (pos < start + width)


@functools.partial(jax.jit, static_argnames=("time", "freq"))
def spec_mask(key: jax.Array, images: jax.Array, time: float = AUDIO["time_mask"], freq: float = AUDIO["freq_mask"]):
    """SpecAugment's masks: one band of up to ``time`` of the frames and one of up to ``freq`` of the mel
    bands set to the floor (0), each image its own bands (widths from 0). (B, M, T) or (B, M, T, 1)."""
    images, shaped = _planes(images)
    b, m, t = images.shape
    k_t, k_f = jax.random.split(key)
    masked = _band_mask(k_t, b, t, time)[:, None, :] | _band_mask(k_f, b, m, freq)[:, :, None]
    return shaped(jnp.where(masked, 0.0, images))


# What ``augment`` applies by name: (key, (B, S, S[, C]) float images) -> the same shape.
OPS: dict[str, Callable] = {
    "affine": distort,
    "crop": random_resized_crop,
    "flip": horizontal_flip,
    "jitter": color_jitter,
    "shift": time_shift,
    "gain": gain,
    "mask": spec_mask,
}
SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "paper": ("affine",),
    "photo": ("crop", "flip", "jitter"),
    "audio": ("shift", "gain", "mask"),
}


def op_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """A set's names as a tuple: a :data:`SETS` name, ``"crop,flip"`` or a sequence of :data:`OPS` names."""
    if isinstance(names, str):
        names = SETS[names] if names in SETS else tuple(n.strip() for n in names.split(",") if n.strip())
    names = tuple(names)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {sorted(OPS)} and the sets {sorted(SETS)}")
    return names


@functools.partial(jax.jit, static_argnames=("names",))
def _augment(key, images, names: tuple[str, ...]):
    for i, name in enumerate(names):
        images = OPS[name](jax.random.fold_in(key, i), images)
    return images


def augment(key: jax.Array, images: jax.Array, names: str | Sequence[str] = "photo") -> jax.Array:
    """The named augmentations (:func:`op_names`), in order, each image its own draw: op i of the set
    draws from ``fold_in(key, i)``. Model-format float images (B, S, S) or (B, S, S, C) -> float32 of
    the same shape; jitted (inlined under a caller's jit)."""
    return _augment(key, jnp.asarray(images, jnp.float32), op_names(names))


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
