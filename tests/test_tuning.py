"""experiments.tune: optuna over validation data only, resumable, every trial recorded, no trial the
config would refuse."""

import json

import optuna  # a test dependency (pip install -e '.[test]'): missing, the suite fails
import pytest

from siamax import data as sd
from siamax import experiment, presets, tuning
from siamax.data import adapters, lake
from siamax.data import mnist as mnist_module

pytestmark = pytest.mark.slow  # optuna studies of real training runs

TINY = ["--preset", "quick", "--model", "tiny", "--epochs", "2", "--steps-per-epoch", "2", "--episode-chars", "8"]
TINY += ["--episode-drawers", "2", "--val-trials", "40", "--devices", "1", "--no-progress"]


def _forbid_the_test_sets(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the tuning touched the test data")

    for module, name in (
        (sd, "lake_runs"),
        (lake, "lake_runs"),
        (sd, "within_alphabet_tasks"),
        (adapters, "omniglot_tests"),
        (adapters, "mnist_tests"),
        (experiment, "evaluate"),
    ):
        monkeypatch.setattr(module, name, forbidden)


def test_tune_never_touches_the_test_set_and_resumes(omniglot, monkeypatch, siamax_tfds_dir, tmp_path, capsys):
    from experiments import tune

    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))
    _forbid_the_test_sets(monkeypatch)
    args = [*TINY, "--trials", "1", "--workdir", str(tmp_path)]
    assert tune.main(args) == 0
    out = json.loads((tmp_path / "trials.json").read_text())
    assert len(out["trials"]) == 1 and out["git_commit"] and out["best"]["value"] is not None
    for t in out["trials"]:
        assert t["state"] == "COMPLETE" and len(t["val_accuracy_per_epoch"]) == 2
        assert t["config"]["model"] == "tiny" and set(t["params"]) >= {"objective", "energy", "learning_rate"}
    assert "validation alphabets only" in capsys.readouterr().out
    # The same command again: the study is complete, nothing trains.
    assert tune.main(args) == 0
    study = optuna.load_study(study_name="quick-quick", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 1
    # A trial left RUNNING by a dead process is run again with the same settings.
    study.ask(fixed_distributions=study.trials[0].distributions)
    assert tune.main([*TINY, "--trials", "2", "--workdir", str(tmp_path)]) == 0
    study = optuna.load_study(study_name="quick-quick", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2


def test_transfer_tuning_reads_only_mnists_training_split(omniglot, mnist, monkeypatch, siamax_tfds_dir, tmp_path):
    from experiments import tune

    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))
    real = sd.mnist_table
    splits = []

    def train_only(data, spec, split="test"):
        splits.append(split)
        if split != "train":
            raise AssertionError("the transfer tuning read MNIST's test set")
        return real(data, spec, split)

    _forbid_the_test_sets(monkeypatch)
    monkeypatch.setattr(sd, "mnist_table", train_only)
    monkeypatch.setattr(mnist_module, "mnist_table", train_only)
    flags = ["--preset", "mnist_quick", *TINY[2:], "--space", "mnist", "--trials", "1", "--workdir", str(tmp_path)]
    assert tune.main(flags) == 0
    out = json.loads((tmp_path / "trials.json").read_text())
    assert splits == ["train"] and [t["state"] for t in out["trials"]] == ["COMPLETE"]
    for t in out["trials"]:
        assert t["value"] == t["summary"]["transfer_validation"]["accuracy"] and t["config"]["model"] == "tiny"
        assert {"ink_frame", "thicken"} <= set(t["params"])


class _Replay:
    """A stand-in for an optuna trial that takes the given choice at each decision (then the first):
    categorical choices, and a float's two ends."""

    number = 0

    def __init__(self, path):
        self.path, self.taken, self.attrs = list(path), [], {}

    def _choose(self, options):
        i = self.path[len(self.taken)] if len(self.taken) < len(self.path) else 0
        self.taken.append((i, len(options)))
        return options[i]

    def suggest_categorical(self, name, choices):
        return self._choose(list(choices))

    def suggest_float(self, name, low, high, log=False):
        return self._choose([low, high])

    def set_user_attr(self, key, value):
        self.attrs[key] = value


def _every_proposal(space):
    """The choices of every combination a space can propose (floats at their ends), depth first."""
    stack, suggest = [[]], tuning.SPACES[space][0]
    while stack:
        path = stack.pop()
        trial = _Replay(path)
        suggest(trial)
        yield [i for i, _ in trial.taken]
        for depth in range(len(path), len(trial.taken)):
            stack += [[i for i, _ in trial.taken[:depth]] + [j] for j in range(1, trial.taken[depth][1])]


@pytest.mark.parametrize("space", sorted(tuning.SPACES))
def test_no_space_proposes_a_combination_the_config_refuses(space):
    """Every proposal of every space, from every preset it can start from, is a config that trains (at
    the float ends too, but for a margin at the very top of its range on the bounded weighted-L1
    distance, which the study prunes); nor does any preset hold a refused combination (they are built
    at import)."""
    # The presets a space can start from: those of in-batch objectives (paper and mnist_paper train on
    # pair sets, for which every in-batch objective needs --steps-per-epoch, as on the command line).
    bases = [cfg for cfg in presets.PRESETS.values() if cfg.objective.batch == "classes"]
    assert len(bases) >= 4
    seen, suggest = 0, tuning.SPACES[space][0]
    for base in bases:
        for path in _every_proposal(space):
            seen += 1
            overrides = suggest(_Replay(path))
            trial = _Replay(path)
            try:
                _, cfg = tuning.trial_config(base, space, trial)
            except optuna.TrialPruned:
                assert "out of reach" in trial.attrs["refused"] and overrides["margin"] == 1.0, trial.attrs
                assert overrides["energy"] == "weighted_l1"
                continue
            assert cfg.flat()["energy"] == overrides["energy"]
            assert not (cfg.objective.kind == "triplet" and cfg.objective.miner == "batch_hard")
    assert seen > 500  # every branch, the conditional margin included
