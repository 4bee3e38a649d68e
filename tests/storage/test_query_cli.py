"""``flowmed query`` and ``flowmed schema`` through click, and the committed docs/schema.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from bench.flowgen import T0_MS, addr
from collector.cli import main
from collector.commands.query import schema_markdown
from collector.tables import load_tables
from decoders.schema import FLOWS
from storage.store import ParquetStore

ROOT = Path(__file__).resolve().parents[2]


def _store(tmp_path: Path) -> Path:
    store = ParquetStore(tmp_path / "data")
    src = np.array([addr("192.0.2.1"), addr("2001:db8::1"), addr("192.0.2.1")], dtype="S16")
    store.write(FLOWS, FLOWS.to_arrow({"time_received": np.array([T0_MS] * 3, dtype=np.int64), "src_addr": src,
                                       "bytes": np.array([10, 7, 5], dtype=np.uint64)}), 1)
    return store.root


def test_query_table_csv_json(tmp_path: Path) -> None:
    root = _store(tmp_path)
    sql = "SELECT src_addr, sum(bytes) AS b FROM flows GROUP BY src_addr ORDER BY b DESC"
    runner = CliRunner()
    r = runner.invoke(main, ["query", "--set", f"store.path={root}", sql])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["src_addr      b", "-----------  --", "192.0.2.1    15", "2001:db8::1   7"]
    r = runner.invoke(main, ["query", "--set", f"store.path={root}", "--format", "json", sql])
    assert [json.loads(x) for x in r.output.splitlines()] == [{"src_addr": "192.0.2.1", "b": 15},
                                                              {"src_addr": "2001:db8::1", "b": 7}]
    r = runner.invoke(main, ["query", "--set", f"store.path={root}", "--target", "store", "--format", "csv",
                             "SELECT count() AS n FROM flows WHERE src_addr = toIPv6('192.0.2.1')"])
    assert r.output == '"n"\n2\n'


def test_query_prints_datetime_results_as_times_not_epoch_seconds(tmp_path: Path) -> None:
    # chDB's Arrow output turns DateTime (seconds) into uint32; the CLI must still print a time.
    root = _store(tmp_path)
    sql = "SELECT toStartOfHour(time_received) AS h, count() AS n FROM flows GROUP BY h"
    r = CliRunner().invoke(main, ["query", "--set", f"store.path={root}", "--format", "json", sql])
    assert r.exit_code == 0, r.output
    hour = (T0_MS // 3_600_000) * 3600
    expected = datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert [json.loads(x) for x in r.output.splitlines()] == [{"h": expected, "n": 3}]


def test_query_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["query", "--set", f"store.path={_store(tmp_path)}", "SELECT nope FROM flows"])
    assert r.exit_code == 1
    assert "nope" in r.output and r.exception is not None and isinstance(r.exception, SystemExit)


def test_schema_text_and_markdown() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["schema"])
    assert r.exit_code == 0
    assert "flows: Raw flow records" in r.output and "src_addr" in r.output
    r = runner.invoke(main, ["schema", "--format", "md", "--table", "flows"])
    assert "## `flows`" in r.output and "| `src_addr` | IPv6 |" in r.output and "## `usage`" not in r.output
    r = runner.invoke(main, ["schema", "--table", "nope"])
    assert r.exit_code == 2 and "unknown table" in r.output


def test_committed_schema_doc_is_up_to_date() -> None:
    # In a fresh process, as `flowmed schema` runs: exactly the tables collector.tables imports (this
    # process may hold more, registered by tests or by modules other tests imported).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "collector.cli", "schema", "--format", "md"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120, check=True).stdout
    committed = (ROOT / "docs" / "schema.md").read_text()
    assert committed == out, "docs/schema.md is stale: regenerate it with `flowmed schema --format md > " \
                             "docs/schema.md` (and import your table module in collector/tables.py)"
    assert out == schema_markdown({n: t for n, t in load_tables().items() if n in _documented(out)})


def _documented(markdown: str) -> set[str]:
    return {line[4:-1] for line in markdown.splitlines() if line.startswith("## `")}
