"""The paper's architecture and initialisation, the twin's weight sharing, and the tower's conv plan."""

import dataclasses
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax import conv, energies
from siamax.errors import ConfigError
from siamax.model import Conv, ModelSpec, Siamese

TINY = ModelSpec(
    input_size=16, filters=(4, 8), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=16, init="lecun"
)


@pytest.fixture(scope="module")
def paper_params():
    return siamax.init(jax.random.key(0), "paper")


def test_paper_parameter_count():
    paper = jax.eval_shape(lambda: siamax.init(jax.random.key(0), "paper"))  # shapes: nothing computed
    assert siamax.param_count(paper.spec) == 38_951_745
    assert sum(x.size for x in jax.tree.leaves(paper)) == 38_951_745
    w = paper.weights
    shapes = {name: (layer["kernel"].shape, layer["bias"].shape) for name, layer in w.items()}
    assert shapes == {
        "conv1": ((10, 10, 1, 64), (64,)),
        "conv2": ((7, 7, 64, 128), (128,)),
        "conv3": ((4, 4, 128, 128), (128,)),
        "conv4": ((4, 4, 128, 256), (256,)),
        "fc": ((9216, 4096), (4096,)),
        "head": ((4096, 1), (1,)),
    }


@pytest.mark.slow  # a full-size model
def test_paper_initialisation_statistics(paper_params):
    w = paper_params.weights
    expected_std = {"conv1": 0.01, "conv2": 0.01, "conv3": 0.01, "conv4": 0.01, "fc": 0.2, "head": 0.2}
    for name, std in expected_std.items():
        k = np.asarray(w[name]["kernel"], np.float64)
        tol = 5 * std / np.sqrt(k.size)  # 5 standard errors of the mean
        assert abs(k.mean()) < tol, name
        assert abs(k.std() - std) < 0.05 * std, (name, k.std())
    biases = np.concatenate([np.asarray(w[n]["bias"]).ravel() for n in w if n != "head"])
    assert abs(biases.mean() - 0.5) < 0.001 and abs(biases.std() - 0.01) < 0.001
    assert abs(float(w["head"]["bias"][0]) - 0.5) < 0.05  # one sample of N(0.5, 0.01)


@pytest.mark.slow  # a full-size model
def test_paper_layer_output_shapes(paper_params):
    assert paper_params.spec.feature_shape == (6, 6, 256)
    e = siamax.embed(paper_params, jnp.zeros((2, 105, 105)))
    chex.assert_shape(e, (2, 4096))
    assert float(e.min()) >= 0.0 and float(e.max()) <= 1.0  # sigmoid embedding


def test_spec_validation():
    with pytest.raises(ValueError, match="one entry per conv layer"):
        ModelSpec(filters=(8, 8), kernels=(3,), pools=(True, True))
    with pytest.raises(ValueError, match="too small"):
        ModelSpec(input_size=8, kernels=(10, 7, 4, 4))
    with pytest.raises(ValueError, match="unknown model"):
        siamax.init(jax.random.key(0), "huge")
    assert ModelSpec.from_dict(TINY.to_dict()) == TINY


def test_conv_impl_validation():
    """conv_impl: one registry name or one per conv layer; refused at ModelSpec time with the valid list,
    and so is one that cannot run a layer (not deep inside tracing)."""
    with pytest.raises(ConfigError, match=re.escape(str(conv.IMPLS))):
        TINY.replace(conv_impl="cudnn")
    with pytest.raises(ConfigError, match=r"one per conv layer \(2\)"):
        TINY.replace(conv_impl=("xla", "xla", "xla"))
    with pytest.raises(ConfigError, match=r"'winograd' cannot run conv1 \(a 10x10 kernel on 1 input channels\)"):
        siamax.MODELS["paper"].replace(conv_impl="winograd")
    with pytest.raises(ConfigError, match="cannot run conv2.*single-channel"):
        siamax.MODELS["small"].replace(conv_impl="direct")
    per_layer = TINY.replace(conv_impl=["direct", "winograd"])  # a list (as JSON gives it) becomes a tuple
    assert per_layer.conv_impl == ("direct", "winograd") and hash(per_layer)
    assert ModelSpec.from_dict(json.loads(json.dumps(per_layer.to_dict()))) == per_layer


# Four layers: one input channel, 3x3, 4x4 and 2x2 kernels, pooled and not, SAME padding.
PLANNED = ModelSpec(
    input_size=16,
    filters=(4, 6, 8, 8),
    kernels=(3, 3, 4, 2),
    pools=(True, True, True, False),
    padding="SAME",
    fc_units=8,
    init="lecun",
)


def _weights(spec, seed=0):
    """He-scaled random weights in the tower's tree, drawn by NumPy (siamax.init's random ops take
    seconds to compile here; the parameters are the same whatever the implementations)."""
    rng, cin, tree = np.random.default_rng(seed), 1, {}
    for i, (f, k) in enumerate(zip(spec.filters, spec.kernels)):
        tree[f"conv{i + 1}"] = {
            "kernel": rng.normal(size=(k, k, cin, f)) * np.sqrt(2 / (k * k * cin)),
            "bias": rng.normal(size=f) * 0.1,
        }
        cin = f
    d = int(np.prod(spec.feature_shape))
    tree["fc"] = {"kernel": rng.normal(size=(d, spec.fc_units)) / np.sqrt(d), "bias": np.zeros(spec.fc_units)}
    tree["head"] = {"kernel": rng.normal(size=(spec.fc_units, 1)), "bias": np.zeros(1)}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _spy(monkeypatch):
    """Wrap every registry implementation so that each call is logged as (impl, "conv" or "block", tile)."""
    calls = []
    for name, impl in conv.REGISTRY.items():

        def logged(fn, kind, name=name):
            def run(*args):
                calls.append((name, kind, args[3] if kind == "conv" else None))
                return fn(*args)

            return run if fn is not None else None

        spied = dataclasses.replace(impl, conv=logged(impl.conv, "conv"), block=logged(impl.block, "block"))
        monkeypatch.setitem(conv.REGISTRY, name, spied)
    return calls


@pytest.mark.parametrize(
    "impls,ran",
    [
        (
            ("direct", "winograd", "s2d", "matmul"),
            [("direct", "block", None), ("winograd", "conv", 4), ("s2d", "block", None), ("matmul", "conv", None)],
        ),
        (
            ("s2d", "hybrid", "fft", "s2d"),  # s2d on the unpooled conv4: XLA's convolution, and the plan says so
            [("s2d", "block", None), ("hybrid", "conv", None), ("fft", "conv", None), ("xla", "conv", None)],
        ),
    ],
)
def test_tower_runs_the_plan(monkeypatch, impls, ran):
    """Per-layer choices: the tower calls exactly the planned implementation of each layer, and embeds
    as XLA's convolutions do (same parameters; each implementation's gradients: tests/test_layers.py)."""
    spec = PLANNED.replace(conv_impl=impls)
    plan = conv.plan(spec)
    assert [(p.impl, "block" if p.fused_pool else "conv", p.tile) for p in plan] == ran
    weights = _weights(spec)
    x = jnp.asarray(np.random.default_rng(1).random((3, 16, 16, 1)), jnp.float32)
    embed = lambda s: jax.jit(lambda w: Siamese(s).apply({"params": w}, x, method="embed"))
    calls = _spy(monkeypatch)
    got = embed(spec)(weights)
    assert calls == ran
    np.testing.assert_allclose(got, embed(spec.replace(conv_impl="xla"))(weights), rtol=1e-5, atol=1e-5)


def test_conv_module_applies_a_given_plan(monkeypatch):
    """A hand-made plan (Winograd's F(2x2) forced through it, not a global) is what the Conv module runs."""
    zeros = jax.nn.initializers.zeros
    layer = Conv(5, 3, conv.LayerPlan("conv1", "winograd", "SAME", tile=2), jnp.float32, zeros, zeros)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
    w = {"params": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 5)) / 5, jnp.float32), "bias": jnp.ones(5)}}
    calls = _spy(monkeypatch)
    y = jax.jit(layer.apply)(w, x)
    assert calls == [("winograd", "conv", 2)]
    ref = conv.conv2d(x, w["params"]["kernel"], "SAME", "xla") + w["params"]["bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_twin_shares_one_tree():
    """d loss / d W with one shared tree == the two branches' gradients (separate copies) summed."""
    params = siamax.init(jax.random.key(1), TINY)
    x1 = jax.random.uniform(jax.random.key(2), (3, 16, 16))
    x2 = jax.random.uniform(jax.random.key(3), (3, 16, 16))
    y = jnp.array([1.0, 0.0, 1.0])
    spec = params.spec

    def shared_loss(w):
        logits = siamax.pair_logits(params.replace(weights=w), x1, x2)
        return siamax.losses.pair_cross_entropy(logits, y)

    def two_copy_loss(w_a, w_b, w_head):
        e1 = siamax.embed(params.replace(weights=w_a), x1)
        e2 = siamax.embed(params.replace(weights=w_b), x2)
        logits = siamax.logits_from_embeddings(params.replace(weights=w_head), e1, e2)
        return siamax.losses.pair_cross_entropy(logits, y)

    w = params.weights
    g = jax.jit(jax.grad(shared_loss))(w)
    g_a, g_b, g_h = jax.jit(jax.grad(two_copy_loss, argnums=(0, 1, 2)))(w, w, w)
    for name in spec.layer_names[:-1]:  # tower layers: sum of both branches
        chex.assert_trees_all_close(g[name], jax.tree.map(jnp.add, g_a[name], g_b[name]), rtol=1e-5, atol=1e-7)
        assert float(jnp.abs(g_a[name]["kernel"]).sum()) > 0 and float(jnp.abs(g_b[name]["kernel"]).sum()) > 0
    chex.assert_trees_all_close(g["head"], g_h["head"], rtol=1e-5, atol=1e-7)


# Every registered model with its own energy; every energy on a plain tower, a residual one and the paper's.
@pytest.mark.parametrize(
    "model, energy",
    sorted(
        {(m, siamax.MODELS[m].energy) for m in siamax.MODELS}
        | {(m, e) for m in ("tiny", "resnet", "paper") for e in energies.ENERGIES}
    ),
)
def test_param_count_per_energy(model, energy):
    """param_count from the spec alone == the initialised tree (by shape: nothing is computed), per energy:
    Koch's head has D + 1 parameters, the calibrated euclidean / cosine heads two scalars."""
    spec = siamax.MODELS[model].replace(energy=energy)
    shapes = jax.eval_shape(lambda: siamax.init(jax.random.key(0), spec))
    assert siamax.param_count(spec) == sum(x.size for x in jax.tree.leaves(shapes))
    head = sum(x.size for x in jax.tree.leaves(shapes.weights["head"]))
    assert head == (spec.embedding_dim + 1 if energy == "weighted_l1" else 2)
    if model == "paper":
        assert siamax.param_count(spec) == 38_951_745 - (4096 + 1) + head


# ---------------------------------------------------------------------------------------------
# The model registry: every tower keeps the twin property; colour; specs written before issue 22.


def _registered(name):
    """The registered model, at a smaller input size where its layers allow (the twin property does not
    depend on the size; the 105x105 towers take seconds to compile here)."""
    spec = siamax.MODELS[name].replace(conv_impl="xla")  # the property is the implementations' too (plans: below)
    try:
        return spec.replace(input_size=min(spec.input_size, 35))
    except ValueError:
        return spec


# The unit suite checks the tiny model; the full suite every registered one (each compiles for seconds).
@pytest.mark.parametrize(
    "name", [n if n == "tiny" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(siamax.MODELS)]
)
def test_every_registered_model_is_a_twin(name):
    """One parameter tree (its top-level layers are the spec's), both images through the same tower by
    vmap (twin_logits == the head on each image's own embedding), a symmetric score, the shapes, and no
    statistics shared across a batch (an image's embedding does not depend on the others)."""
    from siamax import api

    spec = _registered(name)
    params = siamax.init(jax.random.key(0), spec)
    assert sum(x.size for x in jax.tree.leaves(params)) == siamax.param_count(spec)
    owners = {("conv" + k[4:]) if k.startswith("norm") else k for k in params.weights}
    assert owners == set(spec.layer_names)
    k1, k2 = jax.random.split(jax.random.key(1))
    x1 = jax.random.uniform(k1, siamax.input_shape(spec, 3))
    x2 = jax.random.uniform(k2, siamax.input_shape(spec, 3))
    e1, e2 = siamax.embed(params, x1), siamax.embed(params, x2)
    chex.assert_shape([e1, e2], (3, spec.embedding_dim))
    twin = jax.jit(api.twin_logits, static_argnums=0)(spec, params.weights, x1, x2)
    chex.assert_trees_all_close(twin, siamax.logits_from_embeddings(params, e1, e2), atol=1e-5)
    chex.assert_trees_all_close(siamax.score(params, x1, x2), siamax.score(params, x2, x1), atol=1e-6)
    chex.assert_shape(siamax.score(params, x1, x2), (3,))
    chex.assert_trees_all_close(siamax.embed(params, x1[:1]), e1[:1], atol=1e-4, rtol=1e-4)


def test_registered_model_sizes():
    """The presets of the issue: CPU-sized residual towers (a few hundred thousand parameters)."""
    counts = {name: siamax.param_count(spec) for name, spec in siamax.MODELS.items()}
    assert counts["paper"] == 38_951_745 and counts["small"] == 111_681
    assert 100_000 < counts["resnet"] < 500_000 and 100_000 < counts["resnet_attn"] < 500_000
    assert siamax.MODELS["resnet"].tower == "resnet" and siamax.MODELS["resnet_attn"].pooling == "attention"
    assert siamax.MODELS["resnet_attn"].embedding_dim == 128


def test_model_help_lists_every_model_with_its_parameter_count():
    from siamax import flags

    text = flags.models_help()
    for name, spec in siamax.MODELS.items():
        assert f"{name}: {siamax.param_count(spec):,} parameters" in text


def test_rgb_model_takes_colour():
    spec = TINY.replace(channels=3)
    params = siamax.init(jax.random.key(0), spec)
    assert params.weights["conv1"]["kernel"].shape == (3, 3, 3, 4)
    assert siamax.param_count(spec) == sum(x.size for x in jax.tree.leaves(params))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    chex.assert_shape(siamax.embed(params, x), (2, 16))
    assert siamax.score(params, x[0], x[1]).shape == ()  # one (S, S, 3) pair: a scalar
    assert not np.allclose(siamax.embed(params, x), siamax.embed(params, x[..., ::-1]))  # the colour counts
    with pytest.raises(ValueError, match=r"RGB model takes \(B, 16, 16, 3\)"):
        siamax.embed(params, x[..., 0])
    with pytest.raises(ValueError, match="colour"):
        siamax.embed(siamax.init(jax.random.key(0), TINY), x)  # a gray model refuses colour, as before
    with pytest.raises(ValueError, match="channels must be one of"):
        TINY.replace(channels=2)


def test_specs_written_before_the_new_fields_still_load():
    from siamax import checkpoint

    for name in ("paper", "small", "tiny"):
        old = {k: v for k, v in siamax.MODELS[name].to_dict().items() if k not in checkpoint.LATER_FIELDS}
        assert ModelSpec.from_dict(json.loads(json.dumps(old))) == siamax.MODELS[name]
    # ... and a model keeps its fingerprint: the new fields at their defaults are left out of it.
    params = siamax.init(jax.random.key(0), TINY)
    old_spec = {k: v for k, v in TINY.to_dict().items() if k not in checkpoint.LATER_FIELDS}
    old_spec.pop("conv_impl")
    assert checkpoint.fingerprint(params) != checkpoint.fingerprint(params.replace(spec=TINY.replace(channels=3)))
    import hashlib

    h = hashlib.sha256(json.dumps(old_spec, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params.weights)[0], key=lambda p: str(p[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    assert checkpoint.fingerprint(params) == h.hexdigest()


RESNET = ModelSpec(
    input_size=16,
    filters=(4, 8),
    kernels=(3, 3),
    pools=(True, True),
    padding="SAME",
    fc_units=0,
    norm="group",
    init="lecun",
    tower="resnet",
    pooling="attention",
    attention_heads=2,
)


def test_resnet_conv_plan():
    """conv.plan plans every convolution of the residual tower (stem + 2 per block); each implementation
    computes the same tower, and a per-layer conv_impl takes one name per convolution."""
    assert [name for name, *_ in RESNET.conv_layers] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [p.layer for p in conv.plan(RESNET, "cpu")] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert not any(p.block or p.pool for p in conv.plan(RESNET, "cpu"))  # pooling is on the residual stream
    assert RESNET.projections == (("proj4", 4, 8),)
    params = siamax.init(jax.random.key(0), RESNET)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16))
    e = siamax.embed(params, x)
    for impl in (("direct", "matmul", "xla", "winograd", "fft"),):
        other = params.replace(spec=RESNET.replace(conv_impl=impl))
        chex.assert_trees_all_close(siamax.embed(other, x), e, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"one per conv layer \(5\)"):
        RESNET.replace(conv_impl=("xla", "xla"))
    with pytest.raises(ValueError, match="resnet tower needs padding 'SAME'"):
        RESNET.replace(padding="VALID", kernels=(3, 3))
    with pytest.raises(ValueError, match="attention_heads"):
        RESNET.replace(attention_heads=3)
