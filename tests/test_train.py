"""The jitted train step: metrics, donation, learning a synthetic same/different task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax import optim, train
from siamax.model import ModelSpec

TINY = ModelSpec(
    input_size=16, filters=(8, 16), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=32, init="lecun"
)


def _prototypes(n_classes=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n_classes, size, size)) < 0.3).astype(np.float32)


def _noisy(protos, classes, rng):
    x = protos[classes]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1.0 - x, x).astype(np.float32)


def _pair_batch(protos, rng, b=32):
    n = len(protos)
    c1 = rng.integers(0, n, b)
    same = rng.random(b) < 0.5
    c2 = np.where(same, c1, (c1 + rng.integers(1, n, b)) % n)
    return {"x1": _noisy(protos, c1, rng), "x2": _noisy(protos, c2, rng), "y": same.astype(np.float32)}


def test_small_model_learns_synthetic_same_different():
    protos = _prototypes()
    rng = np.random.default_rng(1)
    params = siamax.init(jax.random.key(0), TINY)
    tx = optim.adam(3e-3, steps_per_epoch=50)
    state = train.create_train_state(params, tx, train.Objective(l2=(("fc", 1e-4),)))
    key = jax.random.key(2)
    losses = []
    for step in range(150):
        state, m = train.train_step(state, _pair_batch(protos, rng), jax.random.fold_in(key, step))
        losses.append(float(m["loss"]))
        assert bool(m["finite"])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    test = _pair_batch(protos, np.random.default_rng(99), b=256)
    p = siamax.score(state.params, test["x1"], test["x2"])
    accuracy = float(jnp.mean((p > 0.5) == (test["y"] > 0.5)))
    assert accuracy >= 0.9, accuracy
    assert int(state.step) == 150


def test_metrics_and_donation():
    params = siamax.init(jax.random.key(0), TINY)
    tx = optim.koch_sgd(TINY.layer_names, optim.SGDConfig(), steps_per_epoch=10)
    state = train.create_train_state(params, tx, train.Objective(l2=(("conv1", 0.01), ("fc", 0.001))))
    batch = _pair_batch(_prototypes(), np.random.default_rng(0), b=8)
    old_kernel = state.params.weights["conv1"]["kernel"]
    new_state, m = train.train_step(state, batch, jax.random.key(0))
    assert set(m) == {"loss", "cross_entropy", "l2", "accuracy", "grad_norm", "finite"}
    assert np.isclose(float(m["loss"]), float(m["cross_entropy"]) + float(m["l2"]), rtol=1e-5)
    assert float(m["l2"]) > 0 and float(m["grad_norm"]) > 0 and 0 <= float(m["accuracy"]) <= 1
    assert old_kernel.is_deleted()  # the state was donated: no second copy of the weights
    assert int(new_state.step) == 1


def test_non_finite_loss_is_flagged():
    params = siamax.init(jax.random.key(0), TINY)
    bad = jax.tree.map(lambda w: w * jnp.nan, params.weights)
    state = train.create_train_state(params.replace(weights=bad), optim.adam(1e-3, 10))
    _, m = train.train_step(state, _pair_batch(_prototypes(), np.random.default_rng(0), b=4), jax.random.key(0))
    assert not bool(m["finite"])


def test_all_pairs_objective_learns():
    protos = _prototypes(n_classes=8)
    rng = np.random.default_rng(3)
    params = siamax.init(jax.random.key(0), TINY)
    state = train.create_train_state(params, optim.adam(3e-3, 50), train.Objective(kind="all_pairs"))
    for step in range(60):
        classes = np.repeat(rng.choice(8, 4, replace=False), 4)
        batch = {"x": _noisy(protos, classes, rng), "labels": classes}
        state, m = train.train_step(state, batch, jax.random.key(step))
    test = _pair_batch(protos, np.random.default_rng(7), b=256)
    p = siamax.score(state.params, test["x1"], test["x2"])
    assert float(jnp.mean((p > 0.5) == (test["y"] > 0.5))) >= 0.9


def test_bad_objective():
    with pytest.raises(ValueError, match="objective kind"):
        train.Objective(kind="triplet")
