"""The same CGNAT scenario written to a real clickhouse-server 18.16 by the daemon's sink: every trace probe gives
the ground truth with the same SQL as on the embedded store, and the report query runs there too."""

from __future__ import annotations

import re

import pytest

from collector.commands.compliance import run_trace
from mediation.compliance_report import ReportQuery, report_rows, report_sql
from mediation.query import QueryEngine
from tests.compliance import scenario
from tests.compliance.helpers import build, scenario_config
from tests.compliance.test_trace import check_probe

pytestmark = [pytest.mark.external]


@pytest.fixture(scope="module")
def built(clickhouse_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cgnat_ch")
    db = "compliance_" + re.sub(r"\W", "_", tmp.name)[-30:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    cfg = scenario_config(tmp, "output.clickhouse.enabled=true", f"output.clickhouse.port={clickhouse_server.port}",
                          f"output.clickhouse.database={db}", "store.enabled=false")
    build(cfg)
    return cfg, clickhouse_server, db


def test_tables_on_the_server(built):
    cfg, server, db = built
    assert server.query(f"SELECT count() FROM {db}.ip_detail_records").strip() == "8"
    assert server.query(f"SELECT count() FROM {db}.nat_events").strip() == "16"
    # the layout the lookups rely on
    ddl = server.query(f"SHOW CREATE TABLE {db}.nat_events")
    assert "ORDER BY (public_addr, public_port_start, time)" in ddl and "PARTITION BY toYYYYMMDD(time)" in ddl
    ddl = server.query(f"SHOW CREATE TABLE {db}.ip_detail_records")
    assert "ORDER BY (subscriber_id, flow_start)" in ddl


@pytest.mark.parametrize("probe", scenario.PROBES,
                         ids=lambda p: f"{p.address}:{p.port}@{(p.at_ms - scenario.T0) // 1000}")
def test_probe_on_clickhouse(built, probe):
    cfg, _, _ = built
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        answer = run_trace(engine, address=probe.address, port=probe.port, at_ms=probe.at_ms)
    check_probe(answer, probe)


def test_subscriber_trace_and_report_on_clickhouse(built):
    cfg, _, _ = built
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        rows = run_trace(engine, subscriber="carol", from_ms=scenario.T0, to_ms=scenario.T0 + 3600_000).to_pylist()
        result = engine.query(report_sql(ReportQuery(scenario.T0, scenario.T0 + 3600_000, address="203.0.113.7",
                                                     port=40112), engine.source), text_addresses=False)
    assert [(r["evidence"], r["private_addr"], r["bytes"]) for r in rows] == [
        ("binding", "100.64.0.3", 0), ("flow", "100.64.0.3", 2000)]
    report = report_rows(result, {})
    assert [(r["user_id"], r["source_ip"], r["source_port"], r["start_time"]) for r in report] == [
        ("alice", "100.64.0.1", 5000, "14:01:10"), ("bob", "100.64.0.2", 6000, "14:15:50")]
    assert report[0]["allocation_start_time"] == "13:00:00" and report[0]["allocation_end_time"] == "14:30:00"
    assert report[1]["allocation_end_date"] == ""  # bob's session is still open


def test_public_side_from_the_nat_log_on_clickhouse(built):
    from mediation.compliance_report import fill_public_side, nat_sql

    cfg, _, _ = built
    rows = [{"source_ip": "100.64.0.3", "source_port": 3400, "public_ip": "", "public_port": "",
             "start_date": "2026-03-02", "start_time": "14:05:00"},
            {"source_ip": "100.64.0.1", "source_port": 5000, "public_ip": "", "public_port": "",
             "start_date": "2026-03-02", "start_time": "14:01:15"}]
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        sql = nat_sql(rows, scenario.T0, scenario.T0 + 3600_000, 86400, engine.source)
        assert fill_public_side(rows, engine.query(sql, text_addresses=False)) == 2
    assert [(r["public_ip"], r["public_port"]) for r in rows] == [("203.0.113.8", "1024-1151"),
                                                                  ("203.0.113.7", 40112)]
