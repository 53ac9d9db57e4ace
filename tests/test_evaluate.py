"""Honest one-shot scoring (chance for collapsed models, no position leak), 1-NN, verification."""

import dataclasses

import jax
import numpy as np
import pytest

import siamax
from siamax import evaluate as E
from siamax.data import Task, to_model


def _toy_tasks(n_tasks=10, n=20, q=20, size=28, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_tasks):
        support = rng.random((n, size, size)) < 0.8
        answers = rng.permutation(n)[:q]
        out.append(Task(support=support, query=support[answers].copy(), answers=answers, ink="dark", name=f"t{i}"))
    return out


def test_wilson_interval():
    lo, hi = E.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = E.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_constant_model_scores_exactly_chance():
    tasks = _toy_tasks()
    const = lambda x1, x2: np.ones(len(x1))  # noqa: E731
    r = E.one_shot_accuracy(const, tasks)
    assert r["accuracy"] == pytest.approx(1 / 20) and r["trials"] == 200
    assert r["ci95"][0] < 0.05 < r["ci95"][1]
    assert E.one_shot_accuracy(const, tasks, ties="fail")["accuracy"] == 0.0
    assert abs(E.one_shot_accuracy(const, tasks, ties="random")["accuracy"] - 0.05) < 0.05


def test_position_carries_no_information():
    """A model that bets on positions must not be rewarded: here the right answer of query i sits at
    support index i, and the cheat scores candidate j of trial i highest when j == i, which would
    be 100% if the candidates reached it in their stored order."""
    tasks = [Task(support=t.support[t.answers], query=t.query, answers=np.arange(20), ink="dark") for t in _toy_tasks()]

    def cheat(x1, x2):
        row = np.arange(len(x1))
        return (row % 20 == row // 20).astype(float)  # pairs arrive trial-major, 20 candidates each

    assert E.one_shot_accuracy(cheat, tasks)["accuracy"] < 0.15


def test_grouped_results_are_the_trials_of_each_group():
    """``by`` groups the same scored trials one way (a function) or several (a mapping), and the
    groups add up to the whole; ties="random" makes the grouped counts depend on one draw only."""
    tasks = [dataclasses.replace(t, alphabet="ab"[i % 2]) for i, t in enumerate(_toy_tasks(6))]
    noisy = lambda x1, x2: (x1 == x2).reshape(len(x1), -1).mean(1)  # noqa: E731
    one = E.one_shot_accuracy(noisy, tasks, ties="random", by=lambda t: t.alphabet)
    both = E.one_shot_accuracy(
        noisy, tasks, ties="random", by={"alphabet": lambda t: t.alphabet, "task": lambda t: t.name}
    )
    assert one["by"] == both["by"]["alphabet"] and set(both["by"]["task"]) == {f"t{i}" for i in range(6)}
    assert {k: v for k, v in both.items() if k != "by"} == {k: v for k, v in one.items() if k != "by"}
    for grouping in both["by"].values():
        assert sum(g["trials"] for g in grouping.values()) == one["trials"] == 120
        correct = sum(g["accuracy"] * g["trials"] for g in grouping.values())
        assert correct == pytest.approx(one["accuracy"] * one["trials"])


def test_oracle_scores_100():
    same = lambda x1, x2: (x1 == x2).reshape(len(x1), -1).all(1).astype(float)  # noqa: E731
    assert E.one_shot_accuracy(same, _toy_tasks())["accuracy"] == 1.0


@pytest.fixture(scope="module")
def params():
    return siamax.init(jax.random.key(1), "small")


def test_collapsed_params_model_scores_chance(lake, params):
    collapsed = params.replace(weights=jax.tree.map(np.zeros_like, params.weights))
    r = E.one_shot_accuracy(collapsed, lake[:2], batch_size=40)
    assert r["accuracy"] == pytest.approx(0.05) and r["trials"] == 40


def test_params_path_matches_direct_scores(lake, params):
    # Evaluation takes the one route to model format (uint8 included): the pixels training sees.
    matrices = E._score_matrices_params(params, lake[:2], batch_size=16, pair_chunk=256)
    t = lake[1]
    x1 = to_model(params, np.repeat(t.query[3:4], 20, axis=0), "dark")
    x2 = to_model(params, t.support, "dark")
    np.testing.assert_allclose(matrices[1][3], np.asarray(siamax.score(params, x1, x2)), atol=1e-5)
    direct = lambda a, b: siamax.score(params, to_model(params, a, "dark"), to_model(params, b, "dark"))  # noqa: E731
    small = [Task(support=t.support, query=t.query[:4], answers=t.answers[:4], ink="dark")]
    assert E.one_shot_accuracy(params, small, batch_size=16) == E.one_shot_accuracy(direct, small)
    probs = E.pair_probabilities(params, t.support, [0, 1, 2], [3, 1, 0], batch_size=16)
    want = siamax.score(
        params, to_model(params, t.support[[0, 1, 2]], "dark"), to_model(params, t.support[[3, 1, 0]], "dark")
    )
    np.testing.assert_allclose(probs, np.asarray(want), atol=1e-5)


def test_k_shot_max_and_mean():
    support = np.zeros((4, 2, 2), bool)
    t = Task(
        support=support,
        query=np.zeros((1, 2, 2), bool),
        answers=np.array([1]),
        ink="dark",
        support_classes=np.array([0, 0, 1, 1]),
    )
    scores = {0: [0.9, 0.0], 1: [0.6, 0.6]}  # class 0: max 0.9 mean 0.45; class 1: max 0.6 mean 0.6
    rng = np.random.default_rng(0)
    m = np.array([[scores[0][0], scores[0][1], scores[1][0], scores[1][1]]])
    assert E._trial_credit(m, t, rng, "split", "max")[0] == 0.0
    assert E._trial_credit(m, t, rng, "split", "mean")[0] == 1.0


def test_nearest_neighbour_reproduces_lake_baseline(lake):
    euclid = E.nearest_neighbour(lake, "euclidean")
    cosine = E.nearest_neighbour(lake, "cosine")
    assert euclid["trials"] == cosine["trials"] == 400
    assert abs(euclid["accuracy"] - 0.19) <= 0.02
    assert abs(cosine["accuracy"] - 0.2175) <= 0.02


def test_verification_threshold():
    rng = np.random.default_rng(0)
    labels = rng.random(1000) < 0.5
    probs = np.clip(np.where(labels, 0.7, 0.3) + rng.normal(0, 0.1, 1000), 0, 1)
    t, acc = E.best_threshold(probs, labels)
    assert 0.4 < t < 0.6 and acc > 0.95
    assert E.threshold_accuracy(probs, labels, t) == pytest.approx(acc)
    r = E.verification_accuracy(probs, labels, probs[:500], labels[:500])
    assert r["threshold"] == t and r["trials"] == 500 and r["ci95"][0] < r["accuracy"] < r["ci95"][1]
    assert E.best_threshold([0.2, 0.8], [0, 1]) == (0.5, 1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ties"):
        E.one_shot_accuracy(lambda a, b: np.ones(len(a)), _toy_tasks(1), ties="first")
    with pytest.raises(TypeError, match="Params or a callable"):
        E.one_shot_accuracy(42, _toy_tasks(1))
    with pytest.raises(ValueError, match="metric"):
        E.nearest_neighbour(_toy_tasks(1), "manhattan")
