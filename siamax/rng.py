"""A run's random streams: every use of randomness gets its own key, split once from its seed.

As in big_vision's ``train.py``: the run's key is split once into named streams, so no two uses can
share a key however many steps a run takes. Training draws from ``seed`` (``init``: the parameters;
``data``: pair sets, distortions, batch order and episodic batches; ``step``: the keys handed to the
train step, one per global step by ``fold_in``). Evaluation draws from its own ``eval_seed``, fixed by
default, so runs with different training seeds are scored on identical trials.

Host-side generators (NumPy task and pair builders) take integer seeds: :func:`host_seed` derives
one from a key, so they too come from the named streams.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TRAIN_STREAMS = ("init", "data", "step")
EVAL_STREAMS = (
    "validation_tasks",  # the validation one-shot trials (model selection)
    "validation_candidates",  # their candidate shuffles
    "verification_validation",  # pairs that choose the verification threshold
    "verification_test",  # pairs that measure verification accuracy
    "test_tasks",  # the within-alphabet and N-way trials on the test alphabets
    "test_candidates",  # candidate shuffles of every test evaluation
    "transfer_tasks",  # MNIST (and other) transfer trials
    "report",  # figures only (which trials a plot shows)
    # Appended, never inserted: split(key, n)'s first keys do not depend on n, so the streams above keep
    # their keys when one is added here.
    "random_tasks",  # Vinyals-style N-way K-shot episodes across the test alphabets
    "transfer_validation",  # MNIST-train 10-way trials: choosing transfer settings without MNIST's test set
    "validation_holdout",  # which images of a small folder's training classes validate instead of classes
    "retrieval_queries",  # which images are the retrieval queries where there are too many to take all
)
DATA_STREAMS = ("pairs", "distortions", "order", "batches")


def split_named(key: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """``{name: key}``, one independent key per name, from a single split."""
    return dict(zip(names, jax.random.split(key, len(names))))


def _root(seed: int, domain: str) -> jax.Array:
    # Threefry's split is counter-based: split(k, 3) and split(k, 8) share their first keys, so the
    # training and evaluation streams of seed == eval_seed would coincide without distinct roots.
    return split_named(jax.random.key(seed), ("train", "eval"))[domain]


def train_streams(seed: int) -> dict[str, jax.Array]:
    """The training streams of a run with this seed: ``init``, ``data`` and ``step`` keys."""
    return split_named(_root(seed, "train"), TRAIN_STREAMS)


def data_streams(data_key: jax.Array) -> dict[str, jax.Array]:
    """The data stream split by use: fixed pair sets, their distortions, epoch orders, on-the-fly batches."""
    return split_named(data_key, DATA_STREAMS)


def host_seed(key: jax.Array) -> int:
    """A 32-bit integer seed drawn from ``key``, for NumPy generators and ``jax.random.key`` (which,
    without x64, keeps only the low 32 bits of a larger integer)."""
    return int(jax.random.bits(key, (), jnp.uint32))


def eval_seeds(eval_seed: int) -> dict[str, int]:
    """Integer seeds of every evaluation stream, from ``eval_seed`` alone."""
    return {name: host_seed(k) for name, k in split_named(_root(eval_seed, "eval"), EVAL_STREAMS).items()}


def record(seed: int, eval_seed: int) -> dict:
    """What ``results.json`` records: both seeds and the raw key data of every stream derived from them."""
    train = train_streams(seed)
    data = data_streams(train["data"])
    key_data = lambda k: [int(v) for v in np.asarray(jax.random.key_data(k)).ravel()]
    return {
        "seed": seed,
        "eval_seed": eval_seed,
        "train": {name: key_data(k) for name, k in train.items()},
        "data": {name: key_data(k) for name, k in data.items()},
        "eval": eval_seeds(eval_seed),
    }
