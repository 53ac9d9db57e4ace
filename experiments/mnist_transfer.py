"""MNIST transfer (Koch et al. 2015, section 5): train the reduced 35x35 network on Omniglot
downsampled 3x, then classify MNIST digits 10-way one-shot (400 trials) with no fine-tuning,
next to a 1-NN pixel baseline.

    python -m experiments.mnist_transfer                          # mnist_quick on CPU, mnist_paper on GPU
    python -m experiments.mnist_transfer --reuse runs/mnist_quick_seed0   # evaluate an exported model

Data: SIAMAX_DATA_DIR (a folder laid out like the project's shared/data); whatever is missing
there is downloaded first when the machine is online, and checked against its sha256.
"""

import sys
from pathlib import Path

import siamax
from siamax import data, errors, experiment, flags, provenance, report, runtime
from siamax.data import adapters


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, cfg = flags.command_line(
        "python -m experiments.mnist_transfer",
        __doc__,
        argv,
        task="mnist",
        add_arguments=_add_arguments,
    )
    workdir = args.workdir or args.reuse or f"runs/mnist_{preset}_seed{cfg.seed}"
    if args.reuse:
        data.require(["mnist"])
        params = siamax.load(args.reuse)
        tests = adapters.mnist_tests(params.spec, cfg.eval.eval_seed, args.trials)
        results = experiment.evaluate_model(
            params, tests, workdir, progress=not args.no_progress, extra={"mnist10_eval_seed": cfg.eval.eval_seed}
        )
        results.update(experiment.legacy_keys(results, {"mnist10_one_nn": ("pixels", "mnist10")}))
        provenance.write_json(Path(workdir) / "results.json", results)
        print(report.table(results))
        return
    dataset = adapters.MnistTransfer(trials=args.trials)
    print(
        report.table(experiment.train_and_evaluate(cfg, workdir, dataset, preset=preset, progress=not args.no_progress))
    )


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
    parser.add_argument("--trials", type=flags.positive_int, default=400, help="MNIST 10-way one-shot trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


if __name__ == "__main__":
    sys.exit(main())
