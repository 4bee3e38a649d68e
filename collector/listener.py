"""UDP listener: a non-blocking socket drained in a loop from ``loop.add_reader``.

The read callback does the least possible per datagram: ``recvfrom`` and one list append of
``(payload, exporter_address, received_ms)`` (the receive time is taken once per readiness event). Decoding happens
per batch elsewhere. Measured with ``bench/test_receive_bench.py`` (loopback, 1,400-byte datagrams, one core of a
busy 2-core machine, best of 20 rounds): ``recvfrom`` plus the append 1.2 µs per datagram, ``recvfrom_into`` a
preallocated buffer plus the copy out 1.3-1.5 µs, ``recvmsg`` with SO_RXQ_OVFL ancillary data 1.3-1.6 µs; so
``recvfrom`` it is, and kernel drops are read from ``/proc/net/udp`` (the ``drops`` column of this socket's inode)
once a second instead of per datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from collector.config import split_endpoint

MAX_DATAGRAM = 65535
# a platform constant, not an optional part: Linux has it, and Python does not always export it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

Datagram = tuple[bytes, str, int]


class ListenError(OSError):
    """A socket flowmed needs could not be bound: names the address and what it was for (flows, RADIUS, ...)."""

    def __init__(self, purpose: str, address: str, cause: OSError) -> None:
        if cause.errno is None and isinstance(cause.__cause__, OSError):  # uvloop wraps the system's error
            cause = cause.__cause__
        super().__init__(cause.errno, cause.strerror)
        self.purpose, self.address = purpose, address
        reason = os.strerror(cause.errno) if cause.errno else str(cause)  # asyncio adds its own wording
        if cause.errno == errno.EADDRINUSE:
            reason += " (another process listens there: a second flowmed, or another collector)"
        elif cause.errno == errno.EADDRNOTAVAIL:
            reason += " (not an address of this host)"
        elif cause.errno == errno.EACCES:
            reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
        self.message = f"cannot listen for {purpose} on {address}: {reason}"

    def __str__(self) -> str:
        return self.message


class UdpListener:
    """One UDP endpoint (``"0.0.0.0:2055"`` or ``"[::]:4739"``).

    Datagrams are appended to ``out`` (a list owned by the server); ``on_data`` is called after each readiness event
    that read something, so the server can cut a batch. At most ``max_per_event`` datagrams are read per event, so one
    busy socket cannot starve the others or postpone a batch (the socket stays readable and the loop comes back).
    """

    def __init__(self, endpoint: str, out: list[Datagram], on_data: Callable[[], None] | None = None,
                 rcvbuf_bytes: int = 32 * 1024 * 1024, reuse_port: bool = False, max_per_event: int = 2048,
                 purpose: str = "flows (NetFlow/IPFIX)") -> None:
        self.endpoint = endpoint
        self.purpose = purpose
        """What the socket is for, in the error when it cannot be bound."""
        self.host, self.port = split_endpoint(endpoint)
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.out = out
        self.on_data = on_data
        self.rcvbuf_requested = rcvbuf_bytes
        self.rcvbuf_granted = 0
        self.reuse_port = reuse_port
        self.max_per_event = max_per_event
        self.sock: socket.socket | None = None
        self.inode = 0
        self.datagrams = 0
        self.bytes = 0
        self.reported_datagrams = 0
        """``datagrams`` when the daemon last counted them into its metrics (and ``reported_bytes``, ``bytes``)."""
        self.reported_bytes = 0
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drops_seen = 0

    def bind(self) -> socket.socket:
        """Create, size and bind the socket (raises :class:`ListenError` when the address is taken or not local)."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6:
                # "[::]" must not also claim IPv4, so that "0.0.0.0:P" and "[::]:P" can both be configured.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf_requested)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 < self.rcvbuf_requested:
                # Beyond net.core.rmem_max only with CAP_NET_ADMIN (root); silently keep the capped size otherwise.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf_requested)
            # Linux doubles the request for bookkeeping and reports the doubled value; what can hold data is half.
            self.rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            sock.setblocking(False)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ListenError(self.purpose, self.endpoint, exc) from None
        self.port = sock.getsockname()[1]
        self.inode = os.fstat(sock.fileno()).st_ino
        self.sock = sock
        return sock

    def adopt(self, fd: int) -> socket.socket:
        """Use a socket bound by the supervisor (passed to this worker as file descriptor ``fd``)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        self.port = sock.getsockname()[1]
        self.inode = os.fstat(fd).st_ino
        self.sock = sock
        return sock

    @property
    def address(self) -> str:
        """The bound endpoint, with the real port when 0 was configured."""
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the socket with the event loop (bind first)."""
        assert self.sock is not None, "bind() first"
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def stop(self) -> None:
        """Stop reading (the socket stays open so that :meth:`drain` can take what the kernel still holds)."""
        if self._loop is not None and self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
        self._loop = None

    def _on_readable(self) -> None:
        self.read(self.max_per_event)
        if self.on_data is not None:
            self.on_data()

    def read(self, limit: int) -> int:
        """Read up to ``limit`` datagrams without blocking; returns how many were read."""
        sock = self.sock
        if sock is None:
            return 0
        append = self.out.append
        recvfrom = sock.recvfrom
        now = time.time_ns() // 1_000_000
        n = nbytes = 0
        try:
            while n < limit:
                data, addr = recvfrom(MAX_DATAGRAM)
                append((data, addr[0], now))
                nbytes += len(data)
                n += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # A UDP socket can report an ICMP error for an earlier send; nothing we sent, so count and go on.
            self.errors += 1
        self.datagrams += n
        self.bytes += nbytes
        return n

    def drain(self) -> int:
        """Read everything the kernel still holds for this socket (at shutdown, after :meth:`stop`)."""
        total = 0
        while True:
            n = self.read(65536)
            total += n
            if n < 65536:
                return total

    def close(self) -> None:
        self.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket so far (``/proc/net/udp`` or ``udp6``), None if unknown."""
        if not self.inode:
            return None
        table = Path("/proc/net/udp6" if self.family == socket.AF_INET6 else "/proc/net/udp")
        return read_proc_drops(table, self.inode)

    def new_kernel_drops(self) -> int:
        """Drops since the previous call (for a counter)."""
        drops = self.kernel_drops()
        if drops is None:
            return 0
        delta = max(0, drops - self._drops_seen)
        self._drops_seen = drops
        return delta


def read_proc_drops(table: Path, inode: int) -> int | None:
    """The ``drops`` column of the row for socket ``inode`` in a ``/proc/net/udp``-style table."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    wanted = str(inode)
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and fields[9] == wanted:
            return int(fields[12])
    return None
