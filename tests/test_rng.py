"""Named random streams: no two uses share a key; evaluation trials do not depend on the training seed."""

import itertools

import jax
import numpy as np

from siamax import config, experiment, report, rng
from siamax import data as sd


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


def test_changing_the_training_seed_keeps_validation_and_test_trials(omniglot, lake):
    base = config.Config.from_preset("quick", val_trials=40, verification_pairs=100)
    omniglot = sd.omniglot_table(omniglot, base.spec)
    splits = sd.paper_splits(base.data.split_seed, train_drawers=base.data.train_drawers)
    one, two = base.override(seed=0), base.override(seed=1)
    _same_tasks(
        experiment.validation_trials(one, omniglot, splits), experiment.validation_trials(two, omniglot, splits)
    )
    s1, s2 = report.test_sets(one, omniglot, splits), report.test_sets(two, omniglot, splits)
    for n in (2, 5, 20):
        _same_tasks(s1["within_alphabet"][n], s2["within_alphabet"][n])
    for name in ("verification_validation", "verification_test"):
        for a, b in zip(s1[name], s2[name]):
            np.testing.assert_array_equal(a, b)
    assert s1["candidates_seed"] == s2["candidates_seed"]
    # ... and a different eval_seed draws other trials.
    other = experiment.validation_trials(base.override(eval_seed=1), omniglot, splits)
    assert not all(
        np.array_equal(a.query, b.query) for a, b in zip(other, experiment.validation_trials(one, omniglot, splits))
    )
