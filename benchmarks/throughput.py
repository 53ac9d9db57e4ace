#!/usr/bin/env python
"""Pairs per second of siamax (and, optionally, of a plain PyTorch reference) for one model.

Measures, after warm-up and with compile time reported separately, the median over ``--repeats``
of:

* training pairs/s: the full jitted ``siamax.train.train_step`` (forward of both images of every
  pair through the tower, BCE loss, gradients, the paper's per-layer SGD with momentum) on
  independent pairs, ``--batch-size`` pairs per step;
* scoring pairs/s: jitted ``siamax.score`` on ``--batch-size`` independent pairs;
* 20-way one-shot trials/s with embedding reuse: one 20-way run (20 query images against the same
  20 support images, as in Lake's runs) embeds its 40 images once and scores the 400 pairs with the
  head, i.e. 20 trials per call;
* with ``--all-pairs``, additionally the in-batch pair reuse objective (``Objective("all_pairs")``:
  B images through the tower, B(B-1)/2 pairs through the head) as a separate figure, in pairs/s
  of the head. It is never folded into the training figure above.

siamax and the PyTorch reference are measured in the same process, interleaved repeat by repeat,
so that a machine shared with other jobs slows both alike. Each repeat times enough calls to last
``--min-time`` seconds; by default there are as many repeats as fit in ``--measure-time`` seconds
(3 to 30), because a shared CPU's speed can change ~1.8x from one second to the next and a median
over a handful of short repeats then says more about the machine than about the code.
With ``--compare torch`` the table's last column is the range of the per-repeat ratios.

Examples::

    python benchmarks/throughput.py --model paper --batch-size 32 --repeats 3 --compare torch
    python benchmarks/throughput.py --model small --json small.json --compare torch
    python benchmarks/throughput.py --model paper --dtype bfloat16 --devices 8   # GPU host

JSON (``--json PATH``): {"model", "batch_size", "dtype", "n_devices", "device_kind", "backend",
"jax_version", "compile_s", "train_pairs_per_s", "score_pairs_per_s", "oneshot_trials_per_s"}, plus
"malloc" (``--malloc``: what both suites ran with), "repeats" ({op: number of repeats}) and
"repeat_s" (``--min-time``), plus "torch": {the same keys but "malloc", "repeats" and "repeat_s"} with
``--compare torch`` (there "jax_version" is null and "backend" names torch's version and thread
count), plus "all_pairs_pairs_per_s" with ``--all-pairs``. Each suite also has "per_repeat":
{figure key: [the figure for each repeat, in order]}, so the spread behind every median is on file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

MODELS = ("paper", "small", "reduced35")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timings on shared machines are noisy: compare siamax and torch only within one run.",
    )
    p.add_argument(
        "--model",
        default="paper",
        choices=MODELS,
        help="preset network from siamax.model.MODELS (default: paper, the 38.9M-parameter 105x105 net)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="pairs per training/scoring step, global over all devices (default: 32)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype; parameters and optimiser state stay float32 (default: float32)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="data-parallel over this many devices (mesh axis 'data'; batch sharded, params "
        "replicated). Default: 1. On CPU, N > 1 simulates N devices on the host's cores.",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed repeats per measurement; the median is reported. Default (0): as many as fit in "
        "--measure-time, at least 3 and at most 30 (on the 2-core CI machine: 16-18 for the small "
        "model, 3 for the paper network's training step)",
    )
    p.add_argument(
        "--measure-time",
        type=float,
        default=3.0,
        help="with the default --repeats: seconds of timed calls to aim for per measurement and suite "
        "(default: 3.0). A shared CPU's speed can change by ~1.8x from one second to the next "
        "(docs/performance.md), so a handful of 0.2 s repeats gives a noisy median",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls after compiling (default: 3: on CPU the heap keeps growing over the first "
        "few steps, each growth page-faulting new memory, which is not the steady state)",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        help="each repeat times as many calls as fit in about this many seconds (default: 0.2)",
    )
    p.add_argument(
        "--conv-impl",
        default=None,
        help="override the preset's convolution implementation: a name from siamax.conv.IMPLS, checked when the "
        "model is built (default: the preset's, 'auto')",
    )
    p.add_argument(
        "--compare",
        default=None,
        choices=("torch",),
        help="also measure a plain PyTorch eager reference of the same network and optimiser "
        "(needs torch installed; not a siamax dependency)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the reference. Default: the faster of all cores "
        "(os.cpu_count(), what XLA uses) and 1, the best of three training steps each after warm-up: on a "
        "CPU shared with other jobs, torch's OpenMP barriers with all cores can run several "
        "times slower than one thread. The chosen count is reported.",
    )
    p.add_argument(
        "--malloc",
        default="keep",
        choices=("keep", "default"),
        help="'keep' (default): glibc's malloc keeps freed memory for reuse "
        "(siamax.runtime.keep_freed_memory, what the experiments do) instead of unmapping every "
        "step's temporaries and page-faulting them back in; applies to siamax and torch alike, "
        "as they share the process. 'default': glibc's own settings",
    )
    p.add_argument(
        "--all-pairs",
        action="store_true",
        help="also report in-batch pair reuse (Objective kind='all_pairs') as a separate figure",
    )
    p.add_argument("--skip", default="", help="comma-separated measurements to skip: train,score,oneshot")
    p.add_argument(
        "--peak",
        action="store_true",
        help="also measure the device's bf16 matrix-product rate (8192^3 on random data, through "
        "jnp.dot and, with torch on the same GPU, torch.mm: the higher counts) and report training "
        "FLOP/s as a fraction of it (FLOPs counted analytically, direct convolution)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 0 or args.warmup < 0 or args.measure_time <= 0:
        p.error("--batch-size must be >= 1, --repeats and --warmup >= 0 (--repeats 0: auto), --measure-time > 0")
    if args.devices is not None and args.devices < 1:
        p.error("--devices must be >= 1")
    return args


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Timer:
    """Times a callable: calibrates calls per repeat, then returns seconds per call for each repeat."""

    def __init__(self, fn, min_time: float):
        self.fn, self.min_time, self.inner, self.times = fn, min_time, 1, []

    def warm(self, n: int):
        for _ in range(n):
            self.fn()
        t = time.perf_counter()
        self.fn()
        self.call_s = time.perf_counter() - t
        self.inner = max(1, int(self.min_time / max(self.call_s, 1e-9)))

    def repeats_for(self, seconds: float) -> int:
        """Repeats that time about ``seconds`` of calls in all, clipped to 3..30."""
        return min(30, max(3, math.ceil(seconds / max(self.inner * self.call_s, 1e-9))))

    def repeat(self):
        t = time.perf_counter()
        for _ in range(self.inner):
            self.fn()
        self.times.append((time.perf_counter() - t) / self.inner)

    def median(self) -> float:
        return statistics.median(self.times)


def write_results(path: str, out: dict) -> None:
    """``out`` as indented JSON at ``path`` (its folder made if missing), and a line saying so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")


def build_siamax(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import siamax
    from siamax import optim, sharding, train
    from siamax.model import get_spec

    spec = get_spec(args.model).replace(dtype=args.dtype)
    if args.conv_impl:
        spec = spec.replace(conv_impl=args.conv_impl)
    n_dev = args.devices or 1
    mesh = sharding.make_mesh(n_dev)
    sharding.check_divisible(args.batch_size, mesh, "--batch-size")
    b, s = args.batch_size, spec.input_size
    rng = np.random.default_rng(0)
    imgs = lambda n: (rng.random((n, s, s) + ((3,) if spec.channels == 3 else ())) > 0.8).astype(np.float32)

    params = siamax.init(jax.random.key(0), spec)
    # Scoring and one-shot use their own copy: the train step donates (deletes) its input state.
    params_eval = jax.tree.map(jnp.copy, params)
    tx = optim.koch_sgd(spec.layer_names, optim.SGDConfig(), steps_per_epoch=1000)
    state = sharding.replicate(train.create_train_state(params, tx, train.Objective()), mesh)
    batch = sharding.shard_batch(
        {"x1": imgs(b), "x2": imgs(b), "y": (rng.random(b) > 0.5).astype(np.float32)}, mesh, process_local=False
    )
    key = jax.random.key(1)
    rparams = sharding.replicate(params_eval, mesh)

    compile_s = {}
    ops = {}
    skip = set(filter(None, args.skip.split(",")))

    if "train" not in skip:
        compile_s["train"], train_call = _compiled_train_step(state, batch, key)
        ops["train"] = (train_call, b)
    if args.peak:
        ops["matmul"] = (_matmul_call(8192), 2 * 8192**3)
        torch_mm = _torch_matmul_call(8192) if jax.default_backend() == "gpu" else None
        if torch_mm:
            ops["matmul_torch"] = (torch_mm, 2 * 8192**3)

    if "score" not in skip:
        t = time.perf_counter()
        score = jax.jit(siamax.score).lower(rparams, batch["x1"], batch["x2"]).compile()
        compile_s["score"] = time.perf_counter() - t
        ops["score"] = (lambda: score(rparams, batch["x1"], batch["x2"]).block_until_ready(), b)

    if "oneshot" not in skip:

        def oneshot_run(p, queries, support):
            e = siamax.embed(p, jnp.concatenate([queries, support]))
            q, sup = e[:20], e[20:]
            d = q.shape[-1]
            e1 = jnp.broadcast_to(q[:, None], (20, 20, d)).reshape(400, d)
            e2 = jnp.broadcast_to(sup[None], (20, 20, d)).reshape(400, d)
            logits = siamax.logits_from_embeddings(p, e1, e2).reshape(20, 20)
            return jnp.argmax(logits, axis=1)

        queries, support = jnp.asarray(imgs(20)), jnp.asarray(imgs(20))
        t = time.perf_counter()
        oneshot = jax.jit(oneshot_run).lower(params_eval, queries, support).compile()
        compile_s["oneshot"] = time.perf_counter() - t
        ops["oneshot"] = (lambda: oneshot(params_eval, queries, support).block_until_ready(), 20)

    if args.all_pairs:
        params_ap = jax.tree.map(jnp.copy, params_eval)
        state_ap = sharding.replicate(train.create_train_state(params_ap, tx, train.Objective(kind="all_pairs")), mesh)
        batch_ap = sharding.shard_batch(
            {"x": imgs(b), "labels": rng.integers(0, 4, b).astype(np.int32)}, mesh, process_local=False
        )
        compile_s["all_pairs"], all_pairs_call = _compiled_train_step(state_ap, batch_ap, key)
        ops["all_pairs"] = (all_pairs_call, b * (b - 1) // 2)

    dev = jax.devices()[0]
    device_kind = dev.device_kind
    if dev.platform == "cpu":
        device_kind = f"cpu: {cpu_model_name()} ({os.cpu_count()} cores)"
    meta = {
        "model": args.model,
        "batch_size": b,
        "dtype": args.dtype,
        "n_devices": n_dev,
        "device_kind": device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "compile_s": round(sum(compile_s.values()), 3),
        "train_flops_per_pair": train_flops_per_pair(spec),
    }
    return meta, ops, compile_s, spec


def train_flops_per_pair(spec) -> int:
    """Multiply-adds x 2 of one training pair: forward, input and weight gradients of both twins' towers
    (the first layer needs no input gradient), the head ignored (it is tiny)."""
    cin, total = 1, 0
    for i, (f, k, out) in enumerate(zip(spec.filters, spec.kernels, spec.conv_sizes)):
        fwd = 2 * out * out * k * k * cin * f
        total += fwd * (2 if i == 0 else 3)
        cin = f
    if spec.fc_units:
        total += 3 * 2 * math.prod(spec.feature_shape) * spec.fc_units
    return 2 * total


def _matmul_call(n: int):
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return lambda: dot(a, b).block_until_ready()


def _torch_matmul_call(n: int):
    """torch.mm on the same GPU (cuBLAS directly), or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))

    def call():
        torch.mm(a, b)
        torch.cuda.synchronize()

    call()
    return call


def build_torch(args, spec):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import torch
    from torch_reference import TorchBench

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    bench = TorchBench(spec, args.batch_size, args.dtype, threads=args.threads or os.cpu_count(), device=device)
    if device == "cpu" and not args.threads and os.cpu_count() > 1:
        best = None
        for n in (os.cpu_count(), 1):
            torch.set_num_threads(n)
            bench.train_step()
            dt = math.inf
            for _ in range(3):
                t = time.perf_counter()
                bench.train_step()
                dt = min(dt, time.perf_counter() - t)
            if best is None or dt < best[1]:
                best = (n, dt)
        torch.set_num_threads(best[0])
    skip = set(filter(None, args.skip.split(",")))
    ops = {}
    if "train" not in skip:
        ops["train"] = (bench.train_step, args.batch_size)
    if "score" not in skip:
        ops["score"] = (bench.score, args.batch_size)
    if "oneshot" not in skip:
        ops["oneshot"] = (bench.oneshot_run, 20)
    kind = torch.cuda.get_device_name() if device == "cuda" else f"cpu: {cpu_model_name()} ({os.cpu_count()} cores)"
    where = "cuda, cudnn.benchmark" if device == "cuda" else f"{torch.get_num_threads()} threads"
    meta = {
        "model": args.model,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "n_devices": 1,
        "device_kind": kind,
        "backend": f"torch {torch.__version__} eager, {where}",
        "jax_version": None,
        "compile_s": 0.0,
    }
    return meta, ops


FIGURES = (
    ("train", "train_pairs_per_s", "training pairs/s"),
    ("score", "score_pairs_per_s", "scoring pairs/s"),
    ("oneshot", "oneshot_trials_per_s", "20-way one-shot trials/s"),
    ("all_pairs", "all_pairs_pairs_per_s", "all-pairs objective, head pairs/s (separate)"),
    ("matmul", "matmul_flops_per_s", "bf16 8192^3 matrix product (jnp.dot), FLOP/s"),
    ("matmul_torch", "matmul_torch_flops_per_s", "bf16 8192^3 matrix product (torch.mm), FLOP/s"),
)


def run(args) -> dict:
    if (
        args.devices
        and args.devices > 1
        and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
    ):
        # Only affects JAX's CPU platform; GPU/TPU hosts use their real devices.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    from siamax import runtime

    malloc = "keep" if args.malloc == "keep" and runtime.keep_freed_memory() else "default"
    meta, ops, compile_s, spec = build_siamax(args)
    meta["malloc"] = malloc
    suites = {"siamax": (meta, ops)}
    if args.compare == "torch":
        suites["torch"] = build_torch(args, spec)

    timers = {(name, op): Timer(fn, args.min_time) for name, (_, o) in suites.items() for op, (fn, _) in o.items()}
    for timer in timers.values():
        timer.warm(args.warmup)
    # The same number of repeats for an op in every suite (the most any of them needs), interleaved:
    # every op of every suite once per repeat, so that a change in the machine's speed hits all alike.
    repeats = {
        op: args.repeats or max(t.repeats_for(args.measure_time) for (_, o), t in timers.items() if o == op)
        for _, op in timers
    }
    for i in range(max(repeats.values(), default=0)):
        for (_, op), timer in timers.items():
            if i < repeats[op]:
                timer.repeat()

    results = {}
    for name, (m, o) in suites.items():
        r = dict(m, per_repeat={})
        for op, key, _ in FIGURES:
            if op in o:
                r[key] = round(o[op][1] / timers[(name, op)].median(), 3)
                r["per_repeat"][key] = [round(o[op][1] / t, 3) for t in timers[(name, op)].times]
            elif op not in ("all_pairs", "matmul", "matmul_torch"):
                r[key] = None
        results[name] = r
    out = results["siamax"]
    peak = max(out.get("matmul_flops_per_s") or 0, out.get("matmul_torch_flops_per_s") or 0)
    if peak and out.get("train_pairs_per_s"):
        out["train_fraction_of_matmul_peak"] = round(out["train_pairs_per_s"] * out["train_flops_per_pair"] / peak, 4)
    if "torch" in results:
        out["torch"] = results["torch"]
    out["repeats"] = repeats
    out["repeat_s"] = args.min_time
    out["_compile_breakdown"] = compile_s
    out["_load"] = load
    return out


def print_table(r: dict, args) -> None:
    t = r.get("torch")
    print(
        f"\nsiamax throughput: model={r['model']} batch={r['batch_size']} dtype={r['dtype']} "
        f"devices={r['n_devices']} backend={r['backend']} jax={r['jax_version']}"
    )
    print(f"device: {r['device_kind']}; load average at start {r['_load']}; malloc: {r['malloc']} (both suites)")
    if t:
        print(f"reference: {t['backend']}")
    comp = ", ".join(f"{k} {v:.1f}s" for k, v in r["_compile_breakdown"].items())
    reps = ", ".join(f"{op} {n}" for op, n in r["repeats"].items())
    print(f"compile: {r['compile_s']:.1f}s ({comp}); medians of interleaved repeats of >= {r['repeat_s']}s ({reps})\n")
    head = f"{'measure':46s} {'siamax':>10s}" + (
        f" {'torch':>10s} {'ratio':>7s} {'repeat by repeat':>16s}" if t else ""
    )
    print(head)
    print("-" * len(head))
    for op, key, label in FIGURES:
        if r.get(key) is None:
            continue
        line = f"{label:46s} {r[key]:10.4g}" if op.startswith("matmul") else f"{label:46s} {r[key]:10.2f}"
        if t and t.get(key):
            line += f" {t[key]:10.2f} {r[key] / t[key]:6.2f}x"
            # the two suites' repeats alternate, so repeat i of each saw the machine in about the same state
            ratios = [a / b for a, b in zip(r["per_repeat"][key], t["per_repeat"][key])]
            line += f" {min(ratios):7.2f}-{max(ratios):.2f}x"
        print(line)
    if r.get("train_fraction_of_matmul_peak"):
        print(
            f"training at {r['train_fraction_of_matmul_peak']:.1%} of the higher measured bf16 matrix rate "
            f"({r['train_flops_per_pair'] / 1e9:.2f} GFLOP per training pair)"
        )
    print()


def _compiled_train_step(state, batch, key):
    """(compile seconds, fn running one step in place): the state is donated, so it lives in a box."""
    from siamax import train

    t = time.perf_counter()
    step = train.train_step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def call():
        box[0], metrics = step(box[0], batch, key)
        metrics["loss"].block_until_ready()

    return compile_s, call


def main(argv=None) -> dict:
    args = parse_args(argv)
    r = run(args)
    print_table(r, args)
    if args.json:
        out = {k: v for k, v in r.items() if not k.startswith("_")}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return r


if __name__ == "__main__":
    main()
