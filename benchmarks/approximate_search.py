#!/usr/bin/env python
"""Approximate search (``siamax.Index(backend="hnsw")``) against exact search, at a million vectors.

One gallery of ``--gallery`` embeddings of the quick preset's size (``MODELS["small"]``, 256) and
``--queries`` fresh queries from the same distribution; for each energy (default cosine, quick's,
and euclidean, folder's):

* build: seconds to build the exact index (``backend="jax"``: the device copy, its blocks and the
  bfloat16 pre-pass) and the HNSW graph (``backend="hnsw"``);
* recall@k of the graph against exact search, twice: ``Index.recall`` (what ``siamax index build
  --approximate`` prints: gallery items as queries, each left out of its own answers) and on the
  fresh queries (the share of the exact k best that the graph returns);
* queries/s of ``Index.search(q, k)`` for each backend at each ``--batches`` size, interleaved repeat
  by repeat (the timer of ``benchmarks/throughput.py``), and their ratio; each figure the median over
  the repeats, the ratio's range over the repeats beside it.

The data (``--data``): ``omniglot``, real embeddings: a trained model (``--model``, e.g. the main
job's work directory) embeds Omniglot's background-set images (19,280) under the paper's random
affine distortions (a fresh draw per copy) until there are ``--gallery`` + ``--queries`` of them;
``manifold`` (default), ``--classes`` classes on a 32-dimensional subspace through a ReLU: low
intrinsic dimension and non-negative, as a tower's embeddings are; ``iid``, independent ReLU'd
normals in every dimension, the hardest case for a graph (no structure to exploit), to show the
other end.

JSON (``--json PATH``): {"meta": {gallery, queries, k, data, classes, hnsw (M, efConstruction,
efSearch), device, versions, load average, git_commit, git_dirty}, "results": [{"energy",
"build_s": {jax, hnsw}, "recall_index", "recall_fresh", "rows": [{"batch", "exact_qps", "hnsw_qps",
"ratio", "ratio_range", "repeats"}]}]}. (The results committed before 2026-12-05 name the commit
"commit", without the dirty flag.)

Example::

    python benchmarks/approximate_search.py --json benchmarks/results/approximate_search/cpu_1m.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in index_search.py: idle faiss threads must not spin

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import Timer, cpu_model_name, write_results  # noqa: E402

SUBSPACE = 32  # the manifold data's intrinsic dimension


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="approximate_search.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gallery", type=int, default=1_000_000, help="gallery items (default: 1000000)")
    p.add_argument("--queries", type=int, default=1024, help="fresh queries (default: 1024, the largest batch)")
    p.add_argument("--data", choices=("manifold", "iid", "omniglot"), default="manifold", help="the vectors (above)")
    p.add_argument(
        "--model", default=None, help="--data omniglot: the exported model (or work directory) to embed with"
    )
    p.add_argument("--classes", type=int, default=10_000, help="classes of the manifold data (default: 10000)")
    p.add_argument("--energies", default="cosine,euclidean", help="comma-separated (default: cosine,euclidean)")
    p.add_argument("--batches", default="1,1024", help="query batch sizes, comma-separated (default: 1,1024)")
    p.add_argument("--k", type=int, default=10, help="results per query, and the k of recall@k (default: 10)")
    p.add_argument("--recall-queries", type=int, default=1000, help="gallery items for Index.recall (default 1000)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of calls per repeat (default: 0.5)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per measurement (default: 5)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if not 1 <= args.k < args.gallery or args.min_time <= 0 or args.repeats < 1 or max(batches) > args.queries:
        p.error("need 1 <= --k < --gallery, --min-time > 0, --repeats >= 1, and every batch <= --queries")
    if (args.data == "omniglot") != (args.model is not None):
        p.error("--model goes with --data omniglot, and --data omniglot needs it")
    return args


def embedded(args, params):
    """(gallery, queries): ``params``' embeddings of distorted Omniglot background images."""
    import jax
    import numpy as np

    import siamax
    from siamax import augment
    from siamax.data import ALPHABETS, BACKGROUND_ALPHABETS, load_omniglot, omniglot_table

    table = omniglot_table(load_omniglot(), params.spec)
    background = [ALPHABETS.index(a) for a in BACKGROUND_ALPHABETS]
    images = table.images[np.flatnonzero(np.isin(table.groups[table.labels], background))]
    embed = jax.jit(lambda key, x: siamax.embed(params, augment.distort(key, x.astype(np.float32) / 255)))
    n, out, step = args.gallery + args.queries, [], 0
    while sum(len(e) for e in out) < n:
        for lo in range(0, len(images), 4096):
            out.append(np.asarray(embed(jax.random.key(step), images[lo : lo + 4096])))
            step += 1
        print(f"embedded {sum(len(e) for e in out)} of {n}", flush=True)
    x = np.concatenate(out)[:n]
    x = x[np.random.default_rng(0).permutation(n)]  # queries drawn from every copy and class
    return x[: args.gallery], x[args.gallery :]


def vectors(args, dim: int, with_classes: bool = False):
    """(gallery, queries) float32 of ``args.data`` (not ``omniglot``: :func:`embedded`); with
    ``with_classes``, also the class of every item (manifold data; gallery first, then queries)."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = args.gallery + args.queries
    classes = np.zeros(n, np.int32)
    if args.data == "iid":
        x = rng.normal(size=(n, dim))
    else:
        basis = rng.normal(size=(SUBSPACE, dim)) / np.sqrt(SUBSPACE)
        centres = rng.normal(size=(args.classes, SUBSPACE))
        z = np.empty((n, dim), np.float32)
        for lo in range(0, n, 100_000):  # in parts: the float64 temporaries of all at once would be GBs
            m = min(n, lo + 100_000) - lo
            classes[lo : lo + m] = rng.integers(0, args.classes, m)
            own = centres[classes[lo : lo + m]] + 0.35 * rng.normal(size=(m, SUBSPACE))
            z[lo : lo + m] = own @ basis
        x = z
    x = np.maximum(x, 0).astype(np.float32)
    parts = x[: args.gallery], x[args.gallery :]
    return (*parts, classes) if with_classes else parts


def recall_of(found, truth, k: int) -> float:
    return sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found.tolist(), truth.tolist())) / (k * len(truth))


def run(args) -> dict:
    import jax
    import numpy as np

    import siamax
    from siamax import provenance
    from siamax.index import Index, _HnswGallery
    from siamax.model import MODELS

    batches = [int(b) for b in args.batches.split(",")]
    load_start = os.getloadavg()[0]
    model = siamax.load(args.model) if args.model else None
    spec = model.spec if model else MODELS["small"]
    gallery, queries = embedded(args, model) if model else vectors(args, spec.embedding_dim)
    labels = [str(i) for i in range(args.gallery)]
    results = []
    for energy in [spec.energy] if model else args.energies.split(","):
        params = model or siamax.init(jax.random.key(0), spec.replace(energy=energy))
        build = {}
        indexes = {}
        for backend in ("jax", "hnsw"):
            t = time.perf_counter()
            indexes[backend] = Index.build(params, gallery, labels, backend=backend)
            indexes[backend].search(queries[:1], args.k)  # the first search compiles (jax)
            build[backend] = round(time.perf_counter() - t, 2)
            print(f"{energy}: {backend} index of {args.gallery} built in {build[backend]} s", flush=True)
        exact, approx = indexes["jax"], indexes["hnsw"]
        recall_index = approx.recall(args.k, queries=args.recall_queries)
        recall_fresh = recall_of(approx.search(queries, args.k)[1], exact.search(queries, args.k)[1], args.k)
        print(f"{energy}: recall@{args.k} {recall_index:.4f} (Index.recall), {recall_fresh:.4f} (fresh queries)")
        rows = []
        for b in batches:
            q = queries[:b]
            timers = {name: Timer(lambda i=i, q=q: i.search(q, args.k), args.min_time) for name, i in indexes.items()}
            for tm in timers.values():
                tm.warm(1)
            for _ in range(args.repeats):  # interleaved: each backend once per repeat
                for tm in timers.values():
                    tm.repeat()
            qps = {name: b / statistics.median(tm.times) for name, tm in timers.items()}
            ratios = [e / h for e, h in zip(timers["jax"].times, timers["hnsw"].times)]
            row = {
                "batch": b,
                "exact_qps": round(qps["jax"], 1),
                "hnsw_qps": round(qps["hnsw"], 1),
                "ratio": round(qps["hnsw"] / qps["jax"], 2),
                "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
                "repeats": args.repeats,
            }
            rows.append(row)
            print(
                f"{energy}: batch {b:5d}: exact {row['exact_qps']:10.1f} q/s, hnsw {row['hnsw_qps']:10.1f} q/s, "
                f"{row['ratio']:.2f}x ({row['ratio_range'][0]}-{row['ratio_range'][1]})",
                flush=True,
            )
        results.append(
            {
                "energy": energy,
                "build_s": build,
                "recall_index": round(recall_index, 4),
                "recall_fresh": round(recall_fresh, 4),
                "rows": rows,
            }
        )
        del indexes, exact, approx
    import faiss

    meta = {
        "gallery": args.gallery,
        "queries": args.queries,
        "k": args.k,
        "data": args.data,
        "model": args.model,
        "classes": args.classes if args.data == "manifold" else None,
        "subspace": SUBSPACE if args.data == "manifold" else None,
        "dim": spec.embedding_dim,
        "hnsw": {
            "M": _HnswGallery.M,
            "efConstruction": _HnswGallery.EF_CONSTRUCTION,
            "efSearch": _HnswGallery.EF_SEARCH,
        },  # noqa: E501
        "device": f"cpu: {cpu_model_name()} ({os.cpu_count()} cores)",
        "jax_version": jax.__version__,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        **provenance.git_state(),  # git_commit, git_dirty
        "date": time.strftime("%Y-%m-%d"),
    }
    return {"meta": meta, "results": results}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = run(args)
    if args.json:
        write_results(args.json, out)
    return out


if __name__ == "__main__":
    main()
