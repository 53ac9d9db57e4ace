"""One-shot tasks: a support set, queries and the right answers, in the dataset's native form.

Generators (all seeded, all numpy on the host: tasks are small and built once):

* ``within_alphabet_tasks``: the paper's Omniglot protocol (one alphabet, n characters, drawer A's
  drawings are the support, drawer B's the queries), over any alphabets and drawers.
* ``validation_tasks``: the paper's "320 one-shot tasks" on a split, read as 320 *trials* (see there).
* ``episodes``: general N-way K-shot episodes over any (classes, examples) array.
* ``mnist_tasks``: the paper's MNIST 10-way one-shot transfer test, 400 trials, images 28 -> 35.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from siamax.data import omniglot as og


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A one-shot (or few-shot) classification task.

    Attributes:
      support: (S, H, W) candidate images, native form (Omniglot bool True = paper; MNIST uint8).
      query: (Q, H, W) images to classify; every query is one *trial*.
      answers: (Q,) int, the right class of each query, an index into the support *classes*.
      ink: "dark" (dark strokes on light paper) or "light"; passed to ``siamax.preprocess``.
      support_classes: (S,) class of each support image, or None for one image per class
        (class i = support[i]; then answers index ``support`` directly).
      name, alphabet: metadata for reports.
    """

    support: np.ndarray
    query: np.ndarray
    answers: np.ndarray
    ink: str
    support_classes: np.ndarray | None = None
    name: str = ""
    alphabet: str = ""

    def __post_init__(self):
        if self.support.ndim != 3 or self.query.ndim != 3 or self.support.shape[1:] != self.query.shape[1:]:
            raise ValueError(f"support {self.support.shape} and query {self.query.shape} must be (n, H, W)")
        if self.answers.shape != (self.query.shape[0],):
            raise ValueError(f"answers {self.answers.shape} must be (Q,) = ({self.query.shape[0]},)")
        if self.ink not in ("dark", "light"):
            raise ValueError(f"ink must be 'dark' or 'light', got {self.ink!r}")
        if self.support_classes is not None and self.support_classes.shape != (self.support.shape[0],):
            raise ValueError("support_classes must be (S,)")
        if not (0 <= self.answers.min() and self.answers.max() < self.n_way):
            raise ValueError(f"answers must lie in [0, {self.n_way})")

    @property
    def classes(self) -> np.ndarray:
        """(S,) class of each support image."""
        if self.support_classes is None:
            return np.arange(self.support.shape[0])
        return self.support_classes

    @property
    def n_way(self) -> int:
        return int(self.classes.max()) + 1


def _alphabet_chars(name: str, char_ids: Sequence[int] | None) -> np.ndarray:
    """0-based character indices of an alphabet, optionally restricted to ``char_ids`` (1-based)."""
    chars = og.alphabet_char_ids(name) - 1
    if char_ids is not None:
        chars = np.intersect1d(chars, np.asarray(char_ids) - 1)
    return chars


def within_alphabet_tasks(
    data: og.Omniglot,
    alphabets: Sequence[str],
    drawers: Sequence[int],
    *,
    per_alphabet: int = 2,
    n_way: int = 20,
    n_queries: int | None = None,
    char_ids: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Task]:
    """The paper's within-alphabet one-shot tasks (Lake's protocol), seeded.

    For each alphabet, ``per_alphabet`` times: draw ``n_way`` of its characters and two different
    drawers A, B (1-based, from ``drawers``); support = drawer A's drawings of those characters
    (class i = character i), queries = drawer B's drawings (``n_queries`` of them, default all
    ``n_way``, in random order). Each query is one trial: 2 x 20 x 10 alphabets = 400 trials.

    Args:
      char_ids: optional 1-based global ids restricting the characters (e.g. a split's characters).
    Raises:
      ValueError: an alphabet has fewer than ``n_way`` characters, fewer than two drawers are given,
        a drawer is outside 1..20, or ``n_queries > n_way``.
    """
    drawers = np.unique(np.asarray(drawers, dtype=int))
    if len(drawers) < 2:
        raise ValueError(f"within-alphabet tasks need 2 distinct drawers, got {drawers.tolist()}")
    if drawers.min() < 1 or drawers.max() > og.N_DRAWERS:
        raise ValueError(f"drawers are 1..{og.N_DRAWERS}, got {drawers.tolist()}")
    n_queries = n_way if n_queries is None else n_queries
    if not 1 <= n_queries <= n_way:
        raise ValueError(f"n_queries must be in 1..n_way={n_way}, got {n_queries}")
    rng = np.random.default_rng(seed)
    tasks = []
    for name in alphabets:
        chars = _alphabet_chars(name, char_ids)
        if len(chars) < n_way:
            raise ValueError(
                f"alphabet {name!r} has {len(chars)} characters available, a {n_way}-way task needs {n_way}"
            )
        for k in range(per_alphabet):
            picked = rng.choice(chars, n_way, replace=False)
            a, b = rng.choice(drawers, 2, replace=False) - 1
            q = rng.permutation(n_way)[:n_queries]
            tasks.append(
                Task(
                    support=data.images[picked, a],
                    query=data.images[picked[q], b],
                    answers=q,
                    ink=data.ink,
                    alphabet=name,
                    name=f"{name}#{k}:drawers{a + 1}->{b + 1}",
                )
            )
    return tasks


def validation_tasks(
    data: og.Omniglot,
    alphabets: Sequence[str],
    drawers: Sequence[int],
    *,
    trials: int = 320,
    n_way: int = 20,
    char_ids: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Task]:
    """The paper's early-stopping set: ``trials`` one-shot trials, spread evenly over the alphabets.

    OPEN choice: the paper's "320 one-shot learning tasks" is read as 320 *trials* (one query against
    ``n_way`` candidates each), i.e. 32 per validation alphabet = 2 tasks x 16 queries. Pass
    ``trials=6400`` for the other reading (320 tasks x 20 queries). Embedding reuse makes the cost
    almost independent of the number of trials (it is set by the number of distinct images).
    """
    if trials % len(alphabets):
        raise ValueError(f"{trials} trials do not divide evenly over {len(alphabets)} alphabets")
    per = trials // len(alphabets)
    tasks_per = math.ceil(per / n_way)
    if per % tasks_per:
        raise ValueError(f"{per} trials per alphabet do not split into {tasks_per} equal tasks")
    return within_alphabet_tasks(
        data,
        alphabets,
        drawers,
        per_alphabet=tasks_per,
        n_way=n_way,
        n_queries=per // tasks_per,
        char_ids=char_ids,
        seed=seed,
    )


def episodes(
    images: np.ndarray,
    *,
    n_way: int,
    k_shot: int = 1,
    n_query: int = 1,
    n_episodes: int,
    ink: str,
    groups: np.ndarray | None = None,
    seed: int = 0,
    name: str = "episode",
) -> list[Task]:
    """General N-way K-shot episodes.

    Args:
      images: (C, M, H, W): C classes with M examples each (for Omniglot, e.g.
        ``data.images[chars][:, drawers - 1]``).
      n_way, k_shot, n_query: classes per episode, support images per class, queries per class.
      groups: optional (C,) group of each class (e.g. its alphabet): then each episode's classes come
        from one group (within-alphabet), else from anywhere (Vinyals-style, much easier).
    Returns:
      Tasks with support (n_way*k_shot, H, W) ordered class-major, ``support_classes`` and queries
      (n_way*n_query). Scoring K > 1 shots: see ``siamax.evaluate.one_shot_accuracy(shots=...)``.
    """
    c, m = images.shape[:2]
    if k_shot + n_query > m:
        raise ValueError(
            f"{k_shot} shots + {n_query} queries need {k_shot + n_query} examples per class, only {m} exist"
        )
    pools = [np.arange(c)] if groups is None else [np.flatnonzero(groups == g) for g in np.unique(groups)]
    pools = [p for p in pools if len(p) >= n_way]
    if not pools:
        raise ValueError(
            f"no {'group' if groups is not None else 'set'} has {n_way} classes "
            f"(largest: {max(np.bincount(groups)) if groups is not None else c})"
        )
    rng = np.random.default_rng(seed)
    tasks = []
    for e in range(n_episodes):
        pool = pools[rng.integers(len(pools))]
        classes = rng.choice(pool, n_way, replace=False)
        ex = np.stack([rng.choice(m, k_shot + n_query, replace=False) for _ in range(n_way)])
        support = images[classes[:, None], ex[:, :k_shot]].reshape(-1, *images.shape[2:])
        query = images[classes[:, None], ex[:, k_shot:]].reshape(-1, *images.shape[2:])
        answers = np.repeat(np.arange(n_way), n_query)
        order = rng.permutation(len(answers))
        tasks.append(
            Task(
                support=support,
                query=query[order],
                answers=answers[order],
                ink=ink,
                support_classes=np.repeat(np.arange(n_way), k_shot),
                name=f"{name}{e}",
            )
        )
    return tasks


def upsample(images: np.ndarray, size: int = 35) -> np.ndarray:
    """Bilinear resize of uint8 (n, H, W) images to (n, size, size) with PIL (the paper: MNIST 28 -> 35)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def mnist_tasks(mnist, *, n_trials: int = 400, size: int = 35, seed: int = 0) -> list[Task]:
    """The paper's MNIST transfer test: 10-way one-shot, ``n_trials`` trials from the test set.

    Each trial is its own task: one random test image per digit as the support (class i = digit i),
    and one query of a random digit, a different image from that digit's support image. Images are
    upsampled 28 -> ``size`` (bilinear), as the paper does before its 35x35 model;
    ``siamax.preprocess`` then resizes to the model's input size. Native polarity (``ink="light"``).
    """
    rng = np.random.default_rng(seed)
    by_digit = [np.flatnonzero(mnist.test_labels == k) for k in range(10)]
    tasks = []
    for t in range(n_trials):
        picks = [rng.choice(ix, 2, replace=False) for ix in by_digit]
        digit = int(rng.integers(10))
        ids = np.array([p[0] for p in picks] + [picks[digit][1]])
        images = mnist.test_images[ids]
        if size != images.shape[-1]:
            images = upsample(images, size)
        tasks.append(
            Task(
                support=images[:10],
                query=images[10:],
                answers=np.array([digit]),
                ink=mnist.ink,
                name=f"mnist{t}",
                alphabet="MNIST",
            )
        )
    return tasks
