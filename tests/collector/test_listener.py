"""The UDP listener on real loopback sockets, in a uvloop event loop."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import uvloop

from collector.listener import UdpListener, read_proc_drops
from tests.fixtures.peers import free_port, require_ipv6_loopback


async def _receive(endpoint: str, family: int, payloads: list[bytes], max_per_event: int) -> tuple[list, int, list]:
    out: list = []
    events: list[int] = []
    lst = UdpListener(endpoint, out, lambda: events.append(len(out)), rcvbuf_bytes=1 << 20,
                      max_per_event=max_per_event)
    lst.bind()
    lst.start(asyncio.get_running_loop())
    host = lst.host
    with socket.socket(family, socket.SOCK_DGRAM) as tx:
        tx.bind((host, 0))
        for p in payloads:
            tx.sendto(p, (host, lst.port))
        deadline = time.monotonic() + 10
        while len(out) < len(payloads) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        src_port = tx.getsockname()[1]
    lst.close()
    return out, src_port, events


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_listener_receives_and_hands_over_datagrams(family: int) -> None:
    if family == socket.AF_INET6:
        require_ipv6_loopback()
    port = free_port()
    endpoint = f"127.0.0.1:{port}" if family == socket.AF_INET else f"[::1]:{port}"
    payloads = [bytes([i % 256]) * (10 + i) for i in range(300)]
    before = int(time.time() * 1000)
    out, _, events = uvloop.run(_receive(endpoint, family, payloads, max_per_event=64))
    after = int(time.time() * 1000)
    assert [p for p, _, _ in out] == payloads  # all of them, in order, as bytes
    assert {addr for _, addr, _ in out} == {"127.0.0.1" if family == socket.AF_INET else "::1"}
    assert all(before <= t <= after for _, _, t in out)
    # at most max_per_event per readiness event: the loop gets control back to cut batches
    assert all(b - a <= 64 for a, b in zip([0, *events], events, strict=False))


def test_bind_reports_granted_buffer_and_drops_are_readable() -> None:
    out: list = []
    lst = UdpListener(f"127.0.0.1:{free_port()}", out, rcvbuf_bytes=4096)
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
        assert len(out) == received and lst.datagrams == received
    finally:
        lst.close()


def test_v4_and_v6_any_can_share_a_port() -> None:
    require_ipv6_loopback()
    port = free_port()
    a = UdpListener(f"0.0.0.0:{port}", [])
    b = UdpListener(f"[::]:{port}", [])
    a.bind()
    try:
        b.bind()  # IPV6_V6ONLY: "[::]" does not also claim IPv4
        b.close()
    finally:
        a.close()


def test_reuse_port_group_and_adopted_sockets() -> None:
    port = free_port()
    group = [UdpListener(f"127.0.0.1:{port}", [], reuse_port=True) for _ in range(2)]
    for lst in group:
        lst.bind()
    adopted_out: list = []
    adopted = UdpListener(f"127.0.0.1:{port}", adopted_out)
    adopted.adopt(group[0].sock.dup().detach())  # as a worker does with the supervisor's socket
    try:
        assert adopted.port == port and adopted.inode == group[0].inode
        for i in range(64):  # from many source ports: the kernel spreads them over the group
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"%d" % i, ("127.0.0.1", port))
        n_adopted = adopted.drain()
        n_other = group[1].drain()
        assert n_adopted + n_other == 64
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
