"""siamax.score / embed / preprocess: maths, jit behaviour and input errors."""

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
        (np.zeros((2, 16, 16, 3)), np.zeros((2, 16, 16, 3)), ValueError, "single-channel"),
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
    with pytest.raises(TypeError, match="Params, a ModelSpec or a model name"):
        siamax.preprocess(42, np.zeros((2, 20, 20)))
