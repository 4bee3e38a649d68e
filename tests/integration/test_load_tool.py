"""``bench.load`` sends what it reports, decodable by flowmed with gap-free sequence numbers (loopback only)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from bench.load import parse_target, run_load


def _receiver(sock: socket.socket, out: list[tuple[bytes, str]], stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        out.append((data, addr[0]))


@pytest.mark.parametrize("version,exporters", [(5, 1), (9, 1), (10, 1), (5, 3), (9, 3), (10, 2)])
def test_load_sends_what_it_reports_and_flowmed_decodes_it(version: int, exporters: int) -> None:
    from decoders.netflow.decoder import FlowDecoder

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    received: list[tuple[bytes, str]] = []
    stop = threading.Event()
    thread = threading.Thread(target=_receiver, args=(sock, received, stop), daemon=True)
    thread.start()
    try:
        report = run_load(version=version, target=sock.getsockname(), rate=1000, duration_s=0.3, records=10,
                          pool=50, template_every=100, exporters=exporters, domain=4)
        for _ in range(50):  # wait (bounded) until the receiver has drained the socket
            if len(received) >= report.datagrams:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        sock.close()
    assert report.send_errors == 0 and report.datagrams > 50
    assert len(received) == report.datagrams
    result = FlowDecoder().decode([(d, src, 0) for d, src in received])
    assert result.errors == Counter()
    assert result.n_flows == report.records
    assert result.sequence_lost == Counter() and result.sequence_resets == Counter()
    assert set(result.flows["version"].tolist()) == {version}
    sources = {src for _, src in received}
    assert sources == ({"127.0.0.1"} if exporters == 1 else {f"127.0.1.{i + 1}" for i in range(exporters)})
    domains = set(result.flows["observation_domain"].tolist())
    assert domains == {4 + i for i in range(exporters)}


def test_load_command_line_reports_json() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "bench.load", "--version", "10", "--rate", "500", "--duration",
                               "0.2", "--target", f"127.0.0.1:{port}", "--records", "5", "--json"],
                              capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(proc.stdout)
    assert report["version"] == 10 and report["offered_rate"] == 500
    assert report["records"] == 5 * (report["datagrams"] - 1)  # one template datagram first


def test_parse_target() -> None:
    assert parse_target("127.0.0.1:2055") == ("127.0.0.1", 2055)
    assert parse_target("[::1]:4739") == ("::1", 4739)


def test_sflow_load_is_gap_free_over_passes_of_the_pool() -> None:
    """sFlow mode: three passes over a pool of 40 datagrams read as one agent's stream: no datagram or sample
    sequence gaps, and the sample pools grow by exactly the sampling rate per sample after each source's first."""
    from bench.load import SFLOW
    from decoders.sflow.decoder import SflowDecoder

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    received: list[tuple[bytes, str]] = []
    stop = threading.Event()
    thread = threading.Thread(target=_receiver, args=(sock, received, stop), daemon=True)
    thread.start()
    try:
        report = run_load(version=SFLOW, target=sock.getsockname(), rate=400, duration_s=0.3, records=5, pool=40,
                          domain=3)
        for _ in range(50):
            if len(received) >= report.datagrams:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        sock.close()
    assert report.send_errors == 0 and report.datagrams == 120 and report.records == 600
    assert len(received) == report.datagrams
    dec = SflowDecoder()
    result = dec.decode([(d, src, 0) for d, src in received])
    assert result.errors == Counter() and result.n_flows == 600
    assert set(result.flows["observation_domain"].tolist()) == {3}  # the sub-agent id
    assert result.sequence_resets == Counter() and result.samples_lost == Counter()
    sources = len(set(result.extras["source_id_index"].tolist()))
    assert result.sample_pool["127.0.0.1"] == 1000 * (600 - sources)
