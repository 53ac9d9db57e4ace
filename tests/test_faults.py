"""A user's mistakes and damaged files, as a user meets them on the command line: one ``error:`` line,
exit status 2, no traceback, and nothing trained first when a file is missing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from siamax import errors
from siamax.data import _paths

TINY = ["--preset", "quick", "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--episode-chars", "8"]
TINY += ["--val-trials", "40", "--verification-pairs", "100", "--devices", "1", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


def _link(src: Path, dst: Path, names, corrupt=None):
    for n in names:
        rel = _paths.ARCHIVES[n].relpath
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if n == corrupt:
            data = bytearray((src / rel).read_bytes())
            data[100] ^= 1
            (dst / rel).write_bytes(bytes(data))
        else:
            os.symlink(src / rel, dst / rel)


def _main(tmp_path, data_dir, *args, module="experiments.omniglot_oneshot"):
    env = {
        **os.environ,
        "SIAMAX_DATA_DIR": str(data_dir),
        "SIAMAX_TFDS_DIR": str(tmp_path / "tfds"),
        "SIAMAX_DATA_URL": "http://127.0.0.1:9",  # a closed port: "downloads" fail at once, offline or not
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def _one_error_line(out):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors_ = [line for line in lines if line.startswith("error: ")]
    assert len(errors_) == 1, out.stderr
    return errors_[0]


@pytest.mark.slow
def test_missing_lake_runs_fails_before_training(tmp_path, siamax_data_dir):
    data = tmp_path / "data"
    _link(siamax_data_dir, data, ["omniglot_background_npz", "omniglot_evaluation_npz"])
    out = _main(tmp_path, data, *TINY, "--workdir", str(tmp_path / "run"))
    line = _one_error_line(out)
    assert "all_runs.zip" in line and _paths.ARCHIVES["omniglot_all_runs_zip"].sha256 in line
    assert "epoch" not in out.stdout and not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
def test_missing_mnist_fails_before_training(tmp_path, siamax_data_dir):
    data = tmp_path / "data"
    _link(siamax_data_dir, data, ["omniglot_background_npz", "omniglot_evaluation_npz", "omniglot_all_runs_zip"])
    out = _main(tmp_path, data, *TINY, "--workdir", str(tmp_path / "run"), module="experiments.mnist_transfer")
    assert "t10k-images-idx3-ubyte.gz" in _one_error_line(out) and "epoch" not in out.stdout


@pytest.mark.slow
def test_missing_data_folder_and_corrupt_archive(tmp_path, siamax_data_dir):
    line = _one_error_line(_main(tmp_path, tmp_path / "nowhere", *TINY, "--workdir", str(tmp_path / "a")))
    assert "nowhere" in line and "does not exist" in line
    data = tmp_path / "data"
    names = ["omniglot_background_npz", "omniglot_evaluation_npz", "omniglot_all_runs_zip"]
    _link(siamax_data_dir, data, names, corrupt="omniglot_evaluation_npz")
    line = _one_error_line(_main(tmp_path, data, *TINY, "--workdir", str(tmp_path / "b")))
    assert "images_evaluation.npz" in line and _paths.ARCHIVES["omniglot_evaluation_npz"].sha256 in line


@pytest.mark.slow
def test_foreign_workdir_and_bad_values(tmp_path, siamax_data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"preset": "quick", "learning_rate": 1.0}')
    line = _one_error_line(_main(tmp_path, siamax_data_dir, *TINY, "--workdir", str(run)))
    assert "different config" in line and "learning_rate" in line
    (run / "config.json").write_text("{not json")
    assert "not readable" in _one_error_line(_main(tmp_path, siamax_data_dir, *TINY, "--workdir", str(run)))
    line = _one_error_line(_main(tmp_path, siamax_data_dir, "--preset", "paper", "--augment", "true"))
    assert "augment applies only" in line
    out = _main(tmp_path, siamax_data_dir, "--reuse", str(tmp_path / "none"), module="experiments.mnist_transfer")
    assert "no exported siamax model" in _one_error_line(out)


def test_guard_turns_user_errors_into_one_line_and_keeps_bugs_loud(capsys):
    @errors.guard
    def bad_input(argv):
        raise errors.DataError("first line\n  second line")

    assert bad_input([]) == 2
    assert capsys.readouterr().err == "error: first line; second line\n"

    @errors.guard
    def bug(argv):
        raise KeyError("internal")

    with pytest.raises(KeyError):
        bug([])
    assert issubclass(errors.DataError, FileNotFoundError) and issubclass(errors.ConfigError, ValueError)


def test_guard_turns_ctrl_c_into_one_line_and_exit_130(capsys):
    import signal

    @errors.guard
    def train_like(argv):
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    try:
        assert train_like([]) == errors.EXIT_INTERRUPTED == 130
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # a second Ctrl-C ends the process at once
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == f"interrupted: {errors.RESUME}"

    @errors.guard(interrupted=lambda argv: f"{argv[0]} stopped")
    def other(argv):
        raise KeyboardInterrupt

    try:
        assert other(["verify"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "interrupted: verify stopped"
    from siamax import cli

    assert cli._interrupted(["train", "DATA"]) == errors.RESUME and cli._interrupted(["evaluate"]) == errors.RESTART


@pytest.fixture
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal (a shell's background job starts with SIGINT ignored)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_deferred_interrupt_acts_when_the_block_ends(ctrl_c):
    import signal

    done = []
    with pytest.raises(KeyboardInterrupt):
        with errors.deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C acts at once
        with errors.deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("not reached")
    assert done == ["the rest of the block ran"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with errors.deferred_interrupt():  # no interrupt: nothing happens
        pass


def test_an_interrupted_checkpoint_write_is_complete_or_never_resumed(tmp_path, ctrl_c):
    import signal

    import jax.numpy as jnp

    from siamax import checkpoint

    like = {"w": jnp.zeros((64, 64)), "step": jnp.zeros((), jnp.int32)}
    latest, best = checkpoint.managers(tmp_path)
    checkpoint.save(latest, 1, {"w": jnp.ones((64, 64)), "step": jnp.asarray(1)}, {"epoch": 1})
    # Ctrl-C while orbax writes epoch 2 (its writer threads started, not finished): the write completes,
    # then the interrupt is raised.
    start_writing = latest.save

    def save_then_ctrl_c(*args, **kwargs):
        saved = start_writing(*args, **kwargs)
        events.append("ctrl-c")
        signal.raise_signal(signal.SIGINT)
        return saved

    finish_writing, events = latest.wait_until_finished, []

    def wait():
        finish_writing()
        events.append("written")

    latest.save, latest.wait_until_finished = save_then_ctrl_c, wait
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(latest, 2, {"w": jnp.full((64, 64), 2.0), "step": jnp.asarray(2)}, {"epoch": 2})
    assert (
        events[-2:] == ["ctrl-c", "written"] and (tmp_path / "checkpoints" / "latest" / "2").is_dir()
    )  # complete, renamed
    latest.close()
    best.close()
    tree, meta = checkpoint.resume(tmp_path, like)
    assert meta["epoch"] == 2 and float(tree["w"][0, 0]) == 2.0
    # A process killed mid-write leaves orbax's temporary folder: never taken for a step.
    half = tmp_path / "checkpoints" / "latest" / "3.orbax-checkpoint-tmp"
    half.mkdir()
    (half / "junk").write_text("half a checkpoint")
    tree, meta = checkpoint.resume(tmp_path, like, log=pytest.fail)
    assert meta["epoch"] == 2 and not (tmp_path / "checkpoints" / checkpoint.DAMAGED).exists()
