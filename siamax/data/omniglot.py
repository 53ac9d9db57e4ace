"""Omniglot: the alphabet table, a TensorFlow-free TFDS builder, and ``load_omniglot``.

The builder prepares from (first found complete in the data folder wins)

1. ``omniglot/bitsandscraps-omniglot/images_{background,evaluation}.npz`` (the offline copy),
2. ``omniglot/brendenlake-omniglot/python/images_{background,evaluation}.zip`` (the official zips),
3. otherwise what ``siamax.data.require`` downloads into the data folder: the npz files from a mirror
   (``SIAMAX_DATA_URL``), else the official zips (the sha256s TFDS registers for its ``omniglot``).

It writes array_record files with ``tfds.features.Tensor`` images (``tfds.features.Image`` needs
TensorFlow to encode PNG), read back with ``builder.as_data_source()``.

Conventions used everywhere in ``siamax.data``: a character's *global id* is 1..1623 (the ``IIII`` of
the official file names ``IIII_DD.png``), its *index* ``c = id - 1``; a *drawer* is 1..20 (``DD``),
its index ``d = drawer - 1``; the *flat image index* is ``c * 20 + d``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import zipfile
from pathlib import Path

import numpy as np

from siamax.data import _paths
from siamax.data.download import resolve
from siamax.data.labelled import LabelledImages, model_format

N_CHARS = 1623
N_DRAWERS = 20
SIZE = 105
SETS = ("background", "evaluation")

# (alphabet, first global id, number of characters), in id order. From the data README: every
# alphabet holds a contiguous id range and ``characterNN`` is ``first + NN - 1``. The first 30 are the
# official background set, the last 20 the evaluation set. Checked against every PNG of the small
# zips in the tests, and against the official zips whenever the builder reads them.
ALPHABET_TABLE = (
    ("Arcadian", 1, 26),
    ("Armenian", 27, 41),
    ("Asomtavruli_(Georgian)", 68, 40),
    ("Balinese", 108, 24),
    ("Bengali", 132, 46),
    ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 178, 14),
    ("Braille", 192, 26),
    ("Cyrillic", 218, 33),
    ("Early_Aramaic", 251, 22),
    ("Syriac_(Estrangelo)", 273, 23),
    ("Anglo-Saxon_Futhorc", 296, 29),
    ("Futurama", 325, 26),
    ("Grantha", 351, 43),
    ("Greek", 394, 24),
    ("Gujarati", 418, 48),
    ("Hebrew", 466, 22),
    ("Japanese_(hiragana)", 488, 52),
    ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 540, 16),
    ("Malay_(Jawi_-_Arabic)", 556, 40),
    ("Japanese_(katakana)", 596, 47),
    ("Korean", 643, 40),
    ("Latin", 683, 26),
    ("Alphabet_of_the_Magi", 709, 20),
    ("Mkhedruli_(Georgian)", 729, 41),
    ("Burmese_(Myanmar)", 770, 34),
    ("N_Ko", 804, 33),
    ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 837, 14),
    ("Sanskrit", 851, 42),
    ("Tagalog", 893, 17),
    ("Tifinagh", 910, 55),
    ("Angelic", 965, 20),
    ("Atemayar_Qelisayer", 985, 26),
    ("Atlantean", 1011, 26),
    ("Aurek-Besh", 1037, 26),
    ("Avesta", 1063, 26),
    ("Ge_ez", 1089, 26),
    ("Glagolitic", 1115, 45),
    ("Gurmukhi", 1160, 45),
    ("Kannada", 1205, 41),
    ("Keble", 1246, 26),
    ("Malayalam", 1272, 47),
    ("Manipuri", 1319, 40),
    ("Mongolian", 1359, 30),
    ("Old_Church_Slavonic_(Cyrillic)", 1389, 45),
    ("Oriya", 1434, 46),
    ("Sylheti", 1480, 28),
    ("Syriac_(Serto)", 1508, 23),
    ("Tengwar", 1531, 25),
    ("Tibetan", 1556, 42),
    ("ULOG", 1598, 26),
)
ALPHABETS = tuple(a for a, _, _ in ALPHABET_TABLE)
BACKGROUND_ALPHABETS = ALPHABETS[:30]
EVALUATION_ALPHABETS = ALPHABETS[30:]


def _char_tables():
    alphabet = np.repeat(np.arange(len(ALPHABET_TABLE)), [n for _, _, n in ALPHABET_TABLE])
    index = np.concatenate([np.arange(n) for _, _, n in ALPHABET_TABLE])
    official = (alphabet >= len(BACKGROUND_ALPHABETS)).astype(np.int32)
    for a in (alphabet, index, official):
        a.setflags(write=False)
    return alphabet.astype(np.int32), index.astype(np.int32), official


CHAR_ALPHABET, CHAR_INDEX, CHAR_SET = _char_tables()
assert CHAR_ALPHABET.shape == (N_CHARS,)


def alphabet_id(name: str) -> int:
    """Position of an alphabet in ``ALPHABETS`` (id order); a clear error for unknown names."""
    try:
        return ALPHABETS.index(name)
    except ValueError:
        raise ValueError(f"unknown Omniglot alphabet {name!r}; known: {', '.join(ALPHABETS)}") from None


def alphabet_char_ids(name: str) -> np.ndarray:
    """Global character ids (1-based) of an alphabet."""
    _, first, n = ALPHABET_TABLE[alphabet_id(name)]
    return np.arange(first, first + n)


@dataclasses.dataclass(frozen=True, eq=False)
class Omniglot:
    """All of Omniglot in memory, in native form.

    Attributes:
      images: bool (1623, 20, 105, 105); ``images[c, d]`` is character id ``c+1`` by drawer ``d+1``.
        True = paper (white), False = ink: the official PNGs' own polarity (``ink="dark"``).
      alphabets: the 50 alphabet names in id order.
      char_alphabet: (1623,) alphabet index of each character.
      char_index: (1623,) 0-based index of each character within its alphabet (``characterNN - 1``).
      char_set: (1623,) official set, 0 = images_background, 1 = images_evaluation.
      ink: "dark": dark strokes on light paper; pass it to ``siamax.preprocess``.
    """

    images: np.ndarray
    alphabets: tuple[str, ...] = ALPHABETS
    char_alphabet: np.ndarray = dataclasses.field(default_factory=lambda: CHAR_ALPHABET)
    char_index: np.ndarray = dataclasses.field(default_factory=lambda: CHAR_INDEX)
    char_set: np.ndarray = dataclasses.field(default_factory=lambda: CHAR_SET)
    ink: str = "dark"

    @property
    def flat_images(self) -> np.ndarray:
        """(32460, 105, 105) view, indexed by the flat image index ``c * 20 + d``."""
        return self.images.reshape(-1, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------
# Reading the raw archives.

_PNG_PATH = re.compile(r"(?:^|/)([^/]+)/character(\d+)/(\d{4})_(\d{2})\.png$")


def canonical_bool(x: np.ndarray) -> np.ndarray:
    """A bool array whose bytes are exactly 0/1.

    Why: PIL's 1-bit PNGs (and the npz files made from them) come out as numpy bool arrays whose
    True bytes are 0xFF. NumPy tolerates that, but JAX copies the raw bytes, and under ``jit``
    ``x.astype(float32)`` then yields 255, not 1. Every bool array siamax hands out is canonical.
    """
    x = np.asarray(x)
    return x.view(np.uint8) != 0 if x.dtype == bool else x != 0


def read_png_zip(path: str | Path):
    """Yield ``(alphabet, character_nn, char_id, drawer, image)`` for every PNG in an official zip.

    ``image`` is bool (105, 105) with True = paper, exactly as ``np.asarray`` reads the 1-bit PNG.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            m = _PNG_PATH.search(name)
            if m is None:
                continue
            with Image.open(io.BytesIO(zf.read(name))) as im:
                image = canonical_bool(np.asarray(im.convert("1")))
            yield m[1], int(m[2]), int(m[3]), int(m[4]), image


def _from_zip(path: Path, official_set: str) -> np.ndarray:
    """One official zip as bool (n_chars, 20, 105, 105), checking the alphabet table on the way."""
    lo = 0 if official_set == "background" else 964
    n = 964 if official_set == "background" else 659
    images = np.zeros((n, N_DRAWERS, SIZE, SIZE), bool)
    seen = np.zeros((n, N_DRAWERS), bool)
    for alphabet, nn, char_id, drawer, image in read_png_zip(path):
        c = char_id - 1
        if ALPHABETS[CHAR_ALPHABET[c]] != alphabet or CHAR_INDEX[c] != nn - 1:
            raise ValueError(
                f"{path}: {alphabet}/character{nn:02d} has id {char_id}, which the alphabet table assigns elsewhere"
            )
        images[c - lo, drawer - 1] = image
        seen[c - lo, drawer - 1] = True
    if not seen.all():
        raise ValueError(f"{path}: {int((~seen).sum())} of the {seen.size} images are missing")
    return images


def _from_npz(path: Path, official_set: str) -> np.ndarray:
    with np.load(path) as f:
        images, labels = f["images"], f["labels"]
    n = 964 if official_set == "background" else 659
    if images.shape != (n, N_DRAWERS, SIZE, SIZE) or images.dtype != bool:
        raise ValueError(f"{path}: unexpected images {images.dtype}{images.shape}")
    if not (labels == np.arange(n)[:, None]).all():
        raise ValueError(f"{path}: labels[c, d] != c")
    return canonical_bool(images)


_NPZ, _ZIP = _paths.DATASETS["omniglot"]


def _source_arrays(source_dir, download: bool) -> dict[str, np.ndarray]:
    """Both official sets as arrays, from the npz files or the official zips (downloaded if missing)."""
    paths = resolve(["omniglot"], source_dir, download=download)["omniglot"]  # verified
    read, names = (_from_npz, _NPZ) if _NPZ[0] in paths else (_from_zip, _ZIP)
    return {s: read(paths[n], s) for s, n in zip(SETS, names)}


# ---------------------------------------------------------------------------------------------
# The TFDS builder.


def _tfds():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


@functools.cache
def _builder_class():
    """The builder class, defined on first use so importing siamax.data does not import TFDS."""
    tfds = _tfds()

    class SiamaxOmniglot(tfds.core.GeneratorBasedBuilder):
        """Omniglot (Lake et al. 2015), 1623 characters x 20 drawers, 105x105 binary, TF-free."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "npz / official zip / download sources; Tensor features."}

        def __init__(self, *, source_dir=None, download=True, **kwargs):
            self._source_dir = source_dir
            self._download = download
            super().__init__(**kwargs)

        def _info(self):
            f = tfds.features
            return tfds.core.DatasetInfo(
                builder=self,
                description="Omniglot images with alphabet/character/drawer metadata. image: True = paper.",
                features=f.FeaturesDict(
                    {
                        "image": f.Tensor(shape=(SIZE, SIZE), dtype=np.bool_, encoding=f.Encoding.ZLIB),
                        "alphabet": f.Text(),
                        "alphabet_index": f.Scalar(dtype=np.int32),
                        "character_index": f.Scalar(dtype=np.int32),
                        "character_id": f.Scalar(dtype=np.int32),
                        "drawer": f.Scalar(dtype=np.int32),
                        "official_set": f.ClassLabel(names=list(SETS)),
                    }
                ),
                homepage="https://github.com/brendenlake/omniglot",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # siamax's resolver downloads into the data folder, so the next run is offline
            arrays = _source_arrays(self._source_dir, self._download)  # verified first
            return {s: self._generate_examples(arrays[s], s) for s in SETS}

        def _generate_examples(self, images, official_set):
            first = 0 if official_set == "background" else 964
            for i in range(images.shape[0]):
                c = first + i
                a = int(CHAR_ALPHABET[c])
                for d in range(N_DRAWERS):
                    yield (
                        f"{c + 1:04d}_{d + 1:02d}",
                        {
                            "image": images[i, d],
                            "alphabet": ALPHABETS[a],
                            "alphabet_index": a,
                            "character_index": int(CHAR_INDEX[c]),
                            "character_id": c + 1,
                            "drawer": d + 1,
                            "official_set": official_set,
                        },
                    )

    return SiamaxOmniglot


def omniglot_builder(data_dir=None, tfds_dir=None, *, download: bool = True):
    """The TFDS builder (not yet prepared): ``builder.download_and_prepare()`` then ``as_data_source()``."""
    return _builder_class()(
        source_dir=_paths.data_dir(data_dir),
        download=download,
        data_dir=str(_paths.tfds_dir(tfds_dir)),
        file_format="array_record",
    )


def prepare(make_builder):
    """``make_builder()`` prepared, also when other processes prepare the same dataset at the same
    time (parallel sweeps, several hosts on one disk): TFDS writes to a temporary folder and renames
    it, so every process but the first to finish fails that rename; the dataset is then complete, and
    a fresh builder reads it."""
    builder = make_builder()
    try:
        builder.download_and_prepare()  # a no-op once prepared
    except FileExistsError:
        builder = make_builder()
        if not builder.is_prepared():
            raise
    return builder


def read_records(builder, split: str, fields: dict[str, tuple], batch: int = 8192):
    """All records of a prepared split as numpy arrays, one per field: ``{name: (n, *shape)}``.

    Why not ``as_data_source()[i]``: TFDS's per-example Python decoding costs ~0.25 ms a record (8 s
    for Omniglot). We read the raw records in batches and parse the ``tf.train.Example`` protos
    with TFDS's own TF-free proto classes (C++ upb), ~4x faster. ``fields`` maps a feature name to
    ``(shape, dtype)``; Tensor features are stored zlib-compressed bytes, Scalars as int64 lists.
    The first record is cross-checked against TFDS's standard decoding, so a storage-format change
    fails loudly instead of silently.
    """
    import zlib  # pylint: disable=g-import-not-at-top

    tfds = _tfds()
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

    raw = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    n = len(raw)
    out = {k: np.empty((n, *shape), dtype) for k, (shape, dtype) in fields.items()}
    for lo in range(0, n, batch):
        for i, record in enumerate(raw.__getitems__(list(range(lo, min(n, lo + batch)))), lo):
            feature = tf_example_pb2.Example.FromString(record).features.feature
            for k, (shape, dtype) in fields.items():
                if shape:
                    value = np.frombuffer(zlib.decompress(feature[k].bytes_list.value[0]), dtype).reshape(shape)
                    out[k][i] = canonical_bool(value) if dtype is bool else value
                else:
                    out[k][i] = feature[k].int64_list.value[0]
    if n:
        first = builder.as_data_source(split=split)[0]
        for k in fields:
            if not np.array_equal(np.asarray(first[k]) != 0, out[k][0] != 0):
                raise RuntimeError(f"fast record parsing disagrees with TFDS on feature {k!r}")
    return out


def load_omniglot(data_dir=None, tfds_dir=None, *, download: bool = True) -> Omniglot:
    """Omniglot in memory, preparing the TFDS dataset first if needed (cached per folder pair).

    Args:
      data_dir: raw-archive folder (default ``$SIAMAX_DATA_DIR``); only read when preparing.
      tfds_dir: prepared-dataset folder (default ``$SIAMAX_TFDS_DIR``).
      download: when no complete set of archives is in ``data_dir``, download one into it
        (``siamax.data.require``; from ``$SIAMAX_DATA_URL`` if set, else the official zips).
    """
    return _load_omniglot(str(_paths.data_dir(data_dir)), str(_paths.tfds_dir(tfds_dir)), download)


@functools.lru_cache(maxsize=4)
def _load_omniglot(data_dir: str, tfds_dir: str, download: bool) -> Omniglot:
    builder = prepare(lambda: omniglot_builder(data_dir, tfds_dir, download=download))
    images = np.zeros((N_CHARS, N_DRAWERS, SIZE, SIZE), bool)
    seen = np.zeros((N_CHARS, N_DRAWERS), bool)
    fields = {"image": ((SIZE, SIZE), bool), "character_id": ((), np.int32), "drawer": ((), np.int32)}
    for split in SETS:
        r = read_records(builder, split, fields)
        images[r["character_id"] - 1, r["drawer"] - 1] = r["image"]
        seen[r["character_id"] - 1, r["drawer"] - 1] = True
    if not seen.all():
        raise ValueError(
            f"prepared Omniglot in {tfds_dir} is incomplete ({int((~seen).sum())} images "
            "missing); delete its siamax_omniglot folder and load again"
        )
    images.setflags(write=False)
    return Omniglot(images=images)


def omniglot_table(data: Omniglot, spec) -> LabelledImages:
    """All of Omniglot in model format for ``spec``: the dataset model every sampler and task reads.

    Image ``c * 20 + d`` is character ``c`` (class ``c``, named "Alphabet/characterNN") by drawer
    ``d + 1``; the groups are the 50 alphabets (``ALPHABETS`` order); paths name the official PNGs.
    A split's images are ``table.take(split.flat_indices())``.
    """
    names = tuple(f"{ALPHABETS[a]}/character{i + 1:02d}" for a, i in zip(CHAR_ALPHABET, CHAR_INDEX))
    paths = tuple(
        f"images_{SETS[CHAR_SET[c]]}/{names[c]}/{c + 1:04d}_{d + 1:02d}.png"
        for c in range(N_CHARS)
        for d in range(N_DRAWERS)
    )
    return LabelledImages(
        images=model_format(spec, data.flat_images, data.ink),
        labels=np.repeat(np.arange(N_CHARS), N_DRAWERS),
        class_names=names,
        groups=CHAR_ALPHABET,
        group_names=ALPHABETS,
        paths=paths,
        name="omniglot",
    )
