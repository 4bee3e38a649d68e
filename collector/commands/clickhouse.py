"""``flowmed clickhouse ...``: the ClickHouse server output's schema, for DBAs.

``ddl`` prints the statements flowmed would run (to review them, or to create the schema by hand and give flowmed's
user no DDL rights), ``migrate`` creates and migrates now and prints what it did, ``retention`` drops expired
partitions now (servers without TTL; flowmed also does it hourly while running).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from collector.commands.common import config_options
from collector.config import Config

if TYPE_CHECKING:
    from storage.clickhouse.schema import SchemaManager


@click.group("clickhouse")
def clickhouse_group() -> None:
    """The ClickHouse server output: print the DDL, migrate the schema, apply retention."""


@clickhouse_group.command("ddl")
@click.option("--server-version", default=None, metavar="VERSION",
              help="Generate for this server version (e.g. 18.16 or 26.1) instead of asking the configured server.")
@config_options
def ddl_command(server_version: str | None, config: Config) -> None:
    """Print the CREATE statements for every table and its read view (one per line block, ';'-terminated)."""
    from collector.tables import load_tables
    from storage.clickhouse.client import connect, server_caps
    from storage.clickhouse.ddl import ServerCaps, ddl_statements

    ch = config.output.clickhouse
    if server_version:
        caps = ServerCaps.from_version(server_version)
    else:
        try:
            client = connect(ch)
            caps = server_caps(client)
            client.disconnect()
        except Exception as exc:  # noqa: BLE001 - unreachable: say so, suggest --server-version
            raise click.ClickException(f"cannot reach ClickHouse ({exc}); use --server-version") from None
    where = ("" if not ch.cluster else
             f", run once: ON CLUSTER {ch.cluster}" if ch.replicated else f", run on every node of {ch.cluster}")
    out = [f"-- flowmed DDL for ClickHouse {caps.version_text} ({'modern' if caps.modern else '18.16-compatible'}"
           f"{where})"]
    out += [sql + ";" for sql in ddl_statements(load_tables().values(), caps, ch.database, cluster=ch.cluster,
                                                replicated=ch.replicated, zookeeper_path=ch.zookeeper_path,
                                                retention_days={"flows": ch.flows_retention_days})]
    click.echo("\n\n".join(out))


def _manager(config: Config) -> tuple[Any, list[Any], SchemaManager]:
    """The schema manager for ``migrate`` and ``retention``: on a cluster it checks every node (a node that is down
    is reported and left out). With it the clickhouse-driver clients to disconnect (that library is untyped)."""
    from storage.clickhouse.client import connect, ddl_timeout_s, executor, server_caps
    from storage.clickhouse.schema import SchemaManager

    ch = config.output.clickhouse
    try:
        client = connect(ch)
        caps = server_caps(client)
    except Exception as exc:  # noqa: BLE001 - unreachable: a clear message
        raise click.ClickException(f"cannot reach ClickHouse: {exc}") from None
    hosts = []
    if ch.cluster:
        rows = client.execute("SELECT host_address, port FROM system.clusters WHERE cluster = %(c)s",
                              {"c": ch.cluster}, settings={"use_numpy": False})
        if not rows:
            raise click.ClickException(f"cluster {ch.cluster!r} is not defined on the server")
        hosts = [connect(ch, host=str(h), port=int(p)) for h, p in rows]
    return client, hosts, SchemaManager(executor(client), caps, ch.database, cluster=ch.cluster,
                                        host_executors=[executor(h) for h in hosts], replicated=ch.replicated,
                                        zookeeper_path=ch.zookeeper_path, ddl_timeout_s=ddl_timeout_s(ch),
                                        retention_days={"flows": ch.flows_retention_days})


@clickhouse_group.command("migrate")
@config_options
def migrate_command(config: Config) -> None:
    """Create missing tables and columns now and print what was done; exit 3 when a column's type differs."""
    from collector.tables import load_tables

    client, hosts, manager = _manager(config)
    try:
        report = manager.ensure(load_tables().values())
    finally:
        for c in (client, *hosts):
            c.disconnect()
    for line in report.lines() or ["schema is up to date"]:
        click.echo(line)
    for host in manager.unreachable:
        click.echo(f"host unreachable, not checked: {host}", err=True)
    if report.type_mismatches:
        raise SystemExit(3)


@clickhouse_group.command("retention")
@config_options
def retention_command(config: Config) -> None:
    """Drop partitions older than the retention now (servers without TTL; with TTL the server does it)."""
    from collector.tables import load_tables

    client, hosts, manager = _manager(config)
    try:
        dropped = manager.drop_expired_partitions(load_tables().values(), int(time.time() * 1000))
    finally:
        for c in (client, *hosts):
            c.disconnect()
    for table, partition in dropped:
        click.echo(f"dropped {table} partition {partition}")
    if not dropped:
        click.echo("nothing to drop" + ("" if not manager.caps.ttl else " (the server's TTL applies retention)"))


COMMANDS = [clickhouse_group]
