"""The main job's machinery on real data with a tiny model: config, resume, refusal, export, report."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import siamax
from experiments import protocol_gap
from siamax import checkpoint, config, errors, experiment, optim, presets, train
from siamax import data as sd
from siamax.data import adapters

pytestmark = pytest.mark.slow  # real data, real training

TINY = dict(
    model="tiny",
    objective="episodic",
    episode_chars=8,
    episode_drawers=2,
    optimizer="adam",
    learning_rate=1e-3,
    epochs=3,
    steps_per_epoch=3,
    patience=0,
    val_trials=40,
    verification_pairs=200,
    devices=1,
)


@pytest.fixture
def tfds_env(monkeypatch, siamax_tfds_dir):
    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))


def _sampler(cfg, omni, split):
    table = sd.omniglot_table(omni, cfg.spec).take(split.flat_indices())
    return sd.make_sampler(cfg.data, cfg.objective.batch, table, cfg.seed, cfg.schedule.steps_per_epoch)


def _state_and_sampler(cfg, omni):
    sampler = _sampler(cfg, omni, sd.paper_splits(cfg.data.split_seed).train)
    tx, _ = optim.make_optimizer(cfg.optim, cfg.spec.layer_names, sampler.steps_per_epoch)
    params = siamax.init(jax.random.key(cfg.seed), cfg.spec)
    return train.create_train_state(params, tx, train.Objective(kind=cfg.objective.kind)), sampler


def test_rotations_make_turned_characters_new_classes(omniglot):
    cfg = presets.config("quick", **{**TINY, "rotations": True, "train_drawers": 20})
    train_split = sd.paper_splits(cfg.data.split_seed, train_drawers=cfg.data.train_drawers).train
    plain = _sampler(cfg.replace(rotations=False), omniglot, train_split).batch(3)
    turned = _sampler(cfg, omniglot, train_split).batch(3)
    labels = np.asarray(turned["labels"])
    np.testing.assert_array_equal(labels // 4, plain["labels"])
    for x0, x1, k in zip(np.asarray(plain["x"]), np.asarray(turned["x"]), labels % 4):
        np.testing.assert_array_equal(np.rot90(x0, k), x1)
    assert len(set(labels % 4)) > 1
    with pytest.raises(ValueError, match="rotations applies only to objective"):
        cfg.replace(objective="pairs", rotations=True)
    assert not cfg.replace(objective="pairs").data.rotations  # the inherited setting is dropped, not ignored


def test_resume_after_interruption_gives_identical_parameters(omniglot, tmp_path):
    cfg = config.Config.from_flat(TINY)
    val = iter(np.linspace(0.1, 0.9, 100))

    def validate(_):
        return next(val)

    state, sampler = _state_and_sampler(cfg, omniglot)
    reference, _ = train.fit(
        state, sampler, epochs=3, patience=0, validate=validate, workdir=tmp_path / "a", seed=0, progress=False
    )

    calls = {"n": 0}

    def interrupted(_):
        calls["n"] += 1
        if calls["n"] == 2:  # like Ctrl-C during epoch 2's evaluation, before its checkpoint
            raise KeyboardInterrupt
        return 0.5

    state, sampler = _state_and_sampler(cfg, omniglot)
    with pytest.raises(KeyboardInterrupt):
        train.fit(
            state, sampler, epochs=3, patience=0, validate=interrupted, workdir=tmp_path / "b", seed=0, progress=False
        )
    state, sampler = _state_and_sampler(cfg, omniglot)  # a fresh process would start like this
    resumed, meta = train.fit(
        state, sampler, epochs=3, patience=0, validate=lambda _: 0.5, workdir=tmp_path / "b", seed=0, progress=False
    )
    assert meta["epoch"] == 3 and int(resumed.step) == int(reference.step) == 9
    for a, b in zip(jax.tree.leaves(reference.params.weights), jax.tree.leaves(resumed.params.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]  # no duplicate or missing epoch after the resume


def test_early_stopping_keeps_best(omniglot, tmp_path):
    cfg = config.Config.from_flat({**TINY, "epochs": 10})
    scores = iter([0.2, 0.5, 0.4, 0.3, 0.45, 0.9])
    state, sampler = _state_and_sampler(cfg, omniglot)
    best_weights = {}

    def validate(params):
        s = next(scores)
        if s == 0.5:
            best_weights["w"] = np.asarray(params.weights["head"]["kernel"])
        return s

    state, meta = train.fit(
        state, sampler, epochs=10, patience=3, validate=validate, workdir=tmp_path, seed=0, progress=False
    )
    assert meta["epoch"] == 5 and meta["best_epoch"] == 1 and meta["best_accuracy"] == 0.5
    best = train.restore_best(state, tmp_path)
    np.testing.assert_array_equal(np.asarray(best.weights["head"]["kernel"]), best_weights["w"])


def test_non_finite_loss_stops_and_keeps_last_good(omniglot, tmp_path):
    cfg = config.Config.from_flat(TINY)
    state, sampler = _state_and_sampler(cfg, omniglot)

    def poisoned(step):  # epoch 2 feeds NaN images: the loss turns NaN
        batch = sampler.batch(step)
        return {**batch, "x": batch["x"] * np.nan} if step >= sampler.steps_per_epoch else batch

    with pytest.raises(train.NonFiniteLoss, match="during epoch 2.*end of epoch 1.*learning rate"):
        train.fit(
            state,
            dataclasses.replace(sampler, batch=poisoned),
            epochs=3,
            patience=0,
            validate=lambda _: 0.5,
            workdir=tmp_path,
            seed=0,
            progress=False,
        )
    latest, _ = checkpoint.managers(tmp_path)
    assert latest.latest_step() == 1  # nothing non-finite was written over it
    tree, _ = checkpoint.restore(latest, train._checkpoint_tree(state))
    assert all(bool(np.all(np.isfinite(np.asarray(w)))) for w in jax.tree.leaves(tree["weights"]))


def test_end_to_end_run_report_export_and_refusal(omniglot, tfds_env, tmp_path, capsys):
    cfg = config.Config.from_flat(TINY)
    results = experiment.train_and_evaluate(cfg, tmp_path, adapters.Omniglot(), preset="tiny-test", progress=False)
    for key in ("lake20", "within_alphabet", "verification", "one_nn"):
        r = results[key]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1], key
    assert results["lake20"]["trials"] == 400 and results["within_alphabet"]["trials"] == 400
    assert abs(results["one_nn"]["accuracy"] - 0.19) < 0.02
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"] == cfg.to_dict() and saved["preset"] == "tiny-test" and "versions" in saved
    for name in ("learning_curves.png", "accuracy_vs_nway.png", "oneshot_trials.png", "roc.png", "splits.json"):
        assert (tmp_path / name).stat().st_size > 0
    # One schema: the pixel baseline through the same evaluators, on the same trials; the legacy keys are copies.
    assert saved["one_nn"] == saved["pixels"]["lake20"] and saved["one_nn_cosine"] == saved["pixels_cosine"]["lake20"]
    assert saved["one_nn_within_alphabet"] == saved["pixels"]["within_alphabet"]
    assert saved["nway_within_alphabet"]["20"] == {k: v for k, v in saved["within_alphabet"].items() if k != "by"}
    assert set(saved["retrieval"]) >= {"precision_at_1", "recall_at_5", "map_at_r"} and "retrieval" in saved["pixels"]
    assert saved["pixels"]["verification"]["threshold_from"] == "validation"
    # Both protocols side by side, and the breakdown that explains their gap.
    for name in ("random_20way_1shot", "random_5way_1shot", "random_20way_5shot"):
        assert saved[name]["trials"] == 400 and 0.0 <= saved[name]["accuracy"] <= 1.0
    assert len(saved["lake20"]["by"]) == 10 and sum(r["trials"] for r in saved["lake20"]["by"].values()) == 400
    assert len(saved["by_task"]["lake20"]) == 20 and len(saved["by_task"]["within_alphabet"]) == 20
    assert 0.0 <= saved["verification"]["roc_auc"] <= 1.0 and 0.0 <= saved["verification"]["eer"] <= 1.0
    from experiments import summary

    capsys.readouterr()
    assert summary.main([str(tmp_path / "results.json"), "--by-alphabet", "--out", str(tmp_path / "s.json")]) == 0
    table = capsys.readouterr().out
    assert all(a in table for a in saved["lake20"]["by"]) and f"{saved['lake20']['accuracy']:.1%}" in table
    assert json.loads((tmp_path / "s.json").read_text())["random_5way_1shot"]["values"] == [
        saved["random_5way_1shot"]["accuracy"]
    ]
    old = {k: v for k, v in saved.items() if k != "by_task"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert summary.main([str(tmp_path / "old.json"), "--by-alphabet"]) == 2
    assert "no per-alphabet breakdown" in capsys.readouterr().err
    meta = checkpoint.read_metadata(tmp_path)
    assert meta["ink"] == "dark" and meta["threshold"] == saved["verification"]["threshold"]
    # The exported model: siamax.load + preprocess + score on new images.
    params = siamax.load(tmp_path)
    assert params.spec == cfg.spec
    lake = sd.lake_runs()
    x = siamax.preprocess(params, lake[0].query[:4], ink="dark")
    p = siamax.score(params, x, siamax.preprocess(params, lake[0].support[:4], ink="dark"))
    assert p.shape == (4,) and bool(np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1)))
    assert siamax.load(tmp_path / "model.msgpack").spec == params.spec
    # Same work directory, different config: refuse, say which fields differ, touch nothing.
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(errors.WorkdirError, match="learning_rate: 0.001 there, 0.01 now"):
        experiment.train_and_evaluate(
            cfg.replace(learning_rate=1e-2), tmp_path, adapters.Omniglot(), preset="tiny-test", progress=False
        )
    assert (tmp_path / "config.json").read_text() == before
    # Other test sets of the finished run: no training, only those scored; a name the dataset lacks is refused
    # with the names it has (the model is exported: nothing is lost).
    epochs = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(errors.ConfigError, match=r"no test sets \['bogus'\], only \['lake20'"):
        experiment.train_and_evaluate(cfg.replace(test_sets="lake20,bogus"), tmp_path, adapters.Omniglot(),
                                      preset="tiny-test", progress=False)  # fmt: skip
    again = experiment.train_and_evaluate(
        cfg.replace(test_sets="lake20"), tmp_path, adapters.Omniglot(), preset="tiny-test", progress=False
    )
    assert again["test_sets"] == ["lake20"] and "verification" not in again and "retrieval" not in again["pixels"]
    assert again["lake20"] == saved["lake20"] and (tmp_path / "metrics.jsonl").read_text() == epochs
    with pytest.raises(errors.ConfigError, match="once each"):
        config.Config.from_flat({**TINY, "test_sets": "lake20,lake20"})


def test_ensemble_study_chooses_on_validation_and_scores_only_the_choice(omniglot, tfds_env, tmp_path, capsys):
    cfg = config.Config.from_flat({**TINY, "epochs": 1, "steps_per_epoch": 1, "test_sets": "lake20"})
    runs = [tmp_path / f"seed{s}" for s in (0, 1)]
    for seed, run in zip((0, 1), runs):
        experiment.train_and_evaluate(cfg.replace(seed=seed), run, adapters.Omniglot(), preset="t", test=False,
                                      progress=False)  # fmt: skip
    r = experiment.ensemble_study(cfg, adapters.Omniglot(), runs, tmp_path / "out", tta=(1,), progress=False)
    assert set(r["validation"]) == {"seed 0", "seed 1", "ensemble of 2"}  # with TTA: tests/test_ensemble.py
    best = max(v["accuracy"] for v in r["validation"].values())
    assert r["validation"][r["chosen"]]["accuracy"] == best
    assert r["validation"]["ensemble of 2"]["tower_passes"] == 2
    assert 0 <= r["test"]["lake20"]["accuracy"] <= 1 and "within_alphabet" not in r["test"]  # --test-sets lake20
    assert json.loads((tmp_path / "out" / "ensemble.json").read_text())["chosen"] == r["chosen"]
    # A member of another config (beyond its seed) is refused.
    with pytest.raises(errors.ConfigError, match="learning_rate"):
        experiment.ensemble_study(cfg.replace(learning_rate=0.5), adapters.Omniglot(), runs, tmp_path / "x")


def test_load_rejects_non_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported siamax model"):
        siamax.load(tmp_path)
    (tmp_path / "model.msgpack").write_bytes(b"\x93not a model")
    with pytest.raises(ValueError, match="not a"):
        siamax.load(tmp_path)


def test_validation_sweep_ranks_variants_without_touching_the_test_set(
    omniglot, tfds_env, tmp_path, monkeypatch, capsys
):
    from experiments import validation_sweep
    from siamax.data import lake

    def forbidden(*args, **kwargs):
        raise AssertionError("the validation sweep touched the test data")

    # (validation_tasks draws within-alphabet tasks too, from the validation alphabets: that one may run)
    for module, name in ((lake, "lake_runs"), (adapters, "omniglot_tests"), (adapters, "mnist_tests"),
                         (experiment, "evaluate")):  # fmt: skip
        monkeypatch.setattr(module, name, forbidden)
    args = [
        "--preset",
        "quick",
        "--model",
        "tiny",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--episode-chars",
        "8",
        "--episode-drawers",
        "2",
        "--val-trials",
        "40",
        "--no-progress",
        "--devices",
        "1",
        "--seeds",
        "0",
        "--workdir",
        str(tmp_path),
        "--variant",
        "base",
        "--variant",
        "rot=--rotations true --train-drawers 20",
    ]
    assert validation_sweep.main(args) == 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["variant"] for r in sweep["runs"]] == ["base", "rot"]
    rot = sweep["runs"][1]
    assert rot["config"]["rotations"] and rot["config"]["train_drawers"] == 20 and rot["config"]["model"] == "tiny"
    assert len(rot["val_accuracy_per_epoch"]) == 2 and rot["best_val_accuracy"] == max(rot["val_accuracy_per_epoch"])
    assert "validation alphabets only" in capsys.readouterr().out
    assert validation_sweep.main(args[:-4] + ["--variant", "a", "--variant", "a"]) == 2
    assert validation_sweep.main(args[:-4] + ["--variant", "bad=--no-such-flag 1"]) == 2
    assert "error: variant 'bad'" in capsys.readouterr().err


def test_summary_means_over_seeds_and_refuses_different_trials(tmp_path, capsys):
    from experiments import summary

    def run(seed, lake, eval_seed=0):
        acc = {"accuracy": lake, "ci95": [0, 1], "trials": 400}
        result = {"seed": seed, "eval_seed": eval_seed, "lake20": acc, "within_alphabet": acc, "wall_seconds": 60.0}
        path = tmp_path / f"{seed}-{eval_seed}.json"
        path.write_text(json.dumps({**result, "training": {"best_val_accuracy": 0.5}}))
        return str(path)

    out = tmp_path / "summary.json"
    assert summary.main([run(0, 0.80), run(1, 0.90), run(2, 0.85), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["seeds"] == [0, 1, 2] and s["lake20"]["mean"] == pytest.approx(0.85)
    assert s["lake20"]["std"] == pytest.approx(0.05) and "mnist10" not in s
    assert "**85.0%** ± 5.0%" in capsys.readouterr().out
    assert summary.main([run(0, 0.8), run(1, 0.9, eval_seed=1)]) == 2
    assert "different trials" in capsys.readouterr().err


def test_transfer_validation_reads_only_mnists_training_split(mnist, tfds_env, monkeypatch):
    splits = []
    real = sd.mnist_table

    def recording(data, spec, split="test"):
        splits.append(split)
        return real(data, spec, split)

    monkeypatch.setattr(sd, "mnist_table", recording)
    monkeypatch.setattr(sd, "load_mnist", lambda *a, **k: mnist)
    result = experiment.transfer_validation(siamax.init(jax.random.key(0), "tiny"), trials=20)
    assert splits == ["train"] and result["trials"] == 20 and 0.0 <= result["one_nn"]["accuracy"] <= 1.0


def test_drawer_groups_pool_trials_by_drawer():
    per_task = {
        "A#0:drawers1->2": {"accuracy": 1.0, "trials": 20},
        "A#1:drawers2->10": {"accuracy": 0.5, "trials": 20},
        "B#0:drawers10->15": {"accuracy": 0.0, "trials": 10},
    }
    g = protocol_gap.drawer_groups(per_task, lake_drawers=range(1, 9), split_drawers=[2, 10, 15, 16])
    assert g["support"] == {"1": {"accuracy": 1.0, "trials": 20}, "2": {"accuracy": 0.5, "trials": 20},
                            "10": {"accuracy": 0.0, "trials": 10}}  # fmt: skip
    assert g["query"]["10"] == {"accuracy": 0.5, "trials": 20}
    assert g["both"]["Lake's drawers"] == {"accuracy": 1.0, "trials": 20}
    assert g["both"]["the split's test drawers"] == {"accuracy": 0.5 * 20 / 30, "trials": 30}


def test_lake_variants_rebuild_lakes_runs_from_the_table(omniglot):
    spec = siamax.init(jax.random.key(0), "tiny").spec
    table = sd.omniglot_table(omniglot, spec)
    variants = protocol_gap.lake_variants(omniglot, table, draws=2, seed=0)
    assert {k: len(v) for k, v in variants.items()} == {
        "Lake's": 20, "random characters": 40, "random drawers": 40, "random characters and drawers": 40
    }  # fmt: skip
    for rebuilt, run in zip(variants["Lake's"], sd.lake_runs()):
        assert (rebuilt.answers == run.answers).all() and rebuilt.alphabet == run.alphabet
        # The same images through the table's route (uint8) and the raw route (float): half a level apart.
        for mine, theirs in ((rebuilt.support, run.support), (rebuilt.query, run.query)):
            raw = np.asarray(siamax.preprocess(spec, theirs, ink="dark"))
            assert np.abs(np.asarray(mine) / 255.0 - raw).max() <= 0.5 / 255 + 1e-6
    random_chars = variants["random characters"][0]
    assert random_chars.support.shape == variants["Lake's"][0].support.shape
