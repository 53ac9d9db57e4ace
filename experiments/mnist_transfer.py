"""MNIST transfer (Koch et al. 2015, section 5): train the reduced 35x35 network on Omniglot
downsampled 3x, then classify MNIST digits 10-way one-shot (400 trials) with no fine-tuning,
next to a 1-NN pixel baseline.

    python -m experiments.mnist_transfer                          # mnist_quick on CPU, mnist_paper on GPU
    python -m experiments.mnist_transfer --reuse runs/mnist_quick_seed0   # evaluate an exported model

Data: SIAMAX_DATA_DIR (a folder laid out like the project's shared/data); whatever is missing
there is downloaded first when the machine is online, and checked against its sha256.
"""

import sys

import jax

import siamax
from siamax import config, data, errors, experiment, runtime, sharding


def _default_preset() -> str:
    return "mnist_quick" if jax.default_backend() == "cpu" else "mnist_paper"


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, cfg = experiment.command_line(
        "python -m experiments.mnist_transfer",
        __doc__,
        argv,
        default_preset=_default_preset,
        add_arguments=_add_arguments,
    )
    workdir = args.workdir or args.reuse or f"runs/mnist_{preset}_seed{cfg.seed}"
    if args.reuse:
        data.require(["mnist"])
        params = siamax.load(args.reuse)
    else:
        data.require(["omniglot", "lake_runs", "mnist"])  # all of it before the first step
        experiment.run(cfg, workdir, preset=preset, progress=not args.no_progress)
        if not sharding.is_primary():
            return  # process 0 evaluates and writes the results
        params = siamax.load(workdir)
    experiment.mnist_transfer(params, workdir, eval_seed=cfg.eval.eval_seed, trials=args.trials)


def _add_arguments(parser):
    parser.add_argument(
        "--workdir", default=None, help="where the run's files go (default: runs/mnist_<preset>_seed<seed>)"
    )
    parser.add_argument(
        "--reuse",
        default=None,
        metavar="MODEL",
        help="skip training: evaluate this exported model (a work directory or model.msgpack)",
    )
    parser.add_argument("--trials", type=config.positive_int, default=400, help="MNIST 10-way one-shot trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


if __name__ == "__main__":
    sys.exit(main())
