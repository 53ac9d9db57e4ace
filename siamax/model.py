"""Networks and their parameters: the tower and the twin head (Koch et al. 2015's weighted L1, or another energy from
``siamax.energies``, which holds the head's maths).

A :class:`ModelSpec` describes an architecture completely; named presets live in ``MODELS`` (the
one model registry, ``--model NAME``). Towers (``ModelSpec.tower``): ``"koch"``, the paper's plain
conv stack (the default), and ``"resnet"``, pre-activation residual stages (He et al. 2016) whose
normalisation is per image (GroupNorm, or none), so that no statistics are shared across a batch or
across the twins. The final feature map becomes the embedding by ``pooling``: ``"flatten"`` (the
paper) or ``"attention"`` (one learned query attending over the map's positions, CLIP-style).
The twins are *not* two modules: ``siamax.api`` applies one tower params tree to both images
with ``jax.vmap`` over the twin axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from siamax import conv, energies
from siamax.errors import InputTypeError

ACTIVATIONS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "none": lambda x: x}
INITS = ("koch", "lecun")
NORMS = ("none", "layer", "group")
TOWERS = ("koch", "resnet")
POOLINGS = ("flatten", "attention")
CHANNELS = (1, 3)
GROUPS = 8  # GroupNorm's groups (fewer where a layer has fewer channels: the gcd)
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
    # "layer": LayerNorm over channels after each conv (not in the paper); "group": GroupNorm per image
    # (for "resnet", before each conv, pre-activation)
    norm: str = "none"
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
    # Input channels: 1 (gray, the paper) or 3 (RGB; siamax.preprocess keeps the colour for such a model).
    channels: int = 1
    # "koch": filters/kernels/pools are the conv layers. "resnet": conv1 is a stem (kernels[0],
    # filters[0]); then stage i holds `blocks` pre-activation residual blocks of width filters[i]
    # (norm, ReLU, kxk conv, norm, ReLU, kxk conv, plus the shortcut: identity, or a 1x1 projection
    # where the width changes), followed by 2x2 max-pooling where pools[i]; SAME padding only.
    tower: str = "koch"
    blocks: int = 1
    # How the final feature map becomes the embedding: "flatten" (the paper) or "attention" (a learned
    # query over the map's positions, with a learned position embedding; the embedding has filters[-1] dims).
    pooling: str = "flatten"
    attention_heads: int = 4

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
            ("tower", self.tower, TOWERS),
            ("pooling", self.pooling, POOLINGS),
            ("channels", self.channels, CHANNELS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.ink_frame <= 1.0:
            raise ValueError(f"ink_frame must be in [0, 1] (0: off), got {self.ink_frame}")
        if self.fc_units < 0 or self.input_size < 1:
            raise ValueError("fc_units must be >= 0 (0: no fc layer) and input_size positive")
        if self.tower == "resnet" and (self.padding != "SAME" or self.blocks < 1 or self.norm == "layer"):
            raise ValueError(
                f"a resnet tower needs padding 'SAME', blocks >= 1 and norm 'group' or 'none'; got padding "
                f"{self.padding!r}, blocks {self.blocks}, norm {self.norm!r}"
            )
        if self.pooling == "attention" and (self.attention_heads < 1 or self.filters[-1] % self.attention_heads):
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide the last layer's {self.filters[-1]} filters"
            )
        _ = self.feature_shape  # fails early if the image shrinks to nothing
        # Refuses here an unknown conv_impl, or one a layer cannot take (the backend changes only "auto").
        conv.plan(self, backend="cpu")

    @property
    def conv_layers(self) -> tuple[tuple[str, int, tuple[int, int, int], int, bool], ...]:
        """Every convolution of the tower, in order: ``(name, kernel, (H, W, Cin), Cout, pooled)``;
        ``pooled``: 2x2 max-pooling follows it directly (what ``siamax.conv.plan`` plans)."""
        if self.tower == "koch":
            out, size, cin = [], self.input_size, self.channels
            for i, (f, k, pool, o) in enumerate(zip(self.filters, self.kernels, self.pools, self.conv_sizes)):
                out.append((f"conv{i + 1}", k, (size, size, cin), f, pool))
                size, cin = (o // 2 if pool else o), f
            return tuple(out)
        size, cin = self.input_size, self.channels
        out = [("conv1", self.kernels[0], (size, size, cin), self.filters[0], False)]
        cin = self.filters[0]
        for f, k, pool in zip(self.filters, self.kernels, self.pools):
            for _ in range(self.blocks):
                out.append((f"conv{len(out) + 1}", k, (size, size, cin), f, False))
                out.append((f"conv{len(out) + 1}", k, (size, size, f), f, False))
                cin = f
            size = size // 2 if pool else size
        return tuple(out)

    @property
    def projections(self) -> tuple[tuple[str, int, int], ...]:
        """The resnet's 1x1 projection shortcuts: ``(name, Cin, Cout)``, named after the block's first conv."""
        if self.tower != "resnet":
            return ()
        convs = self.conv_layers
        return tuple(
            (f"proj{i + 1}", convs[i][2][2], convs[i][3])
            for i in range(1, len(convs), 2)
            if convs[i][2][2] != convs[i][3]
        )

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the top-level layers of the weights tree, in order (used for per-layer optimisation);
        a ``normK`` belongs to ``convK``."""
        names = tuple(name for name, *_ in self.conv_layers) + tuple(name for name, _, _ in self.projections)
        names += ("post_norm",) if self.tower == "resnet" and self.norm == "group" else ()
        names += ("attn",) if self.pooling == "attention" else ()
        return names + (("fc",) if self.fc_units else ()) + ("head",)

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
    def pooled_dim(self) -> int:
        """Width of the pooled feature map: flattened, or the attention pooling's ``filters[-1]``."""
        return self.filters[-1] if self.pooling == "attention" else math.prod(self.feature_shape)

    @property
    def embedding_dim(self) -> int:
        """fc width, or with ``fc_units=0`` (no fc layer) the pooled last conv block."""
        return self.fc_units or self.pooled_dim

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """The spec of a dict from :meth:`to_dict`; fields it lacks (a file written before they existed,
        e.g. without ``channels``) take their defaults, which are what such a file's model was."""
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
    # Residual towers sized for CPU (35x35, like small): a 3x3 stem, then one pre-activation block
    # per stage of 32, 64 and 128 filters, each stage max-pooled; GroupNorm per image (no batch
    # statistics, so the twins and the batch never mix). Embedding: the flattened 4x4x128 map.
    "resnet": ModelSpec(
        input_size=35,
        filters=(32, 64, 128),
        kernels=(3, 3, 3),
        pools=(True, True, True),
        padding="SAME",
        fc_units=0,
        norm="group",
        init="lecun",
        tower="resnet",
    ),
    # The same tower with attention pooling: one learned query over the 16 positions of the final
    # map (4 heads, a learned position embedding) -> a 128-dim embedding.
    "resnet_attn": ModelSpec(
        input_size=35,
        filters=(32, 64, 128),
        kernels=(3, 3, 3),
        pools=(True, True, True),
        padding="SAME",
        fc_units=0,
        norm="group",
        init="lecun",
        tower="resnet",
        pooling="attention",
    ),
    # A bigger residual tower for the paper's 105x105 inputs (GPU): a 7x7 stem, two blocks per
    # stage of 64-512 filters, attention pooling, a 512-dim embedding.
    "resnet_105": ModelSpec(
        input_size=105,
        filters=(64, 128, 256, 512),
        kernels=(7, 3, 3, 3),
        pools=(True, True, True, True),
        padding="SAME",
        fc_units=0,
        norm="group",
        init="lecun",
        tower="resnet",
        blocks=2,
        pooling="attention",
        attention_heads=8,
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


def _group_norm(channels: int, dtype, name: str) -> nn.GroupNorm:
    """Per-image GroupNorm (statistics of one image's own channels and positions, never the batch's)."""
    return nn.GroupNorm(num_groups=math.gcd(GROUPS, channels), dtype=dtype, name=name)


class AttentionPool(nn.Module):
    """A learned query attending over the positions of a (B, H, W, C) map -> (B, C).

    The keys and values are the map's positions plus a learned position embedding (without it the
    pooling could not tell where a feature is); ``heads`` heads of C / heads dims (flax's
    ``MultiHeadDotProductAttention``).
    """

    heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        pos = self.param("position", nn.initializers.normal(c**-0.5), (h * w, c))
        query = self.param("query", nn.initializers.normal(c**-0.5), (1, c))
        tokens = x.reshape(b, h * w, c) + pos.astype(self.dtype)
        q = jnp.broadcast_to(query.astype(self.dtype), (b, 1, c))
        out = nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype, name="attention")(q, tokens, tokens)
        return out[:, 0]


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
            Conv(f, k, p, dtype, conv_k, conv_b, name=p.layer)
            for (_, k, _, f, _), p in zip(s.conv_layers, conv.plan(s))
        ]
        if s.tower == "koch":
            norm = {
                "layer": lambda f, name: nn.LayerNorm(dtype=dtype, name=name),
                "group": lambda f, name: _group_norm(f, dtype, name),
            }.get(s.norm)
            self.norms = [norm(f, f"norm{i + 1}") if norm else None for i, f in enumerate(s.filters)]
        else:  # pre-activation: the norm before convK (K >= 2) is normK; post_norm after the last block
            group = s.norm == "group"
            self.norms = [None] + [
                _group_norm(cin, dtype, f"norm{i + 1}") if group else None
                for i, (_, _, (_, _, cin), _, _) in enumerate(s.conv_layers[1:], 1)
            ]
            self.post_norm = _group_norm(s.filters[-1], dtype, "post_norm") if group else None
            self.projs = {
                name: nn.Dense(cout, use_bias=False, dtype=dtype, kernel_init=dense_k, name=name)
                for name, _, cout in s.projections
            }
        self.attn = AttentionPool(s.attention_heads, dtype, name="attn") if s.pooling == "attention" else None
        self.fc = (
            nn.Dense(s.fc_units, dtype=dtype, kernel_init=dense_k, bias_init=dense_b, name="fc") if s.fc_units else None
        )
        self.head = Head(s.energy, s.embedding_dim, dense_k, dense_b, name="head")

    def _koch(self, x):
        for layer, norm in zip(self.convs, self.norms):
            x = layer(x)
            if layer.plan.block:
                continue
            x = nn.relu(norm(x) if norm is not None else x)
            if layer.plan.pool:
                x = conv.POOLS[layer.plan.pool](x)
        return x

    def _resnet(self, x):
        s = self.spec

        def pre(i, h):  # norm (if any) and ReLU before conv i
            return nn.relu(self.norms[i](h) if self.norms[i] is not None else h)

        x = self.convs[0](x)
        i = 1
        for pool in s.pools:
            for _ in range(s.blocks):
                h = self.convs[i](pre(i, x))
                h = self.convs[i + 1](pre(i + 1, h))
                proj = self.projs.get(f"proj{i + 1}")
                x = (proj(x) if proj is not None else x) + h
                i += 2
            if pool:
                x = conv.POOLS["max"](x)
        return nn.relu(self.post_norm(x) if self.post_norm is not None else x)

    def embed(self, x):
        """(B, S, S, C) float model input -> (B, D) float32 embeddings."""
        x = self._koch(x) if self.spec.tower == "koch" else self._resnet(x)
        x = self.attn(x) if self.attn is not None else x.reshape(x.shape[0], -1)
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
    count = 0
    for i, (_, k, (_, _, cin), f, _) in enumerate(spec.conv_layers):
        count += k * k * cin * f + f
        if spec.norm == "layer":
            count += 2 * f
        elif spec.norm == "group" and spec.tower == "resnet" and i > 0:
            count += 2 * cin  # normK before convK
        elif spec.norm == "group" and spec.tower == "koch":
            count += 2 * f
    count += sum(cin * cout for _, cin, cout in spec.projections)
    if spec.tower == "resnet" and spec.norm == "group":
        count += 2 * spec.filters[-1]
    if spec.pooling == "attention":
        h, w, c = spec.feature_shape
        count += h * w * c + c + 4 * (c * c + c)  # positions, query; q, k, v and out projections
    if spec.fc_units:
        count += spec.pooled_dim * spec.fc_units + spec.fc_units
    return count + sum(math.prod(shape) for shape in energies.get(spec.energy).head_shapes(spec.embedding_dim).values())


# ---------------------------------------------------------------------------------------------
# Parameters: one network's weights with its spec, several networks as one.


@flax.struct.dataclass
class Params:
    """Weights of one Siamese network plus (static) the spec that says how to apply them.

    A pytree: ``jax.tree.map``, ``jax.grad`` and optax see only ``weights``; ``spec`` is static
    metadata, so ``score(params, x1, x2)`` needs no other argument.
    """

    weights: dict[str, Any]
    spec: ModelSpec = flax.struct.field(pytree_node=False)


def input_shape(model: str | ModelSpec, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, S, S, C)``: the shape of ``batch`` model-input images for ``model`` (C = ``spec.channels``)."""
    spec = get_spec(model)
    return batch, spec.input_size, spec.input_size, spec.channels


def init(key: jax.Array, model: str | ModelSpec = "paper") -> Params:
    """Fresh parameters for ``model`` (a preset name from ``siamax.model.MODELS`` or a ModelSpec)."""
    spec = get_spec(model)
    return Params(weights=_init_weights(key, spec), spec=spec)


@functools.partial(jax.jit, static_argnums=1)
def _init_weights(key: jax.Array, spec: ModelSpec) -> dict[str, Any]:
    # Compiled: flax's init runs the forward pass to learn the shapes, op by op when eager; in one
    # program that pass is dead code. (Same bits as eager for every preset but `paper`, whose normal
    # draws may differ in the last bit.)
    x = jnp.zeros(input_shape(spec, 1), jnp.float32)
    return jax.tree.map(lambda w: w.astype(jnp.float32), Siamese(spec).init(key, x, x)["params"])


@flax.struct.dataclass
class Ensemble:
    """Several networks used as one (:func:`ensemble`); a pytree of their Params.

    Wherever a ``Params`` goes (``embed``, ``score``, ``score_embeddings``, ``logits_from_embeddings``,
    ``pair_logits``, ``preprocess``, ``siamax.Index``, the evaluators), an Ensemble goes too: a
    same-class probability is the mean of its members' probabilities, and its embedding of an image is
    its members' embeddings side by side, ``(B, D_1 + ... + D_M)``, from which ``score_embeddings``
    gives that same mean (each member's head on its own part).
    """

    members: tuple[Params, ...]

    @property
    def embedding_dim(self) -> int:
        return sum(m.spec.embedding_dim for m in self.members)

    @property
    def input_spec(self) -> ModelSpec:
        """The first member's spec: what the members share is their input (size, channels, ink frame)."""
        return self.members[0].spec


_WHERE_PARAMS = "siamax.Params (from siamax.init(key, model) or siamax.load(path))"


def _received(x) -> str:
    name = type(x).__name__
    if isinstance(x, dict):
        return "a dict (a bare weights tree has no model spec: siamax.Params(weights=..., spec=...) holds both)"
    if isinstance(x, str):
        return f"the string {x!r} (a model name: siamax.init(jax.random.key(0), {x!r}) makes fresh params)"
    if isinstance(x, Ensemble):
        return f"an Ensemble of {len(x.members)} (this takes one network: one of its .members)"
    if isinstance(getattr(x, "params", None), Params):
        return f"a {name} (its .params is a siamax.Params)"
    return "None" if x is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _check_params(params, fn: str) -> Params:
    if not isinstance(params, Params):
        raise InputTypeError(f"{fn}: params must be {_WHERE_PARAMS}; got {_received(params)}")
    return params
