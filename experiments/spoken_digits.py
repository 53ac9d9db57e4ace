"""Spoken digits of unseen speakers: FSDD in three speaker folds (4 training, 2 test speakers each).

For each fold (every speaker a test speaker exactly once, ``siamax.data.speaker_folds``), three runs of
the one pipeline (``siamax.experiment.train_and_evaluate`` over ``siamax.data.adapters.SpokenDigits``),
each trained on the 4 training speakers only, with the checkpoint and the threshold chosen on held-out
takes of those speakers (never a test speaker), then scored once on the 2 unseen speakers:

* ``digits``: word labels, all ten digits: ``oneshot_10way``, the support clip of every digit from one
  test speaker and the query from the other (both directions, 400 trials);
* ``heldout``: word labels, trained on digits 0-5 only: ``heldout_4way`` over digits 6-9, words and
  speakers both new to the model (the true one-shot case), and ``oneshot_10way`` again (6 seen words);
* ``speakers``: speaker labels: ``verification``, same/different-speaker pairs of the 2 test speakers
  (ROC AUC, EER, accuracy at the threshold chosen on validation pairs).

MFCC + DTW 1-NN, mean-MFCC cosine and raw log-mel pixels are scored on the very same trials and pairs.
The means over the folds go to ``<workdir>/summary.json`` and ``summary.md``.

    python -m experiments.spoken_digits                          # the spoken_digits preset, folds 0 1 2
    python -m experiments.spoken_digits --folds 0 --workdir runs/sd_try

Data: SIAMAX_DATA_DIR holding ``fsdd/recordings`` (downloaded from the official repository where
missing). Rerun with the same --workdir to resume.
"""

import sys
import time
from pathlib import Path

import jax

from siamax import errors, experiment, flags, provenance, report, runtime
from siamax.data import adapters

HELD_OUT_TRAIN_DIGITS = (0, 1, 2, 3, 4, 5)
# run name -> (label, training digits); each fold trains all three.
RUNS = {"digits": ("digit", None), "heldout": ("digit", HELD_OUT_TRAIN_DIGITS), "speakers": ("speaker", None)}
# (run, section, measure, row label): the rows of the summary, siamax then each baseline.
ROWS = (
    ("digits", "oneshot_10way", "accuracy", "10-way 1-shot words, across unseen speakers"),
    ("heldout", "heldout_4way", "accuracy", "4-way 1-shot on digits 6-9, never trained on (model of digits 0-5)"),
    ("heldout", "oneshot_10way", "accuracy", "10-way 1-shot words, model of digits 0-5 only"),
    ("speakers", "verification", "roc_auc", "speaker verification ROC AUC"),
    ("speakers", "verification", "eer", "speaker verification EER (lower is better)"),
    ("speakers", "verification", "accuracy", "speaker verification accuracy at the validation threshold"),
)
EMBEDDERS = ("siamax", *adapters.SPOKEN_BASELINES)


def run_config(cfg, label: str, n_classes: int, n_devices: int | None = None):
    """``cfg`` for one run: P (``episode_chars``) capped at the run's classes, K raised to keep P x K at
    least the preset's batch and a multiple of the devices (the batch is split over them)."""
    n_devices = n_devices or jax.device_count()
    p = min(cfg.data.episode_chars, n_classes)
    k = max(2, round(cfg.data.episode_chars * cfg.data.episode_drawers / p))
    while (p * k) % n_devices:
        k += 1
    return cfg.override(episode_chars=p, episode_drawers=k)


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, cfg = flags.command_line(
        "python -m experiments.spoken_digits", __doc__, argv, task="spoken_digits", add_arguments=_add_arguments
    )
    root = Path(args.workdir or f"runs/spoken_digits_{preset}")
    t0 = time.perf_counter()
    folds = []
    for fold in args.folds:
        runs = {}
        for run, (label, digits) in RUNS.items():
            if run not in args.runs:
                continue
            n_classes = 4 if label == "speaker" else len(digits or range(10))
            dataset = adapters.SpokenDigits(fold=fold, label=label, train_digits=digits)
            results = experiment.train_and_evaluate(
                run_config(cfg, label, n_classes),
                root / f"fold{fold}" / run,
                dataset,
                preset=preset,
                progress=not args.no_progress,
            )
            print(report.table(results))
            runs[run] = results
        folds.append(runs)
    summary = summarize(folds, args.folds)
    summary["total_wall_minutes"] = (time.perf_counter() - t0) / 60
    provenance.write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(table(summary) + "\n")
    print(table(summary))
    print(f"summary in {root / 'summary.json'} and {root / 'summary.md'}")


def summarize(folds: list[dict], fold_ids) -> dict:
    """Mean, std (n - 1) and per-fold values of every row for siamax and each baseline, plus time."""
    some = next(r for f in folds for r in f.values())
    out = {
        "folds": list(fold_ids),
        "test_speakers": [next(iter(f.values()))["data"]["test_speakers"] for f in folds if f],
        "eval_seed": some["eval_seed"],
        "presets": sorted({str(r["preset"]) for f in folds for r in f.values()}),
        "commits": sorted({str(r.get("git_commit", "?"))[:7] for f in folds for r in f.values()}),
    }
    for run in RUNS:
        done = [f[run] for f in folds if run in f]
        if len(done) == len(folds):
            rows = [(s, m, label) for r, s, m, label in ROWS if r == run]
            out |= {f"{run}/{k}": v for k, v in report.compare(done, rows, EMBEDDERS).items()}
            out[f"{run}/best_val_accuracy"] = report.stats([r["training"]["best_val_accuracy"] for r in done])
            out[f"{run}/wall_minutes"] = report.stats([r["wall_seconds"] / 60 for r in done])
    out["device"] = some.get("device")
    return out


def table(summary: dict) -> str:
    """The summary as Markdown: a row per measure, mean ± std over the folds per embedder."""
    folds = ", ".join(str(s) for s in summary["folds"])
    rows = [(f"{run}/{section}", measure, label) for run, section, measure, label in ROWS]
    lines = report.compare_lines(summary, rows, EMBEDDERS, f"unseen speakers, mean ± std over folds {folds}")
    for run in RUNS:
        v = summary.get(f"{run}/best_val_accuracy")
        if v:
            lines.append(f"| best validation accuracy, {run} run (held-out takes) | {v['mean']:.2%} ± {v['std']:.2%} |")
    done = [r for r in RUNS if f"{r}/wall_minutes" in summary]
    total = summary.get("total_wall_minutes")
    lines.append(
        f"| wall time per run, minutes ({' / '.join(done)}) | "
        + " / ".join(f"{summary[f'{r}/wall_minutes']['mean']:.1f}" for r in done)
        + (f"; all folds {total:.1f}" if total is not None else "")
        + f" on {summary.get('device')} |"
    )
    return "\n".join(lines)


def _add_arguments(parser):
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2], help="speaker folds; default 0 1 2")
    parser.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="which runs of each fold (default: all)"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where each fold's runs (fold<N>/<run>/) and the summary go (default: runs/spoken_digits_<preset>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


if __name__ == "__main__":
    sys.exit(main())
