"""Training state and the pure, jitted train step.

``train_step(state, batch, rng) -> (state, metrics)`` knows nothing of files, presets or logging.
It is jitted once at import with the state donated; the optimiser and objective ride in the state
as static fields, so one compiled step serves a whole run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
import tqdm

from siamax import api, checkpoint, energies, losses, miners, rng, sharding
from siamax.errors import ConfigError, TrainingError
from siamax.model import Siamese


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a train step optimises (static, hashable).

    ``kind="pairs"``: the paper's objective. A batch is ``{"x1", "x2": (B, S, S), "y": (B,)}`` of
    independent pairs; both images of every pair go through the tower.
    ``kind="all_pairs"``: a batch is ``{"x": (B, S, S), "labels": (B,)}``; each image goes through
    the tower once and the head is trained on all B(B-1)/2 pairs among them, same and different
    pairs weighted equally. Same Siamese scorer, B(B-1)/2 pairs for B tower passes.
    ``kind="episodic"``: the same batch as "all_pairs"; each image is a query whose candidates are
    all other images of the batch, and the loss is the softmax cross-entropy of picking a same-class
    candidate by the head's logits (the one-shot decision rule, trained directly), plus
    ``pair_weight`` times the balanced all-pairs cross-entropy, which keeps p calibrated.
    ``kind="contrastive"`` / ``"triplet"``: the same batch; metric losses on the energy's distance
    (``siamax.losses.contrastive``, ``siamax.losses.triplet`` with ``miner``, both with ``margin``),
    which train the tower only. The head's calibration (its logit from the distance) is trained
    alongside by the balanced all-pairs cross-entropy on gradient-stopped embeddings, so that it
    cannot change what the metric loss learns and ``siamax.score`` is still a calibrated probability.
    ``augment``: apply the paper's random affine distortion to every image inside the step.
    ``augment_ops``: then these ``siamax.augment.OPS`` (e.g. the photo set: crop, flip, jitter) to every
    image, keyed by ``fold_in(step key, 1)`` (each side of a pair its own split of it).
    ``l2``: per-layer L2 weights lambda_j as ((layer, lambda), ...).
    ``margin``: contrastive / triplet only; ``miner``: triplet only, one of ``siamax.miners.MINERS``.
    """

    kind: str = "pairs"
    augment: bool = False
    augment_ops: tuple[str, ...] = ()
    pair_weight: float = 1.0
    l2: tuple[tuple[str, float], ...] = ()
    margin: float = 1.0
    miner: str = "batch_hard"

    def __post_init__(self):
        kinds = tuple(losses.OBJECTIVES)
        if self.kind not in kinds:
            raise ConfigError(f"objective kind must be one of {kinds}, got {self.kind!r}")
        if self.miner not in miners.MINERS:
            raise ConfigError(f"triplet miner must be one of {miners.MINERS}, got {self.miner!r}")
        if not (isinstance(self.margin, numbers.Real) and math.isfinite(self.margin) and self.margin > 0):
            raise ConfigError(f"margin must be a positive finite number, got {self.margin!r}")
        object.__setattr__(self, "margin", float(self.margin))


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: api.Params
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    objective: Objective = flax.struct.field(pytree_node=False)


def create_train_state(
    params: api.Params, tx: optax.GradientTransformation, objective: Objective = Objective()
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params.weights), tx=tx, objective=objective
    )


def _distort(rng, x):
    from siamax import augment  # imported lazily: only augmenting runs need it

    return augment.distort(rng, x)


def _photo(rng, x, ops):
    from siamax import augment  # imported lazily: only augmenting runs need it

    return augment.augment(rng, x, ops)


def _distort_input(rng, x):
    """Model input (B, S, S, C) distorted by the paper's affine transforms (gray: exactly as before)."""
    return _distort(rng, x[..., 0])[..., None] if x.shape[-1] == 1 else _distort(rng, x)


def _pairs_loss(spec, weights, batch, augment, rng, ops=()):
    x1 = api.model_input(spec, batch["x1"], "x1")
    x2 = api.model_input(spec, batch["x2"], "x2")
    if augment:
        k1, k2 = jax.random.split(rng)
        x1 = _distort_input(k1, x1)
        x2 = _distort_input(k2, x2)
    if ops:
        k1, k2 = jax.random.split(jax.random.fold_in(rng, 1))
        x1, x2 = _photo(k1, x1, ops), _photo(k2, x2, ops)
    logits, labels = api.twin_logits(spec, weights, x1, x2), batch["y"]
    ce = losses.pair_cross_entropy(logits, labels)
    accuracy = ((logits > 0) == (labels > 0.5)).mean()
    return ce, accuracy


def _in_batch_loss(spec, weights, objective: Objective, batch, rng):
    """All B(B-1)/2 pairs of one batch of labelled images, each image through the tower once.

    Returns (data loss, cross-entropy, accuracy, the objective's own metrics).
    """
    x = api.model_input(spec, batch["x"], "x")
    if objective.augment:
        x = _distort_input(rng, x)
    if objective.augment_ops:
        x = _photo(jax.random.fold_in(rng, 1), x, objective.augment_ops)
    e = api._embed(spec, weights, x)
    labels = batch["labels"]
    # Logit matrix (B, B): the head is symmetric in its two inputs, so one matrix serves both roles.
    pairwise_logits = lambda e: Siamese(spec).apply({"params": weights}, e, method="pairwise_logits")  # noqa: E731
    if objective.kind in ("all_pairs", "episodic"):
        logits = pairwise_logits(e)
        ce, accuracy = losses.all_pairs(logits, labels)
        if objective.kind == "all_pairs":
            return ce, ce, accuracy, {}
        episodic = losses.episodic(logits, labels)
        return episodic + objective.pair_weight * ce, ce, accuracy, {"episodic": episodic}
    # Metric objectives: the loss moves embeddings by distance; the calibration cross-entropy sees
    # them gradient-stopped, so it fits the head alone and cannot pull on the tower.
    dist = energies.get(spec.energy).pairwise_distance(e)
    ce, accuracy = losses.all_pairs(pairwise_logits(jax.lax.stop_gradient(e)), labels)
    if objective.kind == "contrastive":
        metric = losses.contrastive(dist, labels, objective.margin)
        return metric + ce, ce, accuracy, {"contrastive": metric}
    metric, active = losses.triplet(dist, labels, objective.margin, objective.miner)
    return metric + ce, ce, accuracy, {"triplet": metric, "active_triplets": active}


def loss_fn(weights, spec, objective: Objective, batch: Mapping, rng):
    """(loss, metrics) of one batch: the objective's data loss plus the L2 term.

    ``metrics``: cross_entropy (the pairs' binary cross-entropy: for episodic its all-pairs term, for
    contrastive / triplet the head's calibration), l2, accuracy, and the objective's own term
    (episodic, contrastive or triplet, and for triplet ``active_triplets``, the fraction of the mined
    triplets with a positive loss).
    """
    if objective.kind == "pairs":
        ce, accuracy = _pairs_loss(spec, weights, batch, objective.augment, rng, objective.augment_ops)
        data, extra = ce, {}
    else:
        data, ce, accuracy, extra = _in_batch_loss(spec, weights, objective, batch, rng)
    l2 = losses.l2_penalty(weights, dict(objective.l2))
    return data + l2, {"cross_entropy": ce, "l2": l2, "accuracy": accuracy, **extra}


def _train_step(state: TrainState, batch: Mapping, rng: jax.Array):
    spec = state.params.spec
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params.weights, spec, state.objective, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params.weights)
    weights = optax.apply_updates(state.params.weights, updates)
    new_state = state.replace(step=state.step + 1, params=state.params.replace(weights=weights), opt_state=opt_state)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "finite": jnp.isfinite(loss)}
    return new_state, metrics


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """(state, batch, rng) -> (state, metrics). Pure; jitted once; ``state`` is donated.

``metrics``: loss, cross_entropy, l2, accuracy (of the batch's pairs, thresholded at p = 0.5),
the objective's own terms (see ``loss_fn``), grad_norm and ``finite`` (False when the loss is NaN
or infinite: the caller must stop and keep its last good checkpoint)."""


# ---------------------------------------------------------------------------------------------
# The epoch loop: checkpoints, resumption, early stopping. It knows nothing of layers.


class NonFiniteLoss(TrainingError):
    """The loss became NaN/inf; the run stopped and kept its last good checkpoint."""


def _checkpoint_tree(state: TrainState) -> dict:
    return {"step": state.step, "weights": state.params.weights, "opt_state": state.opt_state}


def _log_lines(path: Path, keep_before_epoch: int) -> None:
    """Drop log lines of epochs the checkpoint does not cover (written just before a crash)."""
    if not path.exists():
        return
    lines = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] < keep_before_epoch
    ]
    path.write_text("".join(line + "\n" for line in lines))


def fit(
    state: TrainState,
    sampler,
    *,
    epochs: int,
    patience: int,
    validate: Callable[[api.Params], float],
    workdir: Path,
    seed: int,
    place_batch: Callable = lambda b: b,
    lr_of: Callable | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[TrainState, dict]:
    """Train for up to ``epochs`` epochs of ``sampler.steps_per_epoch`` steps, early-stopping on
    ``validate(params)`` (higher is better; validation data only) with ``patience`` epochs.

    ``max_seconds``: a time budget for this call; an epoch is not started when the last one's
    duration says it would end past the budget, so the run stops cleanly on an epoch boundary,
    with its checkpoints, and a rerun with a new budget carries on.
    ``on_epoch(epoch, val)``: called after each epoch's checkpoint (1-based epoch); an exception it
    raises (e.g. a hyper-parameter search pruning the run) ends training with everything saved.

    Resumes from ``workdir``'s latest checkpoint when there is one: batches and step keys depend
    only on (seed, step), so the result equals an uninterrupted run. Each epoch appends a line to
    ``workdir/metrics.jsonl``; the latest and the best (by validation) checkpoints are kept.
    Returns (final state, summary), where summary has the best epoch and accuracy.
    """
    workdir = Path(workdir)
    meta = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": -1, "bad_epochs": 0, "train_seconds": 0.0}
    resumed = checkpoint.resume(workdir, _checkpoint_tree(state))  # falls back past damaged checkpoints
    if resumed is not None:
        tree, meta = resumed
        state = state.replace(
            step=tree["step"], params=state.params.replace(weights=tree["weights"]), opt_state=tree["opt_state"]
        )
        print(f"resuming from {workdir / 'checkpoints'}: epoch {meta['epoch']}, step {int(state.step)}")
    latest, best = checkpoint.managers(workdir)  # after resume, which may have moved damaged steps aside
    log_path = workdir / "metrics.jsonl"
    primary = sharding.is_primary()  # one process writes the log and draws the progress bar
    if primary:
        _log_lines(log_path, meta["epoch"])
    step_key = rng.train_streams(seed)["step"]
    spe = sampler.steps_per_epoch
    bar = tqdm.tqdm(
        total=epochs * spe,
        initial=meta["epoch"] * spe,
        unit="step",
        disable=not (progress and primary),
        dynamic_ncols=True,
        smoothing=0.05,
        mininterval=2.0,
    )
    say = bar.write if primary else lambda _: None
    epoch = meta["epoch"]
    stopped = lambda: patience and meta["bad_epochs"] >= patience  # noqa: E731 (0 = never stop early)
    started, last_epoch_seconds = time.perf_counter(), 0.0
    while epoch < epochs and not stopped():
        if max_seconds is not None and time.perf_counter() - started + last_epoch_seconds > max_seconds:
            say(f"time budget: stopping after epoch {epoch} (another epoch would pass {max_seconds / 60:.1f} minutes)")
            meta = {**meta, "stopped_by_time": True}
            break
        t0 = time.perf_counter()
        sums, finite = None, jnp.asarray(True)
        for i, batch in enumerate(sampler.batches(epoch * spe, (epoch + 1) * spe)):
            step = epoch * spe + i
            state, m = train_step(state, place_batch(batch), jax.random.fold_in(step_key, step))
            finite = finite & m["finite"]
            sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
            if (i + 1) % 25 == 0 or i + 1 == spe:
                if not bool(finite):
                    break
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    epoch=epoch + 1,
                    loss=f"{float(m['loss']):.4f}",
                    pairs_s=f"{(i + 1) * sampler.pairs_per_step / elapsed:,.0f}",
                )
                bar.update(i + 1 - (bar.n - epoch * spe))
        if not bool(finite):
            bar.close()
            kept = (
                f"the last good checkpoint (end of epoch {meta['epoch']}) and the best one (epoch "
                f"{meta['best_epoch'] + 1}) are in {workdir / 'checkpoints'}"
                if meta["epoch"]
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLoss(
                f"the loss became NaN or infinite during epoch {epoch + 1}. Training stopped; {kept}. Lower the "
                f"learning rate (e.g. --learning-rate) and start again in a new --workdir."
            )
        seconds = time.perf_counter() - t0
        val = float(validate(state.params))
        last_epoch_seconds = time.perf_counter() - t0
        improved = val > meta["best_accuracy"]
        means = {k: float(v) / spe for k, v in sums.items() if k != "finite"}
        meta = {
            "epoch": epoch + 1,
            "train_seconds": meta["train_seconds"] + seconds,
            "best_accuracy": val if improved else meta["best_accuracy"],
            "best_epoch": epoch if improved else meta["best_epoch"],
            "bad_epochs": 0 if improved else meta["bad_epochs"] + 1,
        }
        record = {
            "epoch": epoch,
            "step": int(state.step),
            **means,
            "val_accuracy": val,
            "best_val_accuracy": meta["best_accuracy"],
            "seconds": seconds,
            "pairs_per_s": spe * sampler.pairs_per_step / seconds,
            "images_per_s": spe * sampler.images_per_step / seconds,
            **(lr_of(state.opt_state) if lr_of else {}),
        }
        if primary:
            with log_path.open("a") as f:  # before the checkpoint: a resume trims lines it does not cover
                f.write(json.dumps(record) + "\n")
        tree = _checkpoint_tree(state)
        if improved:
            checkpoint.save(best, epoch + 1, tree, meta)
        checkpoint.save(latest, epoch + 1, tree, meta)
        say(
            f"epoch {epoch + 1}: loss {means['loss']:.4f}  val one-shot {val:.2%}"
            f"{'  (best)' if improved else ''}  {record['pairs_per_s']:,.0f} pairs/s"
        )
        epoch += 1
        if on_epoch is not None:
            on_epoch(epoch, val)
        if stopped():
            say(f"early stopping: no validation improvement for {patience} epochs")
            break
    bar.close()
    return state, meta


def restore_best(state: TrainState, workdir: Path) -> api.Params:
    """The parameters of the best (by validation) checkpoint in ``workdir``; CheckpointError when it
    is missing or damaged (never another checkpoint in its place)."""
    tree, _ = checkpoint.restore_best(Path(workdir), _checkpoint_tree(state))
    return state.params.replace(weights=tree["weights"])
