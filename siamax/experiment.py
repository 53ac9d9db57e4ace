"""The main job, as library functions: prepare data, train with early stopping, evaluate, report.

``run(cfg, workdir)`` is what ``python -m experiments.omniglot_oneshot`` calls. Model selection
uses only the validation alphabets; Lake's 20 runs and the test alphabets are touched once, after
training, by ``report``. Every file the run will read is resolved (and downloaded, where it can be)
before the first step, so a missing archive fails in seconds, not after hours of training.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from siamax import api, checkpoint, config, evaluate, optim, report, rng, sharding, train
from siamax import data as sd
from siamax.data import samplers
from siamax.errors import WorkdirError


def default_preset() -> str:
    """``paper`` on an accelerator, ``quick`` on CPU."""
    return "quick" if jax.default_backend() == "cpu" else "paper"


def command_line(
    prog: str,
    doc: str,
    argv: Sequence[str] | None,
    *,
    default_preset: Callable[[], str],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, str, config.Config]:
    """Parse an experiment's command line: ``(args, preset, config)``.

    In this order, because each step needs the one before: the multi-process start-up (before
    anything asks JAX about devices), then ``--preset`` (its default may depend on the backend),
    then the full parser, whose ``--help`` shows that preset's values as the defaults.
    """
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--preset", choices=config.preset_names(), default=None)
    sharding.add_arguments(early)
    known, _ = early.parse_known_args(argv)
    sharding.initialize_from_args(known)
    preset = known.preset or default_preset()

    parser = argparse.ArgumentParser(
        prog=prog, description=doc, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=config.preset_names(),
        default=None,
        help=f"named config (default here: {default_preset()}); --preset NAME --help shows NAME's values",
    )
    if add_arguments:
        add_arguments(parser)
    sharding.add_arguments(parser)
    config.add_arguments(parser, preset)
    args = parser.parse_args(argv)
    if known.preset is None and sharding.is_primary():
        print(f"no --preset given: using {preset!r} on this {jax.default_backend()} machine")
    return args, preset, config.from_args(args, preset)


def claim_workdir(workdir: Path, cfg: config.Config, preset: str, extra: dict | None = None) -> None:
    """Create ``workdir`` or check that it holds a run of exactly this config (and ``extra``: e.g. the data
    folder of ``siamax train``) (never mix runs)."""
    path = workdir / "config.json"
    mine = {"preset": preset, **cfg.flat(), **(extra or {})}
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WorkdirError(f"{path} is not readable ({e}); use another --workdir") from e
        changed = config.diff(theirs, mine)
        if changed:
            fields = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise WorkdirError(
                f"{workdir} holds a run with a different config ({fields}). Use another --workdir, or repeat the "
                "original settings to resume it."
            )
    elif sharding.is_primary():
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(mine, indent=1, sort_keys=True))
        except OSError as e:
            raise WorkdirError(f"cannot write the work directory {workdir}: {e}") from e
    sharding.sync("claim_workdir")


def validation_trials(cfg: config.Config, table, splits) -> list:
    """The validation one-shot tasks that choose the checkpoint, from the Omniglot table
    (``siamax.data.omniglot_table``) and ``cfg.eval.eval_seed`` alone."""
    seed = rng.eval_seeds(cfg.eval.eval_seed)["validation_tasks"]
    val = splits.validation
    return sd.validation_tasks(table, val.alphabets, val.drawers, trials=cfg.eval.val_trials, seed=seed)


def train_on(
    cfg: config.Config,
    workdir: Path,
    train_table,
    val_tasks: list,
    *,
    progress: bool = True,
    max_seconds: float | None = None,
    on_epoch=None,
):
    """Train (or resume) a model on ``train_table`` (a ``LabelledImages``) in ``workdir``, choosing the
    checkpoint by one-shot accuracy on ``val_tasks`` (validation data only).

    What the main job and ``siamax train`` share. Returns ``(state, summary, sampler)``; the best
    checkpoint is in ``workdir`` (``train.restore_best``).
    """
    spec = cfg.spec
    mesh = sharding.make_mesh(cfg.devices or None)
    candidates_seed = rng.eval_seeds(cfg.eval.eval_seed)["validation_candidates"]
    sampler = samplers.make_sampler(
        cfg.data,
        cfg.objective.batch,
        train_table,
        cfg.seed,
        cfg.schedule.steps_per_epoch,
        shard=sharding.shard_of_process(),
    )
    params = api.init(rng.train_streams(cfg.seed)["init"], spec)
    tx, lr_of = optim.make_optimizer(cfg.optim, spec.layer_names, sampler.steps_per_epoch)
    objective = train.Objective(
        kind=cfg.objective.kind,
        augment=cfg.data.augment,
        l2=cfg.l2_lambdas(),
        margin=cfg.margin,
        miner=cfg.objective.miner,
    )
    state = sharding.replicate(train.create_train_state(params, tx, objective), mesh)

    def validate(p):
        local = sharding.local_copy(p)
        return evaluate.one_shot_accuracy(local, val_tasks, seed=candidates_seed)["accuracy"]

    state, summary = train.fit(
        state,
        sampler,
        epochs=cfg.schedule.epochs,
        patience=cfg.schedule.patience,
        validate=validate,
        workdir=workdir,
        seed=cfg.seed,
        place_batch=lambda b: sharding.shard_batch(b, mesh),
        lr_of=lr_of,
        progress=progress,
        max_seconds=max_seconds,
        on_epoch=on_epoch,
    )
    return state, summary, sampler


def run(
    cfg: config.Config,
    workdir: str | Path,
    *,
    preset: str = "custom",
    progress: bool = True,
    report_plots: bool = True,
    test: bool = True,
    on_epoch=None,
) -> dict:
    """Train (or resume) in ``workdir``, then evaluate the best checkpoint and write the report.

    ``test=False`` stops after training and returns the validation summary (``best_val_accuracy``,
    ``best_epoch``, ``epochs``, ``train_seconds``) without touching the test alphabets or Lake's
    runs (they are not even resolved): what model selection (``experiments.validation_sweep``,
    ``experiments.search``) may look at. ``on_epoch(epoch, val_accuracy)``: see ``train.fit``.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    sd.require(["omniglot", "lake_runs"] if test else ["omniglot"])
    claim_workdir(workdir, cfg, preset)

    t0 = time.perf_counter()
    table = sd.omniglot_table(sd.load_omniglot(), cfg.spec)  # the dataset model: model format, on the device
    splits = sd.paper_splits(cfg.data.split_seed, train_drawers=cfg.data.train_drawers)
    if sharding.is_primary():
        splits.save(workdir / "splits.json")
    train_table = table.take(splits.train.flat_indices(), name="omniglot/train")
    val_tasks = validation_trials(cfg, table, splits)
    data_seconds = time.perf_counter() - t0
    if sharding.is_primary():
        print(
            f"data ready in {data_seconds:.1f}s: {len(splits.train.char_ids)} training characters x "
            f"{len(splits.train.drawers)} drawers, {len(val_tasks)} validation tasks "
            f"({sum(len(t.query) for t in val_tasks)} trials)"
        )
    state, summary, sampler = train_on(cfg, workdir, train_table, val_tasks, progress=progress, on_epoch=on_epoch)
    # Every process restores the chosen checkpoint, as with every other multi-process Orbax call here;
    # process 0 exports it at once (the model survives a failing report), also when no test follows:
    # validation on other domains (the transfer) loads it.
    best = sharding.local_copy(train.restore_best(state, workdir))
    metadata = {"preset": preset, "config": cfg.to_dict(), "best_epoch": summary["best_epoch"] + 1, "ink": "dark"}
    if sharding.is_primary():
        checkpoint.export(best, workdir, metadata=metadata)
    if not test:
        return {
            "best_val_accuracy": summary["best_accuracy"],
            "best_epoch": summary["best_epoch"] + 1,
            "epochs": summary["epoch"],
            "train_seconds": summary["train_seconds"],
            "data_seconds": data_seconds,
            "wall_seconds": time.perf_counter() - t_start,
        }
    if not sharding.is_primary():
        return {}
    results = report.evaluate_and_report(
        best,
        cfg,
        preset=preset,
        workdir=workdir,
        omniglot=table,
        splits=splits,
        summary=summary,
        sampler=sampler,
        plots=report_plots,
        wall_seconds_so_far=time.perf_counter() - t_start,
    )
    # The threshold chosen on the validation pairs goes with the model (siamax verify uses it).
    checkpoint.export(best, workdir, metadata={**metadata, "threshold": results["verification"]["threshold"]})
    return results


def transfer_validation(params: api.Params, *, eval_seed: int = 0, trials: int = 400) -> dict:
    """10-way one-shot on MNIST's *training* set (never its test set), next to 1-NN on the same trials:
    how settings for the transfer experiment are chosen. ``{"accuracy", "ci95", "trials", "one_nn"}``."""
    seeds = rng.eval_seeds(eval_seed)
    digits = sd.mnist_table(sd.load_mnist(), params.spec, "train")
    tasks = sd.mnist_tasks(digits, n_trials=trials, seed=seeds["transfer_validation"])
    result = evaluate.one_shot_accuracy(params, tasks, seed=seeds["validation_candidates"])
    result["one_nn"] = evaluate.nearest_neighbour(tasks, "euclidean", seed=seeds["validation_candidates"])
    return result


def mnist_transfer(params: api.Params, workdir: str | Path, *, eval_seed: int = 0, trials: int = 400) -> dict:
    """The paper's MNIST transfer: 10-way one-shot on the MNIST test set, no fine-tuning, plus 1-NN.

    Adds ``mnist10`` and ``mnist10_one_nn`` to ``workdir/results.json`` and prints the table. The
    trials come from ``eval_seed`` alone, so every model is scored on the same ones.
    """
    workdir = Path(workdir)
    seeds = rng.eval_seeds(eval_seed)
    digits = sd.mnist_table(sd.load_mnist(), params.spec, "test")
    tasks = sd.mnist_tasks(digits, n_trials=trials, seed=seeds["transfer_tasks"])
    path = workdir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"paper": report.PAPER, **report.provenance()}
    results["mnist10"] = evaluate.one_shot_accuracy(params, tasks, seed=seeds["test_candidates"])
    results["mnist10_one_nn"] = evaluate.nearest_neighbour(tasks, "euclidean", seed=seeds["test_candidates"])
    results["mnist10_eval_seed"] = eval_seed
    path.write_text(json.dumps(results, indent=1))
    print(report.table(results))
    return results
