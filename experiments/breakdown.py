"""Why the two 20-way within-alphabet protocols differ: Lake's 20 runs and siamax's 400 test trials,
alphabet by alphabet (and Lake's run by run), from the ``results.json`` of one or more main-job runs
(means over the runs given, e.g. the seeds of a preset).

    python -m experiments.breakdown results/quick_seeds/seed*/results.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from siamax import errors
from siamax.errors import InputError


def _load(paths):
    runs = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: not a readable results.json ({e})") from None
        if any("by" not in r.get(k, {}) for k in ("lake20", "within_alphabet")) or "by_task" not in r:
            raise InputError(f"{p}: has no per-alphabet breakdown (made before it was recorded); rerun the job")
        runs.append(r)
    return runs


@errors.guard
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.breakdown", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("results", nargs="+", help="results.json files of main-job runs")
    args = parser.parse_args(argv)
    runs = _load(args.results)

    def mean(key, alphabet):
        return statistics.mean(r[key]["by"][alphabet]["accuracy"] for r in runs)

    alphabets = sorted(runs[0]["lake20"]["by"])
    print(f"{'alphabet':34s} {'Lake runs':>10s} {'within':>8s} {'gap':>7s}   (means over {len(runs)} run(s))")
    for a in alphabets:
        lake, within = mean("lake20", a), mean("within_alphabet", a)
        print(f"{a:34s} {lake:>10.1%} {within:>8.1%} {lake - within:>+7.1%}")
    print(f"{'all':34s} {statistics.mean(r['lake20']['accuracy'] for r in runs):>10.1%} "
          f"{statistics.mean(r['within_alphabet']['accuracy'] for r in runs):>8.1%}")  # fmt: skip
    print("\nLake's runs, run by run (support drawer -> query drawer):")
    for task in sorted(runs[0]["by_task"]["lake20"]):
        print(f"  {task:50s} {statistics.mean(r['by_task']['lake20'][task]['accuracy'] for r in runs):>7.1%}")
    print("\nsiamax's within-alphabet test tasks (2 per alphabet, drawers from the test split's four):")
    for task in sorted(runs[0]["by_task"]["within_alphabet"]):
        acc = statistics.mean(r["by_task"]["within_alphabet"][task]["accuracy"] for r in runs)
        print(f"  {task:50s} {acc:>7.1%}")


if __name__ == "__main__":
    sys.exit(main())
