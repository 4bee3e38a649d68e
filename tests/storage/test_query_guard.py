"""The read-only guard of ``flowmed query`` (storage.sql_guard) against a corpus of bypass attempts: heredocs,
comments, nested quotes, several statements, output clauses, settings changes, table functions and the file-backed
``default`` database of chDB; and the installed command, which must neither write a file nor reach the network."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.flowgen import T0_MS, addr
from collector.tables import load_tables
from decoders.schema import FLOWS
from storage import sql_guard
from storage.query import QueryError
from storage.store import ParquetStore

FLOWMED = Path(sys.executable).with_name("flowmed")

load_tables()  # the store views (flows_between, ...) the guard knows by name

# (statement, a fragment of the refusal). The first ones are the reported bypasses of the old lexical guard.
REFUSED = [
    ("SELECT $$'$$ AS x INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SELECT $$'$$; INSERT INTO FUNCTION file('out.csv', 'CSV', 'x UInt8') VALUES (1) -- '", "one statement"),
    ("SELECT $t$ $$ ' \" ` $t$ AS x INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SELECT $$--$$ AS x; DROP TABLE flows", "one statement"),
    # comments
    ("SELECT 1 -- '\n; DROP TABLE flows", "one statement"),
    ("SELECT 1 /* /* */ ' */ ; INSERT INTO FUNCTION file('out.csv') SELECT 1", "one statement"),
    ("SELECT 1 # '\nINTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("/* SELECT */ DROP DATABASE x", "DROP"),
    ("-- SELECT\nTRUNCATE TABLE usage", "TRUNCATE"),
    # nested and escaped quotes
    ("SELECT '\\'' INTO OUTFILE 'out.csv' -- '", "INTO OUTFILE"),
    ("SELECT 'it''s' AS s INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SELECT 1 AS \"a\"\"'\" INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SELECT `x\\`` FROM flows; SYSTEM SHUTDOWN", "one statement"),
    ("SELECT '\\\\'; DROP TABLE flows; -- '", "one statement"),
    # output clauses in any spelling and on any statement kind
    ("select 1 into\n  outfile 'out.csv' format CSV", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE 'out.csv' AND STDOUT", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE 'out.csv.gz' TRUNCATE COMPRESSION 'gzip'", "INTO OUTFILE"),
    ("SELECT 1 UNION ALL SELECT 2 INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("EXPLAIN SELECT 1 INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SHOW TABLES INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
    ("SELECT count() FROM flows FORMAT Vertical", "--format"),
    ("SELECT 1 FORMAT CSV", "--format"),
    ("SHOW TABLES FORMAT JSON", "--format"),
    ("EXISTS TABLE flows FORMAT TSV", "--format"),
    ("EXPLAIN SELECT 1 FORMAT CSV", "--format"),
    # several statements
    ("SELECT 1; DROP TABLE flows", "one statement"),
    ("SELECT 1;\nSELECT 2", "one statement"),
    ("SELECT 1; SET readonly = 0", "one statement"),
    # settings changes
    ("SET readonly = 0", "SET statements"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 SETTINGS max_threads = 1", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", "SETTINGS"),
    ("SELECT 1 UNION ALL SELECT 2 SETTINGS readonly = 0", "SETTINGS"),
    ("EXPLAIN SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 FORMAT CSV SETTINGS readonly = 0", "--format"),
    # writes and other statements
    ("INSERT INTO FUNCTION file('out.csv', 'CSV') SELECT 1", "INSERT"),
    ("insert into flows select * from flows", "INSERT"),
    ("CREATE TABLE t (x Int8) ENGINE = File(CSV)", "CREATE"),
    ("DROP TABLE flows", "DROP"),
    ("ALTER TABLE usage DELETE WHERE 1", "ALTER"),
    ("RENAME TABLE flows TO f", "RENAME"),
    ("OPTIMIZE TABLE flows", "OPTIMIZE"),
    ("SYSTEM SHUTDOWN", "SYSTEM"),
    ("KILL QUERY WHERE 1", "KILL"),
    ("USE default", "USE"),
    ("EXPLAIN AST INSERT INTO flows SELECT * FROM flows", "INSERT"),
    ("", "empty"),
    ("-- only a comment", "empty"),
    # reaching outside the store without --allow-external
    ("SELECT * FROM url('http://127.0.0.1:9/x.csv', CSV)", "--allow-external"),
    ("SELECT * FROM file('/etc/passwd', LineAsString)", "--allow-external"),
    ("SELECT file('/etc/hostname')", "--allow-external"),
    ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "--allow-external"),
    ("SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)", "--allow-external"),
    ("SELECT * FROM s3('http://127.0.0.1:9/b/k.csv')", "--allow-external"),
    ("SELECT * FROM merge('default', '.*')", "--allow-external"),
    ("SELECT * FROM view(SELECT * FROM url('http://127.0.0.1:9/', CSV))", "--allow-external"),
    ("SELECT * FROM flows WHERE src_addr IN (SELECT * FROM url('http://127.0.0.1:9/', CSV))", "--allow-external"),
    ("SELECT * FROM flows AS f JOIN remote('127.0.0.1', system.one) AS r ON 1", "--allow-external"),
    ("DESCRIBE TABLE url('http://127.0.0.1:9/', CSV)", "--allow-external"),
    ("WITH (SELECT count() FROM file('/etc/passwd')) AS n SELECT n", "--allow-external"),
    ("SELECT joinGet('default.`t`', 'x', 1)", "--allow-external"),
    ("SELECT 'root' IN file('/etc/passwd')", "--allow-external"),
    ("SELECT 1 GLOBAL IN url('http://127.0.0.1:9/', CSV)", "--allow-external"),
    ("SELECT * FROM executable('x.sh', TSV, 'a UInt8')", "executable"),
    # chDB's default database is an overlay of the file system
    ("SELECT * FROM default.`/etc/passwd`", "default database"),
    ("SELECT 'root' IN default.`/etc/passwd`", "default database"),
    ("EXISTS TABLE default.`/etc/shadow`", "default database"),
    ("DESCRIBE TABLE `default`.`collector.toml`", "default database"),
    # a name with a line break would print as a fake node of the parse tree
    ("SELECT 1 AS `a\nFunction url`", "control characters"),
    ("SELECT 1 AS `a\\n Set`", "control characters"),
]

ALLOWED = [
    ("SELECT count() FROM flows", "select"),
    ("with t as (select 1 as x) select * from t;", "select"),
    ("SELECT 'INSERT INTO OUTFILE; DROP' AS s, `insert` FROM flows -- INTO OUTFILE", "select"),
    ("SELECT $$it's; DROP TABLE flows$$ AS s", "select"),
    ("SELECT 'a\n Function url (children 0)' AS s", "select"),
    ("SELECT x AS settings, format, `into`, outfile FROM flows", "select"),
    ("(SELECT 1) UNION ALL (SELECT 2)", "select"),
    ("SELECT 1 INTERSECT SELECT 1", "select"),
    ("SELECT * FROM flows_between(t0 = '2026-03-02 14:00:00', t1 = '2026-03-02 15:00:00')", "select"),
    ("SELECT number FROM numbers(3)", "select"),
    ("SELECT * FROM system.one", "select"),
    ("SELECT 1 /* ; DROP TABLE flows */", "select"),
    ("SHOW TABLES", "show"),
    ("SHOW CREATE TABLE flows", "show"),
    ("DESCRIBE flows", "describe"),
    ("EXISTS TABLE flows", "exists"),
    ("EXPLAIN SELECT 1", "explain"),
    ("EXPLAIN header = 1 SELECT count() FROM flows", "explain"),
]


@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_guard_refuses(sql: str, why: str) -> None:
    with pytest.raises(QueryError) as refused:
        sql_guard.check_read_only(sql)
    assert why in str(refused.value), str(refused.value)


@pytest.mark.parametrize(("sql", "kind"), ALLOWED)
def test_guard_lets_reads_through(sql: str, kind: str) -> None:
    assert sql_guard.classify(sql).kind == kind


def test_allow_external_opens_exactly_the_external_readers() -> None:
    for sql in ("SELECT * FROM url('http://127.0.0.1:9/x.csv', CSV)", "SELECT file('/etc/hostname')",
                "SELECT * FROM remote('127.0.0.1:9000', system.one)"):
        sql_guard.classify(sql, allow_external=True)
    for sql, why in [("SELECT * FROM executable('x.sh', TSV, 'a UInt8')", "executable"),
                     ("SELECT * FROM url('http://127.0.0.1:9/', CSV) INTO OUTFILE 'out.csv'", "INTO OUTFILE"),
                     ("SELECT * FROM default.`/etc/passwd`", "default database")]:
        with pytest.raises(QueryError, match=why):
            sql_guard.classify(sql, allow_external=True)


def test_the_default_database_is_a_plain_database_on_a_server() -> None:
    assert sql_guard.classify("SELECT * FROM default.t", target="clickhouse").kind == "select"


def test_the_canonical_statement_is_what_the_parser_read() -> None:
    statement = sql_guard.classify("select /* c */ $$a'b$$ as x -- d\n from flows;")
    assert statement.canonical == "SELECT 'a\\'b' AS x FROM flows"
    assert [t.value for t in sql_guard.tokenize(statement.canonical)] == ["SELECT", "a'b", "AS", "x", "FROM", "flows"]


def test_overlong_statements_are_refused_before_parsing() -> None:
    with pytest.raises(QueryError, match="too long"):
        sql_guard.classify("SELECT " + "1 + " * 30_000 + "1")


# --- the installed command --------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = ParquetStore(tmp_path / "data")
    src = np.array([addr("192.0.2.1"), addr("2001:db8::1")], dtype="S16")
    store.write(FLOWS, FLOWS.to_arrow({"time_received": np.array([T0_MS] * 2, dtype=np.int64), "src_addr": src,
                                       "bytes": np.array([10, 7], dtype=np.uint64)}), 1)
    return store.root


@pytest.fixture
def web() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering ``42`` and recording the paths asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"42\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def _run(store: Path, cwd: Path, sql: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLOWMED), "query", "--set", f"store.path={store}", *extra, sql], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_installed_command_writes_no_file_and_reaches_no_url(store: Path, tmp_path: Path,
                                                             web: tuple[str, list[str]]) -> None:
    """The reported bypasses through the real command, each in a fresh process (the chDB session sealed)."""
    base, asked = web
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out.csv"
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-line\n")
    for sql in (f"SELECT $$'$$ AS x INTO OUTFILE '{out}'",
                f"SELECT $$'$$; INSERT INTO FUNCTION file('{out}', 'CSV', 'x UInt8') VALUES (1) -- '",
                f"SELECT * FROM url('{base}/x.csv', CSV, 'n UInt32')",
                f"SELECT * FROM default.`{secret}`"):
        proc = _run(store, work, sql)
        assert proc.returncode == 1 and "Error:" in proc.stderr and proc.stdout == "", (sql, proc.stderr)
        assert "s3cr3t" not in proc.stderr
    assert not out.exists() and list(work.iterdir()) == [] and asked == []
    proc = _run(store, work, f"SELECT * FROM url('{base}/x.csv', CSV, 'n UInt32')", "--allow-external")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["n", "--", "42"] and asked == ["/x.csv"]
