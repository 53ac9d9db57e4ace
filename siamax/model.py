"""Networks only: the convolutional tower and the twin head (Koch et al. 2015's weighted L1, or
another energy from ``siamax.energies``, which holds the head's maths).

A :class:`ModelSpec` describes an architecture completely; named presets live in ``MODELS``.
The twins are *not* two modules: ``siamax.api`` applies one tower params tree to both images
with ``jax.vmap`` over the twin axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from siamax import conv, energies

ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "none": lambda x: x}
INITS = ("koch", "lecun")
NORMS = ("none", "layer")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything ``siamax`` needs to know about an architecture.

    Hashable, so it can ride along as static data in a params pytree and in ``jax.jit`` caches.
    ``init="koch"`` is the paper's initialisation (conv N(0, 0.01), fc/head N(0, 0.2), biases
    N(0.5, 0.01)); ``"lecun"`` (LeCun-normal fc/head, He-normal convs, zero biases) trains small
    models faster on CPU.
    """

    input_size: int = 105
    filters: tuple[int, ...] = (64, 128, 128, 256)
    kernels: tuple[int, ...] = (10, 7, 4, 4)
    pools: tuple[bool, ...] = (True, True, True, False)
    padding: str = "VALID"
    fc_units: int = 4096
    fc_activation: str = "sigmoid"
    norm: str = "none"  # "layer": LayerNorm over channels after each conv (not in the paper)
    init: str = "koch"
    dtype: str = "float32"  # compute dtype; parameters always stay float32
    # One of siamax.conv.IMPLS for every conv layer, or a tuple of one per layer. "auto": per layer
    # and backend the fastest of the equal-maths implementations (on GPU/TPU XLA's conv, pooled blocks
    # by space-to-depth where that is faster; on CPU FFT, hybrid, Winograd or direct where faster);
    # the others force one. siamax.conv.plan(spec, backend) says what each layer runs.
    conv_impl: str | tuple[str, ...] = "auto"
    # How the head compares two embeddings (siamax.energies): Koch's weighted L1, euclidean or cosine.
    energy: str = "weighted_l1"
    # Input convention: 0 = the whole image resized to S x S (the paper); f > 0 = each image's ink
    # centred and its bounding box scaled to f of the frame (siamax.preprocess), for every domain alike.
    ink_frame: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        object.__setattr__(self, "kernels", tuple(int(k) for k in self.kernels))
        object.__setattr__(self, "pools", tuple(bool(p) for p in self.pools))
        if isinstance(self.conv_impl, list):
            object.__setattr__(self, "conv_impl", tuple(self.conv_impl))
        n = len(self.filters)
        if n == 0 or len(self.kernels) != n or len(self.pools) != n:
            raise ValueError(
                f"filters, kernels and pools need one entry per conv layer, got "
                f"{len(self.filters)}, {len(self.kernels)}, {len(self.pools)}"
            )
        if self.padding not in ("VALID", "SAME"):
            raise ValueError(f"padding must be 'VALID' or 'SAME', got {self.padding!r}")
        for name, value, allowed in (
            ("fc_activation", self.fc_activation, tuple(ACTIVATIONS)),
            ("norm", self.norm, NORMS),
            ("init", self.init, INITS),
            ("dtype", self.dtype, DTYPES),
            ("energy", self.energy, tuple(energies.ENERGIES)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.ink_frame <= 1.0:
            raise ValueError(f"ink_frame must be in [0, 1] (0: off), got {self.ink_frame}")
        if self.fc_units < 0 or self.input_size < 1:
            raise ValueError("fc_units must be >= 0 (0: no fc layer) and input_size positive")
        _ = self.feature_shape  # fails early if the image shrinks to nothing
        # Refuses here an unknown conv_impl, or one a layer cannot take (the backend changes only "auto").
        conv.plan(self, backend="cpu")

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the layers that own a weight matrix, in order (used for per-layer optimisation)."""
        return tuple(f"conv{i + 1}" for i in range(len(self.filters))) + (("fc",) if self.fc_units else ()) + ("head",)

    @property
    def conv_sizes(self) -> tuple[int, ...]:
        """Height (= width) of each conv layer's output, before its pooling."""
        sizes, size = [], self.input_size
        for k, pool in zip(self.kernels, self.pools):
            out = size - k + 1 if self.padding == "VALID" else size
            size = out // 2 if pool else out
            if size < 1:
                raise ValueError(
                    f"input_size {self.input_size} is too small for kernels {self.kernels} with pools {self.pools}"
                )
            sizes.append(out)
        return tuple(sizes)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the last conv block's output, i.e. what the fc layer flattens."""
        size = self.conv_sizes[-1] // (2 if self.pools[-1] else 1)
        return size, size, self.filters[-1]

    @property
    def embedding_dim(self) -> int:
        """fc width, or with ``fc_units=0`` (no fc layer) the flattened last conv block."""
        return self.fc_units or math.prod(self.feature_shape)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown ModelSpec fields {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


MODELS: dict[str, ModelSpec] = {
    # The paper's network: 38,951,745 parameters.
    "paper": ModelSpec(),
    # CPU-sized: four 3x3 blocks of 64 filters on 35x35 images (Omniglot downsampled 3x, as the
    # paper's MNIST model), close to the few-shot literature's 28x28 "conv4". No fc layer: the
    # embedding is the last block's 2x2x64 features and the paper's weighted-L1 head compares them.
    # Both choices were made on validation alphabets (README, "Results"): without the
    # 256-unit sigmoid fc, and at 35 rather than 28 pixels, it learned faster per CPU-minute.
    "small": ModelSpec(
        input_size=35,
        filters=(64, 64, 64, 64),
        kernels=(3, 3, 3, 3),
        pools=(True, True, True, True),
        padding="SAME",
        fc_units=0,
        init="lecun",
    ),
    # For tests and smoke runs only: trains in seconds, learns little.
    "tiny": ModelSpec(
        input_size=28, filters=(8, 16), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=32, init="lecun"
    ),
    # The paper's reduced network for MNIST transfer (OPEN in the paper): Omniglot downsampled 3x to
    # 35x35, the paper's layer pattern with smaller kernels.
    "reduced35": ModelSpec(
        input_size=35,
        filters=(64, 128, 128, 256),
        kernels=(4, 3, 3, 2),
        pools=(True, True, False, False),
        padding="VALID",
        fc_units=1024,
        init="lecun",
    ),
}


def get_spec(model: str | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known models: {sorted(MODELS)} (or pass a ModelSpec)")
    return MODELS[model]


def _inits(spec: ModelSpec, kind: str):
    """(kernel_init, bias_init) for a layer kind ("conv" or "dense")."""
    if spec.init == "koch":
        std = 0.01 if kind == "conv" else 0.2
        bias = lambda key, shape, dtype=jnp.float32: 0.5 + 0.01 * jax.random.normal(key, shape, dtype)
        return nn.initializers.normal(std), bias
    kernel = nn.initializers.he_normal() if kind == "conv" else nn.initializers.lecun_normal()
    return kernel, nn.initializers.zeros


class Conv(nn.Module):
    """Stride-1 2D convolution + bias as its ``plan`` says (``siamax.conv.apply``).

    With ``plan.block`` the whole block, ReLU and 2x2 max-pooling included, so that an
    implementation may fuse them.
    """

    features: int
    kernel_size: int
    plan: conv.LayerPlan
    dtype: Any
    kernel_init: Any
    bias_init: Any

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return conv.apply(self.plan, x, kernel, bias)


class Head(nn.Module):
    """The head's parameters for ``energy`` (``Energy.head_shapes`` and ``head_init``); a module only, the
    maths is ``siamax.energies``'. Koch's weighted L1 is initialised like an fc layer (and draws
    exactly what ``nn.Dense(1, name="head")`` drew); the calibrated euclidean / cosine heads start at
    ``logit = 1 - d``."""

    energy: str
    dim: int
    kernel_init: Any
    bias_init: Any

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        energy = energies.get(self.energy)
        inits = energy.head_init(self.kernel_init, self.bias_init)
        shapes = energy.head_shapes(self.dim)
        return {name: self.param(name, inits[name], shape) for name, shape in shapes.items()}


class Siamese(nn.Module):
    """Tower + head. ``embed`` maps images to embeddings; ``logit`` compares two embeddings."""

    spec: ModelSpec

    def setup(self):
        s = self.spec
        dtype = jnp.dtype(s.dtype)
        conv_k, conv_b = _inits(s, "conv")
        dense_k, dense_b = _inits(s, "dense")
        # Each layer's implementation is resolved once, here; the tower runs exactly this plan.
        self.convs = [
            Conv(f, k, p, dtype, conv_k, conv_b, name=p.layer) for f, k, p in zip(s.filters, s.kernels, conv.plan(s))
        ]
        self.norms = (
            [nn.LayerNorm(dtype=dtype, name=f"norm{i + 1}") for i in range(len(s.filters))]
            if s.norm == "layer"
            else [None] * len(s.filters)
        )
        self.fc = (
            nn.Dense(s.fc_units, dtype=dtype, kernel_init=dense_k, bias_init=dense_b, name="fc") if s.fc_units else None
        )
        self.head = Head(s.energy, s.embedding_dim, dense_k, dense_b, name="head")

    def embed(self, x):
        """(B, S, S, 1) float model input -> (B, D) float32 embeddings."""
        for layer, norm in zip(self.convs, self.norms):
            x = layer(x)
            if layer.plan.block:
                continue
            x = nn.relu(norm(x) if norm is not None else x)
            if layer.plan.pool:
                x = conv.POOLS[layer.plan.pool](x)
        x = x.reshape(x.shape[0], -1)
        if self.fc is None:
            return x.astype(jnp.float32)
        return ACTIVATIONS[self.spec.fc_activation](self.fc(x)).astype(jnp.float32)

    def logit(self, e1, e2):
        """The energy's logit: (B, D), (B, D) -> (B,) float32 (Koch's: weighted L1 distance plus bias)."""
        return energies.get(self.spec.energy).logit(self.head(), e1, e2, jnp.dtype(self.spec.dtype))

    def pairwise_logits(self, e):
        """(B, D) -> (B, B) float32 logits of every pair of one batch of embeddings."""
        return energies.get(self.spec.energy).pairwise_logits(self.head(), e, jnp.dtype(self.spec.dtype))

    def __call__(self, x1, x2):  # only used to create the parameters
        return self.logit(self.embed(x1), self.embed(x2))


def param_count(spec: ModelSpec) -> int:
    """Parameter count from the spec alone (no initialisation needed)."""
    count, cin = 0, 1
    for f, k in zip(spec.filters, spec.kernels):
        count += k * k * cin * f + f + (2 * f if spec.norm == "layer" else 0)
        cin = f
    if spec.fc_units:
        count += math.prod(spec.feature_shape) * spec.fc_units + spec.fc_units
    return count + sum(math.prod(shape) for shape in energies.get(spec.energy).head_shapes(spec.embedding_dim).values())
