"""Small parts of the collector: log format and rate limiting, metric label caps, sd_notify, status merging, and the
server's batching (cut by size and by time) in-process with a fake sink."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import time

import pyarrow as pa
import pytest
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from collector import config as config_mod
from collector import logging as flog
from collector import status as status_mod
from collector.gauges import SinkGauges
from collector.metrics import OTHER, ExporterLabels, Metrics
from collector.server import Server
from collector.statefile import write_atomic
from collector.systemd import Notifier, watchdog_interval_s
from tests.collector.daemon import V9Traffic
from tests.fixtures.peers import free_port, require_tool


def test_logfmt_and_json_lines() -> None:
    buf = io.StringIO()
    flog.setup("info", "logfmt", buf)
    flog.log("info", "flowmed started", listeners=["0.0.0.0:2055", "[::]:2055"], workers=2, note='say "hi"')
    flog.log("debug", "not shown")
    logging.getLogger("storage.sink").warning("library line %d", 7, extra={"file": "/x y"})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert 'level=info msg="flowmed started" listeners=0.0.0.0:2055,[::]:2055 workers=2 note="say \\"hi\\""' in lines[0]
    assert 'level=warning msg="library line 7" logger=storage.sink file="/x y"' in lines[1]
    buf = io.StringIO()
    flog.setup("debug", "json", buf)
    flog.log("debug", "x", exporter="192.0.2.1")
    line = json.loads(buf.getvalue())
    assert line["msg"] == "x" and line["exporter"] == "192.0.2.1" and line["level"] == "debug"
    flog.setup("info", "logfmt")


def test_rate_limiter_holds_repeats_per_key_and_counts_them() -> None:
    rl = flog.RateLimiter(interval_s=60, max_keys=2)
    assert rl.allow(("a", "truncated"), now=0) == 0
    assert rl.allow(("a", "truncated"), now=1) is None
    assert rl.allow(("a", "truncated"), now=2) is None
    assert rl.allow(("b", "truncated"), now=2) == 0  # another exporter is not held back
    assert rl.allow(("a", "truncated"), now=61) == 2  # the next line says how many were held
    rl.allow(("c", "x"), now=62)
    assert len(rl._keys) == 2  # bounded: exporters are attacker-controlled


def test_exporter_label_values_are_capped() -> None:
    labels = ExporterLabels(2)
    assert [labels(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1")] == \
        ["10.0.0.1", "10.0.0.2", OTHER, "10.0.0.1"]


@pytest.mark.external
def test_every_metric_passes_promtool() -> None:
    promtool = require_tool("promtool")
    registry = CollectorRegistry()
    m = Metrics(registry, max_exporter_labels=1)
    m.datagrams.labels(m.exporter_label("192.0.2.1"), "9").inc(3)
    m.datagrams.labels(m.exporter_label("192.0.2.2"), "9").inc(4)
    m.decode_errors.labels(m.exporter_label("192.0.2.2"), "truncated").inc()
    m.output_write_seconds.labels("store").observe(0.01)
    m.usage_bytes.labels("attributed").inc(10)
    text = generate_latest(registry).decode()
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert 'flowmed_datagrams_received_total{exporter="other",version="9"} 4.0' in text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(n.startswith("flowmed_") for n in names)
    supervisor = CollectorRegistry()
    Metrics(supervisor, role="supervisor")
    assert "flowmed_worker_restarts_total" in generate_latest(supervisor).decode()


def test_notifier_sends_to_path_and_abstract_sockets(tmp_path) -> None:
    path = tmp_path / "notify"
    for address, bind_to in ((str(path), str(path)), ("@flowmed-test-" + os.urandom(4).hex(), None)):
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(bind_to or "\0" + address[1:])
        n = Notifier(address)
        assert n.notify("READY=1", "STATUS=ok")
        assert rx.recv(100) == b"READY=1\nSTATUS=ok"
        n.close()
        rx.close()
    assert not Notifier("").notify("READY=1")  # no NOTIFY_SOCKET: a no-op
    assert not Notifier(str(tmp_path / "nobody")).notify("READY=1")  # nobody listening: never raises


def test_watchdog_interval(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None


def test_status_merge_sums_exporters_over_workers() -> None:
    a = {"exporters": [{"address": "10.0.0.1", "versions": [9], "first_seen_ms": 5, "last_seen_ms": 9,
                        "datagrams": 1, "records": 30, "errors": 0, "sequence_lost": 1, "templates": 2}],
         "listeners": [{"address": "x", "worker": 0}], "outputs": [], "datagrams": 1, "flows": 30, "worker": 0}
    b = {"exporters": [{"address": "10.0.0.1", "versions": [10], "first_seen_ms": 3, "last_seen_ms": 7,
                        "datagrams": 2, "records": 20, "errors": 1, "sequence_lost": 0, "templates": 1}],
         "listeners": [{"address": "x", "worker": 1}], "outputs": [], "datagrams": 2, "flows": 20, "worker": 1}
    merged = status_mod.merge([a, b])
    (e,) = merged["exporters"]
    assert e["versions"] == [9, 10] and e["records"] == 50 and e["first_seen_ms"] == 3 and e["last_seen_ms"] == 9
    assert merged["flows"] == 50 and len(merged["listeners"]) == 2
    assert "10.0.0.1" in status_mod.render(merged)


def test_status_names_each_protocol() -> None:
    snapshot = {"exporters": [{"address": "10.0.0.1", "versions": [5, 9, 10, 105], "first_seen_ms": 5,
                               "last_seen_ms": 9, "datagrams": 4, "records": 30, "errors": 0, "sequence_lost": 0,
                               "templates": 2}], "listeners": [], "outputs": []}
    (line,) = [x for x in status_mod.render(snapshot).splitlines() if "10.0.0.1" in x]
    assert "v5,v9,ipfix,sflow" in line and "105" not in line


def test_write_atomic_replaces_whole_files(tmp_path) -> None:
    target = tmp_path / "state" / "templates.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["templates.json"]  # no temporary left behind


class FakeSink:
    """Records what the server hands over (the real Sink is tested in tests/mediation)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, pa.RecordBatch]] = []
        self.outputs: list = []
        self.stats: dict = {}
        self.pending_rows = 0
        self.dropped_rows: dict[str, int] = {}
        self.journal_errors = self.journal_set_aside = 0
        self.flushed = self.closed = False

    def add(self, table: str, batch: pa.RecordBatch) -> bool:
        self.added.append((table, batch))
        return True

    def maybe_flush(self, now: float | None = None) -> None:
        pass

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


def _server(tmp_path, **listen) -> tuple[Server, FakeSink]:
    port = free_port()
    sets = [f'listen.udp=["127.0.0.1:{port}"]', "listen.sflow=[]", f"store.path={tmp_path}", "metrics.enabled=false",
            *(f"listen.{k}={v}" for k, v in listen.items())]
    sink = FakeSink()
    server = Server(config_mod.load(None, sets), registry=CollectorRegistry(), sink=sink, mediator=None)
    return server, sink


async def _run_server(server: Server, send) -> None:
    task = asyncio.ensure_future(server.serve())
    while not server.listeners or server.pipeline is None:
        await asyncio.sleep(0.01)
    await send(server.listeners[0].port)
    server.request_stop()
    assert await task == 0


def test_batches_are_cut_by_size(tmp_path) -> None:
    server, sink = _server(tmp_path, batch_datagrams=8, batch_interval_ms=60_000)
    traffic = V9Traffic()

    async def send(port: int) -> None:
        for d in traffic.datagrams(40):
            traffic.sock.sendto(d, ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while sum(b.num_rows for _, b in sink.added) < 40 * 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    uvloop.run(_run_server(server, send))
    traffic.close()
    assert {t for t, _ in sink.added} == {"flows"}
    sizes = [b.num_rows for _, b in sink.added]
    assert sum(sizes) == 1200 and all(n <= 8 * 30 for n in sizes)  # no batch bigger than batch_datagrams
    assert sink.flushed and sink.closed


def test_batches_are_cut_by_time(tmp_path) -> None:
    server, sink = _server(tmp_path, batch_datagrams=100_000, batch_interval_ms=20)
    traffic = V9Traffic()
    seen: list[int] = []

    async def send(port: int) -> None:
        traffic.sock.sendto(traffic.datagrams(1)[0], ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while not sink.added and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        seen.append(sum(b.num_rows for _, b in sink.added))  # decoded while running, not at shutdown

    uvloop.run(_run_server(server, send))
    traffic.close()
    assert seen == [30]


def test_hostile_exporters_are_bounded_everywhere(tmp_path) -> None:
    """Garbage from 2,000 spoofed exporters: metric labels, the status board and the log stay bounded."""
    from collector.pipeline import Pipeline

    buf = io.StringIO()
    flog.setup("info", "logfmt", buf)
    cfg = config_mod.load(None, [f"store.path={tmp_path}", "metrics.max_exporter_labels=4",
                                 "decoder.max_exporters=50"])
    registry = CollectorRegistry()
    pipeline = Pipeline(cfg, Metrics(registry, cfg.metrics.max_exporter_labels), FakeSink())
    now = int(time.time() * 1000)
    for _ in range(3):
        batch = [(b"\x00\x07" + bytes(18), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now)
                 for i in range(2000)]
        pipeline.process(batch)
    text = generate_latest(registry).decode()
    labels = {line.split('exporter="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("flowmed_decode_errors_total{")}
    assert len(labels) <= 5 and OTHER in labels
    assert len(pipeline.board.exporters) <= cfg.decoder.max_exporters
    # one line per (exporter, reason) and minute at most; the limiter itself is bounded
    assert len(buf.getvalue().splitlines()) <= 2000 + 10  # rounds 2 and 3 were held back
    assert len(pipeline.errors_log._keys) <= pipeline.errors_log.max_keys
    flog.setup("info", "logfmt")


def test_handoff_journal_trouble_is_counted_in_metrics() -> None:
    """A batch handed over without its journal record (disk full) and records set aside at start are counters,
    added by what is new at each tick."""
    m = Metrics(CollectorRegistry())
    gauges, sink = SinkGauges(m), FakeSink()
    sink.journal_errors, sink.journal_set_aside = 2, 1
    gauges.update(sink)
    sink.journal_errors = 5
    gauges.update(sink)
    gauges.update(sink)
    assert m.handoff_unjournaled._value.get() == 5
    assert m.handoff_set_aside._value.get() == 1
