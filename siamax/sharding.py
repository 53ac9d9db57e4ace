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
process builds *its own* slice of the global batch (``siamax.data.make_sampler(shard=
shard_of_process())``) and passes it to :func:`shard_batch` (``process_local=True``, the default
when more than one process runs): the global batch is the concatenation in process order, the
same batch whatever the number of processes. Only the primary process (:func:`is_primary`) writes
logs, plots, results and exports; every process takes part in checkpointing (Orbax coordinates it).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from siamax.errors import ConfigError

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
    *,
    auto: bool = False,
    **kwargs: Any,
) -> bool:
    """Start JAX's multi-host runtime if this is a multi-process run; return True if it is.

    Arguments default to the environment: ``SIAMAX_COORDINATOR_ADDRESS`` (``host:port`` of process
    0), ``SIAMAX_NUM_PROCESSES``, ``SIAMAX_PROCESS_ID`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none of them set this is a no-op (a single
    process), so scripts can call it unconditionally. ``auto=True`` leaves everything to JAX's own
    cluster detection (SLURM, Open MPI, Cloud TPU, ...). Must run before any other JAX call that
    touches devices. On CPU, cross-process collectives use gloo (set here unless configured).
    ``kwargs`` go to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).
    """
    coordinator_address = coordinator_address or _env("coordinator_address")
    num_processes = num_processes if num_processes is not None else _env("num_processes")
    process_id = process_id if process_id is not None else _env("process_id")
    if jax.distributed.is_initialized():
        return True
    if auto:
        _use_gloo_on_cpu()
        jax.distributed.initialize(**kwargs)
        return True
    if coordinator_address is None:
        if num_processes not in (None, 1, "1"):
            raise ConfigError("num_processes > 1 needs a coordinator address (--coordinator-address host:port)")
        return False
    if num_processes is None or process_id is None:
        raise ConfigError(
            "a multi-process start-up needs the coordinator address, the number of processes and this process's id "
            "(--coordinator-address, --num-processes, --process-id; or SIAMAX_COORDINATOR_ADDRESS, "
            "SIAMAX_NUM_PROCESSES, SIAMAX_PROCESS_ID)"
        )
    if not 0 <= int(process_id) < int(num_processes):
        raise ConfigError(f"process id {process_id} is not in [0, {num_processes})")
    _use_gloo_on_cpu()
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=int(num_processes), process_id=int(process_id), **kwargs
    )
    return True


def _use_gloo_on_cpu() -> None:
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of a command (each process of a run gets the same flags but its own id)."""
    group = parser.add_argument_group("multi-process runs (one process per host; all flags optional)")
    group.add_argument(
        "--coordinator-address", default=None, metavar="HOST:PORT", help="address of process 0's coordinator"
    )
    group.add_argument("--num-processes", type=int, default=None, help="number of processes of the run")
    group.add_argument("--process-id", type=int, default=None, help="this process's id, 0 .. num_processes - 1")
    group.add_argument(
        "--auto-cluster",
        action="store_true",
        help="let JAX detect the cluster (SLURM, Open MPI, Cloud TPU, ...) instead of the three flags above",
    )


def initialize_from_args(args: argparse.Namespace) -> bool:
    """:func:`initialize_distributed` with the flags of :func:`add_arguments` (environment as fallback)."""
    return initialize_distributed(args.coordinator_address, args.num_processes, args.process_id, auto=args.auto_cluster)


def is_primary() -> bool:
    """Whether this process writes the run's logs, plots, results and exports (process 0)."""
    return jax.process_index() == 0


def shard_of_process() -> tuple[int, int]:
    """(this process's index, number of processes): which slice of every global batch it builds."""
    return jax.process_index(), jax.process_count()


def sync(name: str) -> None:
    """Wait until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_copy(tree):
    """``tree`` with each replicated array replaced by this process's own copy on one local device.

    Evaluation runs on that copy, independently in each process (same inputs, same results), so it
    needs no collectives and never touches another host's devices.
    """
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


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
