"""Hyper-parameter tuning with optuna, on validation data only.

The paper tuned its per-layer settings by Bayesian optimisation; siamax chooses its presets with
:func:`tune`: a TPE sampler proposes a config (a *space* maps an optuna trial to flag overrides of
a preset), the main job trains it with ``test=False`` (Lake's runs and the test alphabets are never
resolved, let alone read) and reports each epoch's validation one-shot accuracy to optuna, which
prunes runs below the median of the others at the same epoch. A space measured by the transfer
(``mnist``) maximises 10-way one-shot accuracy on MNIST's *training* set instead (its test set is
never read), without pruning. The study lives in the work directory
(``study.db``, SQLite): rerunning the same command carries on, and a trial interrupted by a crash is
run again with the same settings, resuming its own checkpoint (a trial's folder is named by its
settings). ``trials.json`` records every trial's settings, config, per-epoch curve and result. A
trial whose settings the config refuses (an out-of-reach margin, a collapsing triplet miner: see
``siamax.config``) is pruned before it trains, the reason in its ``refused`` attribute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from siamax import checkpoint, config, experiment, provenance
from siamax import data as sd
from siamax.data import adapters
from siamax.errors import ConfigError


def _quick(trial) -> dict:
    """Around the quick preset: objective and energy (the measured table's best rows), optimiser,
    regularisation, augmentation and the ink framing; the network, batch shape and schedule stay
    (the CPU budget)."""
    objective = trial.suggest_categorical("objective", ["episodic", "contrastive"])
    out = {
        "objective": objective,
        "energy": trial.suggest_categorical("energy", ["weighted_l1", "euclidean", "cosine"]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        "lr_decay": trial.suggest_float("lr_decay", 0.9, 1.0),
        "l2": trial.suggest_float("l2", 1e-8, 1e-3, log=True),
        "rotations": trial.suggest_categorical("rotations", [True, False]),
        "augment": trial.suggest_categorical("augment", [False, True]),
        # What carried Omniglot to MNIST (README, "Transfer"): framed ink and thickened strokes.
        "ink_frame": trial.suggest_categorical("ink_frame", [0.0, 0.8]),
        "thicken": trial.suggest_categorical("thicken", [0.0, 0.5]),
    }
    if objective == "contrastive":
        out["margin"] = trial.suggest_float("margin", 0.1, 1.0)
    return out


def _mnist(trial) -> dict:
    """Around mnist_quick, for the transfer: what the transfer sweep found to matter (objective and
    energy, the ink framing and stroke thickening, affine distortion) and the optimiser; network,
    batches and schedule stay (the CPU budget)."""
    objective = trial.suggest_categorical("objective", ["contrastive", "episodic"])
    out = {
        "objective": objective,
        "energy": trial.suggest_categorical("energy", ["cosine", "euclidean", "weighted_l1"]),
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 5e-3, log=True),
        "lr_decay": trial.suggest_float("lr_decay", 0.85, 1.0),
        "rotations": trial.suggest_categorical("rotations", [False, True]),
        "augment": trial.suggest_categorical("augment", [False, True]),
        "ink_frame": trial.suggest_categorical("ink_frame", [0.6, 0.7, 0.8, 0.9]),
        "thicken": trial.suggest_categorical("thicken", [0.0, 0.25, 0.5, 0.75]),
    }
    if objective == "contrastive":
        out["margin"] = trial.suggest_float("margin", 0.1, 1.0)
    return out


# name -> (the space, what a trial maximises): "validation" = best one-shot accuracy on the validation
# alphabets (pruned per epoch); "transfer" = 10-way one-shot on MNIST's *training* set with the model
# chosen by that validation (experiment.transfer_validation; no pruning: Omniglot's validation is not
# what it maximises).
SPACES: dict[str, tuple[Callable, str]] = {"quick": (_quick, "validation"), "mnist": (_mnist, "transfer")}


def _folder(overrides: dict) -> str:
    text = json.dumps(overrides, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _optuna():
    try:
        import optuna  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise ConfigError("the hyper-parameter tuning needs optuna: pip install 'siamax[tune]'") from None
    return optuna


def trial_config(base: config.Config, space: str, trial) -> tuple[dict, config.Config]:
    """The flag overrides ``space`` proposes for ``trial`` and the config they give from ``base``.

    A proposal the config refuses is pruned (``optuna.TrialPruned``), its reason recorded as the trial's
    ``refused`` attribute: a space never trains a combination that the command line would refuse.
    """
    suggest, _ = SPACES[space]
    overrides = suggest(trial)
    try:
        return overrides, base.override(**overrides)
    except ConfigError as e:
        trial.set_user_attr("refused", str(e))
        print(f"trial {trial.number} refused by the config, pruned: {e}")
        raise _optuna().TrialPruned(f"refused by the config: {e}") from None


def tune(
    base: config.Config,
    preset: str,
    space: str,
    workdir: str | Path,
    *,
    trials: int,
    seed: int = 0,
    warmup_epochs: int = 4,
    progress: bool = False,
):
    """Run (or carry on) the study in ``workdir`` until it holds ``trials`` finished trials; returns it.

    ``base``: the config every trial starts from (a preset with the command line's overrides);
    ``space``: a name in ``SPACES``. Pruning waits ``warmup_epochs`` epochs and the first 4 trials.
    """
    optuna = _optuna()
    if space not in SPACES:
        raise ConfigError(f"unknown tuning space {space!r}; valid: {sorted(SPACES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=f"{preset}-{space}",
        storage=f"sqlite:///{workdir / 'study.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=warmup_epochs),
    )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Left RUNNING by a process that died: run the same settings again (their folder resumes).
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)

    _, measure = SPACES[space]
    if measure == "transfer":
        sd.require(["mnist"])  # before the first trial, not after it

    def objective(trial):
        overrides, cfg = trial_config(base, space, trial)
        run_dir = workdir / "trials" / _folder(overrides)
        trial.set_user_attr("config", cfg.flat())
        trial.set_user_attr("workdir", str(run_dir))

        def on_epoch(epoch, val):
            trial.report(val, epoch)
            if measure == "validation" and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at {val:.2%}")

        summary = experiment.train_and_evaluate(
            cfg, run_dir, adapters.Omniglot(), preset=preset, progress=progress, test=False, on_epoch=on_epoch
        )
        if measure == "transfer":
            summary["transfer_validation"] = experiment.transfer_validation(
                checkpoint.load(run_dir), eval_seed=cfg.eval.eval_seed
            )
            print(f"transfer validation (MNIST train, 10-way): {summary['transfer_validation']['accuracy']:.2%}")
        trial.set_user_attr("summary", summary)
        return summary["transfer_validation"]["accuracy"] if measure == "transfer" else summary["best_val_accuracy"]

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=())
    write_trials(study, workdir / "trials.json", preset=preset, space=space, base=base)
    return study


def write_trials(study, path: Path, **info) -> dict:
    """Every trial of ``study`` (settings, config, per-epoch validation, result) as JSON."""
    out = {
        **{k: (v.flat() if isinstance(v, config.Config) else v) for k, v in info.items()},
        **provenance.provenance(),
        "best": None,
        "trials": [],
    }
    for t in study.trials:
        out["trials"].append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value,
                "val_accuracy_per_epoch": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "config": t.user_attrs.get("config"),
                "workdir": t.user_attrs.get("workdir"),
                "summary": t.user_attrs.get("summary"),
                **({"refused": t.user_attrs["refused"]} if "refused" in t.user_attrs else {}),
            }
        )
    complete = [t for t in out["trials"] if t["state"] == "COMPLETE"]
    if complete:
        out["best"] = max(complete, key=lambda t: t["value"])
    path.write_text(json.dumps(out, indent=1))
    return out
