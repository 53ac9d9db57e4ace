"""Spoken digits: speaker folds, cross-speaker tasks, the MFCC / DTW baselines, the adapter end to end."""

import dataclasses
import itertools

import numpy as np
import pytest

from siamax import evaluators, experiment, presets
from siamax.data import adapters, speaker_folds
from siamax.evaluators import embedders


def test_folds_test_every_speaker_once_and_never_train_on_it():
    folds = speaker_folds.speaker_folds(6, 3)
    assert len(folds) == 3
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == list(range(6))  # every speaker tested exactly once
    for f in folds:
        assert len(f.train) == 4 and len(f.test) == 2
        assert not set(f.train) & set(f.test)
        assert set(f.train) | set(f.test) == set(range(6))
    with pytest.raises(ValueError):
        speaker_folds.speaker_folds(6, 4)


def test_held_out_takes_seeded_and_validation_rows_disjoint_from_training():
    a, b = speaker_folds.held_out_takes(50, 10, 0), speaker_folds.held_out_takes(50, 10, 0)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 50
    assert not np.array_equal(a, speaker_folds.held_out_takes(50, 10, 1))


def _clips(n_speakers=3, n_words=4, takes=3, size=6):
    spk, word = np.meshgrid(np.arange(n_speakers), np.arange(n_words), indexing="ij")
    spk, word = np.repeat(spk.ravel(), takes), np.repeat(word.ravel(), takes)
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (len(spk), size, size), dtype=np.uint8)
    return images, word, spk


def test_cross_speaker_tasks_support_from_one_speaker_query_from_another():
    images, word, spk = _clips()
    pool = np.flatnonzero(spk != 2)  # speaker 2 is not in the pool
    rows = {im.tobytes(): k for k, im in enumerate(images)}
    ts = speaker_folds.cross_speaker_tasks(
        images, word, spk, pool, speakers_of_task=(0, 1), classes=(1, 3), n_tasks=6, seed=0
    )
    assert len(ts) == 6 and all(len(t.query) == 2 for t in ts)
    for t in ts:
        sup = [rows[x.tobytes()] for x in t.support]
        qry = [rows[x.tobytes()] for x in t.query]
        assert len({spk[r] for r in sup}) == 1 and len({spk[r] for r in qry}) == 1
        assert spk[sup[0]] != spk[qry[0]] and {spk[sup[0]], spk[qry[0]]} == {0, 1}
        assert [word[r] for r in sup] == [1, 3] and [word[qry[a]] for a in t.answers] == [1, 3]
    assert {t.alphabet for t in ts} == {"0->1", "1->0"}  # both directions take turns
    with pytest.raises(ValueError, match="no clip"):
        speaker_folds.cross_speaker_tasks(images, word, spk, pool, speakers_of_task=(0, 2), classes=(1,), n_tasks=1)


def _dtw_reference(a, b):
    """Textbook DTW: every path by recursion over the grid (tiny sequences only)."""
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[-1, -1] / (len(a) + len(b))


def _brute_force(a, b):
    """The minimum over every monotone path of steps (1,0), (0,1), (1,1), enumerated outright."""
    best = np.inf

    def walk(i, j, total):
        nonlocal best
        total += np.linalg.norm(a[i] - b[j])
        if i == len(a) - 1 and j == len(b) - 1:
            best = min(best, total)
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < len(a) and j + dj < len(b):
                walk(i + di, j + dj, total)

    walk(0, 0, 0.0)
    return best / (len(a) + len(b))


def test_dtw_matches_brute_force_with_ragged_lengths():
    gen = np.random.default_rng(1)
    a, b = gen.normal(size=(5, 6, 3)), gen.normal(size=(5, 5, 3))
    la, lb = np.array([6, 1, 4, 3, 2]), np.array([5, 3, 1, 5, 2])
    got = embedders.dtw_distance(a, b, la, lb)
    for k in range(5):
        want = _brute_force(a[k, : la[k]], b[k, : lb[k]])
        np.testing.assert_allclose(got[k], want, rtol=1e-10)
        np.testing.assert_allclose(got[k], _dtw_reference(a[k, : la[k]], b[k, : lb[k]]), rtol=1e-10)
    assert embedders.dtw_distance(a, a)[0] == pytest.approx(0.0, abs=1e-6)  # a sequence against itself
    # time-warped copies are close: a frame repeated costs nothing
    stretched = np.repeat(a[:1], 2, axis=1)
    assert embedders.dtw_distance(a[:1], stretched)[0] == pytest.approx(0.0, abs=1e-6)


def test_mfcc_shapes_and_voiced_span():
    gen = np.random.default_rng(2)
    images = np.zeros((4, 35, 35), np.uint8)
    images[:, :, 5:20] = gen.integers(1, 256, (4, 35, 15))
    images[3] = 0  # an empty clip keeps one frame
    assert embedders.mfcc(images).shape == (4, 35, 13)
    assert embedders.mfcc(images, 20).shape == (4, 35, 20)
    first, stop = embedders.voiced_spans(images)
    assert first.tolist() == [5, 5, 5, 0] and stop.tolist() == [20, 20, 20, 1]
    np.testing.assert_allclose(embedders.mfcc(images)[0, 0], 0.0)  # a silent frame: all-zero MFCCs
    seq = evaluators.MfccDtwEmbedder().embed(images)
    assert seq.shape == (4, 35, 12)  # c1..c12 (c0 dropped)
    assert (~np.isnan(seq[:, :, 0])).sum(1).tolist() == [15, 15, 15, 1]
    assert evaluators.MfccMeanEmbedder().embed(images).shape == (4, 13)
    with pytest.raises(ValueError):
        embedders.mfcc(images, 36)


def test_audio_baselines_plug_into_the_evaluators():
    images, word, spk = _clips(size=16)
    ts = speaker_folds.cross_speaker_tasks(
        images, word, spk, np.arange(len(word)), speakers_of_task=(0, 1), classes=range(4), n_tasks=4
    )
    for name in ("mfcc_dtw", "mfcc_cosine"):
        r = evaluators.OneShot(ts).run(experiment.BASELINES[name]())
        assert 0.0 <= r["accuracy"] <= 1.0 and r["trials"] == 16
    # identical support and query clips: DTW 1-NN is always right
    same = [dataclasses.replace(t, query=t.support.copy()) for t in ts]
    assert evaluators.OneShot(same).run(evaluators.MfccDtwEmbedder())["accuracy"] == 1.0


def test_run_config_keeps_the_batch_size():
    from experiments import spoken_digits

    cfg = presets.config("spoken_digits")
    speakers = spoken_digits.run_config(cfg, "speaker", 4)
    assert speakers.data.episode_chars == 4 and speakers.data.episode_drawers == 20
    assert spoken_digits.run_config(cfg, "digit", 10).data.episode_chars == 10
    six = spoken_digits.run_config(cfg, "digit", 6, n_devices=8).data  # 6 x 13 = 78 would not split over 8
    assert six.episode_chars == 6 and six.episode_drawers == 16
    assert spoken_digits.run_config(cfg, "digit", 6, n_devices=1).data.episode_drawers == 13


@pytest.mark.slow
def test_adapter_end_to_end_on_fsdd(tmp_path):
    """One fold, each label, a tiny model for 1 short epoch, on the real FSDD: the sections and baselines."""
    from experiments import spoken_digits

    cfg = presets.config(
        "spoken_digits", model="tiny", epochs=1, steps_per_epoch=5, val_trials=40, verification_pairs=200
    )
    d = experiment.train_and_evaluate(
        spoken_digits.run_config(cfg, "digit", 6),
        tmp_path / "digits",
        adapters.SpokenDigits(fold=1, label="digit", train_digits=(0, 1, 2, 3, 4, 5), trials=40),
        progress=False,
        plots_=False,
    )
    assert d["test_sets"] == ["oneshot_10way", "heldout_4way"]
    assert d["data"]["test_speakers"] == ["lucas", "nicolas"] and d["data"]["train_digits"] == [0, 1, 2, 3, 4, 5]
    assert not set(d["data"]["train_speakers"]) & set(d["data"]["test_speakers"])
    for b in adapters.SPOKEN_BASELINES:
        assert d[b]["heldout_4way"]["trials"] == d["heldout_4way"]["trials"] == 40
    s = experiment.train_and_evaluate(
        spoken_digits.run_config(cfg, "speaker", 4),
        tmp_path / "speakers",
        adapters.SpokenDigits(fold=1, label="speaker"),
        progress=False,
        plots_=False,
    )
    assert s["test_sets"] == ["verification"] and s["verification"]["threshold_from"] == "validation"
    for b in adapters.SPOKEN_BASELINES:
        assert 0.0 <= s[b]["verification"]["eer"] <= 1.0 and s[b]["verification"]["pairs"] == 200


def test_speaker_validation_never_trains_on_the_validation_speakers(siamax_data_dir):
    """For choosing settings: 2 of the fold's training speakers are validation speakers, none of their clips
    in training, the validation tasks across them; the test speakers are in neither."""
    from siamax.data import fsdd

    cfg = presets.config("spoken_digits", val_trials=40)
    p = adapters.SpokenDigits(fold=0, validation="speakers").prepare_run(cfg)
    fold = speaker_folds.speaker_folds(6)[0]
    assert p.info["validation_speakers"] == [fsdd.SPEAKERS[s] for s in fold.train[2:]]
    assert p.info["train_speakers"] == [fsdd.SPEAKERS[s] for s in fold.train[:2]]
    assert p.train.n_images == 2 * 10 * 50 and len(p.validation_tasks) * 10 >= 40
    assert {t.alphabet for t in p.validation_tasks} <= {f"{a}->{b}" for a in fold.train[2:] for b in fold.train[2:]}
    with pytest.raises(Exception, match="word labels"):
        adapters.SpokenDigits(label="speaker", validation="speakers")
