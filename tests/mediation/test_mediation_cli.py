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
