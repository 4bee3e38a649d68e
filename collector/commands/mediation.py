"""Mediation commands: ``reconcile``, ``compare-sources``, ``reprocess`` and ``bindings``."""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np
import pyarrow as pa

from collector.bindings_db import open_bindings
from collector.commands.common import config_options
from collector.config import Config

if TYPE_CHECKING:  # imported where used: a fast CLI start
    from storage.query import QueryEngine

F = TypeVar("F", bound=Callable[..., Any])

RECON_FIELDS = ("records_in", "bytes_in", "bytes_attributed", "bytes_unattributed", "bytes_rejected",
                "bytes_duplicate", "records_rejected", "records_duplicate", "bytes_usage")


EARLIEST_MS = 100_000_000_000
"""Epoch milliseconds below this (1973-03-03) are refused as times: such a number is epoch seconds (a 2026 instant
is about 1.77e9 s, 1.77e12 ms), which read as milliseconds would name a moment in January 1970."""


def parse_time(text: str, option: str | None = None) -> int:
    """ISO 8601 (UTC unless an offset is given) or epoch milliseconds -> int64 ms; epoch seconds are refused with a
    clear error instead of being read as milliseconds."""
    text = text.strip()
    if text.isdigit():
        if int(text) < EARLIEST_MS:
            raise click.BadParameter(f"{text} looks like epoch seconds; flowmed reads a number as epoch milliseconds: "
                                     f"give {int(text) * 1000} or an ISO 8601 time", param_hint=option)
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected ISO 8601 (2026-03-02T14:00:00Z) or epoch ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _sql_time(ms: int) -> str:
    return f"toDateTime64({ms / 1000:.3f}, 3, 'UTC')"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _engine(config: Config, target: str) -> QueryEngine:
    from storage.query import QueryEngine

    return QueryEngine.for_config(config, target)


def _ms(column: pa.ChunkedArray) -> list[int]:
    ms: list[int] = column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist()
    return ms


_range_options = [
    click.option("--from", "t_from", required=True, help="Start (inclusive): ISO 8601 UTC or epoch ms."),
    click.option("--to", "t_to", required=True, help="End (exclusive): ISO 8601 UTC or epoch ms."),
    click.option("--target", type=click.Choice(["auto", "store", "clickhouse"]), default="auto", show_default=True,
                 help="Read the embedded store or the ClickHouse server."),
]


def range_options(func: F) -> F:
    """Add --from, --to and --target."""
    for option in reversed(_range_options):
        func = option(func)
    return func


@click.command("reconcile")
@range_options
@click.option("--exporter", default=None, help="Only this exporter (address).")
@config_options
def reconcile_command(t_from: str, t_to: str, target: str, exporter: str | None, config: Config) -> None:
    """Print the byte balance per receive interval and exporter; exit 1 where it does not hold.

    bytes_in = attributed + unattributed + rejected + duplicate. Re-processed rejects (source 'reprocess') are
    rows of their own: the records they count were already counted when they were received (and rejected). So the
    totals are three lines: ``total received`` (what came in, first pass only), ``total reprocess`` (the rejects
    run again) and ``total net`` (where the received bytes are now: re-processed rejects move from rejected to
    where they went the second time). The last two are printed only when there are re-processed rows.
    """
    from mediation.reconcile import balance_holds, net_totals

    start, end = parse_time(t_from), parse_time(t_to)
    where = f"interval_start >= {_sql_time(start)} AND interval_start < {_sql_time(end)}"
    if exporter:
        where += f" AND exporter = toFixedString(IPv6StringToNum('{_v6(exporter)}'), 16)"
    sums = ", ".join(f"sum({f}) AS {f}" for f in RECON_FIELDS)
    sql = (f"SELECT interval_start, exporter, source, {sums}, min(balanced) AS balanced FROM reconciliation "
           f"WHERE {where} GROUP BY interval_start, exporter, source ORDER BY interval_start, exporter, source")
    with _engine(config, target) as engine:
        table = engine.query(sql)
    rows = table.to_pylist()
    starts = _ms(table.column("interval_start")) if rows else []
    bad = 0
    header = ("interval_start", "exporter", "source", *RECON_FIELDS, "ok")
    click.echo("\t".join(header))
    received = dict.fromkeys(RECON_FIELDS, 0)
    reprocessed = dict.fromkeys(RECON_FIELDS, 0)
    for row, s in zip(rows, starts, strict=True):
        ok = balance_holds(row) and int(row["balanced"]) == 1
        bad += 0 if ok else 1
        totals = reprocessed if row["source"] == "reprocess" else received
        for f in RECON_FIELDS:
            totals[f] += int(row[f])
        click.echo("\t".join([_iso(s), str(row["exporter"]), row["source"], *(str(int(row[f])) for f in RECON_FIELDS),
                              "yes" if ok else "NO"]))
    lines = [("received", received)]
    if any(reprocessed.values()):
        lines += [("reprocess", reprocessed), ("net", net_totals(received, reprocessed))]
    unbalanced_totals = 0
    for name, totals in lines:
        ok = balance_holds(totals) and min(totals.values()) >= 0
        unbalanced_totals += 0 if ok else 1
        click.echo("\t".join(["total", "", name, *(str(totals[f]) for f in RECON_FIELDS),
                              "yes" if ok and not bad else "NO"]))
    if not rows:
        click.echo("no reconciliation rows in that range", err=True)
    if bad or unbalanced_totals:
        click.echo(f"{bad} interval/exporter rows and {unbalanced_totals} totals do not balance", err=True)
        sys.exit(1)


def _v6(address: str) -> str:
    import ipaddress

    a = ipaddress.ip_address(address)
    return str(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed)) if a.version == 4 else str(a)


@click.command("compare-sources")
@range_options
@click.option("--subscriber", default=None, help="Only this subscriber.")
@click.option("--a", "source_a", default="flow", show_default=True, help="First usage source.")
@click.option("--b", "source_b", default="radius", show_default=True, help="Second usage source.")
@click.option("--tolerance-pct", type=float, default=None,
              help="Exit 1 when a subscriber/direction differs by more than this percentage.")
@config_options
def compare_sources_command(t_from: str, t_to: str, target: str, subscriber: str | None, source_a: str,
                            source_b: str, tolerance_pct: float | None, config: Config) -> None:
    """Usage per subscriber and direction from two sources (flows vs RADIUS counters, or IPDR) side by side."""
    start, end = parse_time(t_from), parse_time(t_to)
    where = (f"interval_start >= {_sql_time(start)} AND interval_start < {_sql_time(end)} AND subscriber_id != '' "
             f"AND source IN ('{_q(source_a)}', '{_q(source_b)}')")
    if subscriber:
        where += f" AND subscriber_id = '{_q(subscriber)}'"
    with _engine(config, target) as engine:
        final = " FINAL" if engine.target == "clickhouse" else ""  # usage is a ReplacingMergeTree there
        sql = (f"SELECT subscriber_id, direction, sumIf(bytes, source = '{_q(source_a)}') AS a, "
               f"sumIf(bytes, source = '{_q(source_b)}') AS b FROM usage{final} WHERE {where} "
               "GROUP BY subscriber_id, direction ORDER BY subscriber_id, direction")
        rows = engine.query(sql).to_pylist()
    click.echo("\t".join(["subscriber_id", "direction", source_a, source_b, "difference", "pct"]))
    worst = 0.0
    for r in rows:
        a, b = int(r["a"]), int(r["b"])
        pct = abs(a - b) * 100.0 / max(a, b) if max(a, b) else 0.0
        worst = max(worst, pct)
        click.echo(f"{r['subscriber_id']}\t{r['direction']}\t{a}\t{b}\t{a - b}\t{pct:.2f}")
    if tolerance_pct is not None and worst > tolerance_pct:
        click.echo(f"largest difference {worst:.2f}% exceeds {tolerance_pct}%", err=True)
        sys.exit(1)


def _q(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


@click.command("reprocess")
@range_options
@click.option("--reason", "reasons", multiple=True, help="Only rejects with this reason (repeatable).")
@click.option("--dry-run", is_flag=True, help="Mediate the rejects in memory and say how many would pass now "
              "(and why the others would be rejected again); write nothing.")
@config_options
def reprocess_command(t_from: str, t_to: str, target: str, reasons: tuple[str, ...], dry_run: bool,
                      config: Config) -> None:
    """Run rejected records (by receive time) through mediation again, e.g. after raising a limit with --set.

    Records that pass now become usage (their reconciliation rows have source 'reprocess'); records that fail again
    stay where they are. Each reject is re-processed at most once (its reject_id is remembered in
    state/reprocessed.sqlite), so running the command twice does not count anything twice.
    """
    from decoders.schema import FLOWS
    from mediation.mediator import Mediator
    from mediation.validate import REASONS

    start, end = parse_time(t_from), parse_time(t_to)
    where = f"time_received >= {_sql_time(start)} AND time_received < {_sql_time(end)}"
    if reasons:
        where += " AND reason IN (" + ", ".join(f"'{_q(r)}'" for r in reasons) + ")"
    cols = ", ".join(c.name for c in FLOWS.columns if c.name != "batch_id")
    with _engine(config, target) as engine:
        table = engine.query(f"SELECT reject_id, reason, {cols} FROM rejects WHERE {where}", text_addresses=False)
    done_path = config.data_path("state/reprocessed.sqlite")
    if dry_run and not done_path.exists():
        done = sqlite3.connect(":memory:")  # a dry run creates no file
    else:
        done_path.parent.mkdir(parents=True, exist_ok=True)
        done = sqlite3.connect(done_path)
    done.execute("CREATE TABLE IF NOT EXISTS done (reject_id INTEGER PRIMARY KEY)")
    ids = np.asarray(table.column("reject_id").to_numpy(), dtype=np.uint64) if table.num_rows else np.zeros(0, "u8")
    seen = {r[0] for r in done.execute("SELECT reject_id FROM done")}
    signed = ids.view(np.int64)
    fresh = np.array([int(i) not in seen for i in signed], dtype=bool)
    _, first = np.unique(ids, return_index=True)
    once = np.zeros(len(ids), dtype=bool)
    once[first] = True
    todo = np.flatnonzero(fresh & once)
    click.echo(f"{table.num_rows} rejects in range, {len(todo)} not re-processed before")
    if not len(todo):
        return
    flows = table.take(pa.array(todo)).select([c.name for c in FLOWS.columns if c.name != "batch_id"])
    arrays = {c.name: flows.column(c.name).combine_chunks() for c in FLOWS.columns if c.name != "batch_id"}
    arrays["batch_id"] = pa.array(np.zeros(len(todo), dtype=np.uint64))
    batch = pa.RecordBatch.from_arrays([arrays[c.name].cast(c.arrow_type) for c in FLOWS.columns],
                                       schema=FLOWS.arrow_schema)
    # A dry run mediates the same records the same way (limits, bindings, de-duplication), in memory only.
    bindings = open_bindings(config)
    mediator = Mediator(config, bindings, reconciliation_source="reprocess")
    now = int(time.time() * 1000)
    out = mediator.process(batch, now)
    closing = mediator.close_all(now)
    c = mediator.counters
    accepted = batch.num_rows - c["records_rejected"]
    detail = (f"{c['bytes_attributed']} bytes attributed, {c['bytes_unattributed']} unattributed, "
              f"{c['records_duplicate']} duplicates")
    why = ", ".join(f"{c[f'rejected_{r}']} {r}" for r in REASONS if c[f"rejected_{r}"])
    why = f" ({why})" if why else ""
    if dry_run:
        click.echo(f"dry run, nothing written: {accepted} of {batch.num_rows} would pass now ({detail}), "
                   f"{c['records_rejected']} would be rejected again{why}")
        return
    for name in ("usage", "reconciliation"):
        parts = [b for b in (out.get(name), closing.get(name)) if b is not None and b.num_rows]
        out[name] = pa.concat_batches(parts) if len(parts) > 1 else (parts[0] if parts else None)
    out.pop("rejects", None)  # still rejected: the original rows stay in rejects
    from prometheus_client import CollectorRegistry

    from collector import metrics as metrics_mod
    from collector.components import make_sink

    sink = make_sink(config, metrics_mod.Metrics(CollectorRegistry()), worker=255)
    for name, b in out.items():
        if b is not None and b.num_rows:
            sink.add(name, b)
    sink.close()
    ok_ids = signed[todo]
    done.executemany("INSERT OR IGNORE INTO done(reject_id) VALUES (?)", [(int(i),) for i in ok_ids])
    done.commit()
    click.echo(f"re-processed {batch.num_rows}: {accepted} accepted ({detail}), {c['records_rejected']} "
               f"rejected again{why}")


@click.group("bindings")
def bindings_group() -> None:
    """Subscriber bindings (static file and RADIUS): look up, list, load."""


@bindings_group.command("lookup")
@click.argument("address")
@click.option("--at", "at", default=None, help="Time (ISO 8601 UTC or epoch ms; default now).")
@config_options
def bindings_lookup(address: str, at: str | None, config: Config) -> None:
    """Who held ADDRESS at a time (longest prefix, half-open validity)."""
    from decoders.addresses import network_text
    from mediation.subscribers.bindings import join_addresses, parse_network

    t = parse_time(at, "--at") if at else int(time.time() * 1000)
    hi, lo, _ = parse_network(address)
    b = open_bindings(config)
    sub, bid = b.lookup(join_addresses(np.array([hi], np.uint64), np.array([lo], np.uint64)), np.array([t]))
    if sub[0] < 0:
        click.echo(f"{address} at {_iso(t)}: no binding")
        sys.exit(1)
    row = b.conn.execute("SELECT subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, session_id, "
                         "nas FROM bindings WHERE id=?", (int(bid[0]),)).fetchone()
    from mediation.tables import OPEN_END_MS

    net = network_text((row[1] % (1 << 64)) << 64 | row[2] % (1 << 64), row[3])
    until = "open" if row[5] >= OPEN_END_MS else f"to {_iso(row[5])}"  # as `bindings list` prints it
    click.echo(f"{address} at {_iso(t)}: {row[0]} (binding {bid[0]}, {net}, from {_iso(row[4])} {until}, "
               f"{row[6]} {row[7]} {row[8]})")


@bindings_group.command("list")
@click.option("--subscriber", default=None, help="Only this subscriber.")
@click.option("--open", "only_open", is_flag=True, help="Only bindings that have not ended.")
@click.option("--limit", type=int, default=1000, show_default=True)
@config_options
def bindings_list(subscriber: str | None, only_open: bool, limit: int, config: Config) -> None:
    """List bindings from the durable store."""
    from decoders.addresses import network_text
    from mediation.tables import OPEN_END_MS

    b = open_bindings(config)
    where: list[str] = ["1"]
    args: list[str | int] = []
    if subscriber:
        where.append("subscriber_id=?")
        args.append(subscriber)
    if only_open:
        where.append("valid_to>=?")
        args.append(OPEN_END_MS)
    rows = b.conn.execute("SELECT id, subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, nas "
                          f"FROM bindings WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*args, limit)).fetchall()
    click.echo("id\tsubscriber_id\tnetwork\tvalid_from\tvalid_to\tsource\tnas")
    for r in rows:
        net = network_text((r[2] % (1 << 64)) << 64 | r[3] % (1 << 64), r[4])
        end = "open" if r[6] >= OPEN_END_MS else _iso(r[6])
        click.echo(f"{r[0]}\t{r[1]}\t{net}\t{_iso(r[5])}\t{end}\t{r[7]}\t{r[8]}")


@bindings_group.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@config_options
def bindings_load(path: str, config: Config) -> None:
    """Apply a static bindings file (CSV or TOML) now, as the daemon does on change or SIGHUP."""
    from mediation.subscribers.static import StaticBindings, StaticFileError

    b = open_bindings(config)
    try:
        opened, ended = StaticBindings(path, b).reload(int(time.time() * 1000))
    except StaticFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{opened} bindings opened, {ended} ended")


COMMANDS = [reconcile_command, compare_sources_command, reprocess_command, bindings_group]
