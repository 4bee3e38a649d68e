"""The compliance lookup page: the ``flowmed trace`` form (address, port, instant, protocol) with the verdict and
its evidence, and the ``flowmed ipdr-report`` export (CSV, XLSX) of a period for an address or a subscriber.

Both run the very queries of the commands (:func:`collector.commands.compliance.run_trace` and
:mod:`mediation.compliance.report`), on the console's engine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from typing import TYPE_CHECKING

from collector.console.subscriber import check_subscriber
from collector.console.views import Cell, Context, PageError, PageValues, Row, TableView, number, text
from collector.console.window import Window, WindowError, iso, parse_instant

if TYPE_CHECKING:  # imported when a report is asked for
    from mediation.compliance.report import ReportQuery

PROTOCOL_CHOICES = (("", "any"), ("6", "TCP (6)"), ("17", "UDP (17)"), ("1", "ICMP (1)"), ("58", "ICMPv6 (58)"))
PREVIEW_ROWS = 100


def _address(value: str, name: str = "address") -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise PageError(f"{name} {value!r}: expected an IPv4 or IPv6 address") from None


def _int(params: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise PageError(f"{name} {raw!r}: expected a whole number from {lo} to {hi}")
    return int(raw)


def _instant(params: dict[str, str], name: str) -> int:
    try:
        return parse_instant(params[name], name)
    except WindowError as exc:
        raise PageError(str(exc)) from None


def compliance_page(ctx: Context, params: dict[str, str]) -> PageValues:
    """The trace form and, when an address and instant are given, its verdict and evidence; the report form and,
    with ``report=1``, a preview of the report's first rows."""
    out: PageValues = {"title": "Compliance lookup", "params": params, "protocols": PROTOCOL_CHOICES, "charts": [],
                 "tables": [], "verdict": None, "trace_sql": None, "report_sql": None, "empty": False}
    if (params.get("address") or "").strip():
        if not (params.get("at") or "").strip():
            raise PageError("a trace needs the instant (at)")
        out.update(trace(ctx, params))
    if params.get("report"):
        out.update(report_preview(ctx, params))
    return out


def trace(ctx: Context, params: dict[str, str]) -> PageValues:
    """Who held the address (and port) at the instant, with the evidence rows."""
    from collector.commands.compliance import run_trace, verdict
    from mediation.compliance.deterministic import DeterministicNat
    from mediation.compliance.trace import AddressQuery

    address = _address(params["address"])
    port = _int(params, "port", 0, 65535)
    protocol = _int(params, "protocol", 0, 255)
    window_s = _int(params, "window", 0, 86400)
    window_s = 60 if window_s is None else window_s
    at = _instant(params, "at")
    lookback = ctx.config.compliance.nat_lookback_s
    deterministic = DeterministicNat(ctx.config.compliance.deterministic)
    # The statement run_trace runs, for the page to show (run_trace builds the same one).
    mapping = deterministic.inside_of(address, port) if deterministic and port is not None else None
    sql = AddressQuery(address, at, port, window_s, lookback, protocol=protocol, deterministic=mapping).sql(
        ctx.store.source)
    try:
        answer = run_trace(ctx.store.engine, address=address, port=port, at_ms=at, window_s=window_s,
                           lookback_s=lookback, protocol=protocol, deterministic=deterministic)
    except Exception as exc:  # the backend's message (QueryError), shown on the page
        raise PageError(f"the trace query failed: {exc}", 502) from None
    v = verdict(answer, at, window_s)
    rows = []
    for r in answer.to_pylist():
        rows.append([text(r["evidence"]), _time(r["time_from"]), _time(r["time_to"]), text(r["subscriber_id"]),
                     text(_hostport(r["private_addr"], r["private_port"])),
                     text(_hostport(r["public_addr"], r["public_port_start"], r["public_port_end"])),
                     number(r["protocol"]), text(_hostport(r["dst_addr"], r["dst_port"])), number(r["bytes"]),
                     text(r["exporter"]), text(r["detail"])])
    table = TableView("Evidence", ["evidence", "from (UTC)", "to (UTC)", "subscriber", "inside", "public", "protocol",
                                   "destination", "bytes", "device", "detail"], rows, id="table-evidence")
    note = ""
    if port is None and v.nat.split(" ")[0] in ("session", "block", "flow"):
        note = "This address is behind NAT and shared: the holder depends on the port; give the port for an answer."
    return {"verdict": v, "verdict_line": v.line(), "trace_sql": sql, "trace_note": note, "evidence": table,
            "trace_at": iso(at)}


def _time(value: dt.datetime | None) -> Cell:
    if value is None:
        return Cell("-")
    seconds = int(value.timestamp())
    if seconds == 0:  # a static binding without a start
        return Cell("always", "0")
    if value.year >= 2106:  # an open binding (valid_to at the largest DateTime)
        return Cell("open", str(seconds))
    return Cell(value.strftime("%Y-%m-%d %H:%M:%S"), str(seconds))


def _hostport(addr: str, port: int, port_end: int | None = None) -> str:
    if not addr:
        return ""
    host = f"[{addr}]" if ":" in addr else addr
    if not port:
        return addr
    return f"{host}:{port}" if port_end in (None, port) else f"{host}:{port}-{port_end}"


def report_request(ctx: Context, params: dict[str, str]) -> ReportQuery:
    """The report asked for: a :class:`mediation.compliance.report.ReportQuery` over a bounded period."""
    from mediation.compliance.report import ReportQuery

    t0, t1 = _instant(params, "from"), _instant(params, "to")
    w = Window(t0, t1)
    if t1 <= t0:
        raise PageError("the report period ends before it starts")
    if w.hours > ctx.config.console.max_window_h:
        raise PageError(f"the report period is {w.hours:g} hours long; the console reads at most "
                        f"{ctx.config.console.max_window_h} hours at a time (console.max_window_h): use a shorter "
                        "period, or flowmed ipdr-report for a long one")
    address = (params.get("r_address") or "").strip()
    subscriber = (params.get("r_subscriber") or "").strip()
    port = _int(params, "r_port", 0, 65535)
    if bool(address) == bool(subscriber):
        raise PageError("a report needs either an address (and optionally a port) or a subscriber")
    if port is not None and not address:
        raise PageError("the report's port needs its address")
    if address:
        return ReportQuery(t0, t1, _address(address, "report address"), port, None)
    return ReportQuery(t0, t1, None, None, check_subscriber(subscriber))


def report_rows(ctx: Context, q: ReportQuery) -> tuple[list[Row], str]:
    """The report's rows (generic layout, customer fields joined) and its SQL, as ``flowmed ipdr-report`` makes them."""
    from mediation.compliance.deterministic import DeterministicNat
    from mediation.compliance.report import (
        ReportError,
        fill_deterministic,
        fill_public_side,
        load_directory,
        nat_sql,
        report_sql,
    )
    from mediation.compliance.report import report_rows as rows_of

    try:
        directory = load_directory(ctx.config.compliance.directory_file)
    except ReportError as exc:
        raise PageError(str(exc), 500) from None
    sql = report_sql(q, ctx.store.source)
    try:
        rows = rows_of(ctx.store.engine.query(sql, text_addresses=False), directory)
        extra = nat_sql(rows, q.from_ms, q.to_ms, ctx.config.compliance.nat_lookback_s, ctx.store.source)
        if extra is not None:
            fill_public_side(rows, ctx.store.engine.query(extra, text_addresses=False))
    except Exception as exc:  # the backend's message
        raise PageError(f"the report query failed: {exc}", 502) from None
    fill_deterministic(rows, DeterministicNat(ctx.config.compliance.deterministic))
    return rows, sql


def report_fields(ctx: Context, layout: str) -> list[str]:
    from mediation.compliance.report import GENERIC_FIELDS, ReportError, check_fields

    if layout not in ("dot", "generic"):
        raise PageError(f"layout {layout!r}: expected dot or generic")
    try:
        return check_fields(ctx.config.compliance.report_fields if layout == "dot" else GENERIC_FIELDS)
    except ReportError as exc:
        raise PageError(str(exc), 500) from None


def report_preview(ctx: Context, params: dict[str, str]) -> PageValues:
    q = report_request(ctx, params)
    fields = report_fields(ctx, params.get("layout") or "dot")
    rows, sql = report_rows(ctx, q)
    table = TableView(f"Report preview: {min(len(rows), PREVIEW_ROWS)} of {len(rows)} records", fields,
                      [[text(r.get(f, "")) for f in fields] for r in rows[:PREVIEW_ROWS]], id="table-report")
    return {"report_table": table, "report_sql": sql, "report_count": len(rows)}


def report_file(ctx: Context, params: dict[str, str], fmt: str) -> tuple[str, bytes]:
    """The whole report as CSV or XLSX: (file name, bytes)."""
    from mediation.compliance.report import to_csv, to_xlsx

    q = report_request(ctx, params)
    fields = report_fields(ctx, params.get("layout") or "dot")
    rows, _ = report_rows(ctx, q)
    name = f"ipdr-report-{iso(q.from_ms).replace(':', '')}"
    if fmt == "csv":
        return name + ".csv", to_csv(rows, fields).encode()
    fd, path = tempfile.mkstemp(suffix=".xlsx")
    os.close(fd)
    try:
        to_xlsx(rows, fields, path)
        with open(path, "rb") as f:
            return name + ".xlsx", f.read()
    finally:
        os.unlink(path)
