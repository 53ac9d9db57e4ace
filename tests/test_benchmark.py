"""benchmarks/throughput.py runs end to end on the small model and writes JSON with every key."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "throughput.py")
KEYS = {"model", "batch_size", "dtype", "n_devices", "device_kind", "backend", "jax_version", "compile_s",
        "train_pairs_per_s", "score_pairs_per_s", "oneshot_trials_per_s"}


def _load():
    spec = importlib.util.spec_from_file_location("siamax_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(r, model="small", batch=8, n_devices=1):
    assert r["model"] == model and r["batch_size"] == batch and r["n_devices"] == n_devices
    for key in ("train_pairs_per_s", "score_pairs_per_s", "oneshot_trials_per_s"):
        assert isinstance(r[key], (int, float)) and r[key] > 0, key


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--batch-size", "--dtype", "--devices", "--repeats", "--json", "--compare",
                 "--threads", "--all-pairs", "--conv-impl"):
        assert flag in out


def test_small_model_json(tmp_path):
    path = tmp_path / "out.json"
    torch_available = importlib.util.find_spec("torch") is not None
    argv = ["--model", "small", "--batch-size", "8", "--repeats", "1", "--warmup", "0", "--min-time", "0",
            "--json", str(path), "--all-pairs"] + (["--compare", "torch", "--threads", "1"] if torch_available else [])
    _load().main(argv)
    r = json.loads(path.read_text())
    assert set(r) == KEYS | {"all_pairs_pairs_per_s"} | ({"torch"} if torch_available else set())
    _check(r)
    assert r["compile_s"] > 0 and r["backend"] == "cpu" and r["dtype"] == "float32"
    assert r["all_pairs_pairs_per_s"] > 0
    if torch_available:
        assert set(r["torch"]) == KEYS
        _check(r["torch"])


def test_data_parallel_and_indivisible_batch(tmp_path):
    mod = _load()
    path = tmp_path / "dp.json"
    mod.main(["--model", "small", "--batch-size", "8", "--devices", "8", "--repeats", "1", "--warmup", "0",
              "--min-time", "0", "--skip", "oneshot,score", "--json", str(path)])
    r = json.loads(path.read_text())
    assert set(r) == KEYS and r["n_devices"] == 8 and r["train_pairs_per_s"] > 0
    assert r["score_pairs_per_s"] is None
    with pytest.raises(ValueError, match="does not divide"):
        mod.main(["--model", "small", "--batch-size", "6", "--devices", "4", "--repeats", "1"])
