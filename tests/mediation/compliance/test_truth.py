"""Compliance lookups checked against a NAT event stream with known mappings
(tests/mediation/compliance/nat_truth.py), written
the way the daemon writes it (RADIUS through radclient and the listener, the IPFIX NAT log and the inside router's
flows through the pipeline) into the embedded store: every ``trace`` lookup against the truth to the millisecond,
the command's output in every format, ``ipdr-report`` for public addresses and ports, and the printed forms of
addresses across commands. test_trace_clickhouse.py asks the same of ClickHouse 18.16."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.commands.compliance import run_trace
from storage.query import QueryEngine
from tests.mediation.compliance import nat_truth
from tests.mediation.compliance.helpers import build, scenario_config

pytestmark = [pytest.mark.external, pytest.mark.slow]

FLOWMED = str(Path(sys.executable).with_name("flowmed"))


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nat_truth")
    cfg = scenario_config(tmp, scen=nat_truth)
    build(cfg, nat_truth)
    return cfg


def flowmed(cfg, *args: str) -> subprocess.CompletedProcess:
    """``flowmed ARGS`` on the scenario's store, in this process (a chDB process start per command would cost more
    than the command)."""
    result = CliRunner().invoke(main, [*args, "--set", f"store.path={cfg.store.path}"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def installed_flowmed(cfg, *args: str) -> subprocess.CompletedProcess:
    """``flowmed ARGS`` as the installed command."""
    return subprocess.run([FLOWMED, *args, "--set", f"store.path={cfg.store.path}"], capture_output=True, text=True,
                          timeout=120)


def test_every_lookup_matches_the_known_mappings(truth):
    problems: list[str] = []
    lookups = nat_truth.lookups()
    with QueryEngine.for_config(truth, "store") as engine:
        for q in lookups:
            answer = run_trace(engine, address=q.address, port=q.port, at_ms=q.at_ms, protocol=q.protocol)
            problems += nat_truth.mismatches(answer, q)
    assert not problems, f"{len(problems)} of {len(lookups)} lookups wrong:\n" + "\n".join(problems)


def test_a_sub_second_session_is_held_only_within_it_with_milliseconds_in_every_format(truth):
    """The DNS-like session 21:13:20.100-21:13:20.600: held at .300, released at +1 s, +100 s and +45 min; the
    verdict and the evidence keep the milliseconds; CSV and JSON carry the verdict as their first row."""
    held = flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at", "2026-03-02T21:13:20.300Z")
    assert held.returncode == 0, held.stderr
    assert held.stdout.startswith(
        "holder: alice; inside address 100.64.1.1:53001; NAT: session start natEvent 4 at 2026-03-02 21:13:20.100Z "
        "by 192.0.2.10; binding: radius 100.64.1.1 session "), held.stdout
    assert "2026-03-02 21:13:20.600" in held.stdout  # the nat_end evidence row
    for later in ("21:13:21.300", "21:15:00.300", "21:58:20.300"):
        gone = flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at",
                       f"2026-03-02T{later}Z")
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout.startswith("holder: nobody (the NAT mapping had ended); inside address -; NAT: session "
                                      "end natEvent 5 at 2026-03-02 21:13:20.600Z by 192.0.2.10"), (later, gone.stdout)
    js = flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at", "2026-03-02T21:13:20.300Z",
                 "--format", "json")
    assert js.returncode == 0, js.stderr
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert [r["evidence"] for r in rows] == ["verdict", "nat", "nat_end", "binding", "flow"]
    v = rows[0]
    assert (v["subscriber_id"], v["private_addr"], v["private_port"], v["public_addr"], v["public_port_start"],
            v["protocol"], v["time_from"]) == ("alice", "100.64.1.1", 53001, "203.0.113.20", 40001, 17,
                                               "2026-03-02T21:13:20.300Z")
    assert v["detail"].startswith("holder: alice; ")
    assert (rows[1]["time_from"], rows[2]["time_from"]) == ("2026-03-02T21:13:20.100Z", "2026-03-02T21:13:20.600Z")
    assert (rows[4]["time_from"], rows[4]["time_to"]) == ("2026-03-02T21:13:20.150Z", "2026-03-02T21:13:20.550Z")
    assert rows[4]["public_addr"] == ""  # the inside router's record was not translated: no "::"
    gone = flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at", "2026-03-02T21:13:21.300Z",
                   "--format", "csv")
    assert gone.returncode == 0, gone.stderr
    first = next(csv.DictReader(io.StringIO(gone.stdout)))
    assert (first["evidence"], first["subscriber_id"], first["private_addr"]) == ("verdict", "", "")
    assert first["detail"].startswith("holder: nobody (the NAT mapping had ended)")


def test_sessions_of_two_protocols_on_one_port_are_ambiguous_without_protocol(truth):
    both = flowmed(truth, "trace", "--address", "203.0.113.22", "--port", "50000", "--at", "2026-03-02T21:14:10Z")
    assert both.returncode == 0, both.stderr
    line = both.stdout.splitlines()[0]
    assert line.startswith("holder: ambiguous ") and "give --protocol" in line, line
    assert "protocol 6: erin, inside address 100.64.1.5:4000" in line
    assert "protocol 17: frank, inside address 100.64.1.6:5000" in line
    js = flowmed(truth, "trace", "--address", "203.0.113.22", "--port", "50000", "--at", "2026-03-02T21:14:10Z",
                 "--format", "json")
    verdict = json.loads(js.stdout.splitlines()[0])
    assert (verdict["evidence"], verdict["subscriber_id"]) == ("verdict", "")
    assert verdict["detail"].startswith("holder: ambiguous")
    udp = flowmed(truth, "trace", "--address", "203.0.113.22", "--port", "50000", "--protocol", "17", "--at",
                  "2026-03-02T21:14:10Z")
    assert udp.stdout.startswith("holder: frank; inside address 100.64.1.6:5000"), udp.stdout
    # after the UDP session ended only erin's TCP session holds the port: no protocol needed
    tcp = flowmed(truth, "trace", "--address", "203.0.113.22", "--port", "50000", "--at", "2026-03-02T21:16:00Z")
    assert tcp.stdout.startswith("holder: erin; inside address 100.64.1.5:4000"), tcp.stdout


def test_epoch_seconds_are_refused_not_read_as_milliseconds(truth):
    seconds = installed_flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at", "1772486000")
    assert seconds.returncode == 2 and "epoch seconds" in seconds.stderr and "1772486000000" in seconds.stderr
    report = flowmed(truth, "ipdr-report", "--from", "1772486000", "--to", "1772489600", "--subscriber", "alice")
    assert report.returncode == 2 and "epoch seconds" in report.stderr
    millis = installed_flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at",
                               "1772486000300")
    assert millis.returncode == 0 and millis.stdout.startswith("holder: alice;"), millis.stdout + millis.stderr


def _report(truth, *args: str) -> list[dict[str, str]]:
    out = flowmed(truth, "ipdr-report", "--from", "2026-03-02T21:00:00Z", "--to", "2026-03-02T22:00:00Z", *args)
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader(io.StringIO(out.stdout)))


@pytest.mark.parametrize("address, port", [("203.0.113.20", "40001"), ("203.0.113.20", "40002"),
                                           ("203.0.113.20", None), ("203.0.113.21", "2001"),
                                           ("203.0.113.21", "2002"), ("203.0.113.22", "50000")])
def test_report_for_a_public_address_finds_inside_router_records(truth, address, port):
    """Records of a router inside the NAT carry no public side; the report for a public address (and port) lists
    the ones that the NAT log shows behind it at their start, with the public side filled in, as --subscriber
    shows them."""
    rows = _report(truth, "--address", address, *(["--port", port] if port else []))
    want = [f for f in nat_truth.INSIDE_FLOWS if f.public == address and (
        port is None or any(m.subscriber == f.subscriber and m.covers(address, int(port))
                            and m.start_ms <= f.start_ms for m in nat_truth.MAPPINGS))]
    assert [(r["user_id"], r["source_ip"], r["source_port"], r["public_ip"], r["public_port"]) for r in rows] == [
        (f.subscriber, f.inside, str(f.inside_port), f.public, f.public_port) for f in want]
    for f in want:  # the same record as --subscriber shows it
        (same,) = [r for r in _report(truth, "--subscriber", f.subscriber) if r["source_port"] == str(f.inside_port)]
        assert (same["public_ip"], same["public_port"]) == (f.public, f.public_port)


def test_addresses_print_the_same_in_every_command(truth):
    """IPv4 addresses (stored IPv4-mapped) print as a.b.c.d and a host binding as its address in trace (verdict,
    evidence, binding detail), the subscriber trace, query, ipdr-report and bindings list/lookup; an untranslated
    record's public address is empty, not "::"."""
    outputs = {
        "trace": flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at",
                         "2026-03-02T21:13:20.300Z"),
        "trace json": flowmed(truth, "trace", "--address", "203.0.113.20", "--port", "40001", "--at",
                              "2026-03-02T21:13:20.300Z", "--format", "json"),
        "trace subscriber": flowmed(truth, "trace", "--subscriber", "alice", "--from", "2026-03-02T21:00:00Z",
                                    "--to", "2026-03-02T22:00:00Z", "--format", "csv"),
        "query": flowmed(truth, "query", "--format", "csv",
                         "SELECT src_addr, network FROM ip_detail_records AS r, bindings AS b "
                         "WHERE r.subscriber_id = 'alice' AND b.subscriber_id = 'alice'"),
        "ipdr-report": flowmed(truth, "ipdr-report", "--from", "2026-03-02T21:00:00Z", "--to",
                               "2026-03-02T22:00:00Z", "--subscriber", "alice"),
        "bindings list": flowmed(truth, "bindings", "list", "--subscriber", "alice"),
        "bindings lookup": flowmed(truth, "bindings", "lookup", "100.64.1.1", "--at", "2026-03-02T21:13:20Z"),
    }
    for name, out in outputs.items():
        assert out.returncode == 0, (name, out.stderr)
        assert "100.64.1.1" in out.stdout, (name, out.stdout)
        assert "::ffff:" not in out.stdout and "/128" not in out.stdout and "/32" not in out.stdout, (name, out.stdout)
    ivan = flowmed(truth, "trace", "--subscriber", "ivan", "--from", "2026-03-02T21:00:00Z", "--to",
                   "2026-03-02T22:00:00Z", "--format", "json")
    flows = [json.loads(line) for line in ivan.stdout.splitlines() if '"flow"' in line]
    assert [(f["private_addr"], f["public_addr"]) for f in flows] == [("198.51.100.99", "")]
    table = flowmed(truth, "trace", "--subscriber", "ivan", "--from", "2026-03-02T21:00:00Z", "--to",
                    "2026-03-02T22:00:00Z")
    assert " :: " not in table.stdout and "::ffff:" not in table.stdout, table.stdout
    (row,) = _report(truth, "--subscriber", "ivan")
    assert (row["source_ip"], row["public_ip"], row["public_port"]) == ("198.51.100.99", "", "")
