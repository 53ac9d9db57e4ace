"""Where the raw archives live, where prepared datasets go, and their checksums.

Two settings, both environment variables (or explicit arguments, which win):

* ``SIAMAX_DATA_DIR``: a folder with the same layout as the project's ``shared/data`` (the raw
  archives: ``mnist/*.gz``, ``omniglot/bitsandscraps-omniglot/*.npz``,
  ``omniglot/brendenlake-omniglot/python/...``). Default ``~/.cache/siamax/data``.
* ``SIAMAX_TFDS_DIR``: where the TFDS builders write the prepared (array_record) datasets.
  Default ``~/.cache/siamax/tfds``.

Every archive is checked against its sha256 before it is used. Hashing 20 MB takes well under a
second, and the result is cached per (path, size, mtime) so repeated loads in one process are free.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

DATA_ENV = "SIAMAX_DATA_DIR"
TFDS_ENV = "SIAMAX_TFDS_DIR"
DEFAULT_DATA_DIR = "~/.cache/siamax/data"
DEFAULT_TFDS_DIR = "~/.cache/siamax/tfds"


@dataclasses.dataclass(frozen=True)
class Archive:
    """One raw file: its path relative to the data folder, size in bytes and sha256."""

    relpath: str
    size: int
    sha256: str


_BL = "omniglot/brendenlake-omniglot/python/"
_BS = "omniglot/bitsandscraps-omniglot/"
ARCHIVES = {
    # MNIST, the four original idx files (the sha256s TFDS registers for them).
    "mnist_train_images": Archive(
        "mnist/train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "mnist_train_labels": Archive(
        "mnist/train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "mnist_test_images": Archive(
        "mnist/t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "mnist_test_labels": Archive(
        "mnist/t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
    # Omniglot as numpy arrays (a mechanical conversion of the official zips; see the data README).
    "omniglot_background_npz": Archive(
        _BS + "images_background.npz", 3340794, "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"
    ),
    "omniglot_evaluation_npz": Archive(
        _BS + "images_evaluation.npz", 2415269, "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"
    ),
    # The official Omniglot zips (sha256s as registered by TFDS 4.9.10, url_checksums/omniglot.txt).
    "omniglot_background_zip": Archive(
        _BL + "images_background.zip", 9464212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"
    ),
    "omniglot_evaluation_zip": Archive(
        _BL + "images_evaluation.zip", 6462886, "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"
    ),
    "omniglot_small1_zip": Archive(
        _BL + "images_background_small1.zip",
        1319022,
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "omniglot_small2_zip": Archive(
        _BL + "images_background_small2.zip",
        1580917,
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
    "omniglot_all_runs_zip": Archive(
        _BL + "one-shot-classification/all_runs.zip",
        352787,
        "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
    ),
}

# Where the online fallback fetches the official Omniglot archives from.
OMNIGLOT_URLS = {
    "omniglot_background_zip": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "omniglot_evaluation_zip": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}


class ChecksumError(ValueError):
    """A raw archive's sha256 differs from the known one."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The raw-archive folder: ``path`` if given, else ``$SIAMAX_DATA_DIR``, else the default."""
    return Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


def tfds_dir(path: str | os.PathLike | None = None) -> Path:
    """The prepared-dataset folder: ``path`` if given, else ``$SIAMAX_TFDS_DIR``, else the default."""
    return Path(path or os.environ.get(TFDS_ENV) or DEFAULT_TFDS_DIR).expanduser()


def missing_error(folder: Path, names: list[str]) -> FileNotFoundError:
    """The error for absent archives: names the setting, the folder searched and the files expected."""
    expected = "\n".join(f"  {folder / ARCHIVES[n].relpath}" for n in names)
    why = "does not exist" if not folder.is_dir() else "lacks some of the expected files"
    return FileNotFoundError(
        f"siamax data folder {str(folder)!r} {why}. Set {DATA_ENV} (or pass data_dir=) to a folder "
        f"laid out like the project's shared/data; expected files:\n{expected}"
    )


def locate(names: list[str], folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the named archives in the data folder, checked for presence and sha256."""
    root = data_dir(folder)
    paths = {n: root / ARCHIVES[n].relpath for n in names}
    if not all(p.is_file() for p in paths.values()):
        raise missing_error(root, names)
    for n, p in paths.items():
        verify(p, ARCHIVES[n].sha256)
    return paths


def available(names: list[str], folder: str | os.PathLike | None = None) -> bool:
    """Whether all the named archives exist (unverified) in the data folder."""
    root = data_dir(folder)
    return all((root / ARCHIVES[n].relpath).is_file() for n in names)


def verify(path: str | os.PathLike, expected: str) -> None:
    """Raise ``ChecksumError`` (naming the file and both checksums) unless sha256(path) == expected."""
    path = Path(path)
    st = path.stat()
    actual = _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    if actual != expected:
        raise ChecksumError(
            f"sha256 mismatch for {str(path)!r}: expected {expected}, got {actual}. "
            "The file is corrupt or not the published one; replace it."
        )


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; size and mtime are part of the cache key so a changed file is re-hashed."""
    del size, mtime_ns
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
