"""Speaker folds of the Free Spoken Digit Dataset and the trials drawn from them (pure numpy, seeded).

* :func:`speaker_folds`: the 6 speakers in 3 folds of 4 training and 2 test speakers, every speaker a
  test speaker in exactly one fold (:class:`Fold`).
* :func:`held_out_takes`: the takes (0..49) of the training speakers kept out of training to choose the
  checkpoint and the threshold: validation never needs a test speaker, and training keeps all 4 speakers
  (one held-out validation speaker would leave 3: too few identities to learn speakers from).
* :func:`cross_speaker_tasks`: one-shot word recognition across speakers: the support holds one clip of
  every word from one speaker, the queries one clip of every word from another speaker, so a right
  answer cannot come from the speaker's voice.

``siamax.data.adapters.SpokenDigits`` builds its runs from these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from siamax.data.tasks import Task


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold: speaker indices (into ``siamax.data.fsdd.SPEAKERS``) to train on and to test on."""

    train: tuple[int, ...]
    test: tuple[int, ...]


def speaker_folds(n_speakers: int = 6, n_folds: int = 3) -> tuple[Fold, ...]:
    """``n_folds`` folds of the speakers ``0 .. n_speakers - 1`` in canonical order: fold ``k`` tests the
    ``k``-th block of ``n_speakers / n_folds`` speakers and trains on the others (fixed, no seed: FSDD's 6
    speakers in folds (george, jackson), (lucas, nicolas), (theo, yweweler))."""
    if n_folds < 2 or n_speakers % n_folds:
        raise ValueError(f"{n_speakers} speakers do not split into {n_folds} equal folds (need >= 2)")
    size = n_speakers // n_folds
    out = []
    for k in range(n_folds):
        test = tuple(range(k * size, (k + 1) * size))
        out.append(Fold(train=tuple(s for s in range(n_speakers) if s not in test), test=test))
    return tuple(out)


def held_out_takes(n_takes: int = 50, k: int = 10, seed: int = 0) -> np.ndarray:
    """``k`` of the takes ``0 .. n_takes - 1`` drawn from ``seed``, sorted: the validation takes."""
    if not 0 < k < n_takes:
        raise ValueError(f"hold out between 1 and {n_takes - 1} takes, got {k}")
    return np.sort(np.random.default_rng([seed, 22]).choice(n_takes, k, replace=False))


def cross_speaker_tasks(
    images,
    words,
    speakers,
    pool,
    *,
    speakers_of_task: Sequence[int],
    classes: Sequence[int],
    n_tasks: int,
    seed=0,
    name: str = "cross_speaker",
) -> list[Task]:
    """``n_tasks`` one-shot tasks over ``classes`` (words), each with a support clip of every word from one
    speaker and a query clip of every word from another.

    Args:
      images: (N, H, W) model-format images (uint8, ``ink="light"``).
      words, speakers: (N,) each image's word and speaker.
      pool: the rows that may be drawn (e.g. the test speakers' clips, or the held-out takes).
      speakers_of_task: >= 2 speakers; the ordered (support, query) pairs of distinct ones take turns.
      classes: the words of every task (N-way = their number); answers index this order.
      n_tasks: tasks; ``n_tasks * len(classes)`` trials.
      seed: which clips are drawn.
    """
    images, words, speakers = np.asarray(images), np.asarray(words), np.asarray(speakers)
    pool = np.asarray(pool)
    spk = [int(s) for s in speakers_of_task]
    orders = [(a, b) for a in spk for b in spk if a != b]
    if not orders:
        raise ValueError("cross-speaker tasks need at least 2 speakers")
    classes = [int(c) for c in classes]
    rows = {(s, c): pool[(speakers[pool] == s) & (words[pool] == c)] for s in spk for c in classes}
    empty = [k for k, v in rows.items() if not len(v)]
    if empty:
        raise ValueError(f"no clip of (speaker, word) {empty[:3]} in the pool")
    gen = np.random.default_rng(seed)
    out = []
    for t in range(n_tasks):
        a, b = orders[t % len(orders)]
        sup = [gen.choice(rows[(a, c)]) for c in classes]
        qry = [gen.choice(rows[(b, c)]) for c in classes]
        out.append(
            Task(
                support=images[sup],
                query=images[qry],
                answers=np.arange(len(classes)),
                ink="light",
                name=f"{name}{t:03d}: speaker {a} -> {b}",
                alphabet=f"{a}->{b}",
            )
        )
    return out
