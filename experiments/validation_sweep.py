"""Compare configs on validation data only (the validation alphabets; with ``--dataset faces`` ORL's
validation people; with ``--dataset spoken_digits`` two of a fold's training speakers): the way siamax
chooses presets and settings.

Each variant is a name and config flags (the same flags as ``experiments.omniglot_oneshot``); every
variant is trained for each seed in its own sub-folder of --workdir (re-running resumes), and
ranked by its best validation one-shot accuracy. Lake's runs and the test alphabets are never
loaded, so nothing chosen here has seen the test set.

    python -m experiments.validation_sweep --preset quick --seeds 0,1 --val-trials 1000 \\
        --variant base --variant 'all20=--train-drawers 20' \\
        --variant 'all20_rot=--train-drawers 20 --rotations true'

Writes --workdir/sweep.json (every run's summary and per-epoch validation accuracy) and prints a table.
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import siamax
from siamax import data as sd
from siamax import errors, experiment, flags, presets, provenance, runtime
from siamax.data import adapters
from siamax.errors import ConfigError

# --dataset: the adapter of a seed, whether each seed also draws its own class split (faces: a different
# split of the people per seed, as experiments.face_verification does; Omniglot's split is fixed; spoken
# digits: seed k is speaker fold k % 3, validated on 2 of its training speakers, trained on the other 2),
# and what the validation data are.
DATASETS = {
    "omniglot": (lambda seed: adapters.Omniglot(), False, "alphabets"),
    "faces": (lambda seed: adapters.Faces(), True, "people"),
    "spoken_digits": (
        lambda seed: adapters.SpokenDigits(fold=seed % 3, validation="speakers"),
        False,
        "speakers of the training speakers",
    ),
}


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition("=")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"variant name must be a plain identifier, got {name!r}")
    return name, shlex.split(flags)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"repeated seeds in {text!r}")
    return seeds


def _add_arguments(parser):
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        required=True,
        metavar="NAME[=FLAGS]",
        help="a variant: a name, optionally '=' and config flags, e.g. 'rot=--rotations true'",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="omniglot",
        help="omniglot: the validation alphabets; faces: ORL's validation people (each seed its own split); "
        "spoken_digits: word recognition across 2 validation speakers of FSDD fold (seed %% 3)'s training speakers",
    )
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds; each variant runs per seed")
    parser.add_argument("--workdir", default="runs/validation_sweep", help="one sub-folder per variant and seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    parser.add_argument(
        "--transfer-validation",
        action="store_true",
        help="also score each run's chosen model 10-way one-shot on MNIST's training set (never its test set), "
        "next to 1-NN: the validation of the transfer experiment",
    )


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, common = flags.command_line(
        "python -m experiments.validation_sweep", __doc__, argv, task="tuning", add_arguments=_add_arguments
    )
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be unique, got {names}")
    flag_parser = argparse.ArgumentParser(prog="variant flags", allow_abbrev=False, add_help=False, exit_on_error=False)
    flags.add_arguments(flag_parser, preset)
    cfgs = {}
    for name, variant_flags in args.variant:
        try:
            given = {k: v for k, v in vars(flag_parser.parse_args(variant_flags)).items() if v is not None}
        except (argparse.ArgumentError, SystemExit) as e:
            raise ConfigError(f"variant {name!r}: bad flags {variant_flags}: {e}") from None
        cfgs[name] = common.override(**given)

    if args.transfer_validation:
        sd.require(["mnist"])  # before the first run, not after it
    base = presets.PRESETS[preset].flat()
    workdir = Path(args.workdir)
    out = {"preset": preset, "seeds": args.seeds, "command": sys.argv, **provenance.provenance(), "runs": []}
    for name, cfg in cfgs.items():
        for seed in args.seeds:
            make_dataset, split_per_seed, _ = DATASETS[args.dataset]
            run_cfg = cfg.override(seed=seed, **({"split_seed": seed} if split_per_seed else {}))
            changed = experiment.config_diff(base, run_cfg.flat())
            print(f"== {name} seed {seed}: {changed or 'preset as is'}", flush=True)
            run_dir = workdir / f"{name}_seed{seed}"
            summary = experiment.train_and_evaluate(
                run_cfg, run_dir, make_dataset(seed), preset=preset, progress=not args.no_progress, test=False
            )
            history = [json.loads(line)["val_accuracy"] for line in (run_dir / "metrics.jsonl").open()]
            if args.transfer_validation:
                summary["transfer_validation"] = experiment.transfer_validation(
                    siamax.load(run_dir), eval_seed=run_cfg.eval.eval_seed
                )
            out["runs"].append(
                {
                    "variant": name,
                    "seed": seed,
                    "config": run_cfg.flat(),
                    **summary,
                    "val_accuracy_per_epoch": history,
                }
            )
            (workdir / "sweep.json").write_text(json.dumps(out, indent=1))
    extra = " transfer val (mean)" if args.transfer_validation else ""
    print(f"\n{'variant':<30} {'best val (mean)':>16} {'per seed':>24} {'train s':>8}{extra}")
    for name in cfgs:
        runs = [r for r in out["runs"] if r["variant"] == name]
        accs = [r["best_val_accuracy"] for r in runs]
        line = (
            f"{name:<30} {statistics.mean(accs):>16.2%} {' '.join(f'{a:.1%}' for a in accs):>24} "
            f"{statistics.mean(r['train_seconds'] for r in runs):>8.0f}"
        )
        if args.transfer_validation:
            line += f" {statistics.mean(r['transfer_validation']['accuracy'] for r in runs):>19.2%}"
        print(line)
    print(f"(validation {DATASETS[args.dataset][2]} only; {workdir / 'sweep.json'})")


if __name__ == "__main__":
    sys.exit(main())
