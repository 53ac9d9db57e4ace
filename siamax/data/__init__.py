"""Data for siamax: Omniglot and MNIST (offline TFDS builders), Lake's runs, splits, pairs, tasks.

Settings: ``SIAMAX_DATA_DIR`` (raw archives, laid out like the project's shared/data),
``SIAMAX_TFDS_DIR`` (prepared datasets, default ``~/.cache/siamax/tfds``) and ``SIAMAX_DATA_URL``
(a mirror for downloads). ``require(datasets)`` makes sure every file a run will read is present and
verified (downloading what is missing) before it starts. See ``docs/data.md``.
"""

from siamax.data._paths import DATASETS
from siamax.data.lake import LAKE_ALPHABETS, LAKE_RUNS, lake_runs
from siamax.data.mnist import Mnist, load_mnist, mnist_builder
from siamax.data.omniglot import (
    ALPHABET_TABLE,
    ALPHABETS,
    BACKGROUND_ALPHABETS,
    EVALUATION_ALPHABETS,
    Omniglot,
    alphabet_char_ids,
    alphabet_id,
    load_omniglot,
    omniglot_builder,
)
from siamax.data.pairs import PairArrays, Pairs, make_pairs, pair_arrays, sample_pairs
from siamax.data.require import require
from siamax.data.splits import VALIDATION_ALPHABETS, Split, Splits, load_splits, paper_splits
from siamax.data.tasks import Task, episodes, mnist_tasks, validation_tasks, within_alphabet_tasks
from siamax.errors import ChecksumError, DataError

__all__ = [
    "ALPHABETS",
    "ALPHABET_TABLE",
    "BACKGROUND_ALPHABETS",
    "ChecksumError",
    "DATASETS",
    "DataError",
    "EVALUATION_ALPHABETS",
    "LAKE_ALPHABETS",
    "LAKE_RUNS",
    "Mnist",
    "Omniglot",
    "PairArrays",
    "Pairs",
    "Split",
    "Splits",
    "Task",
    "VALIDATION_ALPHABETS",
    "alphabet_char_ids",
    "alphabet_id",
    "episodes",
    "lake_runs",
    "load_mnist",
    "load_omniglot",
    "load_splits",
    "make_pairs",
    "mnist_builder",
    "mnist_tasks",
    "omniglot_builder",
    "pair_arrays",
    "paper_splits",
    "require",
    "sample_pairs",
    "validation_tasks",
    "within_alphabet_tasks",
]
