"""The in-batch objectives and the triplet miners against plain NumPy loops over pairs and triplets."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamax import energies, losses, miners, train
from siamax.errors import ConfigError

# P classes x K images, classes with one image, one class only, no two images of a class.
LABEL_SETS = {
    "3x2": [0, 0, 1, 1, 2, 2],
    "singletons": [0, 0, 0, 1, 1, 1, 2, 3, 4],
    "one_class": [7, 7, 7, 7],
    "all_different": [0, 1, 2, 3, 4],
    "4x3": [3, 1, 2, 0, 3, 1, 2, 0, 3, 1, 2, 0],
}
NO_TRIPLET = ("one_class", "all_different")
all_pairs = jax.jit(losses.all_pairs)
episodic = jax.jit(losses.episodic)
contrastive = jax.jit(losses.contrastive)
triplet = jax.jit(losses.triplet, static_argnames="miner")
pairwise_distance = jax.jit(lambda energy, e: energies.get(energy).pairwise_distance(e), static_argnums=0)


def _distances(n, energy="euclidean", seed=0):
    e = np.random.default_rng(seed).normal(size=(n, 5)).astype(np.float32)
    return np.asarray(pairwise_distance(energy, jnp.asarray(e)), np.float64)


def _sigmoid_bce(logit, y):
    return max(logit, 0) - logit * y + np.log1p(np.exp(-abs(logit)))


def _balanced_mean(values_same, values_diff):
    """Same and different pairs weigh half each; a batch with only one kind averages that kind."""
    means = [np.mean(v) for v in (values_same, values_diff) if v]
    return np.mean(means) if means else 0.0


def _pairs(labels):
    return [(i, j, labels[i] == labels[j]) for i, j in itertools.combinations(range(len(labels)), 2)]


def _ref_all_pairs(logits, labels):
    same = [_sigmoid_bce(logits[i, j], 1.0) for i, j, s in _pairs(labels) if s]
    diff = [_sigmoid_bce(logits[i, j], 0.0) for i, j, s in _pairs(labels) if not s]
    right_same = [float(logits[i, j] > 0) for i, j, s in _pairs(labels) if s]
    right_diff = [float(logits[i, j] <= 0) for i, j, s in _pairs(labels) if not s]
    return _balanced_mean(same, diff), _balanced_mean(right_same, right_diff)


def _ref_episodic(logits, labels):
    terms = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if positives:
            p = sum(np.exp(logits[i, j]) for j in positives) / sum(np.exp(logits[i, j]) for j in others)
            terms.append(-np.log(p))
    return np.mean(terms) if terms else 0.0


def _ref_contrastive(d, labels, m):
    same = [d[i, j] ** 2 for i, j, s in _pairs(labels) if s]
    diff = [max(0.0, m - d[i, j]) ** 2 for i, j, s in _pairs(labels) if not s]
    return _balanced_mean(same, diff)


def _ref_triplet(d, labels, m, miner):
    """(loss, active fraction) by explicit loops over anchors, positives and negatives."""
    n = len(labels)
    hinges = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue  # anchors without a positive or a negative are skipped
        if miner == "all":
            hinges += [max(0.0, d[a, p] - d[a, k] + m) for p in pos for k in neg]
        elif miner == "batch_hard":
            hinges.append(max(0.0, max(d[a, p] for p in pos) - min(d[a, k] for k in neg) + m))
        else:
            for p in pos:
                farther = [d[a, k] for k in neg if d[a, k] > d[a, p]]
                d_an = min(farther) if farther else max(d[a, k] for k in neg)
                hinges.append(max(0.0, d[a, p] - d_an + m))
    active = [h for h in hinges if h > 0]
    if not hinges:
        return 0.0, 0.0
    loss = (np.mean(active) if active else 0.0) if miner == "all" else np.mean(hinges)
    return loss, len(active) / len(hinges)


@pytest.mark.parametrize("name", LABEL_SETS)
def test_all_pairs_and_episodic_match_loops(name):
    labels = np.asarray(LABEL_SETS[name], np.int32)
    n = len(labels)
    logits = np.random.default_rng(1).normal(size=(n, n)) * 2
    logits = ((logits + logits.T) / 2).astype(np.float32)
    ce, accuracy = all_pairs(jnp.asarray(logits), jnp.asarray(labels))
    ref_ce, ref_acc = _ref_all_pairs(logits.astype(np.float64), labels)
    np.testing.assert_allclose([float(ce), float(accuracy)], [ref_ce, ref_acc], rtol=1e-5, atol=1e-6)
    ep = episodic(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(ep), _ref_episodic(logits.astype(np.float64), labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("energy", energies.ENERGIES)
@pytest.mark.parametrize("name", LABEL_SETS)
def test_contrastive_matches_loop(name, energy):
    labels = np.asarray(LABEL_SETS[name], np.int32)
    d = _distances(len(labels), energy)
    margin = float(np.median(d[d > 0]))  # some different pairs inside the margin, some outside
    got = contrastive(jnp.asarray(d, jnp.float32), jnp.asarray(labels), margin)
    np.testing.assert_allclose(float(got), _ref_contrastive(d, labels, margin), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("miner", miners.MINERS)
@pytest.mark.parametrize("name", LABEL_SETS)
def test_triplet_miners_match_loops(name, miner):
    labels = np.asarray(LABEL_SETS[name], np.int32)
    for seed, margin in ((0, 0.3), (1, 1.0), (2, 5.0)):
        d = _distances(len(labels), seed=seed)
        loss, active = triplet(jnp.asarray(d, jnp.float32), jnp.asarray(labels), margin, miner=miner)
        ref_loss, ref_active = _ref_triplet(d, labels, margin, miner)
        np.testing.assert_allclose([float(loss), float(active)], [ref_loss, ref_active], rtol=1e-5, atol=1e-6)
        if name in NO_TRIPLET:
            assert float(loss) == 0.0 and float(active) == 0.0


@pytest.mark.parametrize("miner", miners.MINERS)
def test_semi_hard_picks_as_facenet(miner):
    """Hand-made distances: anchor 0, positive 1 at 0.5; negatives at 0.2 (hard), 0.7 and 0.9."""
    labels = jnp.array([0, 0, 1, 2, 3])
    d = np.full((5, 5), 3.0)
    np.fill_diagonal(d, 0.0)
    d[0, 1:] = d[1:, 0] = [0.5, 0.2, 0.7, 0.9]
    d_ap, d_an, valid = miners.mine(miner, jnp.asarray(d, jnp.float32), labels)
    if miner == "semi_hard":
        assert bool(valid[0, 1]) and float(d_ap[0, 1]) == 0.5 and np.isclose(float(d_an[0, 1]), 0.7)
    elif miner == "batch_hard":
        assert bool(valid[0]) and float(d_ap[0]) == 0.5 and np.isclose(float(d_an[0]), 0.2)
    else:
        assert int(valid[0, 1].sum()) == 3 and int(valid.sum()) == 2 * 3  # anchors 0 and 1, three negatives each
    # Anchor 1's positive 0 is at 0.5 and every negative at 3: semi-hard takes the closest farther one.
    if miner == "semi_hard":
        assert float(d_an[1, 0]) == 3.0


@pytest.mark.parametrize("miner", miners.MINERS)
@pytest.mark.parametrize("energy", energies.ENERGIES)
def test_losses_have_finite_gradients_without_triplets(miner, energy):
    """Identical embeddings (d = 0) and batches with no valid triplet: finite gradients, no NaN."""
    e = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    e = e.at[1].set(e[0]).at[3].set(jnp.zeros(4))  # a duplicate (d = 0) and a zero embedding

    def loss(e, labels):
        d = energies.get(energy).pairwise_distance(e)
        return losses.triplet(d, labels, 1.0, miner)[0] + losses.contrastive(d, labels, 1.0)

    grad = jax.jit(jax.grad(loss))
    for labels in ([0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5], [1] * 6):
        labels = jnp.asarray(labels)
        g = grad(e, labels)
        assert bool(jnp.all(jnp.isfinite(g))), (energy, miner, labels)


def test_triplet_loss_goes_down_with_gradient_steps():
    """A sanity check of the sign: gradient descent on the embeddings lowers every miner's loss."""
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    e0 = jnp.asarray(np.random.default_rng(3).normal(size=(6, 3)), jnp.float32)
    for miner in miners.MINERS:

        def total(e, miner=miner):
            loss, active = losses.triplet(energies.get("euclidean").pairwise_distance(e), labels, 1.0, miner)
            # "batch all" averages over the active triplets only: what must fall is their sum.
            return loss * active if miner == "all" else loss

        step = jax.jit(lambda e, total=total: e - 0.1 * jax.grad(total)(e))
        e = e0
        for _ in range(40):
            e = step(e)
        assert float(jax.jit(total)(e)) < 0.6 * float(jax.jit(total)(e0)), miner


def test_invalid_kind_and_miner_refused_with_the_valid_list():
    with pytest.raises(ConfigError, match=re.escape(str(tuple(losses.OBJECTIVES)))):
        train.Objective(kind="siamese")
    with pytest.raises(ConfigError, match=re.escape(str(miners.MINERS))):
        train.Objective(kind="triplet", miner="hardest")
    with pytest.raises(ValueError, match=re.escape(str(miners.MINERS))):
        miners.mine("hardest", jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    for margin in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError, match="margin must be a positive finite number"):
            train.Objective(kind="contrastive", margin=margin)
    assert hash(train.Objective(kind="triplet", margin=1, miner="all")) == hash(
        train.Objective("triplet", margin=1.0, miner="all")
    )
