"""The same CGNAT scenario written to a real clickhouse-server 18.16 by the daemon's sink: every trace probe gives
the ground truth with the same SQL as on the embedded store, and the report query runs there too."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.commands.compliance import run_trace
from mediation.compliance.report import ReportQuery, report_rows, report_sql
from storage.query import QueryEngine
from tests.mediation.compliance import nat_truth, scenario
from tests.mediation.compliance.helpers import build, scenario_config
from tests.mediation.compliance.test_trace import check_probe

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
    from mediation.compliance.report import fill_public_side, nat_sql

    cfg, _, _ = built
    rows = [{"source_ip": "100.64.0.3", "source_port": 3400, "public_ip": "", "public_port": "",
             "_start_ms": scenario.T0 + 300_000, "_protocol": 6},
            {"source_ip": "100.64.0.1", "source_port": 5000, "public_ip": "", "public_port": "",
             "_start_ms": scenario.T0 + 75_000, "_protocol": 6}]
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        sql = nat_sql(rows, scenario.T0, scenario.T0 + 3600_000, 86400, engine.source)
        assert fill_public_side(rows, engine.query(sql, text_addresses=False)) == 2
    assert [(r["public_ip"], r["public_port"]) for r in rows] == [("203.0.113.8", "1024-1151"),
                                                                  ("203.0.113.7", 40112)]


@pytest.fixture(scope="module")
def truth_ch(clickhouse_server, tmp_path_factory):
    """The NAT event stream with known mappings (tests/mediation/compliance/nat_truth.py) written to the server."""
    tmp = tmp_path_factory.mktemp("nat_truth_ch")
    db = "truth_" + re.sub(r"\W", "_", tmp.name)[-30:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    settings = ["output.clickhouse.enabled=true", f"output.clickhouse.port={clickhouse_server.port}",
                f"output.clickhouse.database={db}", "store.enabled=false"]
    cfg = scenario_config(tmp, *settings, scen=nat_truth)
    build(cfg, nat_truth)
    return cfg, settings


@pytest.mark.slow
def test_every_lookup_matches_the_known_mappings_on_clickhouse(truth_ch):
    """The same SQL as on the embedded store gives the truth on 18.16, whose DateTime keeps whole seconds: the
    milliseconds come from the *_msec columns."""
    cfg, _ = truth_ch
    problems: list[str] = []
    lookups = nat_truth.lookups()
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        for q in lookups:
            answer = run_trace(engine, address=q.address, port=q.port, at_ms=q.at_ms, protocol=q.protocol)
            problems += nat_truth.mismatches(answer, q)
    assert not problems, f"{len(problems)} of {len(lookups)} lookups wrong:\n" + "\n".join(problems)


def test_commands_on_clickhouse(truth_ch):
    """trace (verdict with milliseconds, JSON verdict row, ambiguity) and ipdr-report for a public address and port
    (inside router records with the public side from the NAT log) against the server."""
    cfg, settings = truth_ch

    def flowmed(*args: str):
        sets = [a for s in settings for a in ("--set", s)]
        result = CliRunner().invoke(main, [*args, "--target", "clickhouse", *sets])
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    held = flowmed("trace", "--address", "203.0.113.20", "--port", "40001", "--at", "2026-03-02T21:13:20.300Z")
    assert held.startswith("holder: alice; inside address 100.64.1.1:53001; NAT: session start natEvent 4 at "
                           "2026-03-02 21:13:20.100Z by 192.0.2.10; binding: radius 100.64.1.1 session "), held
    gone = flowmed("trace", "--address", "203.0.113.20", "--port", "40001", "--at", "2026-03-02T21:13:21.300Z",
                   "--format", "json")
    verdict = json.loads(gone.splitlines()[0])
    assert (verdict["evidence"], verdict["subscriber_id"]) == ("verdict", "")
    assert verdict["detail"].startswith("holder: nobody (the NAT mapping had ended); inside address -; NAT: session "
                                        "end natEvent 5 at 2026-03-02 21:13:20.600Z")
    both = flowmed("trace", "--address", "203.0.113.22", "--port", "50000", "--at", "2026-03-02T21:14:10Z")
    assert both.startswith("holder: ambiguous ") and "erin" in both.splitlines()[0] and "frank" in both.splitlines()[0]
    report = flowmed("ipdr-report", "--from", "2026-03-02T21:00:00Z", "--to", "2026-03-02T22:00:00Z", "--address",
                     "203.0.113.21", "--port", "2001")
    rows = list(csv.DictReader(io.StringIO(report)))
    assert [(r["user_id"], r["source_ip"], r["public_ip"], r["public_port"]) for r in rows] == [
        ("carol", "100.64.1.3", "203.0.113.21", "2001-2063 step 2")]
    report = flowmed("ipdr-report", "--from", "2026-03-02T21:00:00Z", "--to", "2026-03-02T22:00:00Z", "--address",
                     "203.0.113.20", "--port", "40001")
    rows = list(csv.DictReader(io.StringIO(report)))
    assert [(r["user_id"], r["source_ip"], r["public_ip"], r["public_port"]) for r in rows] == [
        ("alice", "100.64.1.1", "203.0.113.20", "40001")]
