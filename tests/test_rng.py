"""Named random streams: no two uses share a key; evaluation trials do not depend on the training seed."""

import itertools

import jax
import numpy as np

from siamax import presets, rng
from siamax.data import adapters


def _data(key):
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_are_pairwise_distinct():
    train = rng.train_streams(0)
    data = rng.data_streams(train["data"])
    keys = {f"train/{k}": v for k, v in train.items()} | {f"data/{k}": v for k, v in data.items()}
    # The keys each run derives per step and per epoch, over a long run.
    for t in range(2000):
        keys[f"step/{t}"] = jax.random.fold_in(train["step"], t)
        keys[f"batch/{t}"] = jax.random.fold_in(data["batches"], t)
    for e in range(200):
        keys[f"order/{e}"] = jax.random.fold_in(data["order"], e)
    seen = {}
    for name, k in keys.items():
        assert _data(k) not in seen, f"{name} == {seen.get(_data(k))}"
        seen[_data(k)] = name
    # The old collisions: init == fold_in(key(seed), 2) == step 2's batch key, and so on.
    assert _data(train["init"]) != _data(jax.random.fold_in(jax.random.key(0), 2))
    host = [rng.host_seed(k) for k in (*train.values(), *data.values())]
    assert len(set(host)) == len(host)
    evals = rng.eval_seeds(0)
    assert len(set(evals.values())) == len(evals) == len(rng.EVAL_STREAMS)
    assert not set(evals.values()) & set(host)


def test_seeds_and_eval_seed_are_separate():
    assert rng.eval_seeds(0) == rng.eval_seeds(0)
    assert all(a != b for a, b in zip(rng.eval_seeds(0).values(), rng.eval_seeds(1).values()))
    for a, b in itertools.combinations([rng.train_streams(s)["init"] for s in range(4)], 2):
        assert _data(a) != _data(b)
    rec = rng.record(3, 0)
    assert rec["seed"] == 3 and rec["eval_seed"] == 0 and set(rec["train"]) == set(rng.TRAIN_STREAMS)


def _same_tasks(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.support, y.support)
        np.testing.assert_array_equal(x.query, y.query)
        np.testing.assert_array_equal(x.answers, y.answers)


def test_changing_the_training_seed_keeps_validation_and_test_trials(omniglot, lake, monkeypatch, siamax_tfds_dir):
    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))
    base = presets.config("quick", val_trials=40, verification_pairs=100)
    one, two = (adapters.Omniglot().prepare_run(base.override(seed=s)) for s in (0, 1))
    _same_tasks(one.validation_tasks, two.validation_tasks)
    for a, b in zip(one.threshold_pairs, two.threshold_pairs):
        np.testing.assert_array_equal(a, b)
    s1, s2 = one.tests(), two.tests()
    assert set(s1) == set(s2)
    for name in ("within_alphabet", "random_20way_1shot", "nway_within_alphabet/2", "nway_within_alphabet/5", "lake20"):
        _same_tasks(s1[name].args["tasks"], s2[name].args["tasks"])
        assert s1[name].args["seed"] == s2[name].args["seed"]
    for a, b in zip(s1["verification"].args["pairs"], s2["verification"].args["pairs"]):
        np.testing.assert_array_equal(a, b)
    # ... and a different eval_seed draws other trials.
    other = adapters.Omniglot().prepare_run(base.override(eval_seed=1))
    assert not all(np.array_equal(a.query, b.query) for a, b in zip(other.validation_tasks, one.validation_tasks))
