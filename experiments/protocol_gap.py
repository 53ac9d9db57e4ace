"""Why Lake's 20 runs read higher than siamax's within-alphabet test trials on the same alphabets.

For trained main-job models (e.g. one preset's seeds), two analyses of the test alphabets:

1. by drawer: 20-way within-alphabet tasks with support and query drawers drawn from all 20
   (``--per-alphabet`` tasks per alphabet), pooled by support drawer, by query drawer, and for the
   tasks whose two drawers are both among Lake's (1-8) or both among the split's test drawers;
2. Lake's runs rebuilt from the Omniglot table (their images found by their pixels), and each run
   with its characters, its drawers, or both replaced by random ones of its alphabet (``--draws``
   each).

A diagnostic of the test set, made after the final numbers: nothing is chosen by it.

    python -m experiments.protocol_gap runs/quick_seeds/seed0 runs/quick_seeds/seed1 --out gap.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import siamax
from siamax import config, errors, evaluate, report
from siamax import data as sd
from siamax.errors import InputError


def _run_config(workdir: Path) -> config.Config:
    try:
        flat = json.loads((workdir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{workdir}: no readable config.json of a main-job run ({e})") from None
    return config.Config.from_flat({k: v for k, v in flat.items() if k != "preset"})


@errors.guard
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.protocol_gap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("workdirs", nargs="+", type=Path, help="work directories of finished main-job runs")
    parser.add_argument("--per-alphabet", type=config.positive_int, default=40, help="drawer tasks per alphabet (40)")
    parser.add_argument("--draws", type=config.positive_int, default=10, help="random variants of each Lake run (10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tasks (0)")
    parser.add_argument("--out", type=Path, default=None, help="write everything as JSON here")
    args = parser.parse_args(argv)
    cfgs = [_run_config(w) for w in args.workdirs]
    if len({(c.spec, c.data.split_seed, c.data.train_drawers) for c in cfgs}) > 1:
        raise InputError("the runs differ in network or split: give runs of one preset")
    sd.require(["omniglot", "lake_runs"])
    splits = sd.paper_splits(cfgs[0].data.split_seed, train_drawers=cfgs[0].data.train_drawers)
    omniglot = sd.load_omniglot()
    table = sd.omniglot_table(omniglot, cfgs[0].spec)
    lake_drawers = sorted({d for _, a, b in sd.LAKE_RUNS for d in (a, b)})
    drawer_tasks = sd.within_alphabet_tasks(
        table, splits.test.alphabets, range(1, 21), per_alphabet=args.per_alphabet, seed=args.seed
    )
    variants = report.lake_variants(omniglot, table, draws=args.draws, seed=args.seed)
    runs = []
    for w in args.workdirs:
        params = siamax.load(w)
        per_task = evaluate.one_shot_accuracy(params, drawer_tasks, seed=args.seed, by=lambda t: t.name)["by"]
        runs.append(
            {
                "drawers": report.drawer_groups(per_task, lake_drawers, list(splits.test.drawers)),
                "lake_variants": {
                    k: evaluate.one_shot_accuracy(params, t, seed=args.seed) for k, t in variants.items()
                },
            }
        )
    drawers = {
        kind: {k: statistics.mean(r["drawers"][kind][k]["accuracy"] for r in runs) for k in g}
        for kind, g in runs[0]["drawers"].items()
    }
    print(f"means over {len(runs)} model(s); test alphabets only\n")
    print(f"1. 20-way within-alphabet by drawer ({args.per_alphabet} tasks per alphabet, drawers 1-20)")
    print(f"{'drawer':>7} {'as support':>11} {'as query':>9}")
    for d in sorted(drawers["support"], key=int):
        print(f"{d:>7} {drawers['support'][d]:>11.1%} {drawers['query'].get(d, float('nan')):>9.1%}")
    for k, acc in drawers["both"].items():
        print(f"both drawers among {k}: {acc:.1%} ({runs[0]['drawers']['both'][k]['trials']} trials per model)")
    print(f"   (Lake's drawers: {lake_drawers}; the split's test drawers: {sorted(splits.test.drawers)})\n")
    print(f"2. Lake's runs rebuilt from the table, and {args.draws} random variants of each")
    for k in variants:
        accs = [r["lake_variants"][k]["accuracy"] for r in runs]
        trials = runs[0]["lake_variants"][k]["trials"]
        print(f"   {k:32s} {statistics.mean(accs):>6.1%}  ({' / '.join(f'{a:.1%}' for a in accs)}; {trials} trials)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "workdirs": [str(w) for w in args.workdirs],
            **{k: getattr(args, k) for k in ("per_alphabet", "draws", "seed")},
        }
        args.out.write_text(json.dumps({**info, "drawers_mean": drawers, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
