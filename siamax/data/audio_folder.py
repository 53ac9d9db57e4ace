"""A folder of one's own sound clips as the one dataset model: :func:`audio_folder` -> ``LabelledImages``.

Layout: ``DIR/<class>/<clip>``, one group (``"all"``); class names are the folder names, read in
natural order (``2`` before ``10``), clips likewise within a class. Clips in ``DIR`` itself, or
folders nested deeper, are refused with an :class:`~siamax.errors.InputError` saying where. Hidden
entries and the operating systems' own files are ignored (as in ``siamax.data.folder``).

Files: ``.wav .flac`` (any case), decoded with ``soundfile``, averaged to mono and resampled to
the front-end's rate (``siamax.audio.read_audio``), then centre-cropped / zero-padded to
``MelConfig.samples`` and turned into log-mel images on the device (``siamax.audio.clips_to_images``:
uint8 ``(N, n_mels, frames)``, 255 = the clip's loudest cell, 0 = ``top_db`` below it). Other files,
files that cannot be decoded, and clips with no samples or with NaN / infinite samples are skipped,
listed by name with the reason in the :class:`AudioFolderReport` (``report.skipped``;
``report.summary()`` is the one line the ``siamax`` command prints): never dropped in silence.

Which modality a folder holds is told from its files' extensions: :func:`is_audio_folder`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from siamax.audio import AUDIO_SUFFIXES, MelConfig, clips_to_images, read_audio_native, resample
from siamax.data.folder import FLAT_GROUP, IMAGE_SUFFIXES, _listdir, _some
from siamax.data.labelled import LabelledImages
from siamax.errors import DataError, InputError, one_line

_EXPECTED = "DIR/<class>/<clip> (clips: .wav or .flac)"
_PROGRESS_FROM = 1000  # files; smaller folders load without a progress bar


def is_audio_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a sound file siamax reads (by its extension: ``.wav``, ``.flac``)."""
    return str(path).lower().endswith(AUDIO_SUFFIXES)


def is_audio_folder(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` holds sound clips rather than images, told from the extensions of the
    files in it and in its sub-folders up to two levels down (``DIR/<class>/*``, ``DIR/<group>/<class>/*``):
    True when it holds audio files (``.wav``, ``.flac``) and more of them than image files. False for a
    path that is not a folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return False
    n_audio = n_image = 0
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        try:
            dirs, files, _ = _listdir(folder)
        except InputError:  # a folder that cannot be listed says nothing either way
            continue
        n_audio += sum(is_audio_file(f) for f in files)
        n_image += sum(f.lower().endswith(IMAGE_SUFFIXES) for f in files)
        if level < 2:
            stack += [(folder / d, level + 1) for d in dirs]
    return n_audio > 0 and n_audio > n_image


@dataclasses.dataclass(frozen=True)
class AudioFolderReport:
    """What :func:`audio_folder` read, decided and skipped.

    Attributes:
      root: the folder, absolute; table paths are relative to it.
      layout: "classes" (``DIR/<class>/<clip>``).
      config: the front-end's :class:`~siamax.audio.MelConfig` (rate, image size, seconds per clip).
      skipped: ``(relative path, reason)`` for every file that was not read.
      n_clips, n_classes, n_groups: what the table holds.
      rates: ``((native sample rate, clips), ...)`` of the clips read, most common first.
      n_resampled: clips whose native rate differed from ``config.sample_rate``.
      n_cropped, n_padded: clips longer (centre-cropped) / shorter (zero-padded) than ``config.seconds``.
      seconds: (shortest, median, longest) clip duration before cropping / padding.
    """

    root: str
    layout: str
    config: MelConfig
    skipped: tuple[tuple[str, str], ...]
    n_clips: int
    n_classes: int
    n_groups: int
    rates: tuple[tuple[int, int], ...]
    n_resampled: int
    n_cropped: int
    n_padded: int
    seconds: tuple[float, float, float]

    def summary(self) -> str:
        """One line: what was loaded, how it became images, and what was skipped (by name)."""
        c = self.config
        rates = ", ".join(f"{r} Hz x {n}" for r, n in self.rates)
        lo, mid, hi = self.seconds
        line = (
            f"{self.root}: {self.n_clips} clips of {self.n_classes} classes in {self.n_groups} groups (layout "
            f"{self.layout!r}), {lo:.2f}-{hi:.2f} s (median {mid:.2f}) at {rates}; log-mel images "
            f"{c.n_mels}x{c.frames} of {c.seconds:.3f} s at {c.sample_rate} Hz ({self.n_resampled} resampled, "
            f"{self.n_cropped} cropped to their middle, {self.n_padded} padded)"
        )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} file(s): " + _some([f"{p} ({why})" for p, why in self.skipped])
        return line


def _config_for(size, config: MelConfig | None) -> MelConfig:
    """The front-end config: ``config``, else ``MelConfig.square(S)`` for the model's input size ``S``."""
    if size is None:
        return MelConfig() if config is None else config
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        s = int(size)
    else:
        from siamax.model import ModelSpec, get_spec  # pylint: disable=g-import-not-at-top

        spec = getattr(size, "spec", size)
        if not isinstance(spec, (ModelSpec, str)):
            raise InputError(f"size must be the model's input size, a model name, a ModelSpec or Params; got {size!r}")
        spec = get_spec(spec)
        if spec.channels != 1:
            raise InputError(f"log-mel images have one channel; the model takes {spec.channels}")
        s = spec.input_size
    if config is None:
        return MelConfig.square(s)
    if config.shape != (s, s):
        raise InputError(f"MelConfig makes {config.n_mels}x{config.frames} images; the model takes {s}x{s}")
    return config


def _decode(path: Path | io.BytesIO, rate: int):
    """``(float32 clip at rate, native rate, native length)`` or ``(None, reason, 0)``; ``path``: a path or a
    file object (``audio_bytes``)."""
    try:
        x, native = read_audio_native(path)
    except Exception as e:  # noqa: BLE001  any decoder failure is this file's reason to be skipped, reported
        return None, f"cannot be decoded as audio: {one_line(e)}", 0
    if not len(x):
        return None, "holds no samples", 0
    if not np.isfinite(x).all():
        return None, "holds NaN or infinite samples", 0
    return resample(x, native, rate), native, len(x)


def _decode_all(root: Path, paths: list[str], rate: int, progress: bool | None) -> list:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    show = len(paths) >= _PROGRESS_FROM if progress is None else progress
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: _decode(root / p, rate), paths)
        return list(tqdm(results, total=len(paths), desc=f"reading {root.name}", unit="clip", disable=not show))


def _scan(root: Path) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
    """([(class, [relative clip paths])], [(relative path, reason)]) of ``DIR/<class>/<clip>``."""
    dirs, files, broken = _listdir(root)
    clips = [f for f in files if is_audio_file(f)]
    if clips:
        raise InputError(
            f"{root} holds {len(clips)} clip(s) directly ({_some(clips)}); every clip must be in a folder "
            f"named after its class: {_EXPECTED}"
        )
    if not dirs:
        found = f"only {_some(files + [n for n, _ in broken])}" if files or broken else "it is empty"
        raise InputError(f"{root} holds no class folders ({found}); expected {_EXPECTED}")
    skipped = [(f, _not_audio(f)) for f in files] + broken
    classes = []
    for d in dirs:
        deeper, names, bad = _listdir(root / d)
        if deeper:
            raise InputError(
                f"{root / d / deeper[0]}: folders inside class folder {d!r}; audio folders are {_EXPECTED}"
            )
        skipped += [(f"{d}/{n}", why) for n, why in bad]
        skipped += [(f"{d}/{f}", _not_audio(f)) for f in names if not is_audio_file(f)]
        classes.append((d, [f"{d}/{f}" for f in names if is_audio_file(f)]))
    if not any(paths for _, paths in classes):
        raise InputError(f"{root}: none of its {len(dirs)} folder(s) holds a .wav or .flac file ({_some(dirs)})")
    return classes, skipped


def _not_audio(name: str) -> str:
    suffix = Path(name).suffix or "no extension"
    return f"not an audio file ({suffix}; reads {' '.join(AUDIO_SUFFIXES)})"


def audio_folder(
    path: str | os.PathLike,
    *,
    size=None,
    config: MelConfig | None = None,
    min_clips: int = 2,
    progress: bool | None = None,
) -> tuple[LabelledImages, AudioFolderReport]:
    """A folder of sound clips, one sub-folder per class, as a table of log-mel images, and what was done.

    Args:
      path: the folder, ``DIR/<class>/<clip>`` (module docstring).
      size: the model's input size S, or the model (a name, ModelSpec or Params: one channel); the
        images are then ``MelConfig.square(S)`` unless ``config`` is given (it must make S x S images).
        None: ``config`` (default ``MelConfig()``, 64 x 64).
      config: the front-end's parameters (``siamax.audio.MelConfig``); square, since the towers are.
      min_clips: the fewest clips a class may have (2: a positive pair needs two; 1 for a gallery).
      progress: show a progress bar; None shows one for folders of 1000 files or more.

    Returns:
      ``(table, report)``: the :class:`LabelledImages` (uint8 (N, S, S), classes in natural order of
      their folders, ``paths`` relative to ``path``, ``name`` the folder's name) and an
      :class:`AudioFolderReport`; nothing is printed.

    Raises:
      DataError: ``path`` does not exist or is not a folder.
      InputError: a tree not laid out as ``DIR/<class>/<clip>``, a class with fewer than ``min_clips``
        readable clips, a non-square config, bad arguments.
    """
    cfg = _config_for(size, config)
    if cfg.n_mels != cfg.frames:
        raise InputError(f"audio_folder needs square images (n_mels == frames), got {cfg.n_mels}x{cfg.frames}")
    if isinstance(min_clips, bool) or not isinstance(min_clips, (int, np.integer)) or min_clips < 1:
        raise InputError(f"min_clips must be a whole number >= 1, got {min_clips!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"audio folder {root} does not exist; expected a folder laid out as {_EXPECTED}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; expected a folder laid out as {_EXPECTED}")
    root = root.resolve()

    classes, skipped = _scan(root)
    files = [(c, p) for c, (_, paths) in enumerate(classes) for p in paths]
    decoded = _decode_all(root, [p for _, p in files], cfg.sample_rate, progress)
    kept, natives, lengths = [], [], []
    counts = np.zeros(len(classes), np.int64)
    for (c, p), (x, native, n) in zip(files, decoded):
        if x is None:
            skipped.append((p, native))
            continue
        kept.append((c, p, x))
        natives.append(native)
        lengths.append(n / native)
        counts[c] += 1
    few = np.flatnonzero(counts < min_clips)
    if len(few):
        names = [f"{classes[c][0]} ({counts[c]})" for c in few]
        lost = [p for p, _ in skipped if any(p.startswith(classes[c][0] + "/") for c in few)]
        raise InputError(
            f"{len(few)} class(es) in {root} have fewer than {min_clips} readable clip(s): {_some(names)}"
            + (f" (skipped there: {_some(lost)})" if lost else "")
            + f"; min_clips={min_clips} (a class needs two clips for a positive pair): add clips, remove those "
            "folders, or pass min_clips=1 (a gallery of one clip per class)"
        )
    waves = [x for _, _, x in kept]
    table = LabelledImages(
        images=clips_to_images(waves, cfg),
        labels=np.asarray([c for c, _, _ in kept], np.int32),
        class_names=tuple(name for name, _ in classes),
        groups=np.zeros(len(classes), np.int32),
        group_names=(FLAT_GROUP,),
        paths=tuple(p for _, p, _ in kept),
        name=root.name,
    )
    n_at_rate = np.asarray([len(x) for x in waves])
    rates, rate_counts = np.unique(natives, return_counts=True)
    by_count = np.argsort(-rate_counts, kind="stable")
    report = AudioFolderReport(
        root=str(root),
        layout="classes",
        config=cfg,
        skipped=tuple(skipped),
        n_clips=table.n_images,
        n_classes=table.n_classes,
        n_groups=table.n_groups,
        rates=tuple((int(rates[i]), int(rate_counts[i])) for i in by_count),
        n_resampled=sum(r != cfg.sample_rate for r in natives),
        n_cropped=int((n_at_rate > cfg.samples).sum()),
        n_padded=int((n_at_rate < cfg.samples).sum()),
        seconds=(float(np.min(lengths)), float(np.median(lengths)), float(np.max(lengths))),
    )
    return table, report


def audio_files(paths: Sequence[str | os.PathLike], *, size=None, config: MelConfig | None = None) -> jax.Array:
    """Single sound files (the clips to verify, the queries to identify) as uint8 ``(N, S, S)`` log-mel
    images on the device, by the same route as :func:`audio_folder`. A missing file raises DataError;
    one that cannot be decoded, InputError naming it."""
    cfg = _config_for(size, config)
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise InputError("no audio files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"audio file(s) not found: {_some(missing)}")
    return _decoded_to_images([_decode(p, cfg.sample_rate) for p in paths], paths, cfg)


@dataclasses.dataclass(frozen=True)
class DecodedClips:
    """Clips decoded on the host (waveforms at ``cfg.sample_rate``), not yet log-mel images
    (:func:`decode_clip_bytes`): converted for many requests at once by :func:`clips_to_model_format`."""

    waves: list
    cfg: MelConfig

    def __len__(self) -> int:
        return len(self.waves)


def decode_clip_bytes(
    blobs: Sequence[bytes], *, size=None, config: MelConfig | None = None, names: Sequence[str] | None = None
) -> DecodedClips:
    """:func:`audio_bytes` up to the log-mel images: decoded, resampled and checked."""
    cfg = _config_for(size, config)
    if not blobs:
        raise InputError("no audio clips given")
    names = list(names or [f"clip {i + 1}" for i in range(len(blobs))])
    decoded = [_decode(io.BytesIO(b), cfg.sample_rate) for b in blobs]
    _check_decoded(decoded, names)
    return DecodedClips([x for x, _, _ in decoded], cfg)


def clips_to_model_format(batch: Sequence[DecodedClips]) -> np.ndarray:
    """The log-mel images (uint8, N, n_mels, frames) of every clip of ``batch`` (one front-end), in order."""
    return np.asarray(clips_to_images([w for d in batch for w in d.waves], batch[0].cfg))


def audio_bytes(
    blobs: Sequence[bytes], *, size=None, config: MelConfig | None = None, names: Sequence[str] | None = None
) -> jax.Array:
    """:func:`audio_files` for clips held in memory (uploads): the same decoder and route, the file's bytes
    in place of its path. ``names``: what error messages call each one (default "clip 1", ...)."""
    return jax.device_put(clips_to_model_format([decode_clip_bytes(blobs, size=size, config=config, names=names)]))


def _check_decoded(decoded: list, names: Sequence) -> None:
    bad = [f"{p} ({why})" for p, (x, why, _) in zip(names, decoded) if x is None]
    if bad:
        raise InputError(f"not readable as audio: {_some(bad)}; siamax reads {', '.join(AUDIO_SUFFIXES)}")


def _decoded_to_images(decoded: list, names: Sequence, cfg: MelConfig) -> jax.Array:
    _check_decoded(decoded, names)
    return clips_to_images([x for x, _, _ in decoded], cfg)
