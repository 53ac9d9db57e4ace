"""Training state and the pure, jitted train step.

``train_step(state, batch, rng) -> (state, metrics)`` knows nothing of files, presets or logging.
It is jitted once at import with the state donated; the optimiser and objective ride in the state
as static fields, so one compiled step serves a whole run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from siamax import api, losses
from siamax.model import Siamese


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a train step optimises (static, hashable).

    ``kind="pairs"``: the paper's objective. A batch is ``{"x1", "x2": (B, S, S), "y": (B,)}`` of
    independent pairs; both images of every pair go through the tower.
    ``kind="all_pairs"``: a batch is ``{"x": (B, S, S), "labels": (B,)}``; each image goes through
    the tower once and the head is trained on all B(B-1)/2 pairs among them, same and different
    pairs weighted equally. Same Siamese scorer, B(B-1)/2 pairs for B tower passes.
    ``augment``: apply the paper's random affine distortion to every image inside the step.
    ``l2``: per-layer L2 weights lambda_j as ((layer, lambda), ...).
    """

    kind: str = "pairs"
    augment: bool = False
    l2: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.kind not in ("pairs", "all_pairs"):
            raise ValueError(f"objective kind must be 'pairs' or 'all_pairs', got {self.kind!r}")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: api.Params
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    objective: Objective = flax.struct.field(pytree_node=False)


def create_train_state(params: api.Params, tx: optax.GradientTransformation,
                       objective: Objective = Objective()) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params.weights),
                      tx=tx, objective=objective)


def _distort(rng, x):
    from siamax import augment  # imported lazily: only augmenting runs need it

    return augment.distort(rng, x)


def _logits_and_labels(spec, weights, objective: Objective, batch: Mapping, rng):
    """-> (logits, labels, pair_weights or None) for the objective's pairs."""
    if objective.kind == "pairs":
        x1 = api.model_input(spec, batch["x1"], "x1")
        x2 = api.model_input(spec, batch["x2"], "x2")
        if objective.augment:
            k1, k2 = jax.random.split(rng)
            x1 = _distort(k1, x1[..., 0])[..., None]
            x2 = _distort(k2, x2[..., 0])[..., None]
        return api.twin_logits(spec, weights, x1, x2), batch["y"], None
    x = api.model_input(spec, batch["x"], "x")
    if objective.augment:
        x = _distort(rng, x[..., 0])[..., None]
    e = api._embed(spec, weights, x)
    labels = batch["labels"]
    b = x.shape[0]
    i, j = jnp.triu_indices(b, k=1)
    logits = Siamese(spec).apply({"params": weights}, e[i], e[j], method="logit")
    same = (labels[i] == labels[j]).astype(jnp.float32)
    n_same = jnp.maximum(same.sum(), 1.0)
    n_diff = jnp.maximum((1.0 - same).sum(), 1.0)
    pair_weights = same / n_same + (1.0 - same) / n_diff
    return logits, same, pair_weights


def loss_fn(weights, spec, objective: Objective, batch: Mapping, rng):
    logits, labels, pair_weights = _logits_and_labels(spec, weights, objective, batch, rng)
    ce = losses.pair_cross_entropy(logits, labels, pair_weights)
    l2 = losses.l2_penalty(weights, dict(objective.l2))
    correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
    accuracy = correct.mean() if pair_weights is None else (correct * pair_weights).sum() / pair_weights.sum()
    return ce + l2, {"cross_entropy": ce, "l2": l2, "accuracy": accuracy}


def _train_step(state: TrainState, batch: Mapping, rng: jax.Array):
    spec = state.params.spec
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params.weights, spec, state.objective, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params.weights)
    weights = optax.apply_updates(state.params.weights, updates)
    new_state = state.replace(step=state.step + 1, params=state.params.replace(weights=weights),
                              opt_state=opt_state)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "finite": jnp.isfinite(loss)}
    return new_state, metrics


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """(state, batch, rng) -> (state, metrics). Pure; jitted once; ``state`` is donated.

``metrics``: loss, cross_entropy, l2, accuracy (of the batch's pairs, thresholded at p = 0.5),
grad_norm and ``finite`` (False when the loss is NaN or infinite: the caller must stop and keep its
last good checkpoint)."""
