"""Orbax checkpoints of a run (latest + best) and the exported model that ``siamax.load`` reads.

The export is one msgpack file (``model.msgpack``): the spec as plain data and the weights as
arrays. Loading it cannot run code (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from siamax.api import Params, init
from siamax.model import ModelSpec

EXPORT_NAME = "model.msgpack"
EXPORT_FORMAT = "siamax-params/1"


def managers(workdir: Path) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """(latest, best): each keeps one checkpoint; orbax commits atomically, so a kill mid-save
    leaves the previous checkpoint intact."""
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    root = Path(workdir).absolute() / "checkpoints"
    return (ocp.CheckpointManager(root / "latest", options=opts), ocp.CheckpointManager(root / "best", options=opts))


def save(manager: ocp.CheckpointManager, step: int, tree: Any, meta: dict) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore the checkpoint at ``step`` (default: newest) into the structure of ``like``."""
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]


def export(params: Params, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``params`` (spec + weights) to ``path`` (a file, or a directory -> DIR/model.msgpack)."""
    path = Path(path)
    if path.suffix != ".msgpack":
        path = path / EXPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": EXPORT_FORMAT,
        "spec": json.dumps(params.spec.to_dict()),
        "metadata": json.dumps(metadata or {}),
        "weights": jax.tree.map(np.asarray, params.weights),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(flax.serialization.msgpack_serialize(payload))
    tmp.replace(path)
    return path


def load(path: str | Path) -> Params:
    """Read an exported model: a work directory, or the path of its ``model.msgpack``."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no exported siamax model at {path} (expected a work directory holding {EXPORT_NAME}, or the file itself)"
        )
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types for corrupt files
        raise ValueError(f"{path} is not a readable siamax model file: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise ValueError(f"{path} is not a siamax model file (format {found!r})")
    spec = ModelSpec.from_dict(json.loads(payload["spec"]))
    weights = jax.tree.map(jax.numpy.asarray, payload["weights"])
    expected = jax.eval_shape(lambda: init(jax.random.key(0), spec).weights)
    if jax.tree.structure(expected) != jax.tree.structure(weights) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(weights))
    ):
        raise ValueError(f"{path}: weights do not match the stored spec {spec}")
    return Params(weights=weights, spec=spec)
