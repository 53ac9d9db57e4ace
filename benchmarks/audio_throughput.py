#!/usr/bin/env python
"""Clips per second of the audio path: the log-mel front-end (``siamax.audio``) and tower training on it.

Measures, after warm-up and with compile time reported separately, the median over interleaved
repeats (so that a machine shared with other jobs slows every figure alike) of:

* front-end clips/s: the jitted ``siamax.audio.features`` (crop / pad, framing, Hann window,
  ``jnp.fft.rfft``, power, mel filter bank, dB, image) on a batch of ``2 x --batch-size`` clips of
  FSDD length (a fixed mix of 0.3 - 1.2 s, zero padded to 1.2 s);
* librosa clips/s: the reference, ``librosa.feature.melspectrogram`` + ``power_to_db`` clip by clip
  with the same parameters (numpy, what a loader without the JAX front-end would run; the
  ``frontend_vs_librosa`` ratio compares the two in this run);
* tower clips/s: the jitted ``siamax.train.train_step`` (pairs objective, both clips of every pair
  through the tower, BCE, gradients, the paper's SGD) on pre-computed log-mel images;
* front-end + tower clips/s: both in one jitted step, waveforms in, updated state out: the figure
  the issue's target (>= 1,000 clips/s on 2 cores) is about. ``frontend_overhead`` is the tower
  figure over this one.

A clip is one input image: a training pair is two clips. The model is ``--model`` from
``siamax.model.MODELS`` at ``--size`` (its ``input_size`` replaced; the front-end is
``MelConfig.square(size)``: 64 -> 64 mel bands x 64 frames, 1.008 s at 8 kHz).

Examples::

    python benchmarks/audio_throughput.py --quick                       # < 1 minute on 2 cores
    python benchmarks/audio_throughput.py --size 35 --json benchmarks/results/cpu_audio_small_35_b32.json

JSON (``--json PATH``): {"model", "size", "mel", "batch_size", "device_kind", "backend",
"jax_version", "compile_s", "frontend_clips_per_s", "librosa_clips_per_s", "tower_clips_per_s",
"train_clips_per_s", "frontend_vs_librosa", "frontend_overhead", "per_repeat": {figure: [each repeat]},
"repeats", "repeat_s", "load_average"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Timer, cpu_model_name  # noqa: E402  the house timer, shared

FIGURES = (  # (op, JSON key, label)
    ("frontend", "frontend_clips_per_s", "log-mel front-end (jax), clips/s"),
    ("librosa", "librosa_clips_per_s", "log-mel reference (librosa), clips/s"),
    ("tower", "tower_clips_per_s", "tower training on images, clips/s"),
    ("train", "train_clips_per_s", "front-end + tower training, clips/s"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="audio_throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="small", help="a model of siamax.model.MODELS (default: small)")
    p.add_argument("--size", type=int, default=64, help="image side: mel bands = frames (default: 64)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per training step (default: 32: 64 clips)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of calls per repeat (default: 0.5)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per figure (default: 5)")
    p.add_argument("--quick", action="store_true", help="3 repeats of >= 0.3 s: under a minute on 2 cores")
    p.add_argument("--skip", default="", help="comma-separated figures to skip: frontend,librosa,tower,train")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.min_time = 3, 0.3
    if args.batch_size < 1 or args.repeats < 1 or args.size < 8:
        p.error("--batch-size and --repeats must be >= 1, --size >= 8")
    return args


def _clips(n: int, samples: int, rate: int, seed: int = 0):
    """n speech-like test clips (a voiced chirp with harmonics in noise), 0.3 - 1.2 s, zero padded to ``samples``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.zeros((n, samples), np.float32)
    for i in range(n):
        m = int(rate * rng.uniform(0.3, 1.2))
        t = np.arange(m) / rate
        f0 = rng.uniform(90, 250) * (1 + 0.2 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * np.hanning(m)
        x = 0.3 * voiced + 0.01 * rng.standard_normal(m)
        start = (samples - m) // 2
        out[i, start : start + m] = x
    return out


def build(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import siamax
    from siamax import audio, optim, train
    from siamax.model import get_spec

    spec = get_spec(args.model).replace(input_size=args.size, channels=1)
    cfg = audio.MelConfig.square(args.size)
    b = args.batch_size
    waves = _clips(2 * b, int(1.2 * cfg.sample_rate), cfg.sample_rate)
    w1, w2 = jnp.asarray(waves[:b]), jnp.asarray(waves[b:])
    y = jnp.asarray((np.arange(b) % 2).astype(np.float32))
    tx = optim.koch_sgd(spec.layer_names, optim.SGDConfig(), steps_per_epoch=1000)

    def fresh_state():
        return train.create_train_state(siamax.init(jax.random.key(0), spec), tx, train.Objective())

    key = jax.random.key(1)
    ops, compile_s = {}, {}
    skip = set(filter(None, args.skip.split(",")))
    frontend = jax.jit(lambda w: audio.features(w, cfg))

    if "frontend" not in skip:
        t = time.perf_counter()
        f = frontend.lower(jnp.concatenate([w1, w2])).compile()
        compile_s["frontend"] = time.perf_counter() - t
        both = jnp.concatenate([w1, w2])
        ops["frontend"] = (lambda: f(both).block_until_ready(), 2 * b)

    if "librosa" not in skip:
        import librosa  # the test dependency; the reference

        def reference():
            for w in waves:
                s = librosa.feature.melspectrogram(
                    y=w, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_mels, pad_mode="constant"
                )
                librosa.power_to_db(s, ref=1.0, amin=cfg.amin, top_db=None)

        ops["librosa"] = (reference, 2 * b)

    if "tower" not in skip:
        x1, x2 = frontend(w1), frontend(w2)
        batch = {"x1": x1, "x2": x2, "y": y}
        state = fresh_state()
        t = time.perf_counter()
        step = train.train_step.lower(state, batch, key).compile()
        compile_s["tower"] = time.perf_counter() - t
        ops["tower"] = (_stepper(step, state, batch, key), 2 * b)

    if "train" not in skip:

        def audio_step(state, w1, w2, y, key):
            return train._train_step(state, {"x1": audio.features(w1, cfg), "x2": audio.features(w2, cfg), "y": y}, key)

        state = fresh_state()
        t = time.perf_counter()
        step = jax.jit(audio_step, donate_argnums=0).lower(state, w1, w2, y, key).compile()
        compile_s["train"] = time.perf_counter() - t
        box = [state]

        def call():
            box[0], metrics = step(box[0], w1, w2, y, key)
            metrics["loss"].block_until_ready()

        ops["train"] = (call, 2 * b)

    dev = jax.devices()[0]
    kind = f"cpu: {cpu_model_name()} ({os.cpu_count()} cores)" if dev.platform == "cpu" else dev.device_kind
    meta = {
        "model": args.model,
        "size": args.size,
        "mel": dataclasses.asdict(cfg),
        "batch_size": b,
        "device_kind": kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
    }
    return meta, ops


def _stepper(step, state, batch, key):
    box = [state]

    def call():
        box[0], metrics = step(box[0], batch, key)
        metrics["loss"].block_until_ready()

    return call


def run(args) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta, ops = build(args)
    timers = {op: Timer(fn, args.min_time) for op, (fn, _) in ops.items()}
    for t in timers.values():
        t.warm(1)
    for _ in range(args.repeats):  # interleaved: every figure once per repeat
        for t in timers.values():
            t.repeat()
    r = dict(meta, per_repeat={})
    for op, key, _ in FIGURES:
        if op in ops:
            r[key] = round(ops[op][1] / timers[op].median(), 1)
            r["per_repeat"][key] = [round(ops[op][1] / s, 1) for s in timers[op].times]
    if "frontend" in ops and "librosa" in ops:
        r["frontend_vs_librosa"] = round(r["frontend_clips_per_s"] / r["librosa_clips_per_s"], 2)
    if "tower" in ops and "train" in ops:
        r["frontend_overhead"] = round(r["tower_clips_per_s"] / r["train_clips_per_s"], 3)
    r["repeats"], r["repeat_s"], r["load_average"] = args.repeats, args.min_time, load
    return r


def print_table(r: dict) -> None:
    mel = r["mel"]
    print(
        f"\naudio throughput: model={r['model']} at {r['size']}x{r['size']}, batch {r['batch_size']} pairs; "
        f"log-mel {mel['n_mels']} bands x {mel['frames']} frames, n_fft {mel['n_fft']}, hop {mel['hop']} "
        f"at {mel['sample_rate']} Hz"
    )
    print(f"device: {r['device_kind']}; jax {r['jax_version']}; load average at start {r['load_average']}")
    print(f"compile: {r['compile_s']}; medians of {r['repeats']} interleaved repeats of >= {r['repeat_s']} s\n")
    for _, key, label in FIGURES:
        if key in r:
            lo, hi = min(r["per_repeat"][key]), max(r["per_repeat"][key])
            print(f"{label:42s} {r[key]:10.1f}   (repeats {lo:.1f}-{hi:.1f})")
    if "frontend_vs_librosa" in r:
        print(f"\nfront-end vs librosa in this run: {r['frontend_vs_librosa']:.2f}x")
    if "frontend_overhead" in r:
        print(f"tower alone / front-end + tower: {r['frontend_overhead']:.3f}x")


def main(argv=None) -> dict:
    args = parse_args(argv)
    r = run(args)
    print_table(r)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return r


if __name__ == "__main__":
    main()
