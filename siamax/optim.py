"""Optimisers: the paper's per-layer SGD with momentum ramp and 1%-per-epoch decay, and Adam.

Paper (Koch et al. 2015, section 4.3): per layer j, W <- W + dW with dW(T) = -eta_j(T) g + mu_j(T) dW(T-1);
eta_j is multiplied by 0.99 each epoch; mu_j starts at 0.5 and rises linearly to its final value.
The ramp length (``momentum_ramp_epochs``) is OPEN in the paper; siamax defaults to 20 epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """Per-layer hyper-parameters of the paper's SGD. Layers not named get the defaults."""

    learning_rates: tuple[tuple[str, float], ...] = ()
    momenta: tuple[tuple[str, float], ...] = ()
    default_learning_rate: float = 0.01
    default_momentum: float = 0.9
    initial_momentum: float = 0.5
    momentum_ramp_epochs: int = 20
    decay_per_epoch: float = 0.99


def layer_schedules(
    layers: tuple[str, ...], cfg: SGDConfig, steps_per_epoch: int
) -> dict[str, tuple[Callable, Callable]]:
    """{layer: (learning_rate(step), momentum(step))}, both piecewise constant within an epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    lrs, moms = dict(cfg.learning_rates), dict(cfg.momenta)
    unknown = (set(lrs) | set(moms)) - set(layers)
    if unknown:
        raise ValueError(f"per-layer settings name unknown layers {sorted(unknown)}; layers: {list(layers)}")

    def make(layer):
        eta, mu = lrs.get(layer, cfg.default_learning_rate), moms.get(layer, cfg.default_momentum)

        def lr(step):
            return eta * cfg.decay_per_epoch ** (step // steps_per_epoch)

        def momentum(step):
            frac = jnp.minimum((step // steps_per_epoch) / max(cfg.momentum_ramp_epochs, 1), 1.0)
            return cfg.initial_momentum + (mu - cfg.initial_momentum) * frac

        return lr, momentum

    return {layer: make(layer) for layer in layers}


def _koch_sgd(learning_rate, momentum) -> optax.GradientTransformation:
    # Scale first, then accumulate: dW(T) = -eta(T) g + mu(T) dW(T-1), exactly the paper's update.
    return optax.chain(optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum))


def koch_sgd(layers: tuple[str, ...], cfg: SGDConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The paper's per-layer SGD over a params tree whose top-level keys are layer names."""
    scheds = layer_schedules(layers, cfg, steps_per_epoch)
    transforms = {
        layer: optax.inject_hyperparams(_koch_sgd)(learning_rate=lr, momentum=mom)
        for layer, (lr, mom) in scheds.items()
    }
    return optax.multi_transform(transforms, layer_labels)


def layer_labels(weights: Mapping) -> dict:
    """Label every leaf with the name of its layer (the top-level key of the weights dict); a
    conv's normalisation parameters (``normK``) belong to ``convK``."""

    def owner(name):
        return "conv" + name[4:] if name.startswith("norm") else name

    return {name: jax.tree.map(lambda _, n=name: owner(n), layer) for name, layer in weights.items()}


def adam(learning_rate: float, steps_per_epoch: int, decay_per_epoch: float = 0.99) -> optax.GradientTransformation:
    """Adam with the learning rate multiplied by ``decay_per_epoch`` every epoch (re-implementations' choice)."""
    schedule = optax.exponential_decay(
        learning_rate, transition_steps=steps_per_epoch, decay_rate=decay_per_epoch, staircase=True
    )
    return optax.inject_hyperparams(optax.adam)(learning_rate=schedule)


def l2_lambdas(cfg, layers: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """The per-layer L2 weights lambda_j the optim section asks for: ``layer_l2``'s, else ``l2``."""
    explicit = dict(cfg.per_layer("layer_l2"))
    return tuple((layer, explicit.get(layer, cfg.l2)) for layer in layers)


def make_optimizer(cfg, layers: tuple[str, ...], steps_per_epoch: int):
    """The optimiser the optim section (``siamax.config.OptimConfig``) asks for, over ``layers``.

    Returns ``(optax transformation, fn opt_state -> {"lr/<layer>": ..., "momentum/<layer>": ...})``,
    the second for the per-epoch log.
    """
    if cfg.optimizer == "adam":
        tx = adam(cfg.learning_rate, steps_per_epoch, cfg.lr_decay)
        return tx, lambda s: {"lr": float(s.hyperparams["learning_rate"])}
    sgd = SGDConfig(
        learning_rates=cfg.per_layer("layer_learning_rates"),
        momenta=cfg.per_layer("layer_momenta"),
        default_learning_rate=cfg.learning_rate,
        default_momentum=cfg.momentum,
        momentum_ramp_epochs=cfg.momentum_ramp_epochs,
        decay_per_epoch=cfg.lr_decay,
    )
    tx = koch_sgd(layers, sgd, steps_per_epoch)

    def lr_of(s):
        out = {}
        for layer in layers:
            hp = s.inner_states[layer].inner_state.hyperparams
            out[f"lr/{layer}"] = float(hp["learning_rate"])
            out[f"momentum/{layer}"] = float(hp["momentum"])
        return out

    return tx, lr_of
