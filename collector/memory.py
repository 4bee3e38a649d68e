"""Giving freed heap memory back to the kernel while the daemon runs (``flowmed run``, with or without systemd).

glibc's malloc serves a block of at least its mmap threshold (128 KiB at first) with its own ``mmap``, given back at
``free``; but each such free raises the threshold to the block's size (up to 32 MiB), so from then on numpy's
per-batch arrays (a 61,440-record decode batch has columns of 240-480 KiB, the mediation's intermediates a few MiB)
come out of the heap arenas, one per allocating thread. What is freed there stays in the process: free chunks
between live ones are not returned. Measured with ``bench/memprobe.py`` at 30,000 v9 datagrams/s (BENCHMARKS.md,
"Memory of one worker under load"): 115-500 MiB of the heap free and still resident.

Fixing the threshold at 128 KiB (``MALLOC_MMAP_THRESHOLD_=131072``) keeps the heap small but makes every large array
a fresh ``mmap`` with its page faults: the Mediator's per-batch time more than doubled (52 -> 119 ms). So the
threshold stays dynamic (arrays reuse warm heap memory) and a thread calls ``malloc_trim(0)`` every
:data:`TRIM_EVERY_S` seconds, which hands the free pages inside every arena back to the kernel (``MADV_DONTNEED``).
An operator may still set ``MALLOC_MMAP_THRESHOLD_`` in the unit's environment (less memory, more CPU). Other C
libraries (musl) are left alone. pyarrow allocates through its own pool (mimalloc), not glibc's malloc.
"""

from __future__ import annotations

import ctypes
import platform
import threading
import time

TRIM_EVERY_S = 5.0
"""Seconds between trims: the free space a trim leaves is refilled by then, at a few ms per trim."""


def start_trimmer(every_s: float = TRIM_EVERY_S) -> threading.Thread | None:
    """Start the daemon thread that calls glibc's ``malloc_trim(0)`` every ``every_s`` seconds (see the module
    docstring); None when the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    libc.malloc_trim.argtypes = [ctypes.c_size_t]

    def trim() -> None:
        while True:
            time.sleep(every_s)
            libc.malloc_trim(0)  # ctypes releases the GIL for the call: the event loop keeps running

    thread = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    thread.start()
    return thread
