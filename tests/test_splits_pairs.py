"""Splits (disjoint, reproducible, Lake's alphabets protected), the dataset model, samplers, pair sets and
the task generators, on the real Omniglot and MNIST."""

import hashlib

import jax
import numpy as np
import pytest

from siamax import config, presets
from siamax import data as D
from siamax.data import omniglot as og
from siamax.model import MODELS


@pytest.fixture(scope="module")
def splits():
    return D.paper_splits(seed=0)


@pytest.fixture(scope="module")
def table(omniglot):
    """All of Omniglot in the small model's format (35x35)."""
    return D.omniglot_table(omniglot, MODELS["small"])


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


# ---- the dataset model ----------------------------------------------------------------------------


def test_omniglot_table(table, omniglot, splits):
    assert table.images.shape == (32460, 35, 35) and table.images.dtype == np.uint8
    assert table.n_classes == 1623 and table.n_groups == 50 and table.labels[45] == 2
    assert table.class_names[0] == "Arcadian/character01" and table.group_names[table.groups[1622]] == "ULOG"
    assert table.paths[21] == "images_background/Arcadian/character02/0002_02.png"
    # Model format: ink = 255 on paper = 0, the same pixels model_format gives for the native image.
    first = np.asarray(table.images[0])
    assert first.max() == 255 and np.median(first) == 0
    again = np.asarray(D.model_format(MODELS["small"], omniglot.images[0, :1], "dark"))[0]
    np.testing.assert_array_equal(first, again)
    train = table.take(splits.train.flat_indices(), name="train")
    assert train.n_classes == 964 and train.n_groups == 30 and (train.class_counts() == 12).all()
    assert train.class_names[0] == "Arcadian/character01" and train.name == "train"
    np.testing.assert_array_equal(
        np.asarray(train.images[13]), np.asarray(table.images[20 + splits.train.drawers[1] - 1])
    )


def test_labelled_images_refuse_bad_tables():
    images = jax.numpy.zeros((4, 8, 8), jax.numpy.uint8)
    with pytest.raises(ValueError, match="classes without images"):
        D.LabelledImages(images, np.array([0, 0, 2, 2]), ("a", "b", "c"), np.zeros(3))
    with pytest.raises(ValueError, match="uint8"):
        D.LabelledImages(images.astype(float), np.zeros(4), ("a",), np.zeros(1))
    with pytest.raises(ValueError, match="labels"):
        D.LabelledImages(images, np.array([0, 0, 1, 5]), ("a", "b"), np.zeros(2))


# ---- samplers: the same batches as before the dataset model ---------------------------------------

# sha256[:16] of the first batches (keys in order; labels as their order-keeping relabelling) drawn by
# siamax.data.batches at commit e20ecca, before the samplers read LabelledImages. Same numbers means
# the presets train exactly as before the restructuring.
BEFORE = {
    "quick": {0: "cbe0d179c1a7d114", 1: "bee016d7aba7bc05", 7: "3159117dedb48c05", 253: "dfa9f7d7e84233fc"},
    "mnist_quick": {0: "f22e12f231631775", 1: "59fa6893a49c1f75", 7: "90e1a1df057bcfbb", 253: "ead017174a45f64c"},
    "fixed_pairs": {0: "9a1b7c231a141183", 1: "4240a0d428fa116d", 7: "437b86e39ee8a92e", 213: "fb56bde84d2eae9c"},
    "fresh_pairs": {0: "53f5bbf3418f9482", 1: "3d5e2a58290db41c", 7: "cec32a89f02c48c7", 13: "4d37e634e78fd964"},
    "same_alphabet": {0: "d16d8a4030f77e8a", 1: "e5200c8f3d83b416", 7: "f956e563cdf36b72", 26: "d58b225597b05f20"},
}
CASES = {
    # quick as it was then (its preset has changed since, on purpose: issue 17's search); batches
    # depend only on the data settings, which are the same.
    "quick": ("quick", {"objective": "episodic", "energy": "weighted_l1", "ink_frame": 0.0}),
    # mnist_quick as it was then (its preset has changed since, on purpose: issue 17).
    "mnist_quick": (
        "mnist_quick",
        {"objective": "episodic", "energy": "weighted_l1", "ink_frame": 0.0, "thicken": 0.0},
    ),
    "fixed_pairs": ("mnist_paper", {"n_pairs": 3000}),
    "fresh_pairs": ("mnist_paper", {"n_pairs": 0, "steps_per_epoch": 10}),
    "same_alphabet": ("mnist_paper", {"n_pairs": 3000, "different": "same_alphabet", "distortions": 0}),
}


def _digest(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        v = np.asarray(batch[k])
        v = np.unique(v, return_inverse=True)[1].astype(np.int32) if k == "labels" else v
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(CASES))
def test_samplers_draw_the_batches_they_drew_before(case, omniglot):
    preset, overrides = CASES[case]
    cfg = presets.config(preset, **overrides)
    splits = D.paper_splits(cfg.data.split_seed, train_drawers=cfg.data.train_drawers)
    train = D.omniglot_table(omniglot, cfg.spec).take(splits.train.flat_indices())
    sampler = D.make_sampler(cfg.data, cfg.objective.batch, train, cfg.seed, cfg.schedule.steps_per_epoch)
    assert {step: _digest(sampler.batch(step)) for step in BEFORE[case]} == BEFORE[case]


def test_class_batches_on_uneven_classes():
    """P x K batches over classes of 1..5 images: distinct images where a class has K, labels right."""
    counts = [1, 2, 3, 5, 5, 4]
    labels = np.repeat(np.arange(6), counts)
    images = jax.numpy.asarray(np.arange(len(labels), dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8))
    t = D.LabelledImages(images, labels, tuple("abcdef"), np.array([0, 0, 0, 1, 1, 1]), ("g0", "g1"))
    cfg = config.DataConfig(episode_chars=4, episode_drawers=3, episode_alphabets=2)
    sampler = D.make_sampler(cfg, "classes", t, seed=0, steps_per_epoch=5)
    for step in range(20):
        b = sampler.batch(step)
        ids, y = np.asarray(b["x"])[:, 0, 0], np.asarray(b["labels"])
        assert ids.shape == (12,) and (labels[ids] == y).all()
        for c in set(y.tolist()):
            got = ids[y == c]
            if counts[c] >= 3:
                assert len(set(got.tolist())) == len(got) or len(got) > 3  # distinct unless the class repeats
        assert len({t.groups[c] for c in y}) == 2  # two groups per batch
    # More classes asked than a group holds: classes repeat, the batch keeps its size (it used to shrink).
    wide = D.make_sampler(config.DataConfig(episode_chars=10, episode_drawers=2), "classes", t, 0, steps_per_epoch=5)
    for step in range(5):
        b = wide.batch(step)
        assert b["x"].shape == (20, 4, 4) and len(set(np.asarray(b["labels"]).tolist())) <= 3
    # More images a class than any class has (a small folder under a preset of K = 8): every image of a
    # class appears, then repeats; the batch keeps its size and its labels.
    deep = D.make_sampler(config.DataConfig(episode_chars=2, episode_drawers=8), "classes", t, 0, steps_per_epoch=5)
    for step in range(5):
        b = deep.batch(step)
        ids, y = np.asarray(b["x"])[:, 0, 0], np.asarray(b["labels"])
        assert ids.shape == (16,) and (labels[ids] == y).all()
        for c in set(y.tolist()):
            assert set(ids[y == c].tolist()) == set(np.flatnonzero(labels == c).tolist())


# ---- pairs ---------------------------------------------------------------------------------------


def _check_pairs(table, i1, i2, label):
    same = label == 1
    assert (table.labels[i1[same]] == table.labels[i2[same]]).all() and (i1[same] != i2[same]).all()
    assert (table.labels[i1[~same]] != table.labels[i2[~same]]).all()


def test_fixed_pairs_balanced_and_uniform_per_alphabet(table, splits):
    train = table.take(splits.train.flat_indices())
    p = D.make_pairs(train, 30000, seed=0)
    assert len(p.i1) == 30000 and p.label.sum() == 15000
    _check_pairs(train, p.i1, p.i2, p.label)
    alphabet = train.groups[train.labels[p.i1]]
    assert np.bincount(alphabet, minlength=30).tolist() == [1000] * 30
    assert np.bincount(alphabet[p.label == 1], minlength=30).tolist() == [500] * 30
    # different="any": negatives cross alphabets most of the time.
    diff = p.label == 0
    assert (train.groups[train.labels[p.i2[diff]]] != alphabet[diff]).mean() > 0.9
    again = D.make_pairs(train, 30000, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(p, again))
    assert not np.array_equal(D.make_pairs(train, 30000, seed=1).i1, p.i1)


def test_fixed_pairs_options(table, splits):
    val = table.take(splits.validation.flat_indices())
    p = D.make_pairs(val, 1003, same_fraction=0.25, different="same_alphabet", seed=3)
    _check_pairs(val, p.i1, p.i2, p.label)
    counts = np.bincount(val.groups[val.labels[p.i1]])
    assert len(counts) == 10 and counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert abs(p.label.mean() - 0.25) < 0.01
    diff = p.label == 0
    assert (val.groups[val.labels[p.i2[diff]]] == val.groups[val.labels[p.i1[diff]]]).all()
    with pytest.raises(ValueError, match="different"):
        D.make_pairs(val, 10, different="nearby")


def test_sample_pairs_in_jit(table, splits):
    train = table.take(splits.train.flat_indices())
    index = D.class_index(train)
    f = jax.jit(D.sample_pairs, static_argnums=(2, 3))
    i1, i2, label = (np.asarray(x) for x in f(jax.random.key(0), index, 4096, "same_alphabet"))
    assert label.sum() == 2048
    _check_pairs(train, i1, i2, label)
    g1, g2 = train.groups[train.labels[i1]], train.groups[train.labels[i2]]
    assert (g1 == g2).all()
    assert np.bincount(g1, minlength=30).min() > 4096 / 30 * 0.6  # uniform over alphabets in expectation
    assert not np.array_equal(i1, np.asarray(f(jax.random.key(1), index, 4096, "same_alphabet")[0]))


# ---- tasks ---------------------------------------------------------------------------------------


def test_within_alphabet_tasks(table, splits):
    t = D.within_alphabet_tasks(
        table, splits.test.alphabets, splits.test.drawers, char_ids=splits.test.char_ids, seed=0
    )
    assert len(t) == 20 and sum(len(x.query) for x in t) == 400
    assert all(x.support.shape == (20, 35, 35) and x.support.dtype == np.uint8 and x.ink == "light" for x in t)
    again = D.within_alphabet_tasks(
        table, splits.test.alphabets, splits.test.drawers, char_ids=splits.test.char_ids, seed=0
    )
    assert all(np.array_equal(a.query, b.query) for a, b in zip(t, again))
    v = D.validation_tasks(
        table, splits.validation.alphabets, splits.validation.drawers, char_ids=splits.validation.char_ids
    )
    assert sum(len(x.query) for x in v) == 320 and len(v) == 20
    assert {x.alphabet for x in v} == set(splits.validation.alphabets)


def test_task_generator_errors(table):
    with pytest.raises(ValueError, match="Blackfoot.*14 characters"):
        D.within_alphabet_tasks(table, ["Blackfoot_(Canadian_Aboriginal_Syllabics)"], [1, 2])
    with pytest.raises(ValueError, match="2 distinct drawers"):
        D.within_alphabet_tasks(table, ["Latin"], [3])
    with pytest.raises(ValueError, match="drawers are 1..20"):
        D.within_alphabet_tasks(table, ["Latin"], [1, 21])
    with pytest.raises(ValueError, match="whole Omniglot table"):
        D.within_alphabet_tasks(table.take(np.arange(200)), ["Arcadian"], [1, 2])
    small = table.take(np.arange(30 * 20))  # 30 characters of two alphabets
    with pytest.raises(ValueError, match="examples per class"):
        D.episodes(small, n_way=5, k_shot=15, n_query=6, n_episodes=1)
    with pytest.raises(ValueError, match="no group has 27 classes"):
        D.episodes(small, n_way=27, n_episodes=1, within_groups=True)
    with pytest.raises(ValueError, match="needs 10 classes"):
        D.require_classes(small.take(np.arange(40)), 10, "a 10-way task")


def test_episodes_k_shot(table):
    latin = table.of_classes(og.alphabet_char_ids("Latin") - 1)
    eps = D.episodes(latin, n_way=5, k_shot=3, n_query=2, n_episodes=4, seed=0)
    assert len(eps) == 4
    e = eps[0]
    assert e.support.shape == (15, 35, 35) and e.query.shape == (10, 35, 35)
    assert e.classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4] and e.n_way == 5
    assert np.bincount(e.answers).tolist() == [2] * 5
    within = D.episodes(table, n_way=20, n_episodes=3, within_groups=True, seed=1)
    assert all(x.alphabet for x in within)


def test_mnist_tasks(mnist):
    digits = D.mnist_table(mnist, MODELS["small"], "test")
    assert digits.images.shape == (10000, 35, 35) and digits.class_names[3] == "3"
    t = D.mnist_tasks(digits, n_trials=30, seed=0)
    assert len(t) == 30 and t[0].support.shape == (10, 35, 35) and t[0].query.shape == (1, 35, 35)
    assert t[0].support.dtype == np.uint8 and t[0].ink == "light"
    assert len({int(x.answers[0]) for x in t}) >= 8
    images = np.asarray(digits.images)
    task = t[0]
    for digit in range(10):  # support image i is a test image of digit i
        assert (images[digits.labels == digit] == task.support[digit]).all(axis=(1, 2)).any()
    assert (images[digits.labels == task.answers[0]] == task.query[0]).all(axis=(1, 2)).any()
    assert not np.array_equal(task.query[0], task.support[task.answers[0]])
