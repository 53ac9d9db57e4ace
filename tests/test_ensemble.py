"""siamax.ensemble: the mean of the members' probabilities wherever one model goes (score, pair_logits,
embed + score_embeddings, preprocess, jit), the Index ranking an ensemble's gallery by that mean
(equal to brute force, saved and loaded, another model refused), the evaluators, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siamax
from siamax import checkpoint, energies, evaluators
from siamax.errors import InputError, InputTypeError, ModelError
from siamax.index import Index
from siamax.model import ModelSpec

SPEC = ModelSpec(
    input_size=16, filters=(4,), kernels=(3,), pools=(True,), padding="SAME", fc_units=24, init="lecun", conv_impl="xla"
)


def _members():
    """Three small networks of three energies and two widths: one Koch head, two calibrated heads."""
    specs = [SPEC, SPEC.replace(energy="cosine", fc_units=16), SPEC.replace(energy="euclidean")]
    out = []
    for i, spec in enumerate(specs):
        p = siamax.init(jax.random.key(i), spec)
        if spec.energy != "weighted_l1":  # not the initial head
            p = p.replace(weights={**p.weights, "head": {"scale": np.float32(0.3 * i), "bias": np.float32(0.5)}})
        out.append(p)
    return out


@pytest.fixture(scope="module")
def ens():
    return siamax.ensemble(_members())


def _images(n, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, 16, 16))


def test_score_is_the_mean_of_the_members(ens):
    x1, x2 = _images(6, 1), _images(6, 2)
    mean = np.mean([np.asarray(siamax.score(m, x1, x2)) for m in ens.members], axis=0)
    np.testing.assert_allclose(siamax.score(ens, x1, x2), mean, rtol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(siamax.pair_logits(ens, x1, x2)), mean, rtol=1e-5)
    assert siamax.score(ens, x1[0], x2[0]).shape == ()  # a single pair, a scalar, as for one model
    np.testing.assert_allclose(siamax.score(ens, x1[0], x2[0]), mean[0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(siamax.score)(ens, x1, x2), mean, rtol=1e-5)  # a pytree: jit takes it


def test_embeddings_side_by_side_score_as_the_images(ens):
    x1, x2 = _images(5, 3), _images(5, 4)
    e1, e2 = siamax.embed(ens, x1), siamax.embed(ens, x2)
    assert e1.shape == (5, sum(m.spec.embedding_dim for m in ens.members)) == (5, ens.embedding_dim)
    np.testing.assert_allclose(siamax.score_embeddings(ens, e1, e2), siamax.score(ens, x1, x2), rtol=1e-5)
    np.testing.assert_allclose(
        siamax.logits_from_embeddings(ens, e1, e2), siamax.pair_logits(ens, x1, x2), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(InputError, match="side by side"):
        siamax.score_embeddings(ens, e1[:, :-1], e2[:, :-1])
    raw = np.full((3, 40, 30), 255, np.uint8)
    np.testing.assert_array_equal(siamax.preprocess(ens, raw), siamax.preprocess(ens.members[0], raw))


def test_logit_of_mean_is_stable_where_probabilities_round_to_one():
    logits = jnp.array([[40.0, -3.0], [60.0, 2.0]])  # member x pair
    out = energies.logit_of_mean(logits)
    p = 1 / (1 + np.exp(-np.float64([-3.0, 2.0])))
    assert np.isfinite(out).all() and out[0] > 39.0  # mean p = 1 - ~2e-18: a logit near 40.7, not inf
    np.testing.assert_allclose(out[1], np.log(p.mean() / (1 - p.mean())), rtol=1e-5)


def test_index_of_an_ensemble_ranks_by_the_mean_probability(ens, tmp_path):
    g, q = siamax.embed(ens, _images(300, 5)), siamax.embed(ens, _images(4, 6))
    labels = [f"c{i % 30}" for i in range(300)]
    index = Index.build(ens, g, labels)
    assert index.energy == "mean_probability" and index.dim == ens.embedding_dim and index.spec is None
    scores, ids = index.search(q, k=7)
    brute = np.stack([np.asarray(siamax.score_embeddings(ens, jnp.repeat(qi[None], 300, 0), g)) for qi in q])
    best = np.argsort(-brute, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, best)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, best, 1), rtol=1e-5)
    index.save(tmp_path)
    again = Index.load(tmp_path, ens)
    np.testing.assert_array_equal(again.search(q, k=7)[1], ids)
    with pytest.raises(ModelError, match="another model"):
        Index.load(tmp_path, ens.members[0])
    other = siamax.ensemble(ens.members[::-1])  # the same members in another order: other embeddings
    with pytest.raises(ModelError, match="another model"):
        Index.load(tmp_path, other)
    assert checkpoint.fingerprint(other) != checkpoint.fingerprint(ens)


def test_evaluators_take_an_ensemble(ens):
    embedder = evaluators.as_embedder(ens)
    assert isinstance(embedder, evaluators.EnsembleEmbedder) and len(embedder.members) == 3
    images = (np.asarray(_images(4, 7)) * 255).astype(np.uint8)
    e = embedder.embed(images, "light")
    p = embedder.pair_scores(e, np.array([0, 1]), np.array([2, 3]))
    np.testing.assert_allclose(p, siamax.score(ens, images[:2], images[2:]), rtol=1e-5)


def test_refusals(ens, tmp_path):
    with pytest.raises(InputError, match="2 or more"):
        siamax.ensemble(ens.members[:1])
    with pytest.raises(InputTypeError, match="member 1"):
        siamax.ensemble([ens.members[0], {"weights": 1}])
    with pytest.raises(InputTypeError, match="list of Params"):
        siamax.ensemble(ens.members[0])
    wide = siamax.init(jax.random.key(9), SPEC.replace(input_size=20))
    with pytest.raises(InputError, match="different inputs.*EnsembleEmbedder"):
        siamax.ensemble([ens.members[0], wide])
    with pytest.raises(InputTypeError, match="an Ensemble"):
        checkpoint.export(ens, tmp_path / "m")  # one network's file: an ensemble is its members' files


def test_members_from_paths(tmp_path):
    a, b = _members()[:2]
    pa = checkpoint.export(a, tmp_path / "a")
    e = siamax.ensemble([pa, b])
    x = _images(2, 8)
    np.testing.assert_allclose(siamax.score(e, x, x[::-1]), siamax.score(siamax.ensemble([a, b]), x, x[::-1]))


def test_tta_is_an_ensemble_of_one_model_under_fixed_distortions():
    params = _members()[0]
    t = siamax.augment.tta_transforms(4, seed=0)
    assert t.shape == (4, 7)
    np.testing.assert_array_equal(t[0], siamax.augment.IDENTITY)
    assert len({tuple(np.asarray(r).round(6)) for r in t}) == 4  # no distortion repeats another
    np.testing.assert_array_equal(t, siamax.augment.tta_transforms(4, seed=0))  # repeatable
    assert isinstance(evaluators.with_tta(params, 1), evaluators.ModelEmbedder)
    tta = evaluators.with_tta(params, 4)
    assert len(tta.members) == 4 and all(m.params is params for m in tta.members)
    images = (np.asarray(_images(4, 9)) * 255).astype(np.uint8)
    emb = tta.embed(images, "light")
    got = tta.pair_scores(emb, np.array([0, 1]), np.array([2, 3]))
    # The mean over the 4 distortions of the pair, each image distorted by that same transform.
    x = images.astype(np.float32) / 255.0
    by_hand = [
        siamax.score(
            params,
            *(
                np.clip(siamax.augment.apply_affine(x[s], np.tile(tr, (2, 1))), 0, 1)
                for s in (slice(0, 2), slice(2, 4))
            ),
        )
        for tr in np.asarray(t)
    ]
    np.testing.assert_allclose(got, np.mean(by_hand, axis=0), rtol=1e-5)
    assert len(evaluators.with_tta(siamax.ensemble(_members()), 3).members) == 9  # members x distortions
    with pytest.raises(ValueError, match="n >= 1"):
        siamax.augment.tta_transforms(0)
