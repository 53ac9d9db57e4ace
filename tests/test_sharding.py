"""Data parallelism: one train step on 1 device == on 8 (simulated) devices == on 2 processes."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import siamax
from siamax import optim, sharding, train
from siamax.model import ModelSpec

pytestmark = pytest.mark.slow  # training on 8 simulated devices and two processes

SPEC = ModelSpec(
    input_size=16, filters=(4, 8), kernels=(3, 3), pools=(True, True), padding="SAME", fc_units=16, init="lecun"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    s = SPEC.input_size
    return {
        "x1": rng.random((n, s, s), dtype=np.float32),
        "x2": rng.random((n, s, s), dtype=np.float32),
        "y": (rng.random(n) > 0.5).astype(np.float32),
    }


def _state():
    params = siamax.init(jax.random.key(0), SPEC)
    tx = optim.koch_sgd(SPEC.layer_names, optim.SGDConfig(default_learning_rate=0.1), steps_per_epoch=10)
    return train.create_train_state(params, tx, train.Objective())


def _step(n_devices, batch):
    mesh = sharding.make_mesh(n_devices)
    state = sharding.replicate(_state(), mesh)
    for _ in range(2):  # two steps: the momentum buffer takes part in the second
        state, metrics = train.train_step(state, sharding.shard_batch(batch, mesh), jax.random.key(1))
    return state, metrics


def test_eight_devices_available():
    assert jax.device_count() >= 8, "tests/conftest.py should simulate 8 CPU devices"


def test_one_vs_eight_devices_same_parameters():
    batch = _batch()
    s1, m1 = _step(1, batch)
    s8, m8 = _step(8, batch)
    assert sharding.is_replicated(s8.params.weights) and sharding.is_replicated(s8.opt_state)
    assert len(jax.tree.leaves(s8.params.weights)[0].sharding.device_set) == 8
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params.weights), jax.tree.leaves(s1.params.weights)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_sharded_batch_layout():
    mesh = sharding.make_mesh(8)
    b = sharding.shard_batch(_batch(), mesh)
    assert b["x1"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert {s.data.shape[0] for s in b["x1"].addressable_shards} == {2}


def test_indivisible_batch_is_a_clear_error():
    mesh = sharding.make_mesh(8)
    with pytest.raises(ValueError, match=r"12 does not divide by the 8 devices.*multiple of 8"):
        sharding.shard_batch(_batch(12), mesh)


def test_mesh_errors():
    with pytest.raises(ValueError, match="only"):
        sharding.make_mesh(jax.device_count() + 1)
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()


def test_initialize_distributed_is_a_noop_on_one_process(monkeypatch):
    for names in sharding._ENV.values():
        for var in names:
            monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed() is False
    assert jax.process_count() == 1


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from siamax import sharding
    assert sharding.initialize_distributed()
    import jax
    sys.path.insert(0, {tests!r})
    import test_sharding as t
    pid = jax.process_index()
    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
    batch = t._batch()
    half = len(batch["y"]) // 2
    local = {{k: v[pid * half:(pid + 1) * half] for k, v in batch.items()}}
    mesh = sharding.make_mesh()
    state = sharding.replicate(t._state(), mesh)
    for _ in range(2):
        state, m = t.train.train_step(state, sharding.shard_batch(local, mesh), jax.random.key(1))
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params.weights)]
    np.savez({out!r} + f"_{{pid}}.npz", *leaves)
    print("worker", pid, "ok")
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path, one_device_xla_flags):
    out = str(tmp_path / "params")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(os.path.abspath(__file__)), out=out))
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=one_device_xla_flags,
            SIAMAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            SIAMAX_NUM_PROCESSES="2",
            SIAMAX_PROCESS_ID=str(pid),
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        # A multi-process path that cannot be exercised here is a failure, not a skip (as test_multihost).
        pytest.fail("two-process JAX on localhost did not finish in 240 s (collectives unavailable here?)")
    if any(p.returncode for p in procs):
        log = "\n".join(logs)
        if any(s in log for s in ("gloo", "collectives", "Unimplemented", "UNIMPLEMENTED", "not supported")):
            pytest.skip("JAX CPU cross-process collectives are not available: " + log[-400:])
        raise AssertionError("worker failed:\n" + log[-3000:])
    s1, _ = _step(1, _batch())
    ref = [np.asarray(x) for x in jax.tree.leaves(s1.params.weights)]
    for pid in range(2):
        got = np.load(out + f"_{pid}.npz")
        for i, r in enumerate(ref):
            np.testing.assert_allclose(got[f"arr_{i}"], r, rtol=1e-5, atol=1e-6)
