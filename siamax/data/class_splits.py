"""Disjoint train / validation / test tables by class (for a folder of one's own images), kept in a manifest.

``class_splits(table, (0.7, 0.15, 0.15), seed=0, manifest="splits.json")`` draws the split once and
writes it; every later run with the same manifest reads it back, so the split never moves. The
manifest (JSON) holds the class names of each split, the seed, the fractions, the folder's name and a
fingerprint of the file list (sha256 of the sorted ``(class name, path)`` pairs, paths relative to
the folder, so a moved folder keeps its split). A folder whose files were added, removed or renamed
since then no longer matches, and the error says which classes changed.

The draw: the classes (``by="class"``) or whole groups (``by="group"``: e.g. alphabets, so test
classes come from groups never seen in training, as in Omniglot's protocol) are put in order of
their names and permuted by ``numpy.random.default_rng(seed)``; the parts get ``fractions`` of them
by largest remainder. A class is never split. Omniglot's paper split is ``siamax.data.paper_splits``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siamax.data.labelled import LabelledImages
from siamax.errors import DataError, InputError

PARTS = ("train", "validation", "test")
MANIFEST_FORMAT = "siamax.class_splits/1"
BY = ("class", "group")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSplits:
    """Three tables with disjoint classes, and how they were drawn.

    Attributes:
      train, validation, test: ``LabelledImages`` (a part with fraction 0 is an empty table).
      seed, fractions, by: the draw (module docstring).
      fingerprint: of the table's file list (``fingerprint(table)``).
      folder: the table's name (the folder's name for ``image_folder``).
    """

    train: LabelledImages
    validation: LabelledImages
    test: LabelledImages
    seed: int
    fractions: tuple[float, float, float]
    by: str
    fingerprint: str
    folder: str

    def manifest(self) -> dict:
        """The JSON-able manifest: class names per part plus what makes the split reproducible and checkable."""
        return {
            "format": MANIFEST_FORMAT,
            "folder": self.folder,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "by": self.by,
            "fingerprint": self.fingerprint,
            "n_images": sum(t.n_images for t in self.parts()),
            "classes": {name: list(t.class_names) for name, t in zip(PARTS, self.parts())},
        }

    def parts(self) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
        return self.train, self.validation, self.test

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest to ``path`` (atomically: a crash leaves the old file or the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=1) + "\n")
        os.replace(tmp, path)
        return path


def fingerprint(table: LabelledImages) -> str:
    """sha256 of the table's sorted ``(class name, path)`` pairs (class sizes when it has no paths)."""
    if table.paths:
        items = sorted(zip((table.class_names[c] for c in table.labels), table.paths))
    else:
        items = sorted(zip(table.class_names, (str(n) for n in table.class_counts())))
    return "sha256:" + hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        f = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        raise InputError(f"fractions must be three numbers (train, validation, test), got {fractions!r}") from None
    if len(f) != 3 or not all(np.isfinite(f)) or min(f) < 0 or f[0] <= 0 or abs(sum(f) - 1) > 1e-6:
        raise InputError(
            f"fractions must be three numbers (train, validation, test) >= 0 with train > 0 that sum to 1, "
            f"got {fractions!r}; e.g. (0.7, 0.15, 0.15), or (0.8, 0, 0.2) for no validation part"
        )
    return f


def _counts(n: int, fractions: tuple[float, float, float], unit: str, name: str) -> list[int]:
    """How many of ``n`` units each part gets: largest remainder, every part with a fraction > 0 at least one."""
    exact = np.asarray(fractions) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    empty = [p for p, f, k in zip(PARTS, fractions, counts) if f > 0 and k == 0]
    if empty:
        raise InputError(
            f"{name} has {n} {unit}(s), too few to split {n} ways as fractions {fractions}: the {' and '.join(empty)} "
            f"part(s) would get none; add {unit}s, or set those fractions to 0"
        )
    return counts.tolist()


def class_splits(
    table: LabelledImages,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    *,
    seed: int = 0,
    by: str = "class",
    manifest: str | os.PathLike | None = None,
    sizes: Sequence[int] | None = None,
) -> ClassSplits:
    """Train / validation / test tables with disjoint classes, drawn from ``seed`` (module docstring).

    Args:
      table: e.g. from ``image_folder``.
      fractions: of the classes (or groups) for (train, validation, test); >= 0, sum 1, train > 0.
      seed: the draw.
      by: "class" (classes drawn one by one) or "group" (whole groups: no group in two parts).
      manifest: a JSON file. Missing: the split is drawn and written there. Present: it is read
        back (``load_class_splits``), after checking it was drawn with these arguments from this
        same file list; so a rerun uses the same split and a changed folder is an error.
      sizes: how many classes (or groups) each part gets, instead of the largest-remainder counts of
        ``fractions`` (e.g. ``small_folder_sizes``); a part of size 0 is an empty table.
    """
    fractions = _check_fractions(fractions)
    if by not in BY:
        raise InputError(f"by must be one of {BY}, got {by!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    if manifest is not None and Path(manifest).exists():
        splits = load_class_splits(manifest, table)
        asked = {"seed": int(seed), "fractions": fractions, "by": by}
        held = {"seed": splits.seed, "fractions": splits.fractions, "by": splits.by}
        if asked != held:
            raise InputError(
                f"{manifest} holds a split drawn with {held}, not the {asked} asked for; pass those, use another "
                f"manifest path, or delete it to draw a new split"
            )
        return splits
    name = table.name or "the table"
    if by == "class":
        units = [[c] for c in range(table.n_classes)]
        keys = list(table.class_names)
    else:
        units = [np.flatnonzero(table.groups == g).tolist() for g in range(table.n_groups)]
        keys = list(table.group_names)
    if sizes is None:
        counts = _counts(len(units), fractions, by, name)
    else:
        counts = [int(k) for k in sizes]
        if len(counts) != 3 or min(counts) < 0 or sum(counts) != len(units) or counts[0] < 1:
            raise InputError(f"sizes {list(sizes)} must be 3 counts >= 0 (train >= 1) adding up to {len(units)} {by}es")
    order = sorted(range(len(units)), key=keys.__getitem__)  # by name: independent of the table's order
    drawn = [order[i] for i in np.random.default_rng(int(seed)).permutation(len(units))]
    bounds = np.cumsum([0, *counts])
    parts = [sorted(c for u in drawn[lo:hi] for c in units[u]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    splits = _make(table, [[table.class_names[c] for c in p] for p in parts], int(seed), fractions, by)
    if manifest is not None:
        splits.save(manifest)
    return splits


def small_folder_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Classes per part for ``n`` classes: the largest-remainder counts of ``fractions``, made usable for
    small folders. A validation part of fewer than 2 classes cannot choose anything (a one-shot trial and
    a different pair need 2 classes): its classes go to training, and validation falls back to held-out
    images of the training classes (``hold_out``). A test part of 1 class takes a second one from
    training where at least 3 stay (otherwise it goes to training: no test part, evaluate elsewhere)."""
    f = _check_fractions(fractions)
    exact = np.asarray(f) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    train, val, test = (int(c) for c in counts)
    if val < 2:
        train, val = train + val, 0
    if test == 1:
        train, test = (train - 1, 2) if train >= 3 else (train + 1, 0)
    return train, val, test


def hold_out(table: LabelledImages, *, seed: int = 0, per_class: int = 2, keep: int = 2):
    """``(rest, held)``: ``per_class`` images of every class with at least ``per_class + keep`` images
    held out (drawn from ``seed``), for validation on the training classes; the rest keeps every image
    of the other classes. ``held`` may be empty (``n_images == 0`` is impossible for a table: then it is
    ``None``)."""
    gen = np.random.default_rng(seed)
    held = []
    for c in range(table.n_classes):
        members = np.flatnonzero(table.labels == c)
        if len(members) >= per_class + keep:
            held.extend(gen.choice(members, per_class, replace=False).tolist())
    if not held:
        return table, None
    mask = np.zeros(table.n_images, bool)
    mask[held] = True
    name = table.name or "table"
    return table.take(np.flatnonzero(~mask), name=table.name), table.take(
        np.flatnonzero(mask), name=f"{name}, held out"
    )


def _make(table, names: list[list[str]], seed, fractions, by) -> ClassSplits:
    index = {n: i for i, n in enumerate(table.class_names)}
    tables = [
        table.of_classes([index[n] for n in part], name=f"{table.name}/{p}" if table.name else p)
        for p, part in zip(PARTS, names)
    ]
    return ClassSplits(
        *tables, seed=seed, fractions=fractions, by=by, fingerprint=fingerprint(table), folder=table.name
    )


def load_class_splits(path: str | os.PathLike, table: LabelledImages) -> ClassSplits:
    """The split a manifest holds, applied to ``table``, which must have the file list it was drawn from."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"class-split manifest {path} does not exist; class_splits(..., manifest=path) writes one"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{path} is not a readable class-split manifest ({e}); delete it to draw a new split"
        ) from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a class-split manifest (no format {MANIFEST_FORMAT!r})")
    missing = [k for k in ("seed", "fractions", "by", "fingerprint", "classes") if k not in m]
    if missing or not (isinstance(m["classes"], dict) and all(isinstance(m["classes"].get(p), list) for p in PARTS)):
        raise InputError(f"{path} is a damaged class-split manifest (missing {missing or 'classes'}); delete it")
    then = {p: list(m["classes"][p]) for p in PARTS}
    now = fingerprint(table)
    if m["fingerprint"] != now:
        old, new = {n for p in PARTS for n in then[p]}, set(table.class_names)
        change = []
        if new - old:
            change.append(f"classes added: {', '.join(sorted(new - old)[:5])}")
        if old - new:
            change.append(f"classes removed: {', '.join(sorted(old - new)[:5])}")
        change.append(f"{m.get('n_images')} images then, {table.n_images} now")
        raise InputError(
            f"{path} was drawn from a different file list than {table.name or 'this table'} has now "
            f"({'; '.join(change)}); restore the folder, or delete the manifest to draw a new split"
        )
    return _make(table, [then[p] for p in PARTS], int(m["seed"]), tuple(m["fractions"]), m["by"])
