"""Process-level settings for fast host execution. Entry points call :func:`keep_freed_memory` once.

XLA:CPU allocates the temporaries of each executable call as one block (tens of MB for the small
model's training step, GBs for the paper network's) and frees it when the call ends; PyTorch's
CPU tensors come and go the same way. glibc's malloc serves blocks above its mmap threshold (128
KB, adapting up to 32 MB) with fresh ``mmap`` pages and unmaps them on ``free``, so every step
page-faults its whole working set back in, zero-filled by the kernel. Measured on a 2-core AMD
EPYC (docs/performance.md): the small model's training step made ~11,000 page faults and spent
~25 ms of kernel time per ~52 ms step; with these settings ~200 faults, ~1 ms, and ~39 ms per
step (median of 100). The paper network's step: ~55,000 faults and ~0.6 s of kernel time with
glibc's thresholds raised to their 2 GB maximum; with these settings ~18,000 and 0.06-0.23 s
averaged over 12 steps, nearly all of it in the few steps that grow the heap (none in the others).
The PyTorch reference of ``benchmarks/throughput.py`` runs in the same process and gains as well,
so comparisons stay like for like.

The cost: the process keeps its peak heap instead of returning freed memory to the OS.
``SIAMAX_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of unmapping it after every step.

    No block is served by ``mmap`` (glibc falls back to it only where the heap cannot grow), the
    heap is never trimmed (a mallopt value of -1 is SIZE_MAX: the paper network's temporaries pass
    2 GB, so a finite threshold still returned them every step) and all threads share one arena
    (XLA's worker threads otherwise scatter blocks over per-thread arenas, whose pages came and went).
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
    return all(
        mallopt(param, value) == 1 for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
    )
