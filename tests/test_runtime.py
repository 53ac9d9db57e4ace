"""siamax.runtime: glibc keeps freed blocks, so a repeated large allocation stops page-faulting."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses measuring page faults

# Allocates, fills and frees a 64 MB block five times (as XLA:CPU does with a step's temporaries)
# and prints the page faults of the last four.
_PROBE = """
import ctypes, resource
from siamax import runtime

applied = runtime.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def step():
    p = libc.malloc(1 << 26)
    ctypes.memset(p, 1, 1 << 26)
    libc.free(p)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(keep: bool) -> tuple[str, int]:
    env = {**os.environ, "SIAMAX_KEEP_FREED_MEMORY": "1" if keep else "0"}
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    applied, faults = _probe(keep=True)
    assert applied == "True"
    off, faults_off = _probe(keep=False)
    assert off == "False"
    # glibc's default: every block is fresh mmap'd pages (at least one fault per 2 MB huge page)
    assert faults_off >= 4 * (1 << 26) // (2 << 20), faults_off
    assert faults * 20 < faults_off, (faults, faults_off)  # kept: the same pages are reused
