#!/usr/bin/env python
"""Retrieval metrics (P@1, R@k, MAP@R, leave-one-out) over a large gallery in bounded memory.

``siamax.metrics.retrieval_report`` ranks every item against all the others by ``knn``: blocks of
``--chunk`` queries against blocks of the gallery, a running top-k per query, so its peak beyond the
embeddings and the results is one block's intermediates (``metrics.knn_block_bytes``), not the
N x N score matrix. This measures it on ``--items`` embeddings of the small model's size (256) in
``--classes`` classes (the manifold data of ``approximate_search.py``: classes on a 32-dimensional
subspace, ReLU'd, as a tower's embeddings are) and reports the seconds, the process's peak resident
memory before and after (``ru_maxrss``), the stated bound of one block and what the score matrix
would take.

JSON (``--json PATH``): {"meta": {items, classes, dim, energy, chunk, gallery_chunk, device,
versions, git_commit, git_dirty, date}, "report": {precision_at_1, recall_at_5, map_at_r, queries},
"seconds", "peak_rss_mb": {"before", "after"}, "embeddings_mb", "block_bound_mb", "score_matrix_mb"}.
(The result committed before 2026-12-05 names the commit "commit", without the dirty flag.)

Example::

    python benchmarks/retrieval_scale.py --json benchmarks/results/retrieval_scale/cpu_100k.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from approximate_search import vectors  # noqa: E402  (one definition of the synthetic embeddings)
from throughput import cpu_model_name, write_results  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="retrieval_scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000, help="embeddings, each a query against the rest (100000)")
    p.add_argument("--classes", type=int, default=5_000, help="classes (default 5000: 20 items each, as Omniglot)")
    p.add_argument("--energy", default="cosine", help="the energy (default cosine, the quick preset's)")
    p.add_argument("--chunk", type=int, default=256, help="queries per block (default 256, the library's)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.items < 2 or not 1 <= args.classes <= args.items // 2 or args.chunk < 1:
        p.error("need --items >= 2, 1 <= --classes <= --items / 2, --chunk >= 1")
    return args


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import numpy as np

    import siamax
    from siamax import metrics, neighbours, provenance
    from siamax.model import MODELS

    spec = MODELS["small"].replace(energy=args.energy)
    data = argparse.Namespace(gallery=args.items, queries=0, data="manifold", classes=args.classes)
    x, _, labels = vectors(data, spec.embedding_dim, with_classes=True)
    head = siamax.init(jax.random.key(0), spec).weights["head"]
    before = _rss_mb()
    t = time.perf_counter()
    report = metrics.retrieval_report(x, labels, args.energy, head, 5, chunk=args.chunk)
    seconds = time.perf_counter() - t
    after = _rss_mb()
    depth = int(np.bincount(labels).max())  # R + 1 at most: MAP@R's depth
    rows = neighbours.store(args.energy, jax.numpy.asarray(x), prepass=False).rows.shape[0]  # padded capacity
    gallery_chunk = neighbours.chunk_rows(args.energy, args.chunk, spec.embedding_dim, rows)
    bound = metrics.knn_block_bytes(args.energy, spec.embedding_dim, depth, args.chunk, gallery_chunk)
    out = {
        "meta": {
            "items": args.items,
            "classes": args.classes,
            "dim": spec.embedding_dim,
            "energy": args.energy,
            "chunk": args.chunk,
            "gallery_chunk": gallery_chunk,
            "depth": depth,
            "device": f"cpu: {cpu_model_name()} ({os.cpu_count()} cores)",
            "jax_version": jax.__version__,
            "numpy_version": np.__version__,
            **provenance.git_state(),  # git_commit, git_dirty
            "date": time.strftime("%Y-%m-%d"),
        },
        "report": report,
        "seconds": round(seconds, 2),
        "peak_rss_mb": {"before": round(before, 1), "after": round(after, 1)},
        "embeddings_mb": round(x.nbytes / 2**20, 1),
        "block_bound_mb": round(bound / 2**20, 2),
        "score_matrix_mb": round(args.items * args.items * 4 / 2**20, 1),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        write_results(args.json, out)
    return out


if __name__ == "__main__":
    main()
