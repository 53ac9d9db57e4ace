"""siamax.metrics: verification metrics on score sets worked by hand and against pair counts; retrieval
metrics against plain loops and pytorch-metric-learning's hand-worked example; blocked k-NN (the search
kernel of siamax.neighbours) against brute force for every energy, its memory bound read from the compiled
program; bad inputs refused."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from siamax import energies, metrics, neighbours
from siamax.errors import InputError

# ---------------------------------------------------------------------------------------------
# Verification.

# Sorted by score: .9 S, .8 S, .8 D (a tie across classes), .4 S, .3 D, .3 D (a tie within), .1 D.
SCORES = np.array([0.3, 0.8, 0.1, 0.9, 0.4, 0.8, 0.3])
LABELS = np.array([0, 1, 0, 1, 1, 0, 0])


def test_roc_curve_by_hand():
    fpr, tpr, thr = metrics.roc_curve(SCORES, LABELS)
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.8, 0.4, 0.3, 0.1])  # one point per distinct score
    np.testing.assert_allclose(fpr, [0, 0, 1 / 4, 1 / 4, 3 / 4, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1, 1])


def test_auc_by_hand():
    # Same .9 beats all 4 different; .8 beats 3 and ties 1 (1/2); .4 beats 3: (4 + 3.5 + 3) / 12.
    assert metrics.roc_auc(SCORES, LABELS) == 10.5 / 12


def test_eer_by_hand():
    # FAR < FRR up to threshold .8 (1/4 < 1/3); at .4 FAR = 1/4 >= FRR = 0. On that segment FAR stays
    # 1/4 while FRR falls from 1/3 to 0: they meet at FRR = 1/4, a quarter of the way (lam = 1/4), so
    # the threshold is .8 + (.4 - .8) / 4 = .7.
    rate, threshold = metrics.eer(SCORES, LABELS)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.7)


def test_eer_on_a_sloped_segment():
    # S .9, D .6, S .5, D .2: FAR/FRR = 0/1, 0/.5, .5/.5 at threshold .6 exactly (lam = 1).
    assert metrics.eer([0.9, 0.6, 0.5, 0.2], [1, 0, 1, 0]) == pytest.approx((0.5, 0.6))
    # S .9, D .8 and S .8 tied, D .1: the tie step goes from FAR/FRR 0/.5 to .5/0 and crosses halfway.
    rate, threshold = metrics.eer([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0])
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.85)  # halfway between the segment's thresholds .9 and .8


def test_perfect_inverted_and_constant_scores():
    y = np.array([1, 1, 0, 0])
    perfect = np.array([0.9, 0.8, 0.3, 0.2])
    assert metrics.roc_auc(perfect, y) == 1.0
    assert metrics.eer(perfect, y) == (0.0, 0.8)  # the lowest same score separates exactly
    assert metrics.accuracy_at(perfect, y, 0.8) == 1.0
    inverted = perfect[::-1]
    assert metrics.roc_auc(inverted, y) == 0.0
    assert metrics.eer(inverted, y) == (1.0, 0.8)
    constant = np.full(4, 0.5)  # one segment, from +inf (accept none) to .5 (accept all): its finite end
    assert metrics.roc_auc(constant, y) == 0.5
    assert metrics.eer(constant, y) == (0.5, 0.5)


def test_auc_is_the_pair_count_and_the_area():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # many ties
    y = rng.random(300) < 0.4
    pos, neg = s[y], s[~y]
    u2 = sum(2 * int((p > neg).sum()) + int((p == neg).sum()) for p in pos)
    assert metrics.roc_auc(s, y) == u2 / (2 * pos.size * neg.size)
    fpr, tpr, _ = metrics.roc_curve(s, y)
    assert metrics.roc_auc(s, y) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)
    assert metrics.roc_auc(-s, y) == pytest.approx(1 - metrics.roc_auc(s, y), abs=1e-12)


def test_eer_against_a_loop():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    s = np.round(rng.normal(size=400) + y, 1)
    # FAR and FRR counted at +inf and at every distinct score, downwards; then the first crossing.
    ts = [np.inf, *sorted(set(s), reverse=True)]
    far = [((s >= t) & ~y).sum() / (~y).sum() for t in ts]
    frr = [((s < t) & y).sum() / y.sum() for t in ts]
    i = next(i for i in range(len(ts)) if far[i] >= frr[i])
    # On the segment FAR = far0 + lam dfar and FRR = frr0 - lam dfrr: equal at this lam.
    lam = (frr[i - 1] - far[i - 1]) / ((far[i] - far[i - 1]) + (frr[i - 1] - frr[i]))
    rate, t = metrics.eer(s, y)
    assert rate == pytest.approx(far[i - 1] + lam * (far[i] - far[i - 1]))
    assert rate == pytest.approx(frr[i - 1] + lam * (frr[i] - frr[i - 1]))
    assert t == pytest.approx(ts[i - 1] + lam * (ts[i] - ts[i - 1]))
    assert ts[i] <= t <= ts[i - 1]


def test_threshold_at_far():
    assert metrics.threshold_at_far(SCORES, LABELS, 0.25) == 0.4  # FAR 1/4 down to .4; .3 would be 3/4
    assert metrics.threshold_at_far(SCORES, LABELS, 0.2) == 0.9  # .8 already accepts a different pair
    assert metrics.threshold_at_far(SCORES, LABELS, 1.0) == 0.1
    assert metrics.threshold_at_far([0.9, 0.5], [0, 1], 0.0) == np.inf  # the top score is a different pair
    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.5
    s = np.round(rng.normal(size=200), 1)
    for far in (0.0, 0.01, 0.1, 0.5):
        t = metrics.threshold_at_far(s, y, far)
        assert ((s >= t) & ~y).sum() / (~y).sum() <= far
        lower = s[s < t]
        if lower.size:  # the next score down breaks the budget
            assert ((s >= lower.max()) & ~y).sum() / (~y).sum() > far


def test_accuracy_and_report():
    rng = np.random.default_rng(3)
    p, y = rng.random(101), rng.random(101) < 0.5
    for t in (0.0, 0.3, float(p[7]), 1.0):
        assert metrics.accuracy_at(p, y, t) == float(((p >= t) == y).mean())
    r = metrics.verification_report(SCORES, LABELS)
    assert r == {"roc_auc": 10.5 / 12, "eer": r["eer"], "eer_threshold": r["threshold"], "threshold": r["threshold"],
                 "accuracy": 5 / 7}  # fmt: skip
    assert r["threshold"] == pytest.approx(0.7) and r["eer"] == pytest.approx(0.25)
    # At .35 only the different pair at .8 is wrong.
    assert metrics.verification_report(SCORES, LABELS, threshold=0.35)["accuracy"] == 6 / 7


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([], [], "empty"),
        ([0.1, 0.2], [0, 1, 1], "differ in shape"),
        ([0.1, np.nan, 0.3], [0, 1, 1], "1 NaN"),
        ([0.1, np.inf, 0.3], [0, 1, 1], "1 infinite"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "all 3 labels are same .*undefined"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "all 3 labels are different"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "expected bool or 0/1"),
    ],
)
def test_bad_verification_inputs(scores, labels, message):
    for fn in (metrics.roc_curve, metrics.roc_auc, metrics.eer, metrics.verification_report):
        with pytest.raises(InputError, match=message):
            fn(scores, labels)


def test_one_class_is_enough_where_defined():
    assert metrics.accuracy_at([0.2, 0.7], [1, 1], 0.5) == 0.5
    assert metrics.threshold_at_far([0.2, 0.7], [0, 0], 0.5) == 0.7
    with pytest.raises(InputError, match="needs different"):
        metrics.threshold_at_far([0.2, 0.7], [1, 1], 0.5)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        metrics.threshold_at_far(SCORES, LABELS, 1.5)


# ---------------------------------------------------------------------------------------------
# Retrieval from a ranking.


def _loop_metrics(ranking, q_labels, g_labels, loo, k, self_rows=None):
    """P@1, R@k, MAP@R by plain loops over queries (R = 0 queries left out); ``self_rows``: the gallery
    row each query is (leave-one-out over some of the gallery)."""
    p1, rk, ap = [], [], []
    for i, row in enumerate(ranking):
        me = i if loo else (-1 if self_rows is None else self_rows[i])
        row = [j for j in row if j != me]
        r = sum(g_labels[j] == q_labels[i] for j in range(len(g_labels)) if j != me)
        if r == 0:
            continue
        rel = [g_labels[j] == q_labels[i] for j in row]
        p1.append(float(rel[0]))
        rk.append(float(any(rel[:k])))
        ap.append(sum(sum(rel[: n + 1]) / (n + 1) for n in range(r) if rel[n]) / r)
    return np.mean(p1), np.mean(rk), np.mean(ap)


def _brute_ranking(q, g, loo):
    d = np.linalg.norm(q[:, None].astype(np.float64) - g[None].astype(np.float64), axis=-1)
    return np.argsort(d, axis=1, kind="stable")  # self first in leave-one-out (distance 0): must be skipped


def _data(seed=0, n=90, d=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, n)
    labels[-1] = 99  # a class of one: no right answer, left out
    return rng.normal(size=(n, d)).astype(np.float32) + labels[:, None] % 3, labels


def test_ranking_metrics_against_loops_leave_one_out():
    e, labels = _data()
    ranking = _brute_ranking(e, e, True)
    assert (ranking[:, 0] == np.arange(len(e))).all()
    expected = _loop_metrics(ranking, labels, labels, True, 5)
    assert metrics.precision_at_1(ranking, labels) == pytest.approx(expected[0])
    assert metrics.recall_at_k(ranking, labels, 5) == pytest.approx(expected[1])
    assert metrics.map_at_r(ranking, labels) == pytest.approx(expected[2])
    # Without the query's own column, the same numbers.
    no_self = ranking[:, 1:]
    assert metrics.map_at_r(no_self, labels) == pytest.approx(expected[2])
    assert metrics.recall_at_k(no_self, labels, 5) == pytest.approx(expected[1])


def test_ranking_metrics_against_loops_separate_gallery():
    e, labels = _data(1)
    q, ql, g, gl = e[:30], labels[:30], e[30:], labels[30:]
    ranking = _brute_ranking(q, g, False)
    expected = _loop_metrics(ranking, ql, gl, False, 3)
    assert metrics.precision_at_1(ranking, ql, gallery_labels=gl) == pytest.approx(expected[0])
    assert metrics.recall_at_k(ranking, ql, 3, gallery_labels=gl) == pytest.approx(expected[1])
    assert metrics.map_at_r(ranking, ql, gallery_labels=gl) == pytest.approx(expected[2])


def test_retrieval_metrics_by_hand_leave_one_out():
    # Each row may hold the query itself anywhere: it is skipped. R: a 2 others, b 1 other.
    labels = np.array(["a", "a", "b", "b", "a"])
    ranking = np.array([[2, 0, 1, 3, 4], [1, 4, 0, 2, 3], [0, 3, 1, 2, 4], [2, 3, 0, 1, 4], [3, 2, 0, 1, 4]])
    # Without self: b a b a | a a b b | a b a a | b a a a | b b a a
    assert metrics.precision_at_1(ranking, labels) == pytest.approx(2 / 5)
    assert metrics.recall_at_k(ranking, labels, 2) == pytest.approx(4 / 5)
    assert metrics.recall_at_k(ranking, labels, 3) == 1.0
    # AP@R, within the top R only: (1/2) / 2 (its 2nd match is 4th, beyond R = 2), (1 + 1) / 2,
    # 0 (its one match is 2nd, beyond R = 1), 1, 0 (none in the top 2).
    assert metrics.map_at_r(ranking, labels) == pytest.approx((0.25 + 1 + 0 + 1 + 0) / 5)


def test_retrieval_metrics_by_hand_separate_gallery():
    gallery = np.array(["a", "c", "a", "b", "b", "a", "c"])  # R: a 3, b 2
    queries = np.array(["a", "b"])
    ranking = np.array([[1, 0, 2, 5, 4], [1, 3, 4, 0, 2]])  # c a a a b | c b b a a
    assert metrics.precision_at_1(ranking, queries, gallery_labels=gallery) == 0.0
    assert metrics.recall_at_k(ranking, queries, 2, gallery_labels=gallery) == 1.0
    # Top R = 3 of a: c a a -> (1/2 + 2/3) / 3 (its 3rd match, 4th, is beyond R); top R = 2 of b: c b -> (1/2) / 2.
    expected = ((1 / 2 + 2 / 3) / 3 + (1 / 2) / 2) / 2
    assert metrics.map_at_r(ranking, queries, gallery_labels=gallery) == pytest.approx(expected)


def test_pytorch_metric_learning_example():
    # pytorch-metric-learning's test_calculate_accuracies (worked by hand there, separate query and
    # reference sets): query labels 1 1 2 3 4, the labels of each query's 5 nearest below, reference
    # class sizes {1: 3, 2: 5, 3: 4, 4: 5}; precision@1 0.4, MAP@R the mean of the five values below.
    query_labels = np.array([1, 1, 2, 3, 4])
    knn_labels = np.array([[0, 1, 1, 2, 2], [1, 0, 1, 1, 3], [4, 4, 4, 4, 2], [3, 1, 3, 1, 3], [0, 0, 4, 2, 2]])
    gallery_labels = np.repeat([0, 1, 2, 3, 4], [3, 3, 5, 4, 5])
    members = {c: list(np.flatnonzero(gallery_labels == c)) for c in range(5)}
    ranking = []
    for row in knn_labels:
        taken = {c: iter(members[c]) for c in members}
        ranking.append([next(taken[c]) for c in row])
    ranking = np.array(ranking)
    expected_map = np.mean([(1 / 2 + 2 / 3) / 3, (1 + 2 / 3) / 3, (1 / 5) / 5, (1 + 2 / 3) / 4, (1 / 3) / 5])
    assert metrics.precision_at_1(ranking, query_labels, gallery_labels=gallery_labels) == pytest.approx(0.4)
    assert metrics.map_at_r(ranking, query_labels, gallery_labels=gallery_labels) == pytest.approx(expected_map)
    assert metrics.recall_at_k(ranking, query_labels, 2, gallery_labels=gallery_labels) == pytest.approx(3 / 5)


def test_bad_rankings():
    labels = np.array([0, 0, 1, 1, 2])
    ok = np.array([[1, 2], [0, 3], [3, 0], [2, 1], [0, 1]])
    assert metrics.precision_at_1(ok, labels) == 1.0  # class 2 has one item: query 4 left out
    cases = [
        (ok[:4], labels, "expected \\(5, k\\)"),
        (ok.astype(float), labels, "integer"),
        (ok + 4, labels, "indices in"),
        (np.array([[1, 1], [0, 3], [3, 0], [2, 1], [0, 1]]), labels, "repeats a gallery index in row 0"),
        (ok, np.array([0, 1, 2, 3, 4]), "no query has an item of its class"),
    ]
    for ranking, lab, message in cases:
        with pytest.raises(InputError, match=message):
            metrics.precision_at_1(ranking, lab)
    with pytest.raises(InputError, match="recall@3 needs the top 3 neighbours of query 0"):
        metrics.recall_at_k(ok, labels, 3)
    with pytest.raises(InputError, match="MAP@R needs the top 2 neighbours of query 0, but its ranking row holds 1"):
        metrics.map_at_r(np.array([[0, 1], [0, 2], [3, 0], [2, 1], [0, 1]]), np.array([0, 0, 0, 1, 1]))
    with pytest.raises(InputError, match="k is 0"):
        metrics.recall_at_k(ok, labels, 0)


# ---------------------------------------------------------------------------------------------
# k-NN in blocks.


def _head(energy, d, seed=1):
    rng = np.random.default_rng(seed)
    if energy == "weighted_l1":
        return {"kernel": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32), "bias": jnp.asarray([0.3], jnp.float32)}
    return {"scale": jnp.asarray(-0.7, jnp.float32), "bias": jnp.asarray(0.4, jnp.float32)}


def _brute_scores(energy, head, q, g):
    """Float64 (Q, G) scores: the energy's logit, or -distance without a head."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if energy == "weighted_l1":
        return np.abs(q[:, None] - g[None]) @ np.asarray(head["kernel"], np.float64)[:, 0] + float(head["bias"][0])
    if energy == "euclidean":
        d = np.linalg.norm(q[:, None] - g[None], axis=-1)
    else:
        d = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    if head is None:
        return -d
    return float(head["bias"]) - np.log1p(np.exp(float(head["scale"]))) * d


def _assert_top_k(idx, vals, truth, k, tol=1e-4):
    idx, vals = np.asarray(idx), np.asarray(vals)
    top = np.take_along_axis(truth, np.argsort(-truth, axis=1, kind="stable")[:, :k], axis=1)
    np.testing.assert_allclose(vals, top, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.take_along_axis(truth, idx, axis=1), top, rtol=tol, atol=tol)
    # Indices exactly, except where a true score is within float32 rounding of a neighbour's (ties).
    order = np.argsort(-truth, axis=1, kind="stable")[:, : k + 1]
    gaps = -np.diff(np.take_along_axis(truth, order, axis=1), axis=1)
    clear = (gaps[:, :k] > tol) & np.c_[np.full(len(gaps), True), gaps[:, : k - 1] > tol]
    order = order[:, :k]
    assert clear.mean() > 0.9  # the data leaves few near-ties, so this checks almost every index
    np.testing.assert_array_equal(idx[clear], order[clear])


# weighted_l1 has no score without its head (refused: test_bad_knn_inputs).
# Without a head (ranking by distance alone) in the full suite only: the same blocks, another score.
@pytest.mark.parametrize(
    "energy, with_head",
    [("euclidean", True), ("cosine", True), ("weighted_l1", True)]
    + [pytest.param(e, False, marks=pytest.mark.slow) for e in ("euclidean", "cosine")],
)
def test_knn_chunked_equals_brute_force(energy, with_head):
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(53, 8)).astype(np.float32)
    head = _head(energy, 8) if with_head else None
    truth = _brute_scores(energy, head, q, g)
    found = []
    for chunk, gallery_chunk in ((7, 11), (100, 4), (1, None)):  # ragged blocks; one query block; one query
        idx, vals = metrics.knn(q, g, 6, energy=energy, head=head, chunk=chunk, gallery_chunk=gallery_chunk)
        assert idx.shape == vals.shape == (37, 6) and idx.dtype == jnp.int32 and vals.dtype == jnp.float32
        _assert_top_k(idx, vals, truth, 6)
        found.append(idx)
    for idx in found[1:]:  # the same neighbours whatever the blocks
        np.testing.assert_array_equal(idx, found[0])
    # ... and the energy's own scores of those pairs (siamax.energies, one pair at a time)
    E, pairs = energies.get(energy), (jnp.repeat(jnp.asarray(q), 6, 0), jnp.asarray(g)[np.asarray(idx).ravel()])
    one = -E.distance(*pairs) if head is None else E.logit(head, *pairs)
    np.testing.assert_allclose(vals, np.asarray(one).reshape(37, 6), rtol=1e-6, atol=1e-6)
    # An Energy object is as good as its name.
    np.testing.assert_array_equal(metrics.knn(q, g, 6, energy=E, head=head)[0], found[-1])


@pytest.mark.parametrize("energy", ["euclidean", "cosine", "weighted_l1"])
def test_knn_leave_one_out(energy):
    rng = np.random.default_rng(6)
    e = rng.normal(size=(41, 5)).astype(np.float32)
    head = _head(energy, 5)
    truth = _brute_scores(energy, head, e, e)
    np.fill_diagonal(truth, -np.inf)
    idx, vals = metrics.knn(e, e, 9, energy=energy, head=head, chunk=6, gallery_chunk=10, leave_one_out=True)
    assert not (np.asarray(idx) == np.arange(41)[:, None]).any()
    _assert_top_k(idx, vals, truth, 9)


def test_knn_ties_go_to_the_lower_index():
    rng = np.random.default_rng(7)
    g = rng.normal(size=(30, 4)).astype(np.float32)
    g[[9, 17, 26]] = g[3]  # four identical items, in different gallery blocks
    idx, vals = metrics.knn(g[[3]], g, 4, energy="euclidean", chunk=1, gallery_chunk=8)
    np.testing.assert_array_equal(np.asarray(idx)[0], [3, 9, 17, 26])
    assert (np.asarray(vals) == 0).all()
    idx, _ = metrics.knn(g[[3]], g, 2, energy="euclidean", chunk=1, gallery_chunk=5)
    np.testing.assert_array_equal(np.asarray(idx)[0], [3, 9])
    # Ties that are not the best: a query's 2nd to 4th neighbours identical, in blocks kept in
    # another order than their rows' (the block of row 20 holds the best item, row 0's the worst).
    g = np.full((24, 2), 10.0, np.float32)
    g[:, 1] = np.arange(24) * 100.0  # far apart, and all far from the query
    g[20] = [0.0, 0.0]  # the nearest
    g[[1, 6, 21]] = [3.0, 0.0]  # three at the same distance, 3
    idx, vals = metrics.knn(np.zeros((1, 2), np.float32), g, 4, energy="euclidean", chunk=1, gallery_chunk=4)
    np.testing.assert_array_equal(np.asarray(idx)[0], [20, 1, 6, 21])
    np.testing.assert_array_equal(np.asarray(vals)[0], [0.0, -3.0, -3.0, -3.0])
    idx, _ = metrics.knn(np.zeros((1, 2), np.float32), g, 3, energy="euclidean", chunk=1, gallery_chunk=4)
    np.testing.assert_array_equal(np.asarray(idx)[0], [20, 1, 6])


def test_knn_large_gallery_in_bounded_memory():
    rng = np.random.default_rng(8)
    g = rng.normal(size=(20_000, 64)).astype(np.float32)
    q = g[rng.choice(20_000, 1000, replace=False)] + 0.05 * rng.normal(size=(1000, 64)).astype(np.float32)
    k, chunk, gallery_chunk = 10, 128, 3001
    idx, vals = metrics.knn(q, g, k, energy="euclidean", chunk=chunk, gallery_chunk=gallery_chunk)
    check = slice(0, 1000, 25)
    _assert_top_k(np.asarray(idx)[check], np.asarray(vals)[check], _brute_scores("euclidean", None, q[check], g), k)
    # What the compiled program of a block of queries holds besides its arguments (the stored gallery,
    # the block) and results: one block's intermediates, far below the 1000 x 20000 score matrix (80 MB).
    energy = energies.get("euclidean")
    stored = neighbours.store(energy, jnp.asarray(g), prepass=False)
    plan = neighbours._plan(energy, chunk, k, 64, stored.rows.shape[0], False, gallery_chunk)
    compiled = neighbours._search.lower(
        energy, "float32", "negative_distance", k, plan, stored, None, jnp.asarray(q[:chunk]), None
    ).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    bound = metrics.knn_block_bytes("euclidean", 64, k, chunk, gallery_chunk)
    assert temp <= bound + (1 << 20), (temp, bound)
    assert temp < 1000 * 20_000 * 4 / 5
    assert stored.rows.nbytes == 20_480 * 64 * 4  # the gallery's stored copy: whole 1024-row blocks


def test_default_blocks_stay_within_the_budget():
    """Without gallery_chunk a block's keys (and weighted_l1's differences) stay within 2^22 values."""
    for energy, dim in (("euclidean", 4096), ("cosine", 64), ("weighted_l1", 4096), ("weighted_l1", 64)):
        queries = min(256, neighbours.query_block(energy, dim))  # knn's default chunk, capped
        per_row = queries * (dim if energy == "weighted_l1" else 1)
        for capacity in (1024, 100 * 1024):
            rows = neighbours.chunk_rows(energy, queries, dim, capacity)
            assert rows <= capacity and per_row * rows <= max(1 << 22, per_row * 64)
    assert neighbours.query_block("weighted_l1", 4096) == 16  # 16 x 64 x 4096 differences: 2^22
    assert neighbours.chunk_rows("euclidean", 256, 64, 100 * 1024) == 8192


def test_bad_knn_inputs():
    e = np.zeros((5, 3), np.float32)
    cases = [
        (dict(queries=e[0]), "queries has shape \\(3,\\)"),
        (dict(gallery=np.zeros((0, 3))), "at least one"),
        (dict(gallery=np.zeros((5, 4))), "3 dimensions and the gallery 4"),
        (dict(queries=np.full((5, 3), np.nan)), "NaN"),
        (dict(k=6), "1 <= k <= 5"),
        (dict(k=5, leave_one_out=True), "1 <= k <= 4 .* less the query itself"),
        (dict(gallery=np.zeros((6, 3)), leave_one_out=True), "queries to be the gallery"),
        (dict(energy="l2"), "energy is 'l2'"),
        (dict(energy="weighted_l1"), "head=params.weights"),
        (dict(energy="weighted_l1", head={"kernel": jnp.zeros((4, 1)), "bias": jnp.zeros(1)}), "expected \\(3, 1\\)"),
        (dict(head={"kernel": jnp.zeros((3, 1)), "bias": jnp.zeros(1)}), "expected the euclidean head"),
        (dict(chunk=0), "chunk is 0"),
    ]
    for change, message in cases:
        args = dict(queries=e, gallery=e, k=2, energy="euclidean") | change
        with pytest.raises(InputError, match=message):
            metrics.knn(args.pop("queries"), args.pop("gallery"), args.pop("k"), **args)


# ---------------------------------------------------------------------------------------------
# The retrieval report.


@pytest.mark.parametrize("energy", ["euclidean", "cosine", "weighted_l1"])
def test_retrieval_report_equals_the_metrics_of_a_brute_force_ranking(energy):
    e, labels = _data(2, n=70)
    head = _head(energy, 6)
    truth = _brute_scores(energy, head, e, e)
    np.fill_diagonal(truth, -np.inf)
    ranking = np.argsort(-truth, axis=1, kind="stable")[:, :-1]
    report = metrics.retrieval_report(e, labels, energy, head, k=5, chunk=16, gallery_chunk=9)
    assert set(report) == {"precision_at_1", "recall_at_5", "map_at_r", "queries"}
    expected = _loop_metrics(ranking, labels, labels, True, 5)
    assert report["precision_at_1"] == pytest.approx(expected[0])
    assert report["recall_at_5"] == pytest.approx(expected[1])
    assert report["map_at_r"] == pytest.approx(expected[2])
    assert report["queries"] == 69  # the class of one is left out


@pytest.mark.parametrize("energy", ["euclidean", "cosine", "weighted_l1"])
def test_retrieval_in_blocks_is_the_report_and_samples_queries_exactly(energy):
    e, labels = _data(4, n=70)
    head = _head(energy, 6)
    whole = metrics.retrieval_report(e, labels, energy, head, k=5, chunk=16)
    cuts = [0, 7, 8, 40, 69, 70]  # blocks of 7, 1, 32, 29 and 1 items
    blocks = [e[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    assert metrics.retrieval_in_blocks(e, np.arange(70), blocks, labels, energy, head, 5, chunk=16) == whole
    assert metrics.retrieval_in_blocks(e, np.arange(70), [e], labels, energy, head, 5, chunk=16) == whole
    rows = np.array([0, 3, 8, 39, 40, 68, 69])  # 69: the class of one, left out
    got = metrics.retrieval_in_blocks(e[rows], rows, iter(blocks), labels, energy, head, 5, chunk=4)
    truth = _brute_scores(energy, head, e[rows], e)
    truth[np.arange(len(rows)), rows] = -np.inf
    ranking = np.argsort(-truth, axis=1, kind="stable")[:, :-1]
    expected = _loop_metrics(ranking, labels[rows], labels, False, 5, self_rows=rows)
    assert [got[m] for m in ("precision_at_1", "recall_at_5", "map_at_r")] == pytest.approx(list(expected))
    assert got["queries"] == 6
    with pytest.raises(InputError, match="the blocks held 69 items for 70 labels"):
        metrics.retrieval_in_blocks(e, np.arange(70), blocks[:-1], labels, energy, head, 5)
    with pytest.raises(InputError, match="query_rows must be rows"):
        metrics.retrieval_in_blocks(e[:1], [70], blocks, labels, energy, head, 5)


def test_retrieval_report_separate_gallery():
    e, labels = _data(3)
    q, ql, g, gl = e[:25], labels[:25], e[25:], labels[25:]
    report = metrics.retrieval_report(q, ql, "euclidean", None, k=3, gallery=g, gallery_labels=gl)
    expected = _loop_metrics(_brute_ranking(q, g, False), ql, gl, False, 3)
    assert [report[m] for m in ("precision_at_1", "recall_at_3", "map_at_r")] == pytest.approx(list(expected))
    with pytest.raises(InputError, match="go together"):
        metrics.retrieval_report(q, ql, "euclidean", gallery=g)
    with pytest.raises(InputError, match=re.escape("embeddings have shape (25, 6) for 24 labels")):
        metrics.retrieval_report(q, ql[:24], "euclidean")
