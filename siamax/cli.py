"""The ``siamax`` command: Siamese networks on your own folders of images or sound clips.

    siamax train DATA --workdir W [--preset P] [--color auto|rgb|gray] [--objective ...] [--energy ...]
                 [--image-size S] [--max-minutes M]
    siamax evaluate MODEL DATA [--n-way N] [--shots K] [--trials T] [--json PATH]
    siamax verify MODEL IMAGE_A IMAGE_B [--json]
    siamax identify MODEL GALLERY QUERY... [-k K] [--json]
    siamax index build MODEL GALLERY INDEX [--overwrite] [--approximate] [multi-process flags]
    siamax index search INDEX QUERY... [-k K] [--json]
    siamax export MODEL OUT [--overwrite]
    siamax pack DATA OUT [--image-size S] [--preset P] [--shard-size N]
    siamax serve MODEL [--index INDEX] [--host H] [--port P] [--token-file F]

DATA and GALLERY are folders laid out DIR/<class>/<image> or DIR/<group>/<class>/<image>, or of sound
clips, DIR/<class>/<clip> (.wav, .flac: told from the files); MODEL is a work directory of `siamax
train` (or of the main job) or a model.msgpack, which remembers what it was trained on (ink drawings,
photos or audio; gray or RGB; the audio front-end): the files given to it must be of that kind.
Without --preset, `siamax train` chooses one for what DATA holds (ink drawings: folder, photos:
faces, audio clips: spoken_digits) and says which. `siamax COMMAND --help` explains each command. A mistake
gets one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from siamax import commands, errors, flags, presets, report, runtime, sharding

PROG = "siamax"
TRIALS = 400  # siamax evaluate's one-shot trials, rounded up to whole episodes


def _positive(text: str) -> int:
    return flags.positive_int(text)


def _at_least_two(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected 2 or more (a one-shot trial chooses among N classes), got {text!r}")
    return value


def _positive_number(text: str, unit: str = "") -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number{unit}, got {text!r}")
    return value


def _minutes(text: str) -> float:
    return _positive_number(text, " of minutes")


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
        "data",
        metavar="DATA",
        help="folder of images, DATA/<class>/<image> or DATA/<group>/<class>/<image>, or of sound clips, "
        "DATA/<class>/<clip> (.wav, .flac)",
    )
    parser.add_argument("--workdir", required=True, help="where checkpoints, the model, results and plots go")
    parser.add_argument(
        "--max-minutes",
        type=_minutes,
        default=None,
        help="time budget (a positive number of minutes, data loading included): training stops cleanly at an "
        "epoch boundary before it; rerun with a new budget to carry on",
    )
    parser.add_argument(
        "--fractions",
        type=_fraction_triple,
        default=(0.7, 0.15, 0.15),
        help="train,validation,test fractions of the classes (default 0.7,0.15,0.15); saved as W/splits.json",
    )
    _reading_arguments(
        parser,
        color_help="images in colour (rgb: a 3-channel model) or gray; auto: rgb if some image of the folder has "
        "colour. Sets the model's channels unless --channels is given (images only)",
    )


def _reading_arguments(parser: argparse.ArgumentParser, *, color_help: str) -> None:
    """How a folder is read (train, pack): --ink, --layout, --color, --no-progress."""
    parser.add_argument(
        "--ink", choices=("auto", "dark", "light"), default="auto", help="stroke polarity (auto: from the borders)"
    )
    parser.add_argument(
        "--layout", choices=("auto", "classes", "groups"), default="auto", help="folder layout (auto: detect)"
    )
    parser.add_argument("--color", choices=("auto", "rgb", "gray"), default="auto", help=color_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def train(argv: Sequence[str]) -> int:
    kinds = {}

    def task_of(args) -> tuple[str, str]:  # without --preset: the preset for what the folder holds
        kinds["kind"] = kind = commands.folder_kind(args.data, color=args.color, layout=args.layout)
        return presets.folder_task(kind.modality), kind.describe()

    args, preset, cfg = flags.command_line(
        f"{PROG} train",
        "Train a Siamese network on the classes of a folder of images: the classes are split into train, "
        "validation and test (by class, seeded, W/splits.json); the checkpoint is chosen by one-shot accuracy on "
        "the validation classes (on a folder with too few classes for that: on held-out images of the training "
        "classes, said so); W/model.msgpack carries the same/different threshold chosen on them (the EER point); "
        "the test classes are scored at the end next to raw pixels (W/results.json, plots). Rerun the same "
        "command to resume. Folders of photos and of sound clips (told from the files) train as well: without "
        "--preset, with the preset for what the folder holds (ink drawings: folder, photos: faces, audio clips: "
        "spoken_digits; said on the first line).",
        argv,
        task="folder",
        add_arguments=_train_arguments,
        task_of=task_of,
    )
    kind = kinds.get("kind") or commands.folder_kind(args.data, color=args.color, layout=args.layout)
    cfg = commands.folder_config(cfg, kind, color=args.color, channels_given=args.channels is not None)
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
        color=args.color,
        kind=kind,
    )
    print(report.table(results))
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate, verify, identify, index


def _trials(trials: int | None, n_way: int) -> int:
    """--trials, a whole number of episodes of ``n_way`` queries (the default: TRIALS rounded up to one)."""
    if trials is None:
        return math.ceil(TRIALS / n_way) * n_way
    if trials % n_way:
        below, above = trials // n_way * n_way, math.ceil(trials / n_way) * n_way
        raise errors.InputError(
            f"--trials {trials} is not a multiple of --n-way {n_way}: each {n_way}-way episode asks one query of "
            f"each of its {n_way} classes; use --trials {above}" + (f" or {below}" if below else "")
        )
    return trials


def _writable(path: Path, flag: str, *, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: for a file, its folder must exist;
    a folder may be created (its nearest existing parent must then be a writable folder)."""
    if folder and path.exists() and not path.is_dir():
        raise errors.InputError(f"{flag} {path} is a file: give a folder (it is created if need be)")
    if not folder and path.is_dir():
        raise errors.InputError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'results.json'}")
    if not folder and not path.parent.is_dir():
        raise errors.InputError(
            f"{flag} {path}: the folder {path.parent} does not exist; create it first or choose another path"
        )
    base = path if folder else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise errors.InputError(f"{flag} {path} cannot be created: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise errors.InputError(f"{flag} {path} cannot be written: {base}: {e.strerror or e}") from e


def _evaluate(args) -> int:
    trials = _trials(args.trials, args.n_way)
    out = Path(args.out or f"siamax_eval_{Path(args.data).resolve().name}")
    _writable(out, "--out", folder=True)
    if args.json:
        _writable(Path(args.json), "--json", folder=False)
    model = commands.load_models(args.model)
    results = commands.evaluate_folder(
        model,
        args.data,
        out,
        n_way=args.n_way,
        shots=args.shots,
        trials=trials,
        pairs=args.pairs,
        eval_seed=args.eval_seed,
        ink=args.ink,
        plots=not args.no_plots,
        progress=not args.no_progress,
        json_path=args.json,
        tta=args.tta,
    )
    print(report.table(results))
    cost = results["cost"]
    if cost["tower_passes_per_image"] > 1:
        print(f"{cost['members']} model(s) x {cost['tta']} distortion(s): {cost['tower_passes_per_image']} tower "
              f"passes per image; scoring took {cost['seconds']:.1f} s")  # fmt: skip
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
    sharding.initialize_from_args(args)  # before anything touches the devices
    model = commands.load_model(args.model)
    out = commands.build_index(model, args.gallery, args.index, overwrite=args.overwrite, approximate=args.approximate)
    print(f"index of {args.gallery} written to {out}")
    return 0


def _index_search(args) -> int:
    r = commands.search_index(args.index, args.queries, k=args.k)
    _print(r, args.json, _matches_table(r))
    return 0


def _pack(args) -> int:
    r = commands.pack_folder(
        args.data,
        args.out,
        image_size=args.image_size,
        preset=args.preset,
        ink=args.ink,
        color=args.color,
        layout=args.layout,
        shard_size=args.shard_size,
        progress=not args.no_progress,
    )
    print(r.summary())
    print(f"train on it with: {PROG} train {args.out} --workdir W")
    return 0


def _export(args) -> int:
    from siamax import stablehlo  # jax.export: loaded for this command only

    out = stablehlo.write(commands.load_model(args.model), args.out, overwrite=args.overwrite)
    print(f"embed, score and score_embeddings (StableHLO) and {stablehlo.MANIFEST} written to {out}")
    return 0


def _serve(args) -> int:
    from siamax import serve  # Starlette and uvicorn: loaded for this command only

    limits = serve.Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels, max_seconds=args.max_seconds
    )
    serve.serve(args.model, index=args.index, host=args.host, port=args.port, token_file=args.token_file,
                insecure=args.insecure, limits=limits, max_batch=args.max_batch, wait_s=args.batch_wait_ms / 1000,
                timeout_s=args.timeout, access_log=args.access_log, workers=args.workers)  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="train on a folder's classes (see 'siamax train --help')", add_help=False)
    model_help = "a work directory of 'siamax train' or the main job, or a model.msgpack"

    e = sub.add_parser("evaluate", help="score a model on a folder whose classes are all new to it", allow_abbrev=False)
    e.add_argument(
        "model",
        metavar="MODEL",
        nargs="+",
        help=model_help + "; two or more: scored as one ensemble (the mean of their probabilities, at the mean of "
        "their thresholds; trained on the same kind of data, at the same input size)",
    )
    e.add_argument(
        "data",
        metavar="DATA",
        help="folder of the model's kind: images, DATA/<class>/<image> or DATA/<group>/<class>/<image>, or sound "
        "clips, DATA/<class>/<clip>",
    )
    e.add_argument("--n-way", type=_at_least_two, default=5, help="classes per one-shot trial, 2 or more (default 5)")
    e.add_argument("--shots", type=_positive, default=1, help="support images per class (default 1)")
    e.add_argument(
        "--trials",
        type=_positive,
        default=None,
        help=f"one-shot trials (queries): a multiple of --n-way, as each episode asks one query of each of its N "
        f"classes (default {TRIALS}, rounded up to a multiple of --n-way)",
    )
    e.add_argument("--pairs", type=_positive, default=10_000, help="verification pairs, half same (default 10000)")
    e.add_argument("--eval-seed", type=int, default=0, help="seed of every pair, trial and query drawn (default 0)")
    e.add_argument(
        "--out", default=None, help="folder for evaluation.json and the plots (default ./siamax_eval_<DATA name>)"
    )
    e.add_argument(
        "--json", default=None, metavar="PATH", help="also write the results as JSON to PATH (its folder must exist)"
    )
    e.add_argument(
        "--ink", choices=("auto", "dark", "light"), default="auto", help="stroke polarity (auto: from the borders)"
    )
    e.add_argument(
        "--tta",
        type=_positive,
        default=1,
        metavar="N",
        help="test-time augmentation: score every image under N fixed distortions (the identity and N-1 of the "
        "paper's affine ones, the same in every run) and average the probabilities; N times the tower passes, the time "
        "is reported (default 1: none; images only)",
    )
    e.add_argument("--no-plots", action="store_true", help="skip the plots")
    e.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    e.set_defaults(run=_evaluate)

    v = sub.add_parser("verify", help="same class or not: the probability for two images", allow_abbrev=False)
    v.add_argument("model", metavar="MODEL", help=model_help)
    v.add_argument("image_a", metavar="IMAGE_A", help="an image file (a sound file for a model trained on audio)")
    v.add_argument("image_b", metavar="IMAGE_B", help="another one")
    v.add_argument("--json", action="store_true", help='print {"probability", "same", "threshold"} as JSON')
    v.set_defaults(run=_verify)

    i = sub.add_parser("identify", help="the nearest classes of a gallery for each query image", allow_abbrev=False)
    i.add_argument("model", metavar="MODEL", help=model_help)
    i.add_argument("gallery", metavar="GALLERY", help="class-folder tree, one or more images (or clips) per class")
    i.add_argument("queries", metavar="QUERY", nargs="+", help="image (or sound) files to identify")
    i.add_argument("-k", type=_positive, default=5, help="classes per query (default 5)")
    i.add_argument("--json", action="store_true", help="print the matches as JSON")
    i.set_defaults(run=_identify)

    x = sub.add_parser("index", help="embed a gallery once (build), then search it (search)", allow_abbrev=False)
    xs = x.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = xs.add_parser("build", help="embed GALLERY with MODEL into the index folder INDEX", allow_abbrev=False)
    b.add_argument("model", metavar="MODEL", help=model_help)
    b.add_argument("gallery", metavar="GALLERY", help="class-folder tree, one or more images (or clips) per class")
    b.add_argument("index", metavar="INDEX", help="new folder for the index (and a copy of the model)")
    b.add_argument(
        "--overwrite", action="store_true", help="replace the index already in INDEX (without it, that is refused)"
    )
    b.add_argument(
        "--approximate",
        action="store_true",
        help="an approximate index (an HNSW graph, faiss): far faster searches of a large gallery that may miss "
        "some of the best matches; its recall@10 against exact search is measured and printed. Euclidean and "
        "cosine models only (default: exact)",
    )
    sharding.add_arguments(b)
    b.set_defaults(run=_index_build)
    s = xs.add_parser("search", help="the nearest classes in INDEX for each query (the answers of identify)")
    s.add_argument("index", metavar="INDEX", help="an index folder made by 'siamax index build'")
    s.add_argument("queries", metavar="QUERY", nargs="+", help="image (or sound) files to identify")
    s.add_argument("-k", type=_positive, default=5, help="classes per query (default 5)")
    s.add_argument("--json", action="store_true", help="print the matches as JSON")
    s.set_defaults(run=_index_search)

    k = sub.add_parser(
        "pack",
        help="write a folder once as ArrayRecord shards that 'siamax train' reads from disk (data beyond memory)",
        description="Decode a class folder (images or sound clips) into the model's input format once and write it "
        "as ArrayRecord shards with a manifest, in bounded memory; 'siamax train OUT' then streams its batches from "
        "disk (the same batches as from memory). Interrupted, the same command finishes the missing shards and "
        "rewrites a damaged one (named).",
        allow_abbrev=False,
    )
    k.add_argument("data", metavar="DATA", help="folder DATA/<class>/<image>, DATA/<group>/<class>/<image> or "
                   "DATA/<class>/<clip>")  # fmt: skip
    k.add_argument("out", metavar="OUT", help="new (or empty) folder for the packed dataset")
    k.add_argument("--image-size", type=_positive, default=None, help="the model's input size S the examples are "
                   "written at (default: that of --preset)")  # fmt: skip
    k.add_argument("--preset", choices=presets.preset_names(), default=None, help="the preset whose input size "
                   "to use (default: the one 'siamax train' chooses for what DATA holds)")  # fmt: skip
    k.add_argument("--shard-size", type=_positive, default=commands.packed.SHARD_SIZE,
                   help=f"examples per shard (default {commands.packed.SHARD_SIZE})")  # fmt: skip
    _reading_arguments(k, color_help="images in colour or gray (auto: rgb if some image looked at has colour)")
    k.set_defaults(run=_pack)

    o = sub.add_parser(
        "export", help="the model as StableHLO (jax.export) that JAX alone can run, with a manifest", allow_abbrev=False
    )
    o.add_argument("model", metavar="MODEL", help=model_help)
    o.add_argument("out", metavar="OUT", help="new folder for the exported functions and manifest.json")
    o.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    o.set_defaults(run=_export)

    w = sub.add_parser(
        "serve", help="verification and gallery search over HTTP (see docs/serve.md)", allow_abbrev=False
    )
    w.add_argument("model", metavar="MODEL", help=model_help)
    w.add_argument("--index", default=None, help="index folder of 'siamax index build' to search and change "
                   "(a new folder: an empty gallery, filled by POST /v1/index/items)")  # fmt: skip
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    w.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    w.add_argument("--token-file", default=None, help="file holding the token every request but /healthz must send "
                   "as 'Authorization: Bearer <token>' (16+ characters)")  # fmt: skip
    w.add_argument(
        "--insecure", action="store_true", help="listen beyond this machine without a token (refused otherwise)"
    )
    w.add_argument(
        "--max-upload-mb", type=_positive_number, default=20.0, help="largest request body, MiB (default 20)"
    )
    w.add_argument(
        "--max-pixels", type=_positive, default=25_000_000, help="largest image, width x height (default 25e6)"
    )
    w.add_argument("--max-seconds", type=_positive_number, default=60.0, help="longest sound clip, s (default 60)")
    w.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests (default 2)"
    )
    w.add_argument("--max-batch", type=_positive, default=32, help="most images in one device call (default 32)")
    w.add_argument("--timeout", type=_positive_number, default=30.0, help="seconds a request may take (default 30)")
    w.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes on one port (default 1): each holds the model and the gallery (kept in step "
        "between them) and uses a core for HTTP and decoding; about one per core gives the most requests/s",
    )
    w.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (off by default: it costs ~10%% of the event loop's time; a reverse proxy "
        "in front logs them anyway). Errors and 500s are always logged",
    )
    w.set_defaults(run=_serve)
    return parser


def _interrupted(argv: list[str]) -> str:
    """What Ctrl-C says: training resumes; the other commands start again."""
    return errors.RESUME if argv[:1] == ["train"] else errors.RESTART


@errors.guard(interrupted=_interrupted)
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
