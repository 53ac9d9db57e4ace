"""Multi-host for real: two CPU processes on localhost (one device each, gloo collectives) train the
main job's tiny config to the same parameters as one process with the same global batch.

If the CPU collectives cannot run on this machine, this test fails: a multi-host path that is never
exercised is not a feature.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import siamax

pytestmark = pytest.mark.slow  # two training processes

ROOT = Path(__file__).resolve().parents[1]
# SGD, not Adam: Adam turns the float noise of a different reduction order into +-lr steps in weights
# whose gradients are ~0, so two correct runs would drift apart.
FLAGS = ["--preset", "quick", "--model", "tiny", "--epochs", "2", "--steps-per-epoch", "2", "--episode-chars", "8"]
FLAGS += ["--optimizer", "sgd", "--learning-rate", "0.01", "--val-trials", "40", "--verification-pairs", "100"]
FLAGS += ["--no-progress", "--no-plots", "--test-sets", "lake20"]  # the parameters are what is compared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: Path, tfds_dir: str, xla_flags: str, *extra: str) -> subprocess.Popen:
    keep = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")  # the session's cache
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("XLA_", "JAX_", "SIAMAX_COORD"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags, SIAMAX_TFDS_DIR=tfds_dir)
    cmd = [sys.executable, "-m", "experiments.omniglot_oneshot", *FLAGS, "--workdir", str(workdir), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return out


def test_two_processes_match_one(tmp_path, omniglot, siamax_tfds_dir, one_device_xla_flags):
    tfds_dir = str(siamax_tfds_dir)  # prepared by the omniglot fixture
    address = f"127.0.0.1:{_free_port()}"
    multi = tmp_path / "multi"
    coordinated = ["--coordinator-address", address, "--num-processes", "2", "--process-id"]
    procs = [_start(multi, tfds_dir, one_device_xla_flags, *coordinated, str(i)) for i in range(2)]
    single = _start(tmp_path / "single", tfds_dir, one_device_xla_flags)
    outs = [_finish(p) for p in procs]
    _finish(single)

    # Process 0 reports and exports; process 1 writes nothing of its own.
    assert "Lake's 20 runs" in outs[0] and "Lake's 20 runs" not in outs[1]
    results = json.loads((multi / "results.json").read_text())
    assert results["processes"] == 2 and results["device"].startswith("2 x")
    assert len((multi / "metrics.jsonl").read_text().splitlines()) == 2
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    assert one["processes"] == 1

    a, b = siamax.load(multi), siamax.load(tmp_path / "single")
    for x, y in zip(jax.tree.leaves(a.weights), jax.tree.leaves(b.weights)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    # The two runs saw the same global batches: same losses epoch by epoch.
    lines = [
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (multi, tmp_path / "single")
    ]
    np.testing.assert_allclose([r["loss"] for r in lines[0]], [r["loss"] for r in lines[1]], rtol=1e-5)
