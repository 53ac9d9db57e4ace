"""Packed datasets: a class folder written once as ArrayRecord shards of model-format examples, for data
larger than memory.

``pack(DATA, OUT, ...)`` (``siamax pack``) decodes a folder of images or sound clips (the layouts of
``siamax.data.image_folder`` and ``audio_folder``) by their route to the tower, in chunks of a few
hundred files, into ``OUT/shard-NNNNN.array_record`` (one record per example: its uint8 model-format
pixels, ``S*S`` or ``S*S*3`` bytes), each shard with a ``.json`` beside it (its files, what was
skipped, its sha256), then ``manifest.json`` (classes, groups, counts, shards, checksums, the
preprocessing) and ``index.npz`` (a label and a path per example). Memory stays bounded by the
chunk, whatever the folder's size. A rerun finishes the missing shards and rewrites a damaged one
(its checksum disagrees), naming it; ``pack.json``, written first, refuses a rerun with other settings.

``load_packed(OUT)`` returns the one dataset model, a ``LabelledImages`` whose ``images`` is a
:class:`PackedImages`: rows read from the shards on demand (random access), never the whole set.
Taking a part of it (``take``, class splits) is a view; small parts (validation, test trials) are read
when used, and reading more than ``MEMORY_BUDGET`` bytes at once is refused. The training samplers
stream batches from it (``siamax.data.samplers``).

The ink and colour of images are decided before writing, from up to ``DECIDE_FROM`` files spread over
the folder (their border brightness and colour, by ``image_folder``'s rules), unless given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from siamax.data import folder as fo
from siamax.data.labelled import LabelledImages
from siamax.errors import DataError, InputError

# The module, not the function siamax.data exports under the same name.
af = importlib.import_module("siamax.data.audio_folder")
FORMAT = 1
MANIFEST = "manifest.json"
PLAN = "pack.json"
INDEX = "index.npz"
SHARD_SIZE = 8192  # examples per shard (105x105 gray: ~90 MB)
CHUNK = 256  # files decoded at once: what bounds pack's memory
DECIDE_FROM = 512  # files looked at to decide the ink and colour of a folder of images
# One record per chunk (random access reads one chunk), zstd: fast to write and to read, ~10x smaller for ink.
_WRITER_OPTIONS = "group_size:1,zstd:1"
MEMORY_BUDGET = 2 * 2**30  # the most bytes of packed images read into memory at once (validation, test parts)


def size_text(n_bytes: float) -> str:
    """E.g. "43 KiB", "1.2 GiB": a size for a message."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}" if n_bytes < 10 * scale else f"{n_bytes / scale:,.0f} {unit}"
    return f"{n_bytes:.0f} bytes"


def is_packed(path) -> bool:
    """Whether ``path`` is a folder written by :func:`pack` (finished or not)."""
    p = Path(path).expanduser()
    return (p / MANIFEST).is_file() or (p / PLAN).is_file()


def _shard(i: int) -> str:
    return f"shard-{i:05d}.array_record"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class PackReport:
    """What :func:`pack` did: ``written`` shards this run (``rewritten`` of them were damaged), ``kept``
    finished ones from an earlier run; ``skipped`` files (path, reason)."""

    out: str
    n_images: int
    n_classes: int
    n_shards: int
    written: int
    images_written: int
    kept: int
    rewritten: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    seconds: float
    bytes: int

    def summary(self) -> str:
        did = f"{self.written} shard(s) written" + (f", {self.kept} kept from an earlier run" if self.kept else "")
        if self.rewritten:
            did += f" ({len(self.rewritten)} damaged and rewritten: {fo._some(list(self.rewritten))})"  # pylint: disable=protected-access
        skipped = f"; {len(self.skipped)} file(s) skipped" if self.skipped else ""
        rate = f", {self.images_written / self.seconds:,.0f} images/s" if self.written and self.seconds > 0 else ""
        return (
            f"{self.out}: {self.n_images} examples of {self.n_classes} classes in {self.n_shards} shard(s), "
            f"{size_text(self.bytes)}; {did}{skipped}{rate}"
        )


def _plan(root: Path, *, modality: str, layout: str, size: int, mel) -> tuple[list, list, list, dict]:
    """(classes [(group, class)], files [(class index, relative path)], skipped, the front-end's description)."""
    if modality == "audio":
        cfg = af._config_for(size, mel)  # pylint: disable=protected-access
        found, skipped = af._scan(root)  # pylint: disable=protected-access
        classes = [("all", name) for name, _ in found]
        files = [(c, p) for c, (_, paths) in enumerate(found) for p in paths]
        return classes, files, skipped, {"layout": "classes", "mel": dataclasses.asdict(cfg)}
    layout, found, skipped = fo._scan(root, layout)  # pylint: disable=protected-access
    classes = [(g, name) for g, name, _ in found]
    files = [(c, p) for c, (_, _, paths) in enumerate(found) for p in paths]
    return classes, files, skipped, {"layout": layout}


def folder_bytes(data, spec, *, modality: str, layout: str = "auto") -> tuple[int, int]:
    """(files, bytes their model format would take in memory) of the class folder ``data``, for ``spec``
    (a model, or an input size), from its listing alone."""
    _, s, channels = fo._spec_and_size(spec)  # pylint: disable=protected-access
    _, files, _, _ = _plan(Path(data).expanduser().resolve(), modality=modality, layout=layout, size=s, mel=None)
    return len(files), len(files) * s * s * (channels or 1)


def _decide(root: Path, files: list, spec, size: int, ink: str, color: str) -> tuple[str, int, str]:
    """(ink, channels, how they were decided) for a folder of images, from a spread sample of its files."""
    _, _, model_channels = fo._spec_and_size(spec)  # pylint: disable=protected-access
    if ink != "auto" and (color != "auto" or model_channels):
        return ink, model_channels or (3 if color == "rgb" else 1), "given"
    picks = np.unique(np.linspace(0, len(files) - 1, min(len(files), DECIDE_FROM)).round().astype(int))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda i: fo._decode(root / files[i][1], size), picks))  # pylint: disable=protected-access
    readable = [(x, paper) for x, paper, _ in decoded if x is not None]
    ink, _ = fo._decided_ink(ink, [p for _, p in readable], root)  # pylint: disable=protected-access
    n_colour = sum(fo._has_colour(x) for x, _ in readable)  # pylint: disable=protected-access
    channels, _ = fo._decided_channels(color, model_channels, n_colour, root)  # pylint: disable=protected-access
    return ink, channels, f"from {len(readable)} of the folder's images ({n_colour} with colour)"


def _convert(root: Path, chunk: list, *, modality: str, spec, size: int, ink: str, channels: int, mel):
    """(uint8 model-format images of the readable files of ``chunk``, their positions in it, skipped)."""
    cfg = af._config_for(size, mel) if modality == "audio" else None  # pylint: disable=protected-access
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        if cfg is not None:
            decoded = list(pool.map(lambda p: af._decode(root / p, cfg.sample_rate), chunk))  # pylint: disable=protected-access
        else:
            decoded = list(pool.map(lambda p: fo._decode(root / p, size), chunk))  # pylint: disable=protected-access
    kept = [i for i, d in enumerate(decoded) if d[0] is not None]
    skipped = [(chunk[i], d[1]) for i, d in enumerate(decoded) if d[0] is None]
    if not kept:
        return np.zeros((0,), np.uint8), kept, skipped
    if cfg is not None:
        from siamax.audio import clips_to_images  # pylint: disable=g-import-not-at-top

        x = np.asarray(clips_to_images([decoded[i][0] for i in kept], cfg))
    else:
        if channels == 3:  # a gray model's spec would convert to gray: the RGB spec of this size
            spec, _, _ = fo._spec_and_size(size, channels)  # pylint: disable=protected-access
        x, _ = fo._converted(spec, size, [decoded[i][0] for i in kept], [ink] * len(kept), channels)  # pylint: disable=protected-access
    return x, kept, skipped


def _finished(out: Path, i: int) -> str | None:
    """None when shard ``i`` is finished and intact; else why not ("missing", or what is damaged)."""
    meta_path, path = out / (_shard(i) + ".json"), out / _shard(i)
    if not meta_path.exists() and not path.exists():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "its .json is missing or unreadable"
    if not path.exists():
        return "its records are missing"
    if path.stat().st_size != meta.get("bytes") or _sha256(path) != meta.get("sha256"):
        return "its checksum disagrees with its .json"
    return None


def pack(
    data,
    out,
    *,
    size,
    modality: str = "ink",
    ink: str = "auto",
    color: str = "auto",
    layout: str = "auto",
    mel=None,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
) -> PackReport:
    """Write the class folder ``data`` into the packed dataset ``out`` (module docstring); resumable.

    ``size``: the model's input size or the model (name, ModelSpec, Params), as ``image_folder``'s;
    ``modality``: "ink", "photos" or "audio" (``siamax.data.adapters.folder_kind`` tells it); ``ink``:
    as ``image_folder``'s (photos: the caller passes "light", their stored values); ``color``: "auto",
    "rgb", "gray"; ``mel``: the front-end of a folder of clips (None: ``MelConfig.square`` of the size).
    """
    t0 = time.perf_counter()
    fo._check_choices(ink, color)  # pylint: disable=protected-access
    spec, s, _ = fo._spec_and_size(size)  # pylint: disable=protected-access
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pack reads a class folder DIR/<class>/<file>")
    root = root.resolve()
    out = Path(out).expanduser().resolve()
    if out == root or root in out.parents:
        raise InputError(f"the packed dataset {out} must not be inside the folder it packs ({root})")
    classes, files, skipped, frontend = _plan(root, modality=modality, layout=layout, size=s, mel=mel)
    if not files:
        raise InputError(f"{root}: no files to pack")
    if modality == "audio":
        ink, channels, how = "light", 1, "log-mel images: 255 = loudest"
    else:
        ink, channels, how = _decide(root, files, spec, s, ink, color)
    plan = {"modality": modality, "size": s, "channels": channels, "ink": ink, "ink_how": how, **frontend}

    def convert(lo: int, hi: int):
        return _convert(
            root,
            [p for _, p in files[lo:hi]],
            modality=modality,
            spec=spec,
            size=s,
            ink=ink,
            channels=channels,
            mel=mel,
        )

    return _write(out, plan, str(root), classes, files, skipped, convert, shard_size, progress, t0)


def pack_table(
    table: LabelledImages, out, *, identity: dict | None = None, shard_size: int = SHARD_SIZE, progress: bool = True
) -> PackReport:
    """Write a table (its ``images``: a device or NumPy array, or any array-like that reads slices, e.g.
    images generated on demand) as a packed dataset: the same format as :func:`pack`'s, in chunks.

    ``identity``: what the table is (e.g. its checksum), kept in ``pack.json`` and the manifest: a rerun
    with another identity is refused, and a caller reads it back (:func:`read_plan`) to say why first."""
    t0 = time.perf_counter()
    out = Path(out).expanduser().resolve()
    classes = [(table.group_names[g], name) for g, name in zip(table.groups, table.class_names)]
    paths = table.paths or [str(i) for i in range(table.n_images)]
    files = [(int(c), p) for c, p in zip(table.labels, paths)]
    plan = {"modality": "ink", "size": table.size, "channels": table.channels, "ink": "light", "ink_how": "a table"}
    plan["layout"] = "classes"  # the table's class names are kept whole
    if identity is not None:
        plan["identity"] = identity

    def convert(lo: int, hi: int):
        return np.asarray(table.images[lo:hi]), range(hi - lo), []

    return _write(out, plan, table.name or "table", classes, files, [], convert, shard_size, progress, t0)


def _write(
    out: Path, plan: dict, source: str, classes, files, skipped, convert, shard_size, progress, t0
) -> PackReport:
    """The shards (those not yet finished and intact), then the manifest, of a pack of ``files``:
    ``convert(lo, hi)`` -> (uint8 model-format images of the readable ones of ``files[lo:hi]``, their
    positions in that range, the skipped (path, reason))."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
    listing = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    plan = {"format": FORMAT, "source": source, "files_sha256": listing, "n_files": len(files), **plan}
    plan["shard_size"] = shard_size
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: give a folder for the packed dataset")
    if (out / PLAN).exists():
        theirs = json.loads((out / PLAN).read_text())
        changed = sorted(k for k in set(plan) | set(theirs) if k != "ink_how" and plan.get(k) != theirs.get(k))
        if changed:
            raise InputError(
                f"{out} holds a pack of other files or settings ({', '.join(changed)} differ); use another OUT, "
                "or repeat the original command to finish it"
            )
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is a folder with other files in it; give a new or empty folder for the pack")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PLAN, plan)

    s = plan["size"]
    shape = (s, s, 3) if plan["channels"] == 3 else (s, s)
    n_shards = -(-len(files) // shard_size)
    kept_shards, rewritten, written, n_written = 0, [], 0, 0
    name = Path(source).name
    bar = tqdm(total=len(files), unit="file", desc=f"packing {name}", disable=not progress, dynamic_ncols=True)
    for i in range(n_shards):
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(files))
        why = _finished(out, i)
        if why is None:
            kept_shards += 1
            bar.update(hi - lo)
            continue
        if why != "missing":
            rewritten.append(f"{_shard(i)} ({why})")
            bar.write(f"{_shard(i)} is damaged ({why}): rewriting it", file=sys.stderr)
        tmp = out / (_shard(i) + ".tmp")
        writer = array_record_module.ArrayRecordWriter(str(tmp), _WRITER_OPTIONS)
        rows, lost = [], []
        for at in range(lo, hi, CHUNK):
            x, kept, bad = convert(at, min(at + CHUNK, hi))
            for j, k in enumerate(kept):
                writer.write(np.ascontiguousarray(x[j]).tobytes())
                rows.append(at + k)
            lost += bad
            bar.update(min(at + CHUNK, hi) - at)
        writer.close()
        os.replace(tmp, out / _shard(i))
        meta = {"rows": rows, "skipped": lost, "bytes": (out / _shard(i)).stat().st_size}
        meta["sha256"] = _sha256(out / _shard(i))
        _write_json(out / (_shard(i) + ".json"), meta)
        written += 1
        n_written += len(rows)
    bar.close()

    manifest = _manifest(out, plan, classes, files, skipped, n_shards, shape)
    return PackReport(
        out=str(out),
        n_images=manifest["n_images"],
        n_classes=len(manifest["class_names"]),
        n_shards=n_shards,
        written=written,
        images_written=n_written,
        kept=kept_shards,
        rewritten=tuple(rewritten),
        skipped=tuple(tuple(x) for x in manifest["skipped"]),
        seconds=time.perf_counter() - t0,
        bytes=sum(sh["bytes"] for sh in manifest["shards"]),
    )


def _manifest(out: Path, plan: dict, classes: list, files: list, skipped: list, n_shards: int, shape) -> dict:
    """Assemble (and write) manifest.json and index.npz from the finished shards."""
    shards, rows = [], []
    skipped = [list(x) for x in skipped]
    for i in range(n_shards):
        meta = json.loads((out / (_shard(i) + ".json")).read_text())
        shards.append({"file": _shard(i), "count": len(meta["rows"]), "bytes": meta["bytes"], "sha256": meta["sha256"]})
        rows += meta["rows"]
        skipped += meta["skipped"]
    by_class = np.asarray([files[r][0] for r in rows], np.int64)
    present = np.unique(by_class)  # a class whose every file was skipped has no examples: dropped
    relabel = np.full(len(classes), -1, np.int64)
    relabel[present] = np.arange(len(present))
    groups_used = list(dict.fromkeys(classes[c][0] for c in present))
    layout = plan["layout"]
    manifest = {
        **plan,
        "shape": list(shape),
        "n_images": len(rows),
        "class_names": [fo._class_name(layout, *classes[c]) for c in present],  # pylint: disable=protected-access
        "groups": [groups_used.index(classes[c][0]) for c in present],
        "group_names": groups_used,
        "class_counts": np.bincount(relabel[by_class], minlength=len(present)).tolist() if rows else [],
        "shards": shards,
        "skipped": skipped,
        "name": Path(plan["source"]).name,
    }
    paths = np.asarray([files[r][1].encode() for r in rows], dtype=bytes) if rows else np.zeros(0, "S1")
    tmp = out / (INDEX + ".tmp.npz")
    np.savez(tmp, labels=relabel[by_class].astype(np.int32), paths=paths)
    os.replace(tmp, out / INDEX)
    _write_json(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading


class _Shards:
    """The shards' readers, opened on first use (one ``ArrayRecordReader`` each, without read-ahead:
    random access), shared by every view of one pack and by the threads that read from it."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int]):
        self.paths = tuple(str(p) for p in paths)
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
        self._readers: list = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _reader(self, i: int):
        if self._readers[i] is None:
            with self._lock:
                if self._readers[i] is None:
                    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

                    self._readers[i] = array_record_module.ArrayRecordReader(
                        self.paths[i], "readahead_buffer_size:0,max_parallelism:1"
                    )
        return self._readers[i]

    def read(self, rows: np.ndarray) -> list[bytes]:
        """The records of global ``rows``, in that order: one read per shard touched (ArrayRecord's
        own data source starts a thread pool per call, which costs more than a small batch's reads)."""
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out: list = [None] * len(rows)
        for i in np.unique(shard):
            at = np.flatnonzero(shard == i)
            for j, record in zip(at, self._reader(int(i)).read((rows[at] - self.starts[i]).tolist())):
                out[j] = record
        return out


class PackedImages:
    """Model-format images in a packed dataset's shards, as rows read on demand (an array-like of
    uint8 ``(N, S, S)`` or ``(N, S, S, 3)``).

    ``x[index]`` (an int array, a slice) is a view of those rows; :meth:`read` reads rows into a
    NumPy array; ``np.asarray(x)`` reads every row of the view, refused above ``MEMORY_BUDGET``.
    Reading is thread-safe (Grain reads from threads).
    """

    def __init__(self, shards: _Shards, shape: Sequence[int], rows: np.ndarray | None = None):
        self._shards = shards
        self._example = tuple(int(v) for v in shape)
        self.rows = rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._shards) if self.rows is None else len(self.rows), *self._example)

    dtype = np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 1 + len(self._example)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def _global(self, index) -> np.ndarray:
        index = np.asarray(index).astype(np.int64, copy=False)
        return index if self.rows is None else self.rows[index]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.read([int(index)])[0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        return PackedImages(self._shards, self._example, self._global(index))

    def read(self, index) -> np.ndarray:
        """The rows ``index`` (of this view) as uint8 ``(len(index), S, S[, 3])``, in that order."""
        rows = self._global(np.asarray(index).reshape(-1))
        flat = np.frombuffer(b"".join(self._shards.read(rows)), np.uint8) if len(rows) else np.zeros(0, np.uint8)
        return flat.reshape(len(rows), *self._example)

    def __array__(self, dtype=None, copy=None):
        if self.nbytes > MEMORY_BUDGET:
            raise InputError(
                f"reading {len(self):,} packed images ({size_text(self.nbytes)}) into memory at once is refused (the "
                f"budget is {size_text(MEMORY_BUDGET)}): this step needs the streaming path, or a smaller part"
            )
        out = np.concatenate([self.read(np.arange(i, min(i + 8192, len(self)))) for i in range(0, len(self), 8192)])
        return out if dtype is None else out.astype(dtype)


def read_plan(path) -> dict | None:
    """The settings a pack was started with (its ``pack.json``, written first: finished or not), or None
    where ``path`` holds no pack."""
    p = Path(path).expanduser() / PLAN
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p} is unreadable ({e}); give another folder for the pack") from e


def read_manifest(path) -> dict:
    """A packed dataset's manifest.json; DataError for an unfinished or unreadable pack."""
    root = Path(path).expanduser().resolve()
    if not (root / MANIFEST).is_file():
        if (root / PLAN).is_file():
            raise DataError(f"{root} is an unfinished pack: rerun the 'siamax pack' command that started it")
        raise DataError(f"{root} is not a packed dataset (no {MANIFEST}); make one with 'siamax pack DATA {root}'")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{root}/{MANIFEST} is unreadable ({e}); rerun 'siamax pack'") from e
    if manifest.get("format") != FORMAT:
        raise DataError(f"{root}: pack format {manifest.get('format')!r}, this siamax reads {FORMAT}; pack again")
    return manifest


@dataclasses.dataclass(frozen=True)
class PackedReport:
    """What the commands say of a packed dataset they read (the counterpart of ``FolderReport``):
    ``root`` is the folder it was packed from (its ``paths`` are relative to it), ``pack`` the pack."""

    root: str
    pack: str
    n_images: int
    n_classes: int
    n_groups: int
    size: int
    channels: int
    modality: str
    ink: str
    n_shards: int
    skipped: tuple[tuple[str, str], ...] = ()
    ink_outliers: tuple[str, ...] = ()  # not measured when packing: none reported

    @classmethod
    def of(cls, path, manifest: dict) -> PackedReport:
        return cls(
            root=manifest["source"],
            pack=str(Path(path).expanduser().resolve()),
            n_images=manifest["n_images"],
            n_classes=len(manifest["class_names"]),
            n_groups=len(manifest["group_names"]),
            size=manifest["size"],
            channels=manifest["channels"],
            modality=manifest["modality"],
            ink=manifest["ink"],
            n_shards=len(manifest["shards"]),
            skipped=tuple(tuple(x) for x in manifest["skipped"]),
        )

    def summary(self) -> str:
        colour = "RGB" if self.channels == 3 else "gray"
        skipped = f"; {len(self.skipped)} file(s) were skipped when packing" if self.skipped else ""
        return (
            f"{self.pack}: a packed dataset ({self.modality}) of {self.n_images} examples of {self.n_classes} classes "
            f"in {self.n_groups} groups, {self.size}x{self.size} {colour}, ink {self.ink}, in {self.n_shards} "
            f"shard(s), read from disk as it is used{skipped}"
        )


def load_packed(path, spec=None) -> tuple[LabelledImages, dict]:
    """The packed dataset ``path`` as the one dataset model (images read on demand) and its manifest.

    ``spec`` (a model: name, ModelSpec, Params): refuse a pack made for another input size or channels.
    Raises DataError for an unfinished or damaged pack (missing shard, wrong size), naming what to rerun.
    """
    root = Path(path).expanduser().resolve()
    manifest = read_manifest(root)
    try:
        index = np.load(root / INDEX)
        labels, paths = index["labels"], index["paths"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{root}/{INDEX} is unreadable ({e}); rerun 'siamax pack'") from e
    for sh in manifest["shards"]:
        p = root / sh["file"]
        if not p.is_file() or p.stat().st_size != sh["bytes"]:
            raise DataError(f"{root}: shard {sh['file']} is missing or damaged; rerun 'siamax pack' to rewrite it")
    if spec is not None:
        _, s, channels = fo._spec_and_size(spec)  # pylint: disable=protected-access
        if s != manifest["size"] or (channels or 1) != manifest["channels"]:
            raise InputError(
                f"{root} was packed for {manifest['size']}x{manifest['size']} images with {manifest['channels']} "
                f"channel(s); the model takes {s}x{s} with {channels or 1}: pack again with --image-size {s}"
            )
    shards = _Shards([root / sh["file"] for sh in manifest["shards"]], [sh["count"] for sh in manifest["shards"]])
    images = PackedImages(shards, manifest["shape"])
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} records but {len(labels)} labels; rerun 'siamax pack'")
    table = LabelledImages(
        images=images,
        labels=labels,
        class_names=tuple(manifest["class_names"]),
        groups=np.asarray(manifest["groups"], np.int32),
        group_names=tuple(manifest["group_names"]),
        paths=tuple(p.decode() for p in paths),
        name=manifest["name"],
    )
    return table, manifest
