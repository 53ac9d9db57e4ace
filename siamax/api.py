"""The public functions: ``init``, ``embed``, ``score``, ``score_embeddings``, ``preprocess``.

Input convention (one place, used by training and by ``score`` alike)
---------------------------------------------------------------------
Model input images are square, exactly ``spec.input_size`` pixels, shaped ``(B, S, S)`` or
``(B, S, S, 1)`` (a single ``(S, S)`` image is accepted where a pair is scored), with **ink = 1 and
paper = 0**:

* ``float`` arrays: values in [0, 1];
* ``bool`` arrays: True = ink;
* ``uint8`` arrays: 0..255, divided by 255.

Other integer dtypes are refused rather than guessed at (is ``1`` full ink or almost none?).
Raw images in any other form (other sizes, dark ink on light paper as in Omniglot's PNGs) go
through :func:`preprocess` first.

All functions are pure and work inside the caller's ``jax.jit``, ``vmap`` and ``grad``: shape
checks use static shapes only.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from siamax.model import ModelSpec, Siamese, get_spec


@flax.struct.dataclass
class Params:
    """Weights of one Siamese network plus (static) the spec that says how to apply them.

    A pytree: ``jax.tree.map``, ``jax.grad`` and optax see only ``weights``; ``spec`` is static
    metadata, so ``score(params, x1, x2)`` needs no other argument.
    """

    weights: dict[str, Any]
    spec: ModelSpec = flax.struct.field(pytree_node=False)


def init(key: jax.Array, model: str | ModelSpec = "paper") -> Params:
    """Fresh parameters for ``model`` (a preset name from ``siamax.model.MODELS`` or a ModelSpec)."""
    spec = get_spec(model)
    x = jnp.zeros((1, spec.input_size, spec.input_size, 1), jnp.float32)
    weights = Siamese(spec).init(key, x, x)["params"]
    return Params(weights=jax.tree.map(lambda w: w.astype(jnp.float32), weights), spec=spec)


def _spec_of(params_or_spec) -> ModelSpec:
    if isinstance(params_or_spec, Params):
        return params_or_spec.spec
    if isinstance(params_or_spec, (ModelSpec, str)):
        return get_spec(params_or_spec)
    raise TypeError(f"expected siamax Params, a ModelSpec or a model name, got {type(params_or_spec).__name__}")


def _check_dtype(x, name: str):
    dtype = jnp.dtype(x.dtype)
    if dtype == jnp.bool_ or dtype == jnp.uint8 or jnp.issubdtype(dtype, jnp.floating):
        return
    if jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{name}: integer images must be uint8 (0..255); got {dtype}. "
            f"Pass a bool array for 0/1 masks or floats in [0, 1]."
        )
    raise TypeError(f"{name}: images must be bool, uint8 or float, got dtype {dtype}")


def _to_float(x) -> jax.Array:
    dtype = jnp.dtype(x.dtype)
    if dtype == jnp.uint8:
        return jnp.asarray(x, jnp.float32) / 255.0
    if dtype == jnp.bool_:
        # A select, not a convert: numpy bool arrays may hold byte 255 for True (Omniglot's npz
        # does), and XLA's bool->float convert then yields 255.0 inside jit.
        return jnp.where(jnp.asarray(x), 1.0, 0.0).astype(jnp.float32)
    return jnp.asarray(x).astype(jnp.float32)


def model_input(spec: ModelSpec, x, name: str = "x", allow_single: bool = False) -> jax.Array:
    """Validate images in the model's input convention and return float32 (B, S, S, 1)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    _check_dtype(x, name)
    s = spec.input_size
    shape = tuple(x.shape)
    expected = f"(B, {s}, {s}) or (B, {s}, {s}, 1)" + (f" or ({s}, {s})" if allow_single else "")
    if x.ndim == 2 and allow_single:
        x = x[None]
    elif x.ndim == 4 and shape[-1] == 1:
        x = x[..., 0]
    elif x.ndim != 3:
        raise ValueError(
            f"{name} has shape {shape}; expected {expected} model-input images"
            + (" (single-channel: last axis must be 1)" if x.ndim == 4 else "")
        )
    if x.shape[1:] != (s, s):
        raise ValueError(
            f"{name} images are {x.shape[1]}x{x.shape[2]} but this model takes {s}x{s}; "
            f"expected {expected}. Use siamax.preprocess(params, images) to resize."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {shape})")
    return _to_float(x)[..., None]


@functools.partial(jax.jit, static_argnums=0)
def _embed(spec: ModelSpec, weights, x):
    # Jitted (inlined under a caller's jit): called eagerly, the tower's unrolled CPU convolutions
    # (Winograd transforms, fused blocks) would otherwise dispatch hundreds of small ops one by one.
    return Siamese(spec).apply({"params": weights}, x, method="embed")


def embed(params: Params, x) -> jax.Array:
    """Tower embeddings: model-input images (B, S, S[, 1]) -> float32 (B, D)."""
    return _embed(params.spec, params.weights, model_input(params.spec, x, "x"))


def _check_embeddings(spec: ModelSpec, e, name):
    if getattr(e, "ndim", None) != 2 or e.shape[-1] != spec.embedding_dim:
        raise ValueError(
            f"{name} has shape {getattr(e, 'shape', None)}; expected (B, {spec.embedding_dim}) "
            f"embeddings from siamax.embed"
        )


def logits_from_embeddings(params: Params, e1, e2) -> jax.Array:
    """Head logits for embedding pairs (B, D), (B, D) -> (B,)."""
    _check_embeddings(params.spec, e1, "e1")
    _check_embeddings(params.spec, e2, "e2")
    if e1.shape[0] != e2.shape[0]:
        raise ValueError(f"e1 and e2 hold different numbers of embeddings: {e1.shape[0]} vs {e2.shape[0]}")
    return Siamese(params.spec).apply({"params": params.weights}, e1, e2, method="logit")


def score_embeddings(params: Params, e1, e2) -> jax.Array:
    """Same-class probabilities from embeddings; equals ``score`` on the images they came from.

    An N-way one-shot trial then costs N + 1 tower passes instead of 2N.
    """
    return jax.nn.sigmoid(logits_from_embeddings(params, e1, e2))


def twin_logits(spec: ModelSpec, weights, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """Logits for validated float (B, S, S, 1) pairs: one weights tree, vmapped over the twin axis."""
    e = jax.vmap(lambda xi: _embed(spec, weights, xi))(jnp.stack([x1, x2]))
    return Siamese(spec).apply({"params": weights}, e[0], e[1], method="logit")


def pair_logits(params: Params, x1, x2) -> jax.Array:
    """Logits for image pairs (B, S, S[, 1]) x 2 -> (B,). ``score`` is ``sigmoid`` of this."""
    a = model_input(params.spec, x1, "x1", allow_single=True)
    b = model_input(params.spec, x2, "x2", allow_single=True)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"x1 and x2 hold different numbers of images: {a.shape[0]} vs {b.shape[0]}; score compares x1[i] with x2[i]"
        )
    return twin_logits(params.spec, params.weights, a, b)


def score(params: Params, x1, x2) -> jax.Array:
    """Probability that x1[i] and x2[i] show the same character: (B,) in [0, 1].

    ``x1``/``x2``: model-input images (see the module docstring), (B, S, S), (B, S, S, 1), or a
    single pair (S, S), which gives a scalar.
    """
    single = getattr(x1, "ndim", None) == 2 and getattr(x2, "ndim", None) == 2
    p = jax.nn.sigmoid(pair_logits(params, x1, x2))
    return p[0] if single else p


def preprocess(params_or_spec, images, ink: str = "dark") -> jax.Array:
    """Raw grayscale images of any size -> float32 (B, S, S) model input for that model.

    ``images``: (H, W), (B, H, W) or (B, H, W, 1); bool (True = white), uint8 (0..255) or float in
    [0, 1]. ``ink="dark"``: dark strokes on light paper (Omniglot's PNGs; its bool arrays are
    True = paper); ``"light"``: light strokes on dark (MNIST). Non-square images are padded with
    paper to a square (keeping the aspect ratio) before an antialiased bilinear resize to S x S.
    """
    spec = _spec_of(params_or_spec)
    if ink not in ("dark", "light"):
        raise ValueError(f"ink must be 'dark' (dark strokes on light paper) or 'light', got {ink!r}")
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    _check_dtype(images, "images")
    x = images
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (H, W), (B, H, W) or (B, H, W, 1)")
    if 0 in x.shape:
        raise ValueError(f"images is empty (shape {tuple(images.shape)})")
    if jnp.issubdtype(jnp.dtype(x.dtype), jnp.floating) and not isinstance(x, jax.core.Tracer):
        lo, hi = float(jnp.min(x)), float(jnp.max(x))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]; pass uint8 for 0..255 intensities"
            )
    x = _to_float(x)
    if ink == "dark":
        x = 1.0 - x
    b, h, w = x.shape
    if h != w:
        d = abs(h - w)
        pad = ((0, 0), (0, 0), (d // 2, d - d // 2)) if h > w else ((0, 0), (d // 2, d - d // 2), (0, 0))
        x = jnp.pad(x, pad)
    s = spec.input_size
    if x.shape[1] != s:
        x = jax.image.resize(x, (b, s, s), method="linear", antialias=True)
    return jnp.clip(x, 0.0, 1.0)
