"""What ``flowmed query`` prints in the cases that used to go wrong: a FORMAT clause, array (and other nested)
columns, no store where the configuration points, and error hints that named the engine's private database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.flowgen import T0_MS, addr
from collector.cli import main
from decoders.schema import FLOWS
from storage.store import ParquetStore

FLOWMED = Path(sys.executable).with_name("flowmed")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = ParquetStore(tmp_path / "data")
    src = np.array([addr("192.0.2.1"), addr("2001:db8::1"), addr("192.0.2.1")], dtype="S16")
    store.write(FLOWS, FLOWS.to_arrow({"time_received": np.array([T0_MS] * 3, dtype=np.int64), "src_addr": src,
                                       "bytes": np.array([10, 7, 5], dtype=np.uint64)}), 1)
    return store.root


def _query(store: Path, sql: str, *options: str):
    return CliRunner().invoke(main, ["query", "--set", f"store.path={store}", *options, sql])


@pytest.mark.parametrize("clause", ["FORMAT Vertical", "FORMAT CSV", "format JSONEachRow"])
def test_a_format_clause_is_refused_with_a_pointer_to_the_format_option(store: Path, clause: str) -> None:
    r = _query(store, f"SELECT count() FROM flows {clause}")
    assert r.exit_code == 1
    assert "--format" in r.output and "magic bytes" not in r.output and "Traceback" not in r.output


ARRAYS = ("SELECT groupArray(toUInt32(bytes)) AS b, arraySort(groupArray(src_addr)) AS s, "
          "tuple(1, 'x') AS t, map('k', 2) AS m FROM flows")


def test_array_tuple_and_map_columns_in_every_format(store: Path) -> None:
    r = _query(store, ARRAYS, "--format", "csv")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        '"b","s","t","m"',
        '"[10, 7, 5]","[""192.0.2.1"", ""192.0.2.1"", ""2001:db8::1""]","{""1"": 1, ""2"": ""x""}","[[""k"", 2]]"']
    r = _query(store, ARRAYS, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"b": [10, 7, 5], "s": ["192.0.2.1", "192.0.2.1", "2001:db8::1"],
                                    "t": {"1": 1, "2": "x"}, "m": [["k", 2]]}
    r = _query(store, ARRAYS)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[2].split("  ")[0] == "[10, 7, 5]"
    assert '["192.0.2.1", "192.0.2.1", "2001:db8::1"]' in r.output


def test_an_empty_array_column_and_no_rows(store: Path) -> None:
    r = _query(store, "SELECT groupArray(src_addr) AS s FROM flows WHERE bytes > 100", "--format", "csv")
    assert (r.exit_code, r.output) == (0, '"s"\n"[]"\n')
    r = _query(store, "SELECT [src_addr] AS s FROM flows WHERE bytes > 100", "--format", "csv")
    assert (r.exit_code, r.output) == (0, '"s"\n')


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_a_store_path_without_data_is_an_error_naming_the_path(tmp_path: Path, where: str) -> None:
    path = tmp_path / "nothing-here"
    if where == "empty":
        path.mkdir()
    proc = subprocess.run([str(FLOWMED), "query", "--set", f"store.path={path}", "SELECT count() FROM flows"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"the store at {path} holds no data" in proc.stderr and "store.path" in proc.stderr, proc.stderr


def test_error_hints_do_not_name_the_private_database(store: Path) -> None:
    r = _query(store, "SELECT * FROM flow")
    assert r.exit_code == 1
    assert "Maybe you meant flows?" in r.output and "flowmed_" not in r.output, r.output
    r = _query(store, "SELECT nope FROM flows")
    assert r.exit_code == 1 and "nope" in r.output and "flowmed_" not in r.output, r.output
