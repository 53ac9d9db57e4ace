#!/usr/bin/env python
"""What siamax's eager input checks cost per ``siamax.score`` call.

Eager ``siamax.score(params, x1, x2)`` runs the static checks, one min/max reduction per float
input (siamax.api, "What is checked, and when") and then the jitted model; the same function jitted
by the caller, ``jax.jit(siamax.score)``, runs the static checks once, at trace time, and no value
checks. Both get the same float32 batch of ``--batch-size`` pairs, once as JAX arrays (the check is
a small jitted reduction and a transfer of two numbers) and once as NumPy arrays (NumPy's
reduction; both versions then copy the batch to the device). The four are timed interleaved,
repeat by repeat, so that a change in a shared machine's speed hits all alike, and the overhead is
reported as the median over repeats of eager time / jitted time, with the time of the checks alone
(``siamax.api`` validating both inputs, no model) for reference.

Examples::

    python benchmarks/checks.py --model small --batch-size 32
    python benchmarks/checks.py --model paper --batch-size 32 --repeats 5 --json checks.json

JSON (``--json PATH``): {"model", "batch_size", "backend", "device_kind", "jax_version", "repeats",
"repeat_s", "inputs": {"jax" | "numpy": {"eager_s", "jit_s", "checks_s" (median seconds per call),
"ratio" (median of eager / jit per repeat), "ratio_range" ([min, max] over repeats), "checks_fraction"
(checks_s / jit_s: the part of the ratio above 1 that is the checks themselves, the steadier figure on a
noisy machine)}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="checks.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small", help="preset from siamax.model.MODELS (default: small)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per call (default: 32)")
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed repeats; medians reported (default: 10)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds of calls per repeat (default: 0.2)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.min_time < 0:
        p.error("--batch-size and --repeats must be >= 1, --min-time >= 0")
    return args


def measure(model, batch_size: int = 32, repeats: int = 10, min_time: float = 0.2) -> dict:
    """The figures described in the module docstring for ``model`` (a preset name or a ModelSpec)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import siamax
    from siamax import api
    from siamax.model import get_spec

    spec = get_spec(model)
    params = siamax.init(jax.random.key(0), spec)
    s = spec.input_size
    rng = np.random.default_rng(0)
    batch = {
        "numpy": [
            (rng.random((batch_size, s, s) + ((3,) if spec.channels == 3 else ())) > 0.8).astype(np.float32)
            for _ in range(2)
        ]
    }
    batch["jax"] = [jnp.asarray(x) for x in batch["numpy"]]
    jitted = jax.jit(siamax.score)

    def checks_only(x1, x2):
        api._model_images(spec, x1, "x1", allow_single=True)
        api._model_images(spec, x2, "x2", allow_single=True)

    calls = {}
    for kind, (x1, x2) in batch.items():
        calls[(kind, "eager")] = lambda x1=x1, x2=x2: siamax.score(params, x1, x2).block_until_ready()
        calls[(kind, "jit")] = lambda x1=x1, x2=x2: jitted(params, x1, x2).block_until_ready()
        calls[(kind, "checks")] = lambda x1=x1, x2=x2: checks_only(x1, x2)
    inner = {}
    for key, call in calls.items():
        for _ in range(3):  # compile, then let the heap settle
            call()
        t = time.perf_counter()
        call()
        inner[key] = max(1, int(min_time / max(time.perf_counter() - t, 1e-9)))
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            t = time.perf_counter()
            for _ in range(inner[key]):
                call()
            times[key].append((time.perf_counter() - t) / inner[key])

    inputs = {}
    for kind in batch:
        med = {f"{what}_s": statistics.median(times[(kind, what)]) for what in ("eager", "jit", "checks")}
        ratios = [e / j for e, j in zip(times[(kind, "eager")], times[(kind, "jit")])]
        inputs[kind] = {
            **med,
            "ratio": round(statistics.median(ratios), 4),
            "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
            "checks_fraction": round(med["checks_s"] / med["jit_s"], 5),
        }
    dev = jax.devices()[0]
    return {
        "model": model if isinstance(model, str) else "custom",
        "batch_size": batch_size,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "jax_version": jax.__version__,
        "repeats": repeats,
        "repeat_s": min_time,
        "inputs": inputs,
    }


def print_table(r: dict) -> None:
    print(
        f"\nsiamax input checks: model={r['model']} batch={r['batch_size']} backend={r['backend']} "
        f"({r['device_kind']}) jax={r['jax_version']}; medians of {r['repeats']} interleaved repeats\n"
    )
    columns = (("eager score", 12), ("jit(score)", 12), ("checks alone", 13), ("checks/jit", 11))
    columns += (("eager/jit", 10), ("range", 14))
    head = f"{'inputs':8s}" + "".join(f" {name:>{width}s}" for name, width in columns)
    print(head)
    print("-" * len(head))
    for kind, f in r["inputs"].items():
        lo, hi = f["ratio_range"]
        print(
            f"{kind:8s} {f['eager_s'] * 1e3:10.3f}ms {f['jit_s'] * 1e3:10.3f}ms {f['checks_s'] * 1e3:11.3f}ms "
            f"{f['checks_fraction']:11.2%} {f['ratio']:9.3f}x {lo:6.3f}-{hi:.3f}x"
        )
    print()


def main(argv=None) -> dict:
    args = parse_args(argv)
    r = measure(args.model, args.batch_size, args.repeats, args.min_time)
    print_table(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return r


if __name__ == "__main__":
    main()
