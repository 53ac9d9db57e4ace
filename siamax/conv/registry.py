"""The one registry of convolution implementations, and the plan that resolves each layer once.

:data:`REGISTRY` names every implementation and what it supports. :func:`plan_layer` turns a
requested implementation (a name, or ``"auto"``: the backend rule :func:`_auto`) and a layer's
geometry into a :class:`LayerPlan`: the implementation that runs, whether it computes the pooled
block fused, how the pooling runs otherwise, Winograd's tile. :func:`plan` does that once per conv
layer of a model; the model applies exactly those plans (:func:`apply`), and :func:`plan_dict` is
the same as JSON, for results. :func:`conv2d` and :func:`conv_relu_pool` are the single-op forms,
planned and applied the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from siamax.conv import direct, fft, matmul, pooling, s2d, winograd
from siamax.conv._common import pad_same
from siamax.errors import ConfigError


def _xla(x, kernel, padding, tile):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _valid_after_padding(fn):
    """An implementation of VALID convolutions as one of ``padding``: zero-pad first under SAME."""

    def conv(x, kernel, padding, tile):
        return fn(pad_same(x, kernel.shape[0]) if padding == "SAME" else x, kernel)

    return conv


def _winograd(x, kernel, padding, tile):
    return winograd.conv2d(x, kernel, padding, tile)


def _direct(x, kernel, padding, tile):
    return direct.conv2d(x, kernel, padding)


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of the stride-1 NHWC convolution, and what it supports."""

    name: str
    # (x, kernel, padding, tile) -> the convolution; tile is the plan's (Winograd's m, None for the others).
    # None: the implementation computes only whole pooled blocks.
    conv: Callable | None
    # (x, kernel, bias, padding) -> max_pool_2x2(relu(conv + bias)) as one op; None: no fused form.
    block: Callable | None = None
    kernel_sizes: tuple[int, ...] | None = None  # None: any
    in_channels: int | None = None  # None: any
    tiles: tuple[int, ...] = ()  # the output tiles it can use (Winograd)

    def refusal(self, k: int, cin: int) -> str | None:
        """Why it cannot run a k x k convolution of cin input channels; None if it can."""
        if self.kernel_sizes is not None and k not in self.kernel_sizes:
            sizes = " or ".join(f"{s}x{s}" for s in self.kernel_sizes)
            return f"{self.name!r} is for {sizes} kernels, got {k}x{k}"
        if self.in_channels is not None and cin != self.in_channels:
            what = "single-channel" if self.in_channels == 1 else f"{self.in_channels}-channel"
            return f"{self.name!r} is for {what} inputs, got {cin} channels"
        return None


# Each module's docstring says how it computes and where it is fast.
REGISTRY: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl("xla", _xla),
        Impl("matmul", _valid_after_padding(matmul.conv)),
        Impl("fft", _valid_after_padding(fft.conv)),
        Impl("hybrid", _valid_after_padding(matmul.hybrid)),
        Impl("winograd", _winograd, kernel_sizes=(3,), tiles=(2, 4, 6)),
        Impl("direct", _direct, block=direct.block, in_channels=1),
        Impl("s2d", None, block=s2d.block),
    )
}
IMPLS = ("auto", *REGISTRY)  # what ModelSpec.conv_impl accepts (one name, or one per conv layer)
POOLS = {"max": pooling.max_pool_2x2, "masked": pooling.masked_max_pool_2x2}  # how a plan's pooling runs


def _auto(k: int, cin: int, h: int, padding: str, block: bool, backend: str) -> str:
    """What ``"auto"`` runs on a k x k layer of cin input channels on h x h inputs, on ``backend``.

    Measured on the paper and small networks (docs/performance.md). Off CPU, XLA's convolution
    (cuDNN & co.), except that a pooled block goes by space-to-depth where it has one input
    channel or costs at most 1.5x the direct form's multiply-adds (the paper's conv1 and conv2,
    the small model's conv1; not the paper's conv3 at 2.25x). On CPU, where XLA's weight
    gradients are slow:

    * ``"fft"`` where the direct form's multiply-adds per output pixel (k*k*Cin) dwarf the FFT's
      per-frequency work: k >= 4 with >= 32 input channels on planes of >= 16 pixels (the
      paper's conv2 and conv3);
    * ``"hybrid"`` for single-channel inputs on large planes (the paper's conv1, 10x10 on 105x105);
    * ``"winograd"`` for 3x3 kernels with >= 16 input channels (the small model's conv2-conv4);
    * ``"direct"`` for single-channel inputs with small kernels (the small model's conv1), fused
      with its pooling where the layer is a pooled block;
    * ``"xla"`` otherwise (the paper's conv4, 4x4 on 9x9 planes).
    """
    if backend != "cpu":
        return "s2d" if block and (cin == 1 or (2 * (k // 2 + 1) / k) ** 2 <= 1.5) else "xla"
    padded = h + (k - 1 if padding == "SAME" else 0)
    if k >= 4 and cin >= 32 and padded >= 16:
        return "fft"
    if cin == 1 and padded >= 48:
        return "hybrid"
    if k == 3 and cin >= 16:
        return "winograd"
    if cin == 1 and k <= 5:
        return "direct"
    return "xla"


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What one conv layer runs; :func:`apply` does exactly this.

    ``block``: the layer computes conv + bias + ReLU + 2x2 max-pooling (a pooled layer with no norm
    between); otherwise conv + bias, and the caller applies norm, ReLU and ``pool``. ``pool``: how
    the 2x2 max-pooling runs: ``"fused"`` (inside the implementation's block), ``"masked"`` or
    ``"max"`` (:data:`POOLS`), None (no pooling). ``tile``: Winograd's output tile m.
    """

    layer: str
    impl: str
    padding: str = "VALID"
    block: bool = False
    pool: str | None = None
    tile: int | None = None

    def __post_init__(self):
        impl = REGISTRY.get(self.impl)
        if impl is None:
            raise ConfigError(f"LayerPlan {self.layer}: impl must be one of {tuple(REGISTRY)}, got {self.impl!r}")
        if not self.block:
            pools, what = (None, *POOLS), "a layer that is not a pooled block"
        else:
            pools, what = ("fused",) if impl.block is not None else tuple(POOLS), "a pooled block"
        tiles = impl.tiles or (None,)
        problems = [
            message
            for bad, message in (
                (self.padding not in ("VALID", "SAME"), f"padding must be 'VALID' or 'SAME', got {self.padding!r}"),
                (self.pool not in pools, f"pool must be one of {pools} for {what} by it, got {self.pool!r}"),
                (impl.conv is None and not self.block, "it computes only pooled blocks"),
                (self.tile not in tiles, f"tile must be one of {tiles} for it, got {self.tile!r}"),
            )
            if bad
        ]
        if problems:
            raise ConfigError(f"LayerPlan {self.layer} ({self.impl!r}): " + "; ".join(problems))

    @property
    def fused_pool(self) -> bool:
        return self.pool == "fused"

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "impl": self.impl, "fused_pool": self.fused_pool, "pool": self.pool}
        d |= {"block": self.block, "padding": self.padding}
        return d | ({"tile": self.tile} if self.tile is not None else {})


def plan_layer(
    impl: str,
    layer: str,
    kernel_size: int,
    in_shape: tuple[int, int, int],
    padding: str = "VALID",
    pooled: bool = False,
    norm: bool = False,
    backend: str | None = None,
    tile: int | None = None,
) -> LayerPlan:
    """Resolve ``impl`` (a :data:`IMPLS` name) for one layer: a k x k convolution of (H, W, Cin) inputs.

    ``pooled``: 2x2 max-pooling follows; ``norm``: a norm between the convolution and its ReLU (so
    the block is not one op); ``backend`` (default: JAX's default) decides ``"auto"`` and the
    pooling; ``tile`` forces Winograd's (default: :func:`siamax.conv.winograd.tile`'s). Refuses an
    implementation the layer cannot take, with the ones it can.
    """
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ConfigError(f"conv_impl {impl!r} is unknown; expected one of {IMPLS}")
    h, w, cin = in_shape
    k, block = kernel_size, pooled and not norm
    backend = backend or jax.default_backend()
    name = _auto(k, cin, h, padding, block, backend) if impl == "auto" else impl
    why = REGISTRY[name].refusal(k, cin)
    if why:
        fits = [n for n, i in REGISTRY.items() if i.refusal(k, cin) is None]
        raise ConfigError(
            f"conv_impl {impl!r} cannot run {layer} (a {k}x{k} kernel on {cin} input channels): {why}; "
            f"for this layer choose 'auto' or one of {fits} (ModelSpec.conv_impl takes one name per conv layer)"
        )
    if REGISTRY[name].conv is None and not block:
        name = "xla"  # s2d computes only pooled blocks: anything else under it is XLA's convolution
    tiles = REGISTRY[name].tiles
    if tile is not None and tile not in tiles:
        takes = f"takes the tiles {tiles}" if tiles else "has no tile (Winograd's output tile)"
        raise ConfigError(f"{layer}: {name!r} {takes}, got tile={tile}")
    if tiles and tile is None:
        tile = winograd.tile(*(s if padding == "SAME" else s - k + 1 for s in (h, w)))
    if not pooled:
        pool = None
    elif block and REGISTRY[name].block is not None:
        pool = "fused"
    else:
        # CPU blocks: the mask-saving VJP was a few ms faster per small-model step; elsewhere autodiff's
        pool = "masked" if block and backend == "cpu" else "max"
    return LayerPlan(layer, name, padding, block, pool, tile)


def plan(spec, backend: str | None = None) -> tuple[LayerPlan, ...]:
    """One :class:`LayerPlan` per conv layer of ``spec`` (a ModelSpec: its ``conv_layers``) on ``backend``
    (default: JAX's).

    ``spec.conv_impl`` is one :data:`IMPLS` name for every layer or a tuple of one per layer;
    the model's tower runs exactly this plan.
    """
    layers = spec.conv_layers
    n = len(layers)
    impls = spec.conv_impl
    if isinstance(impls, str):
        impls = (impls,) * n
    if not isinstance(impls, (tuple, list)) or len(impls) != n:
        raise ConfigError(
            f"conv_impl must be one of {IMPLS} or a tuple of one per conv layer ({n}), got {spec.conv_impl!r}"
        )
    norm = spec.norm != "none"
    return tuple(
        plan_layer(impl, layer, k, in_shape, spec.padding, pooled, norm, backend)
        for impl, (layer, k, in_shape, _, pooled) in zip(impls, layers)
    )


def plan_dict(spec, backend: str | None = None) -> list[dict]:
    """:func:`plan` as JSON-ready dicts ({"layer", "impl", "fused_pool", "pool", "block", "padding", "tile"?})."""
    return [p.to_dict() for p in plan(spec, backend)]


def apply(p: LayerPlan, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """One layer as ``p`` says: conv (+ bias), or with ``p.block`` the whole pooled block."""
    impl = REGISTRY[p.impl]
    if p.fused_pool:
        return impl.block(x, kernel, bias, p.padding)
    y = impl.conv(x, kernel, p.padding, p.tile)
    y = y if bias is None else y + bias
    return POOLS[p.pool](jax.nn.relu(y)) if p.block else y


def _check_args(x, kernel, padding):
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"conv2d expects x (B, H, W, Cin) and a square kernel (k, k, Cin, Cout); got "
            f"x {tuple(x.shape)}, kernel {tuple(kernel.shape)}"
        )


def conv2d(
    x: jax.Array, kernel: jax.Array, padding: str = "VALID", impl: str = "xla", tile: int | None = None
) -> jax.Array:
    """Stride-1 NHWC convolution by ``impl``. x: (B, H, W, Cin), kernel: (k, k, Cin, Cout) -> (B, H', W', Cout).

    Planned as one layer (:func:`plan_layer`, JAX's default backend for ``"auto"``) and applied.
    """
    _check_args(x, kernel, padding)
    return apply(plan_layer(impl, "this convolution", kernel.shape[0], x.shape[1:], padding, tile=tile), x, kernel)


def conv_relu_pool(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    padding: str = "VALID",
    impl: str = "xla",
    tile: int | None = None,
    backend: str | None = None,
) -> jax.Array:
    """One pooled tower block, ``max_pool_2x2(relu(conv2d(x, kernel, padding) + bias))``, by ``impl``.

    Fused where the implementation has a block form (``"direct"``, ``"s2d"``); otherwise the
    convolution, ReLU and the pooling ``backend`` plans (default: JAX's default backend).
    """
    _check_args(x, kernel, padding)
    p = plan_layer(impl, "this block", kernel.shape[0], x.shape[1:], padding, pooled=True, backend=backend, tile=tile)
    return apply(p, x, kernel, bias)


def conv_flops(x_shape, kernel_shape, padding: str = "VALID") -> int:
    """Multiply-adds x 2 of the direct convolution (what the benchmark's GFLOP/s figures count)."""
    b, h, w, cin = x_shape
    k, _, _, cout = kernel_shape
    ho, wo = (h, w) if padding == "SAME" else (h - k + 1, w - k + 1)
    return 2 * b * ho * wo * k * k * cin * cout
