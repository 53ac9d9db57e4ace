"""Data parallelism over every device and host, inside the jitted train step (GSPMD, no ``pmap``).

The recipe::

    siamax.sharding.initialize_distributed()        # no-op on one process
    mesh = siamax.sharding.make_mesh()              # 1-D mesh, axis "data", all devices of all hosts
    state = siamax.sharding.replicate(state, mesh)  # params + optimiser state: NamedSharding(mesh, P())
    batch = siamax.sharding.shard_batch(batch, mesh)  # leading axis over "data": P("data")
    state, metrics = siamax.train.train_step(state, batch, rng)

``train_step`` is an ordinary ``jax.jit``: given replicated parameters and a batch sharded along
its leading axis, XLA's SPMD partitioner splits the forward/backward pass over the devices and
all-reduces the gradients, so the updated parameters come out replicated and equal (to float
rounding) to a single-device step on the whole batch.

Multi-host: every process calls :func:`initialize_distributed` first, then the same code; each
process passes *its own* slice of the global batch to :func:`shard_batch` (``process_local=True``,
the default when more than one process runs), and the global batch is the concatenation in
process order.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that ask for a multi-process start-up (JAX's own names, plus siamax's).
_ENV = {
    "coordinator_address": ("SIAMAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("SIAMAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("SIAMAX_PROCESS_ID", "JAX_PROCESS_ID"),
}


def _env(name):
    for var in _ENV[name]:
        if os.environ.get(var):
            return os.environ[var]
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> bool:
    """Start JAX's multi-host runtime if this is a multi-process run; return True if it is.

    Arguments default to the environment: ``SIAMAX_COORDINATOR_ADDRESS`` (``host:port`` of process
    0), ``SIAMAX_NUM_PROCESSES``, ``SIAMAX_PROCESS_ID`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none of them set this is a no-op (a single
    process), so scripts can call it unconditionally. Must run before any other JAX call that
    touches devices. On CPU, cross-process collectives use gloo (set here unless configured).
    ``kwargs`` go to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).
    """
    coordinator_address = coordinator_address or _env("coordinator_address")
    num_processes = num_processes if num_processes is not None else _env("num_processes")
    process_id = process_id if process_id is not None else _env("process_id")
    if coordinator_address is None:
        if num_processes not in (None, 1, "1"):
            raise ValueError("num_processes > 1 needs a coordinator address (SIAMAX_COORDINATOR_ADDRESS=host:port)")
        return False
    if num_processes is None or process_id is None:
        raise ValueError(
            "a multi-process start-up needs the coordinator address, the number of processes and "
            "this process's id (SIAMAX_COORDINATOR_ADDRESS, SIAMAX_NUM_PROCESSES, SIAMAX_PROCESS_ID)"
        )
    if jax.distributed.is_initialized():
        return True
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=int(num_processes), process_id=int(process_id), **kwargs
    )
    return True


def make_mesh(n_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``n_devices`` devices (default: every device of every host).

    With several processes the mesh must span all of them (``n_devices`` = all devices or None).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if n_devices is None else int(n_devices)
    if n < 1:
        raise ValueError(f"n_devices must be >= 1, got {n}")
    if n > len(devices):
        hint = (
            " (on CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts)"
            if devices[0].platform == "cpu"
            else ""
        )
        raise ValueError(f"asked for {n} devices but only {len(devices)} are available{hint}")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"a multi-process mesh must use all {len(devices)} devices, got n_devices={n}")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Put every array of ``tree`` (params, a TrainState, ...) on all devices of ``mesh``, whole."""
    return jax.device_put(tree, replicated(mesh))


def check_divisible(global_batch: int, mesh: Mesh, what: str = "batch") -> None:
    n = mesh.shape[DATA_AXIS]
    if global_batch % n:
        lo, hi = global_batch // n * n, -(-global_batch // n) * n
        raise ValueError(
            f"the global {what} size {global_batch} does not divide by the {n} devices of the "
            f"'{DATA_AXIS}' mesh axis; use a multiple of {n} (e.g. {lo or n} or {hi})"
        )


def shard_batch(batch, mesh: Mesh, process_local: bool | None = None):
    """Split every array of ``batch`` along its leading axis over the ``"data"`` axis of ``mesh``.

    ``process_local`` (default: True when several processes run): the arrays are this process's
    part of the global batch, whose size is then local size x process count. Raises ValueError
    when the global batch size does not divide by the number of devices.
    """
    if process_local is None:
        process_local = jax.process_count() > 1
    sharding = data_sharding(mesh)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("empty batch")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"every array of a batch needs the same leading (batch) axis; got leading sizes "
            f"{sorted(s for s in sizes if s is not None)}" + (" and scalars" if None in sizes else "")
        )
    local = sizes.pop()
    check_divisible(local * (jax.process_count() if process_local else 1), mesh)
    if process_local:
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
    return jax.device_put(batch, sharding)


def is_replicated(tree) -> bool:
    """True if every array in ``tree`` is fully replicated over its devices."""
    return all(
        getattr(x, "sharding", None) is not None and x.sharding.is_fully_replicated for x in jax.tree.leaves(tree)
    )
