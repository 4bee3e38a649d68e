"""UDP listener: a non-blocking socket drained in a loop from ``loop.add_reader``.

The read callback does the least possible: ``recvmmsg(2)`` (:mod:`collector.recvmmsg`) fills the next free slots of
a preallocated buffer, up to ``max_per_event`` datagrams per readiness event, and nothing is built per datagram. At
the batch cut :meth:`UdpListener.take` hands what it holds to the decoder as one
:class:`decoders.received.Received` (buffer, starts, lengths, exporter codes, receive times), the lengths, flags and
source addresses read back with numpy. A datagram larger than a slot goes on into an overflow area and is copied out
whole; one cut by the kernel (``MSG_TRUNC``: larger than ``max_datagram``, which UDP cannot carry unless a test lowers
it) is dropped and counted as ``datagram_too_large`` for its exporter, never decoded cut.

Measured with ``bench/test_receive_bench.py`` (loopback, 1,400-byte datagrams, 2,000 a round, process CPU time on
one core of a shared 2-core machine, median of 20 rounds, two runs; BENCHMARKS.md, "Receive loop"): the former loop,
``recvfrom`` and a ``(payload, exporter, received_ms)`` tuple per datagram, 2.9 µs per datagram; ``recvfrom_into`` a
preallocated buffer plus the copy out 2.5-2.7 µs; ``recv_into`` without the source address 1.2 µs; this listener
(``recvmmsg`` 32 at a time, then the batch taken) 1.2-1.4 µs, most of it the kernel's. With the decode of v9
datagrams of 30 records, 4.4-4.8 µs against 6.2-6.3 µs per datagram: the NetFlow fast path also no longer joins the
payloads. Kernel drops are read from ``/proc/net/udp`` (the ``drops`` column of this socket's inode) once a second,
not per datagram.
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

import numpy as np

from collector.config import split_endpoint
from collector.recvmmsg import MSG_TRUNC, MessageRing, libc_recvmmsg, source_addresses
from decoders.received import Datagram, Received

__all__ = ["Datagram", "ListenError", "UdpListener", "read_proc_drops"]

MAX_DATAGRAM = 65535
SLOT_BYTES = 2048
"""Receive slot per datagram: an Ethernet frame's payload and more (NetFlow and IPFIX exporters keep a datagram within
the path MTU). A larger datagram, up to ``MAX_DATAGRAM``, goes on into an overflow area and is copied out whole
(:class:`collector.recvmmsg.MessageRing`): correct, at about the cost of a ``recvfrom``."""
# a platform constant, not an optional part: Linux has it, and Python does not always export it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)



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

    Datagrams are received into the listener's buffer and held there until :meth:`take`; ``on_data`` is called after
    each readiness event that read something, so the server can cut a batch (:attr:`held` says how many wait). At
    most ``max_per_event`` datagrams are read per event, so one busy socket cannot starve the others or postpone a
    batch (the socket stays readable and the loop comes back). The buffer holds ``max_per_event`` datagrams in slots of
    ``slot_bytes`` (larger ones, up to ``max_datagram``, are moved aside in it); when it is full before a :meth:`take`
    (:meth:`drain`), what it holds is copied out first.
    """

    def __init__(self, endpoint: str, on_data: Callable[[], None] | None = None,
                 rcvbuf_bytes: int = 32 * 1024 * 1024, reuse_port: bool = False, max_per_event: int = 2048,
                 purpose: str = "flows (NetFlow/IPFIX)", slot_bytes: int = SLOT_BYTES,
                 max_datagram: int = MAX_DATAGRAM) -> None:
        self.endpoint = endpoint
        self.purpose = purpose
        """What the socket is for, in the error when it cannot be bound."""
        self.host, self.port = split_endpoint(endpoint)
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.on_data = on_data
        self.rcvbuf_requested = rcvbuf_bytes
        self.rcvbuf_granted = 0
        self.reuse_port = reuse_port
        self.max_per_event = max_per_event
        self.slot_bytes = slot_bytes
        self.max_datagram = max_datagram
        """Larger datagrams (none over UDP, unless a test lowers it) arrive cut: counted and dropped."""
        self.sock: socket.socket | None = None
        self.inode = 0
        self.datagrams = 0
        """Datagrams received (counted at each read)."""
        self.bytes = 0
        """Their bytes (counted when taken)."""
        self.reported_datagrams = 0
        """``datagrams`` when the daemon last counted them into its metrics (and ``reported_bytes``, ``bytes``)."""
        self.reported_bytes = 0
        self.errors = 0
        self.oversized = 0
        """Datagrams dropped because they were larger than ``max_datagram``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drops_seen = 0
        self._ring: MessageRing | None = None
        self._times = np.zeros(0, dtype=np.int64)
        self._aside: list[Received] = []
        """Blocks copied out of a full buffer, not taken yet."""
        self._held_aside = 0

    def bind(self) -> socket.socket:
        """Create, size and bind the socket (raises :class:`ListenError` when the address is taken or not local,
        :class:`collector.recvmmsg.RecvmmsgUnavailable` on a system without ``recvmmsg``)."""
        libc_recvmmsg()
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
        libc_recvmmsg()
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
        self._ready_ring()  # (a few ms: before the first datagram, not in its event)
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

    @property
    def held(self) -> int:
        """Datagrams received and not taken yet."""
        return self._held_aside + (self._ring.fill if self._ring is not None else 0)

    def read(self, limit: int) -> int:
        """Read up to ``limit`` datagrams without blocking; returns how many were read."""
        sock = self.sock
        if sock is None:
            return 0
        ring = self._ready_ring()
        fd = sock.fileno()
        now = time.time_ns() // 1_000_000
        n = 0
        try:
            while n < limit:
                if ring.full:
                    self._set_aside()
                a = ring.fill
                want = min(limit - n, ring.slots - a, ring.per_call)
                got = ring.recv(fd, want)
                self._times[a:a + got] = now
                n += got
                if got < want:
                    break  # the socket is empty (recvmmsg took all there was)
        except OSError:
            # A UDP socket can report an ICMP error for an earlier send; nothing we sent, so count and go on.
            self.errors += 1
        self.datagrams += n
        return n

    def _ready_ring(self) -> MessageRing:
        if self._ring is None:
            self._ring = MessageRing(self.max_per_event, self.slot_bytes, self.max_datagram)
            self._times = np.zeros(self._ring.slots, dtype=np.int64)
        return self._ring

    def take(self) -> Received | None:
        """Everything held, as one batch (None when nothing is); its buffer is valid until the next :meth:`read`,
        which receives into the same slots (the server decodes a batch before it reads again)."""
        ring = self._ring
        blocks = self._aside
        if ring is not None and ring.fill:
            blocks.append(self._block(ring))
            ring.reset()
        if not blocks:
            return None
        self._aside, self._held_aside = [], 0
        return Received.concat(blocks)

    def _set_aside(self) -> None:
        """The full buffer's datagrams copied out (:meth:`drain`, or no batch cut in time), so reading can go on."""
        ring = self._ring
        assert ring is not None
        self._aside.append(self._block(ring).compact())  # (a copy: the slots are reused)
        self._held_aside += ring.fill
        ring.reset()

    def _block(self, ring: MessageRing) -> Received:
        """Slots ``0:fill`` as a batch over the ring's buffer; cut datagrams left out and counted per exporter."""
        k = ring.fill
        lens = ring.lengths(0, k)
        codes, names = source_addresses(ring.names(0, k), self.family)
        starts = ring.starts(0, k)
        # (only the part in use: a decoder that joins the buffer with more bytes copies no more than that)
        rec = Received(ring.buf.data[:ring.extent()], starts, lens, codes, names, self._times[:k].copy())
        cut = (ring.flags(0, k) & MSG_TRUNC) != 0
        if cut.any():
            rec.oversized.update(rec.select(cut).exporter_list())
            rec = Received(rec.buf, starts[~cut], lens[~cut], codes[~cut], names, rec.received_ms[~cut],
                           rec.oversized)
            self.oversized += int(cut.sum())
        self.bytes += int(lens.sum())
        return rec

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
