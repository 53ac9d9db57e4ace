"""The Free Spoken Digit Dataset (FSDD) through a TensorFlow-free TFDS builder, and ``load_fsdd``.

The data folder holds ``fsdd/recordings/{digit}_{speaker}_{index}.wav``: digits 0-9 spoken 50 times
(``index`` 0..49) by each of 6 speakers (:data:`SPEAKERS`), 3,000 mono 8 kHz 16-bit WAV files,
trimmed of silence (0.14 - 2.3 s). Upstream's official test split is indices 0-4 of every digit and
speaker. The files are checked as one set by a content digest (:data:`DIGEST`: sha256 of the
sorted ``"fsdd/recordings/NAME.wav <sha256 of the file>\\n"`` lines of all 3,000), so a missing,
altered or misplaced file fails before anything is prepared.

Where files are missing and downloads are allowed, the official repository's archive at the commit
the project's copy was taken from (:data:`URL`, GitHub ``Jakobovski/free-spoken-digit-dataset``) is
downloaded, its recordings extracted next to the data folder, checked against :data:`DIGEST` (a
GitHub archive's own bytes are not stable, its content is) and only then moved into place, so the
next run is offline. Offline, or with ``download=False``: a one-line
:class:`~siamax.errors.DataError` says what to put where.

The builder stores each clip's samples as they are in the file (int16 at 8 kHz, variable length)
with its digit, speaker and index; once prepared, the WAV files are not read again.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from siamax.data import _paths
from siamax.data.labelled import LabelledImages
from siamax.data.omniglot import _tfds, prepare
from siamax.errors import ChecksumError, DataError, one_line

FOLDER = "fsdd/recordings"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
DIGITS = 10
REPETITIONS = 50
N_FILES = len(SPEAKERS) * DIGITS * REPETITIONS
SAMPLE_RATE = 8000
TEST_INDICES = range(5)  # upstream's official test split: recordings 0-4 of every digit and speaker
# sha256 of the sorted "fsdd/recordings/NAME.wav <sha256>\n" lines of the 3,000 WAV files (relpaths
# from the data folder), computed from shared/data/fsdd/recordings (each file's sha256 also in its SHA256SUMS).
DIGEST = "398b8440438f7b7b5df9f326fb02e5c65c01a9b25e8669783f151fa9c063ae47"
# The commit shared/data's copy was taken from (HEAD, 2024-05-02; the last release tag, v1.0.10, may
# differ in content). GitHub serves any commit's tree as a .tar.gz.
COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{COMMIT}.tar.gz"
REPOSITORY = "https://github.com/Jakobovski/free-spoken-digit-dataset"
DOWNLOAD_TIMEOUT_S = 60.0

_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def relpath(digit: int, speaker: str, index: int) -> str:
    """``"fsdd/recordings/{digit}_{speaker}_{index}.wav"``, a file's path relative to the data folder."""
    return f"{FOLDER}/{digit}_{speaker}_{index}.wav"


# Canonical order, speaker-major: clip ``(s * 10 + d) * 50 + k`` is speaker ``SPEAKERS[s]`` saying ``d``, take ``k``.
RELPATHS = tuple(relpath(d, s, k) for s in SPEAKERS for d in range(DIGITS) for k in range(REPETITIONS))


@dataclasses.dataclass(frozen=True, eq=False)
class Fsdd:
    """FSDD in memory, native form, in canonical (speaker, digit, index) order.

    Attributes:
      samples: int16 (total,), every clip's samples end to end (8 kHz, the files' own values).
      offsets: int64 (3001,), clip ``i`` is ``samples[offsets[i]:offsets[i + 1]]``.
      digits, speakers, indices: int32 (3000,): the digit said, the speaker's index in ``speakers``,
        the take (0..49; 0-4 are upstream's test split).
      speakers_names: the 6 speakers.
      sample_rate: 8000.
    """

    samples: np.ndarray
    offsets: np.ndarray
    digits: np.ndarray
    speakers: np.ndarray
    indices: np.ndarray
    speaker_names: tuple[str, ...] = SPEAKERS
    sample_rate: int = SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.digits)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (3000,) samples per clip."""
        return np.diff(self.offsets)

    def wave(self, i: int) -> np.ndarray:
        """Clip ``i`` as float32 in [-1, 1) (int16 / 32768, as ``siamax.audio.read_audio`` reads the file)."""
        return self.samples[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32768.0

    def waves(self) -> list[np.ndarray]:
        """Every clip, :meth:`wave` each."""
        return [self.wave(i) for i in range(len(self))]


def fsdd_clips(data: Fsdd, length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(waves float32 (3000, length), digits int32 (3000,), speakers int32 (3000,))`` at 8 kHz.

    Each clip centre-cropped / zero-padded to ``length`` samples (``siamax.audio.fix_length``); None:
    the longest clip's length (nothing cropped). Speakers index ``data.speaker_names``.
    """
    from siamax.audio import stack_clips  # pylint: disable=g-import-not-at-top

    length = int(data.lengths.max()) if length is None else length
    return stack_clips(data.waves(), length), data.digits, data.speakers


def fsdd_table(data: Fsdd, cfg=None, *, label: str = "digit") -> LabelledImages:
    """All 3,000 clips as log-mel images in model format (``siamax.audio.clips_to_images``, uint8
    ``(3000, S, S)`` for a square ``cfg``, default ``MelConfig()``: 64 x 64).

    ``label="digit"``: classes "0".."9", one group; ``"speaker"``: classes the speakers, one group.
    Paths name the WAV files; the other labels stay in ``data``, in the same order.
    """
    from siamax.audio import MelConfig, clips_to_images  # pylint: disable=g-import-not-at-top

    cfg = MelConfig() if cfg is None else cfg
    if cfg.sample_rate != data.sample_rate:
        raise ValueError(f"fsdd_table: FSDD is {data.sample_rate} Hz; give a MelConfig at that rate")
    if cfg.n_mels != cfg.frames:
        raise ValueError(f"fsdd_table needs square images (n_mels == frames), got {cfg.shape}")
    if label == "digit":
        labels, names = data.digits, tuple(str(d) for d in range(DIGITS))
    elif label == "speaker":
        labels, names = data.speakers, data.speaker_names
    else:
        raise ValueError(f"label must be 'digit' or 'speaker', got {label!r}")
    return LabelledImages(
        images=clips_to_images(data.waves(), cfg),
        labels=labels,
        class_names=names,
        groups=np.zeros(len(names), np.int32),
        group_names=("fsdd",),
        paths=RELPATHS,
        name=f"fsdd/{label}",
    )


# ---------------------------------------------------------------------------------------------
# The files: present and verified, or downloaded.


def fsdd_files(data_dir=None, *, download: bool = True) -> dict[str, Path]:
    """The 3,000 WAV files, ``{relpath: path}`` in canonical order, checked against :data:`DIGEST`;
    missing ones are downloaded (:data:`URL`) first where ``download`` and the network allow.

    Raises ``DataError`` (one line: what to put where) when files are missing and cannot be
    downloaded, ``ChecksumError`` when the set (present or downloaded) differs from the published one.
    """
    root = _paths.data_dir(data_dir)
    paths = {r: root / r for r in RELPATHS}
    missing = [r for r, p in paths.items() if not p.is_file()]
    if missing:
        _fetch(root, missing, download)
    actual = _paths.content_digest(paths)
    if actual != DIGEST:
        raise ChecksumError(
            f"FSDD in {root / FOLDER}: content digest {actual}, expected {DIGEST} (sha256 of the sorted "
            f"'relpath sha256' lines of the {N_FILES} WAV files): some file is corrupt or not the published one. "
            "Check them against the project's shared/data/SHA256SUMS (sha256sum -c) and replace those that differ, "
            f"or delete {root / FOLDER} so siamax downloads it again"
        )
    return paths


def _missing_error(root: Path, missing: list[str], why: str) -> DataError:
    some = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return DataError(
        f"FSDD: {len(missing)} of the {N_FILES} files are missing from {root} ({some}). Cannot download: {why}. "
        f"Put the recordings of {REPOSITORY} (commit {COMMIT[:12]}, its recordings/ folder: {N_FILES} files "
        f"{{digit}}_{{speaker}}_{{index}}.wav) in {root / FOLDER}, or set {_paths.DATA_ENV} to a folder laid out "
        "like the project's shared/data"
    )


def _fetch(root: Path, missing: list[str], download: bool) -> None:
    """Download the archive, verify the extracted set, move the missing files into place; or raise why not."""
    from siamax.data import download as dl  # pylint: disable=g-import-not-at-top

    if not download:
        raise _missing_error(root, missing, "downloads are off (download=False)")
    if not root.is_dir() and root != Path(_paths.DEFAULT_DATA_DIR).expanduser():  # the default is created
        raise _missing_error(root, missing, f"the data folder {root} does not exist (a typo?); create it first")
    host, port = dl._endpoint(URL)  # noqa: SLF001  the resolver's own reachability test, shared
    if not dl._reachable(host, port):  # noqa: SLF001
        raise _missing_error(root, missing, f"{host}:{port} is not reachable")
    dest = root / FOLDER
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fsdd.", suffix=".download", dir=dest.parent))
    except OSError as e:
        raise DataError(f"cannot write {dest}: {e}; make the data folder writable or set {_paths.DATA_ENV}") from e
    try:
        print(f"siamax: downloading {URL} (FSDD, about 10 MB) to {dest}", file=sys.stderr, flush=True)
        archive = tmp / "fsdd.tar.gz"
        try:
            with urllib.request.urlopen(URL, timeout=DOWNLOAD_TIMEOUT_S) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
            got = _extract_recordings(archive, tmp / "fsdd")
        except (OSError, tarfile.TarError) as e:
            raise DataError(
                f"downloading {URL} to {dest} failed: {one_line(e)}. Try again, or put the {N_FILES} recordings "
                f"there yourself (from {REPOSITORY}, commit {COMMIT[:12]})"
            ) from e
        actual = _paths.content_digest(got)
        if actual != DIGEST:
            raise ChecksumError(
                f"downloaded {URL}: its {len(got)} recordings have content digest {actual}, expected {DIGEST} "
                f"({N_FILES} files, sha256 of their sorted 'relpath sha256' lines), so nothing was written to {dest}. "
                f"Try again, or put the recordings of {REPOSITORY} at commit {COMMIT[:12]} there yourself"
            )
        for r in missing:
            os.replace(got[r], root / r)  # same file system: each rename is atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_recordings(archive: Path, into: Path) -> dict[str, Path]:
    """``{relpath: extracted path}`` of the ``recordings/*.wav`` members of a GitHub archive (nothing else
    is written; member names are checked against the file-name pattern, so none can escape ``into``)."""
    out = {}
    folder = into / FOLDER
    folder.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if len(parts) != 3 or parts[1] != "recordings" or not m.isfile() or not _NAME.match(parts[2]):
                continue
            path = folder / parts[2]
            with tf.extractfile(m) as src, open(path, "wb") as f:
                shutil.copyfileobj(src, f)
            out[f"{FOLDER}/{parts[2]}"] = path
    return out


def read_wav_int16(path) -> np.ndarray:
    """One FSDD file's samples, int16 (T,), after checking it is mono at 8 kHz."""
    import soundfile  # pylint: disable=g-import-not-at-top

    x, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE or x.shape[1] != 1 or not len(x):
        raise ValueError(
            f"{path}: {x.shape[1]} channel(s) at {rate} Hz, {len(x)} samples; expected mono {SAMPLE_RATE} Hz"
        )
    return x[:, 0]


# ---------------------------------------------------------------------------------------------
# The TFDS builder.


@functools.cache
def _builder_class():
    tfds = _tfds()

    class SiamaxFsdd(tfds.core.GeneratorBasedBuilder):
        """Free Spoken Digit Dataset (Z. Jackson et al.), 3,000 clips, 8 kHz int16, TF-free."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": f"The 3,000 WAV files of commit {COMMIT[:12]}; Tensor features."}

        def __init__(self, *, source_dir=None, download=True, **kwargs):
            self._source_dir = source_dir
            self._download = download
            super().__init__(**kwargs)

        def _info(self):
            f = tfds.features
            return tfds.core.DatasetInfo(
                builder=self,
                description="FSDD: audio int16 (T,) at 8 kHz as in the files; digit, speaker (index), take.",
                features=f.FeaturesDict(
                    {
                        "audio": f.Tensor(shape=(None,), dtype=np.int16, encoding=f.Encoding.ZLIB),
                        "digit": f.ClassLabel(num_classes=DIGITS),
                        "speaker": f.Scalar(dtype=np.int32),  # index in SPEAKERS
                        "index": f.Scalar(dtype=np.int32),  # the take, 0..49
                    }
                ),
                homepage=REPOSITORY,
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # fsdd_files downloads into the data folder, so the next run is offline
            return {"train": self._generate_examples(fsdd_files(self._source_dir, download=self._download))}

        def _generate_examples(self, paths):
            for r in RELPATHS:
                d, s, k = _NAME.match(r.rsplit("/", 1)[1]).groups()
                example = {"audio": read_wav_int16(paths[r]), "digit": int(d), "speaker": SPEAKERS.index(s)}
                yield f"{d}_{s}_{k}", {**example, "index": int(k)}

    return SiamaxFsdd


def fsdd_builder(data_dir=None, tfds_dir=None, *, download: bool = True):
    """The TFDS builder (not yet prepared)."""
    return _builder_class()(
        source_dir=_paths.data_dir(data_dir),
        download=download,
        data_dir=str(_paths.tfds_dir(tfds_dir)),
        file_format="array_record",
    )


def load_fsdd(data_dir=None, tfds_dir=None, *, download: bool = True) -> Fsdd:
    """FSDD in memory (canonical order), preparing the TFDS dataset first if needed (cached per folder pair).

    The WAV files are only read (and checked against :data:`DIGEST`, downloaded if missing unless
    ``download=False``) when preparing.
    """
    return _load_fsdd(str(_paths.data_dir(data_dir)), str(_paths.tfds_dir(tfds_dir)), download)


@functools.lru_cache(maxsize=4)
def _load_fsdd(data_dir: str, tfds_dir: str, download: bool) -> Fsdd:
    builder = prepare(lambda: fsdd_builder(data_dir, tfds_dir, download=download))
    audio, r = _read_clips(builder, "train")
    slot = (r["speaker"] * DIGITS + r["digit"]) * REPETITIONS + r["index"]
    if len(slot) != N_FILES or not np.array_equal(np.sort(slot), np.arange(N_FILES)):
        raise ValueError(f"prepared FSDD in {tfds_dir} is incomplete; delete its siamax_fsdd folder and load again")
    order = np.argsort(slot)
    clips = [audio[i] for i in order]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
    samples = np.concatenate(clips)
    n = np.arange(N_FILES)
    speakers, digits, indices = n // (DIGITS * REPETITIONS), n // REPETITIONS % DIGITS, n % REPETITIONS
    arrays = [samples, offsets, *(a.astype(np.int32) for a in (digits, speakers, indices))]
    for a in arrays:
        a.setflags(write=False)
    return Fsdd(*arrays)


def _read_clips(builder, split: str) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """(every record's int16 audio, {"digit", "speaker", "index": int64 (n,)}) of a prepared split.

    ``omniglot.read_records`` for a variable-length feature: the raw records parsed with TFDS's own
    TF-free proto classes, the first cross-checked against TFDS's standard decoding.
    """
    import zlib  # pylint: disable=g-import-not-at-top

    tfds = _tfds()
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

    raw = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    n = len(raw)
    audio, labels = [], {k: np.empty(n, np.int64) for k in ("digit", "speaker", "index")}
    for i, record in enumerate(raw.__getitems__(list(range(n)))):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        audio.append(np.frombuffer(zlib.decompress(feature["audio"].bytes_list.value[0]), np.int16))
        for k in labels:
            labels[k][i] = feature[k].int64_list.value[0]
    if n:
        first = builder.as_data_source(split=split)[0]
        if not np.array_equal(np.asarray(first["audio"]), audio[0]) or any(
            int(first[k]) != labels[k][0] for k in labels
        ):
            raise RuntimeError("fast record parsing disagrees with TFDS on the FSDD features")
    return audio, labels
