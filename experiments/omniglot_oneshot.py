"""The main job: train a Siamese network on Omniglot, early-stop on validation alphabets, and
report one-shot accuracy on Lake's 20 runs and the test alphabets next to Koch et al. (2015).

    python -m experiments.omniglot_oneshot                     # quick on CPU, paper on GPU/TPU
    python -m experiments.omniglot_oneshot --preset paper --workdir runs/paper
    python -m experiments.omniglot_oneshot --preset quick --learning-rate 3e-4

Run it again with the same --workdir after an interruption and it resumes where it stopped.
Needs SIAMAX_DATA_DIR (a folder laid out like the project's shared/data).
"""

import argparse
import sys

from siamax import config, experiment, runtime


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.omniglot_oneshot",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=config.preset_names(),
        default=None,
        help="named config (default: quick on CPU, paper on an accelerator)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where checkpoints, metrics, plots, results.json and the exported model go "
        "(default: runs/omniglot_<preset>_seed<seed>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    preset = args.preset or experiment.default_preset()
    if args.preset is None:
        print(f"no --preset given: using {preset!r} on this {experiment.jax_backend()} machine")
    try:
        cfg = config.from_args(args, preset)
    except ValueError as e:
        parser.error(str(e))
    workdir = args.workdir or f"runs/omniglot_{preset}_seed{cfg.seed}"
    try:
        experiment.run(cfg, workdir, preset=preset, progress=not args.no_progress)
    except (experiment.ConfigMismatch, experiment.train.NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
