"""ORL faces (the AT&T "Database of Faces"), subjects s3..s40, through a TensorFlow-free TFDS builder.

The data folder holds ``orl_faces/sP/N.pgm``: 38 people (``P`` = 3..40) x 10 photographs (``N`` =
1..10), 92 x 112 (W x H) 8-bit gray PGM, 380 files (shared/data's README: s1 and s2 are left out,
that copy held other people's photographs there). The files are checked as one set, by a content
digest (:data:`DIGEST`: sha256 of the sorted ``"orl_faces/sP/N.pgm <sha256 of the file>\\n"`` lines of
all 380), so a missing, altered or misplaced file fails before anything is prepared.

ORL has no official download left (the Cambridge page is gone): where the folder is missing, a
:class:`~siamax.errors.DataError` says what to put where; nothing is fetched.

The builder writes array_record files with ``tfds.features.Tensor`` images (as the Omniglot and
MNIST builders do), read back with ``read_records``; once prepared, the PGM files are not read again.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from siamax.data import _paths
from siamax.data.labelled import LabelledImages, model_format
from siamax.data.omniglot import _tfds, prepare, read_records
from siamax.errors import ChecksumError, DataError

FOLDER = "orl_faces"
PEOPLE = tuple(range(3, 41))  # the subjects sP present (s1 and s2 are not: see the module docstring)
IMAGES_PER_PERSON = 10
HEIGHT, WIDTH = 112, 92
N_FILES = len(PEOPLE) * IMAGES_PER_PERSON
# sha256 of the sorted "relpath sha256\n" lines of the 380 PGM files (relpath from the data folder),
# computed from shared/data/SHA256SUMS.
DIGEST = "2a46b0878e6cb52f9d19f8db4594a010e7af8578ab20541cd6dc74ee81359f4d"
INK = "light"  # photographs: pixel values as they are (bright = 255), padded with black to a square


def relpath(person: int, image: int) -> str:
    """``"orl_faces/s{person}/{image}.pgm"``, a file's path relative to the data folder."""
    return f"{FOLDER}/s{person}/{image}.pgm"


RELPATHS = tuple(relpath(p, i) for p in PEOPLE for i in range(1, IMAGES_PER_PERSON + 1))


@dataclasses.dataclass(frozen=True, eq=False)
class Orl:
    """ORL in memory, native form.

    Attributes:
      images: uint8 (380, 112, 92), person-major in ``PEOPLE`` order, images 1..10 within a person.
      labels: int64 (380,), the person's index in ``PEOPLE`` (0..37).
      people: ("s3", ..., "s40"), the subjects' folder names.
      image_numbers: int64 (380,), ``N`` of ``N.pgm`` (1..10).
      ink: "light": the photographs' own values (``siamax.preprocess`` keeps them, pads with 0).
    """

    images: np.ndarray
    labels: np.ndarray
    people: tuple[str, ...] = tuple(f"s{p}" for p in PEOPLE)
    image_numbers: np.ndarray = dataclasses.field(
        default_factory=lambda: np.tile(np.arange(1, IMAGES_PER_PERSON + 1), len(PEOPLE))
    )
    ink: str = INK


def _missing_line(root: Path, missing: list[str]) -> str:
    some = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"ORL faces: {len(missing)} of the {N_FILES} files are missing from {root} ({some}). ORL has no official "
        f"download: put the AT&T Database of Faces there as {root / FOLDER}/sP/N.pgm (subjects s3..s40, images "
        f"1..10, 92x112 PGM; the copy in the project's shared/data), or set {_paths.DATA_ENV} to a folder that "
        "holds it"
    )


def orl_files(data_dir=None) -> dict[str, Path]:
    """The 380 PGM files, ``{relpath: path}``, after checking them against :data:`DIGEST`.

    Raises ``DataError`` (one line: what to put where) when any is missing, ``ChecksumError`` when the
    set differs from the published one.
    """
    root = _paths.data_dir(data_dir)
    paths = {r: root / r for r in RELPATHS}
    missing = [r for r, p in paths.items() if not p.is_file()]
    if missing:
        raise DataError(_missing_line(root, missing))
    actual = _paths.content_digest(paths)
    if actual != DIGEST:
        raise ChecksumError(
            f"ORL faces in {root / FOLDER}: content digest {actual}, expected {DIGEST} (sha256 of the sorted "
            f"'relpath sha256' lines of the {N_FILES} PGM files): some file is corrupt or not the published one. "
            "Check them against the project's shared/data/SHA256SUMS (sha256sum -c) and replace those that differ"
        )
    return paths


def read_pgm(path) -> np.ndarray:
    """One ORL PGM file as uint8 (112, 92), after checking its size."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(path) as im:
        image = np.asarray(im.convert("L"), np.uint8)
    if image.shape != (HEIGHT, WIDTH):
        raise ValueError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels, expected {WIDTH}x{HEIGHT}")
    return image


@functools.cache
def _builder_class():
    tfds = _tfds()

    class SiamaxOrl(tfds.core.GeneratorBasedBuilder):
        """ORL / AT&T faces (Samaria & Harter 1994), subjects s3..s40 x 10, 112x92 uint8, TF-free."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "From the 380 PGM files of s3..s40; Tensor features."}

        def __init__(self, *, source_dir=None, **kwargs):
            self._source_dir = source_dir
            super().__init__(**kwargs)

        def _info(self):
            f = tfds.features
            return tfds.core.DatasetInfo(
                builder=self,
                description="ORL faces, subjects s3..s40; image uint8 (112, 92), person = the subject number.",
                features=f.FeaturesDict(
                    {
                        "image": f.Tensor(shape=(HEIGHT, WIDTH), dtype=np.uint8, encoding=f.Encoding.ZLIB),
                        "person": f.Scalar(dtype=np.int32),  # P of sP
                        "number": f.Scalar(dtype=np.int32),  # N of N.pgm
                    }
                ),
                homepage="https://www.cl.cam.ac.uk/research/dtg/attarchive/facedatabase.html",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download: ORL has no official source left
            paths = orl_files(self._source_dir)  # verified
            return {"train": self._generate_examples(paths)}

        def _generate_examples(self, paths):
            for p in PEOPLE:
                for n in range(1, IMAGES_PER_PERSON + 1):
                    yield f"s{p}/{n}", {"image": read_pgm(paths[relpath(p, n)]), "person": p, "number": n}

    return SiamaxOrl


def orl_builder(data_dir=None, tfds_dir=None):
    """The TFDS builder (not yet prepared)."""
    return _builder_class()(
        source_dir=_paths.data_dir(data_dir),
        data_dir=str(_paths.tfds_dir(tfds_dir)),
        file_format="array_record",
    )


def load_orl(data_dir=None, tfds_dir=None) -> Orl:
    """ORL in memory (person-major order), preparing the TFDS dataset first if needed (cached per folder pair).

    The PGM files are only read (and checked against :data:`DIGEST`) when preparing.
    """
    return _load_orl(str(_paths.data_dir(data_dir)), str(_paths.tfds_dir(tfds_dir)))


@functools.lru_cache(maxsize=4)
def _load_orl(data_dir: str, tfds_dir: str) -> Orl:
    builder = prepare(lambda: orl_builder(data_dir, tfds_dir))
    fields = {"image": ((HEIGHT, WIDTH), np.uint8), "person": ((), np.int64), "number": ((), np.int64)}
    r = read_records(builder, "train", fields)
    person = np.searchsorted(PEOPLE, r["person"])
    slot = person * IMAGES_PER_PERSON + r["number"] - 1
    if len(slot) != N_FILES or not np.array_equal(np.sort(slot), np.arange(N_FILES)):
        raise ValueError(f"prepared ORL in {tfds_dir} is incomplete; delete its siamax_orl folder and load again")
    images = np.empty((N_FILES, HEIGHT, WIDTH), np.uint8)
    images[slot] = r["image"]
    labels = np.repeat(np.arange(len(PEOPLE)), IMAGES_PER_PERSON)
    for a in (images, labels):
        a.setflags(write=False)
    return Orl(images=images, labels=labels)


def orl_table(data: Orl, spec) -> LabelledImages:
    """All 380 faces in model format for ``spec`` (``model_format``: padded with black to 112 x 112, then
    the antialiased resize to S x S; no ink framing: a photograph has no ink). Classes are the people
    "s3".."s40", one group; paths name the PGM files."""
    return LabelledImages(
        images=model_format(spec, data.images, data.ink),
        labels=data.labels,
        class_names=data.people,
        groups=np.zeros(len(data.people), np.int32),
        group_names=("orl",),
        paths=RELPATHS,
        name="orl_faces",
    )
