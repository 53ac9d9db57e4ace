#!/usr/bin/env python
"""A packed dataset of a million images through the ``siamax`` command: train, evaluate, index, in bounded memory.

The pack is ``streaming_train.py``'s (``--items`` distorted copies of the Omniglot training table,
written once into ``--work``, reused when there). Three commands, each in a process of its own, as a
user runs them (so that each peak resident memory, ``ru_maxrss``, is its own):

* ``siamax train PACK --workdir W --max-minutes M``: streams its batches from the pack; at the end it
  scores its held-out classes (``siamax train``'s own test part of the pack) next to raw pixels;
* ``siamax evaluate W PACK``: every image of the pack read as each evaluator needs it: verification
  pairs, one-shot episodes, retrieval of ``evaluators.retrieval.MAX_QUERIES`` queries drawn from the
  evaluation seed, each against all the other images, embedded and searched a block at a time
  (its classes were partly trained on: the figures measure the cost, not the model);
* ``siamax index build W PACK INDEX``: every image embedded, a block at a time, into one exact index.

Reports per command the seconds, the peak resident memory and (evaluate) the figures, with what
the memory bound (2 GB) is measured against.

JSON (``--json PATH``): {"meta": {items, max_minutes, preset, device, cpu, cores, versions,
git_commit, git_dirty, date}, "train": {seconds, peak_rss_mb, rc}, "evaluate": {seconds,
peak_rss_mb, rc, results: {verification, random_5way_1shot, retrieval, pixels}}, "index": {seconds,
peak_rss_mb, rc, index_bytes}}.

Example::

    python benchmarks/scale_commands.py --work runs/streaming --json benchmarks/results/streaming/cpu_1m_commands.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from streaming_train import machine, write_table_pack  # noqa: E402
from throughput import write_results  # noqa: E402

PRESET = "quick"
# One command in this process, then its peak resident memory (Linux: KiB) as the last line.
_RUN = """
import json, resource, sys
from siamax import cli
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scale_commands.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder of the pack (streaming_train.py's; written when missing)")
    p.add_argument("--items", type=int, default=1_000_000, help="images in the pack (default 1000000)")
    p.add_argument("--max-minutes", type=float, default=4.0, help="siamax train's time budget (default 4)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.items < 2 or args.max_minutes <= 0:
        p.error("need --items >= 2 and --max-minutes > 0")
    return args


def _command(*argv: str) -> dict:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"siamax {' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = json.loads(lines[-1])
    print(f"siamax {argv[0]}{' ' + argv[1] if argv[0] == 'index' else ''}: {seconds:,.0f} s, "
          f"peak RSS {out['peak_rss_mb']:,.0f} MB")  # fmt: skip
    return {"seconds": seconds, **out}


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work)
    pack = work / "packed_table"
    written = write_table_pack(pack, args.items)
    run, index = work / "commands_run", work / "commands_index"
    for old in (run, index, work / "commands_eval"):
        shutil.rmtree(old, ignore_errors=True)
    out = {"pack_table": written} if written else {}
    out["train"] = _command("train", str(pack), "--workdir", str(run), "--preset", PRESET,
                            "--max-minutes", str(args.max_minutes), "--no-progress")  # fmt: skip
    out["evaluate"] = _command("evaluate", str(run), str(pack), "--out", str(work / "commands_eval"), "--no-progress")
    results = json.loads((work / "commands_eval" / "evaluation.json").read_text())
    out["evaluate"]["results"] = {k: results[k] for k in ("verification", "random_5way_1shot", "retrieval", "pixels")}
    out["evaluate"]["eval_seconds"] = results["cost"]["seconds"]
    out["index"] = _command("index", "build", str(run), str(pack), str(index))
    out["index"]["index_bytes"] = sum(p.stat().st_size for p in index.iterdir() if p.is_file())

    out["meta"] = {"items": args.items, "max_minutes": args.max_minutes, "preset": PRESET, "memory_bound_mb": 2000,
                   **machine()}  # fmt: skip
    if args.json:
        write_results(args.json, out)
    return out


if __name__ == "__main__":
    main()
