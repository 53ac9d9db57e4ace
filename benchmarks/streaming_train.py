#!/usr/bin/env python
"""Training from a packed dataset of a million images: peak memory and steps/s against the in-memory path.

Three measurements, each in a process of its own (so that each peak resident memory is its own):

* ``pack``: ``siamax pack`` throughput (images/s) on a real folder: Omniglot's background images
  of the official small1 and small2 zips (5,840 PNGs, unpacked into ``--work``), at the quick
  preset's input size.
* ``stream``: the quick preset's model, objective and batches (P x K class batches) trained for
  ``--steps`` steps from ``--items`` images packed on disk (``siamax.data.packed``: Grain reads the
  batches' rows from the ArrayRecord shards in threads, ahead of the step). The images: distorted
  copies of the Omniglot training table (the main job's: 30 background alphabets, the paper's
  drawers), copy ``c`` of image ``i`` warped by the paper's affine distortions drawn from
  ``fold_in(key, item)`` (copy 0 undistorted), each a member of its image's class; written once
  (``pack_table``) and reused by later runs.
* ``memory``: the same steps with the same pack read into memory first (the in-memory path, as
  a table that fits: 1,000,000 x 35 x 35 is 1.2 GB).

Each path runs ``--rounds`` times, alternating (a fresh process each: a shared CPU's speed drifts, so
what is compared is the two paths within a round). Reports steps/s (per process the median over
``--repeats`` timed runs of ``--steps`` steps each, after a warm-up), the ratio streaming / in-memory
per round and its median (the target >= 0.9), and the peak resident memory (``ru_maxrss``, the
largest over the rounds; the target for streaming <= 2 GB).

JSON (``--json PATH``): {"meta": {items, steps, repeats, preset, model, batch_images, input_size,
device, cpu, versions, git_commit, git_dirty, date}, "pack_folder": {images, seconds, images_per_s,
bytes}, "pack_table": {images, seconds, bytes} (when written by this run), "stream": {steps_per_s,
peak_rss_mb, embed_images_per_s, rounds: [{steps_per_s, repeats_steps_per_s, peak_rss_mb, embed: {images,
seconds, images_per_s, peak_rss_mb}}]}, "memory": {...}, "round_ratios", "ratio" (training steps/s,
streaming / in-memory, median over rounds), "embed_round_ratios", "embed_ratio"}. ``embed``: the first ``--embed-items``
images embedded as ``siamax index build`` embeds a gallery (``commands._embed_table``: from the pack
in blocks of ``siamax.evaluators.embedders.EMBED_BLOCK`` read as it goes, or from memory).

Example::

    python benchmarks/streaming_train.py --work runs/streaming --json benchmarks/results/streaming/cpu_1m.json
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import cpu_model_name, write_results  # noqa: E402

PRESET = "quick"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="streaming_train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the packed datasets (reused when already there)")
    p.add_argument("--items", type=int, default=1_000_000, help="images in the packed training set (1000000)")
    p.add_argument("--steps", type=int, default=60, help="training steps per timed run (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path (default 3; the median)")
    p.add_argument("--embed-items", type=int, default=100_000, help="images embedded as by index build (100000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (stream, memory) processes (default 3)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--phase", choices=("stream", "memory"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.items < 2 or args.steps < 1 or args.repeats < 1:
        p.error("need --items >= 2, --steps >= 1, --repeats >= 1")
    return args


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def machine() -> dict:
    """Where and with what a result was measured: device, CPU, cores, versions, commit, date."""
    import jax

    from siamax import provenance

    return {
        "device": str(jax.devices()[0]), "cpu": cpu_model_name(), "cores": os.cpu_count(),
        "versions": {**provenance.environment()["versions"], "grain": _version("grain"),
                     "array_record": _version("array_record")},
        **provenance.git_state(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _training_table():
    from siamax import presets
    from siamax.data import load_omniglot, omniglot_table, paper_splits

    cfg = presets.config(PRESET)
    splits = paper_splits(cfg.data.split_seed, train_drawers=cfg.data.train_drawers)
    return cfg, omniglot_table(load_omniglot(), cfg.spec).take(splits.train.flat_indices())


class DistortedCopies:
    """Items ``0 .. n-1`` of a table's images: item ``j`` is image ``j % N`` warped by affine distortions
    drawn from ``fold_in(key, j)`` (the first N undistorted), made on demand, slice by slice."""

    def __init__(self, images, n: int, seed: int = 0):
        import jax
        import jax.numpy as jnp

        from siamax import augment
        from siamax.data.labelled import INK

        self.source, self.n = images, n
        self.shape, self.dtype, self.ndim = (n, *images.shape[1:]), images.dtype, images.ndim
        key = jax.random.key(seed)

        @jax.jit
        def warp(items):
            x = self.source[items % self.source.shape[0]].astype(jnp.float32) / INK
            t = jax.vmap(lambda j: augment.sample_affine(jax.random.fold_in(key, j), 1)[0])(items)
            y = jnp.clip(augment.apply_affine(x, t), 0.0, 1.0)
            y = jnp.where((items < self.source.shape[0])[:, None, None], x, y)
            return jnp.round(y * INK).astype(jnp.uint8)

        self._warp = warp

    def __getitem__(self, index: slice):
        import numpy as np

        lo, hi, _ = index.indices(self.n)
        items = np.arange(lo, hi)
        pad = (-len(items)) % 256  # one compiled size
        return np.asarray(self._warp(np.concatenate([items, items[:1].repeat(pad)])))[: len(items)]


def write_table_pack(out: Path, n: int) -> dict | None:
    """The million-image pack (``DistortedCopies`` of the training table), unless already written."""
    import numpy as np

    from siamax.data import LabelledImages, packed

    if (out / packed.MANIFEST).is_file():
        return None
    _, table = _training_table()
    copies = DistortedCopies(table.images, n)
    labels = table.labels[np.arange(n) % table.n_images]
    big = LabelledImages(copies, labels, table.class_names, table.groups, table.group_names, name=f"omniglot_x{n}")
    r = packed.pack_table(big, out, progress=True)
    return {"images": r.n_images, "seconds": r.seconds, "bytes": r.bytes}


def pack_folder(work: Path) -> dict:
    """``siamax pack`` of the PNGs of the official images_background_small1 and small2 zips (5,840
    images of 30 alphabets, their group/class tree), unpacked into ``work``."""
    from siamax import commands, presets
    from siamax.data import _paths

    src, out = work / "images_background_small", work / "packed_background_small"
    if not src.is_dir():
        for name in ("omniglot_small1_zip", "omniglot_small2_zip"):
            with zipfile.ZipFile(_paths.data_dir() / _paths.ARCHIVES[name].relpath) as zf:
                for member in zf.namelist():
                    parts = member.split("/")
                    if len(parts) == 4 and member.endswith(".png"):
                        target = src / parts[1] / parts[2] / f"{parts[0]}_{parts[3]}"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(zf.read(member))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    size = presets.config(PRESET).spec.input_size
    t = time.perf_counter()
    r = commands.pack_folder(src, out, image_size=size, progress=False)
    seconds = time.perf_counter() - t
    return {"images": r.n_images, "classes": r.n_classes, "seconds": seconds, "images_per_s": r.n_images / seconds,
            "bytes": r.bytes}  # fmt: skip


def train_phase(args) -> dict:
    """The timed steps of one path (``args.phase``) in this process."""
    import jax
    import numpy as np

    from siamax import experiment, optim, presets, rng, sharding, train
    from siamax.data import LabelledImages, make_sampler, packed
    from siamax.model import init

    cfg = presets.config(PRESET)
    table, _ = packed.load_packed(Path(args.work) / "packed_table", cfg.spec)
    if args.phase == "memory":
        images = table.images
        x = np.empty(images.shape, np.uint8)
        for i in range(0, len(images), 65536):
            x[i : i + 65536] = images.read(np.arange(i, min(i + 65536, len(images))))
        table = LabelledImages(jax.device_put(x), table.labels, table.class_names, table.groups, table.group_names)
        del x
    sampler = make_sampler(cfg.data, cfg.objective.batch, table, cfg.seed, cfg.schedule.steps_per_epoch)
    mesh = sharding.make_mesh(None)
    tx, _ = optim.make_optimizer(cfg.optim, cfg.spec.layer_names, sampler.steps_per_epoch)
    state = sharding.replicate(
        train.create_train_state(init(rng.train_streams(0)["init"], cfg.spec), tx, experiment.objective_of(cfg)), mesh
    )
    key = jax.random.key(0)

    def run(start: int) -> float:
        nonlocal state
        t = time.perf_counter()
        for i, batch in enumerate(sampler.batches(start, start + args.steps)):
            state, m = train.train_step(state, sharding.shard_batch(batch, mesh), jax.random.fold_in(key, start + i))
        jax.block_until_ready(m["loss"])
        return args.steps / (time.perf_counter() - t)

    run(0)  # warm-up: compilation, the readers opened
    rates = [run((r + 1) * args.steps) for r in range(args.repeats)]
    out = {"steps_per_s": statistics.median(rates), "repeats_steps_per_s": rates, "peak_rss_mb": _rss_mb(),
           "streaming": sampler.streaming, "batch_images": sampler.images_per_step}  # fmt: skip

    # `siamax index build`'s embedding of a gallery: from the pack block by block, or from memory at once.
    from siamax import commands
    from siamax.evaluators import embedders

    params = sharding.local_copy(state.params)
    part = table.take(np.arange(min(args.embed_items, table.n_images)))
    commands._embed_table(params, part.take(np.arange(min(embedders.EMBED_BLOCK, part.n_images))))  # compile
    t = time.perf_counter()
    emb = commands._embed_table(params, part)
    seconds = time.perf_counter() - t
    out["embed"] = {"images": part.n_images, "seconds": seconds, "images_per_s": part.n_images / seconds,
                    "dim": int(np.asarray(emb).shape[1]), "peak_rss_mb": _rss_mb()}  # fmt: skip
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(train_phase(args)))
        return {}

    from siamax import presets

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = pack_folder(work)
    print(f"siamax pack, {folder['images']} PNGs: {folder['images_per_s']:,.0f} images/s")
    table = write_table_pack(work / "packed_table", args.items)
    out = {"pack_folder": folder, **({"pack_table": table} if table else {})}
    # The two paths alternate, each round a fresh process of each: the machine's speed drifts (a shared
    # CPU's cores change speed), and what is compared is the ratio within a round.
    rounds = {"stream": [], "memory": []}
    for r in range(args.rounds):
        for phase in ("stream", "memory"):
            cmd = [sys.executable, os.path.abspath(__file__), "--work", str(work), "--items", str(args.items)]
            cmd += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--phase", phase]
            cmd += ["--embed-items", str(args.embed_items)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rounds[phase].append(json.loads(done.stdout.strip().splitlines()[-1]))
            x = rounds[phase][-1]
            print(f"round {r + 1} {phase}: {x['steps_per_s']:.2f} steps/s, peak RSS {x['peak_rss_mb']:,.0f} MB; "
                  f"embedding {x['embed']['images_per_s']:,.0f} images/s")  # fmt: skip
    for phase, runs in rounds.items():
        out[phase] = {
            "steps_per_s": statistics.median(x["steps_per_s"] for x in runs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
            "embed_images_per_s": statistics.median(x["embed"]["images_per_s"] for x in runs),
            "rounds": runs,
        }
    pairs = list(zip(rounds["stream"], rounds["memory"]))
    out["round_ratios"] = [a["steps_per_s"] / b["steps_per_s"] for a, b in pairs]
    out["ratio"] = statistics.median(out["round_ratios"])
    out["embed_round_ratios"] = [a["embed"]["images_per_s"] / b["embed"]["images_per_s"] for a, b in pairs]
    out["embed_ratio"] = statistics.median(out["embed_round_ratios"])
    print(f"streaming / in-memory, median of {args.rounds} rounds: training {out['ratio']:.3f} "
          f"({', '.join(f'{x:.3f}' for x in out['round_ratios'])}), embedding {out['embed_ratio']:.3f}")  # fmt: skip
    cfg = presets.config(PRESET)
    out["meta"] = {
        "items": args.items, "steps": args.steps, "repeats": args.repeats, "rounds": args.rounds, "preset": PRESET,
        "model": cfg.model.model, "batch_images": rounds["stream"][0]["batch_images"],
        "input_size": cfg.spec.input_size,
        **machine(),
    }  # fmt: skip
    if args.json:
        write_results(args.json, out)
    return out


if __name__ == "__main__":
    main()
