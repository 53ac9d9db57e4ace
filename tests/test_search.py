"""experiments.search: optuna over validation alphabets only, resumable, every trial recorded."""

import json

import optuna  # a test dependency (pip install -e '.[test]'): missing, the suite fails

from siamax import data as sd
from siamax import report

TINY = ["--preset", "quick", "--model", "tiny", "--epochs", "2", "--steps-per-epoch", "2", "--episode-chars", "8"]
TINY += ["--episode-drawers", "2", "--val-trials", "40", "--devices", "1", "--no-progress"]


def test_search_never_touches_the_test_set_and_resumes(omniglot, monkeypatch, siamax_tfds_dir, tmp_path, capsys):
    from experiments import search

    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))

    def forbidden(*args, **kwargs):
        raise AssertionError("the search touched the test data")

    monkeypatch.setattr(sd, "lake_runs", forbidden)
    monkeypatch.setattr(sd, "within_alphabet_tasks", forbidden)
    monkeypatch.setattr(report, "evaluate_and_report", forbidden)
    args = [*TINY, "--trials", "2", "--workdir", str(tmp_path)]
    assert search.main(args) == 0
    out = json.loads((tmp_path / "trials.json").read_text())
    assert len(out["trials"]) == 2 and out["git_commit"] and out["best"]["value"] is not None
    for t in out["trials"]:
        assert t["state"] == "COMPLETE" and len(t["val_accuracy_per_epoch"]) == 2
        assert t["config"]["model"] == "tiny" and set(t["params"]) >= {"objective", "energy", "learning_rate"}
    assert "validation alphabets only" in capsys.readouterr().out
    # The same command again: the study is complete, nothing trains.
    assert search.main(args) == 0
    study = optuna.load_study(study_name="quick-quick", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 2
    # A trial left RUNNING by a dead process is run again with the same settings.
    study.ask(fixed_distributions=study.trials[0].distributions)
    assert search.main([*TINY, "--trials", "3", "--workdir", str(tmp_path)]) == 0
    study = optuna.load_study(study_name="quick-quick", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3


def test_transfer_search_reads_only_mnists_training_split(omniglot, mnist, monkeypatch, siamax_tfds_dir, tmp_path):
    from experiments import search

    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))
    real = sd.mnist_table
    splits = []

    def train_only(data, spec, split="test"):
        splits.append(split)
        if split != "train":
            raise AssertionError("the transfer search read MNIST's test set")
        return real(data, spec, split)

    def forbidden(*args, **kwargs):
        raise AssertionError("the search touched the test data")

    monkeypatch.setattr(sd, "mnist_table", train_only)
    monkeypatch.setattr(sd, "lake_runs", forbidden)
    monkeypatch.setattr(report, "evaluate_and_report", forbidden)
    flags = ["--preset", "mnist_quick", *TINY[2:], "--space", "mnist", "--trials", "2", "--workdir", str(tmp_path)]
    assert search.main(flags) == 0
    out = json.loads((tmp_path / "trials.json").read_text())
    assert splits == ["train", "train"] and [t["state"] for t in out["trials"]] == ["COMPLETE", "COMPLETE"]
    for t in out["trials"]:
        assert t["value"] == t["summary"]["transfer_validation"]["accuracy"] and t["config"]["model"] == "tiny"
        assert {"ink_frame", "thicken"} <= set(t["params"])
