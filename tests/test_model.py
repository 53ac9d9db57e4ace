"""The paper's architecture and initialisation, and the twin's weight sharing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax.model import ModelSpec

TINY = ModelSpec(
    input_size=16, filters=(4, 8), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=16, init="lecun"
)


@pytest.fixture(scope="module")
def paper_params():
    return siamax.init(jax.random.key(0), "paper")


def test_paper_parameter_count(paper_params):
    assert siamax.param_count(paper_params.spec) == 38_951_745
    assert sum(x.size for x in jax.tree.leaves(paper_params)) == 38_951_745
    w = paper_params.weights
    shapes = {name: (layer["kernel"].shape, layer["bias"].shape) for name, layer in w.items()}
    assert shapes == {
        "conv1": ((10, 10, 1, 64), (64,)),
        "conv2": ((7, 7, 64, 128), (128,)),
        "conv3": ((4, 4, 128, 128), (128,)),
        "conv4": ((4, 4, 128, 256), (256,)),
        "fc": ((9216, 4096), (4096,)),
        "head": ((4096, 1), (1,)),
    }


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
