"""Checkpoints that survive damage: two latest kept, damaged ones moved aside (never deleted), the
run resumed from the checkpoint before them with exactly the parameters of an uninterrupted run,
and a clear CheckpointError when nothing (or the best checkpoint) cannot be restored.

Real Orbax, the "tiny" model and real Omniglot images; each run is a few steps of two per epoch.
"""

import hashlib
import json
import re
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import siamax
from siamax import checkpoint, train
from siamax import data as sd
from siamax.errors import CheckpointError

# Orbax leaves the reads of a damaged checkpoint as coroutines that fail after the restore has raised.
pytestmark = [
    pytest.mark.slow,  # real training and Orbax writes
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

EPOCHS, PATIENCE, STEPS = 8, 3, 2
# Validation scores of epochs 1..5: the best is epoch 2, and three epochs without improvement stop the
# run after epoch 5. A fallback with wrong bookkeeping (best accuracy, bad epochs) stops elsewhere.
SCORES = (0.3, 0.6, 0.4, 0.5, 0.55)


def _weights_digest(params) -> str:
    return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in jax.tree.leaves(params.weights))).hexdigest()


def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _log_epochs(workdir: Path) -> list[tuple[int, float]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["val_accuracy"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def run(omniglot, tmp_path_factory):
    """A reference run, uninterrupted, and a template of the same run interrupted during epoch 5's
    validation (latest checkpoints of epochs 3 and 4, best of epoch 2), which tests copy and damage."""
    spec = siamax.init(jax.random.key(0), "tiny").spec
    images = sd.omniglot_table(omniglot, spec).images
    data_key = jax.random.key(1)

    def batch(step):  # depends only on (seed, step), as the library's samplers do
        chars = jax.random.choice(jax.random.fold_in(data_key, step), 200, (4,), replace=False)
        return {"x": images[(chars[:, None] * 20 + jnp.arange(2)).reshape(-1)], "labels": jnp.repeat(chars, 2)}

    sampler = sd.Sampler(batch=batch, steps_per_epoch=STEPS, pairs_per_step=28, images_per_step=8)

    def fresh_state():  # a new process starts like this
        params = siamax.init(jax.random.key(0), "tiny")
        return train.create_train_state(params, optax.adam(1e-3), train.Objective(kind="all_pairs"))

    # Validation is a function of the parameters: the score of the k-th epoch of the reference run,
    # looked up by a digest of its weights (weights the reference run never had score 0).
    scores, digests = {}, []

    def record(params):
        digests.append(_weights_digest(params))
        scores[digests[-1]] = SCORES[len(digests) - 1]
        return scores[digests[-1]]

    def validate(params):
        return scores.get(_weights_digest(params), 0.0)

    def fit(workdir, validate=validate):
        return train.fit(
            fresh_state(),
            sampler,
            epochs=EPOCHS,
            patience=PATIENCE,
            validate=validate,
            workdir=workdir,
            seed=0,
            progress=False,
        )

    root = tmp_path_factory.mktemp("checkpoint")
    reference, reference_meta = fit(root / "reference", record)
    assert reference_meta["epoch"] == len(SCORES) and int(reference.step) == len(SCORES) * STEPS

    calls = {"n": 0}

    def interrupted(params):
        calls["n"] += 1
        if calls["n"] == 5:  # like Ctrl-C during epoch 5's validation, before its checkpoint
            raise KeyboardInterrupt
        return validate(params)

    with pytest.raises(KeyboardInterrupt):
        fit(root / "template", interrupted)
    return types.SimpleNamespace(
        fit=fit,
        fresh_state=fresh_state,
        reference=reference,
        meta=reference_meta,
        log=_log_epochs(root / "reference"),
        digests=digests,
        root=root,
        template=root / "template",
    )


@pytest.fixture
def workdir(run, tmp_path):
    shutil.copytree(run.template, tmp_path / "run")
    return tmp_path / "run"


def _truncate_weights(step_dir: Path):  # an interrupted copy: the largest file (the arrays) cut short
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _garbage_metadata(step_dir: Path):  # the UnicodeDecodeError of issue 14: bytes overwritten
    path = step_dir / "state" / "_METADATA"
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : len(data) // 2] = (
        np.random.default_rng(0).integers(128, 256, len(data) // 2 - len(data) // 4, dtype=np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))


def _delete_meta(step_dir: Path):  # the run's metadata (epoch, best accuracy, ...) missing
    (step_dir / "meta" / "metadata").unlink()


def _empty_manifest(step_dir: Path):  # disk full: a file created but never written
    (step_dir / "state" / "manifest.ocdbt").write_bytes(b"")


DAMAGE = {"truncated": _truncate_weights, "garbage": _garbage_metadata, "deleted": _delete_meta}


def _check_same_as_reference(run, state, meta, workdir):
    # The bookkeeping: early stopping after the same epoch, with the same best epoch and accuracy.
    assert {k: v for k, v in meta.items() if k != "train_seconds"} == {
        k: v for k, v in run.meta.items() if k != "train_seconds"
    }
    assert _log_epochs(workdir) == run.log  # no duplicate or missing epoch in metrics.jsonl
    assert int(state.step) == int(run.reference.step)
    for a, b in zip(jax.tree.leaves(run.reference.params.weights), jax.tree.leaves(state.params.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _damaged_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("damaged checkpoint")]


def _moved_to(line: str) -> Path:
    return Path(re.search(r"moved to (\S+);", line).group(1))


def test_two_latest_checkpoints_are_kept(run):
    latest, best = checkpoint.managers(run.template)
    assert (latest.all_steps(), best.all_steps()) == ([3, 4], [2])
    latest, best = checkpoint.managers(run.root / "reference")
    assert (latest.all_steps(), best.all_steps()) == ([4, 5], [2])


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(run, workdir, damage, capsys):
    newest = workdir / "checkpoints" / "latest" / "4"
    DAMAGE[damage](newest)
    damaged_files = _files(newest)

    state, meta = run.fit(workdir)
    out = capsys.readouterr().out
    (line,) = _damaged_lines(out)
    assert re.match(
        r"damaged checkpoint: latest epoch 4 cannot be restored \(\w+: .+\); its files were moved to ", line
    )
    assert line.endswith("resuming from the latest checkpoint of epoch 3")
    moved = _moved_to(line)
    assert re.fullmatch(r"latest-4-\d{8}T\d{6}Z", moved.name) and moved.parent == workdir / "checkpoints" / "damaged"
    assert _files(moved) == damaged_files  # kept, byte for byte
    assert "resuming from" in out and ": epoch 3, step 6" in out

    _check_same_as_reference(run, state, meta, workdir)
    # Epoch 4 was saved again where the damaged one was, and restores.
    latest, best = checkpoint.managers(workdir)
    assert (latest.all_steps(), best.all_steps()) == ([4, 5], [2])
    tree, saved_meta = checkpoint.restore(latest, train._checkpoint_tree(state), 4)
    assert saved_meta["epoch"] == 4 and int(tree["step"]) == 4 * STEPS


def test_both_latest_damaged_falls_back_to_best_with_its_bookkeeping(run, workdir, capsys):
    _truncate_weights(workdir / "checkpoints" / "latest" / "4")
    _empty_manifest(workdir / "checkpoints" / "latest" / "3")

    state, meta = run.fit(workdir)
    out = capsys.readouterr().out
    lines = _damaged_lines(out)
    assert [line.split(" cannot")[0] for line in lines] == [
        "damaged checkpoint: latest epoch 4",
        "damaged checkpoint: latest epoch 3",
    ]
    assert all(line.endswith("resuming from the best checkpoint of epoch 2") for line in lines)
    assert all(_moved_to(line).is_dir() for line in lines)
    assert ": epoch 2, step 4" in out
    # The best checkpoint's meta is that of epoch 2 (best accuracy 0.6, no bad epoch yet): with it the
    # rerun epochs 3-5 count three bad epochs and stop where the uninterrupted run stopped.
    _check_same_as_reference(run, state, meta, workdir)
    latest, best = checkpoint.managers(workdir)
    assert (latest.all_steps(), best.all_steps()) == ([4, 5], [2])


def test_nothing_restorable_raises_and_keeps_every_file(run, workdir, capsys):
    _truncate_weights(workdir / "checkpoints" / "latest" / "4")
    _garbage_metadata(workdir / "checkpoints" / "latest" / "3")
    _delete_meta(workdir / "checkpoints" / "best" / "2")
    before, log = _files(workdir), (workdir / "metrics.jsonl").read_text()

    with pytest.raises(CheckpointError) as e:
        run.fit(workdir)
    message = str(e.value)
    assert "\n" not in message
    assert re.search(r"no checkpoint in .*checkpoints can be restored: latest epoch 4 \(.+\); latest epoch 3", message)
    assert "best epoch 2 (FileNotFoundError" in message
    assert "move" in message and "--workdir" in message
    assert _files(workdir) == before and (workdir / "metrics.jsonl").read_text() == log
    assert not (workdir / "checkpoints" / "damaged").exists()
    assert not _damaged_lines(capsys.readouterr().out)


def test_restore_best_refuses_a_damaged_best_checkpoint(run, workdir):
    state = run.fresh_state()
    best = train.restore_best(state, workdir)
    assert _weights_digest(best) == run.digests[1]  # the weights validation chose (epoch 2)

    _garbage_metadata(workdir / "checkpoints" / "best" / "2")
    before = _files(workdir)
    with pytest.raises(CheckpointError, match=r"best checkpoint .*best.2 \(epoch 2, .*cannot be restored .*no other"):
        train.restore_best(state, workdir)
    assert _files(workdir) == before

    shutil.rmtree(workdir / "checkpoints" / "best")
    with pytest.raises(CheckpointError, match="no best checkpoint in"):
        train.restore_best(state, workdir)


def test_checkpoints_of_another_state_are_refused_and_left_alone(run, workdir):
    params = siamax.init(jax.random.key(0), "tiny")
    other = train.create_train_state(params, optax.sgd(0.1, momentum=0.9), train.Objective(kind="all_pairs"))
    before = _files(workdir)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be restored: latest epoch 4 .*best epoch 2"):
        checkpoint.resume(workdir, train._checkpoint_tree(other))
    assert _files(workdir) == before


def test_interrupted_restore_is_not_damage():
    try:
        try:
            raise KeyboardInterrupt
        except BaseException as inner:
            raise Exception("Encountered error while reading array index") from inner  # as orbax wraps it
    except Exception as e:
        assert not checkpoint._is_damage(e)
    assert checkpoint._is_damage(ValueError("DATA_LOSS: Error reading"))
