"""The energies: distances and logits against NumPy, pairwise forms against one-pair forms, Koch's head
unchanged, and for every energy a score that is a symmetric probability, equal from embeddings. For
the energies of search (euclidean, cosine), an item is its own best match whatever the head; not so
for weighted_l1 with an unconstrained head."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax import energies
from siamax.model import ModelSpec

SPEC = ModelSpec(
    input_size=16, filters=(4,), kernels=(3,), pools=(True,), padding="SAME", fc_units=8, init="lecun", conv_impl="xla"
)


def _embeddings(n=7, d=6, seed=0):
    e = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    e[3] = e[1]  # a pair at distance 0
    return jnp.asarray(e)


def _head(energy, d=6, seed=1):
    rng = np.random.default_rng(seed)
    if energy == "weighted_l1":
        return {"kernel": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32), "bias": jnp.asarray([0.3], jnp.float32)}
    return {"scale": jnp.asarray(-0.7, jnp.float32), "bias": jnp.asarray(0.4, jnp.float32)}  # slope softplus(-0.7)


def _np_distance(energy, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if energy == "weighted_l1":
        return np.abs(a - b).mean()
    if energy == "euclidean":
        return np.sqrt(((a - b) ** 2).sum())
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _np_logit(energy, head, a, b):
    if energy == "weighted_l1":
        return float(
            np.abs(np.asarray(a, np.float64) - b) @ np.asarray(head["kernel"], np.float64)[:, 0] + head["bias"][0]
        )
    slope = np.log1p(np.exp(float(head["scale"])))
    return float(head["bias"]) - slope * _np_distance(energy, a, b)


@pytest.mark.parametrize("energy", energies.ENERGIES)
def test_distance_and_logit_match_numpy_and_pairwise_matches_one_pair(energy):
    e, head, E = _embeddings(), _head(energy), energies.get(energy)
    n = e.shape[0]
    i, j = np.triu_indices(n, 1)
    d = E.distance(e[i], e[j])
    ref = [_np_distance(energy, e[a], e[b]) for a, b in zip(i, j)]
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-6)
    logits = E.logit(head, e[i], e[j])
    np.testing.assert_allclose(
        logits, [_np_logit(energy, head, e[a], e[b]) for a, b in zip(i, j)], rtol=1e-5, atol=1e-5
    )
    assert float(d[list(zip(i, j)).index((1, 3))]) == 0.0 and bool(jnp.all(d >= 0))
    # The (B, B) forms: symmetric, 0 on the diagonal, and the one-pair values off it (the matrix
    # product of euclidean / cosine rounds differently from the difference: a looser atol).
    dp = E.pairwise_distance(e)
    lp = E.pairwise_logits(head, e)
    np.testing.assert_allclose(dp, dp.T, atol=1e-6)
    np.testing.assert_array_equal(np.diag(dp), 0.0)
    np.testing.assert_allclose(dp[i, j], d, rtol=1e-5, atol=1e-4 if energy == "euclidean" else 1e-6)
    np.testing.assert_allclose(lp[i, j], logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lp, lp.T, rtol=1e-6, atol=1e-6)
    # A query block against a gallery block: the one-pair logits, by broadcasting.
    np.testing.assert_allclose(E.block_logits(head, e[:3], e)[i[i < 3], j[i < 3]], logits[i < 3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weighted_l1_is_koch_dense_head_bit_for_bit(dtype):
    """Models trained before energies existed score exactly as they did: nn.Dense(1) on |e1 - e2|."""
    e1, e2 = _embeddings(seed=2), _embeddings(seed=3)
    head = _head("weighted_l1")
    dense = nn.Dense(1, dtype=jnp.dtype(dtype)).apply({"params": head}, jnp.abs(e1 - e2))[..., 0].astype(jnp.float32)
    koch = energies.get("weighted_l1")
    got = koch.logit(head, e1, e2, jnp.dtype(dtype))
    np.testing.assert_array_equal(jax.jit(koch.logit, static_argnums=3)(head, e1, e2, jnp.dtype(dtype)), got)
    np.testing.assert_array_equal(got, dense)
    b = e1.shape[0]
    flat = nn.Dense(1).apply({"params": head}, jnp.abs(jnp.repeat(e1, b, 0) - jnp.tile(e1, (b, 1))))[:, 0]
    np.testing.assert_array_equal(koch.pairwise_logits(head, e1), flat.reshape(b, b))


@pytest.mark.parametrize("energy", energies.ENERGIES)
def test_finite_gradients_at_identical_and_zero_embeddings(energy):
    e = _embeddings().at[5].set(0.0)  # rows 1 and 3 identical (d = 0); row 5 a zero embedding
    head, E = _head(energy), energies.get(energy)
    one_pair = lambda e: jnp.sum(E.logit(head, e, e[::-1]) + E.distance(e, e))  # noqa: E731
    pairwise = lambda e: jnp.sum(E.pairwise_logits(head, e) + E.pairwise_distance(e))  # noqa: E731
    for f in (one_pair, pairwise):
        g = jax.jit(jax.grad(f))(e)
        assert bool(jnp.all(jnp.isfinite(g))), (energy, f)
    # At d = 0 the distance's gradient is 0 (euclidean's sqrt would give 0 / 0 there).
    g = jax.jit(jax.grad(lambda a: E.distance(a, e[1:2])[0]))(e[1:2])
    assert bool(jnp.all(jnp.isfinite(g)))
    if energy == "euclidean":
        np.testing.assert_array_equal(g, 0.0)


@pytest.fixture(scope="module", params=energies.ENERGIES)
def params(request):
    params = siamax.init(jax.random.key(0), SPEC.replace(energy=request.param))
    if request.param != "weighted_l1":  # away from the initial head, so that the test sees the calibration
        params = params.replace(weights={**params.weights, "head": _head(request.param)})
    return params


def test_score_is_a_symmetric_probability_equal_from_embeddings(params):
    rng = np.random.default_rng(0)
    x1, x2 = (jnp.asarray(rng.random((6, 16, 16)) < 0.3, jnp.float32) for _ in range(2))
    x2 = x2.at[0].set(x1[0])  # an identical pair
    p = siamax.score(params, x1, x2)
    assert p.shape == (6,) and bool(jnp.all((p >= 0) & (p <= 1)))
    np.testing.assert_allclose(siamax.score(params, x2, x1), p, rtol=1e-6, atol=1e-7)
    e1, e2 = siamax.embed(params, x1), siamax.embed(params, x2)
    np.testing.assert_allclose(siamax.score_embeddings(params, e1, e2), p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.nn.sigmoid(siamax.pair_logits(params, x1, x2)), p, rtol=1e-6, atol=1e-7)
    if params.spec.energy != "weighted_l1":  # the calibrated heads: identical images -> the highest logit, b
        np.testing.assert_allclose(siamax.pair_logits(params, x1[:1], x1[:1]), [0.4], rtol=1e-6)


def test_heads_have_the_energy_parameters_and_counts(params):
    spec = params.spec
    shapes = jax.tree.map(jnp.shape, params.weights["head"])
    assert shapes == energies.get(spec.energy).head_shapes(spec.embedding_dim)
    assert siamax.param_count(spec) == sum(x.size for x in jax.tree.leaves(params.weights))
    if spec.energy != "weighted_l1":
        fresh = siamax.init(jax.random.key(1), spec).weights["head"]
        # Starts at logit = 1 - d: slope softplus(scale) = 1.
        np.testing.assert_allclose([jax.nn.softplus(fresh["scale"]), fresh["bias"]], [1.0, 1.0], rtol=1e-6)


def test_unknown_energy_refused_with_the_valid_list():
    names = re.escape(str(("weighted_l1", "euclidean", "cosine")))
    assert tuple(energies.ENERGIES) == ("weighted_l1", "euclidean", "cosine")
    with pytest.raises(ValueError, match=names):
        SPEC.replace(energy="manhattan")
    for bad in ("manhattan", ["cosine"], None):
        with pytest.raises(ValueError, match=names):
            energies.get(bad)


def test_energies_are_small_equal_objects():
    for name, energy in energies.ENERGIES.items():
        assert energies.get(name) is energy and energies.get(energy) is energy and energy.name == name
        assert energy == type(energy)() and hash(energy) == hash(type(energy)())  # a static jit argument
        assert energy.matmul == (name != "weighted_l1")
    assert {n: e.default_margin for n, e in energies.ENERGIES.items()} == {
        "weighted_l1": 0.5,
        "euclidean": 1.0,
        "cosine": 0.4,
    }
    with pytest.raises(TypeError):
        energies.ENERGIES["manhattan"] = energies.get("cosine")  # read-only


# ---- An item is its own best match: the property search relies on.


def _random_head(energy, d, rng):
    if energy == "weighted_l1":
        return {"kernel": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32), "bias": jnp.asarray(rng.normal(size=1))}
    # scale of any sign (softplus keeps the slope positive), bias of any sign and size (sigmoid saturates)
    scale, bias = rng.normal(size=2) * np.array([3.0, 5.0])
    return {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}


def _self_params(energy, head, seed=0):
    params = siamax.init(jax.random.key(seed), SPEC.replace(energy=energy))
    return params.replace(weights={**params.weights, "head": head})


@pytest.mark.parametrize("energy", ["euclidean", "cosine"])
def test_an_item_is_its_own_best_match_whatever_the_head(energy):
    """euclidean and cosine: logit = b - softplus(a) d is decreasing in d, and d(x, x) = 0 <= d(x, y),
    so p(x, x) >= p(x, y) for every head; and a search for an exact copy of a gallery item finds it first."""
    from siamax.index import Index

    E, d = energies.get(energy), SPEC.embedding_dim
    scales = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(40, d)).astype(np.float32)
        if seed % 2:
            x = np.maximum(x, 0)  # ReLU-like features, as the towers give
        head = _random_head(energy, d, rng)
        p = np.asarray(jax.nn.sigmoid(E.block_logits(head, jnp.asarray(x), jnp.asarray(x))))
        assert (np.diag(p)[:, None] >= p).all(), (energy, seed, head)
        scales.append(float(head["scale"]))
        params = _self_params(energy, head, seed)
        np.testing.assert_allclose(siamax.score_embeddings(params, x, x), np.diag(p), rtol=1e-6)
        index = Index.build(params, x, [str(i) for i in range(len(x))])
        for rows in (np.arange(len(x)), [0], [7]):  # a batch, and single queries (the bfloat16 pre-pass)
            scores, ids = index.search(x[rows], k=3)
            np.testing.assert_array_equal(ids[:, 0], rows)
            np.testing.assert_array_equal(scores[:, 0], scores.max(axis=1))
    assert min(scales) < 0 < max(scales)  # heads of both signs of scale were drawn


def test_weighted_l1_with_a_positive_weight_prefers_another_item():
    """Koch's alpha . |x - y| + b with a positive alpha_j rewards a difference: p(x, x) = sigmoid(b) is
    below p(x, y) for any y that differs in dimension j, so a search for an exact copy of a gallery
    item does not find it first. (Why the search presets use euclidean or cosine.)"""
    from siamax.index import Index

    E, d = energies.get("weighted_l1"), SPEC.embedding_dim
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, d)).astype(np.float32)
    head = {"kernel": jnp.zeros((d, 1), jnp.float32).at[0, 0].set(1.0), "bias": jnp.zeros(1, jnp.float32)}
    p = np.asarray(jax.nn.sigmoid(E.block_logits(head, jnp.asarray(x), jnp.asarray(x))))
    np.testing.assert_array_equal(np.diag(p), 0.5)  # sigmoid(b), b = 0
    assert (p.max(axis=1) > np.diag(p)).all()  # every item has a better match than itself
    index = Index.build(_self_params("weighted_l1", head), x, [str(i) for i in range(len(x))])
    _, ids = index.search(x, k=1)
    assert not (ids[:, 0] == np.arange(len(x))).any()
