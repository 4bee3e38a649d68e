"""ClickHouse DDL generated from :data:`decoders.schema.TABLES`, per server generation.

Nothing here is hand-written per table: every ``Table`` registered in the schema gets the same treatment, so the
tables later work adds (usage, rejects, rated_usage, ...) are created and migrated like ``flows``.

Two server generations matter (see :class:`ServerCaps`):

* **modern** (20.x and later; chDB carries 26.x): ``IPv6``, ``DateTime64(3, 'UTC')``, column codecs,
  ``LowCardinality`` and ``TTL ... SETTINGS ttl_only_drop_parts = 1`` for retention (whole parts are dropped, never
  rewritten);
* **legacy** (Debian's 18.16): ``FixedString(16)`` addresses, ``DateTime('UTC')`` (second resolution: the
  milliseconds of a ``timestamp_ms`` column are truncated), no codecs, no ``LowCardinality`` (experimental there), no
  TTL: retention drops whole partitions from a periodic job (:meth:`SchemaManager.drop_expired_partitions`).

Every table also gets a read view of the same name in ``<database>_read``: there, addresses read as text on both
generations (``IPv6NumToString`` over ``FixedString(16)`` on 18.16, the ``IPv6`` type on modern servers) and
``ReplacingMergeTree`` tables are read ``FINAL``, so the same SQL returns the same answers on both and on the
embedded store. ``flowmed query`` against a server reads that database.

Schema changes between flowmed versions are migrated: :meth:`SchemaManager.ensure` compares ``system.columns`` with
the wanted columns, adds missing columns with ``ALTER TABLE ... ADD COLUMN`` and reports (never silently rewrites)
columns whose type differs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from decoders.schema import Column, Table

log = logging.getLogger(__name__)

Executor = Callable[[str], list[tuple]]
"""Runs one SQL statement and returns its rows (tuples); raises on a server error."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_ident(name: str) -> str:
    """A validated identifier (database, table, column or cluster name), back-quoted."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe ClickHouse identifier: {name!r}")
    return f"`{name}`"


@dataclass(frozen=True)
class ServerCaps:
    """What a server offers, from its version (``SELECT version()``)."""

    version: tuple[int, ...]
    ipv6: bool
    datetime64: bool
    codecs: bool
    low_cardinality: bool
    ttl: bool
    insert_deduplication_token: bool
    non_replicated_deduplication_window: bool

    @classmethod
    def from_version(cls, version: str) -> ServerCaps:
        """Capabilities of server ``version`` such as ``"18.16.1"`` or ``"26.9.2.1"``."""
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:4])
        major_minor = (parts + (0, 0))[:2]
        # The thresholds are the releases where each feature became generally usable (not experimental).
        return cls(
            version=parts,
            ipv6=major_minor >= (19, 3),
            datetime64=major_minor >= (20, 1),
            codecs=major_minor >= (19, 10),
            low_cardinality=major_minor >= (19, 4),
            ttl=major_minor >= (19, 15),  # ttl_only_drop_parts arrived in 19.15
            insert_deduplication_token=major_minor >= (22, 2),
            non_replicated_deduplication_window=major_minor >= (21, 1),
        )

    @property
    def modern(self) -> bool:
        """All of the modern features (the DDL generation's two paths)."""
        return self.ipv6 and self.datetime64 and self.codecs and self.low_cardinality and self.ttl

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)


LEGACY = ServerCaps.from_version("18.16.1")
MODERN = ServerCaps.from_version("26.1")

_SCALAR = {"u8": "UInt8", "u16": "UInt16", "u32": "UInt32", "u64": "UInt64", "i32": "Int32", "i64": "Int64",
           "string": "String"}


def column_type(column: Column, caps: ServerCaps) -> str:
    """The ClickHouse type of ``column`` on a server with ``caps`` (without codec)."""
    if column.kind == "timestamp_ms":
        base = "DateTime64(3, 'UTC')" if caps.datetime64 else "DateTime('UTC')"
    elif column.kind == "ip":
        base = "IPv6" if caps.ipv6 else "FixedString(16)"
    else:
        base = _SCALAR[column.kind]
    if column.low_cardinality and caps.low_cardinality and column.kind != "timestamp_ms":
        return f"LowCardinality({base})"
    return base


def column_sql(column: Column, caps: ServerCaps) -> str:
    """``name Type [CODEC(...)]`` for a CREATE or ADD COLUMN."""
    sql = f"{quote_ident(column.name)} {column_type(column, caps)}"
    # LowCardinality columns are dictionary-encoded already; a codec on them is refused by some versions.
    if column.codec and caps.codecs and not (column.low_cardinality and caps.low_cardinality):
        sql += f" CODEC({column.codec})"
    return sql


def partition_expr(table: Table) -> str:
    """PARTITION BY expression: one partition per day or month of the time column."""
    fn = {"day": "toYYYYMMDD", "month": "toYYYYMM"}[table.partition]
    return f"{fn}({quote_ident(table.time_column)})"


def engine_sql(table: Table) -> str:
    if table.engine == "MergeTree":
        return "MergeTree"
    if table.engine == "ReplacingMergeTree":
        return f"ReplacingMergeTree({quote_ident(table.version_column)})" if table.version_column \
            else "ReplacingMergeTree"
    raise ValueError(f"table {table.name}: unsupported engine {table.engine!r}")


def ttl_sql(table: Table, retention_days: int) -> str:
    return f"toDateTime({quote_ident(table.time_column)}) + toIntervalDay({int(retention_days)})"


def create_table_sql(table: Table, caps: ServerCaps, database: str, *, name: str | None = None,
                     retention_days: int = 0, on_cluster: str | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` (optionally under another ``name``, e.g. ``flows_local``)."""
    cols = ",\n    ".join(column_sql(c, caps) for c in table.columns)
    cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
    order = ", ".join(quote_ident(c) for c in table.order_by)
    sql = (f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(name or table.name)}{cluster}\n"
           f"(\n    {cols}\n)\nENGINE = {engine_sql(table)}\nPARTITION BY {partition_expr(table)}\n"
           f"ORDER BY ({order})")
    settings = ["index_granularity = 8192"]
    if caps.non_replicated_deduplication_window:
        # Lets insert_deduplication_token drop a retried batch on non-replicated tables too.
        settings.append("non_replicated_deduplication_window = 1000")
    if retention_days > 0 and caps.ttl:
        sql += f"\nTTL {ttl_sql(table, retention_days)}"
        settings.append("ttl_only_drop_parts = 1")
    return sql + "\nSETTINGS " + ", ".join(settings)


def sharding_key(table: Table) -> str:
    """Distributed sharding key: a whole batch on one shard (so the batch_id check and cleanup stay on one
    server), or rows with the same ReplacingMergeTree key on the same shard (so replacement works)."""
    if "batch_id" in table.column_names and table.engine == "MergeTree":
        return "intHash64(`batch_id`)"
    if table.engine == "ReplacingMergeTree":
        return "sipHash64(" + ", ".join(quote_ident(c) for c in table.order_by) + ")"
    return "rand()"


def create_distributed_sql(table: Table, caps: ServerCaps, database: str, cluster: str, local_name: str,
                           *, on_cluster: bool = False) -> str:
    """``CREATE TABLE <t> ... ENGINE = Distributed(cluster, db, <t>_local, key)``."""
    cols = ",\n    ".join(f"{quote_ident(c.name)} {column_type(c, caps)}" for c in table.columns)
    where = f" ON CLUSTER {quote_ident(cluster)}" if on_cluster else ""
    return (f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(table.name)}{where}\n"
            f"(\n    {cols}\n)\nENGINE = Distributed({quote_ident(cluster)}, {quote_ident(database)}, "
            f"{quote_ident(local_name)}, {sharding_key(table)})")


def read_view_sql(table: Table, caps: ServerCaps, database: str, read_database: str) -> str:
    """The read view: addresses as text on every generation, ReplacingMergeTree tables read FINAL."""
    exprs = []
    for c in table.columns:
        q = quote_ident(c.name)
        exprs.append(f"IPv6NumToString({q}) AS {q}" if c.kind == "ip" and not caps.ipv6 else q)
    final = " FINAL" if table.engine == "ReplacingMergeTree" else ""
    return (f"CREATE VIEW {quote_ident(read_database)}.{quote_ident(table.name)} AS SELECT "
            + ", ".join(exprs) + f" FROM {quote_ident(database)}.{quote_ident(table.name)}{final}")


def _norm_view(sql: str) -> str:
    """A view definition without quoting and spacing differences (servers print them back their own way)."""
    return re.sub(r"[\s`]+", "", sql).lower()


def _norm_type(t: str) -> str:
    return re.sub(r"\s+", "", t).replace('"', "'")


@dataclass
class MigrationReport:
    """What :meth:`SchemaManager.ensure` did and found."""

    created: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    type_mismatches: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    ttl_changed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created table {t}" for t in self.created]
        out += [f"added column {c}" for c in self.added_columns]
        out += [f"TYPE MISMATCH (not migrated, fix by hand) {m}" for m in self.type_mismatches]
        out += [f"column not in flowmed's schema (left alone) {c}" for c in self.extra_columns]
        out += [f"retention TTL changed on {t}" for t in self.ttl_changed]
        return out


class SchemaManager:
    """Creates and migrates flowmed's tables on one server or a cluster, idempotently.

    ``execute`` runs SQL on the server flowmed writes to. In cluster mode ``host_executors`` run SQL on every
    shard/replica (``<t>_local`` tables and the ``Distributed`` tables are created on each, which needs no
    ZooKeeper); with ``use_on_cluster`` the statements are sent once with ``ON CLUSTER`` instead (distributed DDL,
    which needs ZooKeeper on the servers).
    """

    def __init__(self, execute: Executor, caps: ServerCaps, database: str, *, cluster: str = "",
                 host_executors: Sequence[Executor] = (), use_on_cluster: bool = False,
                 retention_days: dict[str, int] | None = None, read_database: str | None = None) -> None:
        quote_ident(database)
        self.execute = execute
        self.caps = caps
        self.database = database
        self.read_database = read_database or f"{database}_read"
        quote_ident(self.read_database)
        self.cluster = cluster
        self.host_executors = list(host_executors) or [execute]
        self.use_on_cluster = use_on_cluster
        self.retention_days = dict(retention_days or {})

    # ---- names -------------------------------------------------------------------------------------------------
    def storage_name(self, table: Table) -> str:
        """The MergeTree table's name: ``<t>_local`` in cluster mode, else ``<t>``."""
        return f"{table.name}_local" if self.cluster else table.name

    # ---- create and migrate ------------------------------------------------------------------------------------
    def ensure(self, tables: Iterable[Table]) -> MigrationReport:
        """Create the database, every table and its read view; add missing columns. Safe to run at every start."""
        report = MigrationReport()
        tables = list(tables)
        db = quote_ident(self.database)
        if self.caps.low_cardinality:
            # LowCardinality over IPv6 and small numbers is refused unless allowed (it pays off for exporters).
            for run in {id(r): r for r in [self.execute, *self.host_executors]}.values():
                try:
                    run("SET allow_suspicious_low_cardinality_types = 1")
                except Exception as exc:  # noqa: BLE001 - a read-only user: only needed when DDL has work to do
                    log.debug("cannot SET allow_suspicious_low_cardinality_types: %s", exc)
        # Statements are only sent when there is something to do, so a user without DDL rights can write into a
        # schema that is already up to date.
        if self.cluster and self.use_on_cluster:
            if not self._database_exists(self.execute, self.database):
                self.execute(f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {quote_ident(self.cluster)}")
        else:
            for run in self.host_executors:
                if not self._database_exists(run, self.database):
                    run(f"CREATE DATABASE IF NOT EXISTS {db}")
        if not self._database_exists(self.execute, self.read_database):
            self.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.read_database)}")
        for table in tables:
            self._ensure_table(table, report)
        for line in report.lines():
            (log.warning if "MISMATCH" in line else log.info)("clickhouse schema: %s", line)
        return report

    @staticmethod
    def _database_exists(run: Executor, name: str) -> bool:
        rows = run(f"SELECT count() FROM system.databases WHERE name = '{name}'")
        return bool(rows and rows[0][0])

    def _storage_runners(self) -> list[Executor]:
        return [self.execute] if (self.cluster and self.use_on_cluster) else self.host_executors

    def _ensure_table(self, table: Table, report: MigrationReport) -> None:
        local = self.storage_name(table)
        retention = self.retention_days.get(table.name, 0)
        on_cluster = self.cluster if (self.cluster and self.use_on_cluster) else None
        for run in self._storage_runners():
            if not self._exists(run, local):
                run(create_table_sql(table, self.caps, self.database, name=local, retention_days=retention,
                                     on_cluster=on_cluster))
                report.created.append(f"{self.database}.{local}")
            else:
                self._migrate_columns(run, table, local, report, on_cluster)
                self._migrate_ttl(run, table, local, retention, report, on_cluster)
        if self.cluster:
            for run in ([self.execute] if self.use_on_cluster else self.host_executors):
                if self._exists(run, table.name):
                    self._migrate_columns(run, table, table.name, report, on_cluster, with_codec=False)
                else:
                    run(create_distributed_sql(table, self.caps, self.database, self.cluster, local,
                                               on_cluster=self.use_on_cluster))
                    report.created.append(f"{self.database}.{table.name} (Distributed)")
        # The read view has no data: it is recreated whenever its definition is not the wanted one.
        view = read_view_sql(table, self.caps, self.database, self.read_database)
        rows = self.execute(f"SELECT create_table_query FROM system.tables WHERE database = '{self.read_database}' "
                            f"AND name = '{table.name}'")
        select = view[view.index(" AS SELECT ") + 4:]
        if not rows or not _norm_view(rows[0][0]).endswith(_norm_view(select)):
            self.execute(f"DROP TABLE IF EXISTS {quote_ident(self.read_database)}.{quote_ident(table.name)}")
            self.execute(view)

    def _exists(self, run: Executor, name: str) -> bool:
        rows = run(f"SELECT count() FROM system.tables WHERE database = '{self.database}' AND name = '{name}'")
        return bool(rows and rows[0][0])

    def _migrate_columns(self, run: Executor, table: Table, name: str, report: MigrationReport,
                         on_cluster: str | None, with_codec: bool = True) -> None:
        rows = run(f"SELECT name, type FROM system.columns WHERE database = '{self.database}' AND table = '{name}'")
        have = {r[0]: r[1] for r in rows}
        cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
        previous: str | None = None
        for c in table.columns:
            want = column_type(c, self.caps)
            if c.name not in have:
                spec = column_sql(c, self.caps) if with_codec else f"{quote_ident(c.name)} {want}"
                after = f" AFTER {quote_ident(previous)}" if previous else ""
                run(f"ALTER TABLE {quote_ident(self.database)}.{quote_ident(name)}{cluster} ADD COLUMN {spec}{after}")
                report.added_columns.append(f"{self.database}.{name}.{c.name} {want}")
            elif _norm_type(have[c.name]) != _norm_type(want):
                report.type_mismatches.append(
                    f"{self.database}.{name}.{c.name}: server has {have[c.name]}, flowmed wants {want}")
            previous = c.name
        for extra in sorted(set(have) - set(table.column_names)):
            report.extra_columns.append(f"{self.database}.{name}.{extra} {have[extra]}")

    def _migrate_ttl(self, run: Executor, table: Table, name: str, retention: int, report: MigrationReport,
                     on_cluster: str | None) -> None:
        if not self.caps.ttl:
            return
        rows = run(f"SELECT engine_full FROM system.tables WHERE database = '{self.database}' AND name = '{name}'")
        engine_full = rows[0][0] if rows else ""
        has_ttl = " TTL " in f" {engine_full} "
        cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
        target = f"{quote_ident(self.database)}.{quote_ident(name)}{cluster}"
        if retention > 0 and f"toIntervalDay({retention})" not in engine_full:
            run(f"ALTER TABLE {target} MODIFY TTL {ttl_sql(table, retention)}")
            report.ttl_changed.append(f"{self.database}.{name} -> {retention} days")
        elif retention <= 0 and has_ttl:
            run(f"ALTER TABLE {target} REMOVE TTL")
            report.ttl_changed.append(f"{self.database}.{name} -> kept forever")

    # ---- retention without TTL ---------------------------------------------------------------------------------
    def drop_expired_partitions(self, tables: Iterable[Table], now_ms: int) -> list[tuple[str, str]]:
        """Retention on servers without TTL: drop whole partitions entirely older than the table's retention.

        A partition is dropped only when its last day (or month) ends before ``now - retention``, so no row
        younger than the retention is ever removed. Returns the ``(table, partition)`` pairs dropped. On servers
        with TTL this does nothing (the TTL drops parts itself).
        """
        dropped: list[tuple[str, str]] = []
        if self.caps.ttl:
            return dropped
        for table in tables:
            days = self.retention_days.get(table.name, 0)
            if days <= 0:
                continue
            cutoff = _cutoff_partition(now_ms - days * 86_400_000, table.partition)
            name = self.storage_name(table)
            for run in self._storage_runners():
                rows = run(f"SELECT DISTINCT partition FROM system.parts WHERE database = '{self.database}' "
                           f"AND table = '{name}' AND active")
                for (partition,) in rows:
                    value = partition.strip("'")
                    if value.isdigit() and int(value) < cutoff:
                        run(f"ALTER TABLE {quote_ident(self.database)}.{quote_ident(name)} DROP PARTITION {value}")
                        dropped.append((name, value))
                        log.info("retention: dropped partition %s of %s.%s (older than %d days)",
                                 value, self.database, name, days)
        return dropped


def _cutoff_partition(cutoff_ms: int, partition: str) -> int:
    """The partition value (YYYYMMDD or YYYYMM) holding ``cutoff_ms``: partitions below it are entirely older."""
    import datetime as dt

    day = dt.datetime.fromtimestamp(cutoff_ms / 1000, tz=dt.UTC)
    return int(day.strftime("%Y%m%d" if partition == "day" else "%Y%m"))
