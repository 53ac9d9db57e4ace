"""The paper's per-layer SGD: learning-rate decay, momentum ramp, and the update rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamax import optim

LAYERS = ("conv1", "fc", "head")
CFG = optim.SGDConfig(
    learning_rates=(("conv1", 0.05), ("fc", 0.01)),
    momenta=(("conv1", 0.9), ("fc", 0.7)),
    default_learning_rate=0.001,
    default_momentum=0.8,
    momentum_ramp_epochs=5,
)
STEPS = 4


def _weights():
    return {name: {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros((2,))} for name in LAYERS}


@pytest.mark.parametrize("epoch", [0, 1, 10])
def test_schedules_match_formulas(epoch):
    scheds = optim.layer_schedules(LAYERS, CFG, STEPS)
    etas = {"conv1": 0.05, "fc": 0.01, "head": 0.001}
    mus = {"conv1": 0.9, "fc": 0.7, "head": 0.8}
    for step in (epoch * STEPS, epoch * STEPS + STEPS - 1):  # constant within an epoch
        for layer in LAYERS:
            lr, mom = scheds[layer]
            assert np.isclose(float(lr(step)), etas[layer] * 0.99**epoch)
            expected_mu = 0.5 + (mus[layer] - 0.5) * min(epoch / 5, 1.0)
            assert np.isclose(float(mom(step)), expected_mu)


@pytest.mark.parametrize("epoch", [0, 1, 10])
def test_optimiser_state_carries_per_layer_hyperparameters(epoch):
    tx = optim.koch_sgd(LAYERS, CFG, STEPS)
    w = _weights()
    state = tx.init(w)
    update = jax.jit(tx.update)
    g = jax.tree.map(jnp.ones_like, w)
    for _ in range(epoch * STEPS + 1):  # the last update happens at step epoch*STEPS
        _, state = update(g, state, w)
    for layer in LAYERS:
        hp = state.inner_states[layer].inner_state.hyperparams
        lr, mom = optim.layer_schedules(LAYERS, CFG, STEPS)[layer]
        assert np.isclose(float(hp["learning_rate"]), float(lr(epoch * STEPS)))
        assert np.isclose(float(hp["momentum"]), float(mom(epoch * STEPS)))


def test_update_is_the_papers_momentum_rule():
    """dW(T) = -eta(T) g(T) + mu(T) dW(T-1), per layer."""
    tx = optim.koch_sgd(LAYERS, CFG, steps_per_epoch=1)  # every step is an epoch: eta, mu change each step
    w = _weights()
    state = tx.init(w)
    scheds = optim.layer_schedules(LAYERS, CFG, 1)
    prev = {layer: 0.0 for layer in LAYERS}
    for t in range(4):
        g = jax.tree.map(lambda x, t=t: jnp.full_like(x, t + 1.0), w)
        updates, state = tx.update(g, state, w)
        for layer in LAYERS:
            lr, mom = scheds[layer]
            expected = -float(lr(t)) * (t + 1.0) + float(mom(t)) * prev[layer]
            chex.assert_trees_all_close(updates[layer]["kernel"], jnp.full((2, 2), expected), rtol=1e-5)
            prev[layer] = expected


def test_unknown_layer_and_bad_epoch_length():
    with pytest.raises(ValueError, match="unknown layers"):
        optim.layer_schedules(LAYERS, optim.SGDConfig(learning_rates=(("conv9", 0.1),)), 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.layer_schedules(LAYERS, CFG, 0)


def test_adam_decays_per_epoch():
    tx = optim.adam(1e-3, steps_per_epoch=10)
    state = tx.init({"w": jnp.ones(3)})
    for _ in range(21):
        _, state = tx.update({"w": jnp.ones(3)}, state)
    assert np.isclose(float(state.hyperparams["learning_rate"]), 1e-3 * 0.99**2)
