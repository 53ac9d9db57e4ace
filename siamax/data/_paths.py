"""Where the raw archives live, where they come from, and their checksums: the one table of data files.

Three settings, all environment variables (or explicit arguments, which win):

* ``SIAMAX_DATA_DIR``: a folder with the same layout as the project's ``shared/data`` (the raw
  archives: ``mnist/*.gz``, ``omniglot/bitsandscraps-omniglot/*.npz``,
  ``omniglot/brendenlake-omniglot/python/...``). Default ``~/.cache/siamax/data``.
* ``SIAMAX_TFDS_DIR``: where the TFDS builders write the prepared (array_record) datasets.
  Default ``~/.cache/siamax/tfds``.
* ``SIAMAX_DATA_URL``: a mirror laid out like ``shared/data`` (archive URL = base + "/" + relpath),
  used instead of the official sources for downloads. Default: none.

Every archive is checked against its sha256 before it is used. Hashing 20 MB takes well under a
second, and the result is cached per (path, size, mtime) so repeated loads in one process are free.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import urllib.parse
from pathlib import Path

from siamax.errors import ChecksumError, ConfigError

DATA_ENV = "SIAMAX_DATA_DIR"
TFDS_ENV = "SIAMAX_TFDS_DIR"
URL_ENV = "SIAMAX_DATA_URL"
DEFAULT_DATA_DIR = "~/.cache/siamax/data"
DEFAULT_TFDS_DIR = "~/.cache/siamax/tfds"

__all__ = ["ARCHIVES", "DATASETS", "Archive", "ChecksumError", "data_dir", "data_url", "tfds_dir", "verify"]


@dataclasses.dataclass(frozen=True)
class Archive:
    """One raw file: its path relative to the data folder, size in bytes, sha256 and official URL
    (None: no official source serves this exact file; it comes only from a mirror)."""

    relpath: str
    size: int
    sha256: str
    url: str | None = None


_BL = "omniglot/brendenlake-omniglot/python/"
_BL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_BS = "omniglot/bitsandscraps-omniglot/"
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # as registered by TFDS


def _omniglot(name: str, size: int, sha256: str) -> Archive:
    return Archive(_BL + name, size, sha256, _BL_URL + name)


def _mnist(name: str, size: int, sha256: str) -> Archive:
    return Archive("mnist/" + name, size, sha256, _MNIST_URL + name)


ARCHIVES = {
    # MNIST, the four original idx files (URLs and sha256s as TFDS 4.9.10 registers them, url_checksums/mnist.txt).
    "mnist_train_images": _mnist(
        "train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "mnist_train_labels": _mnist(
        "train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "mnist_test_images": _mnist(
        "t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "mnist_test_labels": _mnist(
        "t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
    # Omniglot as numpy arrays (a mechanical conversion of the official zips; see the data README).
    "omniglot_background_npz": Archive(
        _BS + "images_background.npz", 3340794, "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"
    ),
    "omniglot_evaluation_npz": Archive(
        _BS + "images_evaluation.npz", 2415269, "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"
    ),
    # The official Omniglot zips (sha256s as registered by TFDS 4.9.10, url_checksums/omniglot.txt).
    "omniglot_background_zip": _omniglot(
        "images_background.zip", 9464212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"
    ),
    "omniglot_evaluation_zip": _omniglot(
        "images_evaluation.zip", 6462886, "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"
    ),
    "omniglot_small1_zip": _omniglot(
        "images_background_small1.zip", 1319022, "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    ),
    "omniglot_small2_zip": _omniglot(
        "images_background_small2.zip", 1580917, "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"
    ),
    "omniglot_all_runs_zip": _omniglot(
        "one-shot-classification/all_runs.zip",
        352787,
        "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
    ),
}

# Each dataset is read from one of its alternative sets of archives: the first set found complete in
# the data folder wins. A download fetches the first set that the source serves: from a mirror (a
# copy of shared/data) that is the first set, from the official sources the first set with URLs.
DATASETS = {
    "omniglot": (
        ("omniglot_background_npz", "omniglot_evaluation_npz"),
        ("omniglot_background_zip", "omniglot_evaluation_zip"),
    ),
    "lake_runs": (("omniglot_all_runs_zip",),),
    "mnist": (("mnist_train_images", "mnist_train_labels", "mnist_test_images", "mnist_test_labels"),),
    "omniglot_small": (("omniglot_small1_zip", "omniglot_small2_zip"),),  # the tests' 5,840 official PNGs
}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The raw-archive folder: ``path`` if given, else ``$SIAMAX_DATA_DIR``, else the default."""
    return Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


def tfds_dir(path: str | os.PathLike | None = None) -> Path:
    """The prepared-dataset folder: ``path`` if given, else ``$SIAMAX_TFDS_DIR``, else the default."""
    return Path(path or os.environ.get(TFDS_ENV) or DEFAULT_TFDS_DIR).expanduser()


def data_url(url: str | None = None) -> str | None:
    """The mirror's base URL (``url`` if given, else ``$SIAMAX_DATA_URL``) without a trailing "/", or None."""
    url = url or os.environ.get(URL_ENV) or None
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"data mirror URL {url!r} ({URL_ENV} or data_url=) is not an http(s) URL; expected e.g. "
            "http://host:8000/data, a server of a folder laid out like the project's shared/data"
        )
    return url.rstrip("/")


def archive_url(name: str, base: str | None = None) -> str | None:
    """Where archive ``name`` is downloaded from: ``base + "/" + relpath`` with a mirror, else its official URL."""
    return f"{base}/{ARCHIVES[name].relpath}" if base else ARCHIVES[name].url


def verify(path: str | os.PathLike, name: str) -> None:
    """Raise ``ChecksumError`` (the file, both checksums and the fix) unless ``path`` has archive ``name``'s sha256."""
    path, archive = Path(path), ARCHIVES[name]
    actual = sha256(path)
    if actual != archive.sha256:
        source = archive.url or "the same file of a folder laid out like the project's shared/data"
        raise ChecksumError(
            f"data file {path} has sha256 {actual}, expected {archive.sha256}: it is corrupt or not the "
            f"published file. Delete it so siamax downloads it again, or replace it with {source}"
        )


def content_digest(paths: dict[str, Path]) -> str:
    """A folder of files as one checksum (a dataset without one archive: ORL, FSDD): sha256 of the
    sorted ``"relpath sha256\\n"`` lines of ``{relpath: path}``."""
    lines = "".join(f"{r} {sha256(paths[r])}\n" for r in sorted(paths))
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; size and mtime are part of the cache key so a changed file is re-hashed."""
    del size, mtime_ns
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
