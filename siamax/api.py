"""The public functions: ``init``, ``embed``, ``score``, ``score_embeddings``, ``preprocess``, ``ensemble``.

Input convention (one place, used by training and by ``score`` alike)
---------------------------------------------------------------------
Model input images are square, exactly ``spec.input_size`` pixels, shaped ``(B, S, S)`` or
``(B, S, S, 1)`` (a single ``(S, S)`` image is accepted where a pair is scored), with **ink = 1 and
paper = 0**:

* ``float`` arrays: finite values in [0, 1];
* ``bool`` arrays: True = ink;
* ``uint8`` arrays: 0..255, divided by 255.

An RGB model (``spec.channels == 3``) takes ``(B, S, S, 3)`` instead (a single ``(S, S, 3)`` where a
pair is scored), each channel in the same convention (``preprocess`` inverts them for dark ink).

Other integer dtypes are refused rather than guessed at (is ``1`` full ink or almost none?), and so
are colour images for a gray model (a last axis of 3 or 4). Raw images in any other form (other sizes, colour, 16-bit,
dark ink on light paper as in Omniglot's PNGs) go through :func:`preprocess` first.

Raw images (``preprocess``)
---------------------------
``bool`` (True = white), ``uint8`` (0..255), ``uint16`` (0..65535, as in 16-bit PNG scans) or
``float`` (finite, in [0, 1]), any size of at least 5 x 5 pixels, shaped:

* ``(H, W)``: one grayscale image;
* ``(B, H, W)``: a batch of grayscale images, except when the last axis is 1, 3 or 4:
* ``(H, W, C)``: one image with C channels;
* ``(B, H, W, C)``: a batch;

where C is 1 (grayscale), 3 (RGB) or 4 (RGBA). A 3-D array whose last axis is 1, 3 or 4 is
therefore always one image with channels, never a batch of 1-, 3- or 4-pixel-wide images (those are
refused as smaller than 5 x 5 anyway). RGB becomes gray by ITU-R BT.601 luma,
``Y = 0.299 R + 0.587 G + 0.114 B`` on the stored (gamma-encoded) values, as PIL's
``convert("L")`` does, without its rounding. RGBA (straight, not premultiplied, alpha) is first
composited over the paper: white for ``ink="dark"``, black for ``ink="light"``, so transparent
pixels become background; equivalently, each pixel's ink is multiplied by its alpha.

What is checked, and when
-------------------------
Always, also inside a caller's ``jax.jit``, ``vmap`` or ``grad`` (these checks need static shapes and
dtypes only): that ``params`` is a ``siamax.Params``; ranks, shapes, image and embedding sizes,
channel counts, empty batches, matching batch sizes; dtypes.

Only when the values are concrete (called eagerly, or an array that is not a tracer, such as a NumPy
constant inside a jitted function, which is then checked once, at trace time): float images must be
finite and in [0, 1], float embeddings finite. This costs one reduction per float input, its minimum
and maximum (a NaN or an infinity shows in them): NumPy's for NumPy arrays and for JAX arrays on one
CPU device (viewed, not copied), else one small jitted computation and a transfer of two numbers.
``bool``, ``uint8`` and ``uint16`` inputs need none. The error says what was found (how many NaN or
infinite values, the value range) and what to pass instead.

Under a trace (the inputs are tracers: inside ``jax.jit``, ``vmap``, ``grad`` with respect to the
images, ``lax.scan``...) values are not looked at: that would need a host sync. There a NaN input
gives NaN output, and floats in 0..255 give wrong numbers without an error. Check data where it
enters (one eager call, or ``preprocess`` outside ``jit``); NaNs inside a jitted computation can be
caught with ``jax.experimental.checkify.checkify(fn, errors=checkify.float_checks)``.

All functions are pure and work inside the caller's ``jax.jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from siamax.checkpoint import load
from siamax.energies import logit_of_mean
from siamax.errors import InputError, InputTypeError
from siamax.model import (  # noqa: F401  (Params, Ensemble, input_shape, init: public here as siamax.*)
    _WHERE_PARAMS,
    Ensemble,
    ModelSpec,
    Params,
    Siamese,
    _check_params,
    _received,
    get_spec,
    init,
    input_shape,
)

MIN_RAW_SIZE = 5  # raw images smaller than this could be confused with a channel axis


ENSEMBLE_INPUT = ("input_size", "channels", "ink_frame")  # what every member must share: one model input


def ensemble(members) -> Ensemble:
    """Two or more models as one (:class:`Ensemble`): ``members`` are ``siamax.Params`` or paths of
    saved models (``siamax.load``). They must take the same input (input size, channels, ink frame);
    members that do not can still be combined on raw images by ``siamax.evaluators.EnsembleEmbedder``."""
    if isinstance(members, (Params, Ensemble, str)) or not hasattr(members, "__iter__"):
        raise InputTypeError(f"ensemble: members must be a list of Params or model paths, got {_received(members)}")
    members = tuple(load(m) if isinstance(m, (str, os.PathLike)) else m for m in members)
    for i, m in enumerate(members):
        if not isinstance(m, Params):
            raise InputTypeError(f"ensemble: member {i} must be {_WHERE_PARAMS} or a model path; got {_received(m)}")
    if len(members) < 2:
        raise InputError(f"ensemble: needs 2 or more members, got {len(members)}")
    inputs = [tuple(getattr(m.spec, f) for f in ENSEMBLE_INPUT) for m in members]
    if len(set(inputs)) > 1:
        seen = "; ".join(f"member {i}: {dict(zip(ENSEMBLE_INPUT, x))}" for i, x in enumerate(inputs))
        raise InputError(
            f"ensemble: the members take different inputs ({seen}); an Ensemble feeds them the same images. "
            "siamax.evaluators.EnsembleEmbedder combines such models on raw images (each brings them to its own input)"
        )
    return Ensemble(members=members)


def _parts(ens: Ensemble, e):
    bounds = np.cumsum([0] + [m.spec.embedding_dim for m in ens.members])
    return [e[..., lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------
# Checks.


def _spec_of(params_or_spec) -> ModelSpec:
    if isinstance(params_or_spec, Params):
        return params_or_spec.spec
    if isinstance(params_or_spec, Ensemble):
        return params_or_spec.input_spec
    if isinstance(params_or_spec, (ModelSpec, str)):
        return get_spec(params_or_spec)
    raise InputTypeError(
        f"preprocess: expected {_WHERE_PARAMS}, a ModelSpec or a model name; got {_received(params_or_spec)}"
    )


def _as_array(x):
    # Lists, PIL images, other libraries' tensors: through NumPy. (Tracers are jax.Arrays.)
    return x if isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)


def _check_dtype(x, name: str, uint16: bool = False):
    dtype = jnp.dtype(x.dtype)
    if dtype == jnp.bool_ or dtype == jnp.uint8 or (uint16 and dtype == jnp.uint16):
        return
    if jnp.issubdtype(dtype, jnp.floating):
        return
    allowed = "bool, uint8, uint16 or float" if uint16 else "bool, uint8 or float"
    if jnp.issubdtype(dtype, jnp.integer):
        raise InputTypeError(
            f"{name}: integer images must be {'uint8 (0..255) or uint16 (0..65535)' if uint16 else 'uint8 (0..255)'}; "
            f"got {dtype}. Pass a bool array for 0/1 masks or floats in [0, 1]"
            + ("." if uint16 else "; siamax.preprocess also takes uint16.")
        )
    raise InputTypeError(f"{name}: images must be {allowed}, got dtype {dtype}")


@jax.jit
def _min_max(x):
    return jnp.stack([jnp.min(x), jnp.max(x)])


def _on_one_cpu(x) -> bool:
    return isinstance(x, jax.Array) and len(x.devices()) == 1 and next(iter(x.devices())).platform == "cpu"


def _extremes(x) -> tuple[float, float] | None:
    """(min, max) of a concrete float array, NaN if it holds any NaN; None for a tracer."""
    if isinstance(x, jax.core.Tracer) or not jnp.issubdtype(jnp.dtype(x.dtype), jnp.floating) or x.size == 0:
        return None
    if isinstance(x, np.ndarray) or _on_one_cpu(x):
        v = np.asarray(x)  # a view of a CPU buffer: NumPy's min/max skip a dispatch and a sync
        with np.errstate(invalid="ignore"):
            return float(v.min()), float(v.max())
    # A concrete JAX array may still meet an enclosing trace (a constant closed over by a jitted
    # function): evaluate there and then rather than staging the check into the caller's program.
    with jax.ensure_compile_time_eval():
        lo, hi = np.asarray(_min_max(x))
    return float(lo), float(hi)


def _non_finite(x, name: str) -> str:
    """What is not finite in ``x`` (an error path: cost does not matter)."""
    v = np.asarray(x)
    counts = {"NaN": np.isnan(v).sum(), "+inf": np.isposinf(v).sum(), "-inf": np.isneginf(v).sum()}
    found = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    finite = v[np.isfinite(v)]
    rest = f"; the finite ones span [{finite.min():g}, {finite.max():g}]" if finite.size else ""
    return f"{name} holds {found} (of its {v.size} values){rest}"


def _check_image_values(x, name: str, uint16: bool = False) -> None:
    ext = _extremes(x)
    if ext is None:
        return
    lo, hi = ext
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(
            f"{_non_finite(x, name)}. Images must be finite, ink = 1 and paper = 0 in [0, 1] (or uint8 0..255): "
            f"fix the step that produced them (often a division by zero when normalising)."
        )
    if lo >= 0.0 and hi <= 1.0:
        return
    if lo >= 0.0 and 2.0 <= hi <= 255.0:
        fix = "they look like 0..255 intensities: divide by 255, or pass them as uint8"
    elif lo >= 0.0 and 255.0 < hi <= 65535.0:
        fix = "they look like 16-bit intensities: divide by 65535" + (", or pass them as uint16" if uint16 else "")
    elif -1.0 <= lo < -0.01 and hi <= 1.0:
        fix = "they look like [-1, 1] scaled images: pass (x + 1) / 2"
    else:
        fix = "rescale them; if they are only just outside (resampling overshoot), np.clip(x, 0, 1)"
    raise InputError(
        f"{name}: float images must lie in [0, 1] (ink = 1, paper = 0); got values in [{lo:g}, {hi:g}]: {fix}."
    )


def _check_embedding_values(e, name: str) -> None:
    ext = _extremes(e)
    if ext is not None and not (np.isfinite(ext[0]) and np.isfinite(ext[1])):
        raise InputError(
            f"{_non_finite(e, name)}. Embeddings must be finite; siamax.embed gives finite ones for finite "
            f"images and weights, so check the params (e.g. after a diverged training run) and the images."
        )


# ---------------------------------------------------------------------------------------------
# Model input.


def _model_images(spec: ModelSpec, x, name: str, allow_single: bool = False):
    """``x`` as an array after every check of the model-input convention (static ones always)."""
    x = _as_array(x)
    _check_dtype(x, name)
    if spec.channels == 3:
        return _rgb_model_images(spec, x, name, allow_single)
    s = spec.input_size
    shape = tuple(x.shape)
    expected = f"(B, {s}, {s}) or (B, {s}, {s}, 1)" + (f" or ({s}, {s})" if allow_single else "")
    if x.ndim in (3, 4) and shape[-1] in (3, 4) and s > 4:
        raise InputError(
            f"{name} has shape {shape}, which looks like {'RGB' if shape[-1] == 3 else 'RGBA'} colour images; this "
            f"model takes grayscale {expected}. siamax.preprocess(params, images) converts colour images (and "
            f"other sizes) to model input"
        )
    if not (x.ndim == 3 or (x.ndim == 2 and allow_single) or (x.ndim == 4 and shape[-1] == 1)):
        raise InputError(
            f"{name} has shape {shape}; expected {expected} model-input images"
            + (" (single-channel: last axis must be 1)" if x.ndim == 4 else "")
        )
    hw = shape[-3:-1] if x.ndim == 4 else shape[-2:]
    if hw != (s, s):
        raise InputError(
            f"{name} images are {hw[0]}x{hw[1]} but this model takes {s}x{s}; "
            f"expected {expected}. Use siamax.preprocess(params, images) to resize."
        )
    if x.ndim > 2 and shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape})")
    _check_image_values(x, name)
    return x


def _rgb_model_images(spec: ModelSpec, x, name: str, allow_single: bool):
    """The checks of :func:`_model_images` for an RGB model: (B, S, S, 3), or (S, S, 3) where a pair is scored."""
    s = spec.input_size
    shape = tuple(x.shape)
    expected = f"(B, {s}, {s}, 3)" + (f" or ({s}, {s}, 3)" if allow_single else "")
    if not (x.ndim == 4 or (x.ndim == 3 and allow_single)) or shape[-1] != 3:
        raise InputError(
            f"{name} has shape {shape}; this RGB model takes {expected} model-input images. "
            f"siamax.preprocess(params, images) makes them from gray, RGB or RGBA images of any size"
        )
    if shape[-3:-1] != (s, s):
        raise InputError(
            f"{name} images are {shape[-3]}x{shape[-2]} but this model takes {s}x{s}; "
            f"expected {expected}. Use siamax.preprocess(params, images) to resize."
        )
    if x.ndim == 4 and shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape})")
    _check_image_values(x, name)
    return x


def _to_float(x) -> jax.Array:
    dtype = jnp.dtype(x.dtype)
    if dtype == jnp.uint8 or dtype == jnp.uint16:
        return jnp.asarray(x, jnp.float32) / float(np.iinfo(dtype).max)
    if dtype == jnp.bool_:
        # A select, not a convert: numpy bool arrays may hold byte 255 for True (Omniglot's npz
        # does), and XLA's bool->float convert then yields 255.0 inside jit.
        return jnp.where(jnp.asarray(x), 1.0, 0.0).astype(jnp.float32)
    return jnp.asarray(x).astype(jnp.float32)


def _as_input(spec: ModelSpec, x) -> jax.Array:
    s = spec.input_size
    return _to_float(x).reshape(-1, s, s, spec.channels)


def model_input(spec: ModelSpec, x, name: str = "x", allow_single: bool = False) -> jax.Array:
    """Validate images in the model's input convention and return float32 (B, S, S, C), C = ``spec.channels``."""
    return _as_input(spec, _model_images(spec, x, name, allow_single))


@functools.partial(jax.jit, static_argnums=0)
def _embed(spec: ModelSpec, weights, x):
    # Jitted (inlined under a caller's jit): called eagerly, the tower's unrolled CPU convolutions
    # (Winograd transforms, fused blocks) would otherwise dispatch hundreds of small ops one by one.
    return Siamese(spec).apply({"params": weights}, x, method="embed")


@functools.partial(jax.jit, static_argnums=0)
def _embed_images(spec: ModelSpec, weights, x):
    return _embed(spec, weights, _as_input(spec, x))


def embed(params: Params | Ensemble, x) -> jax.Array:
    """Tower embeddings: model-input images (B, S, S[, 1]), or (B, S, S, 3) for an RGB model -> float32 (B, D)
    (an Ensemble's: its members' side by side, D = the sum of theirs)."""
    if isinstance(params, Ensemble):
        return jnp.concatenate([embed(m, x) for m in params.members], axis=-1)
    spec = _check_params(params, "embed").spec
    return _embed_images(spec, params.weights, _model_images(spec, x, "x"))


def _check_embeddings(spec: ModelSpec, e, name):
    if getattr(e, "ndim", None) != 2 or e.shape[-1] != spec.embedding_dim:
        raise InputError(
            f"{name} has shape {getattr(e, 'shape', None)}; expected (B, {spec.embedding_dim}) "
            f"embeddings from siamax.embed"
        )
    _check_embedding_values(e, name)


@functools.partial(jax.jit, static_argnums=0)
def _head(spec: ModelSpec, weights, e1, e2):
    return Siamese(spec).apply({"params": weights}, e1, e2, method="logit")


def _member_logits_from_embeddings(ens: Ensemble, e1, e2) -> jax.Array:
    for e, name in ((e1, "e1"), (e2, "e2")):
        if getattr(e, "ndim", None) != 2 or e.shape[-1] != ens.embedding_dim:
            raise InputError(
                f"{name} has shape {getattr(e, 'shape', None)}; expected (B, {ens.embedding_dim}) embeddings of "
                f"this ensemble from siamax.embed (its {len(ens.members)} members' side by side)"
            )
    return jnp.stack(
        [logits_from_embeddings(m, a, b) for m, a, b in zip(ens.members, _parts(ens, e1), _parts(ens, e2))]
    )


def logits_from_embeddings(params: Params | Ensemble, e1, e2) -> jax.Array:
    """Head logits for embedding pairs (B, D), (B, D) -> (B,), by the model's energy (``siamax.energies``);
    an Ensemble's: the logit of its members' mean probability."""
    if isinstance(params, Ensemble):
        return logit_of_mean(_member_logits_from_embeddings(params, e1, e2))
    spec = _check_params(params, "logits_from_embeddings").spec
    _check_embeddings(spec, e1, "e1")
    _check_embeddings(spec, e2, "e2")
    if e1.shape[0] != e2.shape[0]:
        raise InputError(f"e1 and e2 hold different numbers of embeddings: {e1.shape[0]} vs {e2.shape[0]}")
    return _head(spec, params.weights, e1, e2)


def score_embeddings(params: Params | Ensemble, e1, e2) -> jax.Array:
    """Same-class probabilities from embeddings; equals ``score`` on the images they came from.

    An N-way one-shot trial then costs N + 1 tower passes instead of 2N.
    """
    if isinstance(params, Ensemble):
        return jnp.mean(jax.nn.sigmoid(_member_logits_from_embeddings(params, e1, e2)), axis=0)
    _check_params(params, "score_embeddings")
    return jax.nn.sigmoid(logits_from_embeddings(params, e1, e2))


def twin_logits(spec: ModelSpec, weights, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """Logits for validated float (B, S, S, C) pairs: one weights tree, vmapped over the twin axis."""
    e = jax.vmap(lambda xi: _embed(spec, weights, xi))(jnp.stack([x1, x2]))
    return Siamese(spec).apply({"params": weights}, e[0], e[1], method="logit")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pairs(spec: ModelSpec, probabilities: bool, weights, x1, x2):
    logits = twin_logits(spec, weights, _as_input(spec, x1), _as_input(spec, x2))
    if not probabilities:
        return logits
    p = jax.nn.sigmoid(logits)
    single = 2 if spec.channels == 1 else 3  # the rank of one image
    return p[0] if x1.ndim == single and x2.ndim == single else p


def _checked_pairs(params, x1, x2, fn: str):
    spec = _check_params(params, fn).spec
    a = _model_images(spec, x1, "x1", allow_single=True)
    b = _model_images(spec, x2, "x2", allow_single=True)
    single = 2 if spec.channels == 1 else 3  # the rank of one image
    na, nb = (x.shape[0] if x.ndim > single else 1 for x in (a, b))
    if na != nb:
        raise InputError(f"x1 and x2 hold different numbers of images: {na} vs {nb}; {fn} compares x1[i] with x2[i]")
    return spec, a, b


def _member_pair_logits(ens: Ensemble, x1, x2, fn: str) -> jax.Array:
    """(M, B) logits of an ensemble's members, or (M,) for a single pair."""
    out = []
    for m in ens.members:
        spec, a, b = _checked_pairs(m, x1, x2, fn)
        out.append(_pairs(spec, False, m.weights, a, b))
    single = 2 if ens.input_spec.channels == 1 else 3
    logits = jnp.stack(out)
    return logits[:, 0] if jnp.ndim(x1) == single and jnp.ndim(x2) == single else logits


def pair_logits(params: Params | Ensemble, x1, x2) -> jax.Array:
    """Logits for image pairs (B, S, S[, 1]) x 2 -> (B,). ``score`` is ``sigmoid`` of this (an Ensemble's:
    the logit of the members' mean probability)."""
    if isinstance(params, Ensemble):
        return logit_of_mean(_member_pair_logits(params, x1, x2, "pair_logits"))
    spec, a, b = _checked_pairs(params, x1, x2, "pair_logits")
    return _pairs(spec, False, params.weights, a, b)


def score(params: Params | Ensemble, x1, x2) -> jax.Array:
    """Probability that x1[i] and x2[i] show the same character: (B,) in [0, 1] (an Ensemble's: the mean of
    its members').

    ``x1``/``x2``: model-input images (see the module docstring), (B, S, S), (B, S, S, 1), or a
    single pair (S, S), which gives a scalar.
    """
    if isinstance(params, Ensemble):
        return jnp.mean(jax.nn.sigmoid(_member_pair_logits(params, x1, x2, "score")), axis=0)
    spec, a, b = _checked_pairs(params, x1, x2, "score")
    return _pairs(spec, True, params.weights, a, b)


# ---------------------------------------------------------------------------------------------
# Raw images.


def _raw_layout(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(B, H, W, C) of raw images by the rule in the module docstring."""
    expected = "expected (H, W), (B, H, W), (H, W, C) or (B, H, W, C) with C = 1 (gray), 3 (RGB) or 4 (RGBA)"
    if len(shape) == 2:
        b, h, w, c = 1, *shape, 1
    elif len(shape) == 3 and shape[-1] in (1, 3, 4):
        b, h, w, c = 1, *shape
    elif len(shape) == 3:
        b, h, w, c = *shape, 1
    elif len(shape) == 4 and shape[-1] in (1, 3, 4):
        b, h, w, c = shape
    elif len(shape) == 4:
        raise InputError(f"images has shape {shape}: {shape[-1]} channels; {expected}")
    else:
        raise InputError(f"images has shape {shape}; {expected}")
    if b == 0:
        raise InputError(f"images is empty (shape {shape})")
    if min(h, w) < MIN_RAW_SIZE:
        raise InputError(
            f"images has shape {shape}, read as {b} image(s) of {h}x{w} pixels with {c} channel(s); images must be "
            f"at least {MIN_RAW_SIZE}x{MIN_RAW_SIZE} pixels. A 3-D array whose last axis is 1, 3 or 4 is one image "
            f"(H, W, C); a batch of gray images is (B, H, W) or (B, H, W, 1)"
        )
    return b, h, w, c


def _frame_ink(y, size: int, fill: float, z=None):
    """(B, H, W) ink images -> (B, S, S), the ink's bounding box centred, its longer side ``fill * S``.

    The box is that of the pixels with ink > 0.25; an image without any keeps its whole frame. One
    antialiased bilinear resampling (``jax.image.scale_and_translate``) straight from the input.
    With ``z`` (B, H, W, C), ``z`` is resampled by the boxes of ``y`` (its luma ink) -> (B, S, S, C).
    """
    h, w = y.shape[1:]

    def one(img, out):
        rows, cols = jnp.any(img > 0.25, axis=1), jnp.any(img > 0.25, axis=0)
        empty = ~jnp.any(rows)
        r = jnp.arange(h)
        c = jnp.arange(w)
        top, bottom = jnp.min(jnp.where(rows, r, h)), jnp.max(jnp.where(rows, r, -1)) + 1
        left, right = jnp.min(jnp.where(cols, c, w)), jnp.max(jnp.where(cols, c, -1)) + 1
        top, left = jnp.where(empty, 0, top), jnp.where(empty, 0, left)
        bottom, right = jnp.where(empty, h, bottom), jnp.where(empty, w, right)
        side = jnp.maximum(bottom - top, right - left).astype(jnp.float32)
        scale = jnp.where(empty, size / max(h, w), fill * size / side)
        centre = jnp.stack([(top + bottom) / 2.0, (left + right) / 2.0])
        translation = size / 2.0 - scale * centre
        return jax.image.scale_and_translate(
            out, (size, size, *out.shape[2:]), (0, 1), jnp.stack([scale, scale]), translation, "linear", antialias=True
        )

    return jax.vmap(one)(y, y if z is None else z)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4, 5))
def _raw_to_model(
    size: int, ink: str, layout: tuple[int, int, int, int], images, ink_frame: float = 0.0, channels: int = 1
):
    x = _to_float(images.reshape(layout))
    c = layout[-1]
    # BT.601 luma with integer weights: white stays exactly 1.0 (paper exactly 0 after inversion).
    y = (299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2]) / 1000 if c >= 3 else x[..., 0]
    if ink == "dark":
        y = 1.0 - y
    if c == 4:
        y = y * x[..., 3]  # composited over the paper: transparent pixels carry no ink
    if channels == 3:
        return _rgb_to_model(size, ink, x, y, ink_frame)
    b, h, w = y.shape
    if ink_frame:
        return jnp.clip(_frame_ink(y, size, ink_frame), 0.0, 1.0)
    if h != w:
        d = abs(h - w)
        pad = ((0, 0), (0, 0), (d // 2, d - d // 2)) if h > w else ((0, 0), (d // 2, d - d // 2), (0, 0))
        y = jnp.pad(y, pad)
    if y.shape[1] != size:
        y = jax.image.resize(y, (b, size, size), method="linear", antialias=True)
    return jnp.clip(y, 0.0, 1.0)


def _rgb_to_model(size: int, ink: str, x, y, ink_frame: float):
    """(B, H, W, C) float raw images (and their gray ink ``y``) -> (B, S, S, 3) RGB model input.

    Each channel as the gray route treats the luma: inverted for ``ink="dark"`` (so the paper is 0,
    what padding and the affine distortions fill with), alpha-composited, padded to a square, resized.
    """
    rgb = x[..., :3] if x.shape[-1] >= 3 else jnp.repeat(x[..., :1], 3, axis=-1)  # gray: R = G = B
    if ink == "dark":
        rgb = 1.0 - rgb
    if x.shape[-1] == 4:
        rgb = rgb * x[..., 3:]
    b, h, w, _ = rgb.shape
    if ink_frame:
        return jnp.clip(_frame_ink(y, size, ink_frame, rgb), 0.0, 1.0)
    if h != w:
        d = abs(h - w)
        pad = (
            ((0, 0), (0, 0), (d // 2, d - d // 2), (0, 0)) if h > w else ((0, 0), (d // 2, d - d // 2), (0, 0), (0, 0))
        )
        rgb = jnp.pad(rgb, pad)
    if rgb.shape[1] != size:
        rgb = jax.image.resize(rgb, (b, size, size, 3), method="linear", antialias=True)
    return jnp.clip(rgb, 0.0, 1.0)


def preprocess(params_or_spec, images, ink: str = "dark") -> jax.Array:
    """Raw images of any size -> float32 (B, S, S) model input for that model ((B, S, S, 3) for an RGB
    model, ``spec.channels == 3``).

    ``params_or_spec``: a ``siamax.Params``, a ModelSpec or a model name. ``images``: gray, RGB or
    RGBA, bool (True = white), uint8 (0..255), uint16 (0..65535) or float in [0, 1], shaped as in
    the module docstring ("Raw images"): (H, W), (B, H, W), (H, W, C) or (B, H, W, C). ``ink="dark"``:
    dark strokes on light paper (Omniglot's PNGs; its bool arrays are True = paper); ``"light"``:
    light strokes on dark (MNIST). Colour becomes gray by BT.601 luma; RGBA is composited over the
    paper first. For an RGB model the colour is kept instead: each channel is treated as the luma is
    for a gray one (inverted for ``"dark"``, composited over the paper), and gray images become
    R = G = B; the ink bounding box of ``ink_frame`` is that of the luma. Non-square images are padded
    with paper to a square (keeping the aspect ratio) before an antialiased bilinear resize to S x S.
    A model whose spec has ``ink_frame`` > 0 instead centres each image's ink and scales its bounding
    box to that fraction of the frame (every domain alike: Omniglot's characters, MNIST's digits, a
    user's scans).
    """
    spec = _spec_of(params_or_spec)
    if ink not in ("dark", "light"):
        raise InputError(f"ink must be 'dark' (dark strokes on light paper) or 'light', got {ink!r}")
    images = _as_array(images)
    _check_dtype(images, "images", uint16=True)
    layout = _raw_layout(tuple(images.shape))
    _check_image_values(images, "images", uint16=True)
    return _raw_to_model(spec.input_size, ink, layout, images, spec.ink_frame, spec.channels)
