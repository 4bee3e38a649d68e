"""The schema check of a ClickHouse server or cluster: :class:`SchemaManager` creates flowmed's tables, databases and
read views where they are missing, migrates columns and TTLs between flowmed versions (adding, never silently
rewriting: a column whose type differs is reported), and drops expired partitions on servers without TTL. The SQL it
sends comes from :mod:`storage.clickhouse.ddl`."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from decoders.schema import Table
from storage.clickhouse.ddl import (
    EVERYWHERE,
    Executor,
    HostUnreachable,
    Replication,
    ServerCaps,
    column_sql,
    column_type,
    create_distributed_sql,
    create_table_sql,
    quote_ident,
    read_view_sql,
    ttl_sql,
)

log = logging.getLogger(__name__)


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

    ``execute`` runs SQL on the server flowmed is connected to. Three ways to lay out a cluster:

    * per host (``cluster`` without ZooKeeper): ``host_executors`` run SQL on every node; ``<t>_local`` and the
      ``Distributed`` table ``<t>`` are created on each. A node that cannot be reached (:class:`HostUnreachable`)
      is left out and logged; the next check (every reconnect) creates what it lacks once it is back;
    * ``use_on_cluster`` (the servers have ZooKeeper): the same tables, the DDL sent once ``ON CLUSTER``;
    * ``replicated``: ``Replicated*MergeTree`` local tables (:class:`Replication`) and, for :data:`EVERYWHERE`
      tables, one replicated table on every node instead of a Distributed one; DDL ``ON CLUSTER``.

    With ``ON CLUSTER`` the schema is checked on the connected server only (plus ``host_executors`` when given:
    ``flowmed clickhouse migrate`` checks every node, e.g. after adding one): a node that is down neither stops the
    check nor the inserts, and the servers' DDL queue brings it up to date when it comes back. A DDL statement waits
    ``ddl_timeout_s`` for every node; past that (a node is down) the rest of the run only queues its statements.
    """

    def __init__(self, execute: Executor, caps: ServerCaps, database: str, *, cluster: str = "",
                 host_executors: Sequence[Executor] = (), use_on_cluster: bool = False, replicated: bool = False,
                 zookeeper_path: str = "/clickhouse/flowmed", ddl_timeout_s: float = 30.0,
                 retention_days: dict[str, int] | None = None, read_database: str | None = None) -> None:
        quote_ident(database)
        self.execute = execute
        self.caps = caps
        self.database = database
        self.read_database = read_database or f"{database}_read"
        quote_ident(self.read_database)
        if cluster:
            quote_ident(cluster)
        if replicated and not cluster:
            raise ValueError("replicated tables need a cluster")
        self.cluster = cluster
        self.replication = Replication(zookeeper_path) if replicated else None
        self.use_on_cluster = bool(cluster) and (use_on_cluster or replicated)
        self.host_executors = list(host_executors)
        self.ddl_timeout_s = ddl_timeout_s
        self.retention_days = dict(retention_days or {})
        self.unreachable: list[str] = []
        """Hosts left out of the last check because they could not be reached (down)."""
        self._ddl_wait = ddl_timeout_s
        self._ddl_wait_sent: int | None = None

    # ---- names -------------------------------------------------------------------------------------------------
    def everywhere(self, table: Table) -> bool:
        """Whether ``table`` is one replicated table on every node (no shards, no Distributed table)."""
        return self.replication is not None and table.name in EVERYWHERE

    def storage_name(self, table: Table) -> str:
        """The MergeTree table's name: ``<t>_local`` for a sharded table of a cluster, else ``<t>``."""
        return f"{table.name}_local" if self.cluster and not self.everywhere(table) else table.name

    def _checkers(self) -> list[Executor]:
        """Where the schema is compared: the connected server, plus the hosts given (ON CLUSTER layouts)."""
        return [self.execute, *self.host_executors]

    def _targets(self) -> list[Executor]:
        """Where DDL runs without ON CLUSTER: every host of a per-host cluster, else the connected server."""
        return self.host_executors if (self.cluster and self.host_executors) else [self.execute]

    def _reachable(self, runners: Sequence[Executor], fn: Callable[[Executor], object]) -> None:
        """``fn(run)`` for each runner; a host other than the connected one that is down is left out (logged)."""
        for run in runners:
            try:
                fn(run)
            except HostUnreachable as exc:
                if run is self.execute:
                    raise
                self.unreachable.append(str(exc))
                log.warning("clickhouse schema: host %s is unreachable; it is checked again at the next connect "
                            "(inserts go on)", exc)

    # ---- create and migrate ------------------------------------------------------------------------------------
    def ensure(self, tables: Iterable[Table]) -> MigrationReport:
        """Create the database, every table and its read view; add missing columns. Safe to run at every start."""
        report = MigrationReport()
        tables = list(tables)
        self.unreachable = []
        self._ddl_wait, self._ddl_wait_sent = self.ddl_timeout_s, None
        if self.caps.low_cardinality:
            # LowCardinality over IPv6 and small numbers is refused unless allowed (it pays off for exporters).
            for run in {id(r): r for r in [self.execute, *self.host_executors]}.values():
                try:
                    run("SET allow_suspicious_low_cardinality_types = 1")
                except HostUnreachable:
                    pass  # reported by the check itself
                except Exception as exc:  # noqa: BLE001 - a read-only user: only needed when DDL has work to do
                    log.debug("cannot SET allow_suspicious_low_cardinality_types: %s", exc)
        # Statements are only sent when there is something to do, so a user without DDL rights can write into a
        # schema that is already up to date.
        for name in (self.database, self.read_database):
            if self.use_on_cluster:
                missing: list[bool] = []

                def check(run: Executor, n: str = name, m: list[bool] = missing) -> None:
                    m.append(not self._database_exists(run, n))
                self._reachable(self._checkers(), check)
                if any(missing):
                    self._cluster_ddl(f"CREATE DATABASE IF NOT EXISTS {quote_ident(name)} "
                                      f"ON CLUSTER {quote_ident(self.cluster)}",
                                      functools.partial(self._database_exists, self.execute, name))
            else:
                def create(run: Executor, n: str = name) -> None:
                    if not self._database_exists(run, n):
                        run(f"CREATE DATABASE IF NOT EXISTS {quote_ident(n)}")
                self._reachable(self._targets(), create)
        for table in tables:
            if self.use_on_cluster:
                self._ensure_table_on_cluster(table, report)
            else:
                def ensure(run: Executor, t: Table = table) -> None:
                    self._ensure_table(run, t, report)
                self._reachable(self._targets(), ensure)
        for line in report.lines():
            (log.warning if "MISMATCH" in line else log.info)("clickhouse schema: %s", line)
        return report

    @staticmethod
    def _database_exists(run: Executor, name: str) -> bool:
        rows = run(f"SELECT count() FROM system.databases WHERE name = '{name}'")
        return bool(rows and rows[0][0])

    def _create_sql(self, table: Table, on_cluster: str | None) -> str:
        return create_table_sql(table, self.caps, self.database, name=self.storage_name(table),
                                retention_days=self.retention_days.get(table.name, 0), on_cluster=on_cluster,
                                replication=self.replication, everywhere=self.everywhere(table))

    def _ensure_table(self, run: Executor, table: Table, report: MigrationReport) -> None:
        """One host (single server, or a node of a per-host cluster): local table, Distributed table, read view."""
        local = self.storage_name(table)
        if not self._exists(run, local):
            run(self._create_sql(table, None))
            report.created.append(f"{self.database}.{local}")
        else:
            self._migrate_columns(run, run, table, local, report)
            self._migrate_ttl(run, run, table, local, self.retention_days.get(table.name, 0), report)
        if self.cluster:
            if self._exists(run, table.name):
                self._migrate_columns(run, run, table, table.name, report, with_codec=False)
            else:
                run(create_distributed_sql(table, self.caps, self.database, self.cluster, local))
                report.created.append(f"{self.database}.{table.name} (Distributed)")
        # The read view has no data: it is recreated whenever its definition is not the wanted one.
        view = read_view_sql(table, self.caps, self.database, self.read_database)
        if not self._view_current(run, table, view):
            run(f"DROP TABLE IF EXISTS {quote_ident(self.read_database)}.{quote_ident(table.name)}")
            run(view)

    def _ensure_table_on_cluster(self, table: Table, report: MigrationReport) -> None:
        """Compare on the connected server (and the given hosts); DDL once, ON CLUSTER."""
        local = self.storage_name(table)
        cluster = self.cluster
        names = [local] if local == table.name else [local, table.name]
        missing: dict[str, bool] = dict.fromkeys(names, False)

        def check(run: Executor) -> None:
            for n in names:
                missing[n] = missing[n] or not self._exists(run, n)

        self._reachable(self._checkers(), check)
        if missing[local]:
            self._cluster_ddl(self._create_sql(table, cluster), lambda: self._exists(self.execute, local))
            report.created.append(f"{self.database}.{local}")
        else:
            self._migrate_columns(self.execute, self._cluster_ddl, table, local, report, on_cluster=cluster)
            self._migrate_ttl(self.execute, self._cluster_ddl, table, local, self.retention_days.get(table.name, 0),
                              report, on_cluster=cluster)
        if local != table.name:
            if missing[table.name]:
                self._cluster_ddl(create_distributed_sql(table, self.caps, self.database, cluster, local,
                                                         on_cluster=True),
                                  lambda: self._exists(self.execute, table.name))
                report.created.append(f"{self.database}.{table.name} (Distributed)")
            else:
                self._migrate_columns(self.execute, self._cluster_ddl, table, table.name, report, on_cluster=cluster,
                                      with_codec=False)
        view = read_view_sql(table, self.caps, self.database, self.read_database)
        stale: list[bool] = []
        self._reachable(self._checkers(), lambda run: stale.append(not self._view_current(run, table, view)))
        if any(stale):
            target = f"{quote_ident(self.read_database)}.{quote_ident(table.name)}"
            self._cluster_ddl(f"DROP TABLE IF EXISTS {target} ON CLUSTER {quote_ident(cluster)}")
            self._cluster_ddl(read_view_sql(table, self.caps, self.database, self.read_database, on_cluster=cluster),
                              lambda: self._view_current(self.execute, table, view))

    def _view_current(self, run: Executor, table: Table, view: str) -> bool:
        rows = run(f"SELECT create_table_query FROM system.tables WHERE database = '{self.read_database}' "
                   f"AND name = '{table.name}'")
        select = view[view.index(" AS SELECT ") + 4:]
        return bool(rows) and _norm_view(rows[0][0]).endswith(_norm_view(select))

    def _cluster_ddl(self, sql: str, applied: Callable[[], bool] | None = None) -> list[tuple[Any, ...]]:
        """Run distributed DDL (``ON CLUSTER``). Waits up to ``ddl_timeout_s`` for every node; when a node does not
        answer in time (it is down: ZooKeeper keeps the statement queued for it) later statements of this run are
        only queued, and ``applied()`` is polled until the connected server has run it."""
        wait = int(self._ddl_wait)
        if wait != self._ddl_wait_sent:
            self.execute(f"SET distributed_ddl_task_timeout = {wait}")
            self._ddl_wait_sent = wait
        complete = wait > 0
        rows: list[tuple[Any, ...]] = []
        try:
            rows = self.execute(sql)
        except HostUnreachable:
            raise
        except Exception as exc:
            if "distributed_ddl_task_timeout" not in str(exc):
                raise
            log.warning("clickhouse schema: not every node of cluster %s applied this within %d s (down?); the "
                        "servers apply it when they are back: %s", self.cluster, wait, sql.splitlines()[0])
            self._ddl_wait, complete = 0, False
        for row in rows:
            if len(row) >= 4 and str(row[2]) != "0":
                log.error("clickhouse schema: %s:%s failed %s: %s", row[0], row[1], sql.splitlines()[0], row[3])
        if not complete and applied is not None:
            deadline = time.monotonic() + max(self.ddl_timeout_s, 5.0)
            while not applied():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the connected server did not apply {sql.splitlines()[0]!r} within "
                                       f"{self.ddl_timeout_s:.0f} s")
                time.sleep(0.2)
        return rows

    def _exists(self, run: Executor, name: str) -> bool:
        rows = run(f"SELECT count() FROM system.tables WHERE database = '{self.database}' AND name = '{name}'")
        return bool(rows and rows[0][0])

    def _migrate_columns(self, run: Executor, ddl: Executor, table: Table, name: str, report: MigrationReport,
                         on_cluster: str | None = None, with_codec: bool = True) -> None:
        """Compare columns through ``run``; add the missing ones through ``ddl`` (``ON CLUSTER`` with one)."""
        rows = run(f"SELECT name, type FROM system.columns WHERE database = '{self.database}' AND table = '{name}'")
        have = {r[0]: r[1] for r in rows}
        cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
        previous: str | None = None
        for c in table.columns:
            want = column_type(c, self.caps)
            if c.name not in have:
                spec = column_sql(c, self.caps) if with_codec else f"{quote_ident(c.name)} {want}"
                after = f" AFTER {quote_ident(previous)}" if previous else ""
                ddl(f"ALTER TABLE {quote_ident(self.database)}.{quote_ident(name)}{cluster} ADD COLUMN {spec}{after}")
                report.added_columns.append(f"{self.database}.{name}.{c.name} {want}")
            elif _norm_type(have[c.name]) != _norm_type(want):
                report.type_mismatches.append(
                    f"{self.database}.{name}.{c.name}: server has {have[c.name]}, flowmed wants {want}")
            previous = c.name
        for extra in sorted(set(have) - set(table.column_names)):
            report.extra_columns.append(f"{self.database}.{name}.{extra} {have[extra]}")

    def _migrate_ttl(self, run: Executor, ddl: Executor, table: Table, name: str, retention: int,
                     report: MigrationReport, on_cluster: str | None = None) -> None:
        if not self.caps.ttl:
            return
        rows = run(f"SELECT engine_full FROM system.tables WHERE database = '{self.database}' AND name = '{name}'")
        engine_full = rows[0][0] if rows else ""
        has_ttl = " TTL " in f" {engine_full} "
        cluster = f" ON CLUSTER {quote_ident(on_cluster)}" if on_cluster else ""
        target = f"{quote_ident(self.database)}.{quote_ident(name)}{cluster}"
        if retention > 0 and f"toIntervalDay({retention})" not in engine_full:
            ddl(f"ALTER TABLE {target} MODIFY TTL {ttl_sql(table, retention)}")
            report.ttl_changed.append(f"{self.database}.{name} -> {retention} days")
        elif retention <= 0 and has_ttl:
            ddl(f"ALTER TABLE {target} REMOVE TTL")
            report.ttl_changed.append(f"{self.database}.{name} -> kept forever")

    # ---- retention without TTL ---------------------------------------------------------------------------------
    def drop_expired_partitions(self, tables: Iterable[Table], now_ms: int) -> list[tuple[str, str]]:
        """Retention on servers without TTL: drop whole partitions entirely older than the table's retention.

        A partition is dropped only when its last day (or month) ends before ``now - retention``, so no row
        younger than the retention is ever removed. Returns the ``(table, partition)`` pairs dropped. On servers
        with TTL this does nothing (the TTL drops parts itself). With ``ON CLUSTER`` the partitions are listed over
        the whole cluster (``cluster()``; a shard that is down is skipped this time) and dropped once per cluster.
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
            where = f"database = '{self.database}' AND table = '{name}' AND active"
            if self.use_on_cluster:
                partitions = self.execute(f"SELECT DISTINCT partition FROM cluster('{self.cluster}', system, parts) "
                                          f"WHERE {where} SETTINGS skip_unavailable_shards = 1")
                dropped.extend(self._drop_older(self._cluster_ddl, name, partitions, cutoff, days,
                                                f" ON CLUSTER {quote_ident(self.cluster)}"))
            else:
                def per_host(run: Executor, name: str = name, where: str = where, cutoff: int = cutoff,
                             days: int = days) -> None:
                    partitions = run(f"SELECT DISTINCT partition FROM system.parts WHERE {where}")
                    dropped.extend(self._drop_older(run, name, partitions, cutoff, days, ""))
                self._reachable(self._targets(), per_host)
        return dropped

    def _drop_older(self, ddl: Executor, name: str, partitions: list[tuple[Any, ...]], cutoff: int, days: int,
                    on_cluster: str) -> list[tuple[str, str]]:
        out = []
        for (partition,) in partitions:
            value = str(partition).strip("'")
            if value.isdigit() and int(value) < cutoff:
                ddl(f"ALTER TABLE {quote_ident(self.database)}.{quote_ident(name)}{on_cluster} DROP PARTITION {value}")
                out.append((name, value))
                log.info("retention: dropped partition %s of %s.%s (older than %d days)", value, self.database, name,
                         days)
        return out


def _cutoff_partition(cutoff_ms: int, partition: str) -> int:
    """The partition value (YYYYMMDD or YYYYMM) holding ``cutoff_ms``: partitions below it are entirely older."""
    import datetime as dt

    day = dt.datetime.fromtimestamp(cutoff_ms / 1000, tz=dt.UTC)
    return int(day.strftime("%Y%m%d" if partition == "day" else "%Y%m"))
