"""What makes a result rerunnable: the code (commit, dirty flag, versions), the machine, the seeds and the
convolution implementation each layer ran. Every results file siamax writes carries ``provenance()``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from siamax import conv, rng


def environment() -> dict:
    """The machine and the library versions."""
    import flax
    import optax
    import orbax.checkpoint

    dev = jax.devices()
    return {
        "device": f"{len(dev)} x {dev[0].device_kind}",
        "backend": jax.default_backend(),
        "processes": jax.process_count(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "python": sys.version.split()[0],
        "versions": {
            "siamax": siamax_version(),
            "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax-checkpoint": orbax.checkpoint.__version__,
            "numpy": np.__version__,
        },
    }


def siamax_version() -> str:
    """The installed distribution's version (``pip install -e .`` included), "unknown" when not installed."""
    try:
        return importlib.metadata.version("siamax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_state() -> dict:
    """``{"git_commit", "git_dirty"}`` of the checkout siamax runs from (``"unknown"`` / None outside one)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    if top.returncode or head.returncode or Path(top.stdout.strip()).resolve() != root:
        return {"git_commit": "unknown", "git_dirty": None}  # an installed copy, not a checkout
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def provenance(cfg=None) -> dict:
    """What makes a result rerunnable: code (commit, dirty flag, versions), machine, seeds, and the
    convolution implementation each layer ran."""
    out = {**git_state(), **environment(), "date": time.strftime("%Y-%m-%d"), "time_utc": _utc_now()}
    if cfg is not None:
        out["seeds"] = rng.record(cfg.seed, cfg.eval.eval_seed)
        out["conv_plan"] = conv.plan_dict(cfg.spec)
    return out


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` as JSON atomically (a crash leaves the old file or the new one, never half of one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
    return path
