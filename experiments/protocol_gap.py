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
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

import siamax
from siamax import config, errors, evaluators, flags
from siamax import data as sd
from siamax.data import omniglot as og
from siamax.errors import InputError

_DRAWERS = re.compile(r"drawers(\d+)->(\d+)")


def drawer_groups(per_task: dict, lake_drawers, split_drawers) -> dict:
    """Per-task results of within-alphabet tasks (named ``...drawersA->B``) pooled by support drawer,
    by query drawer, and for the tasks whose two drawers both lie in ``lake_drawers`` / ``split_drawers``."""
    groups: dict[str, dict[str, list]] = {"support": {}, "query": {}, "both": {}}
    for name, r in per_task.items():
        a, b = (int(d) for d in _DRAWERS.search(name).groups())
        both = [k for k, ds in (("Lake's drawers", lake_drawers), ("the split's test drawers", split_drawers))
                if a in ds and b in ds]  # fmt: skip
        for kind, key in (("support", a), ("query", b), *(("both", k) for k in both)):
            groups[kind].setdefault(str(key), []).append(r)
    return {
        kind: {
            key: {
                "accuracy": sum(r["accuracy"] * r["trials"] for r in rs) / sum(r["trials"] for r in rs),
                "trials": sum(r["trials"] for r in rs),
            }
            for key, rs in sorted(by.items(), key=lambda kv: (len(kv[0]), kv[0]))
        }
        for kind, by in groups.items()
    }


def lake_variants(omniglot: sd.Omniglot, table, *, draws: int = 10, seed: int = 0) -> dict[str, list]:
    """Lake's 20 runs rebuilt from ``table`` (each of their images found by its pixels in Omniglot),
    and ``draws`` variants of each run with its 20 characters, its two drawers, or both replaced by
    random ones of the same alphabet: what makes the runs easier or harder than random tasks."""
    flat = omniglot.flat_images
    evaluation = np.flatnonzero(np.repeat(omniglot.char_set, og.N_DRAWERS) == 1)
    where = {flat[i].tobytes(): i for i in evaluation}
    images = np.asarray(table.images)
    rng = np.random.default_rng(seed)

    def task(run, chars, a, b):
        q = rng.permutation(len(chars))
        support, query = images[chars * og.N_DRAWERS + a], images[chars[q] * og.N_DRAWERS + b]
        return sd.Task(support=support, query=query, answers=q, ink="light", alphabet=run.alphabet, name=run.name)

    out = {k: [] for k in ("Lake's", "random characters", "random drawers", "random characters and drawers")}
    for run in sd.lake_runs():
        try:
            support = np.array([where[x.tobytes()] for x in run.support])
            a, b = support[0] % og.N_DRAWERS, where[run.query[0].tobytes()] % og.N_DRAWERS
        except KeyError:
            raise ValueError(f"{run.name}: an image not found in Omniglot's evaluation set") from None
        chars, alphabet = support // og.N_DRAWERS, sd.alphabet_char_ids(run.alphabet) - 1
        query = np.array([where[x.tobytes()] for x in run.query])
        out["Lake's"].append(dataclasses.replace(run, support=images[support], query=images[query], ink="light"))
        for _ in range(draws):
            other = rng.choice(alphabet, len(chars), replace=False)
            ra, rb = rng.choice(og.N_DRAWERS, 2, replace=False)
            out["random characters"].append(task(run, other, a, b))
            out["random drawers"].append(task(run, chars, ra, rb))
            out["random characters and drawers"].append(task(run, other, ra, rb))
    return out


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
    parser.add_argument("--per-alphabet", type=flags.positive_int, default=40, help="drawer tasks per alphabet (40)")
    parser.add_argument("--draws", type=flags.positive_int, default=10, help="random variants of each Lake run (10)")
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
    variants = lake_variants(omniglot, table, draws=args.draws, seed=args.seed)
    runs = []
    for w in args.workdirs:
        params = siamax.load(w)
        per_task = evaluators.one_shot_accuracy(params, drawer_tasks, seed=args.seed, by=lambda t: t.name)["by"]
        runs.append(
            {
                "drawers": drawer_groups(per_task, lake_drawers, list(splits.test.drawers)),
                "lake_variants": {
                    k: evaluators.one_shot_accuracy(params, t, seed=args.seed) for k, t in variants.items()
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
