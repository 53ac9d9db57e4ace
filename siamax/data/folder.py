"""A folder of one's own images as the one dataset model: :func:`image_folder` -> ``LabelledImages``.

Layouts (``layout="auto"`` tells them apart; ``"classes"`` / ``"groups"`` insist on one):

* ``DIR/<class>/<image>``: one group, ``"all"``; class names are the folder names;
* ``DIR/<group>/<class>/<image>`` (Omniglot's alphabet/character tree): class names are
  ``"<group>/<class>"``, groups the top folders (the unit of within-group tasks and hard negatives).

Images in ``DIR`` itself, a folder holding both images and folders, top folders of both kinds, or
folders nested deeper are refused with an :class:`~siamax.errors.InputError` saying where. Hidden
entries (names starting with ``.``) and the operating systems' own ``__MACOSX``, ``Thumbs.db`` and
``desktop.ini`` are ignored. Folders and files are read in natural order (``2`` before ``10``).

Files: ``.png .jpg .jpeg .bmp .gif .tif .tiff .pgm .ppm .pnm`` (any case), any size of at least 5 x 5 pixels,
decoded with PIL into an array ``siamax.preprocess`` takes, which then does everything else (gray
conversion, polarity, padding to a square, antialiased resize: the one route, through
``siamax.data.labelled.model_format``): 1-bit -> bool, 8-bit gray -> uint8, 16-bit gray -> uint16,
RGB / RGBA as they are, palette and other modes -> RGB (RGBA if they carry transparency), 32-bit
integer gray in 0..65535 -> uint16, float gray in [0, 1] -> float32. GIFs and TIFFs give their
first frame; an EXIF orientation (phone photos) is applied first. Other files, files that cannot be
decoded, images under 5 x 5 and entries that lead nowhere (a symbolic link that loops, or to a file
that does not exist) are skipped, listed by name with the reason in the :class:`FolderReport`
(``report.skipped``, and ``report.summary()``, the line the ``siamax`` command prints): never dropped
in silence. A folder that cannot be listed is an :class:`~siamax.errors.InputError` naming it.

Large photos: an image whose long side exceeds ``4 * size`` is first reduced by the smallest integer
factor ``f`` that brings it to at most ``4 * size``, each output pixel the exact mean of an
``f x f`` box (partial boxes at the right and bottom edges; RGBA averaged with premultiplied alpha,
so the ink ``preprocess`` computes is the box mean of the full-size image's ink), stored as uint16.
This bounds memory (decoded images are held until all are read) and the resize's cost; the
antialiased resize that follows still shrinks by a factor between 2 and 4.

Speed: files are decoded in threads; the jitted ``preprocess`` compiles once per distinct decoded
shape (images are grouped by shape), so a folder of same-sized scans compiles once, and a folder of
many differently sized photos pays one compilation (~0.1-0.5 s on CPU) per size.

Colour (``color="auto"``): an image has colour when some pixel's channels differ by more than 8 of
255 (JPEG rounding of gray stays below; transparent pixels of RGBA are not looked at). Given a
model (a name, ModelSpec or Params), its ``channels`` decide (``color="auto"``; a contradicting
``"rgb"`` / ``"gray"`` is an error); given a bare size, the folder is loaded as RGB if any image
has colour, else gray. ``"rgb"`` / ``"gray"`` force it. The report says what was found
(``n_colour``) and what was chosen (``color``, ``color_detected``).

Polarity (``ink="auto"``): for each image, the mean gray value (BT.601 luma, in [0, 1]) of its
border, a frame ``max(1, min(H, W) // 16)`` pixels wide, is its *paper* brightness. For RGBA whose
border is mostly transparent (mean alpha < 0.5) the paper is the opposite of the ink, ``1 -`` the
alpha-weighted mean luma of the whole image. The median paper brightness over the folder decides:
above 0.5 + 0.1 -> ``"dark"`` ink on light paper (Omniglot, scans), below 0.5 - 0.1 -> ``"light"``
ink on dark (MNIST); in between, an error asks for ``ink=``. The report gives the decision, the
median and the images whose own border clearly says the opposite (paper brightness beyond 0.5 -+ 0.1 on
the other side; also named in its summary).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from siamax.data.labelled import LabelledImages, model_format
from siamax.errors import DataError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".pnm")
LAYOUTS = ("auto", "classes", "groups")
INKS = ("auto", "dark", "light")
COLORS = ("auto", "rgb", "gray")
FLAT_GROUP = "all"  # the one group of the DIR/<class>/<image> layout

_IGNORED = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_REDUCE_ABOVE = 4  # photos whose long side exceeds this many times the model's size are box-reduced first
_AMBIGUOUS = 0.1  # a median paper brightness within 0.5 +- this cannot tell the polarity
_PROGRESS_FROM = 1000  # files; smaller folders load without a progress bar
_MIN_SIDE = 5  # siamax.preprocess's smallest raw image
_SHOWN = 5  # names listed in one-line messages before "and N more"
_SIDE = {"dark": 1.0, "light": -1.0}  # which side of the middle grey the paper of each polarity is on
_EXPECTED = "DIR/<class>/<image> or DIR/<group>/<class>/<image>"
_COLOUR_TOLERANCE = 8 / 255  # channels further apart than this on some pixel: a colour image


@dataclasses.dataclass(frozen=True)
class FolderReport:
    """What :func:`image_folder` read, decided and skipped.

    Attributes:
      root: the folder, absolute; table paths are relative to it.
      layout: "classes" (``DIR/<class>/<image>``) or "groups" (``DIR/<group>/<class>/<image>``).
      ink: the polarity the images were converted with, "dark" or "light".
      ink_detected: True when ``ink="auto"`` chose it (else the caller gave it).
      paper: the median border (paper) brightness in [0, 1] that the auto rule reads (NaN: no image
        could tell, e.g. all fully transparent).
      ink_outliers: images (relative paths) whose own border clearly says the opposite polarity.
      skipped: ``(relative path, reason)`` for every file that was not read.
      n_images, n_classes, n_groups: what the table holds.
      n_shapes: distinct decoded image shapes (one ``preprocess`` compilation each).
      n_reduced: images box-reduced before preprocessing (long side > 4 x size).
      color: what the table holds, "rgb" ((N, S, S, 3)) or "gray" ((N, S, S)).
      color_detected: True when ``color="auto"`` chose it from the images (not the model or the caller).
      n_colour: images that have colour (channels that differ).
      ink_how: why ``ink`` was chosen when the caller decided it for the user (photos keep their stored
        values); empty: ``ink_detected`` says whether it was detected or given.
    """

    root: str
    layout: str
    ink: str
    ink_detected: bool
    paper: float
    ink_outliers: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    n_images: int
    n_classes: int
    n_groups: int
    n_shapes: int
    n_reduced: int
    color: str = "gray"
    color_detected: bool = False
    n_colour: int = 0
    ink_how: str = ""

    def summary(self) -> str:
        """One line: what was loaded, the polarity and why, and what was skipped (by name)."""
        how = self.ink_how or (
            f"detected from the borders, median paper brightness {self.paper:.2f}" if self.ink_detected else "given"
        )
        line = (
            f"{self.root}: {self.n_images} images of {self.n_classes} classes in {self.n_groups} groups "
            f"(layout {self.layout!r}), ink {self.ink!r} ({how}), {self.color} ({self._colour_reason()})"
        )
        if self.ink_outliers:
            line += (
                f"; {len(self.ink_outliers)} image(s) look like the opposite polarity: "
                f"{_some(self.ink_outliers)} (check them, or load them separately with ink=)"
            )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} file(s): " + _some([f"{p} ({why})" for p, why in self.skipped])
        return line

    def _colour_reason(self) -> str:
        found = f"{self.n_colour} of {self.n_images} images have colour"
        if self.color_detected:
            return f"detected: {found}"
        if self.color == "gray" and self.n_colour:
            return f"{found}, converted to gray: a gray model or color='gray'"
        return found


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _natural(name: str):
    """Sort key: digit runs compare as numbers ("class2" < "class10"), then by text (stable ties)."""
    return [(0, int(t), t) if t.isdecimal() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _listdir(folder: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(visible sub-folders, visible files, [(entry, why it cannot be read)]) of ``folder``, in natural
    order. An entry that cannot be told a file or a folder (a symbolic link that loops) is the third
    kind; a folder that cannot be listed is an InputError naming it."""
    dirs, files, broken = [], [], []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(".") or e.name in _IGNORED:
                    continue
                try:
                    is_dir = e.is_dir()
                except OSError as error:
                    broken.append((e.name, _unreadable(error)))
                    continue
                if not is_dir and e.is_symlink() and not os.path.exists(e.path):
                    broken.append((e.name, f"a symbolic link to {os.readlink(e.path)}, which does not exist"))
                    continue
                (dirs if is_dir else files).append(e.name)
    except OSError as error:
        raise InputError(f"cannot list the folder {folder}: {error.strerror or error}") from error
    return sorted(dirs, key=_natural), sorted(files, key=_natural), sorted(broken, key=lambda b: _natural(b[0]))


def _unreadable(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symbolic link that loops back on itself"
    return f"cannot be read: {error.strerror or error}"


def _not_image(name: str) -> str:
    suffix = Path(name).suffix or "no extension"
    return f"not an image file ({suffix}; reads {' '.join(IMAGE_SUFFIXES)})"


def _scan(root: Path, layout: str):
    """(layout, [(group, class, [relative image paths])], [(relative path, reason)]) of the tree."""
    dirs, files, broken = _listdir(root)
    images = [f for f in files if _is_image(f)]
    if images:
        where = "next to folders" if dirs else "and no class folders"
        raise InputError(
            f"{root} holds {len(images)} image(s) directly ({_some(images)}) {where}; every image must be in "
            f"a folder named after its class: {_EXPECTED}"
        )
    if not dirs:
        found = f"only {_some(files + [name for name, _ in broken])}" if files or broken else "it is empty"
        raise InputError(f"{root} holds no class folders ({found}); expected {_EXPECTED}")
    skipped = [(f, _not_image(f)) for f in files] + broken
    sub = {d: _listdir(root / d) for d in dirs}
    skipped += [(f"{d}/{name}", why) for d in dirs for name, why in sub[d][2]]
    with_images = [d for d in dirs if any(_is_image(f) for f in sub[d][1])]
    with_dirs = [d for d in dirs if sub[d][0]]
    both = [d for d in with_images if d in with_dirs]
    if both:
        raise InputError(
            f"{root / both[0]} holds both images and folders; expected {_EXPECTED} (a folder holds images "
            f"or folders, not both)"
        )
    if layout == "auto":
        if with_images and with_dirs:
            raise InputError(
                f"{root} mixes layouts: {_some(with_images)} hold images (class folders), {_some(with_dirs)} hold "
                f"folders (group folders); expected {_EXPECTED}, one of the two throughout"
            )
        if not (with_images or with_dirs):
            raise InputError(f"{root}: none of its {len(dirs)} folder(s) holds an image file ({_some(dirs)})")
        layout = "groups" if with_dirs else "classes"
    elif layout == "classes" and with_dirs:
        d = with_dirs[0]
        raise InputError(
            f"{root / d / sub[d][0][0]} is a folder inside class folder {d!r}: layout='classes' reads "
            f"DIR/<class>/<image>; this tree looks like DIR/<group>/<class>/<image>: pass layout='groups' or 'auto'"
        )
    elif layout == "groups" and with_images:
        raise InputError(
            f"group folder {root / with_images[0]} holds images directly: layout='groups' reads "
            f"DIR/<group>/<class>/<image>; this tree looks like DIR/<class>/<image>: pass layout='classes' or 'auto'"
        )
    classes = []
    if layout == "classes":
        for d in dirs:
            classes.append((FLAT_GROUP, d, [f"{d}/{f}" for f in sub[d][1] if _is_image(f)]))
            skipped += [(f"{d}/{f}", _not_image(f)) for f in sub[d][1] if not _is_image(f)]
        return layout, classes, skipped
    for g in dirs:
        class_dirs, loose, _ = sub[g]
        skipped += [(f"{g}/{f}", _not_image(f)) for f in loose]
        if not class_dirs:
            raise InputError(f"group folder {root / g} holds no class folders; expected DIR/<group>/<class>/<image>")
        for c in class_dirs:
            deeper, names, broken = _listdir(root / g / c)
            skipped += [(f"{g}/{c}/{name}", why) for name, why in broken]
            if deeper:
                raise InputError(
                    f"{root / g / c / deeper[0]}: folders nested deeper than DIR/<group>/<class>/<image>; "
                    f"move the images up a level, or point image_folder at a sub-folder"
                )
            classes.append((g, c, [f"{g}/{c}/{f}" for f in names if _is_image(f)]))
            skipped += [(f"{g}/{c}/{f}", _not_image(f)) for f in names if not _is_image(f)]
    return layout, classes, skipped


# ---------------------------------------------------------------------------------------------
# Decoding.


def _pixels(im) -> np.ndarray | str:
    """A PIL image as an array ``siamax.preprocess`` takes, or why it cannot be one."""
    mode = im.mode
    if mode == "1":
        x = np.asarray(im)
        return x.view(np.uint8) != 0  # PIL's True bytes are 0xFF; JAX wants canonical 0/1 bools
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)  # native byte order (I;16B is big-endian)
    if mode in ("I", "F"):
        x = np.asarray(im)
        if mode == "I" and x.min() >= 0 and x.max() <= 65535:
            return x.astype(np.uint16)  # 16-bit gray that a decoder widened to 32 bits
        if mode == "F" and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
            return x.astype(np.float32)
        return f"{'32-bit integer' if mode == 'I' else 'float'} pixels in [{x.min():g}, {x.max():g}] (unsupported)"
    alpha = "A" in mode or "a" in mode or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if alpha else "RGB"))


def _unit(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] with the scale ``siamax.preprocess`` gives each dtype."""
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype in (np.uint8, np.uint16):
        return x.astype(np.float32) / np.iinfo(x.dtype).max
    return x.astype(np.float32)


def _box_reduce(x: np.ndarray, f: int) -> np.ndarray:
    """Each ``f x f`` box (partial at the far edges) replaced by its mean, as uint16."""
    v = _unit(x)
    v = v if v.ndim == 3 else v[..., None]
    if v.shape[-1] == 4:
        v[..., :3] *= v[..., 3:]  # premultiplied: colour under transparent pixels carries no weight
    h, w = v.shape[:2]
    rows, cols = np.arange(0, h, f), np.arange(0, w, f)
    sums = np.add.reduceat(np.add.reduceat(v, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    y = sums / counts[..., None]
    if y.shape[-1] == 4:
        a = y[..., 3:]
        y[..., :3] = np.divide(y[..., :3], a, out=np.zeros_like(y[..., :3]), where=a > 0)
    y = np.round(np.clip(y, 0.0, 1.0) * 65535).astype(np.uint16)
    return y if x.ndim == 3 else y[..., 0]


def _paper(x: np.ndarray) -> float | None:
    """How bright the paper of one image is, in [0, 1] (module docstring); None if it cannot tell."""
    v = _unit(x)
    v = v if v.ndim == 3 else v[..., None]
    h, w, c = v.shape
    b = max(1, min(h, w) // 16)
    ring = np.concatenate([part.reshape(-1, c) for part in (v[:b], v[-b:], v[b:-b, :b], v[b:-b, -b:])])

    def luma(u):
        return u[..., :3] @ np.float32([0.299, 0.587, 0.114]) if c >= 3 else u[..., 0]

    if c != 4:
        return float(luma(ring).mean())
    if ring[:, 3].mean() >= 0.5:
        return float((luma(ring) * ring[:, 3]).sum() / ring[:, 3].sum())
    alpha = v[..., 3]
    if alpha.sum() == 0:
        return None  # fully transparent: nothing to go by
    return float(1.0 - (luma(v) * alpha).sum() / alpha.sum())  # transparent paper: the opposite of the ink


def _decode(path: Path | io.BytesIO, size: int):
    """(array, paper, reduced) for a readable image (a path, or a file object: ``image_bytes``), else
    (None, reason, False)."""
    from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(path) as im:
            im.seek(0)  # GIF / TIFF: the first frame
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show it as a viewer would
                im = ImageOps.exif_transpose(im)
            x = _pixels(im)
    except Exception as e:  # noqa: BLE001  any decoder failure is this file's reason to be skipped, reported
        return None, f"cannot be read: {type(e).__name__}: {e}".rstrip(": "), False
    if isinstance(x, str):
        return None, x, False
    if min(x.shape[:2]) < _MIN_SIDE:
        return None, f"{x.shape[0]}x{x.shape[1]} pixels, smaller than {_MIN_SIDE}x{_MIN_SIDE}", False
    f = -(-max(x.shape[:2]) // (_REDUCE_ABOVE * size))  # ceil: the long side ends at most 4 x size
    if f > 1:
        x = _box_reduce(x, f)
    return x, _paper(x), f > 1


def _has_colour(x: np.ndarray) -> bool:
    """Whether some (visible) pixel's channels differ by more than the tolerance."""
    if x.ndim != 3 or x.shape[-1] < 3:
        return False
    v = _unit(x)
    spread = v[..., :3].max(-1) - v[..., :3].min(-1)
    if x.shape[-1] == 4:
        spread = np.where(v[..., 3] > 0, spread, 0.0)
    return bool(spread.max() > _COLOUR_TOLERANCE)


def _check_choices(ink: str, color: str) -> None:
    if ink not in INKS:
        raise InputError(f"ink must be one of {INKS} ('dark': dark strokes on light paper), got {ink!r}")
    if color not in COLORS:
        raise InputError(f"color must be one of {COLORS} ('auto': from the images, or the model's), got {color!r}")


def _spec_and_size(size, channels: int = 1):
    """(what model_format takes, the input size S, the model's channels or None for a bare size) for an
    int size or a model (name, ModelSpec, Params); ``channels`` is the bare size's."""
    from siamax.model import ModelSpec, get_spec  # pylint: disable=g-import-not-at-top

    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 1:
            raise InputError(f"size must be the model's input size, a positive number of pixels; got {size}")
        # preprocess reads only input_size and channels; the smallest valid spec carries them.
        spec = ModelSpec(
            input_size=int(size), filters=(1,), kernels=(1,), pools=(False,), fc_units=0, channels=channels
        )
        return spec, int(size), None
    spec = getattr(size, "spec", size)
    if not isinstance(spec, (ModelSpec, str)):
        raise InputError(
            f"size must be the model's input size (e.g. 105 or 35), a model name, a ModelSpec or Params; got {size!r}"
        )
    spec = get_spec(spec)
    return size, spec.input_size, spec.channels


def _decided_channels(color: str, model_channels: int | None, n_colour: int, where) -> tuple[int, bool]:
    """(channels of the table, whether detection chose them)."""
    asked = {"rgb": 3, "gray": 1}.get(color)
    if model_channels is not None:
        if asked is not None and asked != model_channels:
            kind = "an RGB" if model_channels == 3 else "a gray"
            raise InputError(
                f"{where}: color={color!r}, but the model is {kind} one (channels={model_channels}); "
                f"pass color='auto' or a model with channels={asked}"
            )
        return model_channels, False
    if asked is not None:
        return asked, False
    return (3 if n_colour else 1), True


def _decided_ink(ink: str, papers: list[float | None], root: Path) -> tuple[str, float]:
    votes = np.asarray([p for p in papers if p is not None])
    median = float(np.median(votes)) if len(votes) else float("nan")
    if ink != "auto":
        return ink, median
    if not len(votes) or abs(median - 0.5) < _AMBIGUOUS:
        found = f"median border brightness {median:.2f}" if len(votes) else "every image is fully transparent"
        raise InputError(
            f"{root}: cannot tell the ink polarity from the image borders ({found}; needs < {0.5 - _AMBIGUOUS:.1f} "
            f"or > {0.5 + _AMBIGUOUS:.1f}); pass ink='dark' (dark strokes on light paper) or ink='light'"
        )
    return ("dark" if median > 0.5 else "light"), median


def image_folder(
    path: str | os.PathLike,
    *,
    size,
    layout: str = "auto",
    ink: str = "auto",
    min_images: int = 2,
    progress: bool | None = None,
    color: str = "auto",
) -> tuple[LabelledImages, FolderReport]:
    """A folder of images, one sub-folder per class, as a table in model format, and what was done.

    Args:
      path: the folder (``DIR``); see the module docstring for its layouts.
      size: the model's input size S (e.g. 105, or 35 for the small models), or the model itself (a
        name, ModelSpec or Params), whose ``input_size`` it is.
      layout: "auto" (tell from the tree), "classes" (``DIR/<class>/<image>``) or "groups"
        (``DIR/<group>/<class>/<image>``).
      ink: "auto" (from the image borders, module docstring), "dark" (dark strokes on light paper)
        or "light" (light strokes on dark).
      min_images: the fewest images a class may have: 2 (a positive pair needs two); 1 for a gallery
        of one image per class (e.g. the support set of a one-shot task).
      progress: show a progress bar; None (default) shows one for folders of 1000 files or more.
      color: "auto" (the model's channels; for a bare ``size``, RGB if any image has colour; module
        docstring), "rgb" or "gray".

    Returns:
      ``(table, report)``: the :class:`LabelledImages` (uint8 (N, S, S), or (N, S, S, 3) for RGB, ink = 255; classes in
      natural order of their folders, images in natural order within a class; ``paths`` relative to
      ``path`` with ``/`` separators; ``name`` the folder's name) and a :class:`FolderReport`, whose
      ``skipped`` and ``ink_outliers`` list what was skipped and which images' borders disagree with
      the polarity; ``report.summary()`` says it in one line. Nothing is printed or warned: showing
      the report is the caller's (the ``siamax`` command prints the summary once).

    Raises:
      DataError: ``path`` does not exist or is not a folder.
      InputError (a ValueError): an empty folder, a tree in no supported layout, a class with fewer
        than ``min_images`` readable images, polarity that ``ink="auto"`` cannot tell, bad arguments.
    """
    spec, s, model_channels = _spec_and_size(size)
    _check_choices(ink, color)
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if isinstance(min_images, bool) or not isinstance(min_images, (int, np.integer)) or min_images < 1:
        raise InputError(f"min_images must be a whole number >= 1, got {min_images!r}")
    root = Path(path).expanduser()
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"image folder {root} is a symbolic link that loops or leads nowhere ({os.readlink(root)})")
        raise DataError(f"image folder {root} does not exist; expected a folder laid out as {_EXPECTED}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; expected a folder laid out as {_EXPECTED}")
    root = root.resolve()

    layout, classes, skipped = _scan(root, layout)
    files = [(c, p) for c, (_, _, paths) in enumerate(classes) for p in paths]
    decoded = _decode_all(root, [p for _, p in files], s, progress)

    kept, papers, reduced = [], [], 0
    counts = np.zeros(len(classes), np.int64)
    for (c, p), (x, paper, was_reduced) in zip(files, decoded):
        if x is None:
            skipped.append((p, paper))
            continue
        kept.append((c, p, x))
        papers.append(paper)
        counts[c] += 1
        reduced += was_reduced
    few = np.flatnonzero(counts < min_images)
    if len(few):
        names = [f"{_class_name(layout, *classes[c][:2])} ({counts[c]})" for c in few]
        lost = [p for p, _ in skipped if any(p.startswith(_class_name(layout, *classes[c][:2]) + "/") for c in few)]
        raise InputError(
            f"{len(few)} class(es) in {root} have fewer than {min_images} readable image(s): {_some(names)}"
            + (f" (skipped there: {_some(lost)})" if lost else "")
            + f"; min_images={min_images} (a class needs two images for a positive pair): add images, remove "
            "those folders, or pass min_images=1 (a gallery of one image per class)"
        )
    asked = ink
    ink, median = _decided_ink(ink, papers, root)
    n_colour = sum(_has_colour(x) for _, _, x in kept)
    channels, color_detected = _decided_channels(color, model_channels, n_colour, root)
    if model_channels is None:
        spec, s, _ = _spec_and_size(s, channels)
    images, n_shapes = _to_model(spec, s, [x for _, _, x in kept], ink, channels)

    group_names = list(dict.fromkeys(g for g, _, _ in classes))
    table = LabelledImages(
        images=images,
        labels=np.asarray([c for c, _, _ in kept], np.int32),
        class_names=tuple(_class_name(layout, g, c) for g, c, _ in classes),
        groups=np.asarray([group_names.index(g) for g, _, _ in classes], np.int32),
        group_names=tuple(group_names),
        paths=tuple(p for _, p, _ in kept),
        name=root.name,
    )
    # An image votes against the polarity when its border is clearly on the other side of the middle grey.
    against = [p for (_, p, _), v in zip(kept, papers) if v is not None and (v - 0.5) * _SIDE[ink] < -_AMBIGUOUS]
    report = FolderReport(
        root=str(root),
        layout=layout,
        ink=ink,
        ink_detected=asked == "auto",
        paper=median,
        ink_outliers=tuple(against),
        skipped=tuple(skipped),
        n_images=table.n_images,
        n_classes=table.n_classes,
        n_groups=table.n_groups,
        n_shapes=n_shapes,
        n_reduced=reduced,
        color="rgb" if channels == 3 else "gray",
        color_detected=color_detected,
        n_colour=n_colour,
    )
    return table, report


def _class_name(layout: str, group: str, name: str) -> str:
    return name if layout == "classes" else f"{group}/{name}"


def _decode_all(root: Path, paths: list[str], size: int, progress: bool | None) -> list:
    """``_decode`` of every file, in order, in threads (PIL's decoders release the GIL)."""
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    show = len(paths) >= _PROGRESS_FROM if progress is None else progress
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: _decode(root / p, size), paths)
        return list(tqdm(results, total=len(paths), desc=f"reading {root.name}", unit="img", disable=not show))


def _to_model(spec, size: int, images: list[np.ndarray], ink: str, channels: int = 1) -> tuple[jax.Array, int]:
    """Model format of every image, through ``model_format`` once per distinct (shape, dtype)."""
    out, groups = _converted(spec, size, images, [ink] * len(images), channels)
    return jax.device_put(out), groups


def _converted(spec, size: int, images: list, inks: list[str], channels: int, pad: bool = False):
    """(uint8 model format (N, S, S[, 3]) of ``images`` (image i of ink ``inks[i]``), by ``model_format``
    once per distinct (shape, dtype, ink); the number of those). ``pad``: each such group of fewer than
    model_format's chunk padded to a power of two, so that a server's batches of any count compile a
    handful of programs per upload size, not one per count (a folder, read once, is not padded)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, (x, ink) in enumerate(zip(images, inks)):
        by_shape.setdefault((x.shape, x.dtype.str, ink), []).append(i)
    out = np.empty((len(images), size, size) + ((3,) if channels == 3 else ()), np.uint8)
    for (_, _, ink), index in by_shape.items():
        n = len(index)
        padded = index if not pad or n >= 1024 else index + index[:1] * ((1 << (n - 1).bit_length()) - n)
        out[index] = np.asarray(model_format(spec, np.stack([images[i] for i in padded]), ink))[:n]
    return out, len(by_shape)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Images decoded on the host and checked, not yet in model format (:func:`decode_bytes`): the
    first half of :func:`image_bytes`, so that a server can convert the uploads of many requests in one
    call (:func:`to_model_format`). ``images``: native arrays; ``ink`` and ``channels`` as decided for them."""

    images: list
    ink: str
    channels: int
    spec: object  # what model_format takes
    size: int

    def __len__(self) -> int:
        return len(self.images)


def to_model_format(batch: Sequence[Decoded], *, pad: bool = False) -> np.ndarray:
    """The model format of every image of ``batch`` (all for one model), in order: uint8 (N, S, S[, 3]),
    one conversion per distinct (shape, dtype, ink) across them all (``pad``: see ``_converted``)."""
    if not batch:
        raise InputError("no decoded images given")
    first = batch[0]
    images = [x for d in batch for x in d.images]
    inks = [d.ink for d in batch for _ in d.images]
    return _converted(first.spec, first.size, images, inks, first.channels, pad)[0]


def image_files(
    paths: Sequence[str | os.PathLike],
    *,
    size,
    ink: str = "auto",
    fallback: str | None = None,
    color: str = "auto",
) -> tuple[jax.Array, str]:
    """Single image files (the images to verify, the queries to identify) in model format, by the same
    route as :func:`image_folder`: ``(uint8 (N, S, S) on the device, or (N, S, S, 3) for RGB, the ink
    used)``. ``color``: as :func:`image_folder`'s (a model's channels decide under "auto").

    ``ink``: "auto" tells the polarity from these images' borders (their median, as for a folder);
    where the borders cannot tell, ``fallback`` (e.g. the polarity the model was trained with, which
    ``siamax train`` stores with it) is used if given. A file that is missing raises DataError; one
    that is not a readable image, InputError naming it.
    """
    _, s, _ = _spec_and_size(size)
    _check_choices(ink, color)
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise InputError("no image files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"image file(s) not found: {_some(missing)}")
    decoded = [_decode(p, s) for p in paths]
    return _decoded_to_model(decoded, paths, paths[0].parent, size, ink, fallback, color)


def decode_bytes(
    blobs: Sequence[bytes],
    *,
    size,
    names: Sequence[str] | None = None,
    ink: str = "auto",
    fallback: str | None = None,
    color: str = "auto",
) -> Decoded:
    """:func:`image_bytes` up to the model format: decoded, checked, ink and colour decided."""
    _, s, _ = _spec_and_size(size)
    _check_choices(ink, color)
    if not blobs:
        raise InputError("no images given")
    names = list(names or [f"image {i + 1}" for i in range(len(blobs))])
    decoded = [_decode(io.BytesIO(b), s) for b in blobs]
    return _decided(decoded, names, "the uploaded image(s)", size, ink, fallback, color)


def image_bytes(
    blobs: Sequence[bytes],
    *,
    size,
    names: Sequence[str] | None = None,
    ink: str = "auto",
    fallback: str | None = None,
    color: str = "auto",
) -> tuple[jax.Array, str]:
    """:func:`image_files` for images held in memory (uploads): the same decoder and route, the file's
    bytes in place of its path. ``names``: what error messages call each one (default "image 1", ...)."""
    d = decode_bytes(blobs, size=size, names=names, ink=ink, fallback=fallback, color=color)
    return jax.device_put(to_model_format([d])), d.ink


def _decoded_to_model(decoded: list, names: Sequence, where, size, ink: str, fallback, color: str):
    """The part of :func:`image_files` after decoding: ``(model-format images, ink)``."""
    d = _decided(decoded, names, where, size, ink, fallback, color)
    return jax.device_put(to_model_format([d])), d.ink


def _decided(decoded: list, names: Sequence, where, size, ink: str, fallback, color: str) -> Decoded:
    """Decoded images checked, their ink and channels decided (what :func:`to_model_format` converts)."""
    spec, s, model_channels = _spec_and_size(size)
    bad = [f"{p} ({why})" for p, (x, why, _) in zip(names, decoded) if x is None]
    if bad:
        raise InputError(f"not readable as images: {_some(bad)}; siamax reads {', '.join(IMAGE_SUFFIXES)}")
    try:
        ink, _ = _decided_ink(ink, [paper for _, paper, _ in decoded], where)
    except InputError:
        if ink != "auto" or fallback not in ("dark", "light"):
            raise
        ink = fallback
    n_colour = sum(_has_colour(x) for x, _, _ in decoded)
    channels, _ = _decided_channels(color, model_channels, n_colour, where)
    if model_channels is None:
        spec, s, _ = _spec_and_size(s, channels)
    return Decoded([x for x, _, _ in decoded], ink, channels, spec, s)
