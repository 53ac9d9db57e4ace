"""benchmarks/throughput.py runs end to end on the small model and writes JSON with every key."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the benchmark's processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "throughput.py")
KEYS = {
    "model",
    "batch_size",
    "dtype",
    "n_devices",
    "device_kind",
    "backend",
    "jax_version",
    "compile_s",
    "train_pairs_per_s",
    "score_pairs_per_s",
    "oneshot_trials_per_s",
}
SIAMAX_KEYS = KEYS | {
    "train_flops_per_pair",
    "malloc",
    "repeats",
    "repeat_s",
    "per_repeat",
}  # torch: no FLOP count, shares the process


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
    for flag in (
        "--model",
        "--batch-size",
        "--dtype",
        "--devices",
        "--repeats",
        "--json",
        "--compare",
        "--threads",
        "--all-pairs",
        "--conv-impl",
    ):
        assert flag in out


def test_small_model_json(tmp_path):
    path = tmp_path / "out.json"
    torch_available = importlib.util.find_spec("torch") is not None
    argv = [
        "--model",
        "small",
        "--batch-size",
        "8",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--min-time",
        "0",
        "--json",
        str(path),
        "--all-pairs",
    ] + (["--compare", "torch", "--threads", "1"] if torch_available else [])
    _load().main(argv)
    r = json.loads(path.read_text())
    assert set(r) == SIAMAX_KEYS | {"all_pairs_pairs_per_s"} | ({"torch"} if torch_available else set())
    _check(r)
    assert r["compile_s"] > 0 and r["backend"] == "cpu" and r["dtype"] == "float32" and r["malloc"] == "keep"
    assert r["all_pairs_pairs_per_s"] > 0
    if torch_available:
        assert set(r["torch"]) == KEYS | {"per_repeat"}
        _check(r["torch"])
    assert r["repeats"] == {"train": 1, "score": 1, "oneshot": 1, "all_pairs": 1}
    assert r["per_repeat"]["train_pairs_per_s"] == [r["train_pairs_per_s"]]


def test_default_repeats_fill_the_measure_time(tmp_path):
    """--repeats 0 (the default): each op gets as many interleaved repeats as fit in --measure-time
    (3..30), the same number in every suite, and the reported figure is the median of them."""
    path = tmp_path / "auto.json"
    _load().main(
        [
            "--model",
            "small",
            "--batch-size",
            "4",
            "--warmup",
            "0",
            "--min-time",
            "0",
            "--measure-time",
            "0.05",
            "--skip",
            "oneshot",
            "--json",
            str(path),
        ]
    )
    r = json.loads(path.read_text())
    for op, key in (("train", "train_pairs_per_s"), ("score", "score_pairs_per_s")):
        values = r["per_repeat"][key]
        assert 3 <= r["repeats"][op] == len(values) <= 30
        mid = sorted(values)[(len(values) - 1) // 2 : len(values) // 2 + 1]  # the median's one or two values
        assert mid[0] * (1 - 1e-3) <= r[key] <= mid[-1] * (1 + 1e-3)
    timer = _load().Timer(lambda: None, 0.2)
    timer.inner, timer.call_s = 4, 0.05  # 0.2 s per repeat
    assert (timer.repeats_for(3.0), timer.repeats_for(0.01), timer.repeats_for(1000.0)) == (15, 3, 30)


def test_data_parallel_and_indivisible_batch(tmp_path):
    mod = _load()
    path = tmp_path / "dp.json"
    mod.main(
        [
            "--model",
            "small",
            "--batch-size",
            "8",
            "--devices",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--min-time",
            "0",
            "--skip",
            "oneshot,score",
            "--json",
            str(path),
        ]
    )
    r = json.loads(path.read_text())
    assert set(r) == SIAMAX_KEYS and r["n_devices"] == 8 and r["train_pairs_per_s"] > 0
    assert r["score_pairs_per_s"] is None
    with pytest.raises(ValueError, match="does not divide"):
        mod.main(["--model", "small", "--batch-size", "6", "--devices", "4", "--repeats", "1"])


def test_flop_count_matches_xla_cost_analysis():
    """The analytic FLOPs behind the GPU fraction-of-peak figure agree with XLA's own count of the
    paper network's train step (XLA's convolutions, so nothing is rewritten)."""
    import jax
    import numpy as np

    import siamax
    from siamax import optim, train
    from siamax.model import get_spec

    spec = get_spec("paper").replace(conv_impl="xla")
    analytic = _load().train_flops_per_pair(spec)
    assert analytic == 2 * (2 * 117_964_800 + 3 * (1_416_167_424 + 169_869_312 + 37_748_736 + 75_497_472))
    b, s = 2, spec.input_size
    state = train.create_train_state(
        siamax.init(jax.random.key(0), spec), optim.koch_sgd(spec.layer_names, optim.SGDConfig(), 10), train.Objective()
    )
    batch = {"x1": np.ones((b, s, s), np.float32), "x2": np.ones((b, s, s), np.float32), "y": np.ones(b, np.float32)}
    cost = train.train_step.lower(state, batch, jax.random.key(1)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert abs(cost["flops"] / b / analytic - 1) < 0.03


def test_index_search_benchmark_json(tmp_path):
    """benchmarks/index_search.py (siamax.Index against faiss and NumPy) runs on a small gallery and
    writes a row per energy and batch size, the three suites agreeing on every query's top-1."""
    spec = importlib.util.spec_from_file_location(
        "siamax_index_search", os.path.join(REPO, "benchmarks", "index_search.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "search.json"
    argv = ["--gallery", "3000", "--batches", "1,8", "--k", "5", "--min-time", "0.01", "--repeats", "1"]
    out = mod.main(argv + ["--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    rows = out["results"]
    assert [(r["energy"], r["batch"]) for r in rows] == [
        ("euclidean", 1),
        ("euclidean", 8),
        ("cosine", 1),
        ("cosine", 8),
    ]
    for r in rows:
        assert r["siamax_qps"] > 0 and r["faiss_qps"] > 0 and r["numpy_qps"] > 0 and r["repeats"] == 1
    assert out["meta"]["gallery"] == 3000 and out["meta"]["k"] == 5
