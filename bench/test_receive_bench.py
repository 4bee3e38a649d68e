"""Cost of the receive path per datagram: flowmed's listener read loop and the alternatives it was chosen over.

    taskset -c 0 python -m pytest bench/test_receive_bench.py --benchmark-enable --benchmark-columns=mean,stddev,min

Each round fills a loopback socket's receive buffer with ``N`` datagrams of 1,400 bytes (outside the timing) and
then drains it with one method, asserting all ``N`` arrived, so a broken reader cannot look fast. Per-datagram cost
= time / N; the machine is shared, so compare the rows of one run (``min`` is the least disturbed). ``listener`` is
:meth:`collector.listener.UdpListener.read` then ``take`` as the daemon runs them (``recvmmsg`` into the listener's
slots, then one :class:`decoders.received.Received` for the batch); ``recvfrom_tuples`` is the loop it replaced
(``recvfrom`` and one ``(payload, exporter, received_ms)`` tuple per datagram); ``recvfrom_into`` reads into a
preallocated buffer and copies the payload out; ``recv_into`` reads without the source address (the least one call
per datagram can cost); ``recvmsg_rxq_ovfl`` is ``recvmsg`` with SO_RXQ_OVFL ancillary data (the kernel's drop
counter per datagram), which flowmed replaces with reading ``/proc/net/udp`` once a second; ``recvmmsg_ring`` is the
bare :class:`collector.recvmmsg.MessageRing` at 64 and 1,024 datagrams per call. ``receive_and_decode_v9`` adds the
decode of v9 datagrams of 30 records each (the daemon's batch against the former tuples).
"""

from __future__ import annotations

import socket

import pytest

from bench.exporter import bulk_datagrams
from collector.listener import MAX_DATAGRAM, UdpListener
from collector.recvmmsg import MSG_TRUNC, MessageRing, source_addresses
from decoders.dispatch import DispatchDecoder

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
PAYLOAD = bytes(1400)
T0 = 1_700_000_000_000


def _n(benchmark) -> int:
    return 2000 if not benchmark.disabled else 20


@pytest.fixture
def listener():
    out: list = []
    lst = UdpListener("127.0.0.1:0", rcvbuf_bytes=16 * 1024 * 1024)
    lst.bind()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(("127.0.0.1", lst.port))
    yield lst, out, sender
    sender.close()
    lst.close()


def _fill(sender: socket.socket, n: int):
    def setup():
        for _ in range(n):
            sender.send(PAYLOAD)
        return (), {}
    return setup


def _run(benchmark, sender, n, read) -> None:
    counts: list[int] = []
    benchmark.pedantic(lambda: counts.append(read()), setup=_fill(sender, n), rounds=20 if not benchmark.disabled
                       else 1, iterations=1)
    assert counts and all(c == n for c in counts)
    benchmark.extra_info["datagrams_per_round"] = n


def test_listener_read(benchmark, listener) -> None:
    lst, out, sender = listener
    n = _n(benchmark)

    def read() -> int:
        lst.read(n + 1)
        rec = lst.take()
        assert rec is not None and rec.names == ["127.0.0.1"]
        return len(rec)

    _run(benchmark, sender, n, read)


def test_recvfrom_tuples(benchmark, listener) -> None:
    """The listener's loop until recvmmsg replaced it."""
    lst, _, sender = listener
    n = _n(benchmark)

    def read() -> int:
        out: list = []
        append = out.append
        recvfrom = lst.sock.recvfrom
        k = 0
        try:
            while True:
                data, addr = recvfrom(MAX_DATAGRAM)
                append((data, addr[0], 0))
                k += 1
        except BlockingIOError:
            return k

    _run(benchmark, sender, n, read)


def test_recvfrom_into(benchmark, listener) -> None:
    lst, _, sender = listener
    n = _n(benchmark)
    buf = bytearray(MAX_DATAGRAM)
    view = memoryview(buf)

    def read() -> int:
        out = []
        k = 0
        while True:
            try:
                size, addr = lst.sock.recvfrom_into(buf)
            except BlockingIOError:
                return k
            out.append((bytes(view[:size]), addr[0], 0))
            k += 1

    _run(benchmark, sender, n, read)


def test_recvmsg_rxq_ovfl(benchmark, listener) -> None:
    lst, _, sender = listener
    n = _n(benchmark)
    lst.sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    space = socket.CMSG_SPACE(4)

    def read() -> int:
        out = []
        k = 0
        while True:
            try:
                data, _anc, _flags, addr = lst.sock.recvmsg(MAX_DATAGRAM, space)
            except BlockingIOError:
                return k
            out.append((data, addr[0], 0))
            k += 1

    _run(benchmark, sender, n, read)


def test_recv_into(benchmark, listener) -> None:
    """``recv_into`` a preallocated buffer (no source address: what a block without copies would cost per call)."""
    lst, _, sender = listener
    n = _n(benchmark)
    buf = bytearray(MAX_DATAGRAM)

    def read() -> int:
        k = 0
        recv_into = lst.sock.recv_into
        while True:
            try:
                recv_into(buf)
            except BlockingIOError:
                return k
            k += 1

    _run(benchmark, sender, n, read)


@pytest.mark.parametrize("per_call", [64, 1024])
def test_recvmmsg_ring(benchmark, listener, per_call) -> None:
    """``recvmmsg`` through ctypes into a :class:`collector.recvmmsg.MessageRing` (2,048-byte slots), then the block
    as the decoders take it: lengths, truncation flags and source addresses read back with numpy."""
    lst, _, sender = listener
    n = _n(benchmark)
    ring = MessageRing(n + 1, 2048, per_call=per_call)
    fd = lst.sock.fileno()

    def read() -> int:
        ring.reset()
        while ring.recv(fd, per_call):
            pass
        k = ring.fill
        lens = ring.lengths(0, k)
        ok = (ring.flags(0, k) & MSG_TRUNC) == 0
        codes, names = source_addresses(ring.names(0, k), socket.AF_INET)
        assert ok.all() and names == ["127.0.0.1"] and int(lens.sum()) == k * len(PAYLOAD) and len(codes) == k
        return k

    _run(benchmark, sender, n, read)


@pytest.mark.parametrize("way", ["block", "tuples"])
def test_receive_and_decode_v9(benchmark, listener, way) -> None:
    """Receive and decode v9 datagrams of 30 records: ``block`` is the daemon's way (recvmmsg, one
    :class:`decoders.received.Received`, the fast path scanning the slots); ``tuples`` the former one (``recvfrom``,
    a tuple per datagram, the payloads joined for the scan). Per datagram, what the receive loop costs the decode."""
    lst, _, sender = listener
    n = _n(benchmark)
    datagrams, template = bulk_datagrams(9, n, 30, export_ms=T0)
    decoder = DispatchDecoder()
    decoder.decode([(template, "127.0.0.1", T0)])
    sent = iter(range(1 << 30))

    def fill():
        for _ in range(n):
            sender.send(datagrams[next(sent) % n])
        return (), {}

    def read() -> int:
        if way == "block":
            lst.read(n + 1)
            batch = lst.take()
        else:
            batch, recvfrom = [], lst.sock.recvfrom
            try:
                while True:
                    data, addr = recvfrom(MAX_DATAGRAM)
                    batch.append((data, addr[0], T0))
            except BlockingIOError:
                pass
        result = decoder.decode(batch)
        assert result.n_flows == 30 * n
        return len(batch)

    counts: list[int] = []
    benchmark.pedantic(lambda: counts.append(read()), setup=fill, rounds=20 if not benchmark.disabled else 1,
                       iterations=1)
    assert counts and all(c == n for c in counts)
