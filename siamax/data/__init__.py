"""Data for siamax: the dataset model (LabelledImages), Omniglot and MNIST (TFDS builders), Lake's runs,
splits, samplers, tasks; spoken digits (FSDD) and folders of sound clips as log-mel images.

Settings: ``SIAMAX_DATA_DIR`` (raw archives, laid out like the project's shared/data),
``SIAMAX_TFDS_DIR`` (prepared datasets, default ``~/.cache/siamax/tfds``) and ``SIAMAX_DATA_URL``
(a mirror for downloads). ``require(datasets)`` makes sure every file a run will read is present and
verified (downloading what is missing) before it starts. See ``docs/data.md``.
"""

from siamax.data._paths import DATASETS
from siamax.data.audio_folder import AudioFolderReport, audio_files, audio_folder, is_audio_file, is_audio_folder
from siamax.data.class_splits import ClassSplits, class_splits, load_class_splits
from siamax.data.folder import FolderReport, image_files, image_folder
from siamax.data.fsdd import Fsdd, fsdd_builder, fsdd_clips, fsdd_table, load_fsdd
from siamax.data.labelled import LabelledImages, model_format, to_model
from siamax.data.lake import LAKE_ALPHABETS, LAKE_RUNS, lake_runs
from siamax.data.mnist import Mnist, load_mnist, mnist_builder, mnist_table
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
    omniglot_table,
)
from siamax.data.orl import Orl, load_orl, orl_builder, orl_table
from siamax.data.require import require
from siamax.data.samplers import ClassIndex, Pairs, Sampler, class_index, make_pairs, make_sampler, sample_pairs
from siamax.data.splits import VALIDATION_ALPHABETS, Split, Splits, load_splits, paper_splits
from siamax.data.tasks import (
    Task,
    episodes,
    mnist_tasks,
    require_classes,
    validation_tasks,
    within_alphabet_tasks,
)
from siamax.errors import ChecksumError, DataError

__all__ = [
    "ALPHABETS",
    "ALPHABET_TABLE",
    "AudioFolderReport",
    "BACKGROUND_ALPHABETS",
    "ChecksumError",
    "ClassIndex",
    "ClassSplits",
    "DATASETS",
    "DataError",
    "EVALUATION_ALPHABETS",
    "FolderReport",
    "Fsdd",
    "LAKE_ALPHABETS",
    "LAKE_RUNS",
    "LabelledImages",
    "Mnist",
    "Omniglot",
    "Orl",
    "Pairs",
    "Sampler",
    "Split",
    "Splits",
    "Task",
    "VALIDATION_ALPHABETS",
    "alphabet_char_ids",
    "alphabet_id",
    "audio_files",
    "audio_folder",
    "class_index",
    "class_splits",
    "episodes",
    "fsdd_builder",
    "fsdd_clips",
    "fsdd_table",
    "image_files",
    "image_folder",
    "is_audio_file",
    "is_audio_folder",
    "lake_runs",
    "load_class_splits",
    "load_fsdd",
    "load_mnist",
    "load_omniglot",
    "load_orl",
    "load_splits",
    "make_pairs",
    "make_sampler",
    "mnist_builder",
    "mnist_table",
    "mnist_tasks",
    "model_format",
    "omniglot_builder",
    "omniglot_table",
    "orl_builder",
    "orl_table",
    "paper_splits",
    "require",
    "require_classes",
    "sample_pairs",
    "to_model",
    "validation_tasks",
    "within_alphabet_tasks",
]
