#!/usr/bin/env python
"""Where the paper network's training step spends its time on a GPU, and what alternatives gain.

One command does all of it (a lent GPU's time is short), writing as it goes, so a run cut off at
its time limit still leaves what it finished:

    python benchmarks/gpu_profile.py --out DIR [--batch-sizes 512,1024] [--deadline EPOCH_SECONDS]

1. the bf16 matrix-product ceiling (8192^3, random data) through jnp.dot and, if present, torch;
2. per layer, on the paper network's own shapes: forward and forward+both-gradients of each
   convolution for every implementation in ``siamax.conv``, ReLU+pool, the fc layer;
3. the full training step (``siamax.train``) for variants: batch sizes, per-layer convolution
   implementations (through ``ModelSpec.conv_impl``; each result carries its ``conv_plan``),
   pooling as ``reduce_window``;
4. a device trace (``jax.profiler``, perfetto) of the base training step, its kernels summed by name;
5. the base step under other ``XLA_FLAGS`` (each in a fresh process).

Files: DIR/profile.json (every number), DIR/kernels.txt (the trace's top kernels),
DIR/perfetto_trace.json.gz. ``--smoke`` runs the same code on a tiny model (CPU check).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAG_VARIANTS = {
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
    "cudnn_gemm_fusion": "--xla_gpu_cudnn_gemm_fusion_level=2",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="folder for profile.json, kernels.txt and the trace")
    p.add_argument("--model", default="paper", help="model preset (default: paper)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--batch-sizes", default="512,1024", help="training batch sizes (pairs) to time")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="epoch seconds: start nothing new after it (the command's own time limit)",
    )
    p.add_argument(
        "--trace-only",
        action="store_true",
        help="only the device trace of the training step (kernels.txt) at the first batch size",
    )
    p.add_argument(
        "--only-train", action="store_true", help="only time the base training step (used for the XLA_FLAGS variants)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and batches: checks the script on CPU")
    return p.parse_args(argv)


class Run:
    """Results so far, rewritten to DIR/profile.json after every measurement."""

    def __init__(self, args):
        self.args, self.data = args, {"sections": defaultdict(dict)}
        os.makedirs(args.out, exist_ok=True)

    def time_left(self) -> float:
        return (self.args.deadline or time.time() + 1e9) - time.time()

    def put(self, section, name, value):
        self.data["sections"][section][name] = value
        print(f"[{section}] {name}: {value}", flush=True)
        with open(os.path.join(self.args.out, "profile.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)

    def attempt(self, section, name, fn, need_s=30):
        if self.time_left() < need_s:
            self.put(section, name, "skipped: deadline")
            return None
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001  (one failed variant must not lose the others)
            value = f"error: {type(e).__name__}: {str(e)[:400]}"
        self.put(section, name, value)
        return value


def bench(fn, min_time=0.3, repeats=5):
    """Median seconds per call of fn (which blocks until its result is ready)."""
    import statistics

    fn()
    fn()
    t = time.perf_counter()
    fn()
    inner = max(1, int(min_time / max(time.perf_counter() - t, 1e-6)))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


# ----------------------------------------------------------------------------- 1. ceilings
def matmul_peak(n):
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in (ka, kb))
    dot = jax.jit(jnp.dot)
    out = {"jnp_dot_tflops": round(2 * n**3 / bench(lambda: dot(a, b).block_until_ready()) / 1e12, 1)}
    try:
        import torch

        if torch.cuda.is_available():
            ta, tb = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))

            def tmm():
                torch.mm(ta, tb)
                torch.cuda.synchronize()

            out["torch_mm_tflops"] = round(2 * n**3 / bench(tmm) / 1e12, 1)
    except ImportError:
        pass
    x = jnp.ones((1 << 28,), jnp.bfloat16)  # 512 MiB
    copy = jax.jit(lambda v: v * 2)
    out["copy_tb_per_s"] = round(2 * x.nbytes / bench(lambda: copy(x).block_until_ready()) / 1e12, 2)
    return out


# ----------------------------------------------------------------------------- 2. per layer
def _conv_timing(x, w, padding, impl, g, flops, passes):
    """passes 2: conv1 (no input gradient: its input is data), 3: the others."""
    import jax

    from siamax import conv as convs

    conv = lambda x, w: convs.conv2d(x, w, padding, impl)
    fwd = jax.jit(conv)
    if passes == 2:
        both = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g))
    else:
        both = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
    t_f = bench(lambda: fwd(x, w).block_until_ready())
    t_b = bench(lambda: jax.block_until_ready(both(x, w, g)))
    return {
        "fwd_ms": round(t_f * 1e3, 3),
        "fwd_bwd_ms": round(t_b * 1e3, 3),
        "fwd_tflops": round(flops / t_f / 1e12, 1),
        "fwd_bwd_tflops": round(passes * flops / t_b / 1e12, 1),
    }


def _block_timing(x, w, bias, padding, fused, wrt_x):
    """conv + bias + ReLU + 2x2 max-pool, forward and forward + gradients (w, and x if wrt_x)."""
    import jax
    import jax.numpy as jnp

    from siamax import conv

    block = lambda x, w: conv.conv_relu_pool(x, w, bias, padding, "s2d" if fused else "xla")
    fwd = jax.jit(block)
    g = jnp.ones(fwd(x, w).shape, x.dtype)
    if wrt_x:
        both = jax.jit(lambda x, w, g: jax.vjp(block, x, w)[1](g))
    else:
        both = jax.jit(lambda x, w, g: jax.vjp(lambda w: block(x, w), w)[1](g))
    return {
        "fwd_ms": round(bench(lambda: fwd(x, w).block_until_ready()) * 1e3, 3),
        "fwd_bwd_ms": round(bench(lambda: jax.block_until_ready(both(x, w, g))) * 1e3, 3),
    }


def _act_timing(y, bias, pool_fn):
    import jax
    import jax.numpy as jnp

    act = (lambda v: pool_fn(jax.nn.relu(v + bias))) if pool_fn else (lambda v: jax.nn.relu(v + bias))
    fwd = jax.jit(act)
    g = jnp.ones(fwd(y).shape, y.dtype)
    both = jax.jit(lambda v, g: jax.vjp(act, v)[1](g))
    return {
        "fwd_ms": round(bench(lambda: fwd(y).block_until_ready()) * 1e3, 3),
        "fwd_bwd_ms": round(bench(lambda: jax.block_until_ready(both(y, g))) * 1e3, 3),
    }


def _fc_timing(x, w):
    import jax
    import jax.numpy as jnp

    dense = lambda x, w: jax.nn.sigmoid(x @ w)
    fwd = jax.jit(dense)
    g = jnp.ones((x.shape[0], w.shape[1]), x.dtype)
    both = jax.jit(lambda x, w, g: jax.vjp(dense, x, w)[1](g))
    t_f = bench(lambda: fwd(x, w).block_until_ready())
    t_b = bench(lambda: jax.block_until_ready(both(x, w, g)))
    flops = 2 * x.shape[0] * x.shape[1] * w.shape[1]
    return {
        "fwd_ms": round(t_f * 1e3, 3),
        "fwd_bwd_ms": round(t_b * 1e3, 3),
        "fwd_bwd_tflops": round(3 * flops / t_b / 1e12, 1),
    }


def layer_profile(run, spec, images):
    """Forward and forward+both-gradient times of each layer at ``images`` tower inputs."""
    import functools

    import jax
    import jax.numpy as jnp

    from siamax import conv

    dtype = jnp.dtype(spec.dtype)
    keys = iter(jax.random.split(jax.random.key(0), 64))
    cin, size = spec.channels, spec.input_size
    for i, (f, k, pool, out) in enumerate(zip(spec.filters, spec.kernels, spec.pools, spec.conv_sizes)):
        x = jax.random.uniform(next(keys), (images, size, size, cin), dtype)
        w = (0.05 * jax.random.normal(next(keys), (k, k, cin, f))).astype(dtype)
        g = jax.random.normal(next(keys), (images, out, out, f), dtype)
        flops = conv.conv_flops(x.shape, w.shape, spec.padding)
        for impl in ["xla", "matmul", "fft"] + (["hybrid"] if cin == 1 else []):
            run.attempt(
                "layers",
                f"conv{i + 1} {k}x{k} {cin}->{f} on {size} [{impl}]",
                functools.partial(_conv_timing, x, w, spec.padding, impl, g, flops, 3 if i else 2),
                need_s=60,
            )
        bias = jnp.zeros((f,), dtype)
        if pool and spec.padding == "VALID":
            for fused in (False, True):
                run.attempt(
                    "layers",
                    f"block conv{i + 1}+relu+pool [{'s2d' if fused else 'xla'}]",
                    functools.partial(_block_timing, x, w, bias, spec.padding, fused, i > 0),
                )
        for name, fn in (
            (("reshape_max", conv.max_pool_2x2), ("reduce_window", _pool_reduce_window)) if pool else (("none", None),)
        ):
            run.attempt(
                "layers",
                f"bias+relu+pool[{name}] after conv{i + 1} {g.shape}",
                functools.partial(_act_timing, g, bias, fn),
            )
        cin, size = f, (out // 2 if pool else out)
    if spec.fc_units:
        d = size * size * cin
        x = jax.random.normal(next(keys), (images, d), dtype)
        w = (0.01 * jax.random.normal(next(keys), (d, spec.fc_units))).astype(dtype)
        run.attempt("layers", f"fc {d}->{spec.fc_units}", functools.partial(_fc_timing, x, w))


def _pool_reduce_window(x):
    import jax
    import jax.numpy as jnp

    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


# ----------------------------------------------------------------------------- 3. train step
@contextlib.contextmanager
def patched_pool(pool=None):
    """Planned "max" poolings as ``reduce_window`` instead (a measurement only: no plan names it)."""
    from siamax import conv

    saved = conv.POOLS["max"]
    if pool == "reduce_window":
        conv.POOLS["max"] = _pool_reduce_window
    try:
        yield
    finally:
        conv.POOLS["max"] = saved


def only_layer(spec, layer, impl):
    """``spec`` with conv layer ``layer`` (1-based) forced to ``impl`` and the others left to "auto"."""
    return spec.replace(conv_impl=tuple(impl if i == layer - 1 else "auto" for i in range(len(spec.filters))))


def _random_pairs(spec, batch_size):
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    s = spec.input_size
    imgs = lambda n: (rng.random((n, s, s) + ((3,) if spec.channels == 3 else ())) > 0.8).astype(np.float32)
    return jax.device_put(
        {"x1": imgs(batch_size), "x2": imgs(batch_size), "y": (rng.random(batch_size) > 0.5).astype(np.float32)}
    )


def _compiled(step_fn, state, batch):
    """(call, compile seconds, compiled step): a fresh jit, so a patched pooling is traced anew; the
    state is donated, so it lives in a box."""
    import jax

    key = jax.random.key(1)
    t = time.perf_counter()
    step = jax.jit(step_fn, donate_argnums=0).lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def call():
        box[0], metrics = step(box[0], batch, key)
        metrics["loss"].block_until_ready()

    return call, compile_s, step


def _library_step(spec, batch_size):
    import jax

    import siamax
    from siamax import optim, train

    tx = optim.koch_sgd(spec.layer_names, optim.SGDConfig(), steps_per_epoch=1000)
    state = train.create_train_state(siamax.init(jax.random.key(0), spec), tx, train.Objective())
    return _compiled(lambda st, b, r: train._train_step(st, b, r), state, _random_pairs(spec, batch_size))


def _rate(compiled, batch_size, flops_per_pair, peak_flops):
    call, compile_s, _ = compiled
    dt = bench(call, min_time=1.0, repeats=5)
    rate = batch_size / dt
    out = {"pairs_per_s": round(rate, 1), "step_ms": round(dt * 1e3, 2), "compile_s": round(compile_s, 1)}
    if peak_flops:
        out["fraction_of_peak"] = round(rate * flops_per_pair / peak_flops, 4)
    return out


def train_rate(spec, batch_size, flops_per_pair, peak_flops):
    from siamax import conv

    out = _rate(_library_step(spec, batch_size), batch_size, flops_per_pair, peak_flops)
    return out | {"conv_plan": conv.plan_dict(spec)}  # what each layer ran


def _functional_step(spec, s2d_layers):
    """The paper network's train step written out as plain functions over the same params tree
    (the maths of siamax.train with Objective(), less the L2 term), with the chosen pooled blocks
    by space-to-depth and the others by XLA's convolution: each block's choice measured alone."""
    import jax
    import jax.numpy as jnp
    import optax

    from siamax import conv, losses

    dt = jnp.dtype(spec.dtype)

    def tower(w, x):
        for i, pool in enumerate(spec.pools):
            kern, bias = (w[f"conv{i + 1}"][n].astype(dt) for n in ("kernel", "bias"))
            if pool and i in s2d_layers:
                x = conv.conv_relu_pool(x, kern, bias, spec.padding, "s2d")
            else:
                x = jax.nn.relu(conv.conv2d(x, kern, spec.padding, "xla") + bias)
                x = conv.max_pool_2x2(x) if pool else x
        x = x.reshape(x.shape[0], -1)
        if spec.fc_units:
            x = jax.nn.sigmoid(x @ w["fc"]["kernel"].astype(dt) + w["fc"]["bias"].astype(dt))
        return x.astype(jnp.float32)

    def loss_fn(w, batch):
        x = jnp.stack([batch["x1"], batch["x2"]])[..., None].astype(dt)
        e = jax.vmap(lambda xi: tower(w, xi))(x)
        logits = (jnp.abs(e[0] - e[1]) @ w["head"]["kernel"] + w["head"]["bias"])[:, 0]
        return losses.pair_cross_entropy(logits, batch["y"])

    def step(state, batch, rng):
        weights, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(weights, batch)
        updates, opt_state = tx.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), opt_state), {"loss": loss}

    from siamax import optim

    tx = optim.koch_sgd(spec.layer_names, optim.SGDConfig(), steps_per_epoch=1000)
    return step, tx


def functional_rate(spec, batch_size, s2d_layers, flops_per_pair, peak_flops):
    import jax

    import siamax

    step_fn, tx = _functional_step(spec, frozenset(s2d_layers))
    weights = siamax.init(jax.random.key(0), spec).weights
    compiled = _compiled(step_fn, (weights, tx.init(weights)), _random_pairs(spec, batch_size))
    return _rate(compiled, batch_size, flops_per_pair, peak_flops)


# ----------------------------------------------------------------------------- 4. device trace
def trace_kernels(spec, batch_size, out_dir, steps=5):
    import jax

    call, _, step = _library_step(spec, batch_size)
    for _ in range(3):
        call()
    with open(os.path.join(out_dir, "train_step_hlo.txt.gz"), "wb") as f:
        f.write(gzip.compress(step.as_text().encode()))
    logdir = os.path.join("/tmp", "siamax_trace")
    shutil.rmtree(logdir, ignore_errors=True)
    t = time.perf_counter()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        for _ in range(steps):
            call()
    wall = (time.perf_counter() - t) / steps
    files = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        return {"error": "no perfetto trace written", "files": glob.glob(logdir + "/**", recursive=True)[:20]}
    shutil.copy(files[0], os.path.join(out_dir, "perfetto_trace.json.gz"))
    with gzip.open(files[0], "rt") as f:
        events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    pnames = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    per_proc = defaultdict(lambda: defaultdict(lambda: [0.0, 0, None]))
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        args = e.get("args") or {}
        key = f"{args['hlo_op']} | {e.get('name', '?')[:60]}" if "hlo_op" in args else e.get("name", "?")
        slot = per_proc[pnames.get(e["pid"], str(e["pid"]))][key]
        slot[0] += e["dur"]
        slot[1] += 1
        if slot[2] is None:
            slot[2] = {k: str(v)[:160] for k, v in args.items() if k not in ("_src", "run_id")}
    lines, summary = [], {"wall_ms_per_step": round(wall * 1e3, 2), "processes": {}}
    for proc, kernels in per_proc.items():
        total = sum(v[0] for v in kernels.values())
        summary["processes"][proc] = {"busy_ms_per_step": round(total / 1e3 / steps, 2), "kinds": len(kernels)}
        lines.append(f"== {proc}: {total / 1e3 / steps:.2f} ms/step summed over {len(kernels)} event names")
        for name, (dur, n, args) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:40]:
            lines.append(f"{dur / 1e3 / steps:9.3f} ms/step {n // steps:5d}x  {name[:110]}  {json.dumps(args)[:300]}")
    with open(os.path.join(out_dir, "kernels.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    run = Run(args)
    import jax
    from throughput import train_flops_per_pair

    from siamax.model import get_spec

    spec = get_spec(args.model).replace(dtype=args.dtype)
    if args.smoke:  # VALID padding, as the paper network, so the space-to-depth path applies
        spec = get_spec("tiny").replace(dtype=args.dtype, padding="VALID")
    batches = [8] if args.smoke else [int(b) for b in args.batch_sizes.split(",")]
    fpp = train_flops_per_pair(spec)
    run.data.update(
        model=args.model,
        dtype=args.dtype,
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
        flops_per_pair=fpp,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    if args.only_train:
        run.attempt("train", "base", lambda: train_rate(spec, batches[0], fpp, None))
        return
    if args.trace_only:
        run.attempt("trace", f"base b{batches[0]}", lambda: trace_kernels(spec, batches[0], args.out))
        return
    peak = run.attempt("ceilings", "peak", lambda: matmul_peak(512 if args.smoke else 8192)) or {}
    peak_flops = 1e12 * max(v for k, v in peak.items() if k.endswith("tflops")) if isinstance(peak, dict) else None
    b0 = batches[0]
    run.attempt("train", f"base b{b0}", lambda: train_rate(spec, b0, fpp, peak_flops))
    run.attempt("trace", f"base b{b0}", lambda: trace_kernels(spec, b0, args.out), need_s=60)
    pooled = [i for i, p in enumerate(spec.pools) if p]
    for upto in range(len(pooled) + 1):
        chosen = pooled[:upto]
        run.attempt(
            "train",
            f"functional s2d{[i + 1 for i in chosen]} b{b0}",
            lambda chosen=chosen: functional_rate(spec, b0, chosen, fpp, peak_flops),
            need_s=60,
        )
    variants = {  # name: (spec, pooling)
        "conv1 matmul": (only_layer(spec, 1, "matmul"), None),
        "conv1 hybrid": (only_layer(spec, 1, "hybrid"), None),
        "pool reduce_window": (spec, "reduce_window"),
        "conv2 fft": (only_layer(spec, 2, "fft"), None),
    }
    if args.smoke:
        variants = {k: variants[k] for k in ("conv1 matmul", "pool reduce_window")}
    for b in batches[1:]:
        run.attempt("train", f"base b{b}", lambda b=b: train_rate(spec, b, fpp, peak_flops), need_s=60)
        run.attempt(
            "train",
            f"functional s2d{[i + 1 for i in pooled]} b{b}",
            lambda b=b: functional_rate(spec, b, pooled, fpp, peak_flops),
            need_s=60,
        )
    layer_images = 16 if args.smoke else 2 * b0
    layer_profile(run, spec, layer_images)
    for name, (vspec, pool) in variants.items():

        def one(vspec=vspec, pool=pool):
            with patched_pool(pool):
                return train_rate(vspec, b0, fpp, peak_flops)

        run.attempt("train", f"{name} b{b0}", one, need_s=60)
    for name, flag in ({} if args.smoke else FLAG_VARIANTS).items():

        def sub(flag=flag, name=name):
            sub_out = os.path.join("/tmp", "gpu_profile_flags", name)  # its numbers go into profile.json
            env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--out",
                sub_out,
                "--only-train",
                "--model",
                args.model,
                "--dtype",
                args.dtype,
                "--batch-sizes",
                str(b0),
            ]
            r = subprocess.run(
                cmd, check=False, env=env, capture_output=True, text=True, timeout=max(30, run.time_left() - 20)
            )
            if r.returncode:
                return f"exit {r.returncode}: {r.stderr[-400:]}"
            with open(os.path.join(sub_out, "profile.json")) as f:
                return json.load(f)["sections"]["train"]["base"]

        run.attempt("xla_flags", f"{name} ({flag}) b{b0}", sub, need_s=90)
    print("\n=== summary")
    for section in ("ceilings", "train", "xla_flags"):
        for k, v in run.data["sections"].get(section, {}).items():
            print(f"{section:9s} {k:45s} {v}")


if __name__ == "__main__":
    main()
