"""The main job, as a library function: prepare data, train with early stopping, evaluate, report.

``run(cfg, workdir)`` is what ``python -m experiments.omniglot_oneshot`` calls. Model selection
uses only the validation alphabets; Lake's 20 runs and the test alphabets are touched once, after
training, by ``report``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from siamax import api, checkpoint, config, evaluate, optim, report, sharding, train
from siamax import data as sd
from siamax.data import batches


class ConfigMismatch(ValueError):
    """The work directory belongs to a run with another config."""


def jax_backend() -> str:
    return jax.default_backend()


def default_preset() -> str:
    """``paper`` on an accelerator, ``quick`` on CPU."""
    return "quick" if jax.default_backend() == "cpu" else "paper"


def claim_workdir(workdir: Path, cfg: config.Config, preset: str) -> None:
    """Create ``workdir`` or check that it holds a run of exactly this config (never mix runs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    mine = {"preset": preset, **cfg.to_dict()}
    if path.exists():
        theirs = json.loads(path.read_text())
        changed = config.diff(theirs, mine)
        if changed:
            lines = "\n".join(f"  {k}: {a!r} in the work directory, {b!r} now" for k, (a, b) in changed.items())
            raise ConfigMismatch(
                f"{workdir} holds a run with a different config:\n{lines}\n"
                f"Use another --workdir, or repeat the original settings to resume it."
            )
    else:
        path.write_text(json.dumps(mine, indent=1, sort_keys=True))


def make_optimizer(cfg: config.Config, steps_per_epoch: int):
    """(optax transformation, fn opt_state -> {"lr/<layer>": ..., "momentum/<layer>": ...})."""
    layers = cfg.spec.layer_names
    if cfg.optimizer == "adam":
        tx = optim.adam(cfg.learning_rate, steps_per_epoch, cfg.lr_decay)
        return tx, lambda s: {"lr": float(s.hyperparams["learning_rate"])}
    sgd = optim.SGDConfig(
        learning_rates=cfg.per_layer("layer_learning_rates"),
        momenta=cfg.per_layer("layer_momenta"),
        default_learning_rate=cfg.learning_rate,
        default_momentum=cfg.momentum,
        momentum_ramp_epochs=cfg.momentum_ramp_epochs,
        decay_per_epoch=cfg.lr_decay,
    )
    tx = optim.koch_sgd(layers, sgd, steps_per_epoch)

    def lr_of(s):
        out = {}
        for layer in layers:
            hp = s.inner_states[layer].inner_state.hyperparams
            out[f"lr/{layer}"] = float(hp["learning_rate"])
            out[f"momentum/{layer}"] = float(hp["momentum"])
        return out

    return tx, lr_of


def run(
    cfg: config.Config,
    workdir: str | Path,
    *,
    preset: str = "custom",
    progress: bool = True,
    report_plots: bool = True,
    test: bool = True,
) -> dict:
    """Train (or resume) in ``workdir``, then evaluate the best checkpoint and write the report.

    ``test=False`` stops after training and returns the validation summary (``best_val_accuracy``,
    ``best_epoch``, ``epochs``, ``train_seconds``) without touching the test alphabets or Lake's
    runs: what model selection (``experiments.validation_sweep``) may look at.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    claim_workdir(workdir, cfg, preset)
    spec = cfg.spec
    mesh = sharding.make_mesh(cfg.devices or None)

    t0 = time.perf_counter()
    omni = sd.load_omniglot()
    splits = sd.paper_splits(cfg.split_seed, train_drawers=cfg.train_drawers)
    splits.save(workdir / "splits.json")
    images = batches.device_images(omni, spec)
    sampler = batches.make_sampler(cfg, splits.train, images, cfg.seed)
    val_tasks = sd.validation_tasks(
        omni, splits.validation.alphabets, splits.validation.drawers, trials=cfg.val_trials, seed=cfg.seed
    )
    data_seconds = time.perf_counter() - t0
    print(
        f"data ready in {data_seconds:.1f}s: {len(splits.train.char_ids)} training characters x "
        f"{len(splits.train.drawers)} drawers, {sampler.steps_per_epoch} steps/epoch, "
        f"{len(val_tasks)} validation tasks ({sum(len(t.query) for t in val_tasks)} trials)"
    )

    params = api.init(jax.random.fold_in(jax.random.key(cfg.seed), 2), spec)
    tx, lr_of = make_optimizer(cfg, sampler.steps_per_epoch)
    objective = train.Objective(kind=cfg.objective, augment=cfg.augment, l2=cfg.l2_lambdas())
    state = sharding.replicate(train.create_train_state(params, tx, objective), mesh)
    validate = lambda p: evaluate.one_shot_accuracy(p, val_tasks, seed=cfg.seed)["accuracy"]  # noqa: E731
    state, summary = train.fit(
        state,
        sampler,
        epochs=cfg.epochs,
        patience=cfg.patience,
        validate=validate,
        workdir=workdir,
        seed=cfg.seed,
        place_batch=lambda b: sharding.shard_batch(b, mesh),
        lr_of=lr_of,
        progress=progress,
    )
    if not test:
        return {
            "best_val_accuracy": summary["best_accuracy"],
            "best_epoch": summary["best_epoch"] + 1,
            "epochs": summary["epoch"],
            "train_seconds": summary["train_seconds"],
            "data_seconds": data_seconds,
            "wall_seconds": time.perf_counter() - t_start,
        }
    best = train.restore_best(state, workdir)
    checkpoint.export(
        best, workdir, metadata={"preset": preset, "config": cfg.to_dict(), "best_epoch": summary["best_epoch"] + 1}
    )
    results = report.evaluate_and_report(
        best,
        cfg,
        preset=preset,
        workdir=workdir,
        omni=omni,
        splits=splits,
        summary=summary,
        sampler=sampler,
        plots=report_plots,
        wall_seconds_so_far=time.perf_counter() - t_start,
    )
    return results


def mnist_transfer(params: api.Params, workdir: str | Path, *, seed: int = 0, trials: int = 400) -> dict:
    """The paper's MNIST transfer: 10-way one-shot on the MNIST test set, no fine-tuning, plus 1-NN.

    Adds ``mnist10`` and ``mnist10_one_nn`` to ``workdir/results.json`` and prints the table.
    """
    workdir = Path(workdir)
    tasks = sd.mnist_tasks(sd.load_mnist(), n_trials=trials, seed=seed)
    path = workdir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"paper": report.PAPER, **report.environment()}
    results["mnist10"] = evaluate.one_shot_accuracy(params, tasks, seed=seed)
    results["mnist10_one_nn"] = evaluate.nearest_neighbour(tasks, "euclidean", seed=seed)
    path.write_text(json.dumps(results, indent=1))
    print(report.table(results))
    return results
