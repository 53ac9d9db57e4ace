"""Training batches and pair sets over a :class:`~siamax.data.labelled.LabelledImages`, drawn on the device.

A table's classes are indexed once (:class:`ClassIndex`: images by class, classes by group, as device
arrays); a batch is drawn as indices with ``jax.random`` and gathered (and distorted) inside ``jit``,
so the host never becomes the bottleneck. The batch of global step ``t`` depends only on (seed, t),
which is what makes an interrupted run resume to exactly the same parameters, and on nothing about
the devices or processes it runs on: with several processes, each gathers only its slice of it.
A packed table (``siamax.data.packed``: images on disk) gets the same batches: the same draws, its
rows read from the shards by a Grain pipeline a few batches ahead (:func:`_sampler`).

Two batch forms (``siamax.losses.OBJECTIVES`` says which an objective trains on):

* **pairs** ``{"x1", "x2", "y"}``: same/different pairs, either the paper's fixed pair set (30k /
  90k / 150k pairs with ``distortions`` affine copies each, :func:`make_pairs` +
  ``augment.expand_pairs``) or fresh pairs every step (:func:`sample_pairs`). How a pair is drawn,
  given its group (an Omniglot alphabet) and label: image 1 a uniform class of the group and a
  uniform image of it; a same pair takes another image of that class; a different pair another
  class, uniform among all the table's classes (``different="any"``, the paper's "random") or among
  the group's (``"same_alphabet"``: harder negatives, closer to the within-alphabet test), and a uniform
  image of it. Pairs are drawn with replacement.
* **classes** ``{"x", "labels"}``: P classes x K images (``episode_chars`` x ``episode_drawers``),
  the classes from ``episode_alphabets`` random groups, K distinct images of each (a class with fewer
  than K images repeats some). Optionally each class is turned by a random quarter turn and every
  (class, turn) counted as its own class. What the in-batch objectives (all_pairs, episodic,
  contrastive, triplet) and their miners read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from siamax import augment, rng
from siamax.data.labelled import INK, LabelledImages
from siamax.errors import ConfigError

DIFFERENT = ("any", "same_alphabet")  # same_alphabet: from the same group (an alphabet, a folder of classes)


class Pairs(NamedTuple):
    """Pairs of image indices (rows of one table) and labels (1 = same class, 0 = different)."""

    i1: np.ndarray
    i2: np.ndarray
    label: np.ndarray


@flax.struct.dataclass
class ClassIndex:
    """A table's images by class and classes by group, as device arrays (a pytree; pass it into ``jit``).

    ``order[class_start[c] : class_start[c] + class_count[c]]`` are class ``c``'s images;
    ``classes[group_start[g] : group_start[g] + group_count[g]]`` are group ``g``'s classes.
    """

    order: jax.Array
    class_start: jax.Array
    class_count: jax.Array
    classes: jax.Array
    group_start: jax.Array
    group_count: jax.Array
    max_class_count: int = flax.struct.field(pytree_node=False)
    max_group_count: int = flax.struct.field(pytree_node=False)

    @property
    def n_groups(self) -> int:
        return self.group_start.shape[0]

    @property
    def n_classes(self) -> int:
        return self.classes.shape[0]


def class_index(table: LabelledImages) -> ClassIndex:
    """Index ``table``'s images by class and its classes by group (both stable: table order kept)."""
    order = np.argsort(table.labels, kind="stable")
    class_count = table.class_counts()
    classes = np.argsort(table.groups, kind="stable")
    _, group_start, group_count = np.unique(table.groups[classes], return_index=True, return_counts=True)
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    return ClassIndex(
        order=i32(order),
        class_start=i32(np.concatenate([[0], np.cumsum(class_count)[:-1]])),
        class_count=i32(class_count),
        classes=i32(classes),
        group_start=i32(group_start),
        group_count=i32(group_count),
        max_class_count=int(class_count.max()),
        max_group_count=int(group_count.max()),
    )


def _check_pairs_possible(table: LabelledImages, index: ClassIndex, different: str) -> None:
    if different not in DIFFERENT:
        raise ConfigError(f"different must be one of {list(DIFFERENT)}, got {different!r}")
    if index.max_class_count < 2:
        raise ConfigError(f"{table.name or 'the table'}: same pairs need a class with 2 images; every class has 1")
    single = np.flatnonzero(table.class_counts() < 2)
    if len(single):
        names = [table.class_names[i] for i in single[:5]]
        raise ConfigError(f"{table.name or 'the table'}: same pairs need 2 images per class; {names} have one")
    if table.n_classes < 2:
        raise ConfigError(f"{table.name or 'the table'}: different pairs need 2 classes, it has {table.n_classes}")
    if different == "same_alphabet" and np.asarray(index.group_count).min() < 2:
        raise ConfigError("different='same_alphabet' needs 2 classes in every group (alphabet)")


def _draw(key, index: ClassIndex, group, same, different: str):
    """Pairs for given groups (n,) and labels (n,) bool: the one kernel both pair samplers use."""
    n = group.shape[0]
    k = jax.random.split(key, 5)
    start, count = index.group_start[group], index.group_count[group]
    j1 = jax.random.randint(k[0], (n,), 0, count)
    pos1 = start + j1
    if different == "same_alphabet":
        pos2 = start + (j1 + jax.random.randint(k[1], (n,), 1, count)) % count
    else:
        pos2 = (pos1 + jax.random.randint(k[1], (n,), 1, index.n_classes)) % index.n_classes
    c1, c2 = index.classes[pos1], index.classes[jnp.where(same, pos1, pos2)]
    n1, n2 = index.class_count[c1], index.class_count[c2]
    d1 = jax.random.randint(k[2], (n,), 0, n1)
    d2 = jnp.where(same, (d1 + jax.random.randint(k[3], (n,), 1, n1)) % n1, jax.random.randint(k[4], (n,), 0, n2))
    i1 = index.order[index.class_start[c1] + d1]
    i2 = index.order[index.class_start[c2] + d2]
    return i1, i2, same.astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def sample_pairs(key, index: ClassIndex, n: int, different: str = "any", same_fraction: float = 0.5):
    """``n`` fresh pairs ``(i1, i2, labels)`` (int32), pure and jittable.

    Per batch: exactly ``round(n * same_fraction)`` same pairs (in random positions) and a uniform
    random group per pair, so in expectation the same distribution as :func:`make_pairs`.
    """
    k_group, k_same, k_draw = jax.random.split(key, 3)
    group = jax.random.randint(k_group, (n,), 0, index.n_groups)
    same = jax.random.permutation(k_same, jnp.arange(n) < round(n * same_fraction))
    return _draw(k_draw, index, group, same, different)


_draw_jit = jax.jit(_draw, static_argnums=4)


def make_pairs(
    table: LabelledImages, n: int, *, same_fraction: float = 0.5, different: str = "any", seed: int = 0
) -> Pairs:
    """A fixed, seeded set of ``n`` pairs over ``table``, e.g. the paper's 30k / 90k / 150k sets.

    Every group gets ``n // G`` pairs (the first ``n % G`` groups, in a seeded order, one more:
    exactly uniform for 30k/90k/150k over Omniglot's 30 background alphabets); within each group
    ``round(per_group * same_fraction)`` are same pairs. Returned in a seeded random order.
    """
    if not 0.0 <= same_fraction <= 1.0:
        raise ConfigError(f"same_fraction must be in [0, 1], got {same_fraction}")
    index = class_index(table)
    _check_pairs_possible(table, index, different)
    g = index.n_groups
    gen = np.random.default_rng(seed)
    per = np.full(g, n // g)
    per[gen.permutation(g)[: n % g]] += 1
    group = np.repeat(np.arange(g), per)
    n_same = np.round(per * same_fraction).astype(int)
    same = np.concatenate([np.arange(p) < s for p, s in zip(per, n_same)]) if n else np.zeros(0, bool)
    i1, i2, label = _draw_jit(jax.random.key(seed), index, jnp.asarray(group, jnp.int32), jnp.asarray(same), different)
    order = gen.permutation(n)
    return Pairs(*(np.asarray(x)[order] for x in (i1, i2, label)))


def _class_batch_indices(key, index: ClassIndex, n_groups: int, classes_per_group: int, k: int):
    """``classes_per_group`` classes from each of ``n_groups`` random groups, ``k`` images of each.

    Groups with fewer classes than asked contribute duplicates (same label, so they only add same
    pairs; their images are still distinct when the class repeats); so do classes with fewer than
    ``k`` images. Returns (image indices (n_groups * classes_per_group * k,), their classes)."""
    k_g, k_c, k_i = jax.random.split(key, 3)
    groups = jax.random.choice(k_g, index.n_groups, (n_groups,), replace=False)

    # At least as long as the draw: a group with fewer classes than asked repeats some (never a smaller batch).
    m = max(index.max_group_count, classes_per_group)

    def classes_of(kk, g):
        start, count = index.group_start[g], index.group_count[g]
        rank = jnp.argsort(jax.random.uniform(kk, (m,)) + (jnp.arange(m) >= count))
        pick = rank[:classes_per_group]
        return index.classes[start + jnp.where(pick < count, pick, pick % count)]

    classes = jax.vmap(classes_of)(jax.random.split(k_c, n_groups), groups).reshape(-1)
    count = index.class_count[classes][:, None]
    m = max(index.max_class_count, k)  # k above every class's count: each class repeats images
    d = jnp.argsort(jax.random.uniform(k_i, (classes.shape[0], m)) + (jnp.arange(m) >= count), axis=1)[:, :k]
    d = jnp.where(d < count, d, d % count)
    flat = index.order[index.class_start[classes][:, None] + d]
    return flat.reshape(-1), jnp.repeat(classes, k)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """``batch(step)`` -> the batch of global step ``step``; ``batches(start, stop)`` -> those of the steps
    ``start .. stop - 1`` in order (read ahead by ``stream`` where the images come from disk);
    ``steps_per_epoch``; pairs and images per batch."""

    batch: Callable[[int], dict]
    steps_per_epoch: int
    pairs_per_step: int
    images_per_step: int
    stream: Callable[[int, int], Iterator[dict]] | None = None  # a packed dataset's prefetching pipeline

    @property
    def streaming(self) -> bool:
        """Whether the images are read from a packed dataset as the batches are drawn."""
        return self.stream is not None

    def batches(self, start: int, stop: int) -> Iterator[dict]:
        if self.stream is not None:
            return self.stream(start, stop)
        return (self.batch(s) for s in range(start, stop))


def _local(x: jax.Array, shard: tuple[int, int]) -> jax.Array:
    """This process's contiguous slice of a global batch's leading axis (shard = (index, count))."""
    index, count = shard
    n = x.shape[0] // count
    return jax.lax.dynamic_slice_in_dim(x, index * n, n) if count > 1 else x


def _check_shardable(global_batch: int, processes: int) -> None:
    if global_batch % processes:
        raise ConfigError(
            f"the global batch of {global_batch} images or pairs does not divide over {processes} processes; "
            f"use a multiple of {processes}"
        )


PREFETCH = 4  # batches a streaming sampler reads ahead (host memory: PREFETCH x one batch's images)
READ_THREADS = 1  # one reader thread keeps ahead of a step on 2 cores (more contended with XLA's threads: measured)
PLAN_WINDOW = 256  # steps planned ahead at a time


def _sampler(args_of, plan, build, images, fetch: tuple[str, ...], steps: int, pairs: int, n_images: int) -> Sampler:
    """A Sampler from ``plan(*args_of(step))`` (jittable: a dict of arrays, the image rows that ``fetch``
    names and whatever ``build`` needs) and ``build(plan, *images of those rows)`` (jittable).

    In memory, plan, gather and build are one jitted program, as they always were. From a packed
    dataset (``images`` is a ``siamax.data.packed.PackedImages``), the batches are planned a window
    of steps at a time on the calling thread, a Grain pipeline over them reads each plan's rows from
    the shards in a reader thread, ``PREFETCH`` batches ahead, and ``build`` runs on them: the same
    plan and the same pixels, hence the same batch (a test). The pipeline's position is the global
    step, which the checkpoint holds: a resumed run rebuilds it at that step.
    """
    if isinstance(images, jax.Array | np.ndarray):

        @jax.jit
        def in_memory(*args):
            p = plan(*args)
            return build(p, *(images[p[k]] for k in fetch))

        return Sampler(lambda step: in_memory(*args_of(step)), steps, pairs, n_images)

    planned, built = jax.jit(plan), jax.jit(build)

    def read(p) -> tuple[dict, list]:
        """A plan on the host and its rows' images, read from the shards."""
        p = jax.device_get(p)
        return p, [images.read(p[k]) for k in fetch]

    def one(step) -> dict:
        p, xs = read(planned(*args_of(step)))
        return built(p, *xs)

    def batches(start: int, stop: int) -> Iterator[dict]:
        import grain  # pylint: disable=g-import-not-at-top

        options = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH)
        for lo in range(start, stop, PLAN_WINDOW):
            # Planned here (every plan is made on the calling thread), a window at a time, dispatched at
            # once: the reader thread only reads.
            plans = [planned(*args_of(step)) for step in range(lo, min(lo + PLAN_WINDOW, stop))]
            for p, xs in grain.MapDataset.source(plans).map(read).to_iter_dataset(options):
                yield built(p, *xs)

    return Sampler(one, steps, pairs, n_images, stream=batches)


def make_sampler(
    cfg,
    batch: str,
    table: LabelledImages,
    seed: int,
    steps_per_epoch: int = 0,
    *,
    shard: tuple[int, int] = (0, 1),
) -> Sampler:
    """The sampler of ``batch`` form ("pairs" or "classes", from the objective) that the data section
    ``cfg`` (``siamax.config.DataConfig``) asks for, over the training table ``table`` (in memory, or
    packed: ``siamax.data.packed``, read as it trains).

    ``steps_per_epoch``: class batches and fresh pairs are drawn on the fly and need it; 0 for a
    fixed pair set means one pass over the set. Randomness comes from the data stream of ``seed``
    (``siamax.rng``). ``shard = (process index, process count)``: ``batch(step)`` returns only this
    process's slice of the global batch, gathered (and distorted) for that slice alone.
    """
    streams = rng.data_streams(rng.train_streams(seed)["data"])
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    if batch not in ("pairs", "classes"):
        raise ValueError(f"batch must be 'pairs' or 'classes', got {batch!r}")
    idx = class_index(table)
    if batch == "classes":
        return _class_sampler(cfg, table, idx, streams["batches"], steps_per_epoch, shard)
    b = cfg.batch_size
    _check_shardable(b, count)
    _check_pairs_possible(table, idx, cfg.different)
    distorted = cfg.distortions > 0

    def build(p, x1, x2):
        if distorted:  # a fixed set's copy 0 carries identity transforms, which reproduce the image exactly
            x1, x2 = _warped(x1, p["t1"]), _warped(x2, p["t2"])
        return {"x1": x1, "x2": x2, "y": p["y"].astype(jnp.float32)}

    if cfg.n_pairs == 0:  # fresh pairs every step, distorted on the fly if asked
        if not steps_per_epoch:
            raise ConfigError("on-the-fly pairs (n_pairs=0) need steps_per_epoch > 0")
        key = streams["batches"]

        def fresh(step):
            k_pairs, k1, k2 = jax.random.split(jax.random.fold_in(key, step), 3)
            i1, i2, y = (_local(v, shard) for v in sample_pairs(k_pairs, idx, b, cfg.different))
            p = {"i1": i1, "i2": i2, "y": y}
            if distorted:
                p["t1"], p["t2"] = (_local(augment.sample_affine(k, b), shard) for k in (k1, k2))
            return p

        return _sampler(lambda step: (step,), fresh, build, table.images, ("i1", "i2"), steps_per_epoch, b, 2 * b)

    # The paper's fixed pair set, with `distortions` transformed copies of every pair (9x for 8).
    pairs = make_pairs(table, cfg.n_pairs, different=cfg.different, seed=rng.host_seed(streams["pairs"]))
    rows = augment.expand_pairs(pairs, copies=cfg.distortions, seed=rng.host_seed(streams["distortions"]))
    rows_on_device = jax.tree.map(jnp.asarray, rows._asdict())
    n_rows = len(rows.i1)
    steps = steps_per_epoch or max(n_rows // b, 1)
    if steps * b > n_rows:
        raise ConfigError(f"steps_per_epoch={steps} x batch_size={b} exceeds the {n_rows} rows of the pair set")
    order_key = streams["order"]

    @jax.jit
    def epoch_order(epoch):
        return jax.random.permutation(jax.random.fold_in(order_key, epoch), n_rows)

    def rows_of(order, offset):
        r = _local(jax.lax.dynamic_slice_in_dim(order, offset, b), shard)
        p = {"i1": rows_on_device["i1"][r], "i2": rows_on_device["i2"][r], "y": rows_on_device["label"][r]}
        if distorted:
            p["t1"], p["t2"] = rows_on_device["t1"][r], rows_on_device["t2"][r]
        return p

    cache: dict[int, jax.Array] = {}

    def args_of(step):
        epoch, offset = divmod(step, steps)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_order(epoch)
        return cache[epoch], offset * b

    return _sampler(args_of, rows_of, build, table.images, ("i1", "i2"), steps, b, 2 * b)


def _class_sampler(cfg, table: LabelledImages, idx: ClassIndex, key, steps_per_epoch: int, shard) -> Sampler:
    p, k, g = cfg.episode_chars, cfg.episode_drawers, cfg.episode_alphabets
    if p % g:
        raise ConfigError(f"episode_chars ({p}) must divide by episode_alphabets ({g})")
    if g > idx.n_groups:
        raise ConfigError(f"episode_alphabets={g} but the training data has {idx.n_groups} groups")
    if not steps_per_epoch:
        raise ConfigError("class batches are drawn on the fly: set steps_per_epoch > 0")
    b = p * k
    _check_shardable(b, shard[1])

    def plan(step):
        k_idx, k_rot = jax.random.split(jax.random.fold_in(key, step))
        flat, labels = _class_batch_indices(k_idx, idx, g, p // g, k)
        if cfg.rotations:
            turns = jnp.repeat(jax.random.randint(k_rot, (p,), 0, 4), k)
            labels = labels * 4 + turns
        return {"flat": _local(flat, shard), "labels": _local(labels, shard), "thicken": jax.random.key_data(k_rot)}

    def build(plan, x):
        labels = plan["labels"]
        if cfg.rotations:
            x = rotate90(x, labels % 4)
        if cfg.thicken:
            x = thicken(jax.random.fold_in(jax.random.wrap_key_data(plan["thicken"]), 1), x, cfg.thicken)
        return {"x": x, "labels": labels}

    return _sampler(lambda step: (step,), plan, build, table.images, ("flat",), steps_per_epoch, b * (b - 1) // 2, b)


def thicken(key, x: jax.Array, p: float) -> jax.Array:
    """(B, S, S) (or RGB (B, S, S, 3)) model-format images, each with probability ``p`` dilated by a 3x3
    max filter (its strokes one pixel thicker on every side)."""
    window = (1, 3, 3) + (1,) * (x.ndim - 3)
    dilated = jax.lax.reduce_window(x, jnp.array(0, x.dtype), jax.lax.max, window, (1,) * x.ndim, "SAME")
    coin = jax.random.bernoulli(key, p, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(coin, dilated, x)


def rotate90(x: jax.Array, turns: jax.Array) -> jax.Array:
    """(B, S, S) images, each turned counter-clockwise by ``turns[i]`` (0..3) quarter turns."""
    every = jnp.stack([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])
    return every[turns, jnp.arange(x.shape[0])]


def _warped(x_uint8, transforms):
    return jnp.clip(augment.apply_affine(x_uint8.astype(jnp.float32) / INK, transforms), 0.0, 1.0)
