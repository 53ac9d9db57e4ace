"""ORL faces: the builder on the real data, the split by person, the eigenface baseline, the adapter end to end."""

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest

from siamax import evaluators, experiment, presets
from siamax.data import _paths, adapters, orl, require
from siamax.data.labelled import LabelledImages
from siamax.errors import DataError


def _table(n_people=38, per=10, size=12, seed=0) -> LabelledImages:
    """Synthetic "faces": each person a random template plus noise, uint8 (n, size, size)."""
    gen = np.random.default_rng(seed)
    templates = gen.uniform(40, 215, (n_people, size, size))
    images = templates.repeat(per, 0) + gen.normal(0, 12, (n_people * per, size, size))
    return LabelledImages(
        images=jnp.asarray(np.clip(images, 0, 255).astype(np.uint8)),
        labels=np.repeat(np.arange(n_people), per),
        class_names=tuple(f"s{p}" for p in range(3, 3 + n_people)),
        groups=np.zeros(n_people, np.int32),
        name="synthetic faces",
    )


def test_split_by_person_has_no_person_in_two_parts():
    table = _table()
    for seed in range(4):
        split = adapters.face_splits(table, (26, 6, 6), seed)
        names = [set(t.class_names) for t in split.parts()]
        assert [len(n) for n in names] == [26, 6, 6]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
        assert set().union(*names) == set(table.class_names)
        assert [t.n_images for t in split.parts()] == [260, 60, 60]  # every photo of a person goes with them
    again = adapters.face_splits(table, (26, 6, 6), 1)
    other = adapters.face_splits(table, (26, 6, 6), 2)
    assert again.test.class_names == adapters.face_splits(table, (26, 6, 6), 1).test.class_names
    assert set(again.test.class_names) != set(other.test.class_names)  # another seed, other test people
    with pytest.raises(ValueError, match="adding up to the 38 people"):
        adapters.face_splits(table, (26, 6, 5), 0)


def test_eigenfaces_fit_on_train_only_and_deterministic():
    table = _table()
    split = adapters.face_splits(table, (26, 6, 6), 0)
    train = np.asarray(split.train.images)
    test = np.asarray(split.test.images)
    a = evaluators.EigenfaceEmbedder(20).fit(train)
    b = evaluators.EigenfaceEmbedder(20).fit(train)
    np.testing.assert_array_equal(a.embed(test, "light"), b.embed(test, "light"))  # deterministic
    assert a.embed(test, "light").shape == (60, 20)
    # What it learned is the training images' alone: adding the test people changes the components.
    c = evaluators.EigenfaceEmbedder(20).fit(np.concatenate([train, test]))
    assert not np.allclose(np.abs(a.pca.components_), np.abs(c.pca.components_))
    np.testing.assert_allclose(a.pca.mean_, train.reshape(len(train), -1).mean(0) / 255.0)
    with pytest.raises(ValueError, match="before fit"):
        evaluators.EigenfaceEmbedder().embed(test, "light")
    # Capped at the training images minus one.
    assert evaluators.EigenfaceEmbedder(1000).fit(train[:30]).pca.n_components_ == 29


def test_eigenfaces_baseline_is_fitted_on_the_runs_training_images():
    train = np.asarray(_table().images)
    with pytest.raises(ValueError, match="training images"):
        experiment.BASELINES["eigenfaces"]()
    e = experiment.BASELINES["eigenfaces"](train)
    assert isinstance(e, evaluators.EigenfaceEmbedder) and e.pca.n_features_in_ == train[0].size
    assert isinstance(experiment.BASELINES["pixels"](train), evaluators.PixelEmbedder)


def test_eigenfaces_identify_synthetic_people_on_the_same_trials():
    table = _table()
    split = adapters.face_splits(table, (26, 6, 6), 0)
    cfg = presets.config("faces", model="tiny", image_size=12)
    val_pairs = adapters._pairs_of(split.validation, 500, 0)
    tests = adapters.face_tests(cfg, split.test, val_pairs, trials=60)
    assert set(tests) == {"verification", "random_5way_1shot", "random_6way_1shot", "retrieval"}
    assert all(ts.baselines == ("pixels", "eigenfaces") for ts in tests.values())
    embedder = evaluators.EigenfaceEmbedder(20).fit(np.asarray(split.train.images))
    result = evaluators.make("oneshot", **tests["random_6way_1shot"].args).run(embedder)
    assert result["accuracy"] > 0.9  # noise 12 around templates 40..215 apart: easy


def test_missing_orl_says_what_to_put_where(tmp_path):
    with pytest.raises(
        DataError, match=r"no official download: put the AT&T Database of Faces there as .*orl_faces/sP/N.pgm"
    ):
        require(["orl_faces"], tmp_path, tmp_path / "tfds")


@pytest.mark.slow
def test_orl_real_data(siamax_data_dir, siamax_tfds_dir):
    data_dir = siamax_data_dir
    sums = data_dir / "SHA256SUMS"
    lines = sorted(
        (path, sha) for sha, path in (line.split() for line in sums.read_text().splitlines()) if path.endswith(".pgm")
    )
    assert hashlib.sha256("".join(f"{p} {s}\n" for p, s in lines).encode()).hexdigest() == orl.DIGEST
    assert [p for p, _ in lines] == sorted(orl.RELPATHS)
    assert _paths.content_digest(orl.orl_files(data_dir)) == orl.DIGEST  # the files themselves
    data = orl.load_orl(data_dir, siamax_tfds_dir)
    assert data.images.shape == (380, 112, 92) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [10] * 38 and len(data.people) == 38
    assert data.people[0] == "s3" and data.people[-1] == "s40"
    np.testing.assert_array_equal(data.images[0], orl.read_pgm(data_dir / "orl_faces/s3/1.pgm"))
    np.testing.assert_array_equal(data.images[379], orl.read_pgm(data_dir / "orl_faces/s40/10.pgm"))


@pytest.mark.slow
def test_faces_experiment_end_to_end(siamax_data_dir, siamax_tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMAX_DATA_DIR", str(siamax_data_dir))
    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))
    cfg = presets.config(
        "faces", model="tiny", epochs=1, steps_per_epoch=3, episode_chars=8, episode_drawers=2, val_trials=30
    ).override(verification_pairs=200)
    results = experiment.train_and_evaluate(
        cfg, tmp_path / "run", adapters.Faces(), preset="faces", progress=False, plots_=False
    )
    assert results["data"]["people_per_part"] == [26, 6, 6]
    people = results["data"]["people"]
    assert not set(people["train"]) & (set(people["validation"]) | set(people["test"]))
    assert set(results["test_sets"]) == {"verification", "random_5way_1shot", "random_6way_1shot", "retrieval"}
    for section in results["test_sets"]:
        for embedder in ("pixels", "eigenfaces"):
            assert section in results[embedder]
    v = results["verification"]
    assert v["threshold_from"] == "validation" and 0 <= v["eer"] <= 1 and 0 <= v["roc_auc"] <= 1
    assert results["random_6way_1shot"]["trials"] == results["eigenfaces"]["random_6way_1shot"]["trials"] >= 400
    assert (tmp_path / "run" / "splits.json").exists() and (tmp_path / "run" / "model.msgpack").exists()
