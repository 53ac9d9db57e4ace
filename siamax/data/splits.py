"""The paper's verification split of Omniglot, as a reproducible JSON manifest.

Default (OPEN choices, all configurable):

* train: the 30 official background alphabets x 12 drawers (964 characters, 60% of the images);
* validation: the 10 evaluation alphabets that Lake's runs do not use x 4 other drawers
  (the paper's "40 background alphabets" = 30 background + these 10);
* test: the 10 evaluation alphabets of Lake's 20 runs x 4 more drawers.

Drawers: a permutation of 1..20 drawn from ``seed`` gives 12 train, 4 validation and 4 test drawers,
disjoint. (Drawer numbers do not name the same person across characters, so the choice is arbitrary;
Lake's runs use drawers 1..8 of the test alphabets. They are never seen in training or validation
whatever the drawers, because their alphabets are not.) ``train_drawers`` > 12 lets the training
alphabets use more of their drawers (all 20, as in Lake's protocol, which trains on the whole
background set): the extra drawers are the ones the validation and test alphabets use, which shares
no image, because the alphabets are disjoint.

Rules enforced with a ``ValueError`` whatever the arguments: splits have disjoint alphabets (so no
image is ever in two splits); Lake's 10 alphabets never appear in training or validation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siamax.data import omniglot as og
from siamax.data.lake import LAKE_ALPHABETS

SPLITS = ("train", "validation", "test")
VALIDATION_ALPHABETS = tuple(a for a in og.EVALUATION_ALPHABETS if a not in LAKE_ALPHABETS)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: alphabets, the 1-based global ids of their characters, and 1-based drawers."""

    name: str
    alphabets: tuple[str, ...]
    char_ids: tuple[int, ...]
    drawers: tuple[int, ...]

    @property
    def chars(self) -> np.ndarray:
        """(C,) 0-based character indices (``id - 1``)."""
        return np.asarray(self.char_ids, np.int32) - 1

    @property
    def char_alphabets(self) -> np.ndarray:
        """(C,) global alphabet index (position in ``siamax.data.ALPHABETS``) of each character."""
        return og.CHAR_ALPHABET[self.chars]

    def flat_indices(self) -> np.ndarray:
        """(C * D,) flat image indices ``c * 20 + d`` (character-major) of every image in the split."""
        return (self.chars[:, None] * og.N_DRAWERS + np.asarray(self.drawers)[None, :] - 1).reshape(-1)

    @property
    def n_images(self) -> int:
        return len(self.char_ids) * len(self.drawers)


@dataclasses.dataclass(frozen=True)
class Splits:
    """train / validation / test splits, plus the seed they came from."""

    train: Split
    validation: Split
    test: Split
    seed: int | None = None

    def __post_init__(self):
        check(self)

    def __getitem__(self, name: str) -> Split:
        return getattr(self, name)

    def to_json(self) -> str:
        """The manifest: everything needed to rebuild the splits, human-readable."""
        return json.dumps(
            {
                "format": "siamax-omniglot-splits/1",
                "seed": self.seed,
                **{
                    s: {
                        "alphabets": list(self[s].alphabets),
                        "drawers": list(self[s].drawers),
                        "character_ids": list(self[s].char_ids),
                    }
                    for s in SPLITS
                },
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Splits:
        d = json.loads(text)
        if d.get("format") != "siamax-omniglot-splits/1":
            raise ValueError(f"not a siamax split manifest (format {d.get('format')!r})")
        return cls(
            **{
                s: Split(
                    s,
                    tuple(d[s]["alphabets"]),
                    tuple(int(i) for i in d[s]["character_ids"]),
                    tuple(int(x) for x in d[s]["drawers"]),
                )
                for s in SPLITS
            },
            seed=d["seed"],
        )

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())


def load_splits(path) -> Splits:
    """Read a manifest written by ``Splits.save`` (checked against the rules on the way in)."""
    return Splits.from_json(Path(path).read_text())


def _split(name: str, alphabets: Sequence[str], drawers: Sequence[int]) -> Split:
    ids = np.concatenate([og.alphabet_char_ids(a) for a in alphabets]) if alphabets else np.zeros(0, int)
    return Split(name, tuple(alphabets), tuple(int(i) for i in ids), tuple(sorted(int(d) for d in drawers)))


def check(splits: Splits) -> None:
    """Raise ``ValueError`` unless the splits follow the rules in the module docstring."""
    for s in SPLITS:
        sp = splits[s]
        for a in sp.alphabets:
            og.alphabet_id(a)
        if len(set(sp.alphabets)) != len(sp.alphabets) or len(set(sp.drawers)) != len(sp.drawers):
            raise ValueError(f"{s}: repeated alphabets or drawers")
        if not set(sp.drawers) <= set(range(1, og.N_DRAWERS + 1)):
            raise ValueError(f"{s}: drawers must be in 1..{og.N_DRAWERS}, got {sp.drawers}")
        expected = _split(s, sp.alphabets, sp.drawers).char_ids
        if sorted(sp.char_ids) != sorted(expected):
            raise ValueError(f"{s}: character ids do not match its alphabets")
    for s in ("train", "validation"):
        lake = set(splits[s].alphabets) & set(LAKE_ALPHABETS)
        if lake:
            raise ValueError(f"Lake's test alphabets {sorted(lake)} may not be used for {s}")
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        both = set(splits[a].alphabets) & set(splits[b].alphabets)
        if both:
            raise ValueError(f"alphabets {sorted(both)} are in both {a} and {b}")


def paper_splits(
    seed: int = 0,
    *,
    train_alphabets: Sequence[str] = og.BACKGROUND_ALPHABETS,
    validation_alphabets: Sequence[str] = VALIDATION_ALPHABETS,
    test_alphabets: Sequence[str] = LAKE_ALPHABETS,
    n_drawers: tuple[int, int, int] = (12, 4, 4),
    drawers: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None,
    train_drawers: int | None = None,
) -> Splits:
    """The paper's verification split (see the module docstring), deterministic from ``seed``.

    Args:
      seed: picks the drawers (a permutation of 1..20 cut into ``n_drawers`` parts).
      drawers: explicit 1-based (train, validation, test) drawers instead of the seeded choice.
      train_drawers: drawers per training character, the first ``train_drawers`` of the seeded
        permutation (None: ``n_drawers[0]``; up to 20, overlapping the drawers that the validation
        and test alphabets use).
    """
    if drawers is None:
        if sum(n_drawers) > og.N_DRAWERS:
            raise ValueError(f"{n_drawers} drawers asked, only {og.N_DRAWERS} exist")
        perm = np.random.default_rng(seed).permutation(og.N_DRAWERS) + 1
        cuts = np.cumsum((0,) + tuple(n_drawers))
        drawers = tuple(perm[cuts[i] : cuts[i + 1]] for i in range(3))
        if train_drawers is not None:
            if not 1 <= train_drawers <= og.N_DRAWERS:
                raise ValueError(f"train_drawers must be in 1..{og.N_DRAWERS}, got {train_drawers}")
            drawers = (perm[:train_drawers],) + drawers[1:]
    elif train_drawers is not None:
        raise ValueError("give either drawers or train_drawers, not both")
    return Splits(
        *(_split(s, a, d) for s, a, d in zip(SPLITS, (train_alphabets, validation_alphabets, test_alphabets), drawers)),
        seed=seed,
    )
