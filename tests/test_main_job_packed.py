"""The main job from a packed dataset (``--pack DIR``): its training table written once as shards and
streamed, trains exactly as in memory; a rerun reuses the pack, and a pack of another table is refused."""

import json

import pytest

from siamax import config, errors, experiment
from siamax.data import adapters, packed
from tests import test_experiment

pytestmark = pytest.mark.slow  # real Omniglot, trains twice

TINY = {**test_experiment.TINY, "epochs": 2, "verification_pairs": 100}
TIMINGS = {"seconds", "pairs_per_s", "images_per_s"}  # the only fields of an epoch that may differ


@pytest.fixture
def tfds_env(monkeypatch, siamax_tfds_dir):
    monkeypatch.setenv("SIAMAX_TFDS_DIR", str(siamax_tfds_dir))


def _epochs(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMINGS} for x in lines]


def test_main_job_from_a_pack_trains_as_in_memory_reuses_it_and_refuses_another(tfds_env, tmp_path, capsys):
    cfg, pack = config.Config.from_flat(TINY), tmp_path / "pack"
    run = dict(preset="t", test=False, progress=False)
    memory = experiment.train_and_evaluate(cfg, tmp_path / "memory", adapters.Omniglot(), **run)
    stream = experiment.train_and_evaluate(cfg, tmp_path / "stream", adapters.Omniglot(), pack=pack, **run)
    said = capsys.readouterr().out
    assert f"training streams from {pack}: 11568 examples of 964 classes in 2 shard(s)" in said
    assert "2 shard(s) written" in said and "validation and test stay in memory" in said
    assert len(_epochs(tmp_path / "memory")) == 2
    assert _epochs(tmp_path / "memory") == _epochs(tmp_path / "stream")  # the same batches, the same training
    assert memory["best_val_accuracy"] == stream["best_val_accuracy"]
    manifest = packed.read_manifest(pack)
    assert manifest["identity"]["name"] == "omniglot/train" and manifest["n_images"] == 11568

    # The same command again (a resume): the pack is kept as it is, not written again.
    experiment.train_and_evaluate(cfg, tmp_path / "stream", adapters.Omniglot(), pack=pack, **run)
    assert "0 shard(s) written, 2 kept from an earlier run" in capsys.readouterr().out

    # Another split (or preset, drawers, input size) into the same DIR: one error line, nothing written.
    from experiments import omniglot_oneshot

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    argv = [*flags, "--split-seed", "1", "--workdir", str(tmp_path / "other"), "--pack", str(pack), "--no-progress"]
    assert omniglot_oneshot.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "holds the pack of another training table" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()
    with pytest.raises(errors.ConfigError, match="another training table"):
        experiment.train_and_evaluate(cfg.replace(train_drawers=10), tmp_path / "x", adapters.Omniglot(), pack=pack)
