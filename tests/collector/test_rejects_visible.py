"""A record mediation rejects is visible (issue 15): ``flowmed_rejects_total{reason}``, ``flowmed status`` and a
rate-limited warning naming the reason and its usual cause."""

from __future__ import annotations

import io
import time

from prometheus_client import CollectorRegistry, generate_latest

from bench.exporter import V9Exporter, flow_template, random_flows
from collector import config as config_mod
from collector import status as status_mod
from collector.components import make_mediator
from collector.logging import setup as setup_logging
from collector.metrics import Metrics
from collector.pipeline import Pipeline
from collector.server import Server
from tests.collector.test_parts import FakeSink


def _future_datagrams(now: int, n: int) -> list[bytes]:
    """v9 datagrams exported ``now`` whose 30 flows each end about two hours later (an exporter clock ahead)."""
    exporter = V9Exporter(domain=1, boot_ms=now - 3_600_000)
    tmpl = flow_template(256)
    out = []
    for i in range(n):
        flows = random_flows(30, export_ms=now + 7_200_000, seed=i)
        sets = [exporter.templates(tmpl)] if i == 0 else []
        out.append(exporter.datagram(*sets, exporter.flows(tmpl, flows, now), export_ms=now))
    return out


def test_rejects_are_counted_shown_and_logged_once_a_minute(tmp_path) -> None:
    log = io.StringIO()
    setup_logging("info", "logfmt", log)
    try:
        cfg = config_mod.load(None, [f"store.path={tmp_path}", "mediation.enabled=true"])
        registry = CollectorRegistry()
        pipeline = Pipeline(cfg, Metrics(registry), FakeSink(), make_mediator(cfg))
        now = int(time.time() * 1000)
        datagrams = _future_datagrams(now, 4)
        pipeline.process([(d, "192.0.2.9", now) for d in datagrams[:2]])
        pipeline.refresh_gauges(now)
        pipeline.process([(d, "192.0.2.9", now) for d in datagrams[2:]])
        pipeline.refresh_gauges(now + 1000)
    finally:
        setup_logging("info", "logfmt")

    assert pipeline.rejects() == {"future": 120}
    exposition = generate_latest(registry).decode()
    assert 'flowmed_rejects_total{reason="future"} 120.0' in exposition
    # one line for the reason, the second tick's rejects held back (counted into the next line a minute later)
    lines = [ln for ln in log.getvalue().splitlines() if "flow records rejected by mediation" in ln]
    assert len(lines) == 1, log.getvalue()
    assert "reason=future" in lines[0] and "count=60" in lines[0] and "max_future_s" in lines[0]
    # flowmed status: the daemon's snapshot carries them, merged over workers, and the text says so
    server = Server(cfg, registry=CollectorRegistry(), sink=pipeline.sink, mediator=pipeline.mediator)
    server.pipeline = pipeline
    server.publish_status()
    assert server.snapshot["rejects"] == {"future": 120}
    merged = status_mod.merge([server.snapshot, {"rejects": {"future": 5, "too_old": 2}}])
    assert merged["rejects"] == {"future": 125, "too_old": 2}
    text = status_mod.render(merged)
    assert "rejected by mediation 127" in text and "rejected: future 125, too_old 2" in text
