"""MNIST transfer (Koch et al. 2015, section 5): train the reduced 35x35 network on Omniglot
downsampled 3x, then classify MNIST digits 10-way one-shot (400 trials) with no fine-tuning,
next to a 1-NN pixel baseline.

    python -m experiments.mnist_transfer                          # mnist_quick on CPU, mnist_paper on GPU
    python -m experiments.mnist_transfer --reuse runs/mnist_quick_seed0   # evaluate an exported model

Needs SIAMAX_DATA_DIR (a folder laid out like the project's shared/data).
"""

import argparse
import sys

import siamax
from siamax import config, experiment, runtime


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.mnist_transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--preset",
        choices=config.preset_names(),
        default=None,
        help="named config (default: mnist_quick on CPU, mnist_paper on an accelerator)",
    )
    parser.add_argument(
        "--workdir", default=None, help="where the run's files go (default: runs/mnist_<preset>_seed<seed>)"
    )
    parser.add_argument(
        "--reuse",
        default=None,
        metavar="MODEL",
        help="skip training: evaluate this exported model (a work directory or model.msgpack)",
    )
    parser.add_argument("--trials", type=int, default=400, help="MNIST 10-way one-shot trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    preset = args.preset or ("mnist_quick" if experiment.jax_backend() == "cpu" else "mnist_paper")
    try:
        cfg = config.from_args(args, preset)
    except ValueError as e:
        parser.error(str(e))
    workdir = args.workdir or args.reuse or f"runs/mnist_{preset}_seed{cfg.seed}"
    try:
        if args.reuse:
            params = siamax.load(args.reuse)
        else:
            if args.preset is None:
                print(f"no --preset given: using {preset!r} on this {experiment.jax_backend()} machine")
            experiment.run(cfg, workdir, preset=preset, progress=not args.no_progress)
            params = siamax.load(workdir)
        experiment.mnist_transfer(params, workdir, seed=cfg.seed, trials=args.trials)
    except (experiment.ConfigMismatch, experiment.train.NonFiniteLoss, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
