"""ClickHouse SQL over flowmed's tables: the embedded store through chDB, or a ClickHouse server.

:class:`QueryEngine` runs SQL on a *backend* and returns a ``pyarrow.Table``:

* :class:`ChdbBackend` (embedded, the default): every table registered in :data:`decoders.schema.TABLES` is a view
  named after it over ``file('<store>/<table>/date=*/hour=*/*.parquet', Parquet, '<schema>')``. Addresses are
  ``IPv6`` (so ``WHERE src_addr = toIPv6('192.0.2.1')``, ``= '::ffff:192.0.2.1'`` and ``isIPAddressInRange`` work)
  and times ``DateTime64(3, 'UTC')``. The explicit schema keeps a table with no files yet queryable (it is empty),
  and only complete files are visible because the store renames them into place. The hive partition columns are
  used by ``<table>_between(t0, t1)`` parameterised views that skip the other hour partitions, and
  :meth:`QueryEngine.source` gives a subquery whose glob names only the hours of a range (fastest; for lookups).
  ReplacingMergeTree tables (usage, rated_usage, bindings, ...) are collapsed per sorting key to the highest version,
  as ``FINAL`` does on a server (:func:`collapsed_select`), so rows re-sent in another batch count once; their
  ``<table>_raw`` view shows the files as they are.
* a server backend (``storage.clickhouse.query.ClickHouseBackend``, read-only), chosen with ``target``.

A backend implements :class:`QueryBackend`: ``name``, ``query(sql) -> pa.Table``, ``source(table, t0_ms, t1_ms)``
(the FROM clause of a time range, as that backend reads it fastest) and ``close()``. The engine turns
16-byte binary result columns (addresses) into text: ``192.0.2.1`` for IPv4-mapped, ``2001:db8::1`` otherwise.

chDB runs one embedded server per process, and that server has a single data path. All engines of a process share
one in-memory chDB session (reference counted); each engine gets its own database for its views and its queries are
serialised with a ``USE`` of that database. Other code that needs chDB in-process should use :func:`chdb_session`.

Just over 500 lines: the engine and its two backends (chDB, a server) must present the same SQL surface.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from decoders.addresses import address_text
from decoders.schema import TABLES, Table
from storage.clickhouse.types import parquet_type
from storage.errors import QueryError
from storage.settings import StorageSettings

HOUR_MS = 3_600_000

FORMATS = ("table", "csv", "json")

# --- the process-wide chDB session ----------------------------------------------------------------------------------

_session_lock = threading.RLock()
_session: Any = None  # a chdb.session.Session (chDB ships no types)
_session_users = 0


@contextlib.contextmanager
def chdb_session() -> Iterator[Any]:
    """The process's shared in-memory chDB session, locked for the duration of the ``with`` block.

    chDB allows a single embedded server (one data path) per process; sharing one ``:memory:`` session lets several
    engines (and tests) coexist. Hold it only for a query or two: every chDB user of the process waits on the lock.
    """
    with _session_lock:
        if _session is None:
            raise RuntimeError("no chDB session open: create a ChdbBackend (or call acquire_chdb_session) first")
        yield _session


def acquire_chdb_session() -> None:
    """Open (or add a user to) the shared chDB session."""
    global _session, _session_users
    with _session_lock:
        if _session is None:
            from chdb.session import Session  # imported lazily: loading chDB costs about a second

            _session = Session(":memory:")  # type: ignore[no-untyped-call]
        _session_users += 1


def release_chdb_session() -> None:
    """Drop a user of the shared session; the last one closes it."""
    global _session, _session_users
    with _session_lock:
        _session_users -= 1
        if _session_users <= 0 and _session is not None:
            _session.close()
            _session, _session_users = None, 0


def chdb_session_users() -> int:
    """How many users (engines, :func:`holding_chdb_session` blocks) hold the shared session now."""
    with _session_lock:
        return _session_users


@contextlib.contextmanager
def holding_chdb_session() -> Iterator[None]:
    """Keep the shared chDB session open (as one more user) for the ``with`` block.

    For code and tests that need chDB in-process but are not a :class:`ChdbBackend` (a private
    ``chdb.session.Session(path)`` fails once any engine of the process has opened the shared one). Inside the block,
    take the lock per statement with :func:`chdb_session`; use a database name of your own and drop it afterwards, as
    the session (and its databases) outlives the block while other users hold it.
    """
    acquire_chdb_session()
    try:
        yield
    finally:
        release_chdb_session()


# --- backends -------------------------------------------------------------------------------------------------------


class QueryBackend(Protocol):
    """What :class:`QueryEngine` needs from a backend."""

    name: str

    def query(self, sql: str) -> pa.Table:
        """Run one statement; raise :class:`QueryError` on failure."""

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        """A FROM-clause expression for ``table``'s rows with ``t0_ms <= time_column < t1_ms``."""

    def close(self) -> None:
        """Release connections/sessions."""


_db_counter = itertools.count(1)


def _alternatives(values: list[str]) -> str:
    """A glob alternative: ``{a,b}`` (or the value itself when there is one)."""
    return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def structure(table: Table) -> str:
    """The ``file()`` structure argument of ``table``: its columns with ClickHouse types as stored in Parquet."""
    return ", ".join(f"`{c.name}` {parquet_type(c.kind)}" for c in table.columns)


def select_list(table: Table) -> str:
    """The view's columns: addresses as IPv6, everything else as stored."""
    return ", ".join(f"CAST(`{c.name}` AS IPv6) AS `{c.name}`" if c.kind == "ip" else f"`{c.name}`"
                     for c in table.columns)


def replacing(table: Table) -> bool:
    """Whether ``table`` is a ReplacingMergeTree on a server (its embedded views collapse duplicates)."""
    return table.engine == "ReplacingMergeTree"


def collapsed_select(table: Table, src: str, where: str | None = None) -> str:
    """``SELECT`` of ``table``'s view columns from ``src`` (optionally filtered by ``where`` first).

    For a ReplacingMergeTree table the rows are collapsed the way ``FINAL`` collapses them on a server: one row per
    sorting key (``order_by``), the one with the highest ``version_column`` (any one of identical re-sent rows when
    the table has no version column). A RADIUS usage journal replay or an IPDR crash-window re-send writes the same
    rows again in a new batch; without this the embedded store would count them twice. It is a ``GROUP BY`` of the
    key (filters on key columns are pushed below it), several times the cost of a plain scan on a full-table
    aggregate; the ``<table>_raw`` view reads the files as they are.
    """
    filtered = f" WHERE {where}" if where else ""
    if not replacing(table):
        return f"SELECT {select_list(table)} FROM {src}{filtered}"
    key = list(table.order_by)
    version = table.version_column if table.version_column not in key else None
    inner = [f"`{c}`" for c in key]
    for c in table.columns:
        if c.name in key:
            continue
        if c.name == version:
            agg = f"max(`{c.name}`)"
        elif version:
            agg = f"argMax(`{c.name}`, `{version}`)"
        else:
            agg = f"any(`{c.name}`)"
        # Aliased apart from the column names: an alias equal to a column would be seen inside other aggregates.
        inner.append(f"{agg} AS `__{c.name}`")
    outer = ", ".join(
        (f"CAST({ref} AS IPv6) AS `{c.name}`" if c.kind == "ip" else f"{ref} AS `{c.name}`") if c.name not in key
        else (f"CAST(`{c.name}` AS IPv6) AS `{c.name}`" if c.kind == "ip" else f"`{c.name}`")
        for c in table.columns for ref in [f"`__{c.name}`"])
    return (f"SELECT {outer} FROM (SELECT {', '.join(inner)} FROM {src}{filtered} "
            f"GROUP BY {', '.join(f'`{c}`' for c in key)})")


def file_vanished(message: str) -> bool:
    """Whether a chDB error says a file the query had listed is gone: compaction or retention removed it between
    the glob and the read (chDB reports it as FILE_DOESNT_EXIST, CANNOT_OPEN_FILE, or CANNOT_STAT with ENOENT)."""
    return "FILE_DOESNT_EXIST" in message or "CANNOT_OPEN_FILE" in message or (
        "CANNOT_STAT" in message and "errno: 2," in message)


class ChdbBackend:
    """The embedded store through chDB (see the module docstring)."""

    name = "store"

    def __init__(self, store_path: str | Path) -> None:
        self.root = Path(store_path).resolve()
        bad = set(str(self.root)) & set("*?{}[]'\\")
        if bad:
            raise ValueError(f"store path {self.root} contains characters chDB globs cannot take: {''.join(bad)}")
        self.database = f"flowmed_{next(_db_counter)}"
        self._views: set[str] = set()
        self._closed = False
        self.retried = 0
        """Queries run again because a file vanished under them (compaction, retention)."""
        acquire_chdb_session()
        try:
            with chdb_session() as s:
                s.query(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            self._refresh_views()
        except Exception:
            release_chdb_session()
            raise

    def holds_data(self) -> bool:
        """Whether the store has at least one complete file of a registered table (an empty or missing directory is
        most often a wrong ``store.path``, which would otherwise answer every query with nothing)."""
        return any(next((self.root / name).glob("date=*/hour=*/*.parquet"), None) is not None for name in TABLES)

    def glob(self, table: str) -> str:
        return str(self.root / table / "date=*" / "hour=*" / "*.parquet")

    def view_sql(self, table: Table) -> list[str]:
        """The statements that define ``table``'s views: the plain one, ``<name>_between`` over a time range and, for
        ReplacingMergeTree tables, ``<name>_raw`` (the files as they are, duplicates included)."""
        src = f"file({_sql_string(self.glob(table.name))}, Parquet, {_sql_string(structure(table))})"
        t = f"`{table.time_column}`"
        # Partition pruning: a file's hour partition (hive columns date/hour) must overlap [t0, t1).
        partition_hour = "toDateTime(date, 'UTC') + toIntervalHour(hour)"
        between = (f"{partition_hour} >= toStartOfHour({{t0:DateTime64(3, 'UTC')}}) "
                   f"AND {partition_hour} < {{t1:DateTime64(3, 'UTC')}} "
                   f"AND {t} >= {{t0:DateTime64(3, 'UTC')}} AND {t} < {{t1:DateTime64(3, 'UTC')}}")
        statements = [
            f"CREATE OR REPLACE VIEW {self.database}.`{table.name}` AS {collapsed_select(table, src)}",
            f"CREATE OR REPLACE VIEW {self.database}.`{table.name}_between` AS "
            f"{collapsed_select(table, src, between)}",
        ]
        if replacing(table):
            statements.append(f"CREATE OR REPLACE VIEW {self.database}.`{table.name}_raw` AS "
                              f"SELECT {select_list(table)} FROM {src}")
        return statements

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        """A FROM-clause subquery of ``table``'s rows with ``t0_ms <= time < t1_ms`` that reads only those hours.

        The glob names the partition directories of the range (``date={..}/hour={..}``), so chDB does not even list
        the other partitions; this is what makes a lookup in one hour of a year of data fast.
        """
        t = TABLES[table]
        first, last = t0_ms // HOUR_MS, max(t0_ms, t1_ms - 1) // HOUR_MS
        hours = [datetime.fromtimestamp(h * 3600, tz=UTC) for h in range(first, last + 1)] if last - first < 24 * 400 \
            else []
        if not hours:
            parts = "date=*/hour=*"
        elif len(hours) <= 24 * 7:
            dates = sorted({f"{h:%Y-%m-%d}" for h in hours})
            hh = sorted({f"{h:%H}" for h in hours})
            parts = f"date={_alternatives(dates)}/hour={_alternatives(hh)}"
        else:
            parts = f"date={_alternatives(sorted({f'{h:%Y-%m-%d}' for h in hours}))}/hour=*"
        glob = str(self.root / table / parts / "*.parquet")
        col = f"`{t.time_column}`"
        where = (f"{col} >= fromUnixTimestamp64Milli(toInt64({int(t0_ms)}), 'UTC') "
                 f"AND {col} < fromUnixTimestamp64Milli(toInt64({int(t1_ms)}), 'UTC')")
        src = f"file({_sql_string(glob)}, Parquet, {_sql_string(structure(t))})"
        return f"({collapsed_select(t, src, where)})"

    def _refresh_views(self) -> None:
        missing = [t for name, t in TABLES.items() if name not in self._views]
        if not missing:
            return
        with chdb_session() as s:
            for table in missing:
                for stmt in self.view_sql(table):
                    s.query(stmt)
                self._views.add(table.name)

    def query(self, sql: str, *, exact_types: bool = False) -> pa.Table:
        """Run ``sql``. chDB's Arrow output gives DateTime (seconds) as plain uint32; ``exact_types`` asks for
        Parquet output instead, which keeps them timestamps (slower for big results, so only for display)."""
        if self._closed:
            raise QueryError("query engine is closed")
        self._refresh_views()
        for attempt in range(10):  # a retry only follows a file vanishing under the query (housekeeping)
            try:
                with chdb_session() as s:
                    s.query(f"USE {self.database}")
                    if exact_types:
                        data = s.query(sql, "Parquet").bytes()
                        return pq.read_table(io.BytesIO(data)) if data else pa.table({})
                    result = s.query(sql, "ArrowTable")
                return result if isinstance(result, pa.Table) else pa.table({})
            except Exception as exc:  # chDB raises chdb._exceptions.ChdbError (not chdb.ChdbError) or RuntimeError
                text = str(exc)
                # A file listed by the glob was compacted or dropped before it was read: the next try sees the
                # directory as it is now.
                if attempt < 9 and file_vanished(text):
                    self.retried += 1
                    continue
                raise QueryError(self._public(text)) from None
        raise AssertionError("unreachable")

    def _public(self, message: str) -> str:
        """An error message without this engine's private database name (``Maybe you meant flowmed_1.flows?``)."""
        message = re.sub(rf"`?\b{self.database}\b`?\.", "", message)
        return re.sub(rf"\b{self.database}\b", "the store", message)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception), chdb_session() as s:
            s.query(f"DROP DATABASE IF EXISTS {self.database}")
        release_chdb_session()


# --- the engine -----------------------------------------------------------------------------------------------------


class QueryEngine:
    """Runs SQL on a backend; results are pyarrow Tables with addresses as text."""

    def __init__(self, backend: QueryBackend) -> None:
        self.backend = backend

    @classmethod
    def for_store(cls, store_path: str | Path) -> QueryEngine:
        """An engine over the embedded Parquet store at ``store_path``."""
        return cls(ChdbBackend(store_path))

    @classmethod
    def for_config(cls, config: StorageSettings, target: str = "auto", *, server_readonly: int = 2) -> QueryEngine:
        """The engine for ``target``: ``store`` (embedded), ``clickhouse`` (server) or ``auto``.

        ``auto`` is the embedded store when ``[store] enabled``, else the ClickHouse server when
        ``[output.clickhouse] enabled``, else the embedded store. ``server_readonly`` is the ``readonly`` level a
        server gets with every query (``1`` also refuses table functions on it; see
        :mod:`storage.clickhouse.query`).
        """
        if target == "auto":
            if not config.store.enabled and config.output.clickhouse.enabled:
                target = "clickhouse"
            else:
                target = "store"
        if target == "store":
            return cls(ChdbBackend(config.store.path))
        if target == "clickhouse":
            from storage.clickhouse.query import ClickHouseBackend

            return cls(ClickHouseBackend.from_config(config, readonly=server_readonly))
        raise ValueError(f"unknown query target {target!r}: expected auto, store or clickhouse")

    @property
    def target(self) -> str:
        return self.backend.name

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        """A FROM-clause expression for ``table``'s rows with ``t0_ms <= time_column < t1_ms``, for lookups.

        The same SQL then runs on every backend: ``f"SELECT ... FROM {engine.source('flows', a, b)} WHERE ..."``.
        Each backend builds it (:meth:`QueryBackend.source`): the embedded store reads only the hour partitions of
        the range; a server compares the bounds in whole seconds.
        """
        return self.backend.source(table, t0_ms, t1_ms)

    def query(self, sql: str, *, text_addresses: bool = True, exact_types: bool = False) -> pa.Table:
        """Run ``sql``; with ``text_addresses``, 16-byte binary columns come back as address text; with
        ``exact_types`` (for display), DateTime results are timestamps on every backend."""
        if exact_types and isinstance(self.backend, ChdbBackend):
            result = self.backend.query(sql, exact_types=True)
        else:
            result = self.backend.query(sql)
        return format_addresses(result) if text_addresses else result

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- result formatting ----------------------------------------------------------------------------------------------


def address_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """16-byte addresses as text (:func:`decoders.addresses.address_text`), formatting each distinct value once (a
    result has few distinct addresses)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    uniques = pc.unique(column).drop_null()
    texts = pa.array([address_text(v) for v in uniques.to_pylist()], type=pa.string())
    return pc.take(texts, pc.index_in(column, value_set=uniques))


def _is_address(t: pa.DataType) -> bool:
    return bool(pa.types.is_fixed_size_binary(t) and t.byte_width == 16)


def format_addresses(table: pa.Table) -> pa.Table:
    """``table`` with every ``fixed_size_binary(16)`` column (IPv6 / FixedString(16) addresses) as text, also
    inside arrays (``groupArray(src_addr)``)."""
    for i, f in enumerate(table.schema):
        if _is_address(f.type):
            table = table.set_column(i, pa.field(f.name, pa.string(), f.nullable), address_strings(table.column(i)))
        elif pa.types.is_list(f.type) and _is_address(f.type.value_type):
            lists = table.column(i).combine_chunks()
            lengths = pc.fill_null(pc.list_value_length(lists), 0).cast(pa.int32())
            offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths)])
            texts = pa.ListArray.from_arrays(offsets, address_strings(pc.list_flatten(lists)), mask=lists.is_null())
            table = table.set_column(i, pa.field(f.name, texts.type, f.nullable), texts)
    return table


def _is_nested(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_struct(t) or pa.types.is_map(t))


def _cell(value: object) -> object:
    """A value for text output: timestamps as ``YYYY-MM-DD HH:MM:SS.mmm`` UTC, bytes as hex, arrays, tuples and
    maps as JSON."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    if isinstance(value, bytes):
        return value.hex()
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple | dict):
        return json.dumps(_json_value(value), ensure_ascii=False)
    return value


def render(table: pa.Table, fmt: str = "table") -> str:
    """``table`` as aligned text (``table``), CSV with a header (``csv``) or one JSON object per line (``json``)."""
    if fmt == "csv":
        sink = pa.BufferOutputStream()
        pacsv.write_csv(_textual(table), sink)
        return str(sink.getvalue().to_pybytes().decode())
    rows = table.to_pylist()
    if fmt == "json":
        return "".join(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n" for row in rows)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    names = table.column_names
    cells = [[str(_cell(row[n])) for n in names] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
               for f in table.schema]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out) + "\n"


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):  # arrays; maps come as lists of (key, value) tuples
        return [_json_value(v) for v in value]
    if isinstance(value, dict):  # tuples with names
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)  # Decimal, date, ...


def _textual(table: pa.Table) -> pa.Table:
    """Timestamps as UTC text with milliseconds, binary as hex, and arrays, tuples and maps as JSON, for CSV (which
    has no nested values)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            col = pc.strftime(table.column(i).cast(pa.timestamp("ms", tz="UTC")), format="%Y-%m-%d %H:%M:%S",
                              locale="C")
            # pc.strftime with %S prints fractional seconds for ms timestamps ("12:00:01.000").
            table = table.set_column(i, pa.field(f.name, pa.string()), col)
        elif pa.types.is_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            hexes = pa.array([None if v is None else v.hex() for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, pa.field(f.name, pa.string()), hexes)
        elif _is_nested(f.type):
            texts = pa.array([None if v is None else json.dumps(_json_value(v), ensure_ascii=False)
                              for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, pa.field(f.name, pa.string()), texts)
    return table
