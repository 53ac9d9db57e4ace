"""Test setup. Simulated CPU devices must be requested before JAX initialises its backends."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole session: pytest-xdist's workers and the subprocesses that tests
# start inherit it from here, and many tests compile the same small programs (a subprocess run of the
# main job's tiny config: 24 s cold, 11 s with the cache warm). Fresh each session, removed at its end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="siamax-test-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The tests' programs are small and run a few times each, so compiling is most of their cost (~85% of
# the unit suite's time). XLA's backend optimisation level 1 without LLVM's expensive passes, and the
# CPU backend's earlier loop emitters in place of its fusion emitters, compile faster than the default
# (the emitters alone: the suite's test time 1,295 s -> 863 s on 2 cores) and compute the same bits on
# every pinned value (not on every program: some differ in the last bits, as they do between CPUs).
# Level 0 does not: it changes the affine warps' rounding, so the samplers' pinned batch digests fail.
# The benchmarks and experiments run at the default. SIAMAX_TEST_XLA_OPT=default keeps it.
if (
    os.environ.get("SIAMAX_TEST_XLA_OPT") != "default"
    and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]
):
    os.environ["XLA_FLAGS"] += (
        " --xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
        " --xla_cpu_use_fusion_emitters=false"
    )


# ---- Data fixtures (siamax.data). The raw archives: $SIAMAX_DATA_DIR, defaulting to the project's
# shared/data next to the checkout. Prepared TFDS datasets: $SIAMAX_TFDS_DIR if set, else a fresh
# per-session temporary folder, so every test session exercises preparation from scratch.
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

os.environ.setdefault("SIAMAX_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def siamax_data_dir():
    # Absolute: tests symlink archives from it, and a relative target would dangle.
    path = Path(os.environ["SIAMAX_DATA_DIR"]).resolve()
    if not path.is_dir():
        message = f"no data: SIAMAX_DATA_DIR={path} does not exist (see README, 'Data')"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the data: a missing folder is a broken setup, not a skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def one_device_xla_flags():
    """XLA_FLAGS for a subprocess that must see one CPU device: the session's compile options kept."""
    flags = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
    return " ".join([*flags, "--xla_force_host_platform_device_count=1"])


@pytest.fixture(scope="session")
def siamax_tfds_dir(tmp_path_factory):
    return Path(os.environ.get("SIAMAX_TFDS_DIR") or tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def omniglot(siamax_data_dir, siamax_tfds_dir):
    from siamax.data import load_omniglot

    return load_omniglot(siamax_data_dir, siamax_tfds_dir)


@pytest.fixture(scope="session")
def mnist(siamax_data_dir, siamax_tfds_dir):
    from siamax.data import load_mnist

    return load_mnist(siamax_data_dir, siamax_tfds_dir)


@pytest.fixture(scope="session")
def lake(siamax_data_dir):
    from siamax.data import lake_runs

    return lake_runs(siamax_data_dir)


# Integration tests are marked slow (`pytest -m "not slow"` runs the unit tests alone): those marked by
# hand (real training, subprocesses) and every test that reads the real archives.
REAL_DATA_FIXTURES = {"siamax_data_dir", "omniglot", "mnist", "lake"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
