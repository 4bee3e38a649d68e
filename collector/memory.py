"""The C allocator's tuning, applied when the daemon starts (``flowmed run``, with or without systemd).

glibc's malloc serves a block of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB) with its own ``mmap``, given back to
the kernel at ``free``. But the threshold is dynamic: each time such a block is freed, the threshold rises to its
size (up to 32 MiB), so from then on numpy's per-batch arrays (a 61,440-record decode batch has columns of 240-480
KiB, the mediation's intermediates up to a few MiB) come out of the heap arenas, one per thread that allocates
(up to 8 per core). Freed there, the space stays in the process: free chunks between live ones are not returned,
and each arena keeps its own. Measured with ``bench/memprobe.py`` at 30,000 v9 datagrams/s (BENCHMARKS.md,
"Memory"): the heap arenas grew to about 690 MiB of the daemon's 1.1 GB RSS; with the threshold fixed at 128 KiB
they stay at about 150 MiB and the large blocks come and go with ``mmap``.

Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)`` also turns off the dynamic adjustment) is what
``MALLOC_MMAP_THRESHOLD_=131072`` in the environment does; it is applied here, at start, so it holds for every way
the daemon is started. An operator's own ``MALLOC_MMAP_THRESHOLD_`` wins (it is left as glibc read it). Other C
libraries (musl) have no such threshold and are left alone. pyarrow allocates through its own pool (mimalloc), not
glibc's malloc, and is not concerned.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""

MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own starting value: blocks of this size or more are mmapped and returned to the kernel when freed."""

ENV_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"
"""The environment variable glibc reads at start: when set, the operator's value stays."""


def tune_allocator(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (see the module docstring).

    Returns True when applied; False when the C library is not glibc or ``MALLOC_MMAP_THRESHOLD_`` is set.
    """
    env = os.environ if environ is None else environ
    if ENV_OVERRIDE in env or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
