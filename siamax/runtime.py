"""Process-level settings for fast host execution. Entry points call :func:`keep_freed_memory` once.

XLA:CPU allocates the temporaries of each executable call as one block (tens of MB for the small
model's training step, GBs for the paper network's) and frees it when the call ends; PyTorch's
CPU tensors come and go the same way. glibc's malloc serves blocks above its mmap threshold (128
KB, adapting up to 32 MB) with fresh ``mmap`` pages and unmaps them on ``free``, so every step
page-faults its whole working set back in, zero-filled by the kernel. Measured on a 2-core AMD
EPYC (docs/performance.md): the small model's training step made ~11,000 page faults and spent
~25 ms of kernel time per step; with the settings below ~100 faults, ~1 ms, and the step went from
~52 ms to ~31-37 ms median. The PyTorch reference of ``benchmarks/throughput.py`` runs in the same
process and gains as well (388 -> ~500 pairs/s), so comparisons stay like for like.

The cost: the process keeps its peak heap instead of returning freed memory to the OS.
``SIAMAX_KEEP_FREED_MEMORY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
_INT_MAX = 2**31 - 1  # mallopt's value is a C int


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of unmapping it after every step.

    Sets the mmap and trim thresholds to their maximum (blocks up to 2 GB come from the heap and
    stay there when freed) and one malloc arena (threads reuse the same hot memory; XLA's worker
    threads otherwise scatter blocks over per-thread arenas, which did not keep their pages).
    Applies to allocations made after the call, so call it first thing in ``main``. Returns
    whether the settings were applied: False off Linux/glibc (macOS, musl) or with
    ``SIAMAX_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("SIAMAX_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, _INT_MAX), (M_TRIM_THRESHOLD, _INT_MAX), (M_ARENA_MAX, 1)))
