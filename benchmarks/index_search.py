#!/usr/bin/env python
"""Queries per second of exact top-k search: ``siamax.Index`` against faiss-cpu and plain NumPy.

For each energy (euclidean, cosine), embedding size (default: the quick preset's ``small`` model,
``siamax.model.MODELS["small"].embedding_dim``; ``--dims 256,4096`` adds the paper's) and query
batch size (default 1, 32, 1024: one query is ``siamax identify``), on one random gallery of
``--gallery`` items (ReLU-like features, as the towers give):

* siamax: ``Index.search(queries, k)``, the public call (checks, the jitted chunked scan with its
  running top-k, the exact rescoring of the k winners into probabilities, the copy to the host);
* faiss: ``IndexFlatL2`` (euclidean) or ``IndexFlatIP`` on unit vectors (cosine, the queries'
  normalisation included), timed at 1 thread and at all cores (``OMP_WAIT_POLICY=PASSIVE``), the
  faster of the two counting;
* numpy: the same rank key as siamax's (``2 q.g - |g|^2``, ``q.g / |g|``) as one BLAS product per
  block of 128 queries, ``argpartition`` and a sort of the k.

All three run in the same process, interleaved repeat by repeat as in ``benchmarks/throughput.py``,
so that a shared machine's changes of speed hit all alike; each figure is the median over the
repeats, each repeat times enough calls to last ``--min-time`` seconds, and the table's last column
is the range of the per-repeat siamax / faiss ratios. Before timing, the top-1 of every query is
checked to agree between the three (up to float ties: a different item at the same distance, to
1e-5 relative, counts as a tie); a real disagreement stops the benchmark.

JSON (``--json PATH``): {"meta": {gallery, k, device, backend, versions, XLA_FLAGS, load average at
start and end, repeats, repeat_s}, "results": [{"energy", "dim", "batch", "siamax_qps", "faiss_qps",
"numpy_qps", "ratio_faiss", "ratio_numpy", "faiss_threads" (of the faster faiss),
"faiss_qps_by_threads", "top1_ties", "repeats", "per_repeat": {suite: [queries/s of each repeat]}}]}.

Example::

    python benchmarks/index_search.py --json benchmarks/results/index_search/cpu_g100k.json
"""

from __future__ import annotations

import os

# CPU unless asked otherwise (faiss-cpu is the reference); set before JAX initialises.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# OpenMP threads that spin between faiss's calls take the cores from whatever runs next (the other
# suites here, other jobs on a shared machine): on 2 loaded cores faiss at 2 threads ran up to 4x
# slower with the default policy. Passive threads make faiss's 2-thread figure fair (its 1-thread
# one is unaffected). siamax needs no JAX/XLA flag: the defaults were as fast as any tried.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import Timer, cpu_model_name, write_results  # noqa: E402  (one timer for every benchmark)

SUITES = ("siamax", "faiss", "numpy")
NUMPY_BLOCK = 128  # queries per NumPy product: bounds its (block, G) score matrix


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="index_search.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gallery", type=int, default=100_000, help="gallery items (default: 100000)")
    p.add_argument("--dims", default=None, help="embedding sizes, comma-separated (default: the small model's)")
    p.add_argument("--energies", default="euclidean,cosine", help="comma-separated (default: euclidean,cosine)")
    p.add_argument("--batches", default="1,32,1024", help="query batch sizes, comma-separated (default: 1,32,1024)")
    p.add_argument("--k", type=int, default=10, help="results per query (default: 10)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of calls per repeat (default: 0.3)")
    p.add_argument("--measure-time", type=float, default=6.0, help="seconds per measurement, all repeats of one suite")
    p.add_argument("--repeats", type=int, default=0, help="repeats per measurement (default 0: from --measure-time)")
    p.add_argument("--skip", default="", help="suites to leave out, comma-separated: faiss, numpy")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.gallery < args.k or args.k < 1 or args.min_time <= 0 or args.repeats < 0:
        p.error("--k must be >= 1 and <= --gallery, --min-time > 0, --repeats >= 0")
    return args


def numpy_search(energy, gallery, aux, q, k):
    import numpy as np

    if energy == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-6)
    ids = np.empty((len(q), k), np.int64)
    for lo in range(0, len(q), NUMPY_BLOCK):
        qg = q[lo : lo + NUMPY_BLOCK] @ gallery.T
        keys = 2.0 * qg - aux if energy == "euclidean" else qg * aux
        part = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(keys, part, 1), axis=1, kind="stable")
        ids[lo : lo + NUMPY_BLOCK] = np.take_along_axis(part, order, 1)
    return ids


def faiss_index(faiss, energy, gallery):
    import numpy as np

    index = faiss.IndexFlatL2(gallery.shape[1]) if energy == "euclidean" else faiss.IndexFlatIP(gallery.shape[1])
    if energy == "cosine":
        gallery = gallery.copy()
        faiss.normalize_L2(gallery)
    index.add(np.ascontiguousarray(gallery))
    return index


def faiss_search(faiss, index, energy, q, k):
    if energy == "cosine":
        q = q.copy()
        faiss.normalize_L2(q)
    return index.search(q, k)[1]


def top1_ties(energy, gallery, q, found: dict) -> int:
    """How many queries' top-1 differ between suites only by a float tie; raises on a real disagreement."""
    import numpy as np

    g64, q64 = gallery.astype(np.float64), q.astype(np.float64)

    def dist(i, j):
        if energy == "euclidean":
            return np.linalg.norm(q64[i] - g64[j])
        return 1.0 - q64[i] @ g64[j] / (np.linalg.norm(q64[i]) * np.linalg.norm(g64[j]))

    ties = 0
    names = list(found)
    for i in range(len(q)):
        tops = {name: int(found[name][i, 0]) for name in names}
        if len(set(tops.values())) == 1:
            continue
        d = {name: dist(i, j) for name, j in tops.items()}
        lo = min(d.values())
        if max(d.values()) - lo > 1e-5 * max(abs(lo), 1e-6):
            raise SystemExit(f"top-1 disagreement ({energy}, query {i}): items {tops}, distances {d}")
        ties += 1
    return ties


def run(args) -> dict:
    import jax
    import numpy as np

    import siamax
    from siamax.index import Index
    from siamax.model import MODELS

    skip = set(filter(None, args.skip.split(",")))
    faiss = None
    if "faiss" not in skip:
        try:
            import faiss
        except ImportError:
            sys.exit("faiss-cpu is not installed: pip install 'siamax[faiss]', or pass --skip faiss")
    dims = [int(d) for d in args.dims.split(",")] if args.dims else [MODELS["small"].embedding_dim]
    specs = {MODELS["small"].embedding_dim: MODELS["small"], MODELS["paper"].embedding_dim: MODELS["paper"]}
    energies_ = args.energies.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    load_start = os.getloadavg()[0]
    ncpu = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    results = []
    for dim in dims:
        base = specs.get(dim) or MODELS["small"].replace(fc_units=dim, fc_activation="relu")
        gallery = np.maximum(rng.normal(size=(args.gallery, dim)), 0).astype(np.float32)
        queries = np.maximum(rng.normal(size=(max(batches), dim)), 0).astype(np.float32)
        for energy in energies_:
            params = siamax.init(jax.random.key(0), base.replace(energy=energy))
            index = Index.build(params, gallery, [str(i) for i in range(args.gallery)])
            sq = np.sum(gallery * gallery, axis=1)
            aux = sq if energy == "euclidean" else 1.0 / np.sqrt(np.maximum(sq, 1e-12))
            fi = faiss_index(faiss, energy, gallery) if faiss else None
            for b in batches:
                r = measure(args, faiss, index, fi, energy, gallery, aux, queries[:b], skip)
                results.append(r)
                print_row(r, header=len(results) == 1)
            del index, fi  # before the next gallery's copies
    dev = jax.devices()[0]
    meta = {
        "gallery": args.gallery,
        "k": args.k,
        "device": dev.device_kind if dev.platform != "cpu" else f"cpu: {cpu_model_name()} ({ncpu} cores)",
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "faiss_version": getattr(faiss, "__version__", None),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "repeat_s": args.min_time,
        "numpy_block": NUMPY_BLOCK,
    }
    return {"meta": meta, "results": results}


def measure(args, faiss, index, fi, energy, gallery, aux, q, skip) -> dict:
    """One row of the table: every suite on one batch of queries ``q``, interleaved repeat by repeat."""
    import numpy as np

    b, ncpu = len(q), os.cpu_count() or 1
    ops = {"siamax": lambda: index.search(q, args.k)[1]}
    # faiss at 1 thread and at all cores, both timed: which is faster depends on the machine's load
    for n in sorted({1, ncpu}) if fi is not None else ():

        def faiss_call(n=n):
            faiss.omp_set_num_threads(n)
            return faiss_search(faiss, fi, energy, q, args.k)

        ops[f"faiss_{n}t"] = faiss_call
    if "numpy" not in skip:
        ops["numpy"] = lambda: numpy_search(energy, gallery, aux, q, args.k)
    ties = top1_ties(energy, gallery, q, {name: np.asarray(fn()) for name, fn in ops.items()})
    timers = {name: Timer(fn, args.min_time) for name, fn in ops.items()}
    for t in timers.values():
        t.warm(1)
    repeats = args.repeats or max(t.repeats_for(args.measure_time) for t in timers.values())
    for _ in range(repeats):  # interleaved: each suite once per repeat
        for t in timers.values():
            t.repeat()
    qps = {name: b / statistics.median(t.times) for name, t in timers.items()}
    per_repeat = {name: [round(b / s, 2) for s in t.times] for name, t in timers.items()}
    threads = None
    if fi is not None:
        best = max((name for name in qps if name.startswith("faiss_")), key=qps.get)
        threads = int(best[len("faiss_") : -1])
        qps["faiss"], per_repeat["faiss"] = qps[best], per_repeat[best]
    return {
        "energy": energy,
        "dim": q.shape[1],
        "batch": b,
        **{f"{name}_qps": round(qps[name], 2) if name in qps else None for name in SUITES},
        "ratio_faiss": round(qps["siamax"] / qps["faiss"], 3) if "faiss" in qps else None,
        "ratio_numpy": round(qps["siamax"] / qps["numpy"], 3) if "numpy" in qps else None,
        "faiss_threads": threads,
        "faiss_qps_by_threads": {name: round(v, 2) for name, v in qps.items() if name.startswith("faiss_")},
        "top1_ties": ties,
        "repeats": repeats,
        "per_repeat": per_repeat,
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def print_row(r: dict, header: bool) -> None:
    if header:
        head = (
            f"{'energy':10s} {'dim':>5s} {'batch':>6s} {'siamax q/s':>11s} {'faiss q/s':>11s} {'numpy q/s':>11s} "
            f"{'vs faiss':>8s} {'per repeat':>12s} {'vs numpy':>8s} {'faiss thr':>9s} {'ties':>4s}"
        )
        print(head)
        print("-" * len(head))
    f, n = r["faiss_qps"], r["numpy_qps"]
    ratios = [a / b for a, b in zip(r["per_repeat"]["siamax"], r["per_repeat"].get("faiss", []))]
    spread = f"{min(ratios):5.2f}-{max(ratios):.2f}x" if ratios else ""
    print(
        f"{r['energy']:10s} {r['dim']:5d} {r['batch']:6d} {r['siamax_qps']:11.1f} "
        f"{f if f is not None else float('nan'):11.1f} {n if n is not None else float('nan'):11.1f} "
        f"{(r['ratio_faiss'] or float('nan')):7.2f}x {spread:>12s} {(r['ratio_numpy'] or float('nan')):7.2f}x "
        f"{r['faiss_threads'] or 0:9d} {r['top1_ties']:4d}",
        flush=True,
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    out = run(args)
    m = out["meta"]
    print(
        f"\ngallery {m['gallery']}, k={m['k']}, {m['device']}, jax {m['jax_version']}, faiss {m['faiss_version']}, "
        f"numpy {m['numpy_version']}; load average {m['load_average_start']} -> {m['load_average_end']}"
    )
    if args.json:
        write_results(args.json, out)
    return out


if __name__ == "__main__":
    main()
