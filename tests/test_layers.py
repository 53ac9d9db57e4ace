"""Every conv implementation equals XLA's convolution (forward and both gradients) to float tolerance;
the registry's plan resolves each layer once, as pinned below."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamax import conv
from siamax.conv import pooling, winograd
from siamax.errors import ConfigError
from siamax.model import MODELS

pytestmark = pytest.mark.slow  # every convolution implementation compiled against XLA's

CASES = [  # (H, Cin, k, Cout, padding)
    (20, 1, 5, 8, "VALID"),  # single channel, like conv1
    (21, 1, 10, 4, "VALID"),  # conv1's 10x10 kernel
    (12, 8, 3, 16, "SAME"),  # the small model's 3x3 SAME blocks
    (14, 32, 4, 8, "VALID"),  # FFT territory, like conv3
    (17, 32, 4, 8, "SAME"),  # odd size, SAME with an even kernel
    (16, 3, 7, 5, "VALID"),  # 7x7 like conv2
    (9, 6, 2, 3, "SAME"),
]


def _jgrad(f, argnums=0):
    # jitted: op-by-op dispatch of the unrolled transforms would dominate the test time.
    return jax.jit(jax.grad(lambda *a: f(*a), argnums))


def _fwd(impl, padding, tile=None):
    return jax.jit(lambda x, w: conv.conv2d(x, w, padding, impl, tile))


def _loss(impl, padding, tile=None):
    return lambda x, w: jnp.sum(jnp.sin(conv.conv2d(x, w, padding, impl, tile)))


# "auto" is one of these per layer (test_auto_rule, the pinned plans), so it is not compiled again here.
@pytest.mark.parametrize("impl", ["matmul", "fft", "hybrid"])
@pytest.mark.parametrize("h,cin,k,cout,padding", CASES)
def test_conv_impls_match_xla(impl, h, cin, k, cout, padding):
    kx, kw = jax.random.split(jax.random.key(h * 100 + k))
    x = jax.random.normal(kx, (3, h, h, cin))
    w = jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    ref = conv.conv2d(x, w, padding, "xla")
    got = _fwd(impl, padding)(x, w)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref).max()))
    gref = _jgrad(_loss("xla", padding), (0, 1))(x, w)
    ggot = _jgrad(_loss(impl, padding), (0, 1))(x, w)
    for a, b, name in zip(ggot, gref, ("d input", "d kernel")):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("impl", ["matmul", "fft", "hybrid"])
def test_conv_impls_under_jit_and_vmap(impl):
    """The tower vmaps the convs over the twin axis inside jit: the custom VJPs must survive it."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 12, 12, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def loss(w, impl):
        return jnp.sum(jax.vmap(lambda xi: conv.conv2d(xi, w, "VALID", impl))(x) ** 2)

    ref = jax.jit(jax.grad(loss), static_argnums=1)(w, "xla")
    got = jax.jit(jax.grad(loss), static_argnums=1)(w, impl)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))


def test_bfloat16_compute():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
    w = jax.random.normal(jax.random.key(1), (4, 4, 32, 8)) / 16
    ref = conv.conv2d(x, w, "VALID", "xla")
    for impl in ("xla", "matmul", "fft", "hybrid"):
        y = conv.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), "VALID", impl)
        assert y.dtype == jnp.bfloat16, impl
        np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05 * float(jnp.abs(ref).max()))


def _auto(h, cin, k, padding, backend, pooled=False):
    return conv.plan_layer("auto", "conv", k, (h, h, cin), padding, pooled, backend=backend).impl


def test_auto_rule():
    assert _auto(48, 64, 7, "VALID", "gpu") == "xla"
    assert _auto(48, 64, 7, "VALID", "cpu") == "fft"
    assert _auto(105, 1, 10, "VALID", "cpu") == "hybrid"
    assert _auto(14, 64, 3, "SAME", "cpu") == "winograd"
    assert _auto(14, 8, 3, "SAME", "cpu") == "xla"


def test_bad_args():
    x, w = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ConfigError, match="impl"):
        conv.conv2d(x, w, "VALID", "nope")
    with pytest.raises(ConfigError, match="tile"):
        conv.conv2d(x, w, "VALID", "fft", tile=4)
    with pytest.raises(ConfigError, match="tile"):
        conv.conv2d(x, w, "VALID", "winograd", tile=5)
    with pytest.raises(ValueError, match="padding"):
        conv.conv2d(x, w, "FULL", "xla")
    with pytest.raises(ValueError, match="kernel"):
        conv.conv2d(x, jnp.zeros((3, 3, 5, 4)), "VALID", "xla")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_matches_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(conv.max_pool_2x2(x), ref)


S2D_CASES = [  # (H, Cin, k, Cout, padding): odd and even conv outputs (floor pooling), both paddings
    (105, 1, 10, 4, "VALID"),  # the paper's conv1 shape (96x96 -> 48x48)
    (48, 3, 7, 5, "VALID"),  # conv2's kernel, odd conv output (42 -> 21)
    (21, 4, 4, 3, "VALID"),  # even kernel, odd conv output (18 -> 9)
    (13, 2, 3, 4, "SAME"),  # the small model's blocks: SAME, odd plane
    (12, 1, 4, 2, "SAME"),  # SAME with an even kernel
    (6, 2, 5, 3, "VALID"),  # conv output 2 -> one pooled pixel
]


def _block_ref(x, w, b, padding):
    return conv.max_pool_2x2(jax.nn.relu(conv.conv2d(x, w, padding, "xla") + b))


@pytest.mark.parametrize("h,cin,k,cout,padding", S2D_CASES)
def test_s2d_block_matches_conv_relu_pool(h, cin, k, cout, padding):
    """Space-to-depth computes the same block, values and all three gradients, on random inputs."""
    kx, kw, kb = jax.random.split(jax.random.key(h * 10 + k), 3)
    x = jax.random.normal(kx, (2, h, h, cin))
    w = jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    b = 0.1 * jax.random.normal(kb, (cout,))
    ref = _block_ref(x, w, b, padding)
    got = jax.jit(lambda x, w, b: conv.conv_relu_pool(x, w, b, padding, "s2d"))(x, w, b)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
    loss = lambda fn: lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b)))
    gref = _jgrad(loss(lambda x, w, b: _block_ref(x, w, b, padding)), (0, 1, 2))(x, w, b)
    ggot = _jgrad(loss(lambda x, w, b: conv.conv_relu_pool(x, w, b, padding, "s2d")), (0, 1, 2))(x, w, b)
    for a, r, name in zip(ggot, gref, ("d input", "d kernel", "d bias")):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5 * float(jnp.abs(r).max()), err_msg=name)


def test_s2d_choice_and_model_equivalence():
    """auto picks s2d only off CPU, for thin or large-kernel blocks; a model forced to s2d embeds
    exactly as the plain one (same parameters)."""
    assert _auto(105, 1, 10, "VALID", "cpu", pooled=True) != "s2d"
    assert _auto(105, 1, 10, "VALID", "gpu", pooled=True) == "s2d"  # paper conv1
    assert _auto(48, 64, 7, "VALID", "gpu", pooled=True) == "s2d"  # paper conv2: 1.31x the work
    assert _auto(21, 128, 4, "VALID", "gpu", pooled=True) == "xla"  # paper conv3: 2.25x
    assert _auto(17, 64, 3, "SAME", "gpu", pooled=True) == "xla"
    assert _auto(105, 1, 10, "VALID", "gpu") == "xla"  # not pooled: no block to compute by s2d
    import siamax

    spec = siamax.MODELS["tiny"].replace(padding="VALID", conv_impl="xla")
    params = siamax.init(jax.random.key(0), spec)
    x = jax.random.uniform(jax.random.key(1), (3, spec.input_size, spec.input_size))
    forced = siamax.Params(weights=params.weights, spec=spec.replace(conv_impl="s2d"))
    np.testing.assert_allclose(siamax.embed(forced, x), siamax.embed(params, x), rtol=1e-5, atol=1e-6)


WINOGRAD_CASES = [  # (H, Cin, Cout, padding): 3x3 kernels; odd/even planes, partial last tiles, both paddings
    (12, 8, 16, "SAME"),  # the small model's blocks
    (17, 16, 4, "SAME"),  # odd plane, like conv2: a partial last tile for every tile size
    (8, 3, 5, "SAME"),  # exact tiles, like conv3
    (4, 64, 8, "SAME"),  # one tile, like conv4
    (9, 5, 7, "VALID"),
    (10, 2, 3, "VALID"),
    (3, 4, 2, "VALID"),  # a single output pixel
]


# Every tile size on the odd plane (a partial last tile for each); the other shapes each with one tile size,
# so that every tile size meets both paddings.
WINOGRAD_GRID = [(t, *WINOGRAD_CASES[1]) for t in (2, 4, 6)]
WINOGRAD_GRID += [(t, *c) for t, c in zip((6, 4, 2, 4, 6, 2), WINOGRAD_CASES[:1] + WINOGRAD_CASES[2:])]


@pytest.mark.parametrize("tile,h,cin,cout,padding", WINOGRAD_GRID)
def test_winograd_matches_xla(tile, h, cin, cout, padding):
    """Winograd F(tile x tile, 3x3): forward and both gradients equal XLA's convolution."""
    kx, kw = jax.random.split(jax.random.key(h * 100 + cin))
    x = jax.random.normal(kx, (3, h, h, cin))
    w = jax.random.normal(kw, (3, 3, cin, cout)) / np.sqrt(9 * cin)
    ref = conv.conv2d(x, w, padding, "xla")
    got = _fwd("winograd", padding, tile)(x, w)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref).max()))
    gref = _jgrad(_loss("xla", padding), (0, 1))(x, w)
    ggot = _jgrad(_loss("winograd", padding, tile), (0, 1))(x, w)
    for a, b, name in zip(ggot, gref, ("d input", "d kernel")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * float(jnp.abs(b).max()), err_msg=name)


DIRECT_CASES = [  # (H, k, Cout, padding): single-channel inputs
    (35, 3, 8, "SAME"),  # the small model's conv1 (odd plane: floor pooling drops a row/column)
    (12, 3, 4, "VALID"),
    (11, 5, 3, "SAME"),
    (10, 2, 4, "VALID"),  # even kernel
    (8, 4, 3, "SAME"),  # even kernel, SAME
]


@pytest.mark.parametrize("h,k,cout,padding", DIRECT_CASES)
def test_direct_matches_xla(h, k, cout, padding):
    kx, kw, kb = jax.random.split(jax.random.key(h * 10 + k), 3)
    x = jax.random.normal(kx, (3, h, h, 1))
    w = jax.random.normal(kw, (k, k, 1, cout)) / k
    ref = conv.conv2d(x, w, padding, "xla")
    np.testing.assert_allclose(_fwd("direct", padding)(x, w), ref, rtol=1e-5, atol=1e-6 * float(jnp.abs(ref).max()))
    gref = _jgrad(_loss("xla", padding), (0, 1))(x, w)
    ggot = _jgrad(_loss("direct", padding), (0, 1))(x, w)
    for a, r, name in zip(ggot, gref, ("d input", "d kernel")):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5 * float(jnp.abs(r).max()), err_msg=name)
    # the fused block: conv + bias + ReLU + 2x2 max-pooling, values and all three gradients
    b = 0.1 * jax.random.normal(kb, (cout,))
    blk = lambda fn: lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b)))
    fused = jax.jit(lambda x, w, b: conv.conv_relu_pool(x, w, b, padding, "direct"))
    plain = lambda x, w, b: _block_ref(x, w, b, padding)
    ref = plain(x, w, b)
    assert fused(x, w, b).shape == ref.shape
    np.testing.assert_allclose(fused(x, w, b), ref, rtol=1e-5, atol=1e-6 * float(jnp.abs(ref).max()))
    gref = _jgrad(blk(plain), (0, 1, 2))(x, w, b)
    ggot = _jgrad(blk(fused), (0, 1, 2))(x, w, b)
    for a, r, name in zip(ggot, gref, ("d input", "d kernel", "d bias")):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5 * float(jnp.abs(r).max()), err_msg=name)


def test_direct_block_ties():
    """Tied window maxima share the gradient as in autodiff of max_pool_2x2 (blank images tie everywhere)."""
    x = jnp.zeros((2, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
    w = jnp.ones((3, 3, 1, 2)) * jnp.array([1.0, -1.0])
    b = jnp.array([0.5, 0.25])
    blk = lambda fn: lambda w, b: jnp.sum(fn(w, b) * jnp.arange(1.0, 33.0).reshape(1, 4, 4, 2))
    ref = _jgrad(blk(lambda w, b: _block_ref(x, w, b, "SAME")), (0, 1))(w, b)
    got = _jgrad(blk(lambda w, b: conv.conv_relu_pool(x, w, b, "SAME", "direct")), (0, 1))(w, b)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl,cin", [("winograd", 4), ("direct", 1)])
def test_new_impls_under_jit_and_vmap(impl, cin):
    """The tower vmaps over the twin axis inside jit: the custom VJPs must survive it."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 12, 12, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, 5))
    b = jax.random.normal(jax.random.key(2), (5,))

    def loss(w, b, impl):
        y = jax.vmap(lambda xi: conv.conv_relu_pool(xi, w, b, "SAME", impl))(x)
        return jnp.sum(y**2) + jnp.sum(jax.vmap(lambda xi: conv.conv2d(xi, w, "VALID", impl))(x) ** 2)

    ref = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(w, b, "xla")
    got = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(w, b, impl)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_new_impls_bad_args_and_bfloat16():
    with pytest.raises(ValueError, match="3x3"):
        conv.conv2d(jnp.zeros((1, 8, 8, 2)), jnp.zeros((5, 5, 2, 4)), "SAME", "winograd")
    with pytest.raises(ValueError, match="single-channel"):
        conv.conv2d(jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4)), "SAME", "direct")
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 8)) / 16
    ref = conv.conv2d(x, w, "SAME", "xla")
    y = conv.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), "SAME", "winograd")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_auto_rule_small_model():
    """The small model on CPU: conv1 (one channel, 3x3 on 35x35) direct, conv2-4 (3x3, 64 channels) Winograd."""
    assert _auto(35, 1, 3, "SAME", "cpu") == "direct"
    for h in (17, 8, 4):
        assert _auto(h, 64, 3, "SAME", "cpu") == "winograd"
        assert _auto(h, 64, 3, "SAME", "gpu") == "xla"
    assert _auto(9, 128, 4, "VALID", "cpu") == "xla"  # paper conv4


def test_winograd_tile_choice_and_matrices():
    """F(6x6) where it needs fewer products (the small model's 17x17 conv2), F(4x4) on 8x8 and 4x4."""
    assert [winograd.tile(h, h) for h in (17, 8, 4, 35, 12)] == [6, 4, 4, 6, 6]
    for m in (2, 4, 6):  # Toom-Cook matrices: y = A^T [(G g) * (B^T d)] is the correlation of d with g
        at, g, bt = winograd.matrices(m)
        d, w = np.random.default_rng(m).normal(size=(2, m + 2))
        np.testing.assert_allclose(at @ ((g @ w[:3]) * (bt @ d)), np.correlate(d, w[:3], "valid"), atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (3, 8, 6, 2)])
def test_masked_pool_gradient_matches_autodiff(shape):
    """The CPU pooled blocks' pooling VJP (mask saved by the forward) equals autodiff of max_pool_2x2,
    ties included (values on a coarse grid, zeros after ReLU), odd sizes dropping a row/column, under vmap."""
    x = jnp.round(2 * jax.random.normal(jax.random.key(shape[1]), (2,) + shape)) / 2
    wts = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    loss = lambda pool: lambda x: jnp.sum(jax.vmap(lambda xi: pool(jax.nn.relu(xi)))(x) * wts)
    np.testing.assert_array_equal(jax.vmap(pooling.masked_max_pool_2x2)(x), jax.vmap(conv.max_pool_2x2)(x))
    np.testing.assert_allclose(
        _jgrad(loss(pooling.masked_max_pool_2x2))(x), _jgrad(loss(conv.max_pool_2x2))(x), rtol=1e-6, atol=1e-6
    )


# What "auto" ran per layer before the registry (recorded from siamax/layers.py's choose_impl, prefers_s2d,
# conv_relu_pool and winograd_tile by tracing each preset): (impl, pool, tile) for conv1, conv2, ...
PINNED_PLANS = {
    ("paper", "cpu"): [
        ("hybrid", "masked", None),
        ("fft", "masked", None),
        ("fft", "masked", None),
        ("xla", None, None),
    ],
    ("paper", "gpu"): [("s2d", "fused", None), ("s2d", "fused", None), ("xla", "max", None), ("xla", None, None)],
    ("small", "cpu"): [("direct", "fused", None)] + [("winograd", "masked", m) for m in (6, 4, 4)],
    ("small", "gpu"): [("s2d", "fused", None)] + [("xla", "max", None)] * 3,
    ("reduced35", "cpu"): [
        ("direct", "fused", None),
        ("winograd", "masked", 4),
        ("winograd", None, 6),
        ("xla", None, None),
    ],
    ("reduced35", "gpu"): [("s2d", "fused", None), ("xla", "max", None), ("xla", None, None), ("xla", None, None)],
    ("tiny", "cpu"): [("direct", "fused", None), ("xla", "masked", None)],
    ("tiny", "gpu"): [("s2d", "fused", None), ("xla", "max", None)],
}


@pytest.mark.parametrize("model,backend", sorted(PINNED_PLANS))
def test_auto_plans_are_pinned(model, backend):
    """'auto' resolves each preset's layers as before the registry, on both backends; the plan is JSON."""
    spec = MODELS[model]
    plan = conv.plan(spec, backend)
    assert [(p.impl, p.pool, p.tile) for p in plan] == PINNED_PLANS[model, backend]
    assert [p.layer for p in plan] == list(spec.layer_names[: len(spec.filters)])
    assert all(p.block == pooled for p, pooled in zip(plan, spec.pools))  # no norm: every pooled layer is a block
    as_json = conv.plan_dict(spec, backend)
    assert json.loads(json.dumps(as_json)) == as_json
    assert [(d["layer"], d["impl"], d["fused_pool"], d.get("tile")) for d in as_json] == [
        (p.layer, p.impl, p.pool == "fused", p.tile) for p in plan
    ]


def test_plan_with_norm_and_forced_impls():
    """With a norm between conv and ReLU nothing is fused; s2d on a layer without pooling is XLA's, and says so."""
    normed = conv.plan(MODELS["small"].replace(norm="layer"), "cpu")
    assert [(p.impl, p.block, p.pool) for p in normed] == [("direct", False, "max")] + [("winograd", False, "max")] * 3
    forced = conv.plan(MODELS["paper"].replace(conv_impl="s2d"), "cpu")
    assert [(p.impl, p.pool) for p in forced] == [("s2d", "fused")] * 3 + [("xla", None)]
    mixed = conv.plan(MODELS["tiny"].replace(conv_impl=("matmul", "winograd")), "gpu")
    assert [(p.impl, p.pool, p.tile) for p in mixed] == [("matmul", "max", None), ("winograd", "max", 4)]


def test_plan_refuses_what_a_layer_cannot_take():
    with pytest.raises(ConfigError, match=r"'winograd' cannot run conv1 \(a 10x10 kernel.*3x3 kernels.*'fft'"):
        conv.plan_layer("winograd", "conv1", 10, (105, 105, 1))
    with pytest.raises(ConfigError, match="single-channel"):
        conv.plan_layer("direct", "conv2", 3, (17, 17, 64))
    with pytest.raises(ConfigError, match=r"expected one of \('auto', 'xla'"):
        conv.plan_layer("cudnn", "conv1", 3, (8, 8, 1))
    # hand-made plans are checked too: what apply would run must be what the plan says
    with pytest.raises(ConfigError, match="tile"):
        conv.LayerPlan("conv1", "winograd", "SAME")
    with pytest.raises(ConfigError, match=r"pool must be one of \('max', 'masked'\) for a pooled block"):
        conv.LayerPlan("conv1", "xla", block=True, pool="fused")
    with pytest.raises(ConfigError, match=r"pool must be one of \('fused',\)"):
        conv.LayerPlan("conv1", "direct", block=True, pool="max")
    with pytest.raises(ConfigError, match="only pooled blocks"):
        conv.LayerPlan("conv1", "s2d")
