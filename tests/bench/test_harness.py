"""The side-by-side harness (bench/harness.py) still works: a short low-rate run against flowmed's whole pipeline."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.harness import Harness, bindings_csv, markdown, run_once, udp_sockets
from bench.load import run_load


def test_bindings_cover_the_generator_sources(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    bindings_csv(path)
    lines = path.read_text().splitlines()[1:]
    assert len(lines) == 100_000
    assert lines[0] == "s000000,10.0.0.0/25,," and lines[1] == "s000001,10.0.0.128/25,,"
    assert lines[-1] == "s099999,10.255.255.0/24,,"
    # the /25 pairs and the /24s tile 10.0.0.0/8: 2**24 addresses
    assert sum(2 ** (32 - int(x.split(",")[1].split("/")[1])) for x in lines) == 2 ** 24


def test_vary_changes_every_pass_over_the_pool() -> None:
    from decoders.netflow.decoder import FlowDecoder

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        run_load(version=9, target=s.getsockname(), rate=1000, duration_s=0.01, records=5, pool=3, vary=True)
        s.setblocking(False)
        got = []
        while True:
            try:
                got.append((s.recv(65535), "127.0.0.1", 0))
            except BlockingIOError:
                break
    flows = FlowDecoder().decode(got).flows
    ports = flows["src_port"].astype(int)
    assert len(ports) == 50  # 10 data datagrams of 5 records (the template datagram has none)
    assert list(ports[15:20] - ports[:5]) == [1 if p % 256 != 255 else -255 for p in ports[:5]]
    assert list(flows["bytes"][15:20]) == list(flows["bytes"][:5])  # only the port and destination change


@pytest.mark.slow
def test_flowmed_stores_what_was_sent(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        result = run_once(h, "flowmed", 9, 300, 1.5)
    finally:
        h.close()
    assert result.exit_status == 0
    assert result.sent == 450 * 30
    assert result.kernel_drops == 0
    assert result.stored == result.sent
    assert result.cpu > 0 and result.rss_mib > 0
    table = markdown([result], "header")
    assert "| flowmed | v9 | 300 |" in table and "0.00 %" in table
    assert "v9: flowmed 300/s" in table


def test_udp_sockets_reads_queue_and_drops() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"x" * 100, ("127.0.0.1", port))
        rows = udp_sockets(port)
        assert len(rows) == 1 and rows[0][0] > 0 and rows[0][1] == 0
