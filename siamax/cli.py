"""The ``siamax`` command: Siamese networks on your own folders of images.

    siamax train DATA --workdir W [--preset folder] [--objective ...] [--energy ...] [--image-size S]
                 [--max-minutes M]
    siamax evaluate MODEL DATA [--n-way N] [--shots K] [--json PATH]
    siamax verify MODEL IMAGE_A IMAGE_B [--json]
    siamax identify MODEL GALLERY QUERY... [-k K] [--json]
    siamax index build MODEL GALLERY INDEX
    siamax index search INDEX QUERY... [-k K] [--json]

DATA and GALLERY are folders laid out DIR/<class>/<image> or DIR/<group>/<class>/<image>; MODEL is a
work directory of `siamax train` (or of the main job) or a model.msgpack. `siamax COMMAND --help`
explains each command. A mistake gets one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from siamax import commands, config, errors, experiment, runtime

PROG = "siamax"


def _positive(text: str) -> int:
    return config.positive_int(text)


def _fraction_triple(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions (train,validation,test), got {text!r}"
        )
    return parts


def _print(obj, as_json: bool, table: str) -> None:
    print(json.dumps(obj, indent=1) if as_json else table)


# ---------------------------------------------------------------------------------------------
# train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", metavar="DATA", help="folder of images: DATA/<class>/<image> or DATA/<group>/<class>/<image>"
    )
    parser.add_argument("--workdir", required=True, help="where checkpoints, the model, results and plots go")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time budget (minutes, data loading included): training stops cleanly at an epoch boundary before it; "
        "rerun with a new budget to carry on",
    )
    parser.add_argument(
        "--fractions",
        type=_fraction_triple,
        default=(0.7, 0.15, 0.15),
        help="train,validation,test fractions of the classes (default 0.7,0.15,0.15); saved as W/splits.json",
    )
    parser.add_argument(
        "--ink", choices=("auto", "dark", "light"), default="auto", help="stroke polarity (auto: from the borders)"
    )
    parser.add_argument(
        "--layout", choices=("auto", "classes", "groups"), default="auto", help="folder layout (auto: detect)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def train(argv: Sequence[str]) -> int:
    args, preset, cfg = experiment.command_line(
        f"{PROG} train",
        "Train a Siamese network on the classes of a folder of images: the classes are split into train, "
        "validation and test (by class, seeded, W/splits.json); the checkpoint is chosen by one-shot accuracy on "
        "the validation classes; W/model.msgpack carries the same/different threshold chosen on them; the test "
        "classes are scored at the end (W/results.json, plots). Rerun the same command to resume.",
        argv,
        default_preset=lambda: "folder",
        add_arguments=_train_arguments,
    )
    results = commands.train_folder(
        cfg,
        args.data,
        args.workdir,
        preset=preset,
        fractions=args.fractions,
        max_minutes=args.max_minutes,
        ink=args.ink,
        layout=args.layout,
        progress=not args.no_progress,
    )
    print(_evaluation_table(results))
    print(f"model, results and plots are in {args.workdir}")
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate, verify, identify, index


def _evaluation_table(r: dict) -> str:
    def pct(x):
        return f"{100 * x:6.2f}%"

    v, pv = r["verification"], r["pixel_baseline"]["verification"]
    lines = [
        f"{r['data']['name']}: {r['data']['images']} images, {r['data']['classes']} classes (all new to the model)"
    ]
    lines.append(f"{'':34s} {'siamax':>10s} {'raw pixels':>12s}")
    lines.append(f"{'verification ROC AUC':34s} {pct(v['roc_auc']):>10s} {pct(pv['roc_auc']):>12s}")
    lines.append(f"{'verification EER':34s} {pct(v['eer']):>10s} {pct(pv['eer']):>12s}")
    lines.append(
        f"{'verification accuracy':34s} {pct(v['accuracy']):>10s} {pct(pv['accuracy']):>12s}"
        f"   (threshold {v['threshold']:.3f}, {v['threshold_from']})"
    )
    for way, o in r["oneshot"].items():
        po = r["pixel_baseline"]["oneshot"][way]
        name = f"one-shot {way} ({o['trials']} trials)"
        lines.append(f"{name:34s} {pct(o['accuracy']):>10s} {pct(po['accuracy']):>12s}")
    ret, pret = r["retrieval"], r["pixel_baseline"]["retrieval"]
    for key, name in (
        ("precision_at_1", "retrieval precision@1"),
        ("recall_at_5", "retrieval recall@5"),
        ("map_at_r", "retrieval MAP@R"),
    ):
        lines.append(f"{name:34s} {pct(ret[key]):>10s} {pct(pret[key]):>12s}")
    return "\n".join(lines)


def _evaluate(args) -> int:
    from siamax import data as sd

    model = commands.load_model(args.model)
    table, folder = sd.image_folder(args.data, size=model.params.spec, ink=args.ink, progress=not args.no_progress)
    results = commands.evaluate_table(
        model, table, n_way=args.n_way, shots=args.shots, trials=args.trials, pairs=args.pairs, eval_seed=args.eval_seed
    )
    out = Path(args.out or f"siamax_eval_{table.name}")
    results = commands.save_evaluation(results, model, table, out, plots=not args.no_plots)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(_evaluation_table(results))
    print(f"evaluation.json and plots are in {out}" + (f"; JSON also in {args.json}" if args.json else ""))
    return 0


def _verify(args) -> int:
    r = commands.verify(commands.load_model(args.model), args.image_a, args.image_b)
    verdict = "same" if r["same"] else "different"
    _print(r, args.json, f"{verdict}: p = {r['probability']:.4f} (threshold {r['threshold']:.3f})")
    return 0


def _matches_table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(r["query"])
        lines += [f"  {i + 1:2d}. {m['label']:30s} {m['score']:.4f}  {m['path']}" for i, m in enumerate(r["matches"])]
    return "\n".join(lines)


def _identify(args) -> int:
    r = commands.identify(commands.load_model(args.model), args.gallery, args.queries, k=args.k)
    _print(r, args.json, _matches_table(r))
    return 0


def _index_build(args) -> int:
    out = commands.build_index(commands.load_model(args.model), args.gallery, args.index)
    print(f"index of {args.gallery} written to {out}")
    return 0


def _index_search(args) -> int:
    r = commands.search_index(args.index, args.queries, k=args.k)
    _print(r, args.json, _matches_table(r))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="train on a folder's classes (see 'siamax train --help')", add_help=False)
    model_help = "a work directory of 'siamax train' or the main job, or a model.msgpack"

    e = sub.add_parser("evaluate", help="score a model on a folder whose classes are all new to it", allow_abbrev=False)
    e.add_argument("model", metavar="MODEL", help=model_help)
    e.add_argument(
        "data", metavar="DATA", help="folder of images: DATA/<class>/<image> or DATA/<group>/<class>/<image>"
    )
    e.add_argument("--n-way", type=_positive, default=5, help="classes per one-shot trial (default 5)")
    e.add_argument("--shots", type=_positive, default=1, help="support images per class (default 1)")
    e.add_argument("--trials", type=_positive, default=400, help="one-shot trials (queries) (default 400)")
    e.add_argument("--pairs", type=_positive, default=10_000, help="verification pairs, half same (default 10000)")
    e.add_argument("--eval-seed", type=int, default=0, help="seed of every pair, trial and query drawn (default 0)")
    e.add_argument(
        "--out", default=None, help="folder for evaluation.json and the plots (default ./siamax_eval_<DATA name>)"
    )
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    e.add_argument(
        "--ink", choices=("auto", "dark", "light"), default="auto", help="stroke polarity (auto: from the borders)"
    )
    e.add_argument("--no-plots", action="store_true", help="skip the plots")
    e.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    e.set_defaults(run=_evaluate)

    v = sub.add_parser("verify", help="same class or not: the probability for two images", allow_abbrev=False)
    v.add_argument("model", metavar="MODEL", help=model_help)
    v.add_argument("image_a", metavar="IMAGE_A", help="an image file")
    v.add_argument("image_b", metavar="IMAGE_B", help="another image file")
    v.add_argument("--json", action="store_true", help='print {"probability", "same", "threshold"} as JSON')
    v.set_defaults(run=_verify)

    i = sub.add_parser("identify", help="the nearest classes of a gallery for each query image", allow_abbrev=False)
    i.add_argument("model", metavar="MODEL", help=model_help)
    i.add_argument("gallery", metavar="GALLERY", help="class-folder tree, one or more images per class")
    i.add_argument("queries", metavar="QUERY", nargs="+", help="image files to identify")
    i.add_argument("-k", type=_positive, default=5, help="classes per query (default 5)")
    i.add_argument("--json", action="store_true", help="print the matches as JSON")
    i.set_defaults(run=_identify)

    x = sub.add_parser("index", help="embed a gallery once (build), then search it (search)", allow_abbrev=False)
    xs = x.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = xs.add_parser("build", help="embed GALLERY with MODEL into the index folder INDEX", allow_abbrev=False)
    b.add_argument("model", metavar="MODEL", help=model_help)
    b.add_argument("gallery", metavar="GALLERY", help="class-folder tree, one or more images per class")
    b.add_argument("index", metavar="INDEX", help="new folder for the index (and a copy of the model)")
    b.set_defaults(run=_index_build)
    s = xs.add_parser("search", help="the nearest classes in INDEX for each query (the answers of identify)")
    s.add_argument("index", metavar="INDEX", help="an index folder made by 'siamax index build'")
    s.add_argument("queries", metavar="QUERY", nargs="+", help="image files to identify")
    s.add_argument("-k", type=_positive, default=5, help="classes per query (default 5)")
    s.add_argument("--json", action="store_true", help="print the matches as JSON")
    s.set_defaults(run=_index_search)
    return parser


@errors.guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    if argv[:1] == ["train"]:
        return train(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
