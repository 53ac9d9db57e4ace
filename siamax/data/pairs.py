"""Same/different pairs of flat image indices (``c * 20 + d``) within a split.

Two ways, one distribution: ``make_pairs`` builds the paper's fixed pair sets (30k/90k/150k, or any
n) on the host; ``sample_pairs`` draws fresh pairs inside ``jit`` so a long training run can gather
images on the device. Both call the same JAX kernel ``_draw``; they differ only in how alphabets and
labels are allotted (exactly per set vs. per batch, see below).

How a pair is drawn, given its alphabet ``a`` and label:

* image 1: a uniform character of alphabet ``a`` (among the split's characters), a uniform drawer
  of the split;
* same pair (label 1): the same character, a different drawer;
* different pair (label 0): another character, a uniform drawer. OPEN: the paper says "random";
  ``different="any"`` (default) takes it uniformly from all the split's other characters (any
  alphabet); ``different="same_alphabet"`` from the other characters of alphabet ``a``: harder
  negatives, closer to the within-alphabet one-shot test.

Pairs are drawn with replacement (the 150k set cannot be duplicate-free for the smallest
alphabets: Blackfoot has 14 characters x C(12, 2) drawer pairs = 924 distinct same pairs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from siamax.data import omniglot as og


class Pairs(NamedTuple):
    """Pairs of flat image indices and labels (1 = same character, 0 = different)."""

    i1: np.ndarray
    i2: np.ndarray
    label: np.ndarray


@flax.struct.dataclass
class PairArrays:
    """A split's characters grouped by alphabet, as device arrays (a pytree; pass it into ``jit``).

    ``chars[start[a]:start[a] + count[a]]`` are alphabet ``a``'s characters (0-based global indices);
    ``drawers`` are 0-based.
    """

    chars: jax.Array
    start: jax.Array
    count: jax.Array
    drawers: jax.Array
    different: str = flax.struct.field(pytree_node=False, default="any")
    same_fraction: float = flax.struct.field(pytree_node=False, default=0.5)

    @property
    def n_alphabets(self) -> int:
        return self.start.shape[0]


def pair_arrays(split, *, different: str = "any", same_fraction: float = 0.5) -> PairArrays:
    """``PairArrays`` for a ``siamax.data.splits.Split`` (or anything with ``chars`` and ``drawers``)."""
    if different not in ("any", "same_alphabet"):
        raise ValueError(f"different must be 'any' or 'same_alphabet', got {different!r}")
    if not 0.0 <= same_fraction <= 1.0:
        raise ValueError(f"same_fraction must be in [0, 1], got {same_fraction}")
    chars = np.asarray(split.chars, np.int32)
    chars = chars[np.argsort(og.CHAR_ALPHABET[chars], kind="stable")]
    _, start, count = np.unique(og.CHAR_ALPHABET[chars], return_index=True, return_counts=True)
    if len(split.drawers) < 2:
        raise ValueError(f"same pairs need 2 drawers, the split has {list(split.drawers)}")
    if different == "same_alphabet" and count.min() < 2:
        raise ValueError("different='same_alphabet' needs 2 characters in every alphabet")
    if len(chars) < 2:
        raise ValueError("different pairs need 2 characters")
    return PairArrays(
        chars=jnp.asarray(chars),
        start=jnp.asarray(start, jnp.int32),
        count=jnp.asarray(count, jnp.int32),
        drawers=jnp.asarray(np.asarray(split.drawers, np.int32) - 1),
        different=different,
        same_fraction=float(same_fraction),
    )


def _draw(key, arrays: PairArrays, alphabet, same):
    """Pairs for given alphabets (n,) and labels (n,) bool: the one kernel both samplers use."""
    n = alphabet.shape[0]
    k = jax.random.split(key, 5)
    start, count = arrays.start[alphabet], arrays.count[alphabet]
    n_chars, n_drawers = arrays.chars.shape[0], arrays.drawers.shape[0]
    j1 = jax.random.randint(k[0], (n,), 0, count)
    pos1 = start + j1
    if arrays.different == "same_alphabet":
        pos2 = start + (j1 + jax.random.randint(k[1], (n,), 1, count)) % count
    else:
        pos2 = (pos1 + jax.random.randint(k[1], (n,), 1, n_chars)) % n_chars
    pos2 = jnp.where(same, pos1, pos2)
    d1 = jax.random.randint(k[2], (n,), 0, n_drawers)
    d2 = jnp.where(
        same,
        (d1 + jax.random.randint(k[3], (n,), 1, n_drawers)) % n_drawers,
        jax.random.randint(k[4], (n,), 0, n_drawers),
    )
    i1 = arrays.chars[pos1] * og.N_DRAWERS + arrays.drawers[d1]
    i2 = arrays.chars[pos2] * og.N_DRAWERS + arrays.drawers[d2]
    return i1, i2, same.astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=2)
def sample_pairs(key, arrays: PairArrays, n: int):
    """``n`` fresh pairs ``(i1, i2, labels)`` (int32), pure and jittable (``n`` static).

    Per batch: exactly ``round(n * same_fraction)`` same pairs (in random positions) and a uniform
    random alphabet per pair, so in expectation the same distribution as ``make_pairs``.
    """
    k_alpha, k_same, k_draw = jax.random.split(key, 3)
    alphabet = jax.random.randint(k_alpha, (n,), 0, arrays.n_alphabets)
    same = jax.random.permutation(k_same, jnp.arange(n) < round(n * arrays.same_fraction))
    return _draw(k_draw, arrays, alphabet, same)


_draw_jit = jax.jit(_draw)


def make_pairs(split, n: int, *, same_fraction: float = 0.5, different: str = "any", seed: int = 0) -> Pairs:
    """A fixed, seeded set of ``n`` pairs, e.g. the paper's 30k / 90k / 150k sets.

    Every alphabet gets ``n // A`` pairs (the first ``n % A`` alphabets, in a seeded order, one more:
    exactly uniform for 30k/90k/150k over 30 alphabets); within each alphabet
    ``round(per_alphabet * same_fraction)`` are same pairs. Returned in a seeded random order.
    """
    arrays = pair_arrays(split, different=different, same_fraction=same_fraction)
    a = arrays.n_alphabets
    rng = np.random.default_rng(seed)
    per = np.full(a, n // a)
    per[rng.permutation(a)[: n % a]] += 1
    alphabet = np.repeat(np.arange(a), per)
    n_same = np.round(per * same_fraction).astype(int)
    same = np.concatenate([np.arange(p) < s for p, s in zip(per, n_same)]) if n else np.zeros(0, bool)
    i1, i2, label = _draw_jit(jax.random.key(seed), arrays, jnp.asarray(alphabet, jnp.int32), jnp.asarray(same))
    order = rng.permutation(n)
    return Pairs(*(np.asarray(x)[order] for x in (i1, i2, label)))
