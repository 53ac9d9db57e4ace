"""The main job: train a Siamese network on Omniglot, early-stop on validation alphabets, and
report one-shot accuracy on Lake's 20 runs and the test alphabets next to Koch et al. (2015).

    python -m experiments.omniglot_oneshot                     # quick on CPU, paper on GPU/TPU
    python -m experiments.omniglot_oneshot --preset paper --workdir runs/paper
    python -m experiments.omniglot_oneshot --preset quick --learning-rate 3e-4

Run it again with the same --workdir after an interruption and it resumes where it stopped.
--pack DIR: training streams its batches from a pack of the training table in DIR (the same batches).
Data: SIAMAX_DATA_DIR (a folder laid out like the project's shared/data); whatever is missing
there is downloaded first when the machine is online, and checked against its sha256.
Several hosts: start one process per host with the same flags plus --coordinator-address,
--num-processes and --process-id (or --auto-cluster on SLURM and the like).
"""

import sys

from siamax import errors, experiment, flags, report, runtime
from siamax.data import adapters


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, cfg = flags.command_line(
        "python -m experiments.omniglot_oneshot",
        __doc__,
        argv,
        task="omniglot",
        add_arguments=_add_arguments,
    )
    workdir = args.workdir or f"runs/omniglot_{preset}_seed{cfg.seed}"
    results = experiment.train_and_evaluate(
        cfg,
        workdir,
        adapters.Omniglot(),
        preset=preset,
        progress=not args.no_progress,
        plots_=not args.no_plots,
        pack=args.pack,
    )
    print(report.table(results))


def _add_arguments(parser):
    parser.add_argument(
        "--workdir",
        default=None,
        help="where checkpoints, metrics, plots, results.json and the exported model go "
        "(default: runs/omniglot_<preset>_seed<seed>)",
    )
    parser.add_argument(
        "--pack",
        default=None,
        metavar="DIR",
        help="train from a packed dataset in DIR (ArrayRecord shards, batches streamed from disk): this run's "
        "training table is written there once (a rerun, a resume, reuses it; a pack of another table is "
        "refused); the same batches as in memory. Validation and test stay in memory",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("--no-plots", action="store_true", help="no plots (results.json and the model are written)")


if __name__ == "__main__":
    sys.exit(main())
