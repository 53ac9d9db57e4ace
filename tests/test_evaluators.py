"""The evaluators: honest one-shot scoring (chance for collapsed models, no position leak), the 1-NN
pixel baseline as an embedder, verification's thresholds, retrieval, the registry."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import siamax
from siamax import evaluators as E
from siamax import metrics, rng
from siamax.data import Pairs, Task, to_model


def _toy_tasks(n_tasks=10, n=20, q=20, size=28, seed=0):
    rng_ = np.random.default_rng(seed)
    out = []
    for i in range(n_tasks):
        support = rng_.random((n, size, size)) < 0.8
        answers = rng_.permutation(n)[:q]
        out.append(Task(support=support, query=support[answers].copy(), answers=answers, ink="dark", name=f"t{i}"))
    return out


def _model_format_tasks(n_tasks=6, n=5, size=35, seed=0):
    """Tasks as a table gives them (uint8, ink = 255, ``ink="light"``): noisy copies of the answers, and
    in every task two classes with the same support image (a tie for the queries of either)."""
    rng_ = np.random.default_rng(seed)
    out = []
    for i in range(n_tasks):
        support = (rng_.random((n, size, size)) < 0.3).astype(np.uint8) * 255
        support[1] = support[0]
        answers = rng_.permutation(n)
        flip = rng_.random((n, size, size)) < 0.1
        query = np.where(flip, 255 - support[answers], support[answers]).astype(np.uint8)
        out.append(Task(support=support, query=query, answers=answers, ink="light", name=f"m{i}"))
    return out


def _nn_loop(tasks, metric):
    """The 1-NN baseline, query by query, ties split: the reference the pixel embedder must give."""
    credit = []
    for t in tasks:
        s = [np.asarray(x, np.float64).ravel() for x in t.support]
        for query, answer in zip(t.query, t.answers):
            v = np.asarray(query, np.float64).ravel()
            if t.query.dtype == np.uint8:
                v, sv = v / 255, [x / 255 for x in s]
            else:
                sv = s
            if t.ink == "dark":
                v, sv = 1 - v, [1 - x for x in sv]
            if metric == "euclidean":
                scores = [-(((v - x) ** 2).sum()) for x in sv]  # 0/1 pixels: whole numbers, exact ties
            else:
                scores = [(v @ x) / np.sqrt((v @ v) * (x @ x)) if (v @ v) * (x @ x) > 0 else 0.0 for x in sv]
            best = max(scores)
            tied = [j for j, sc in enumerate(scores) if np.isclose(sc, best, rtol=0, atol=1e-12)]
            credit.append(1 / len(tied) if answer in tied else 0.0)
    return float(np.mean(credit))


def test_wilson_interval():
    lo, hi = E.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = E.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_registry_makes_every_evaluator():
    assert set(E.REGISTRY) == {"oneshot", "verification", "retrieval"}
    assert isinstance(E.make("oneshot", tasks=_toy_tasks(1), seed=3), E.OneShot)
    images = np.zeros((4, 8, 8), np.uint8)
    pairs = Pairs(np.array([0, 1]), np.array([2, 3]), np.array([1, 0]))
    assert isinstance(E.make("verification", images=images, pairs=pairs, rule="eer"), E.Verification)
    assert isinstance(E.make("retrieval", images=images, labels=np.array([0, 0, 1, 1])), E.Retrieval)
    with pytest.raises(ValueError, match="no evaluator"):
        E.make("clustering")


def test_constant_model_scores_exactly_chance():
    tasks = _toy_tasks()
    const = lambda x1, x2: np.ones(len(x1))  # noqa: E731
    r = E.OneShot(tasks).run(const)
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
    one = E.OneShot(tasks, ties="random", by=lambda t: t.alphabet).run(noisy)
    both = E.OneShot(tasks, ties="random", by={"alphabet": lambda t: t.alphabet, "task": lambda t: t.name}).run(noisy)
    assert one["by"] == both["by"]["alphabet"] and set(both["by"]["task"]) == {f"t{i}" for i in range(6)}
    assert {k: v for k, v in both.items() if k != "by"} == {k: v for k, v in one.items() if k != "by"}
    for grouping in both["by"].values():
        assert sum(g["trials"] for g in grouping.values()) == one["trials"] == 120
        correct = sum(g["accuracy"] * g["trials"] for g in grouping.values())
        assert correct == pytest.approx(one["accuracy"] * one["trials"])
    # The pixel baseline is grouped the same way.
    pixels = E.OneShot(tasks, by=lambda t: t.alphabet).run(E.PixelEmbedder())
    assert set(pixels["by"]) == {"a", "b"} and pixels["accuracy"] == 1.0


def test_oracle_scores_100():
    same = lambda x1, x2: (x1 == x2).reshape(len(x1), -1).all(1).astype(float)  # noqa: E731
    assert E.one_shot_accuracy(same, _toy_tasks())["accuracy"] == 1.0


@pytest.fixture(scope="module")
def params():
    return siamax.init(jax.random.key(1), "small")


def test_collapsed_params_model_scores_chance(lake, params):
    collapsed = params.replace(weights=jax.tree.map(np.zeros_like, params.weights))
    r = E.OneShot(lake[:2]).run(E.ModelEmbedder(collapsed, batch_size=40))
    assert r["accuracy"] == pytest.approx(0.05) and r["trials"] == 40
    assert E.one_shot_accuracy(collapsed, lake[:2], batch_size=40) == r


def test_params_path_matches_direct_scores(lake, params):
    # Evaluation takes the one route to model format (uint8 included): the pixels training sees.
    model = E.ModelEmbedder(params, batch_size=16, pair_chunk=256)
    matrices = E.oneshot.score_matrices(model, lake[:2])
    t = lake[1]
    x1 = to_model(params, np.repeat(t.query[3:4], 20, axis=0), "dark")
    x2 = to_model(params, t.support, "dark")
    np.testing.assert_allclose(matrices[1][3], np.asarray(siamax.score(params, x1, x2)), atol=1e-5)
    direct = lambda a, b: siamax.score(params, to_model(params, a, "dark"), to_model(params, b, "dark"))  # noqa: E731
    small = [Task(support=t.support, query=t.query[:4], answers=t.answers[:4], ink="dark")]
    assert E.OneShot(small).run(model) == E.OneShot(small).run(direct)
    probs = E.score_pairs(model, t.support, [0, 1, 2], [3, 1, 0], ink="dark")
    want = siamax.score(
        params, to_model(params, t.support[[0, 1, 2]], "dark"), to_model(params, t.support[[3, 1, 0]], "dark")
    )
    np.testing.assert_allclose(probs, np.asarray(want), atol=1e-5)
    emb = model.embed(t.support[:5], "dark")
    assert emb.shape == (5, params.spec.embedding_dim)  # the padding of the last chunk is dropped
    assert model.energy == params.spec.energy and model.head is params.weights["head"]


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
    rng_ = np.random.default_rng(0)
    m = np.array([[scores[0][0], scores[0][1], scores[1][0], scores[1][1]]])
    assert E.trial_credit(m, t, rng_, "split", "max")[0] == 0.0
    assert E.trial_credit(m, t, rng_, "split", "mean")[0] == 1.0


def test_pixel_embedder_reproduces_the_lake_baseline(lake):
    """The 1-NN baseline is the pixel embedder through the one-shot evaluator: the main job's numbers
    (quick preset, eval seed 0: results.json's one_nn / one_nn_cosine) and a query-by-query loop."""
    shuffle = rng.eval_seeds(0)["test_candidates"]
    euclid = E.OneShot(lake, seed=shuffle).run(E.PixelEmbedder("euclidean"))
    cosine = E.OneShot(lake, seed=shuffle).run(E.PixelEmbedder("cosine"))
    assert euclid == {"accuracy": 0.19, "ci95": [0.1545738505868544, 0.23132377199256382], "trials": 400}
    assert cosine == {"accuracy": 0.2175, "ci95": [0.17986162043542295, 0.26051282594743397], "trials": 400}
    # Ties split: the credit does not depend on the shuffle, and equals the loop's.
    assert E.OneShot(lake, seed=1).run(E.PixelEmbedder())["accuracy"] == pytest.approx(_nn_loop(lake, "euclidean"))
    assert cosine["accuracy"] == pytest.approx(_nn_loop(lake, "cosine"))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pixel_embedder_on_model_format_tasks(metric):
    """Tasks drawn from a table (uint8, light ink: within-alphabet, episodes), with ties."""
    tasks = _model_format_tasks()
    r = E.OneShot(tasks, seed=3).run(E.PixelEmbedder(metric))
    assert r["trials"] == 30 and r["accuracy"] == pytest.approx(_nn_loop(tasks, metric))
    assert 0.5 < r["accuracy"] < 1.0  # the two classes of one image split their credit
    fail = E.OneShot(tasks, seed=3, ties="fail").run(E.PixelEmbedder(metric))["accuracy"]
    assert fail == pytest.approx(r["accuracy"] - 2 * 6 * 0.5 / 30)


def test_pixel_embedder_pairs():
    pixels = E.PixelEmbedder("euclidean")
    images = np.array([[[0, 255]], [[255, 255]], [[0, 0]]], np.uint8)
    emb = pixels.embed(images, "light")
    np.testing.assert_array_equal(emb, [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(pixels.pair_scores(emb, [0, 0, 1], [1, 2, 2]), [-1.0, -1.0, -np.sqrt(2)])
    cosine = E.PixelEmbedder("cosine")
    np.testing.assert_allclose(cosine.pair_scores(emb, [0, 0, 1], [1, 2, 1]), [np.sqrt(0.5), 0.0, 1.0])
    assert (pixels.energy, pixels.head, cosine.energy) == ("euclidean", None, "cosine")
    np.testing.assert_array_equal(pixels.embed(images, "dark"), 1.0 - emb)


@pytest.fixture(scope="module")
def labelled():
    """Model-format images (35 x 35) of 8 classes x 4 noisy copies, and pairs into them."""
    rng_ = np.random.default_rng(0)
    protos = rng_.random((8, 35, 35)) < 0.3
    labels = np.repeat(np.arange(8), 4)
    images = (protos[labels] ^ (rng_.random((32, 35, 35)) < 0.05)).astype(np.uint8) * 255

    def pairs(seed, n=200):
        r = np.random.default_rng(seed)
        i1, i2 = r.integers(0, 32, n), r.integers(0, 32, n)
        i2[: n // 2] = i1[: n // 2] // 4 * 4 + r.integers(0, 4, n // 2)  # half the same class
        return Pairs(i1, i2, (labels[i1] == labels[i2]).astype(np.int32))

    return images, labels, pairs(1), pairs(2)


def test_verification_threshold_rules(params, labelled):
    images, _, val, test = labelled
    model = E.ModelEmbedder(params)
    val_s = E.score_pairs(model, images, val.i1, val.i2)
    test_s = E.score_pairs(model, images, test.i1, test.i2)
    keys = {"threshold", "threshold_from", "threshold_rule", "accuracy", "ci95", "trials", "roc_auc", "eer",
            "eer_threshold", "pairs"}  # fmt: skip

    ev = E.Verification(images, test, validation=(images, val), rule="accuracy")
    r = ev.run(params)
    t, val_acc = metrics.best_threshold(val_s, val.label)
    assert set(r) == keys | {"validation_accuracy"} and (r["threshold_from"], r["threshold_rule"]) == (
        "validation",
        "accuracy",
    )
    assert r["threshold"] == t and r["validation_accuracy"] == val_acc
    assert r["accuracy"] == metrics.accuracy_at(test_s, test.label, t) and r["trials"] == r["pairs"] == 200
    assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert r["roc_auc"] == metrics.roc_auc(test_s, test.label)
    assert (r["eer"], r["eer_threshold"]) == metrics.eer(test_s, test.label)
    np.testing.assert_array_equal(ev.figures["scores"], test_s)
    np.testing.assert_array_equal(ev.figures["labels"], test.label)

    r = E.Verification(images, test, validation=(images, val), rule="eer").run(model)
    assert r["threshold"] == metrics.choose_threshold(val_s, val.label, "eer") == metrics.eer(val_s, val.label)[1]
    assert r["threshold_rule"] == "eer"

    r = E.Verification(images, test, validation=(images, val), threshold=0.25).run(model)
    assert (r["threshold"], r["threshold_from"], r["threshold_rule"]) == (0.25, "given", None)
    assert "validation_accuracy" not in r and r["accuracy"] == metrics.accuracy_at(test_s, test.label, 0.25)

    r = E.Verification(images, test).run(model)
    assert r["threshold_from"] == "eer_on_these_pairs" and r["threshold"] == r["eer_threshold"]
    assert {k: r[k] for k in ("roc_auc", "eer", "eer_threshold", "threshold", "accuracy")} == (
        metrics.verification_report(test_s, test.label)
    )


def test_verification_of_raw_pixels(labelled):
    images, _, val, test = labelled
    ev = E.Verification(images, test, validation=(images, val), rule="eer")
    r = ev.run(E.PixelEmbedder())
    x = images.reshape(len(images), -1) / 255
    np.testing.assert_allclose(ev.figures["scores"], -np.linalg.norm(x[test.i1] - x[test.i2], axis=1))
    assert r["roc_auc"] > 0.9 and r["threshold"] < 0  # -distance


def test_retrieval(params, labelled):
    images, labels, _, _ = labelled
    ev = E.Retrieval(images, labels, k=3)
    r = ev.run(params)
    emb = np.asarray(E.ModelEmbedder(params).embed(images, "light"))
    assert r == metrics.retrieval_report(emb, labels, params.spec.energy, params.weights["head"], 3)
    assert set(r) == {"precision_at_1", "recall_at_3", "map_at_r", "queries"} and r["queries"] == 32
    np.testing.assert_array_equal(ev.figures["embeddings"], emb)
    pixels = E.Retrieval(images, labels).run(E.PixelEmbedder())
    assert pixels == metrics.retrieval_report(images.reshape(32, -1) / 255.0, labels, "euclidean", None, 5)
    assert pixels["precision_at_1"] == 1.0  # 5% noise on distinct prototypes
    # In blocks (embedded and searched 10 images at a time), the same figures; above max_queries images,
    # that many drawn from the seed are the queries, each against all the images.
    assert E.Retrieval(images, labels, k=3, block=10).run(params) == r
    sampled = E.Retrieval(images, labels, k=3, block=10, max_queries=12, seed=5)
    s = sampled.run(params)
    rows = np.sort(np.random.default_rng(5).choice(32, 12, replace=False))
    expected = metrics.retrieval_in_blocks(
        emb[rows], rows, [emb], labels, params.spec.energy, params.weights["head"], 3
    )
    assert s == {**expected, "sampled": {"queries": 12, "of": 32, "seed": 5}}
    np.testing.assert_array_equal(sampled.figures["images"], images[rows])
    # A separate gallery: the even images query the odd ones.
    g = E.Retrieval(images[::2], labels[::2], gallery=images[1::2], gallery_labels=labels[1::2], k=1)
    assert g.run(E.PixelEmbedder())["queries"] == 16


def test_every_result_is_json(params, labelled):
    images, labels, val, test = labelled
    for model in (params, E.PixelEmbedder("cosine")):
        for ev in (
            E.OneShot(_model_format_tasks(2), by={"task": lambda t: t.name}),
            E.Verification(images, test, validation=(images, val)),
            E.Retrieval(images, labels),
        ):
            json.dumps(ev.run(model))


def test_bad_arguments():
    with pytest.raises(ValueError, match="ties"):
        E.one_shot_accuracy(lambda a, b: np.ones(len(a)), _toy_tasks(1), ties="first")
    with pytest.raises(ValueError, match="shots"):
        E.OneShot(_toy_tasks(1), shots="median")
    with pytest.raises(ValueError, match="no tasks"):
        E.OneShot([])
    with pytest.raises(TypeError, match="Params, a siamax.Ensemble, an embedder"):
        E.one_shot_accuracy(42, _toy_tasks(1))
    # A score function is for one-shot only.
    with pytest.raises(TypeError, match="Params, a siamax.Ensemble, an embedder"):
        E.Retrieval(np.zeros((2, 4, 4)), np.array([0, 0])).run(lambda a, b: a)
    with pytest.raises(ValueError, match="metric"):
        E.PixelEmbedder("manhattan")
    with pytest.raises(ValueError, match="rule"):
        E.Verification(np.zeros((2, 4, 4)), None, rule="f1")


def test_an_ensemble_averages_its_members_probabilities(params, labelled):
    images, labels, val, test = labelled
    other = siamax.init(jax.random.key(7), siamax.MODELS["small"].replace(energy="cosine"))
    members = [E.ModelEmbedder(params), E.ModelEmbedder(other)]
    ensemble = E.EnsembleEmbedder([params, other])
    # Pairs: the mean of the members' probabilities, each from its own head.
    expected = np.mean([E.score_pairs(m, images, test.i1, test.i2) for m in members], axis=0)
    np.testing.assert_allclose(E.score_pairs(ensemble, images, test.i1, test.i2), expected, rtol=1e-6)
    r = E.Verification(images, test, validation=(images, val)).run(ensemble)
    assert r["roc_auc"] == pytest.approx(metrics.roc_auc(expected, test.label))
    # One-shot: every trial scored by the mean probability, so two copies of one model are that model.
    tasks = _model_format_tasks(3)
    twice = E.EnsembleEmbedder([params, params])
    assert E.OneShot(tasks).run(twice)["accuracy"] == E.OneShot(tasks).run(params)["accuracy"]
    # Retrieval ranks by the mean probability too: as siamax.Index ranks a siamax.Ensemble's gallery.
    emb = ensemble.embed(images, "light")
    r = E.Retrieval(images, labels, k=3).run(ensemble)
    assert r == metrics.retrieval_report(emb, labels, ensemble.energy, ensemble.head, 3)
    both = siamax.ensemble([params, other])
    p = np.stack([np.asarray(siamax.score_embeddings(both, np.repeat(e[None], len(emb), 0), emb)) for e in emb])
    np.fill_diagonal(p, -np.inf)  # leave-one-out
    nearest = labels[np.argmax(p, axis=1)]
    assert r["precision_at_1"] == pytest.approx(np.mean(nearest == labels))
    with pytest.raises(ValueError, match="2 or more members"):
        E.EnsembleEmbedder([params])
