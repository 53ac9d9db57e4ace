"""Hyper-parameter tuning with optuna (TPE, median pruning on per-epoch validation accuracy), on
validation data only: Lake's runs, the test alphabets and MNIST's test set are never loaded. Space
quick maximises one-shot accuracy on the validation alphabets; space mnist (with --preset
mnist_quick) the transfer validation, 10-way one-shot on MNIST's training set, unpruned. The study is stored
in --workdir (study.db): rerun the same command to carry on. Writes --workdir/trials.json (every
trial's settings, config and curve) and prints the best trials. A trial whose settings the config
refuses (siamax.config) is pruned, its reason recorded.

    python -m experiments.tune --preset quick --space quick --trials 24 --val-trials 1000 \\
        --workdir runs/tune_quick
    python -m experiments.tune --preset mnist_quick --space mnist --trials 12 --workdir runs/tune_mnist

Needs optuna (pip install 'siamax[tune]').
"""

import sys

from siamax import errors, flags, runtime, tuning


def _add_arguments(parser):
    parser.add_argument("--space", default="quick", choices=sorted(tuning.SPACES), help="what is tuned (default quick)")
    parser.add_argument("--trials", type=flags.positive_int, default=20, help="finished trials to reach (default 20)")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    parser.add_argument(
        "--workdir", default="runs/tune", help="the study (study.db), trials.json and one folder per trial"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, base = flags.command_line(
        "python -m experiments.tune", __doc__, argv, task="tuning", add_arguments=_add_arguments
    )
    study = tuning.tune(
        base, preset, args.space, args.workdir, trials=args.trials, seed=args.search_seed, progress=not args.no_progress
    )
    done = sorted((t for t in study.trials if t.value is not None), key=lambda t: -t.value)
    print(f"\n{'trial':>5} {'state':>9} {'best val':>9}  settings")
    for t in done[:10]:
        print(f"{t.number:>5} {t.state.name:>9} {t.value:>9.2%}  {t.params}")
    measured = (
        "MNIST-train transfer validation" if tuning.SPACES[args.space][1] == "transfer" else "validation alphabets"
    )
    print(f"({measured} only; {len(study.trials)} trials in {args.workdir}/study.db, trials.json)")


if __name__ == "__main__":
    sys.exit(main())
