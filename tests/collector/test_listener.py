"""The UDP listener on real loopback sockets, in a uvloop event loop."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uvloop

from collector.listener import UdpListener, read_proc_drops
from collector.recvmmsg import MessageRing, source_addresses
from decoders.dispatch import DispatchDecoder
from decoders.received import OVERSIZED
from tests.fixtures.peers import free_port, require_ipv6_loopback

IP_RECVERR = 11
"""Linux value (Python 3.11 does not export it)."""


async def _receive(endpoint: str, family: int, payloads: list[bytes], max_per_event: int) -> tuple[list, int, list]:
    events: list[int] = []
    lst = UdpListener(endpoint, lambda: events.append(lst.held), rcvbuf_bytes=1 << 20, max_per_event=max_per_event)
    lst.bind()
    lst.start(asyncio.get_running_loop())
    host = lst.host
    with socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.bind((host, 0))
        for p in payloads:
            tx.sendto(p, (host, lst.port))
        deadline = time.monotonic() + 10
        while lst.held < len(payloads) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        src_port = tx.getsockname()[1]
    lst.close()
    rec = lst.take()
    assert lst.held == 0 and lst.take() is None
    return list(rec) if rec is not None else [], src_port, events


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_listener_receives_and_hands_over_datagrams(family: int) -> None:
    if family == socket.AF_INET6:
        require_ipv6_loopback()
    port = free_port()
    endpoint = f"127.0.0.1:{port}" if family == socket.AF_INET else f"[::1]:{port}"
    payloads = [bytes([i % 256]) * (10 + i) for i in range(300)]
    before = int(time.time() * 1000)
    # 300 datagrams through a buffer of 64 slots: the full buffer is set aside, none lost, the order kept
    out, _, events = uvloop.run(_receive(endpoint, family, payloads, max_per_event=64))
    after = int(time.time() * 1000)
    assert [p for p, _, _ in out] == payloads  # all of them, in order, as bytes
    assert {addr for _, addr, _ in out} == {"127.0.0.1" if family == socket.AF_INET else "::1"}
    assert all(before <= t <= after for _, _, t in out)
    # at most max_per_event per readiness event: the loop gets control back to cut batches
    assert all(b - a <= 64 for a, b in zip([0, *events], events, strict=False))


def test_bind_reports_granted_buffer_and_drops_are_readable() -> None:
    lst = UdpListener(f"127.0.0.1:{free_port()}", rcvbuf_bytes=4096)
    lst.bind()
    try:
        assert lst.rcvbuf_granted > 0
        assert lst.kernel_drops() == 0  # our socket's row is found in /proc/net/udp
        # flood the tiny buffer without reading: the kernel drops, and the drop counter shows it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(2000):
                tx.sendto(b"x" * 1000, ("127.0.0.1", lst.port))
        drops = lst.new_kernel_drops()
        assert drops > 0
        assert lst.new_kernel_drops() == 0  # a delta, for the counter
        received = lst.drain()
        assert received + drops == 2000
        rec = lst.take()
        assert rec is not None and len(rec) == received and lst.datagrams == received
        assert lst.bytes == 1000 * received
    finally:
        lst.close()


def test_v4_and_v6_any_can_share_a_port() -> None:
    require_ipv6_loopback()
    port = free_port()
    a = UdpListener(f"0.0.0.0:{port}")
    b = UdpListener(f"[::]:{port}")
    a.bind()
    try:
        b.bind()  # IPV6_V6ONLY: "[::]" does not also claim IPv4
        b.close()
    finally:
        a.close()


def test_reuse_port_group_and_adopted_sockets() -> None:
    port = free_port()
    group = [UdpListener(f"127.0.0.1:{port}", reuse_port=True) for _ in range(2)]
    for lst in group:
        lst.bind()
    adopted = UdpListener(f"127.0.0.1:{port}")
    adopted.adopt(group[0].sock.dup().detach())  # as a worker does with the supervisor's socket
    try:
        assert adopted.port == port and adopted.inode == group[0].inode
        for i in range(64):  # from many source ports: the kernel spreads them over the group
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"%d" % i, ("127.0.0.1", port))
        n_adopted = adopted.drain()
        n_other = group[1].drain()
        assert n_adopted + n_other == 64
        taken = [lst.take() for lst in (adopted, group[1])]
        assert sum(len(t) for t in taken if t is not None) == 64
    finally:
        adopted.close()
        for lst in group:
            lst.close()


def test_read_proc_drops_parses_the_drops_column(tmp_path: Path) -> None:
    table = tmp_path / "udp"
    table.write_text(
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer"
        " drops\n"
        "  123: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 "
        "0000000000000000 17\n")
    assert read_proc_drops(table, 4242) == 17
    assert read_proc_drops(table, 1) is None
    assert read_proc_drops(tmp_path / "missing", 4242) is None


def _listener(endpoint: str, **kw) -> UdpListener:
    lst = UdpListener(endpoint, rcvbuf_bytes=1 << 20, **kw)
    lst.bind()
    return lst


def test_a_datagram_larger_than_max_datagram_is_counted_and_dropped() -> None:
    lst = _listener("127.0.0.1:0", slot_bytes=512, max_datagram=1024)
    try:
        sizes = (100, 512, 513, 1024, 1025, 2000, 7)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for size in sizes:
                tx.sendto(bytes([size % 251]) * size, ("127.0.0.1", lst.port))
            assert lst.drain() == len(sizes)
        rec = lst.take()
        assert rec is not None
        # larger than a slot: whole; larger than max_datagram: never reaches the decoder
        assert [p for p, _, _ in rec] == [bytes([n % 251]) * n for n in (100, 512, 513, 1024, 7)]
        assert rec.oversized == {"127.0.0.1": 2} and lst.oversized == 2 and lst.datagrams == len(sizes)
        result = DispatchDecoder().decode(rec)
        assert result.errors[("127.0.0.1", OVERSIZED)] == 2
    finally:
        lst.close()


@pytest.mark.parametrize("max_per_event", [8, 2048])
def test_large_datagrams_arrive_whole_among_small_ones(max_per_event: int) -> None:
    # with 8 slots (8 datagrams a call) the extension area for large datagrams fills and is set aside on the way
    lst = _listener("127.0.0.1:0", max_per_event=max_per_event)
    sizes = [100, 3000, 61000, 1400, 9000] * 8
    sent = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for payload in sent:
                tx.sendto(payload, ("127.0.0.1", lst.port))
                assert lst.read(1000) in (0, 1)  # (as they come: the socket buffer is small)
        lst.drain()
        rec = lst.take()
        assert rec is not None and [p for p, _, _ in rec] == sent and not rec.oversized
        assert lst.bytes == sum(sizes)
    finally:
        lst.close()


def test_ipv6_sources_and_many_exporters_are_told_apart() -> None:
    require_ipv6_loopback()
    lst = _listener("[::]:0")
    senders = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i in range(30):
            senders[i % 3].sendto(b"%d" % i, ("::1", lst.port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            v4.sendto(b"v4", ("127.0.0.1", lst.port))  # IPV6_V6ONLY: not ours
        assert lst.drain() == 30
        rec = lst.take()
        assert rec is not None
        assert rec.names == ["::1"]  # one address (three source ports): one exporter
        assert [p for p, _, _ in rec] == [b"%d" % i for i in range(30)]
    finally:
        for s in senders:
            s.close()
        lst.close()


def test_source_addresses_in_order_of_first_appearance() -> None:
    names = np.zeros((5, 28), dtype=np.uint8)
    for row, last in enumerate([9, 3, 9, 7, 3]):
        names[row, 4:8] = [10, 0, 0, last]
    codes, found = source_addresses(names, socket.AF_INET)
    assert found == ["10.0.0.9", "10.0.0.3", "10.0.0.7"] and codes.tolist() == [0, 1, 0, 2, 1]
    six = np.zeros((2, 28), dtype=np.uint8)
    six[:, 8:24] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "2001:db8::5"), dtype=np.uint8)
    six[1, 24:28] = np.frombuffer((1).to_bytes(4, sys.byteorder), dtype=np.uint8)  # scope id 1 (lo)
    codes, found = source_addresses(six, socket.AF_INET6)
    assert found[0] == "2001:db8::5" and found[1].startswith("2001:db8::5%") and codes.tolist() == [0, 1]


def test_partial_reads_keep_order_and_limit() -> None:
    lst = _listener("127.0.0.1:0", max_per_event=16)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(100):
                tx.sendto(i.to_bytes(2, "big"), ("127.0.0.1", lst.port))
            assert lst.read(10) == 10 and lst.held == 10
            first = lst.take()
            assert first is not None and [p for p, _, _ in first] == [i.to_bytes(2, "big") for i in range(10)]
            assert lst.read(40) == 40 and lst.held == 40  # more than the 16 slots: set aside as it goes
            assert lst.read(1000) == 50 and lst.read(1000) == 0
        rec = lst.take()
        assert rec is not None and [p for p, _, _ in rec] == [i.to_bytes(2, "big") for i in range(10, 100)]
        assert len(set(rec.received_ms.tolist())) <= 2 and lst.bytes == 200
    finally:
        lst.close()


def test_an_icmp_error_is_counted_and_reading_goes_on() -> None:
    lst = _listener("127.0.0.1:0")
    try:
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        # IP_RECVERR: the kernel reports ICMP errors on an unconnected socket too (as some setups do on their own)
        lst.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        lst.sock.sendto(b"x", ("127.0.0.1", port))  # port unreachable comes back as ECONNREFUSED on our socket
        time.sleep(0.05)
        assert lst.read(10) == 0 and lst.errors == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"after", ("127.0.0.1", lst.port))
        assert lst.drain() == 1
    finally:
        lst.close()


def test_the_ring_moves_large_datagrams_whole_and_says_when_it_is_full() -> None:
    ring = MessageRing(64, 512, max_datagram=4096, per_call=4)  # extension area: 2 x 4 x 4,096 bytes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        sent = [bytes([i]) * (4000 if i % 2 else 300) for i in range(30)]
        for payload in sent:
            tx.sendto(payload, rx.getsockname())
        time.sleep(0.05)
        while not ring.full and ring.recv(rx.fileno(), 4):
            pass
        k = ring.fill
        assert ring.full and 4 < k < 64  # the extension area, not the slots, is what is full
        starts, lens = ring.starts(0, k), ring.lengths(0, k)
        got = [ring.buf[a:a + n].tobytes() for a, n in zip(starts.tolist(), lens.tolist(), strict=True)]
        assert got == sent[:k]
        ring.reset()
        assert not ring.full and ring.starts(0, 3).tolist() == [0, 512, 1024]
        while ring.recv(rx.fileno(), 4):
            pass
        k2 = ring.fill
        starts, lens = ring.starts(0, k2), ring.lengths(0, k2)
        got = [ring.buf[a:a + n].tobytes() for a, n in zip(starts.tolist(), lens.tolist(), strict=True)]
        assert k2 > 4 and got == sent[k:k + k2]
