"""Means and standard deviations over seeds, and why the two 20-way within-alphabet protocols differ.

Reads the ``results.json`` of one or more main-job (or ``mnist_transfer``) runs, typically the
seeds of one preset scored on the same evaluation trials (one ``--eval-seed``), and prints a
Markdown table: every protocol's mean, standard deviation (over the runs, ``n - 1``) and the runs'
values. ``--by-alphabet`` adds Lake's runs against siamax's within-alphabet test tasks, alphabet by
alphabet and run by run. ``--out`` writes the same as JSON.

    python -m experiments.summary results/quick_seeds/seed*/results.json --out results/quick_seeds/summary.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from siamax import errors, report
from siamax.errors import InputError

# (key in results.json, row label); rows a run does not have are left out.
ROWS = (
    ("lake20", "Lake's 20 runs, 20-way 1-shot within alphabets (400 trials)"),
    ("within_alphabet", "siamax's 20-way 1-shot within the test alphabets (400 trials)"),
    ("random_20way_1shot", "20-way 1-shot, classes across the test alphabets (400 trials)"),
    ("random_5way_1shot", "5-way 1-shot, classes across the test alphabets (400 trials)"),
    ("random_20way_5shot", "20-way 5-shot, classes across the test alphabets (400 trials)"),
    ("verification", "verification, 10,000 test pairs"),
    ("one_nn", "1-NN on pixels, Lake's runs"),
    ("mnist10", "MNIST 10-way 1-shot (400 trials, MNIST test set)"),
    ("mnist10_one_nn", "MNIST 10-way, 1-NN on pixels, same trials"),
)


def _load(paths, by_alphabet: bool) -> list[dict]:
    runs = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: not a readable results.json ({e})") from None
        if "lake20" not in r or "training" not in r:
            raise InputError(f"{p}: not the results.json of a main-job run (no lake20 or training)")
        if by_alphabet and (any("by" not in r.get(k, {}) for k in ("lake20", "within_alphabet")) or "by_task" not in r):
            raise InputError(f"{p}: has no per-alphabet breakdown (made before it was recorded); rerun the job")
        runs.append(r)
    eval_seeds = {r.get("eval_seed") for r in runs}
    if len(eval_seeds) > 1:
        raise InputError(f"the runs were scored on different trials (eval seeds {sorted(eval_seeds)}): not comparable")
    return runs


def summarize(runs: list[dict]) -> dict:
    """Mean, std and values of every protocol's accuracy, best validation accuracy and wall time."""
    out = {
        "runs": len(runs),
        "seeds": [r.get("seed") for r in runs],
        "eval_seed": runs[0].get("eval_seed"),
        "presets": sorted({str(r.get("preset")) for r in runs}),
        "commits": sorted({str(r.get("git_commit", "?"))[:7] for r in runs}),
    }
    for key, _ in ROWS:
        if all(key in r for r in runs):
            out[key] = report.stats([r[key]["accuracy"] for r in runs])
    out["best_val_accuracy"] = report.stats([r["training"]["best_val_accuracy"] for r in runs])
    out["wall_minutes"] = report.stats([r["wall_seconds"] / 60 for r in runs if "wall_seconds" in r])
    return out


def _table(summary: dict) -> str:
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [f"| | mean ± std over seeds {seeds} | per seed |", "|---|---|---|"]
    rows = (*ROWS, ("best_val_accuracy", "best validation one-shot accuracy (validation alphabets)"))
    for key, label in rows:
        if key in summary:
            s = summary[key]
            per = " / ".join(f"{v:.1%}" for v in s["values"])
            lines.append(f"| {label} | **{s['mean']:.1%}** ± {s['std']:.1%} | {per} |")
    w = summary["wall_minutes"]
    if w["values"]:
        per = " / ".join(f"{v:.1f}" for v in w["values"])
        lines.append(f"| wall time, minutes | {w['mean']:.1f} ± {w['std']:.1f} | {per} |")
    return "\n".join(lines)


def _breakdown(runs: list[dict]) -> str:
    def mean(key, alphabet):
        return statistics.mean(r[key]["by"][alphabet]["accuracy"] for r in runs)

    lines = [
        f"| alphabet | Lake's runs | within-alphabet | gap |   (means over {len(runs)} run(s))",
        "|---|---|---|---|",
    ]
    for a in sorted(runs[0]["lake20"]["by"]):
        lake, within = mean("lake20", a), mean("within_alphabet", a)
        lines.append(f"| {a} | {lake:.1%} | {within:.1%} | {lake - within:+.1%} |")
    lake = statistics.mean(r["lake20"]["accuracy"] for r in runs)
    within = statistics.mean(r["within_alphabet"]["accuracy"] for r in runs)
    lines.append(f"| all | {lake:.1%} | {within:.1%} | {lake - within:+.1%} |")
    for key, title in (
        ("lake20", "Lake's runs, run by run"),
        ("within_alphabet", "siamax's within-alphabet test tasks (2 per alphabet)"),
    ):
        lines.append(f"\n{title}:")
        for task in sorted(runs[0]["by_task"][key]):
            acc = statistics.mean(r["by_task"][key][task]["accuracy"] for r in runs)
            lines.append(f"  {task:60s} {acc:>7.1%}")
    return "\n".join(lines)


@errors.guard
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("results", nargs="+", help="results.json files of main-job runs (one per seed)")
    parser.add_argument("--by-alphabet", action="store_true", help="also the per-alphabet and per-run breakdown")
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    runs = _load(args.results, args.by_alphabet)
    summary = summarize(runs)
    print(_table(summary))
    if args.by_alphabet:
        print()
        print(_breakdown(runs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
