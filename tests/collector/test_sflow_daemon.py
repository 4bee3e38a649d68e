"""sFlow v5 through the daemon: ``flowmed run`` with an sFlow listener, fed by the exporter simulator (bench/sflow.py)
and by a capture replayed; after SIGTERM the store holds exactly what was sent, the interface counters beside it,
and mediation attributes the sFlow-sourced flows to a static binding."""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.pcapwrite import write_pcap
from bench.sflow import CounterSample, FlowSample, SflowAgent, expected_flow, random_packet, send
from decoders.pcap import read_udp
from decoders.sflow import SFLOW_VERSION
from decoders.sflow.decoder import SflowDecoder
from tests.collector.daemon import Daemon
from tests.decoders.test_sflow_peers import _scenario
from tests.fixtures.cli import flowmed_command
from tests.fixtures.peers import free_port

pytestmark = pytest.mark.slow

SUBSCRIBERS = ipaddress.ip_network("100.64.0.0/18")
"""Where bench.sflow.random_packet puts IPv4 sources: one static binding attributes them all."""
FLOWS_SQL = ("SELECT count() AS n, sum(bytes) AS b, sum(packets) AS p, sum(raw_bytes) AS rb, "
             "sum(raw_packets) AS rp FROM flows WHERE version = {v}")


def _datagrams(n: int, seed: int) -> tuple[list[bytes], Counter, Counter]:
    """``n`` datagrams of two agents (6 flow samples each, rates 100 and 1000; a counter sample every third), the
    totals the store must hold, and the usage per direction of the subscriber bound to :data:`SUBSCRIBERS`."""
    rng = random.Random(seed)
    agents = [SflowAgent("192.0.2.1", 0), SflowAgent("192.0.2.2", 1)]
    out, totals, usage = [], Counter(), Counter()
    for i in range(n):
        a = agents[i % 2]
        samples: list = []
        for j in range(6):
            p = random_packet(rng)
            s = a.number(FlowSample(p, source_index=1 + j % 3, sampling_rate=100 if j % 2 else 1000,
                                    switch=(p.vlans[0] if p.vlans else 0, 0, 10, 0), expanded=j == 5))
            samples.append(s)
            row = expected_flow(s, "127.0.0.1", 0, a.agent, a.sub_agent)
            totals.update(n=1, b=row["bytes"], p=row["packets"], rb=row["raw_bytes"], rp=row["raw_packets"])
            up, down = ipaddress.ip_address(p.src) in SUBSCRIBERS, ipaddress.ip_address(p.dst) in SUBSCRIBERS
            usage["up" if up else "down" if down else "unattributed"] += int(row["bytes"])  # type: ignore[arg-type]
        if i % 3 == 0:
            samples.append(a.number(CounterSample(source_index=1 + i % 4, generic={
                "if_index": 1 + i % 4, "if_type": 6, "if_speed": 10**9, "in_octets": 1000 * i, "out_octets": 7 * i},
                ethernet={"dot3_fcs_errors": i})))
            totals.update(counters=1, in_octets=1000 * i, fcs=i)
        out.append(a.datagram(samples))
    return out, totals, usage


def _query(store: Path, sql: str) -> dict:
    from collector.tables import load_tables
    from storage.query import QueryEngine

    load_tables()  # every table registered, as the process does before it opens a query engine (usage included)
    with QueryEngine.for_store(store) as engine:
        table = engine.query(sql)
        return {name: table.column(name)[0].as_py() for name in table.column_names}


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for(d: Daemon, name: str, value: float, timeout: float = 30.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while _metric(d.get("/metrics"), name, **labels) < value:
        assert time.monotonic() < deadline, (name, labels, value, d.log_text())
        time.sleep(0.2)


def test_sflow_through_the_daemon_into_the_store_with_mediation(tmp_path: Path) -> None:
    """One agent sends to the sFlow endpoint, the other to the NetFlow one (every endpoint takes every protocol)."""
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text(f"subscriber_id,network\nalice,{SUBSCRIBERS}\n")
    port = free_port()
    d = Daemon(tmp_path / "d", f'listen.sflow=["127.0.0.1:{port}"]', "mediation.enabled=true",
               f"subscribers.static_file={subscribers}", "mediation.watermark_s=1", command=[flowmed_command(), "run"])
    datagrams, totals, usage = _datagrams(60, seed=5)
    try:
        ready = d.wait_message("READY=1")
        assert f"127.0.0.1:{port}" in ready  # STATUS=receiving on ... names the sFlow endpoint
        assert send(datagrams[0::2], "127.0.0.1", port) == 30
        assert send(datagrams[1::2], "127.0.0.1", d.port) == 30
        _wait_for(d, "flowmed_datagrams_received_total", 60, version=str(SFLOW_VERSION))
        metrics = d.get("/metrics")
        assert _metric(metrics, "flowmed_sflow_samples_total", kind="flow") == totals["n"]
        assert _metric(metrics, "flowmed_sflow_samples_total", kind="counter") == totals["counters"]
        assert _metric(metrics, "flowmed_records_received_total", version=str(SFLOW_VERSION)) == totals["n"]
        # both agents' sources: the pools grew by the rate per sample after each source's first
        assert _metric(metrics, "flowmed_sflow_sample_pool_packets_total") > 0
        assert _metric(metrics, "flowmed_sflow_samples_lost_total") == 0
        assert _metric(metrics, "flowmed_sequence_lost_total") == 0
        assert _metric(metrics, "flowmed_decode_errors_total") == 0
        assert d.stop() == 0, d.log_text()
    finally:
        d.kill()
    got = _query(d.store, FLOWS_SQL.format(v=SFLOW_VERSION))
    assert got == {k: totals[k] for k in ("n", "b", "p", "rb", "rp")}
    counters = _query(d.store, "SELECT count() AS n, sum(in_octets) AS o, sum(dot3_fcs_errors) AS f, "
                               "uniqExact(agent) AS agents, min(if_type) AS t FROM interface_counters")
    assert counters == {"n": totals["counters"], "o": totals["in_octets"], "f": totals["fcs"], "agents": 2, "t": 6}
    # mediation: the sFlow flows (all from 127.0.0.1) attributed to the static binding, upscaled bytes
    rows = _query(d.store, "SELECT sumIf(bytes, subscriber_id = 'alice' AND direction = 'up') AS up, "
                           "sumIf(bytes, subscriber_id = 'alice' AND direction = 'down') AS down, "
                           "sumIf(bytes, direction = 'unattributed') AS other FROM usage")
    assert rows == {"up": usage["up"], "down": usage["down"], "other": usage["unattributed"]}
    assert usage["up"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_capture_replayed_lands_as_decoded_offline(tmp_path: Path, workers: int) -> None:
    """The sFlow capture the tshark/sfacctd cross-checks use (every record type, two agents, IPv4 and IPv6 agent
    addresses), replayed to the daemon (also under the supervisor, which binds the sFlow sockets for its workers):
    the store holds what the decoder makes of the capture offline."""
    datagrams, _ = _scenario()
    capture = tmp_path / "sflow.pcap"
    write_pcap(capture, datagrams)
    payloads = [pkt.payload for pkt in read_udp(capture)]
    offline = SflowDecoder().decode([(p, "127.0.0.1", 0) for p in payloads])
    assert offline.n_flows == 96 and offline.n_counters == 6 and not offline.errors
    port = free_port()
    d = Daemon(tmp_path / "d", f'listen.sflow=["127.0.0.1:{port}"]', workers=workers,
               command=[flowmed_command(), "run"])
    try:
        d.wait_message("READY=1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in payloads:
                s.sendto(p, ("127.0.0.1", port))
        _wait_for(d, "flowmed_datagrams_received_total", len(payloads), version=str(SFLOW_VERSION))
        assert d.stop() == 0, d.log_text()
    finally:
        d.kill()
    got = _query(d.store, FLOWS_SQL.format(v=SFLOW_VERSION))
    f = offline.flows
    assert got == {"n": offline.n_flows, "b": int(f["bytes"].sum()), "p": int(f["packets"].sum()),
                   "rb": int(f["raw_bytes"].sum()), "rp": int(f["raw_packets"].sum())}
    counters = _query(d.store, "SELECT count() AS n, sum(in_octets) AS o FROM interface_counters")
    assert counters == {"n": offline.n_counters, "o": int(offline.interface_counters["in_octets"].sum())}
