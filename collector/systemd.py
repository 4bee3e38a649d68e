"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).

Also the watchdog interval from ``$WATCHDOG_USEC`` (honouring ``$WATCHDOG_PID``). Sending never raises: a service
manager that went away must not take the collector down with it.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.config import Config


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` when ``$NOTIFY_SOCKET`` is set; else no-op."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd expects pings within, or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


# --- the memory the configuration allows (packaging/flowmed.service sets MemoryMax= from it) -----------------------

BASELINE_BYTES = 320 * 1024 * 1024
"""One process's own memory: interpreter, numpy, pyarrow, numba (LLVM and the compiled kernels of decode,
mediation and compliance, loaded from the cache before READY), the receive ring, metrics and status (measured:
255-265 MiB idle after READY with the defaults, 390 MiB right after a first start that compiled the kernels)."""
BINDING_BYTES = 100
"""Per subscriber binding in the in-memory index (``subscribers.max_memory_bindings``)."""
TASKS_PER_PROCESS_FIXED = 48
"""Threads of one process whatever the host: its own (event loop, HTTP, sink writer, ClickHouse sender, store
maintenance, bindings rebuild, RADIUS, state writer, allocator) and asyncio's executor (at most 32)."""


def memory_budget(config: Config) -> dict[str, int]:
    """Bytes each bounded part of one receiving process may hold with ``config`` ,
    and ``"total"``: every process together (``service.workers``, plus the supervisor when there are several).

    The parts: ``decoder.template_max_bytes``; ``decoder.pending_max_bytes``; the rows waiting for the outputs,
    the smaller of ``store.max_pending_rows`` raw flow rows (their numpy width) and ``store.max_pending_bytes`` (the
    sink refuses raw flows beyond either); the de-duplication tables at their worst for ``mediation.dedup_max_keys``
    (:func:`mediation.dedup.worst_case_bytes`) and the bindings index, when mediation is on; the receive buffers
    (``listen.rcvbuf_bytes`` per endpoint: socket memory is charged to the service's cgroup); the baseline.
    """
    from decoders.schema import FLOWS
    from mediation.dedup import worst_case_bytes

    c = config
    mediation = c.mediation.enabled
    row = sum(col.numpy_dtype.itemsize for col in FLOWS.columns)
    parts = {
        "templates": c.decoder.template_max_bytes,
        "pending": c.decoder.pending_max_bytes,
        "sink_rows": min(c.store.max_pending_rows * row, c.store.max_pending_bytes),
        "dedup": worst_case_bytes(c.mediation.dedup_max_keys) if mediation else 0,
        "bindings": c.subscribers.max_memory_bindings * BINDING_BYTES if mediation else 0,
        "receive_buffers": c.listen.rcvbuf_bytes * len(c.listen.endpoints()),
        "baseline": BASELINE_BYTES,
    }
    workers = c.service.workers
    parts["total"] = sum(parts.values()) * workers + (BASELINE_BYTES if workers > 1 else 0)
    return parts


def tasks_budget(workers: int, cores: int) -> int:
    """Threads the service may run: per process the fixed ones, and Arrow's and OpenBLAS's pools (a thread per core
    each) and Arrow's I/O pool (8); the supervisor's when there are several workers."""
    per_process = TASKS_PER_PROCESS_FIXED + 2 * cores + 8
    return per_process * workers + (TASKS_PER_PROCESS_FIXED if workers > 1 else 0)
