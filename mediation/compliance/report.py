"""``flowmed ipdr-report``: compliance records of a period for an address (and port) or a subscriber, in the DoT IPDR
and NAT log parameter layout (or the generic one), as CSV or XLSX, with customer fields from a directory file.

The rows come from ONE SQL query (:func:`report_sql`, documented in ``docs/compliance.md``) over
``ip_detail_records`` joined with the binding each record was attributed through (its allocation start and end).
The subscriber directory (a CSV file: ``subscriber_id,name,address,phone,email``) is joined here, at export time, so
personal data is never copied into the long-retention tables.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from decoders.addresses import optional_address_text
from mediation.compliance.deterministic import DeterministicNat
from mediation.compliance.trace import Source, address_literal, filtered, ms, port_covered

GENERIC_FIELDS = (
    "user_id", "user_name", "source_ip", "source_port", "public_ip", "public_port", "destination_ip",
    "destination_port", "start_date", "start_time", "end_date", "end_time", "protocol", "bytes", "packets",
    "exporter", "status", "binding_source", "session_id", "allocation_start_date", "allocation_start_time",
    "allocation_end_date", "allocation_end_time", "customer_name", "customer_address", "customer_phone",
    "customer_email")
"""Every column a report can have, in the generic layout's order; the DoT layout is ``compliance.report_fields``."""

DIRECTORY_FIELDS = ("name", "address", "phone", "email")
OPEN_END_S = 4_294_967_295


class ReportError(ValueError):
    """A report cannot be made as asked (unknown field, unreadable directory file)."""


def check_fields(fields: Iterable[str]) -> list[str]:
    """The field list, or :class:`ReportError` naming the unknown ones."""
    fields = list(fields)
    unknown = [f for f in fields if f not in GENERIC_FIELDS]
    if unknown:
        raise ReportError(f"unknown report fields {unknown}; known: {', '.join(GENERIC_FIELDS)}")
    return fields


def load_directory(path: str | Path | None) -> dict[str, dict[str, str]]:
    """Subscriber directory CSV (header ``subscriber_id,name,address,phone,email``; extra columns ignored)."""
    if not path:
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "subscriber_id" not in reader.fieldnames:
                raise ReportError(f"{path}: the header must name subscriber_id (and name, address, phone, email)")
            return {row["subscriber_id"].strip(): {k: (row.get(k) or "").strip() for k in DIRECTORY_FIELDS}
                    for row in reader if row.get("subscriber_id")}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"cannot read the subscriber directory {path}: {exc}") from None


@dataclass(frozen=True)
class ReportQuery:
    """What to report: ``[from_ms, to_ms)`` and an address (optionally a port) or a subscriber."""

    from_ms: int
    to_ms: int
    address: str | None = None
    port: int | None = None
    subscriber_id: str | None = None
    limit: int = 1_000_000


def report_sql(q: ReportQuery, source: Source, lookback_s: int = 86400) -> str:
    """The one SQL query of a report; ``source`` is :meth:`storage.query.QueryEngine.source`.

    For an address, the records with it (and the port) as their inside or public side, and the records without a
    public side (flows from a router inside the NAT) from an inside address that the NAT log shows holding it (and
    the port) during the period or ``lookback_s`` before it: :func:`fill_public_side` then decides, record by
    record, which of those held it at the record's start (:func:`keep_for_address`)."""
    if q.subscriber_id is not None:
        s = "'" + q.subscriber_id.replace("\\", "\\\\").replace("'", "\\'") + "'"
        where = f"subscriber_id = {s}"
    elif q.address is not None:
        a = address_literal(q.address)
        mapping = f"public_addr = {a}"
        if q.port is None:
            where = f"(src_addr = {a} OR nat_addr = {a})"
        else:
            where = f"((src_addr = {a} AND src_port = {int(q.port)}) OR (nat_addr = {a} AND nat_port = {int(q.port)}))"
            mapping += f" AND {port_covered(q.port)}"
        holders = filtered(source, "nat_events", q.from_ms - lookback_s * 1000, q.to_ms,
                           f"{mapping} AND scope IN ('session', 'block') AND action = 1")
        where = (f"({where} OR (nat_addr = {address_literal('::')} "
                 f"AND hex(src_addr) IN (SELECT hex(private_addr) FROM {holders})))")
    else:
        raise ReportError("a report needs an address or a subscriber")
    return (
        "SELECT subscriber_id, IPv6NumToString(src_addr) AS source_ip, src_port, IPv6NumToString(nat_addr) AS "
        "public_ip, nat_port, IPv6NumToString(dst_addr) AS destination_ip, dst_port, "
        f"{ms('flow_start')} AS start_ms, {ms('flow_end')} AS end_ms, protocol, "
        "bytes, packets, IPv6NumToString(exporter) AS exporter_ip, status, binding_source, session_id, "
        "allocation_start_s, allocation_end_s "
        f"FROM (SELECT * FROM {source('ip_detail_records', q.from_ms, q.to_ms)} WHERE {where} "
        f"AND {ms('flow_start')} >= {int(q.from_ms)} AND {ms('flow_start')} < {int(q.to_ms)} "
        f"ORDER BY flow_start LIMIT {int(q.limit)}) AS r "
        "ANY LEFT JOIN (SELECT binding_id, toUInt32(toDateTime(argMax(valid_from, version), 'UTC')) AS "
        "allocation_start_s, toUInt32(toDateTime(argMax(valid_to, version), 'UTC')) AS allocation_end_s "
        "FROM bindings GROUP BY binding_id) AS b USING binding_id ORDER BY start_ms, source_ip, src_port")


def _address(text: str) -> str:
    return optional_address_text(text)


def _date_time(seconds: int | None) -> tuple[str, str]:
    if not seconds or seconds >= OPEN_END_S:
        return "", ""
    t = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return t.strftime("%Y-%m-%d"), t.strftime("%H:%M:%S")


def report_rows(result: pa.Table, directory: dict[str, dict[str, str]]) -> list[dict[str, object]]:
    """Rows of the generic layout (every field of :data:`GENERIC_FIELDS`) from the report query's result, plus the
    private fields ``_start_ms`` and ``_protocol`` (for :func:`fill_public_side`; never written out)."""
    rows = []
    for r in result.to_pylist():
        sd, st = _date_time(r["start_ms"] // 1000)
        ed, et = _date_time(r["end_ms"] // 1000)
        attributed = bool(r["subscriber_id"])
        asd, ast = _date_time(r["allocation_start_s"]) if attributed else ("", "")
        aed, aet = _date_time(r["allocation_end_s"]) if attributed else ("", "")
        who = directory.get(r["subscriber_id"], {}) if attributed else {}
        public = _address(r["public_ip"])
        rows.append({
            "user_id": r["subscriber_id"], "user_name": r["subscriber_id"],
            "source_ip": _address(r["source_ip"]), "source_port": r["src_port"],
            "public_ip": public, "public_port": r["nat_port"] if public else "",
            "destination_ip": _address(r["destination_ip"]), "destination_port": r["dst_port"],
            "start_date": sd, "start_time": st, "end_date": ed, "end_time": et, "protocol": r["protocol"],
            "bytes": r["bytes"], "packets": r["packets"], "exporter": _address(r["exporter_ip"]),
            "status": r["status"], "binding_source": r["binding_source"], "session_id": r["session_id"],
            "allocation_start_date": asd, "allocation_start_time": ast, "allocation_end_date": aed,
            "allocation_end_time": aet,
            **{f"customer_{k}": who.get(k, "") for k in DIRECTORY_FIELDS},
            "_start_ms": int(r["start_ms"]), "_protocol": int(r["protocol"]),
            "_ports": (int(r["nat_port"]), int(r["nat_port"]), 1) if public else None,
        })
    return rows


def nat_sql(rows: list[dict[str, object]], from_ms: int, to_ms: int, lookback_s: int, source: Source) -> str | None:
    """For report rows without a public side (flows exported by a router inside the NAT), the NAT session and port
    block starts/ends of their inside addresses over the period (plus the lookback before it), or None when every
    row has its public side already."""
    inside = sorted({str(r["source_ip"]) for r in rows if not r["public_ip"] and r["source_ip"]})
    if not inside:
        return None
    where = (f"private_addr IN ({', '.join(address_literal(a) for a in inside)}) "
             "AND scope IN ('session', 'block') AND action IN (1, 2)")
    return (f"SELECT IPv6NumToString(private_addr) AS inside, private_port, {ms('time')} AS t, action, protocol, "
            "IPv6NumToString(public_addr) AS public, public_port_start, public_port_end, port_step, scope "
            f"FROM {filtered(source, 'nat_events', from_ms - lookback_s * 1000, to_ms, where)} ORDER BY t")


def fill_public_side(rows: list[dict[str, object]], events: pa.Table) -> int:
    """Fill ``public_ip``/``public_port`` of rows without them from the NAT log (``events`` from :func:`nat_sql`):
    the latest session start of the same inside address, port and protocol, else port block start of the inside
    address, at or before the record's start (milliseconds; a start outranks an end at the same millisecond) and not
    ended since. A port block gives its range as the port (``1024-1151``, ``2001-2063 step 2``): PBA logging does
    not name the port. Returns the rows filled."""
    by_inside: dict[str, list[dict[str, Any]]] = {}
    for e in events.to_pylist():
        by_inside.setdefault(_address(e["inside"]), []).append(e)
    filled = 0
    for r in rows:
        if r["public_ip"] or r["source_ip"] not in by_inside:
            continue
        start = int(cast(int, r["_start_ms"]))
        for scope in ("session", "block"):
            found = [e for e in by_inside[r["source_ip"]] if e["scope"] == scope and e["t"] <= start
                     and (scope == "block" or (e["private_port"] == r["source_port"]
                                               and e["protocol"] in (0, r["_protocol"])))]
            if not found:
                continue
            last = max(found, key=lambda e: (e["t"], e["action"] == 1))
            if last["action"] == 1:
                first, end, step = last["public_port_start"], last["public_port_end"], max(last["port_step"], 1)
                r["public_ip"] = _address(last["public"])
                r["public_port"] = first if first == end else f"{first}-{end}" + (f" step {step}" if step > 1 else "")
                r["_ports"] = (first, end, step)
                filled += 1
            break
    return filled


def keep_for_address(rows: list[dict[str, object]], address: str, port: int | None) -> list[dict[str, object]]:
    """The rows of an address report: those with ``address`` (and ``port``) as their inside side, or as their public
    side (as recorded, or as filled from the NAT log: a port block covers the ports of its range and step)."""
    want = optional_address_text(address)

    def covers(ports: tuple[int, int, int] | None) -> bool:
        if ports is None:
            return False
        first, last, step = ports
        return port is None or (first <= port <= last and (port - first) % step == 0)

    return [r for r in rows if (r["source_ip"] == want and (port is None or r["source_port"] == port))
            or (r["public_ip"] == want and covers(cast("tuple[int, int, int] | None", r["_ports"])))]


def fill_deterministic(rows: list[dict[str, object]], deterministic: DeterministicNat) -> int:
    """Fill the public side of rows still without one from deterministic NAT rules
    (:class:`mediation.compliance.deterministic.DeterministicNat`): the outside address and the host's port block."""
    filled = 0
    for r in rows:
        if r["public_ip"] or not deterministic:
            continue
        m = deterministic.outside_of(str(r["source_ip"]))
        if m is not None:
            r["public_ip"], r["public_port"] = m.outside, f"{m.first_port}-{m.last_port}"
            r["_ports"] = (m.first_port, m.last_port, 1)
            filled += 1
    return filled


def to_csv(rows: list[dict[str, object]], fields: list[str]) -> str:
    """CSV with a header line of ``fields``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        writer.writerow([r[f] for f in fields])
    return out.getvalue()


def to_xlsx(rows: list[dict[str, object]], fields: list[str], path: str | Path, *, title: str = "IPDR") -> None:
    """An XLSX workbook at ``path``: one sheet, a bold header row of ``fields``, then the rows."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "strings_to_urls": False})
    try:
        ws = wb.add_worksheet(title[:31])
        bold = wb.add_format({"bold": True})
        ws.write_row(0, 0, fields, bold)
        for i, r in enumerate(rows, start=1):
            ws.write_row(i, 0, [r[f] for f in fields])
        ws.freeze_panes(1, 0)
    finally:
        wb.close()
