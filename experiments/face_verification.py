"""Face verification and one-shot identification of unseen people: ORL faces split by person.

For each seed, a different split of the 38 people (26 train / 6 validation / 6 test, ``--split-seed``
= the seed) through the one pipeline (``siamax.experiment.train_and_evaluate`` over
``siamax.data.adapters.Faces``): trained on the training people, the checkpoint and the
same/different threshold chosen on the validation people, then scored once on the test people:
verification ROC AUC, EER and accuracy at the validation threshold, 5-way and 6-way one-shot
identification, retrieval; raw pixels and eigenfaces (PCA fitted on the training people) on the same
pairs and trials. The means over the seeds go to ``<workdir>/summary.json`` and ``summary.md``.

    python -m experiments.face_verification                       # the faces preset, seeds 0 1 2
    python -m experiments.face_verification --seeds 0 1 2 3 4 --workdir runs/faces

Data: SIAMAX_DATA_DIR holding ``orl_faces/s3..s40/*.pgm`` (the project's shared/data); ORL has no
official download. Rerun with the same --workdir to resume.
"""

import sys
import time
from pathlib import Path

from siamax import errors, experiment, flags, provenance, report, runtime
from siamax.data import adapters

# (section, measure, row label): the rows of the summary, siamax then each baseline.
ROWS = (
    ("verification", "roc_auc", "verification ROC AUC"),
    ("verification", "eer", "verification EER (lower is better)"),
    ("verification", "accuracy", "verification accuracy at the validation threshold"),
    ("random_5way_1shot", "accuracy", "5-way 1-shot identification"),
    ("random_6way_1shot", "accuracy", "6-way 1-shot identification (all test people)"),
    ("retrieval", "precision_at_1", "retrieval precision@1"),
)
EMBEDDERS = ("siamax", *adapters.FACE_BASELINES)


@errors.guard
def main(argv=None):
    runtime.keep_freed_memory()  # fast CPU steps: see siamax.runtime
    args, preset, cfg = flags.command_line(
        "python -m experiments.face_verification", __doc__, argv, task="faces", add_arguments=_add_arguments
    )
    root = Path(args.workdir or f"runs/faces_{preset}")
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        run_cfg = cfg.override(seed=seed, split_seed=seed)
        results = experiment.train_and_evaluate(
            run_cfg, root / f"seed{seed}", adapters.Faces(), preset=preset, progress=not args.no_progress
        )
        print(report.table(results))
        runs.append(results)
    summary = summarize(runs)
    summary["total_wall_minutes"] = (time.perf_counter() - t0) / 60
    provenance.write_json(root / "summary.json", summary)
    (root / "summary.md").write_text(table(summary) + "\n")
    print(table(summary))
    print(f"summary in {root / 'summary.json'} and {root / 'summary.md'}")


def summarize(runs: list[dict]) -> dict:
    """Mean, std (n - 1) and per-seed values of every row for siamax and each baseline, plus time."""
    out = {
        "runs": len(runs),
        "seeds": [r["seed"] for r in runs],
        "split_seeds": [r["data"]["split_seed"] for r in runs],
        "eval_seed": runs[0]["eval_seed"],
        "presets": sorted({str(r["preset"]) for r in runs}),
        "commits": sorted({str(r.get("git_commit", "?"))[:7] for r in runs}),
        **report.compare(runs, ROWS, EMBEDDERS),
        "best_val_accuracy": report.stats([r["training"]["best_val_accuracy"] for r in runs]),
        "validation_threshold_accuracy": report.stats([r["training"]["threshold_validation_accuracy"] for r in runs]),
        "wall_minutes": report.stats([r["wall_seconds"] / 60 for r in runs]),
        "device": runs[0].get("device"),
    }
    return out


def table(summary: dict) -> str:
    """The summary as Markdown: a row per measure, mean ± std over the seeds per embedder."""
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = report.compare_lines(summary, ROWS, EMBEDDERS, f"unseen people, mean ± std over seeds {seeds}")
    v = summary["best_val_accuracy"]
    lines.append(f"| best validation one-shot accuracy (validation people) | {v['mean']:.2%} ± {v['std']:.2%} |")
    w = summary["wall_minutes"]
    per = " / ".join(f"{x:.1f}" for x in w["values"])
    total = summary.get("total_wall_minutes")
    lines.append(
        f"| wall time per seed, minutes | {w['mean']:.1f} ± {w['std']:.1f} ({per})"
        + (f"; all seeds {total:.1f}" if total is not None else "")
        + f" on {summary.get('device')} |"
    )
    return "\n".join(lines)


def _add_arguments(parser):
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds, each with its own person split (--split-seed = the seed); default 0 1 2",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where each seed's run (seed<N>/) and the summary go (default: runs/faces_<preset>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


if __name__ == "__main__":
    sys.exit(main())
