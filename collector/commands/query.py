"""``flowmed query`` (ClickHouse SQL over the store or the server) and ``flowmed schema`` (table documentation)."""

from __future__ import annotations

import sys

import click

from collector.commands.common import config_options
from collector.config import Config
from decoders.schema import Table
from storage.clickhouse.types import modern_type


@click.command("query")
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output: aligned text, CSV with a header, or one JSON object per line (arrays as JSON).")
@click.option("--target", type=click.Choice(["auto", "store", "clickhouse"]), default="auto", show_default=True,
              help="Where to run it: the embedded Parquet store (chDB), the ClickHouse server, or auto (the store "
                   "when [store] is enabled, else the server).")
@click.option("--allow-external", is_flag=True,
              help="Also allow what reads outside flowmed's tables with the permissions of this command (files, "
                   "URLs, other servers): the table functions file(), url(), remote(), s3(), ... and the function "
                   "file().")
@config_options
def query_command(sql: str, fmt: str, target: str, allow_external: bool, config: Config) -> None:
    """Run one read-only ClickHouse SQL statement over flowmed's tables (flows, usage, ...) and print the result.

    Addresses print as text (192.0.2.1, 2001:db8::1) and compare with toIPv6('192.0.2.1'); times are UTC.
    On the embedded store, T_between(t0='...', t1='...') reads only that time range of table T (faster lookups).
    One SELECT, WITH, SHOW, DESCRIBE, EXISTS or EXPLAIN statement, without INTO OUTFILE, FORMAT (use --format)
    or SETTINGS; table functions that read files, URLs or other servers need --allow-external.

    Example: flowmed query "SELECT src_addr, sum(bytes) FROM flows GROUP BY src_addr ORDER BY 2 DESC LIMIT 10"
    """
    from storage.errors import QueryError
    from storage.query import ChdbBackend, QueryEngine, render

    try:
        # On a server, readonly = 1 refuses table functions too (the server's own guard under ours).
        engine = QueryEngine.for_config(config, target, server_readonly=2 if allow_external else 1)
    except Exception as exc:  # cannot open chDB / reach the server: a clear message, exit status 1
        raise click.ClickException(f"cannot open the {target} query target: {exc}") from None
    try:
        from storage.sql_guard import classify, seal_chdb_session

        statement = classify(sql, allow_external=allow_external, target=engine.target)
        backend = engine.backend
        if isinstance(backend, ChdbBackend):
            root = backend.root
            if not backend.holds_data():
                raise click.ClickException(
                    f"the store at {root} holds no data{'' if root.exists() else ' (the directory does not exist)'}"
                    ": point --config or --set store.path=... at the store the daemon writes")
            seal_chdb_session()  # this process runs nothing else: DDL, DROP, ALTER, INSERT refused by chDB itself
            # What runs is what was classified: the statement as ClickHouse's parser read and formatted it.
            result = engine.query(statement.canonical, exact_types=True)
        else:
            result = engine.query(sql, exact_types=True)  # the server's own dialect (18.16 lacks newer syntax)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    sys.stdout.write(render(result, fmt))


def schema_markdown(tables: dict[str, Table] | None = None) -> str:
    """Documentation of every registered table as Markdown (what ``docs/schema.md`` holds)."""
    if tables is None:
        from collector.tables import load_tables

        tables = load_tables()
    out = [
        "# flowmed tables",
        "",
        "Generated from `decoders/schema.py` and the modules that register tables (`flowmed schema --format md`);",
        "do not edit by hand. Types are those of the embedded store's views and of a modern ClickHouse server;",
        "on ClickHouse 18.16 addresses are `FixedString(16)` and times `DateTime('UTC')`. Addresses are IPv6,",
        "IPv4 stored IPv4-mapped (`::ffff:192.0.2.1`, printed as `192.0.2.1` by `flowmed query`).",
        "",
        "On the embedded store every table `T` also has a view `T_between(t0='2026-03-02 14:00:00',",
        "t1='2026-03-02 15:00:00')` holding the rows with `t0 <= time < t1` (by the table's time column) that reads",
        "only the hour partitions of that range: use it for lookups in a long history.",
        "",
        "A ReplacingMergeTree table reads on the embedded store as `FINAL` reads it on a server: one row per sorting",
        "key, the one with the highest version column, so rows re-sent after a crash count once; its view `T_raw`",
        "shows the stored files as they are (every version, re-sent rows included).",
        "",
    ]
    for name in sorted(tables):
        t = tables[name]
        out += [f"## `{name}`", "", t.doc, ""]
        out.append(f"Partitioned by `{t.time_column}` (embedded store: hourly directories; server: "
                   f"{'monthly' if t.partition == 'month' else 'daily'} partitions); "
                   f"ordered by {', '.join(f'`{c}`' for c in t.order_by)}; engine {t.engine}"
                   + (f" (version column `{t.version_column}`)" if t.version_column else "") + ".")
        out += ["", "| column | type | description |", "|---|---|---|"]
        for c in t.columns:
            doc = c.doc.replace("|", r"\|")
            out.append(f"| `{c.name}` | {modern_type(c.kind)} | {doc} |")
        out.append("")
    return "\n".join(out)


def schema_text(tables: dict[str, Table]) -> str:
    """Plain-text documentation of every table (the default output of ``flowmed schema``)."""
    out = []
    for name in sorted(tables):
        t = tables[name]
        out += [f"{name}: {t.doc}", f"  time column {t.time_column}; order by {', '.join(t.order_by)}"]
        width = max(len(c.name) for c in t.columns)
        for c in t.columns:
            out.append(f"  {c.name.ljust(width)}  {modern_type(c.kind):<22}  {c.doc}")
        out.append("")
    return "\n".join(out)


@click.command("schema")
@click.option("--format", "fmt", type=click.Choice(["text", "md"]), default="text", show_default=True,
              help="Plain text, or Markdown (docs/schema.md is this output).")
@click.option("--table", "only", multiple=True, help="Only this table (repeatable).")
def schema_command(fmt: str, only: tuple[str, ...]) -> None:
    """Print the documentation of every table flowmed writes, from the schema in code."""
    from collector.tables import load_tables

    tables = load_tables()
    if only:
        unknown = sorted(set(only) - set(tables))
        if unknown:
            raise click.BadParameter(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(tables))}",
                                     param_hint="--table")
        tables = {n: tables[n] for n in only}
    sys.stdout.write(schema_markdown(tables) if fmt == "md" else schema_text(tables))



COMMANDS = [query_command, schema_command]
