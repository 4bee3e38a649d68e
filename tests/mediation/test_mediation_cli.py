"""``flowmed bindings load/lookup/list`` on a store directory."""

from __future__ import annotations

from click.testing import CliRunner

from collector.cli import main


def run(tmp_path, *args):
    return CliRunner().invoke(main, [*args, "--set", f"store.path={tmp_path / 'data'}"], catch_exceptions=False)


def test_bindings_load_lookup_and_list(tmp_path):
    f = tmp_path / "subs.csv"
    f.write_text("subscriber_id,network,valid_from,valid_to\nalice,192.0.2.7,2026-01-01T00:00:00Z,\n"
                 "bob,2001:db8:100::/56,,2026-02-01T00:00:00Z\n")
    r = run(tmp_path, "bindings", "load", str(f))
    assert r.exit_code == 0 and "2 bindings opened, 0 ended" in r.output
    r = run(tmp_path, "bindings", "lookup", "192.0.2.7", "--at", "2026-03-01T00:00:00Z")
    assert r.exit_code == 0 and ": alice (binding 1, 192.0.2.7, from" in r.output  # the host, not "/128"
    assert "from 2026-01-01T00:00:00Z open, static" in r.output  # as `list` says, not the far-future end
    r = run(tmp_path, "bindings", "lookup", "192.0.2.7", "--at", "1772486000")
    assert r.exit_code == 2 and "looks like epoch seconds" in r.output and "1772486000000" in r.output
    r = run(tmp_path, "reconcile", "--from", "1772486000", "--to", "1772489600000")
    assert r.exit_code == 2 and "looks like epoch seconds" in r.output
    r = run(tmp_path, "bindings", "lookup", "192.0.2.7", "--at", "2025-12-31T23:59:59Z")
    assert r.exit_code == 1 and "no binding" in r.output
    r = run(tmp_path, "bindings", "lookup", "2001:db8:100:ff::1", "--at", "1767225600000")
    assert r.exit_code == 0 and "bob" in r.output
    r = run(tmp_path, "bindings", "list", "--open")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert len(lines) == 2 and "alice\t192.0.2.7\t2026-01-01T00:00:00Z\topen\tstatic" in lines[1]
    r = run(tmp_path, "bindings", "list", "--subscriber", "bob")
    assert "2001:db8:100::/56" in r.output and "2026-02-01T00:00:00Z" in r.output


def test_bad_static_file_is_refused(tmp_path):
    f = tmp_path / "subs.csv"
    f.write_text("subscriber_id,network\nalice,300.1.1.1\n")
    r = CliRunner().invoke(main, ["bindings", "load", str(f), "--set", f"store.path={tmp_path}"])
    assert r.exit_code == 1 and "bad address" in r.output


def _received_with_rejects(tmp_path):
    """Three records through the Mediator into the store: one accepted, two rejected as too long (a 120 s flow
    and a 2 h flow with max_flow_duration_s = 60)."""
    from prometheus_client import CollectorRegistry

    from collector import metrics as metrics_mod
    from collector.components import make_sink
    from collector.config import load
    from mediation import Mediator
    from mediation.subscribers.bindings import Bindings
    from tests.mediation.mediation_helpers import T0, flows

    cfg = load(None, [f"store.path={tmp_path / 'data'}", "mediation.max_flow_duration_s=60"])
    bindings = Bindings(cfg.data_path(cfg.subscribers.bindings_db))
    bindings.open("alice", "100.64.0.1", 0)
    bindings.commit()
    sink = make_sink(cfg, metrics_mod.Metrics(CollectorRegistry()))
    m = Mediator(cfg, bindings)
    batch = flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1000, bytes=5, packets=1),
                   dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 120_000, bytes=777, packets=7),
                   dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 7_200_000, bytes=100, packets=2)])
    for out in (m.process(batch, T0 + 7_300_000), m.close_all(T0 + 7_300_000)):
        for name, b in out.items():
            sink.add(name, b)
    sink.close()
    bindings.close()
    return T0


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flow_usage(tmp_path) -> int:
    r = run(tmp_path, "query", "SELECT sum(bytes) AS b FROM usage WHERE source = 'flow'", "--format", "csv")
    assert r.exit_code == 0, r.output
    return int(r.output.split()[-1].strip('"') or 0)


def _totals(output: str) -> dict[str, list[str]]:
    """The ``total`` lines of ``flowmed reconcile`` by their label."""
    lines = [line.split("\t") for line in output.splitlines() if line.startswith("total\t")]
    return {cols[2]: cols[3:] for cols in lines}


def test_reprocess_dry_run_says_how_many_would_pass_and_reconcile_does_not_count_them_twice(tmp_path):
    t0 = _received_with_rejects(tmp_path)
    span = ("--from", _iso(t0 - 3_600_000), "--to", _iso(t0 + 3 * 3_600_000))
    raised = ("--set", "mediation.max_flow_duration_s=3600")
    # Before: 3 records, 882 bytes received; 5 attributed, 877 rejected (2 records).
    r = run(tmp_path, "reconcile", *span)
    assert r.exit_code == 0, r.output
    assert _totals(r.output) == {"received": ["3", "882", "5", "0", "877", "0", "2", "0", "5", "yes"]}

    # The dry run mediates the two rejects with the raised limit: the 120 s flow passes, the 2 h flow does not.
    r = run(tmp_path, "reprocess", *span, *raised, "--dry-run")
    assert r.exit_code == 0, r.output
    assert ("dry run, nothing written: 1 of 2 would pass now (777 bytes attributed, 0 unattributed, 0 duplicates), "
            "1 would be rejected again (1 too_long)") in r.output
    assert _flow_usage(tmp_path) == 5  # nothing written ...
    assert not (tmp_path / "data" / "state" / "reprocessed.sqlite").exists()
    r = run(tmp_path, "reprocess", *span, *raised)  # ... and nothing remembered as done
    assert r.exit_code == 0, r.output
    assert ("2 rejects in range, 2 not re-processed before" in r.output
            and "re-processed 2: 1 accepted (777 bytes attributed" in r.output)
    assert _flow_usage(tmp_path) == 782

    # The totals: what was received (3 records, not 3 + 2), the re-processed rejects on their own, and where the
    # received bytes are now (777 moved from rejected to attributed).
    r = run(tmp_path, "reconcile", *span)
    assert r.exit_code == 0, r.output
    assert _totals(r.output) == {
        "received": ["3", "882", "5", "0", "877", "0", "2", "0", "5", "yes"],
        "reprocess": ["2", "877", "777", "0", "100", "0", "1", "0", "777", "yes"],
        "net": ["3", "882", "782", "0", "100", "0", "1", "0", "782", "yes"]}
