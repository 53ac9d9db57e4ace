"""siamax.score / embed / preprocess: maths, jit behaviour and input errors."""

import importlib.util
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax.model import ModelSpec

TINY = ModelSpec(
    input_size=16, filters=(4, 8), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=16, init="koch"
)


@pytest.fixture(scope="module")
def params():
    return siamax.init(jax.random.key(0), TINY)


@pytest.fixture(scope="module")
def images():
    k1, k2 = jax.random.split(jax.random.key(1))
    return jax.random.uniform(k1, (5, 16, 16)), jax.random.uniform(k2, (5, 16, 16))


def test_score_symmetric_bounded_finite(params, images):
    a, b = images
    p_ab, p_ba = siamax.score(params, a, b), siamax.score(params, b, a)
    chex.assert_shape(p_ab, (5,))
    chex.assert_trees_all_close(p_ab, p_ba, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(p_ab))) and bool(jnp.all((p_ab >= 0) & (p_ab <= 1)))
    assert float(jnp.std(p_ab)) > 0  # not a constant


def test_score_from_embeddings_equals_score(params, images):
    a, b = images
    ea, eb = siamax.embed(params, a), siamax.embed(params, b)
    chex.assert_shape(ea, (5, 16))
    chex.assert_trees_all_close(siamax.score_embeddings(params, ea, eb), siamax.score(params, a, b), rtol=1e-6)


def test_input_forms_agree(params, images):
    a, b = images
    p = siamax.score(params, a, b)
    chex.assert_trees_all_close(siamax.score(params, a[..., None], b[..., None]), p)
    single = siamax.score(params, a[0], b[0])
    assert single.shape == () and np.isclose(float(single), float(p[0]), rtol=1e-6)
    binary = a > 0.5
    chex.assert_trees_all_close(siamax.score(params, binary, b), siamax.score(params, binary.astype(jnp.float32), b))
    as_uint8 = (binary * 255).astype(jnp.uint8)
    chex.assert_trees_all_close(siamax.score(params, as_uint8, b), siamax.score(params, binary, b), rtol=1e-6)


def test_jit_traces_once(params, images):
    a, b = images

    @jax.jit
    @chex.assert_max_traces(n=1)
    def scored(p, x1, x2):
        return siamax.score(p, x1, x2)

    for i in range(3):
        scored(params, a + 0.01 * i, b)
    # And the public function itself, jitted by the caller, inside vmap and grad.
    jax.jit(siamax.score)(params, a, b)
    g = jax.grad(lambda w: siamax.score(params.replace(weights=w), a, b).sum())(params.weights)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    per_pair = jax.vmap(lambda x, y: siamax.score(params, x, y))(a, b)
    chex.assert_trees_all_close(per_pair, siamax.score(params, a, b), rtol=1e-5)


@pytest.mark.parametrize(
    "x1, x2, error, match",
    [
        (np.zeros((4, 16, 16)), np.zeros((3, 16, 16)), ValueError, "different numbers"),
        (np.zeros((4, 28, 28)), np.zeros((4, 28, 28)), ValueError, "16x16.*preprocess"),
        (np.zeros((2, 4, 16, 16)), np.zeros((2, 4, 16, 16)), ValueError, "shape"),
        (np.zeros((16,)), np.zeros((16,)), ValueError, "shape"),
        (np.zeros((2, 16, 16, 2)), np.zeros((2, 16, 16, 2)), ValueError, "single-channel"),
        (np.zeros((0, 16, 16)), np.zeros((0, 16, 16)), ValueError, "empty"),
        (np.array([["a"] * 16] * 16), np.array([["a"] * 16] * 16), TypeError, "bool, uint8 or float"),
        (np.zeros((2, 16, 16), np.complex64), np.zeros((2, 16, 16)), TypeError, "bool, uint8 or float"),
        (np.zeros((2, 16, 16), np.int32), np.zeros((2, 16, 16)), TypeError, "uint8"),
    ],
)
def test_bad_inputs_raise_helpfully(params, x1, x2, error, match):
    with pytest.raises(error, match=match):
        siamax.score(params, x1, x2)


def test_bad_embeddings_raise(params):
    with pytest.raises(ValueError, match="embeddings"):
        siamax.score_embeddings(params, jnp.zeros((2, 7)), jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="different numbers"):
        siamax.score_embeddings(params, jnp.zeros((2, 16)), jnp.zeros((3, 16)))


def test_preprocess_resizes_and_inverts(params):
    raw = np.ones((2, 105, 105), bool)  # Omniglot convention: True = paper
    raw[:, 40:60, 45:65] = False  # a dark blob
    x = siamax.preprocess(params, raw, ink="dark")
    chex.assert_shape(x, (2, 16, 16))
    assert x.dtype == jnp.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x[:, 0, 0].max()) == 0.0 and float(x[0, 7, 8]) > 0.5  # paper -> 0, ink -> high
    light = siamax.preprocess(params, (~raw).astype(np.uint8) * 255, ink="light")
    chex.assert_trees_all_close(light, x, atol=1e-6)
    # Non-square: padded with paper, not stretched.
    wide = siamax.preprocess(params, np.zeros((8, 32), np.float32) + 1.0, ink="dark")
    chex.assert_shape(wide, (1, 16, 16))
    siamax.score(params, x, x)  # the output is exactly what score takes


def test_bool_images_with_nonstandard_true_bytes(params):
    """numpy bools stored as byte 255 (as in Omniglot's npz) must still mean exactly 1.0, under jit too."""
    raw = np.random.default_rng(0).random((2, 16, 16)) < 0.5
    odd = (raw.view(np.uint8) * 255).view(bool)
    expected = siamax.preprocess(params, raw, ink="dark")
    got = jax.jit(lambda x: siamax.preprocess(params, x, ink="dark"))(odd)
    chex.assert_trees_all_close(got, expected, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(siamax.score)(params, odd, odd), siamax.score(params, raw, raw), rtol=1e-6)


def test_preprocess_bad_input(params):
    with pytest.raises(ValueError, match="ink"):
        siamax.preprocess(params, np.zeros((2, 20, 20)), ink="black")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        siamax.preprocess(params, np.full((2, 20, 20), 255.0))
    with pytest.raises(ValueError, match="empty"):
        siamax.preprocess(params, np.zeros((0, 20, 20)))
    with pytest.raises(TypeError, match=r"siamax\.Params .*, a ModelSpec or a model name; got an int"):
        siamax.preprocess(42, np.zeros((2, 20, 20)))


# ---- Value checks (eager only), params types, colour and 16-bit images.

BAD_VALUES = [
    # (what goes into a [0, 1] image, words the error must contain)
    (np.nan, r"holds 1 NaN \(of its \d+ values\)"),
    (np.inf, r"1 \+inf"),
    (-np.inf, "1 -inf"),
    (200.0, r"got values in \[0\.\d+, 200\]: .*divide by 255, or pass them as uint8"),
    (1.0 + 1e-6, r"must lie in \[0, 1\].*np\.clip"),
    (-1e-6, r"must lie in \[0, 1\].*np\.clip"),
]
KINDS = {"numpy": np.asarray, "jax": jnp.asarray}  # the two code paths of the eager check


def _bad(shape, value, kind):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    x.flat[7] = value
    return KINDS[kind](x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value, words", BAD_VALUES)
def test_bad_image_values_raise_eagerly(params, value, words, kind):
    good = np.zeros((2, 16, 16), np.float32)
    bad = _bad((2, 16, 16), value, kind)
    for call in (
        lambda: siamax.score(params, bad, good),
        lambda: siamax.score(params, good[0], bad[0]),  # a single pair
        lambda: siamax.pair_logits(params, good, bad),
        lambda: siamax.embed(params, bad),
        lambda: siamax.preprocess(params, bad),
        lambda: siamax.preprocess(params, _bad((20, 30, 3), value, kind)),
    ):
        with pytest.raises(ValueError, match=words):
            call()


def test_range_message_names_the_fix(params):
    with pytest.raises(ValueError, match=r"16-bit intensities: divide by 65535, or pass them as uint16"):
        siamax.preprocess(params, np.full((20, 20), 4000.0))
    with pytest.raises(ValueError, match=r"16-bit intensities: divide by 65535\.$"):
        siamax.score(params, np.full((16, 16), 4000.0), np.zeros((16, 16)))  # score takes no uint16
    with pytest.raises(ValueError, match=r"\[-1, 1\] scaled images: pass \(x \+ 1\) / 2"):
        siamax.embed(params, np.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16))
    with pytest.raises(
        ValueError, match=r"x holds 2 NaN, 1 \+inf \(of its 512 values\); the finite ones span \[0, 0\]"
    ):
        x = np.zeros((2, 16, 16))
        x[0, 0, :2], x[1, 3, 3] = np.nan, np.inf
        siamax.embed(params, x)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_every_float_dtype_is_checked(params, dtype, kind):
    bad = KINDS[kind](np.full((2, 16, 16), np.nan).astype(dtype))
    with pytest.raises(ValueError, match=r"holds 512 NaN \(of its 512 values\)\. Images must be finite"):
        siamax.embed(params, bad)
    with pytest.raises(ValueError, match="divide by 255"):
        siamax.preprocess(params, KINDS[kind](np.full((20, 20), 100.0).astype(dtype)))
    with pytest.raises(ValueError, match="e1 holds 32 NaN"):
        siamax.score_embeddings(params, bad[:, 0], bad[:, 0])
    siamax.embed(params, KINDS[kind](np.ones((2, 16, 16), dtype)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_bad_embedding_values_raise_eagerly(params, value, kind):
    good = np.zeros((3, 16), np.float32)
    bad = _bad((3, 16), value, kind)
    with pytest.raises(ValueError, match=rf"e2 holds 1 {'NaN' if np.isnan(value) else re.escape(f'{value:+}')}"):
        siamax.score_embeddings(params, good, bad)
    with pytest.raises(ValueError, match="Embeddings must be finite"):
        siamax.logits_from_embeddings(params, bad, good)
    siamax.score_embeddings(params, good - 5.0, good + 1e6)  # embeddings have no range


def test_under_a_trace_only_static_checks_run(params):
    """Inside jit / vmap / grad nothing looks at values (no host sync): NaN in, NaN out, no error."""
    bad = _bad((2, 16, 16), np.nan, "jax")
    emb = _bad((2, 16), np.nan, "jax")
    outputs = [
        jax.jit(siamax.score)(params, bad, bad),
        jax.jit(siamax.pair_logits)(params, bad, bad),
        jax.jit(siamax.embed)(params, bad),
        jax.jit(siamax.score_embeddings)(params, emb, emb),
        jax.jit(siamax.logits_from_embeddings)(params, emb, emb),
        jax.jit(siamax.preprocess, static_argnums=0)(TINY, bad),
        jax.vmap(lambda x: siamax.score(params, x, x))(bad),
        jax.grad(lambda x: siamax.score(params, x, x).sum())(bad),
    ]
    assert all(bool(jnp.isnan(y).any()) for y in outputs)
    jax.jit(siamax.score)(params, bad * 255, bad * 255)  # a range error is not caught either
    # No host callback hides in the compiled program.
    hlo = jax.jit(siamax.score).lower(params, bad, bad).as_text()
    assert "callback" not in hlo.lower()
    # Static checks still apply under the trace.
    with pytest.raises(ValueError, match="16x16"):
        jax.jit(siamax.score)(params, jnp.zeros((2, 20, 20)), jnp.zeros((2, 20, 20)))
    with pytest.raises(TypeError, match=r"siamax\.Params"):
        jax.jit(lambda x: siamax.embed({"w": 1}, x))(bad)


def test_constants_are_checked_at_trace_time(params):
    """Arrays that are concrete while a jitted function traces (closed-over constants) are checked."""
    for bad in (_bad((2, 16, 16), np.nan, "numpy"), _bad((2, 16, 16), np.nan, "jax")):
        with pytest.raises(ValueError, match="NaN"):
            jax.jit(lambda p, bad=bad: siamax.score(p, bad, bad))(params)
    bad = _bad((2, 16, 16), 255.0, "jax")
    with pytest.raises(ValueError, match="divide by 255"):
        jax.grad(lambda w: siamax.score(params.replace(weights=w), bad, bad).sum())(params.weights)


@pytest.mark.parametrize("wrong, words", [({"w": 1}, "got a dict"), (None, "got None"), ("paper", "got the string")])
def test_params_must_be_params(params, images, wrong, words):
    a, b = images
    e = jnp.zeros((2, 16))
    for fn, args in (
        (siamax.score, (a, b)),
        (siamax.pair_logits, (a, b)),
        (siamax.embed, (a,)),
        (siamax.score_embeddings, (e, e)),
        (siamax.logits_from_embeddings, (e, e)),
    ):
        message = rf"{fn.__name__}: params must be siamax\.Params \(from siamax\.init.*siamax\.load.*; {words}"
        with pytest.raises(TypeError, match=message):
            fn(wrong, *args)
    with pytest.raises(TypeError, match=r"its \.params is a siamax\.Params"):
        siamax.score(type("TrainState", (), {"params": params})(), a, b)
    for wrong in ({"w": 1}, None, 3.5):
        with pytest.raises(TypeError, match=r"preprocess: expected siamax\.Params"):
            siamax.preprocess(wrong, np.zeros((20, 20)))
    chex.assert_trees_all_close(siamax.preprocess("tiny", np.ones((20, 20))), jnp.zeros((1, 28, 28)))


def _luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("ink", ["dark", "light"])
def test_colour_images_follow_the_documented_formula(params, dtype, ink):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 16, 16, 4)).astype(np.uint8)  # at the model's size: no resize
    raw[:, 0, 0] = [255, 255, 255, 255] if ink == "dark" else [0, 0, 0, 255]  # opaque paper
    raw[:, 0, 1, 3] = 0  # transparent: paper, whatever its colour
    x = raw if dtype == np.uint8 else (raw / 255.0).astype(np.float32)
    rgba = raw / 255.0
    paper = 1.0 if ink == "dark" else 0.0

    def ink_of(gray):
        return 1.0 - gray if ink == "dark" else gray

    want_rgb = ink_of(_luma(rgba[..., :3]))
    over_paper = rgba[..., 3:] * rgba[..., :3] + (1 - rgba[..., 3:]) * paper  # alpha compositing
    want_rgba = ink_of(_luma(over_paper))
    np.testing.assert_allclose(siamax.preprocess(params, x[..., :3], ink=ink), want_rgb, atol=1e-6)
    got = siamax.preprocess(params, x, ink=ink)
    np.testing.assert_allclose(got, want_rgba, atol=1e-6)
    assert float(got[:, 0, 0].max()) == 0.0 and float(got[:, 0, 1].max()) == 0.0  # exactly paper
    # One (H, W, C) image; and at another size, the same as resizing the hand-made gray image.
    np.testing.assert_allclose(siamax.preprocess(params, x[0], ink=ink), want_rgba[:1], atol=1e-6)
    big = np.repeat(np.repeat(x, 3, axis=1), 2, axis=2)  # 48 x 32, padded and resized
    big_gray = np.repeat(np.repeat(over_paper, 3, axis=1), 2, axis=2)
    np.testing.assert_allclose(
        siamax.preprocess(params, big, ink=ink), siamax.preprocess(params, _luma(big_gray), ink=ink), atol=1e-5
    )


def test_uint16_in_preprocess_only(params):
    raw = np.random.default_rng(2).integers(0, 256, (2, 20, 24)).astype(np.uint8)
    want = siamax.preprocess(params, raw)
    chex.assert_trees_all_close(siamax.preprocess(params, raw.astype(np.uint16) * 257), want, atol=1e-6)
    rgb = np.stack([raw] * 3, axis=-1).astype(np.uint16) * 257
    chex.assert_trees_all_close(siamax.preprocess(params, rgb), want, atol=1e-5)
    for dtype in (np.int32, np.uint32, np.int16):
        with pytest.raises(TypeError, match=r"uint8 \(0..255\) or uint16 \(0..65535\)"):
            siamax.preprocess(params, raw.astype(dtype))
    with pytest.raises(TypeError, match=r"uint8 \(0..255\); got uint16.*siamax\.preprocess also takes uint16"):
        siamax.score(params, np.zeros((2, 16, 16), np.uint16), np.zeros((2, 16, 16)))


@pytest.mark.parametrize(
    "shape, out_or_words",
    [
        ((20, 20), (1, 16, 16)),
        ((3, 20, 20), (3, 16, 16)),  # a gray batch
        ((20, 20, 1), (1, 16, 16)),
        ((20, 20, 3), (1, 16, 16)),  # one RGB image, not 20 images 3 pixels wide
        ((20, 20, 4), (1, 16, 16)),
        ((2, 20, 20, 1), (2, 16, 16)),
        ((2, 20, 20, 3), (2, 16, 16)),
        ((2, 20, 3), "read as 1 image.*2x20 pixels with 3 channel.*at least 5x5"),
        ((20, 4), "at least 5x5"),
        ((2, 20, 20, 2), "2 channels; expected .*C = 1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"),
        ((2, 2, 20, 20, 1), "images has shape"),
        ((0, 20, 20, 3), "empty"),
    ],
)
def test_raw_layout_rule(params, shape, out_or_words):
    x = np.zeros(shape, np.float32)
    if isinstance(out_or_words, tuple):
        chex.assert_shape(siamax.preprocess(params, x), out_or_words)
    else:
        with pytest.raises(ValueError, match=out_or_words):
            siamax.preprocess(params, x)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 16, 16, 4), (16, 16, 3)])
def test_score_and_embed_refuse_colour(params, shape):
    x = np.zeros(shape, np.uint8)
    words = r"looks like RGBA? colour images; this model takes grayscale .*siamax\.preprocess\(params, images\)"
    with pytest.raises(ValueError, match=words):
        siamax.score(params, x, x)
    with pytest.raises(ValueError, match=words):
        siamax.embed(params, x)


def test_checks_benchmark_runs(tmp_path):
    """benchmarks/checks.py (the eager checks' cost) on a tiny model: every figure is there and positive."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "checks.py")
    spec = importlib.util.spec_from_file_location("siamax_checks_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure(TINY, batch_size=2, repeats=2, min_time=0.0)
    assert r["batch_size"] == 2 and r["repeats"] == 2 and set(r["inputs"]) == {"numpy", "jax"}
    for f in r["inputs"].values():
        assert set(f) == {"eager_s", "jit_s", "checks_s", "ratio", "ratio_range", "checks_fraction"}
        assert min(f["eager_s"], f["jit_s"], f["checks_s"], f["ratio"]) > 0
        assert f["ratio_range"][0] <= f["ratio"] <= f["ratio_range"][1]


def test_preprocess_keeps_colour_for_an_rgb_model():
    """One route: preprocess gives an RGB model (B, S, S, 3) (dark ink inverts each channel, gray
    becomes R = G = B), a gray model its luma as before."""
    rgb_spec = siamax.MODELS["tiny"].replace(channels=3)
    img = np.zeros((2, 40, 40, 3), np.uint8)
    img[:, 10:30, 10:30] = (200, 40, 10)
    x = siamax.preprocess(rgb_spec, img, ink="light")
    chex.assert_shape(x, (2, 28, 28, 3))
    np.testing.assert_allclose(x[0, 14, 14], np.array([200, 40, 10]) / 255, atol=1e-5)
    inverted = siamax.preprocess(rgb_spec, 255 - img, ink="dark")
    np.testing.assert_allclose(inverted, x, atol=1e-5)
    gray = siamax.preprocess(rgb_spec, img[..., 0], ink="light")
    np.testing.assert_allclose(gray, jnp.repeat(gray[..., :1], 3, axis=-1))
    luma = siamax.preprocess("tiny", img, ink="light")
    chex.assert_shape(luma, (2, 28, 28))
    np.testing.assert_allclose(luma[0, 14, 14], (299 * 200 + 587 * 40 + 114 * 10) / 1000 / 255, atol=1e-5)
    framed = siamax.preprocess(rgb_spec.replace(ink_frame=0.8), img, ink="light")
    chex.assert_shape(framed, (2, 28, 28, 3))
    params = siamax.init(jax.random.key(0), rgb_spec)
    assert siamax.score(params, x, x).shape == (2,)
