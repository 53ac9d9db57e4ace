"""Ensembles and test-time augmentation of the main job's models, chosen on validation only.

    python -m experiments.omniglot_ensemble --preset quick --members runs/omniglot_quick_seed{0,1,2}

Scores each member (work directories of ``experiments.omniglot_oneshot`` with the same preset and
flags, any seeds), their ensemble (the mean of their probabilities: ``siamax.ensemble``) and each of
these with test-time augmentation (``--tta``) on the validation trials that chose the checkpoints;
the best there (ties: the fewest tower passes) alone is then scored on the test sets. Writes
``<out>/ensemble.json``.
"""

import sys

from siamax import errors, experiment, flags, report
from siamax.data import adapters


@errors.guard
def main(argv=None):
    args, _, cfg = flags.command_line(
        "python -m experiments.omniglot_ensemble", __doc__, argv, task="omniglot", add_arguments=_add_arguments
    )
    r = experiment.ensemble_study(
        cfg, adapters.Omniglot(), args.members, args.out, tta=args.tta, test=not args.no_test,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"chosen on validation: {r['chosen']}")
    if "test" in r:
        print(report.table(r["test"]))


def _add_arguments(parser):
    parser.add_argument(
        "--members", nargs="+", required=True, metavar="WORKDIR", help="the main job's work directories"
    )
    parser.add_argument(
        "--tta", type=flags.positive_ints, default=(1, 4), help="test-time augmentation counts to try (default 1,4)"
    )
    parser.add_argument("--out", required=True, help="folder for ensemble.json")
    parser.add_argument("--no-test", action="store_true", help="validation only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


if __name__ == "__main__":
    sys.exit(main())
