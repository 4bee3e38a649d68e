"""ClickHouse DDL generated from :data:`decoders.schema.TABLES`, per server generation.

Nothing here is hand-written per table: every ``Table`` registered in the schema gets the same treatment, so the
tables later work adds (usage, rejects, rated_usage, ...) are created and migrated like ``flows``.

Two server generations matter (see :class:`ServerCaps`):

* **modern** (20.x and later; chDB carries 26.x): ``IPv6``, ``DateTime64(3, 'UTC')``, column codecs,
  ``LowCardinality`` and ``TTL ... SETTINGS ttl_only_drop_parts = 1`` for retention (whole parts are dropped, never
  rewritten);
* **legacy** (Debian's 18.16): ``FixedString(16)`` addresses, ``DateTime('UTC')`` (second resolution: the
  milliseconds of a ``timestamp_ms`` column are truncated), no codecs, no ``LowCardinality`` (experimental there), no
  TTL: retention drops whole partitions from a periodic job (``SchemaManager.drop_expired_partitions``).

Every table also gets a read view of the same name in ``<database>_read``: there, addresses read as text on both
generations (``IPv6NumToString`` over ``FixedString(16)`` on 18.16, the ``IPv6`` type on modern servers) and
``ReplacingMergeTree`` tables are read ``FINAL``, so the same SQL returns the same answers on both and on the
embedded store. ``flowmed query`` against a server reads that database.

This module is the SQL text; :class:`storage.clickhouse.schema.SchemaManager` sends it. Schema changes between
flowmed versions are migrated: ``SchemaManager.ensure`` compares ``system.columns`` with the wanted columns, adds
missing columns with ``ALTER TABLE ... ADD COLUMN`` and reports (never silently rewrites) columns whose type differs.

On a cluster (``SchemaManager``, docs/cluster.md) every table is ``<t>_local`` on each node plus a
``Distributed`` table ``<t>``; with replication the local tables are ``ReplicatedMergeTree`` /
``ReplicatedReplacingMergeTree`` (:class:`Replication`, the same statements on 18.16 with ZooKeeper and on modern
servers with ClickHouse Keeper) and the DDL goes ``ON CLUSTER``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from decoders.schema import Column, Table
from storage.clickhouse.types import kind_type

Executor = Callable[[str], list[tuple[Any, ...]]]
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


def column_type(column: Column, caps: ServerCaps) -> str:
    """The ClickHouse type of ``column`` on a server with ``caps`` (without codec)."""
    base = kind_type(column.kind, datetime64=caps.datetime64, ipv6=caps.ipv6)
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


EVERYWHERE = frozenset({"rating_lease"})
"""Tables that a replicated cluster keeps whole on every node (one replicated table, no shards, no Distributed
table): the rating lease, whose rows every rating host must read back from the node it is connected to."""


@dataclass(frozen=True)
class Replication:
    """Replicated engines for a cluster: where the tables keep their metadata in ZooKeeper (or ClickHouse Keeper).

    A sharded table ``<t>_local`` is ``Replicated*MergeTree('<path>/tables/{shard}/<db>/<t>_local', '{replica}')``:
    the servers' ``{shard}`` and ``{replica}`` macros make one replica set per shard. A table kept on every node
    (:data:`EVERYWHERE`) has one replica set over the whole cluster, ``'<path>/tables/all/<db>/<t>'`` with replica
    name ``'{shard}-{replica}'`` (unique over the cluster).
    """

    zookeeper_path: str = "/clickhouse/flowmed"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", self.zookeeper_path):
            raise ValueError(f"not a safe ZooKeeper path: {self.zookeeper_path!r}")

    def arguments(self, database: str, name: str, everywhere: bool = False) -> str:
        """The engine's first two arguments: the table's ZooKeeper path and its replica name."""
        quote_ident(database)
        quote_ident(name)
        if everywhere:
            return f"'{self.zookeeper_path}/tables/all/{database}/{name}', '{{shard}}-{{replica}}'"
        return f"'{self.zookeeper_path}/tables/{{shard}}/{database}/{name}', '{{replica}}'"


def engine_sql(table: Table, replication: Replication | None = None, *, database: str = "", name: str = "",
               everywhere: bool = False) -> str:
    """The table engine: ``MergeTree`` / ``ReplacingMergeTree(version)``, or their ``Replicated`` variants with
    ``replication`` (``database`` and ``name`` then give the ZooKeeper path)."""
    if table.engine not in ("MergeTree", "ReplacingMergeTree"):
        raise ValueError(f"table {table.name}: unsupported engine {table.engine!r}")
    args = [replication.arguments(database, name or table.name, everywhere)] if replication else []
    if table.engine == "ReplacingMergeTree" and table.version_column:
        args.append(quote_ident(table.version_column))
    engine = ("Replicated" if replication else "") + table.engine
    return f"{engine}({', '.join(args)})" if args else engine


def ttl_sql(table: Table, retention_days: int) -> str:
    return f"toDateTime({quote_ident(table.time_column)}) + toIntervalDay({int(retention_days)})"


def create_table_sql(table: Table, caps: ServerCaps, database: str, *, name: str | None = None,
                     retention_days: int = 0, on_cluster: str | None = None,
                     replication: Replication | None = None, everywhere: bool = False) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` (optionally under another ``name``, e.g. ``flows_local``);
    ``replication`` makes it a Replicated engine (``everywhere``: one replica set over the whole cluster)."""
    cols = ",\n    ".join(column_sql(c, caps) for c in table.columns)
    cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
    order = ", ".join(quote_ident(c) for c in table.order_by)
    engine = engine_sql(table, replication, database=database, name=name or table.name, everywhere=everywhere)
    sql = (f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(name or table.name)}{cluster}\n"
           f"(\n    {cols}\n)\nENGINE = {engine}\nPARTITION BY {partition_expr(table)}\n"
           f"ORDER BY ({order})")
    settings = ["index_granularity = 8192"]
    if replication is not None:
        # A re-sent batch is dropped by the replicas' block de-duplication: by identical blocks (18.16) or by
        # insert_deduplication_token (modern). Remember more blocks than the default 100, so a batch retried after
        # a while, with other hosts inserting meanwhile, is still recognised (ZooKeeper keeps a hash per block).
        settings.append(f"replicated_deduplication_window = {DEDUPLICATION_WINDOW}")
    elif caps.non_replicated_deduplication_window:
        # Lets insert_deduplication_token drop a retried batch on non-replicated tables too.
        settings.append(f"non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}")
    if retention_days > 0 and caps.ttl:
        sql += f"\nTTL {ttl_sql(table, retention_days)}"
        settings.append("ttl_only_drop_parts = 1")
    return sql + "\nSETTINGS " + ", ".join(settings)


DEDUPLICATION_WINDOW = 1000
"""Inserted blocks per table (per shard) whose hashes the server keeps to drop a re-sent one."""


def sharding_key(table: Table) -> str:
    """Distributed sharding key: a whole batch on one shard (so the batch_id check stays on one shard, and a re-sent
    batch reaches the same shard as one identical block, which its replicas drop as a duplicate), or rows with the
    same ReplacingMergeTree key on the same shard (so replacement works; a re-sent batch splits the same way)."""
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


def read_view_sql(table: Table, caps: ServerCaps, database: str, read_database: str, *,
                  on_cluster: str | None = None) -> str:
    """The read view: addresses as text on every generation, ReplacingMergeTree tables read FINAL."""
    exprs = []
    for c in table.columns:
        q = quote_ident(c.name)
        exprs.append(f"IPv6NumToString({q}) AS {q}" if c.kind == "ip" and not caps.ipv6 else q)
    final = " FINAL" if table.engine == "ReplacingMergeTree" else ""
    cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
    return (f"CREATE VIEW {quote_ident(read_database)}.{quote_ident(table.name)}{cluster} AS SELECT "
            + ", ".join(exprs) + f" FROM {quote_ident(database)}.{quote_ident(table.name)}{final}")


def ddl_statements(tables: Iterable[Table], caps: ServerCaps, database: str, *, cluster: str = "",
                   replicated: bool = False, zookeeper_path: str = "/clickhouse/flowmed",
                   retention_days: dict[str, int] | None = None) -> list[str]:
    """Every statement that creates flowmed's schema (``flowmed clickhouse ddl``), without the ';'.

    Without a cluster they run on the one server; a cluster without replication runs them on every node; a replicated
    cluster runs them once (``ON CLUSTER``: the servers' distributed DDL queue applies them on every node, also on a
    node that is down now, when it comes back).
    """
    retention = dict(retention_days or {})
    replication = Replication(zookeeper_path) if replicated and cluster else None
    on = cluster if replication else None
    where = f" ON CLUSTER {quote_ident(cluster)}" if on else ""
    read_db = f"{database}_read"
    out = [f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}{where}",
           f"CREATE DATABASE IF NOT EXISTS {quote_ident(read_db)}{where}"]
    if caps.low_cardinality:
        out.append("SET allow_suspicious_low_cardinality_types = 1")
    for table in tables:
        everywhere = replication is not None and table.name in EVERYWHERE
        local = f"{table.name}_local" if cluster and not everywhere else table.name
        out.append(create_table_sql(table, caps, database, name=local, retention_days=retention.get(table.name, 0),
                                    on_cluster=on, replication=replication, everywhere=everywhere))
        if cluster and not everywhere:
            out.append(create_distributed_sql(table, caps, database, cluster, local, on_cluster=bool(on)))
        out.append(read_view_sql(table, caps, database, read_db, on_cluster=on))
    return out


class HostUnreachable(Exception):
    """The server an :data:`Executor` talks to cannot be reached (refused, timed out, connection lost).

    Executors raise it (instead of the driver's errors) so the schema check of a cluster can leave out a host that
    is down, rather than stop every insert until that host is back.
    """


