"""The ClickHouse output shows its health (issue 15): rows the server acknowledged, insert latency, errors by code,
a connected gauge and the backlog, in ``/metrics``, ``/status`` and ``flowmed status``; an outage does not leave the
sender waiting out a long backoff once the server is back; ``rows_flushed`` is the store's rows."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError

from storage.clickhouse.client import error_code
from storage.clickhouse.output import RECONNECT_MAX_S, ClickHouseOutput
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.collector.daemon import Daemon, V9Traffic
from tests.fixtures.cli import flowmed_command


def test_retry_wait_stays_short_while_the_server_is_unreachable(tmp_path: Path) -> None:
    """Network errors (refused, reset, timed out) never push the next attempt further than RECONNECT_MAX_S, however
    long the outage: the backlog drains as soon as the server is back. A server that answers with an error or
    times an insert out is backed off up to max_backoff_s."""
    out = ClickHouseOutput(ClickHouseConfig(enabled=True, port=1), SpoolConfig(), tmp_path / "spool", start=False,
                           max_backoff_s=30.0)
    for exc in (ConnectionRefusedError(111, "Connection refused"), NetworkError("Connection reset by peer"),
                TimeoutError("timed out")):
        backoff, waits = 0.0, []
        for _ in range(20):
            backoff = out._failed("connect", exc, backoff)
            waits.append(backoff)
        assert max(waits) <= RECONNECT_MAX_S, (exc, waits)
        assert out.retry_in_s == waits[-1]
    for exc in (ServerException("Code: 164. DB::Exception: readonly", code=164), SocketTimeoutError("timed out")):
        backoff = 0.0
        for _ in range(20):
            backoff = out._failed("insert", exc, backoff)
        assert backoff == 30.0, exc
    assert out.backoff_after("connect", SocketTimeoutError("timed out"), 30.0) <= RECONNECT_MAX_S
    assert out.stats["connect_errors"] == 60 and out.stats["insert_errors"] == 40
    assert out.errors_by_code[("connect", "ConnectionRefusedError")] == 20
    assert out.errors_by_code[("connect", "210")] == 20  # the driver's NETWORK_ERROR code
    assert out.errors_by_code[("insert", "164")] == 20
    assert out.status()["errors_by_code"]["insert:164"] == 20
    assert error_code(ValueError("x")) == "ValueError"


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_until(predicate, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics_show(daemon: Daemon, **expected: float) -> None:
    """Wait until every metric ``name`` (summed over its labels) has the value given (gauges follow once a tick)."""
    def shown() -> bool:
        text = daemon.get("/metrics")
        return all(_metric(text, name) == value for name, value in expected.items())
    _wait_until(shown, what=f"the metrics to show {expected}")


def _store_rows(store: Path) -> int:
    return sum(pq.read_metadata(f).num_rows for f in store.rglob("*.parquet") if "quarantine" not in f.parts)


def _rows_flushed(daemon: Daemon) -> int:
    """``rows_flushed`` of ``/status`` (every table; compared with the store's files once the two agree, since a
    batch may land between reading one and the other)."""
    return int(json.loads(daemon.get("/status"))["rows_flushed"])


def _ch(daemon: Daemon) -> dict:
    status = json.loads(daemon.get("/status"))
    return next(o for o in status["outputs"] if o["name"] == "clickhouse")


@pytest.mark.external
@pytest.mark.slow
def test_health_through_an_outage_in_metrics_and_status(clickhouse_factory, tmp_path):
    server = clickhouse_factory()
    db = "health_test"
    sets = ("output.clickhouse.enabled=true", f"output.clickhouse.port={server.port}",
            f"output.clickhouse.database={db}", "output.clickhouse.batch_interval_s=0.2",
            "output.clickhouse.insert_timeout_s=5")
    traffic = V9Traffic(seed=3)
    daemon = Daemon(tmp_path / "d", *sets, flush_interval_s=0.3)
    try:
        daemon.wait_message("READY=1")
        sent = traffic.send(daemon.port, 20)
        _wait_until(lambda: _ch(daemon)["rows_inserted_by_table"].get("flows") == sent, what="the first inserts")
        _metrics_show(daemon, flowmed_clickhouse_connected=1)
        _wait_until(lambda: _metric(daemon.get("/metrics"), "flowmed_clickhouse_inserted_rows_total",
                                    'table="flows"') == sent, what="the inserted rows in the metrics")
        assert _metric(daemon.get("/metrics"), "flowmed_clickhouse_insert_duration_seconds_count") >= 1
        _wait_until(lambda: _rows_flushed(daemon) == _store_rows(daemon.store), what="rows_flushed == the store's rows")
        assert _ch(daemon)["state"] == "connected" and _ch(daemon)["last_insert_ms"] > 0

        # The server goes away: connected drops, errors are counted by code, the backlog grows and ages.
        server.stop()
        more = traffic.send(daemon.port, 20)
        _wait_until(lambda: not _ch(daemon)["connected"] and _ch(daemon)["backlog_rows"] >= more
                    and _ch(daemon)["connect_errors"] >= 3, what="the outage to show")
        ch = _ch(daemon)
        assert ch["state"] == "spooling" and ch["errors_by_code"] and ch["last_error"]
        assert ch["backlog_age_s"] > 0 and ch["disconnected_for_s"] > 0
        assert ch["rows_inserted_by_table"]["flows"] == sent  # spooled is not inserted
        assert 0 < ch["retry_in_s"] <= RECONNECT_MAX_S  # attempts keep coming: no long wait once it is back
        def outage_in_metrics() -> bool:
            m = daemon.get("/metrics")
            return (_metric(m, "flowmed_clickhouse_connected") == 0
                    and _metric(m, "flowmed_clickhouse_errors_total") >= 3
                    and _metric(m, "flowmed_clickhouse_backlog_rows") >= more
                    and _metric(m, "flowmed_spool_oldest_age_seconds") > 0)
        _wait_until(outage_in_metrics, what="the outage in the metrics")
        listen = f"metrics.listen=127.0.0.1:{daemon.metrics_port}"
        shown = subprocess.run([flowmed_command(), "status", "--set", listen], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "disconnected" in shown.stdout and "backlog" in shown.stdout and "connect:" in shown.stdout

        # Back: the backlog drains (well within the test's bound) and the gauges say so.
        server.start()
        _wait_until(lambda: _ch(daemon)["backlog_rows"] == 0 and _ch(daemon)["connected"], what="the backlog to drain")
        ch = _ch(daemon)
        assert ch["rows_inserted_by_table"]["flows"] == sent + more
        assert ch["retry_in_s"] == 0 and ch["disconnected_for_s"] == 0
        assert int(server.query(f"SELECT count() FROM {db}.flows")) == sent + more
        _metrics_show(daemon, flowmed_clickhouse_connected=1, flowmed_clickhouse_backlog_rows=0)
        _wait_until(lambda: _metric(daemon.get("/metrics"), "flowmed_clickhouse_inserted_rows_total",
                                    'table="flows"') == sent + more, what="the inserted rows in the metrics")
        _wait_until(lambda: _rows_flushed(daemon) == _store_rows(daemon.store), what="rows_flushed == the store's rows")
        # An outage with nothing to send shows too (the idle sender checks its connection).
        server.stop()
        _wait_until(lambda: not _ch(daemon)["connected"], what="an idle outage to show")
        _metrics_show(daemon, flowmed_clickhouse_connected=0)
        assert daemon.stop() == 0
    finally:
        traffic.close()
        daemon.kill()
    log = daemon.log_text()
    assert "delivering again after" in log
