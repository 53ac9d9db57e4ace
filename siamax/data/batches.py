"""Training batches, sampled and gathered on the device.

All of Omniglot (32,460 images, already in model format) lives on the device as one uint8 array;
a batch is drawn as indices with ``jax.random`` and gathered (and distorted) inside ``jit``, so the
host never becomes the bottleneck. The batch of global step ``t`` depends only on (seed, t), which
is what makes an interrupted run resume to exactly the same parameters, and on nothing about the
devices or processes it runs on: with several processes, each gathers only its slice of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from siamax import augment, rng
from siamax.data import omniglot as og
from siamax.data.pairs import PairArrays, make_pairs, pair_arrays, sample_pairs
from siamax.errors import ConfigError


def device_images(data: og.Omniglot, spec, chunk: int = 2048) -> jax.Array:
    """All Omniglot images in model format as uint8 (1623 * 20, S, S) (index ``c * 20 + d``)."""
    from siamax.api import preprocess  # late import: api -> model -> layers is heavier than data

    flat = data.images.reshape(-1, *data.images.shape[2:])
    n = len(flat)
    flat = np.concatenate([flat, flat[: (-n) % chunk]])  # equal chunks: one compilation
    to_model = jax.jit(lambda x: jnp.round(preprocess(spec, x, ink=data.ink) * 255).astype(jnp.uint8))
    return jnp.concatenate([to_model(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])[:n]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """``batch(step)`` -> the batch of global step ``step``; ``steps_per_epoch``; pairs per batch."""

    batch: Callable[[int], dict]
    steps_per_epoch: int
    pairs_per_step: int
    images_per_step: int


def _episodic_indices(key, arrays: PairArrays, n_alphabets: int, chars_per_alphabet: int, drawers: int, max_count: int):
    """Characters from ``n_alphabets`` random alphabets, ``drawers`` distinct drawings of each.

    Alphabets with fewer characters than asked contribute duplicates (same label, so they only add
    same pairs; their drawings are still distinct when the character repeats)."""
    k_a, k_c, k_d = jax.random.split(key, 3)
    alphabets = jax.random.choice(k_a, arrays.n_alphabets, (n_alphabets,), replace=False)

    def chars_of(k, a):
        start, count = arrays.start[a], arrays.count[a]
        rank = jnp.argsort(jax.random.uniform(k, (max_count,)) + (jnp.arange(max_count) >= count))
        pick = rank[:chars_per_alphabet]
        pick = jnp.where(pick < count, pick, pick % count)
        return arrays.chars[start + pick]

    chars = jax.vmap(chars_of)(jax.random.split(k_c, n_alphabets), alphabets).reshape(-1)
    n_drawers = arrays.drawers.shape[0]
    d = jnp.argsort(jax.random.uniform(k_d, (chars.shape[0], n_drawers)), axis=1)[:, :drawers]
    flat = chars[:, None] * og.N_DRAWERS + arrays.drawers[d]
    return flat.reshape(-1), jnp.repeat(chars, drawers)


def _local(x: jax.Array, shard: tuple[int, int]) -> jax.Array:
    """This process's contiguous slice of a global batch's leading axis (shard = (index, count))."""
    index, count = shard
    n = x.shape[0] // count
    return jax.lax.dynamic_slice_in_dim(x, index * n, n) if count > 1 else x


def make_sampler(
    cfg, batch: str, split, images: jax.Array, seed: int, steps_per_epoch: int = 0, *, shard: tuple[int, int] = (0, 1)
) -> Sampler:
    """The sampler of ``batch`` form ("pairs" or "classes", from the objective) that the data section
    ``cfg`` (``siamax.config.DataConfig``) asks for, over one split's characters and drawers.

    ``steps_per_epoch``: class batches are drawn on the fly and need it; 0 for a fixed pair set means
    one pass over the set.

    Randomness comes from the data stream of ``seed`` (``siamax.rng``). ``shard = (process index,
    process count)``: ``batch(step)`` returns only this process's slice of the global batch, gathered
    (and distorted) for that slice alone; the global batch of a step is the same for every process count.
    """
    streams = rng.data_streams(rng.train_streams(seed)["data"])
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    if batch not in ("pairs", "classes"):
        raise ValueError(f"batch must be 'pairs' or 'classes', got {batch!r}")
    if batch == "classes":
        if cfg.episode_chars % cfg.episode_alphabets:
            raise ConfigError(
                f"episode_chars ({cfg.episode_chars}) must divide by episode_alphabets ({cfg.episode_alphabets})"
            )
        arrays = pair_arrays(split)
        if cfg.episode_drawers > len(split.drawers):
            raise ConfigError(f"episode_drawers={cfg.episode_drawers} but the split has {len(split.drawers)} drawers")
        if cfg.episode_alphabets > arrays.n_alphabets:
            raise ConfigError(f"episode_alphabets={cfg.episode_alphabets} but the split has {arrays.n_alphabets}")
        per = cfg.episode_chars // cfg.episode_alphabets
        max_count = int(np.max(arrays.count))
        b = cfg.episode_chars * cfg.episode_drawers
        _check_shardable(b, count)
        key = streams["batches"]

        @jax.jit
        def episodic(step):
            k_idx, k_rot = jax.random.split(jax.random.fold_in(key, step))
            idx, labels = _episodic_indices(k_idx, arrays, cfg.episode_alphabets, per, cfg.episode_drawers, max_count)
            if cfg.rotations:
                turns = jnp.repeat(jax.random.randint(k_rot, (cfg.episode_chars,), 0, 4), cfg.episode_drawers)
                labels = labels * 4 + turns
            idx, labels = _local(idx, shard), _local(labels, shard)
            x = images[idx]
            if cfg.rotations:
                x = rotate90(x, labels % 4)
            return {"x": x, "labels": labels}

        if not steps_per_epoch:
            raise ConfigError("class batches are drawn on the fly: set steps_per_epoch > 0")
        return Sampler(episodic, steps_per_epoch, b * (b - 1) // 2, b)

    b = cfg.batch_size
    _check_shardable(b, count)
    if cfg.n_pairs == 0:  # fresh pairs every step, distorted on the fly if asked
        arrays = pair_arrays(split, different=cfg.different)
        key = streams["batches"]

        @jax.jit
        def fresh(step):
            k_pairs, k1, k2 = jax.random.split(jax.random.fold_in(key, step), 3)
            i1, i2, y = (_local(v, shard) for v in sample_pairs(k_pairs, arrays, b))
            x1, x2 = images[i1], images[i2]
            if cfg.distortions:
                t1, t2 = (_local(augment.sample_affine(k, b), shard) for k in (k1, k2))
                x1, x2 = _warped(x1, t1), _warped(x2, t2)
            return {"x1": x1, "x2": x2, "y": y.astype(jnp.float32)}

        if not steps_per_epoch:
            raise ConfigError("on-the-fly pairs (n_pairs=0) need steps_per_epoch > 0")
        return Sampler(fresh, steps_per_epoch, b, 2 * b)

    # The paper's fixed pair set, with `distortions` transformed copies of every pair (9x for 8).
    pairs = make_pairs(split, cfg.n_pairs, different=cfg.different, seed=rng.host_seed(streams["pairs"]))
    rows = augment.expand_pairs(pairs, copies=cfg.distortions, seed=rng.host_seed(streams["distortions"]))
    table = jax.tree.map(jnp.asarray, rows._asdict())
    n_rows = len(rows.i1)
    steps = steps_per_epoch or max(n_rows // b, 1)
    if steps * b > n_rows:
        raise ConfigError(f"steps_per_epoch={steps} x batch_size={b} exceeds the {n_rows} rows of the pair set")
    distorted = cfg.distortions > 0
    order_key = streams["order"]

    @jax.jit
    def epoch_order(epoch):
        return jax.random.permutation(jax.random.fold_in(order_key, epoch), n_rows)

    @jax.jit
    def gather(order, offset):
        r = _local(jax.lax.dynamic_slice_in_dim(order, offset, b), shard)
        x1, x2 = images[table["i1"][r]], images[table["i2"][r]]
        if distorted:  # copy 0 carries identity transforms, which reproduce the image exactly
            x1, x2 = _warped(x1, table["t1"][r]), _warped(x2, table["t2"][r])
        return {"x1": x1, "x2": x2, "y": table["label"][r].astype(jnp.float32)}

    cache: dict[int, jax.Array] = {}

    def fixed(step):
        epoch, offset = divmod(step, steps)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_order(epoch)
        return gather(cache[epoch], offset * b)

    return Sampler(fixed, steps, b, 2 * b)


def _check_shardable(global_batch: int, processes: int) -> None:
    if global_batch % processes:
        raise ConfigError(
            f"the global batch of {global_batch} images or pairs does not divide over {processes} processes; "
            f"use a multiple of {processes}"
        )


def rotate90(x: jax.Array, turns: jax.Array) -> jax.Array:
    """(B, S, S) images, each turned counter-clockwise by ``turns[i]`` (0..3) quarter turns."""
    every = jnp.stack([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])
    return every[turns, jnp.arange(x.shape[0])]


def _warped(x_uint8, transforms):
    return jnp.clip(augment.apply_affine(x_uint8.astype(jnp.float32) / 255.0, transforms), 0.0, 1.0)
