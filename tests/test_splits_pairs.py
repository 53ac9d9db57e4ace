"""Splits (disjoint, reproducible, Lake's alphabets protected), pair sets and the task generators."""

import jax
import numpy as np
import pytest

from siamax import data as D
from siamax.data import omniglot as og


@pytest.fixture(scope="module")
def splits():
    return D.paper_splits(seed=0)


def test_paper_splits_shape(splits):
    assert len(splits.train.alphabets) == 30 and len(splits.train.char_ids) == 964
    assert set(splits.validation.alphabets) == set(D.VALIDATION_ALPHABETS) and len(splits.validation.alphabets) == 10
    assert set(splits.test.alphabets) == set(D.LAKE_ALPHABETS)
    assert [len(splits[s].drawers) for s in ("train", "validation", "test")] == [12, 4, 4]
    drawers = [set(splits[s].drawers) for s in ("train", "validation", "test")]
    assert set.union(*drawers) == set(range(1, 21)) and sum(map(len, drawers)) == 20
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not set(splits[a].alphabets) & set(splits[b].alphabets)
        assert not set(splits[a].char_ids) & set(splits[b].char_ids)
    assert splits.train.n_images / 32460 == pytest.approx(0.356, abs=0.01)  # 964*12 of 1623*20


def test_flat_indices_and_alphabets(splits, omniglot):
    idx = splits.test.flat_indices()
    assert len(idx) == len(set(idx)) == splits.test.n_images
    c, d = np.divmod(idx, 20)
    assert set(c + 1) == set(splits.test.char_ids) and set(d + 1) == set(splits.test.drawers)
    assert np.array_equal(omniglot.flat_images[idx[5]], omniglot.images[c[5], d[5]])
    assert {og.ALPHABETS[a] for a in splits.test.char_alphabets} == set(D.LAKE_ALPHABETS)


def test_train_drawers_extend_the_seeded_permutation(splits):
    full = D.paper_splits(seed=0, train_drawers=20)
    assert full.train.drawers == tuple(range(1, 21))
    assert (full.validation, full.test) == (splits.validation, splits.test)
    more = D.paper_splits(seed=0, train_drawers=14)
    assert set(splits.train.drawers) < set(more.train.drawers) and len(more.train.drawers) == 14
    assert not set(full.train.alphabets) & (set(full.validation.alphabets) | set(full.test.alphabets))


def test_splits_reproducible_and_manifest_roundtrip(splits, tmp_path):
    assert D.paper_splits(seed=0).to_json() == splits.to_json()
    assert D.paper_splits(seed=1).train.drawers != splits.train.drawers
    splits.save(tmp_path / "splits.json")
    again = D.load_splits(tmp_path / "splits.json")
    assert again == splits and again.to_json() == splits.to_json()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_alphabets=og.BACKGROUND_ALPHABETS + ("Tibetan",)), "Lake"),
        (dict(validation_alphabets=("Angelic", "Tengwar")), "Lake"),
        (dict(test_alphabets=("Angelic",)), "both"),
        (dict(drawers=((1, 2, 3), (3, 4), (5, 0))), "drawers"),
        (dict(train_drawers=21), "train_drawers"),
        (dict(n_drawers=(12, 5, 4)), "drawers"),
        (dict(train_alphabets=("Klingon",)), "unknown"),
    ],
)
def test_split_rules_enforced(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.paper_splits(**kwargs)


def test_tampered_manifest_rejected(splits):
    text = splits.to_json().replace('"Angelic"', '"Tengwar"', 1)
    with pytest.raises(ValueError):
        D.Splits.from_json(text)


# ---- pairs ---------------------------------------------------------------------------------------


def _check_pairs(split, i1, i2, label):
    images = set(split.flat_indices().tolist())
    assert set(i1.tolist()) <= images and set(i2.tolist()) <= images
    same = label == 1
    assert (i1[same] // 20 == i2[same] // 20).all() and (i1[same] != i2[same]).all()
    assert (i1[~same] // 20 != i2[~same] // 20).all()


def test_fixed_pairs_balanced_and_uniform_per_alphabet(splits):
    p = D.make_pairs(splits.train, 30000, seed=0)
    assert len(p.i1) == 30000 and p.label.sum() == 15000
    _check_pairs(splits.train, p.i1, p.i2, p.label)
    alphabet = og.CHAR_ALPHABET[p.i1 // 20]
    assert np.bincount(alphabet, minlength=30).tolist() == [1000] * 30
    assert np.bincount(alphabet[p.label == 1], minlength=30).tolist() == [500] * 30
    # different="any": negatives cross alphabets most of the time.
    diff = p.label == 0
    assert (og.CHAR_ALPHABET[p.i2[diff] // 20] != alphabet[diff]).mean() > 0.9
    again = D.make_pairs(splits.train, 30000, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(p, again))
    assert not np.array_equal(D.make_pairs(splits.train, 30000, seed=1).i1, p.i1)


def test_fixed_pairs_options(splits):
    p = D.make_pairs(splits.validation, 1003, same_fraction=0.25, different="same_alphabet", seed=3)
    _check_pairs(splits.validation, p.i1, p.i2, p.label)
    counts = np.bincount(og.CHAR_ALPHABET[p.i1 // 20])
    counts = counts[counts > 0]
    assert len(counts) == 10 and counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert abs(p.label.mean() - 0.25) < 0.01
    diff = p.label == 0
    assert (og.CHAR_ALPHABET[p.i2[diff] // 20] == og.CHAR_ALPHABET[p.i1[diff] // 20]).all()
    with pytest.raises(ValueError, match="different"):
        D.make_pairs(splits.train, 10, different="nearby")


def test_sample_pairs_in_jit(splits):
    arrays = D.pair_arrays(splits.train, different="same_alphabet")
    f = jax.jit(D.sample_pairs, static_argnums=2)
    i1, i2, label = (np.asarray(x) for x in f(jax.random.key(0), arrays, 4096))
    assert label.sum() == 2048
    _check_pairs(splits.train, i1, i2, label)
    assert (og.CHAR_ALPHABET[i1 // 20] == og.CHAR_ALPHABET[i2 // 20]).all()
    counts = np.bincount(og.CHAR_ALPHABET[i1 // 20], minlength=30)
    assert counts.min() > 4096 / 30 * 0.6  # uniform over alphabets in expectation
    j1 = np.asarray(f(jax.random.key(1), arrays, 4096)[0])
    assert not np.array_equal(i1, j1)


# ---- tasks ---------------------------------------------------------------------------------------


def test_within_alphabet_tasks(omniglot, splits):
    t = D.within_alphabet_tasks(
        omniglot, splits.test.alphabets, splits.test.drawers, char_ids=splits.test.char_ids, seed=0
    )
    assert len(t) == 20 and sum(len(x.query) for x in t) == 400
    assert all(x.support.shape == (20, 105, 105) and x.ink == "dark" for x in t)
    again = D.within_alphabet_tasks(
        omniglot, splits.test.alphabets, splits.test.drawers, char_ids=splits.test.char_ids, seed=0
    )
    assert all(np.array_equal(a.query, b.query) for a, b in zip(t, again))
    v = D.validation_tasks(
        omniglot, splits.validation.alphabets, splits.validation.drawers, char_ids=splits.validation.char_ids
    )
    assert sum(len(x.query) for x in v) == 320 and len(v) == 20
    assert {x.alphabet for x in v} == set(splits.validation.alphabets)


def test_task_generator_errors(omniglot):
    with pytest.raises(ValueError, match="Blackfoot.*14 characters"):
        D.within_alphabet_tasks(omniglot, ["Blackfoot_(Canadian_Aboriginal_Syllabics)"], [1, 2])
    with pytest.raises(ValueError, match="2 distinct drawers"):
        D.within_alphabet_tasks(omniglot, ["Latin"], [3])
    with pytest.raises(ValueError, match="drawers are 1..20"):
        D.within_alphabet_tasks(omniglot, ["Latin"], [1, 21])
    with pytest.raises(ValueError, match="examples per class"):
        D.episodes(omniglot.images[:30], n_way=5, k_shot=15, n_query=6, n_episodes=1, ink="dark")
    with pytest.raises(ValueError, match="has 20 classes"):
        D.episodes(omniglot.images[:30], n_way=20, n_episodes=1, ink="dark", groups=np.arange(30) % 3)


def test_episodes_k_shot(omniglot):
    chars = og.alphabet_char_ids("Latin") - 1
    eps = D.episodes(omniglot.images[chars], n_way=5, k_shot=3, n_query=2, n_episodes=4, ink="dark", seed=0)
    assert len(eps) == 4
    e = eps[0]
    assert e.support.shape == (15, 105, 105) and e.query.shape == (10, 105, 105)
    assert e.classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4] and e.n_way == 5
    assert np.bincount(e.answers).tolist() == [2] * 5


def test_mnist_tasks(mnist):
    t = D.mnist_tasks(mnist, n_trials=30, seed=0)
    assert len(t) == 30 and t[0].support.shape == (10, 35, 35) and t[0].query.shape == (1, 35, 35)
    assert t[0].support.dtype == np.uint8 and t[0].ink == "light"
    assert len({int(x.answers[0]) for x in t}) >= 8
    from siamax.data.tasks import upsample

    task = t[0]
    for digit in range(10):  # support image i is an (upsampled) test image of digit i
        candidates = upsample(mnist.test_images[mnist.test_labels == digit])
        assert (candidates == task.support[digit]).all(axis=(1, 2)).any()
    candidates = upsample(mnist.test_images[mnist.test_labels == task.answers[0]])
    assert (candidates == task.query[0]).all(axis=(1, 2)).any()
    assert not np.array_equal(task.query[0], task.support[task.answers[0]])
