"""``require(datasets)``: every raw file a run will read, present and verified before it starts.

What a command calls before its first step, so that a missing or corrupt archive fails in seconds
rather than after training. A dataset whose TFDS copy is already prepared needs no raw archive;
the others go through :func:`siamax.data.download.resolve` (verify, download what is missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from siamax.data.download import DATASETS, resolve
from siamax.data.fsdd import fsdd_builder, fsdd_files
from siamax.data.mnist import mnist_builder
from siamax.data.omniglot import omniglot_builder
from siamax.data.orl import orl_builder, orl_files
from siamax.errors import ConfigError

# Datasets read from a folder of many small files, checked as one set by a content digest rather than
# archive by archive: {name: check(data_dir) -> {relpath: verified path}}. ORL has no official download;
# FSDD's check downloads the official archive where files are missing (and verifies it by the same digest).
FOLDERS = {"orl_faces": orl_files, "fsdd": fsdd_files}


def require(
    datasets: str | Iterable[str],
    data_dir=None,
    tfds_dir=None,
    *,
    download: bool = True,
    data_url: str | None = None,
) -> dict[str, dict[str, Path]]:
    """Make sure everything loading ``datasets`` will read is present and verified; download what is missing.

    Args:
      datasets: names from ``DATASETS``: "omniglot", "lake_runs", "mnist" (and "omniglot_small"), or of
        ``FOLDERS``: "orl_faces" (never downloaded: a missing folder is an error saying what to put where),
        "fsdd" (the spoken digits; downloaded from the official repository where missing).
      data_dir: raw-archive folder (default ``$SIAMAX_DATA_DIR``, else ``~/.cache/siamax/data``,
        which is created when a download needs it; a folder given explicitly must exist).
      tfds_dir: prepared-dataset folder (default ``$SIAMAX_TFDS_DIR``); a prepared Omniglot or MNIST
        needs no raw archives.
      download: fetch missing archives; with False a missing file is an error.
      data_url: a mirror laid out like shared/data (default ``$SIAMAX_DATA_URL``, else the official sources).

    Returns:
      ``{dataset: {archive name: verified path}}``; ``{}`` for a dataset read from its prepared TFDS copy.
    """
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [n for n in names if n not in DATASETS and n not in FOLDERS]
    if unknown:
        known = ", ".join([*DATASETS, *FOLDERS])
        raise ConfigError(f"unknown dataset(s) {', '.join(map(repr, unknown))}; known: {known}")
    prepared = {n for n in names if _prepared(n, data_dir, tfds_dir)}
    archives = [n for n in names if n not in prepared and n not in FOLDERS]
    found = resolve(archives, data_dir, download=download, data_url=data_url)
    found.update({n: FOLDERS[n](data_dir) for n in names if n in FOLDERS and n not in prepared})
    return {n: found.get(n, {}) for n in names}


def _prepared(dataset: str, data_dir, tfds_dir) -> bool:
    """Whether the dataset's TFDS copy is prepared (then its builder reads no raw archive)."""
    builder = {
        "omniglot": omniglot_builder,
        "mnist": mnist_builder,
        "orl_faces": orl_builder,
        "fsdd": fsdd_builder,
    }.get(dataset)
    return builder is not None and builder(data_dir, tfds_dir).is_prepared()
