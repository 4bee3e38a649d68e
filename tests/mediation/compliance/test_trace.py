"""``flowmed trace`` over the CGNAT scenario (tests/mediation/compliance/scenario.py) on the embedded store: every
probe's
holder, inside address and evidence against the scenario's ground truth; the subscriber trace; the records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collector.commands.compliance import run_trace, verdict
from storage.query import QueryEngine
from tests.mediation.compliance import scenario
from tests.mediation.compliance.helpers import build, scenario_config

pytestmark = [pytest.mark.external]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cgnat")
    cfg = scenario_config(tmp)
    pipeline = build(cfg)
    return cfg, pipeline


def check_probe(answer, probe: scenario.Probe) -> None:
    v = verdict(answer, probe.at_ms)
    rows = answer.to_pylist()
    assert v.subscriber_id == probe.subscriber, (probe, rows)
    assert v.private_addr == probe.private, (probe, rows)
    nat = [r for r in rows if r["evidence"] == "nat"]
    if probe.nat:
        assert len(nat) == 1 and nat[0]["detail"].split(" ")[0] == probe.nat, (probe, rows)
    else:
        assert nat == [], (probe, rows)
    flows = [r for r in rows if r["evidence"] == "flow"]
    assert len(flows) == probe.flows, (probe, rows)
    for f in flows:
        assert f["subscriber_id"] == probe.subscriber
        assert f["private_addr"] == probe.private or f["public_addr"] == probe.address
    binding = [r for r in rows if r["evidence"] == "binding"]
    if probe.subscriber:
        assert len(binding) == 1 and binding[0]["subscriber_id"] == probe.subscriber
        source = "static" if probe.subscriber == "frank" else "radius"
        assert binding[0]["detail"].startswith(source)


@pytest.mark.parametrize("probe", scenario.PROBES,
                         ids=lambda p: f"{p.address}:{p.port}@{(p.at_ms - scenario.T0) // 1000}")
def test_probe_on_the_store(built, probe):
    cfg, _ = built
    with QueryEngine.for_config(cfg, "store") as engine:
        answer = run_trace(engine, address=probe.address, port=probe.port, at_ms=probe.at_ms)
    check_probe(answer, probe)


def test_mapping_end_is_reported(built):
    cfg, _ = built
    with QueryEngine.for_config(cfg, "store") as engine:
        answer = run_trace(engine, address="203.0.113.8", port=1100, at_ms=scenario.T0 + 500_000).to_pylist()
    end = [r for r in answer if r["evidence"] == "nat_end"]
    assert len(end) == 1 and end[0]["private_addr"] == "100.64.0.3"
    assert int(end[0]["time_from"].timestamp() * 1000) == scenario.T0 + 1000_000
    nat = [r for r in answer if r["evidence"] == "nat"][0]
    assert (nat["public_port_start"], nat["public_port_end"], nat["exporter"]) == (1024, 1151, scenario.NAT2)
    assert nat["detail"] == "block start natEvent 14"


def test_records_and_counters(built):
    cfg, pipeline = built
    c = pipeline.compliance.counters
    assert c["records"] == len(scenario.FLOWS) + len(scenario.V6_FLOWS)
    assert c["records_unattributed"] == 1 and c["records_attributed"] == 7
    assert c["nat_events"] == len(scenario.SESSIONS) + len(scenario.BLOCKS) and c["nat_other"] == 1
    with QueryEngine.for_config(cfg, "store") as engine:
        rows = engine.query("SELECT subscriber_id, status, binding_source, src_addr, src_port, nat_addr, nat_port, "
                            "bytes FROM ip_detail_records ORDER BY flow_start, bytes").to_pylist()
        events = engine.query("SELECT count() AS n FROM nat_events").to_pylist()
    assert [(r["subscriber_id"], r["status"], r["bytes"]) for r in rows] == [
        ("alice", "attributed", 1234), ("carol", "attributed", 2000), ("frank", "attributed", 600),
        ("", "unattributed", 700), ("erin", "attributed", 9000), ("bob", "attributed", 4321),
        ("bob", "attributed", 3000), ("dave", "attributed", 5000)]
    assert rows[2]["binding_source"] == "static" and rows[0]["binding_source"] == "radius"
    assert rows[0]["nat_addr"] == "203.0.113.7" and rows[0]["nat_port"] == 40112
    # every event plus one observed translation per translated flow
    assert events == [{"n": len(scenario.SESSIONS) + len(scenario.BLOCKS) + 6}]


def test_subscriber_trace(built):
    cfg, _ = built
    with QueryEngine.for_config(cfg, "store") as engine:
        rows = run_trace(engine, subscriber="bob", from_ms=scenario.T0, to_ms=scenario.T0 + 3600_000).to_pylist()
    assert [r["evidence"] for r in rows].count("binding") == 1
    flows = [(r["private_addr"], r["private_port"], r["public_addr"], r["public_port_start"], r["bytes"])
             for r in rows if r["evidence"] == "flow"]
    assert flows == [("100.64.0.2", 6000, "203.0.113.7", 40112, 4321), ("100.64.0.2", 4444, "203.0.113.8", 1100, 3000)]


@pytest.mark.slow
def test_trace_command(built):
    cfg, _ = built
    out = subprocess.run([sys.executable, "-m", "collector.cli", "trace", "--address", "203.0.113.7", "--port",
                          "40112", "--at", "2026-03-02T14:16:40Z", "--set", f"store.path={cfg.store.path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("holder: bob; inside address 100.64.0.2:6000; NAT: session start natEvent 4")
    js = subprocess.run([sys.executable, "-m", "collector.cli", "trace", "--subscriber", "dave", "--from",
                         "2026-03-02T14:00:00Z", "--to", "2026-03-02T15:00:00Z", "--format", "json", "--set",
                         f"store.path={cfg.store.path}"], capture_output=True, text=True, timeout=120)
    assert js.returncode == 0, js.stderr
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert [r["evidence"] for r in rows] == ["binding", "flow"] and rows[1]["bytes"] == 5000
    ended = subprocess.run([sys.executable, "-m", "collector.cli", "trace", "--address", "203.0.113.7", "--port",
                            "40112", "--at", "2026-03-02T14:11:40Z", "--set", f"store.path={cfg.store.path}"],
                           capture_output=True, text=True, timeout=120)
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.startswith("holder: nobody (the NAT mapping had ended); inside address -; NAT: session end "
                                   "natEvent 5 at 2026-03-02 14:10:00.000Z by 192.0.2.1")
    shared = subprocess.run([sys.executable, "-m", "collector.cli", "trace", "--address", "203.0.113.7", "--at",
                             "2026-03-02T14:16:40Z", "--set", f"store.path={cfg.store.path}"],
                            capture_output=True, text=True, timeout=120)
    assert shared.returncode == 0, shared.stderr
    assert "behind NAT and shared: the holder depends on the port" in shared.stdout
    bad = subprocess.run([sys.executable, "-m", "collector.cli", "trace", "--address", "203.0.113.7"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--at" in bad.stderr


def test_hostile_subscriber_ids_are_quoted(built):
    cfg, _ = built
    with QueryEngine.for_config(cfg, "store") as engine:
        for sub in ("o'brien", "x\\' OR 1=1 --", "alice' UNION ALL SELECT 1 --"):
            assert run_trace(engine, subscriber=sub, from_ms=scenario.T0, to_ms=scenario.T0 + 3600_000).num_rows == 0


def test_protocol_filter(built):
    """alice's TCP session holds 203.0.113.7:40112 at T0 + 80 s; asked for UDP, no session names her."""
    cfg, _ = built
    with QueryEngine.for_config(cfg, "store") as engine:
        tcp = run_trace(engine, address="203.0.113.7", port=40112, at_ms=scenario.T0 + 80_000, protocol=6)
        udp = run_trace(engine, address="203.0.113.7", port=40112, at_ms=scenario.T0 + 80_000, protocol=17)
    assert verdict(tcp, scenario.T0 + 80_000).subscriber_id == "alice"
    assert [r["evidence"] for r in udp.to_pylist() if r["evidence"] == "nat"] == []
