"""Lake et al.'s 20 official one-shot runs (``all_runs.zip``): 20 runs x 20 trials = 400 trials."""

from __future__ import annotations

import functools
import io
import re
import zipfile

import numpy as np

from siamax.data.download import resolve
from siamax.data.omniglot import canonical_bool
from siamax.data.tasks import Task

# (alphabet, drawer of the training (support) images, drawer of the test (query) images) per run,
# found by matching pixels against images_evaluation.npz (data README; re-checked by the tests).
LAKE_RUNS = (
    ("Atlantean", 5, 8),
    ("Atlantean", 3, 2),
    ("Ge_ez", 3, 7),
    ("Ge_ez", 4, 2),
    ("Glagolitic", 6, 4),
    ("Glagolitic", 3, 2),
    ("Gurmukhi", 5, 2),
    ("Gurmukhi", 8, 3),
    ("Kannada", 2, 1),
    ("Kannada", 8, 3),
    ("Malayalam", 3, 7),
    ("Malayalam", 4, 2),
    ("Manipuri", 8, 4),
    ("Manipuri", 7, 3),
    ("Old_Church_Slavonic_(Cyrillic)", 4, 8),
    ("Old_Church_Slavonic_(Cyrillic)", 1, 2),
    ("Tengwar", 1, 4),
    ("Tengwar", 8, 7),
    ("Tibetan", 1, 3),
    ("Tibetan", 8, 5),
)
LAKE_ALPHABETS = tuple(sorted({a for a, _, _ in LAKE_RUNS}))
"""The 10 evaluation alphabets of Lake's runs: siamax's test alphabets, never trained on."""
LAKE_DRAWERS = tuple(sorted({d for _, a, b in LAKE_RUNS for d in (a, b)}))  # 1..8


def _png(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(io.BytesIO(zf.read(name))) as im:
        return canonical_bool(np.asarray(im.convert("1")))


def lake_runs(data_dir=None, *, download: bool = True) -> list[Task]:
    """Lake's 20 runs as tasks: support = ``training/classKK.png`` (class KK-1), query =
    ``test/itemKK.png``, answers from ``class_labels.txt``. Images bool 105x105, True = paper.

    Read from ``all_runs.zip`` in ``data_dir`` (default ``$SIAMAX_DATA_DIR``), downloaded there if
    missing unless ``download=False``."""
    path = resolve(["lake_runs"], data_dir, download=download)["lake_runs"]["omniglot_all_runs_zip"]
    return list(_lake_runs(str(path)))


@functools.lru_cache(maxsize=2)
def _lake_runs(path: str) -> tuple[Task, ...]:
    line = re.compile(r"^run(\d\d)/test/item(\d\d)\.png\s+run(\d\d)/training/class(\d\d)\.png$")
    tasks = []
    with zipfile.ZipFile(path) as zf:
        for r, (alphabet, _, _) in enumerate(LAKE_RUNS, 1):
            run = f"run{r:02d}"
            support = np.stack([_png(zf, f"{run}/training/class{k:02d}.png") for k in range(1, 21)])
            query = np.stack([_png(zf, f"{run}/test/item{k:02d}.png") for k in range(1, 21)])
            answers = np.full(20, -1)
            for text in zf.read(f"{run}/class_labels.txt").decode().splitlines():
                if not text.strip():
                    continue
                m = line.match(text.strip())
                if m is None or int(m[1]) != r or int(m[3]) != r:
                    raise ValueError(f"{path}: unexpected line in {run}/class_labels.txt: {text!r}")
                answers[int(m[2]) - 1] = int(m[4]) - 1
            if (answers < 0).any() or sorted(answers) != list(range(20)):
                raise ValueError(f"{path}: {run}/class_labels.txt does not map the 20 items onto the 20 classes")
            for a in (support, query, answers):
                a.setflags(write=False)
            tasks.append(Task(support=support, query=query, answers=answers, ink="dark", name=run, alphabet=alphabet))
    return tuple(tasks)
