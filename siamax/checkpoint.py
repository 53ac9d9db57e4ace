"""Orbax checkpoints of a run (latest + best) and the exported model that ``siamax.load`` reads.

``fit`` saves the checkpoint of epoch ``e`` as step ``e``: ``latest`` keeps the last two, ``best``
the one that validation chose. :func:`resume` restores the newest one that can be read and moves
damaged ones aside (never deletes them), so a run whose files were damaged (disk full, an
interrupted copy) carries on from the checkpoint before.

Interrupts: a Ctrl-C while a checkpoint is written takes effect when the write is complete; a
process killed mid-write leaves orbax's ``<step>.orbax-checkpoint-tmp`` folder, which orbax never
lists as a step (the step's folder appears only by the rename that completes it) and removes when
it saves that step again. So a half-written checkpoint is never resumed from.

The export is one msgpack file (``model.msgpack``): the spec as plain data and the weights as
arrays. Loading it cannot run code (no pickle). :func:`fingerprint` names a model (its spec and
weights) by a hash: an index records it, and refuses another model's embeddings.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from siamax.errors import CheckpointError, DataError, ModelError, deferred_interrupt, one_line
from siamax.model import Ensemble, ModelSpec, Params, _check_params, init

EXPORT_NAME = "model.msgpack"
EXPORT_FORMAT = "siamax-params/1"
LATEST_KEPT = 2  # the newest latest checkpoint can be damaged: the one before is the fallback
DAMAGED = "damaged"  # checkpoints/damaged/<kind>-<step>-<UTC time>/: checkpoints that could not be restored


def managers(workdir: Path) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """(latest, best): latest keeps the last two checkpoints, best one; orbax commits atomically, so
    a kill mid-save leaves the previous checkpoints intact."""
    root = Path(workdir).absolute() / "checkpoints"
    keep = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)  # noqa: E731
    return (
        ocp.CheckpointManager(root / "latest", options=keep(LATEST_KEPT)),
        ocp.CheckpointManager(root / "best", options=keep(1)),
    )


def save(manager: ocp.CheckpointManager, step: int, tree: Any, meta: dict) -> None:
    """Write the checkpoint of ``step`` and wait until it is complete. A Ctrl-C meanwhile takes effect
    once it is (``errors.deferred_interrupt``): orbax's writer threads are never cut off mid-write."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    with deferred_interrupt():
        saved = manager.save(step, args=args)
        manager.wait_until_finished()
    if not saved:  # orbax skips, silently, a step not newer than the newest it holds
        raise RuntimeError(
            f"orbax did not save step {step} in {manager.directory}: it holds step {manager.latest_step()} already"
        )


def restore(manager: ocp.CheckpointManager, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore the checkpoint at ``step`` (default: newest) into the structure of ``like``."""
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with deferred_interrupt():  # as for save: orbax's reader threads are not cut off mid-read
        out = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
    return out["state"], out["meta"]


def _restore_checked(manager: ocp.CheckpointManager, like: Any, step: int) -> tuple[Any, dict]:
    """:func:`restore`, and a ValueError unless the tree has the structure and shapes of ``like``
    and the metadata is that of epoch ``step``."""
    tree, meta = restore(manager, like, step)
    if jax.tree.structure(tree) != jax.tree.structure(like) or any(
        np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(like))
    ):
        raise ValueError("its arrays do not have the structure and shapes of this run's training state")
    if not isinstance(meta, dict) or meta.get("epoch") != step:
        raise ValueError(f"its metadata {meta!r:.80} is not that of epoch {step}")
    return tree, meta


def _chain(e: BaseException, implicit: bool = True) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (``implicit``: or while handling), outermost first."""
    chain = []
    while e is not None and all(e is not seen for seen in chain):
        chain.append(e)
        e = e.__cause__ or (e.__context__ if implicit else None)
    return chain


def _is_damage(e: BaseException) -> bool:
    """Whether a failed restore says the files are bad, rather than that this process was
    interrupted or ran out of memory (orbax wraps both alike, so look through the chain)."""
    return all(isinstance(x, Exception) and not isinstance(x, MemoryError) for x in _chain(e))


def _why(e: BaseException) -> str:
    """The root cause of a failed restore in one short line (orbax wraps tensorstore's errors in
    pages of specs)."""
    e = _chain(e, implicit=False)[-1]
    text = re.sub(r' at local file "[^"]*"', "", one_line(e)) or "no message"  # the path is in the line already
    return f"{type(e).__name__}: {text if len(text) <= 200 else text[:197] + '...'}"


def _candidates(latest: ocp.CheckpointManager, best: ocp.CheckpointManager) -> list[tuple[str, int, Any]]:
    """(kind, step, manager) of every checkpoint, newest first; latest before best at equal steps."""
    found = [("latest", s, latest) for s in latest.all_steps()] + [("best", s, best) for s in best.all_steps()]
    return sorted(found, key=lambda c: (-c[1], c[0] != "latest"))


def _move_aside(manager: ocp.CheckpointManager, kind: str, step: int, stamp: str) -> Path:
    source = Path(manager.directory) / str(step)
    target = source.parents[1] / DAMAGED / f"{kind}-{step}-{stamp}"
    for n in range(2, 1000):
        if not target.exists():
            break
        target = target.with_name(f"{kind}-{step}-{stamp}-{n}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A rename within checkpoints/: atomic, and orbax no longer sees the step, so it can save it again.
    source.rename(target)
    return target


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def resume(workdir: Path, like: Any, log: Callable[[str], None] = print) -> tuple[Any, dict] | None:
    """(tree, meta) of the newest checkpoint of the run in ``workdir`` that can be restored into
    the structure of ``like``: the latest ones first, then the best one; None when there is none.

    The checkpoints newer than the one restored are those that could not be (an error while reading
    them, metadata missing or unreadable, arrays of other shapes): each is moved to
    ``checkpoints/damaged/<kind>-<epoch>-<UTC time>/`` and ``log`` gets one line saying why. When no
    checkpoint can be restored, :class:`CheckpointError`, and the files stay where they are.
    """
    root = Path(workdir).absolute() / "checkpoints"
    latest, best = managers(workdir)
    try:
        candidates = _candidates(latest, best)
        failed = []
        for kind, step, manager in candidates:
            try:
                tree, meta = _restore_checked(manager, like, step)
            except Exception as e:
                if not _is_damage(e):
                    raise
                failed.append((kind, step, manager, _why(e)))
                continue
            chosen = f"{kind} checkpoint of epoch {step}"
            break
        else:
            if not candidates:
                return None
            found = "; ".join(f"{kind} epoch {step} ({why})" for kind, step, _, why in failed)
            raise CheckpointError(
                f"no checkpoint in {root} can be restored: {found}. The files are left as they are. To train this "
                f"run afresh, move {root} aside (or delete it) and rerun the same command; or use another --workdir"
            )
        _sync("siamax.checkpoint.resume:probed")  # every process has read the step lists before any move
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        for kind, step, manager, why in failed:
            if jax.process_index() == 0:
                moved = _move_aside(manager, kind, step, stamp)
                log(
                    f"damaged checkpoint: {kind} epoch {step} cannot be restored ({why}); its files were moved to "
                    f"{moved}; resuming from the {chosen}"
                )
        _sync("siamax.checkpoint.resume:moved")
        return tree, meta
    finally:
        latest.close()
        best.close()


def restore_best(workdir: Path, like: Any) -> tuple[Any, dict]:
    """(tree, meta) of the best (by validation) checkpoint of the run in ``workdir``.

    :class:`CheckpointError` when it is missing or cannot be restored: the model that validation
    selected is that one, so no other checkpoint stands in for it.
    """
    root = Path(workdir).absolute() / "checkpoints"
    _, best = managers(workdir)
    try:
        step = best.latest_step()
        if step is None:
            raise CheckpointError(
                f"no best checkpoint in {root / 'best'} (one is saved at the end of every epoch that improves the "
                f"validation accuracy): train this run first, or pass the work directory of a trained run"
            )
        try:
            return _restore_checked(best, like, step)
        except Exception as e:
            if not _is_damage(e):
                raise
            raise CheckpointError(
                f"the best checkpoint {root / 'best' / str(step)} (epoch {step}, the model that validation selected) "
                f"cannot be restored ({_why(e)}); no other checkpoint is used in its place, and its files are kept. "
                f"To train the run again, move {root} aside and rerun the same command, or use another --workdir"
            ) from e
    finally:
        best.close()


def export(params: Params, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``params`` (spec + weights) to ``path`` (a file, or a directory -> DIR/model.msgpack)."""
    _check_params(params, "export")
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


def read_metadata(path: str | Path) -> dict:
    """The metadata an exported model was saved with (``export(..., metadata=)``): preset, config,
    and, where the training chose them, the same/different ``threshold`` and the images' ``ink``."""
    payload = _read_export(_export_path(path))
    try:
        return json.loads(payload.get("metadata") or "{}")
    except ValueError as e:
        raise ModelError(f"{path}: the model's metadata is not readable JSON ({e})") from e


def _export_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / EXPORT_NAME
    if not path.is_file():
        raise DataError(
            f"no exported siamax model at {path} (expected a work directory holding {EXPORT_NAME}, or the file itself)"
        )
    return path


def _read_export(path: Path) -> dict:
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types for corrupt files
        raise ModelError(f"{path} is not a readable siamax model file: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise ModelError(f"{path} is not a siamax model file (format {found!r})")
    return payload


def load(path: str | Path) -> Params:
    """Read an exported model: a work directory, or the path of its ``model.msgpack``."""
    path = _export_path(path)
    payload = _read_export(path)
    try:
        spec = ModelSpec.from_dict(json.loads(payload["spec"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path}: the model's architecture is not readable ({e})") from e
    weights = jax.tree.map(jax.numpy.asarray, payload["weights"])
    expected = jax.eval_shape(lambda: init(jax.random.key(0), spec).weights)
    if jax.tree.structure(expected) != jax.tree.structure(weights) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(weights))
    ):
        raise ModelError(f"{path}: weights do not match the stored spec {spec}")
    return Params(weights=weights, spec=spec)


LATER_FIELDS = ("channels", "tower", "blocks", "pooling", "attention_heads")  # ModelSpec fields of issue 22


def fingerprint(params: Params | Ensemble) -> str:
    """sha256 (hex) of a model: its spec and every weight (name, dtype, shape and bytes); of an
    Ensemble, of its members' fingerprints in order.

    ``conv_impl`` is left out: it picks among implementations of the same maths, so a model run
    with another one computes the same embeddings.
    """
    if isinstance(params, Ensemble):  # its members' in order (the order lays out its embeddings)
        return hashlib.sha256(("siamax-ensemble/1|" + "|".join(map(fingerprint, params.members))).encode()).hexdigest()
    _check_params(params, "fingerprint")
    h = hashlib.sha256()
    spec = params.spec.to_dict()
    spec.pop("conv_impl", None)
    # Fields added later are left out at their defaults: a model keeps the fingerprint it had before them.
    defaults = ModelSpec().to_dict()
    for name in LATER_FIELDS:
        if spec.get(name) == defaults[name]:
            spec.pop(name)
    h.update(json.dumps(spec, sort_keys=True).encode())
    leaves = jax.tree_util.tree_flatten_with_path(params.weights)[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
