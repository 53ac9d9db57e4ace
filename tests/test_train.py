"""The jitted train step: metrics, donation, learning a synthetic same/different task."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax import augment, energies, losses, miners, optim, train
from siamax.model import ModelSpec, Siamese

pytestmark = pytest.mark.slow  # real training steps

TINY = ModelSpec(
    input_size=16, filters=(8, 16), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=32, init="lecun"
)


def _prototypes(n_classes=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n_classes, size, size)) < 0.3).astype(np.float32)


def _noisy(protos, classes, rng):
    x = protos[classes]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1.0 - x, x).astype(np.float32)


def _pair_batch(protos, rng, b=32):
    n = len(protos)
    c1 = rng.integers(0, n, b)
    same = rng.random(b) < 0.5
    c2 = np.where(same, c1, (c1 + rng.integers(1, n, b)) % n)
    return {"x1": _noisy(protos, c1, rng), "x2": _noisy(protos, c2, rng), "y": same.astype(np.float32)}


def test_small_model_learns_synthetic_same_different():
    protos = _prototypes()
    rng = np.random.default_rng(1)
    params = siamax.init(jax.random.key(0), TINY)
    tx = optim.adam(3e-3, steps_per_epoch=50)
    state = train.create_train_state(params, tx, train.Objective(l2=(("fc", 1e-4),)))
    key = jax.random.key(2)
    losses = []
    for step in range(150):
        state, m = train.train_step(state, _pair_batch(protos, rng), jax.random.fold_in(key, step))
        losses.append(float(m["loss"]))
        assert bool(m["finite"])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    test = _pair_batch(protos, np.random.default_rng(99), b=256)
    p = siamax.score(state.params, test["x1"], test["x2"])
    accuracy = float(jnp.mean((p > 0.5) == (test["y"] > 0.5)))
    assert accuracy >= 0.9, accuracy
    assert int(state.step) == 150


def test_metrics_and_donation():
    params = siamax.init(jax.random.key(0), TINY)
    tx = optim.koch_sgd(TINY.layer_names, optim.SGDConfig(), steps_per_epoch=10)
    state = train.create_train_state(params, tx, train.Objective(l2=(("conv1", 0.01), ("fc", 0.001))))
    batch = _pair_batch(_prototypes(), np.random.default_rng(0), b=8)
    old_kernel = state.params.weights["conv1"]["kernel"]
    new_state, m = train.train_step(state, batch, jax.random.key(0))
    assert set(m) == {"loss", "cross_entropy", "l2", "accuracy", "grad_norm", "finite"}
    assert np.isclose(float(m["loss"]), float(m["cross_entropy"]) + float(m["l2"]), rtol=1e-5)
    assert float(m["l2"]) > 0 and float(m["grad_norm"]) > 0 and 0 <= float(m["accuracy"]) <= 1
    assert old_kernel.is_deleted()  # the state was donated: no second copy of the weights
    assert int(new_state.step) == 1


def test_non_finite_loss_is_flagged():
    params = siamax.init(jax.random.key(0), TINY)
    bad = jax.tree.map(lambda w: w * jnp.nan, params.weights)
    state = train.create_train_state(params.replace(weights=bad), optim.adam(1e-3, 10))
    _, m = train.train_step(state, _pair_batch(_prototypes(), np.random.default_rng(0), b=4), jax.random.key(0))
    assert not bool(m["finite"])


def test_all_pairs_objective_learns():
    protos = _prototypes(n_classes=8)
    rng = np.random.default_rng(3)
    params = siamax.init(jax.random.key(0), TINY)
    state = train.create_train_state(params, optim.adam(3e-3, 50), train.Objective(kind="all_pairs"))
    for step in range(60):
        classes = np.repeat(rng.choice(8, 4, replace=False), 4)
        batch = {"x": _noisy(protos, classes, rng), "labels": classes}
        state, m = train.train_step(state, batch, jax.random.key(step))
    test = _pair_batch(protos, np.random.default_rng(7), b=256)
    p = siamax.score(state.params, test["x1"], test["x2"])
    assert float(jnp.mean((p > 0.5) == (test["y"] > 0.5))) >= 0.9


def test_bad_objective():
    with pytest.raises(ValueError, match="objective kind must be one of"):
        train.Objective(kind="quadruplet")


# ---- Issue 15: the objective family x the energies.

PINNED = ModelSpec(
    input_size=16,
    filters=(4, 8),
    kernels=(3, 3),
    pools=(True, True),
    padding="SAME",
    fc_units=12,
    init="lecun",
    conv_impl="xla",
)


def _numpy_weights(spec, seed=0):
    rng, cin, tree = np.random.default_rng(seed), 1, {}
    for i, (f, k) in enumerate(zip(spec.filters, spec.kernels)):
        tree[f"conv{i + 1}"] = {
            "kernel": rng.normal(size=(k, k, cin, f)) * np.sqrt(2 / (k * k * cin)),
            "bias": rng.normal(size=f) * 0.1,
        }
        cin = f
    d = int(np.prod(spec.feature_shape))
    tree["fc"] = {
        "kernel": rng.normal(size=(d, spec.fc_units)) / np.sqrt(d),
        "bias": rng.normal(size=spec.fc_units) * 0.1,
    }
    tree["head"] = {"kernel": rng.normal(size=(spec.fc_units, 1)), "bias": np.array([0.3])}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _pinned_batches():
    rng = np.random.default_rng(0)
    x = (rng.random((8, 16, 16)) < 0.3).astype(np.float32)
    pairs = {"x1": x[:6], "x2": x[[1, 0, 3, 4, 5, 2]], "y": np.array([1, 1, 1, 0, 1, 0], np.float32)}
    return pairs, {"x": x, "labels": np.array([0, 0, 1, 1, 2, 2, 3, 4], np.int32)}


@pytest.mark.parametrize(
    "kind,pair_weight,loss,cross_entropy,accuracy",
    [
        # Computed by the code before issue 15 (siamax.train._pairs_loss / _in_batch_loss, e20ecca).
        ("pairs", 1.0, 0.7773197889328003, 0.712997317314148, 0.1666666716337204),
        ("all_pairs", 1.0, 0.7629528641700745, 0.6986303329467773, 0.3466666638851166),
        ("episodic", 1.0, 2.7245712280273438, 0.6986303329467773, 0.3466666638851166),
        ("episodic", 0.5, 2.375256061553955, 0.6986303329467773, 0.3466666638851166),
    ],
)
def test_koch_objectives_compute_what_they_did(kind, pair_weight, loss, cross_entropy, accuracy):
    """pairs / all_pairs / episodic: the losses of before the objective family (pinned numbers; the
    cross_entropy metric of episodic is now its all-pairs term, it was the whole data loss)."""
    pairs, classes = _pinned_batches()
    objective = train.Objective(kind=kind, pair_weight=pair_weight, l2=(("conv1", 0.01), ("head", 0.001)))
    batch = pairs if kind == "pairs" else classes
    got, aux = jax.jit(train.loss_fn, static_argnums=(1, 2))(
        _numpy_weights(PINNED), PINNED, objective, batch, jax.random.key(0)
    )
    np.testing.assert_allclose(
        [float(got), float(aux["cross_entropy"]), float(aux["accuracy"]), float(aux["l2"])],
        [loss, cross_entropy, accuracy, 0.06432251632213593],
        rtol=2e-6,
    )


def test_in_batch_logits_and_losses_are_bit_identical_to_before():
    """The pre-issue-15 in-batch maths, verbatim (a Dense head on repeat/tile differences), against the
    energies' pairwise logits and siamax.losses, bit for bit (eagerly: op by op, the same arithmetic)."""
    weights = _numpy_weights(PINNED)
    _, classes = _pinned_batches()
    e = siamax.embed(siamax.Params(weights, PINNED), classes["x"])
    labels = jnp.asarray(classes["labels"])
    b = e.shape[0]
    old_logits = (
        nn.Dense(1).apply({"params": weights["head"]}, jnp.abs(jnp.repeat(e, b, 0) - jnp.tile(e, (b, 1))))[..., 0]
    ).reshape(b, b)
    same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    off_diag = 1.0 - jnp.eye(b)
    pos, neg = same * off_diag, (1.0 - same)
    pair_weights = pos / jnp.maximum(pos.sum(), 1.0) + neg / jnp.maximum(neg.sum(), 1.0)
    old_ce = losses.pair_cross_entropy(old_logits, same, pair_weights)
    old_acc = (((old_logits > 0) == (same > 0.5)) * pair_weights).sum() / pair_weights.sum()
    masked = jnp.where(off_diag > 0, old_logits, -jnp.inf)
    has_pos = pos.sum(1) > 0
    lps = jax.nn.logsumexp(jnp.where(pos > 0, old_logits, -jnp.inf), axis=1) - jax.nn.logsumexp(masked, axis=1)
    old_episodic = -jnp.sum(jnp.where(has_pos, lps, 0.0)) / jnp.maximum(has_pos.sum(), 1)

    logits = Siamese(PINNED).apply({"params": weights}, e, method="pairwise_logits")
    np.testing.assert_array_equal(logits, old_logits)
    ce, acc = losses.all_pairs(logits, labels)
    assert (float(ce), float(acc)) == (float(old_ce), float(old_acc))
    assert float(losses.episodic(logits, labels)) == float(old_episodic)


def _class_batch(protos, rng, p=4, k=4):
    classes = np.repeat(rng.choice(len(protos), p, replace=False), k).astype(np.int32)
    return {"x": _noisy(protos, classes, rng), "labels": classes}


OBJECTIVES = [
    ("pairs", "batch_hard"),
    ("all_pairs", "batch_hard"),
    ("episodic", "batch_hard"),
    ("contrastive", "batch_hard"),
]
OBJECTIVES += [("triplet", miner) for miner in miners.MINERS]
# Every objective with every energy; the triplet miners choose rows of the same distance matrix whatever the
# energy, so the other miners run with one energy each (their own tests: tests/test_losses.py).
GRID = [(k, m, e) for k, m in OBJECTIVES if m == "batch_hard" for e in energies.ENERGIES]
GRID += [(k, m, e) for (k, m), e in zip((o for o in OBJECTIVES if o[1] != "batch_hard"), list(energies.ENERGIES)[1:])]


@pytest.fixture(scope="module")
def tiny_params():
    """One init per energy ("tiny", XLA's convolutions: the fastest to compile on CPU)."""
    spec = siamax.MODELS["tiny"].replace(conv_impl="xla")
    return {energy: siamax.init(jax.random.key(0), spec.replace(energy=energy)) for energy in energies.ENERGIES}


@pytest.mark.parametrize("kind,miner,energy", GRID)
def test_every_objective_and_energy_trains(tiny_params, kind, miner, energy):
    """A jitted train step of each objective x energy lowers the loss on a fixed synthetic batch, with
    finite metrics, its own terms reported and loss = its terms + l2."""
    params = tiny_params[energy]
    params = params.replace(weights=jax.tree.map(jnp.copy, params.weights))  # train_step donates its state
    objective = train.Objective(kind=kind, miner=miner, margin=0.5, l2=(("fc", 1e-4), ("head", 1e-4)))
    state = train.create_train_state(params, optim.adam(3e-3, 50), objective)
    protos, rng = _prototypes(size=28), np.random.default_rng(0)
    batch = _pair_batch(protos, rng, b=16) if kind == "pairs" else _class_batch(protos, rng)
    history = []
    for step in range(10):
        state, m = train.train_step(state, batch, jax.random.key(step))
        history.append(m)
    first, last = history[0], history[-1]
    assert all(bool(jnp.isfinite(v)) for m in history for v in m.values()), (kind, energy)
    assert float(last["loss"]) < 0.9 * float(first["loss"]), [float(m["loss"]) for m in history]
    own = {"pairs": (), "all_pairs": (), "episodic": ("episodic",), "contrastive": ("contrastive",)}
    own = own.get(kind, ("triplet", "active_triplets"))
    assert set(first) == {"loss", "cross_entropy", "l2", "accuracy", "grad_norm", "finite", *own}
    terms = float(first["cross_entropy"]) + float(first["l2"])
    if kind in ("contrastive", "triplet"):
        terms += float(first[kind])
        assert float(last[kind]) < 0.5 * float(first[kind])  # the metric term itself, not only the calibration
        assert 0.0 <= float(first.get("active_triplets", 0.0)) <= 1.0
    elif kind == "episodic":
        terms += float(first["episodic"])
    np.testing.assert_allclose(float(first["loss"]), terms, rtol=1e-5)


def test_metric_objectives_train_the_head_only_by_calibration():
    """contrastive / triplet: the metric loss never reaches the head, the calibration never the tower."""
    spec = PINNED.replace(energy="euclidean")
    weights = {**_numpy_weights(PINNED), "head": {"scale": jnp.asarray(0.2), "bias": jnp.asarray(0.5)}}
    _, classes = _pinned_batches()
    for kind in ("contrastive", "triplet"):
        objective = train.Objective(kind=kind, miner="all")

        def grads(term, objective=objective):
            return jax.grad(lambda w: train.loss_fn(w, spec, objective, classes, jax.random.key(0))[1][term])(weights)

        metric, calibration = grads(kind), grads("cross_entropy")
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(metric["head"]))
        assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(metric["conv1"]))
        for layer in ("conv1", "conv2", "fc"):
            assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(calibration[layer]))
        assert all(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(calibration["head"]))


# Four colours of exactly equal BT.601 luma (299 R + 587 G + 114 B = 125,340): gray, they are one.
EQUAL_LUMA = np.array([[245, 73, 81], [9, 207, 10], [104, 112, 250], [246, 42, 238]], np.uint8)


def _hue_images(classes, rng, size=16):
    """Raw uint8 RGB images: a random filled box on black, coloured by its class only."""
    out = np.zeros((len(classes), size, size, 3), np.uint8)
    for i, c in enumerate(classes):
        h, w = rng.integers(4, 11, 2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        out[i, top : top + h, left : left + w] = EQUAL_LUMA[c]
    return out


def _hue_pairs(spec, rng, b):
    from siamax.data.labelled import model_format

    c1 = rng.integers(0, 4, b)
    same = rng.random(b) < 0.5
    c2 = np.where(same, c1, (c1 + rng.integers(1, 4, b)) % 4)
    x1, x2 = (model_format(spec, _hue_images(c, rng), ink="light") for c in (c1, c2))  # the one route
    return {"x1": x1, "x2": x2, "y": same.astype(np.float32)}


def test_colour_alone_separates_classes_an_rgb_model_beats_a_gray_one():
    """Classes that differ only by hue (equal luma, the same shapes): the gray model sees one class and
    stays at chance, the RGB model (the same tower with 3 input channels) learns them."""
    accuracy = {}
    for channels in (1, 3):
        spec = TINY.replace(channels=channels)
        rng = np.random.default_rng(0)
        state = train.create_train_state(siamax.init(jax.random.key(0), spec), optim.adam(3e-3, 100))
        batches = [_hue_pairs(spec, rng, 32) for _ in range(12)]
        for step in range(300):
            state, _ = train.train_step(state, batches[step % 12], jax.random.key(step))
        test = _hue_pairs(spec, np.random.default_rng(1), 400)
        p = np.asarray(siamax.score(state.params, test["x1"], test["x2"]))
        accuracy[channels] = float(((p > 0.5) == (test["y"] > 0.5)).mean())
    assert accuracy[3] >= 0.8 and accuracy[1] <= 0.65 and accuracy[3] > accuracy[1] + 0.25, accuracy


@pytest.mark.parametrize("kind", ["pairs", "episodic"])
def test_every_augmentation_set_runs_in_the_train_step(kind):
    """Each set of siamax.augment inside a jitted train step, on the model's own input shape (B, S, S, C):
    photos on an RGB tower, log-mels on a 1-channel one; finite metrics, and the images really change
    (the same step without the set gives another loss)."""
    protos, rng = _prototypes(size=28), np.random.default_rng(0)
    batch = _pair_batch(protos, rng, b=8) if kind == "pairs" else _class_batch(protos, rng, p=2, k=2)
    for ops, channels in (("photo", 3), ("audio", 1)):
        spec = siamax.MODELS["tiny"].replace(conv_impl="xla", channels=channels)
        images = {k: np.repeat(v[..., None], channels, -1) if k.startswith("x") else v for k, v in batch.items()}
        losses_ = []
        for names in (augment.op_names(ops), ()):
            params = siamax.init(jax.random.key(0), spec)
            state = train.create_train_state(params, optim.adam(1e-3, 10), train.Objective(kind, augment_ops=names))
            _, m = train.train_step(state, images, jax.random.key(1))
            assert all(bool(jnp.isfinite(v)) for v in m.values()), (ops, m)
            losses_.append(float(m["loss"]))
        assert losses_[0] != losses_[1], ops
