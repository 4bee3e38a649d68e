"""A subscriber's billing cycle: usage per interval by direction and class with the allowance, caps and time bands
drawn, the rated records and amounts beside it with ``flowmed explain`` for each, as a page, CSV and a PDF statement.

A billing dispute ("why was I charged for 212 GB in October?") is answered from one place: what was used when (and in
which band), how much was inside the allowance, and how each amount was reached.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from collector.console import charts, queries
from collector.console.views import (
    Cell,
    ChartView,
    Context,
    PageError,
    PageValues,
    Row,
    TableView,
    money,
    money_value,
    nbytes,
    number,
    text,
    time_cell,
)
from collector.console.window import Window, iso
from collector.console.window import label as utc_label

if TYPE_CHECKING:  # the rating floor is imported when a page first needs it
    from collector.console.pdf import StatementLine
    from rating.assignments import Assignments
    from rating.plans import Plan, PlanBook, RateCard

PAGE_RECORDS = 200
"""Rated records per page of the records table."""
SUBSCRIBER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
BAND_COLORS = ("rgba(224,123,57,0.13)", "rgba(47,111,179,0.10)", "rgba(58,157,93,0.12)", "rgba(132,97,180,0.12)")


@dataclass
class Segment:
    """The part of the cycle under one plan assignment."""

    plan: Plan
    start_ms: int
    end_ms: int


@dataclass
class Cycle:
    """What the page knows about the subscriber's cycle: label, bounds, plan segments, and why something is missing."""

    subscriber: str
    label: str
    start_ms: int
    end_ms: int
    segments: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> Plan | None:
        return self.segments[0].plan if self.segments else None


def check_subscriber(value: str) -> str:
    if not SUBSCRIBER_RE.match(value):
        raise PageError("subscriber id: expected 1 to 256 printable characters")
    return value


def resolve_cycle(ctx: Context, subscriber: str, label: str | None) -> Cycle:
    """The cycle ``label`` (default: the current one) of ``subscriber`` under its plan assignments."""
    from rating.timebase import cycle_bounds, cycle_label_to_month, cycles

    notes: list[str] = []
    plans: PlanBook | None = None
    assignments: Assignments | None = None
    try:
        job = ctx.store.rating_job()
        plans, assignments = job.plans, job.assignments
    except Exception as exc:  # a missing or invalid plans/assignments file: usage is still shown
        notes.append(f"plans or assignments cannot be read ({exc}): no allowance, bands or amounts")
    mine = [a for a in assignments.items if a.subscriber_id == subscriber] if assignments is not None else []
    now = ctx.now_ms()
    if label is not None:
        try:
            cycle_label_to_month(label)
        except ValueError as exc:
            raise PageError(str(exc)) from None
    reference = next((a for a in reversed(mine) if a.from_ms <= now), mine[-1] if mine else None)
    ref_versions = plans.plans.get(reference.plan_id) if reference is not None and plans is not None else None
    if label is None:
        if ref_versions:
            _, _, idx, labels = cycles(ref_versions[0].timezone, ref_versions[0].cycle_day, np.array([now]))
            label = labels[int(idx[0])]
        else:
            label = dt.datetime.fromtimestamp(now / 1000, dt.UTC).strftime("%Y-%m")
    segments = []
    for a in mine:
        versions = plans.plans.get(a.plan_id) if plans is not None else None
        if plans is None or not versions:
            notes.append(f"plan {a.plan_id!r} of the assignment from {iso(a.from_ms)} is not in the plans file")
            continue
        c0, c1 = cycle_bounds(versions[0].timezone, versions[0].cycle_day, label)
        s0, s1 = max(c0, a.from_ms), min(c1, a.to_ms)
        if s0 < s1:
            plan = plans.version_at(a.plan_id, s0) or versions[0]
            segments.append(Segment(plan, s0, s1))
    if segments:
        plan = segments[0].plan
        start, end = cycle_bounds(plan.timezone, plan.cycle_day, label)
        if len(segments) > 1:
            notes.append("the plan changes in this cycle: allowances and caps apply per segment (see explain)")
    else:
        y, m = cycle_label_to_month(label)
        start = int(dt.datetime(y, m, 1, tzinfo=dt.UTC).timestamp() * 1000)
        end = int(dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
        if assignments is not None:
            notes.append("no plan assignment covers this cycle: usage only (calendar month, UTC)")
    return Cycle(subscriber, label, start, end, segments, notes)


def band_spans(plan: Plan | None, start_ms: int, end_ms: int) -> list[tuple[int, int, str]]:
    """``(start, end, band)`` of every listed band's local time-of-day window in ``[start_ms, end_ms)``."""
    if plan is None or not plan.bands:
        return []
    tz = ZoneInfo(plan.timezone)
    day = dt.datetime.fromtimestamp(start_ms / 1000, tz).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(end_ms / 1000, tz).date()
    spans = []
    while day <= last:
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        for band in plan.bands:
            if day.weekday() not in band.days:
                continue
            minutes = band.end_minute - band.start_minute if band.end_minute > band.start_minute \
                else 1440 - band.start_minute + band.end_minute
            a = midnight + dt.timedelta(minutes=band.start_minute)  # wall-clock arithmetic: DST days are right
            b = a + dt.timedelta(minutes=minutes)
            lo, hi = max(int(a.timestamp() * 1000), start_ms), min(int(b.timestamp() * 1000), end_ms)
            if lo < hi:
                spans.append((lo, hi, band.name))
        day += dt.timedelta(days=1)
    return spans


def _local(ms: int, tz: str) -> str:
    """The local time as ``flowmed explain`` prints it (to find a record's lines in its output)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M %Z")


def explain_by_record(lines: list[str], records: list[Row],
                      plans: PlanBook) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``flowmed explain`` output into the lines of each record (by record id) and the rest (plan, totals)."""
    blocks: list[list[str]] = []
    general: list[str] = []
    for line in lines:
        if line.startswith(" ") and blocks:
            blocks[-1].append(line)
        elif line.startswith(("subscriber ", "plan ", "total ", "unrated usage")):
            general.append(line)
        else:
            blocks.append([line])
    heads: dict[str, str] = {}
    ordered: dict[str, list[str]] = {"minimum_charge": [], "burstable": []}
    for r in records:
        if r["rate_card"] in ordered:
            ordered[r["rate_card"]].append(r["record_id"])
            continue
        try:
            tz = plans.get(r["plan_id"], r["plan_version"]).timezone
        except (KeyError, AttributeError):
            continue
        heads[f"{_local(r['start_s'] * 1000, tz)}  {r['direction']} {r['traffic_class']}  band {r['band']}:"] = \
            r["record_id"]
    out: dict[str, list[str]] = {}
    for block in blocks:
        head = block[0]
        kind = "minimum_charge" if head.startswith("minimum charge") else \
            "burstable" if head.startswith("burstable:") else ""
        if kind:
            rid = ordered[kind].pop(0) if ordered[kind] else None
        else:
            rid = next((heads[k] for k in heads if head.startswith(k)), None)
        if rid is None:
            general.extend(block)
        else:
            out[rid] = block
    return general, out


def _read(ctx: Context, cyc: Cycle) -> tuple[Any, Any, queries.Query, queries.Query]:
    src = ctx.store.source
    q_usage = queries.subscriber_usage(src, cyc.subscriber, ctx.config.rating.source, cyc.start_ms, cyc.end_ms)
    q_rated = queries.rated_records(src, cyc.subscriber, cyc.label, cyc.start_ms, cyc.end_ms)
    return ctx.run(q_usage), ctx.run(q_rated), q_usage, q_rated


def _explain(ctx: Context, cyc: Cycle) -> list[str]:
    if cyc.plan is None:
        return []

    def make() -> list[str]:
        from rating.explain import explain

        try:
            return explain(ctx.store.rating_job(), cyc.subscriber, cyc.label)
        except Exception as exc:  # shown on the page; the rest of it still answers
            return [f"explain failed: {exc}"]

    return ctx.memo.get(("explain", cyc.subscriber, cyc.label), make)


def summary(records: list[Row]) -> tuple[list[StatementLine], dict[str, tuple[int, int]]]:
    """Per (rate card, direction, class, band): records, bytes, billable, allowance, amount; and per currency
    (amount, bytes)."""
    groups: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        g = groups[(r["rate_card"], r["direction"], r["traffic_class"], r["band"], r["currency"])]
        g[0] += 1
        g[1] += r["bytes"]
        g[2] += r["billable_quantity"] if r["quantity_unit"] == "bytes" else 0
        g[3] += r["allowance_quantity"]
        g[4] += r["amount_micros"]
        totals[r["currency"]][0] += r["amount_micros"]
        totals[r["currency"]][1] += r["bytes"]
    return ([(*k, v[0], v[1], v[2], v[3], v[4]) for k, v in sorted(groups.items())],
            {c: (v[0], v[1]) for c, v in sorted(totals.items())})


def subscriber_page(ctx: Context, params: dict[str, str]) -> PageValues:
    """The page: a subscriber's cycle, or (without ``id``) the top subscribers of the window to pick from."""
    sid = (params.get("id") or "").strip()
    if not sid:
        return _pick(ctx, params)
    check_subscriber(sid)
    cyc = resolve_cycle(ctx, sid, params.get("cycle") or None)
    usage, rated, q_usage, q_rated = _read(ctx, cyc)
    records = rated.to_pylist()
    plan = cyc.plan

    # usage per interval, stacked by direction and class, bands behind it
    per: dict[str, dict[int, int]] = {}
    for r in usage.to_pylist():
        per.setdefault(f"{r['direction']} · {r['traffic_class']}", {})[r["t"]] = r["bytes"]
    steps = sorted({t for values in per.values() for t in values})
    fig_usage = None
    bands_note = ""
    if steps:
        fig_usage = charts.stacked_bars("", "bytes per interval", steps, per)
        colors: dict[str, str] = {}
        shapes = []
        for seg in cyc.segments:
            for i, band in enumerate(b.name for b in seg.plan.bands):
                colors.setdefault(band, BAND_COLORS[i % len(BAND_COLORS)])
            shapes += charts.band_shapes(band_spans(seg.plan, seg.start_ms, seg.end_ms), colors)
        fig_usage["layout"]["shapes"] = shapes
        fig_usage["layout"]["bargap"] = 0
        fig_usage["layout"]["xaxis"]["range"] = [utc_label(cyc.start_ms), utc_label(cyc.end_ms)]
        if plan is not None and plan.bands:
            bands_note = "Shaded: " + "; ".join(
                f"{b.name} ({_days(b.days)} {b.start_minute // 60:02d}:{b.start_minute % 60:02d}–"
                f"{b.end_minute // 60:02d}:{b.end_minute % 60:02d})" for b in plan.bands) + \
                f", {plan.timezone}; other times: {plan.default_band}."
    usage_chart = ChartView(f"Usage per interval, by direction and class — cycle {cyc.label}", fig_usage, [q_usage],
                            note=bands_note, id="chart-usage")
    charts_list = [usage_chart, _cumulative_chart(cyc, records, q_rated), _amount_chart(cyc, records, q_rated)]

    # records, each with its explain lines
    general, explained = _explain_lines(ctx, cyc, records)
    page = max(1, _int(params.get("page"), 1))
    pages = max(1, -(-len(records) // PAGE_RECORDS))
    shown = records[(page - 1) * PAGE_RECORDS: page * PAGE_RECORDS]
    tz = plan.timezone if plan is not None else "UTC"
    rows = [[time_cell(r["start_s"]), text(_local(r["start_s"] * 1000, tz)), text(r["direction"]),
             text(r["traffic_class"]), text(r["band"]), nbytes(r["bytes"]), number(r["billable_quantity"]),
             number(r["allowance_quantity"]), number(r["cycle_to_date"]),
             Cell(money(r["amount_micros"], r["currency"]), str(r["amount_micros"]), True), number(r["version"])]
            for r in shown]
    table = TableView("Rated records and how each amount was reached (flowmed explain)",
                      ["interval (UTC)", f"local ({tz})", "direction", "class", "band", "bytes", "billable",
                       "in allowance", "cycle to date", "amount", "version"], rows, [q_rated],
                      details=[explained.get(r["record_id"], []) for r in shown], id="table-records")
    lines, totals = summary(records)
    sum_rows = [[text(card), text(d), text(c), text(b), number(n), nbytes(by), number(bill), number(allow),
                 Cell(money(amount, cur), str(amount), True)]
                for card, d, c, b, cur, n, by, bill, allow, amount in lines]
    sum_table = TableView("Summary by rate card, direction, class and band",
                          ["rate card", "direction", "class", "band", "records", "bytes", "billable", "in allowance",
                           "amount"], sum_rows, [q_rated], id="table-summary")
    sum_table.note = "; ".join(f"total {money(amount, cur)} ({amount:,} micro-{cur}) for {nb:,} bytes"
                               for cur, (amount, nb) in totals.items())
    used = sum(r["bytes"] for r in usage.to_pylist())
    return {"title": f"Subscriber {sid}", "subscriber": sid, "cycle": cyc, "charts": charts_list,
            "tables": [sum_table, table], "general": general, "page": page, "pages": pages,
            "pager": pager(page, pages),
            "records": len(records), "usage_bytes": used, "plan": plan,
            "totals": {cur: (amount, nb, money(amount, cur)) for cur, (amount, nb) in totals.items()},
            "cycle_local": _cycle_local(cyc), "prev_cycle": _shift(cyc.label, -1), "next_cycle": _shift(cyc.label, 1),
            "empty": not steps and not records}


def _explain_lines(ctx: Context, cyc: Cycle, records: list[Row]) -> tuple[list[str], dict[str, list[str]]]:
    lines = _explain(ctx, cyc)
    if not lines:
        return [], {}
    try:
        plans = ctx.store.rating_job().plans
    except Exception:
        return lines, {}
    return explain_by_record(lines, records, plans)


def pager(page: int, pages: int, around: int = 4) -> list[int]:
    """Page numbers to link: the first, the last and those around ``page``; 0 stands for a gap."""
    keep = sorted({1, pages, *range(max(1, page - around), min(pages, page + around) + 1)})
    out: list[int] = []
    for n in keep:
        if out and n > out[-1] + 1:
            out.append(0)
        out.append(n)
    return out


def _days(days: tuple[int, ...]) -> str:
    names = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    if list(days) == list(range(days[0], days[-1] + 1)) and len(days) > 2:
        return f"{names[days[0]]}–{names[days[-1]]}"
    return ",".join(names[d] for d in days)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        raise PageError(f"{value!r}: expected a number") from None


def _shift(label: str, months: int) -> str:
    y, m = int(label[:4]), int(label[5:7]) - 1 + months
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}"


def _cycle_local(cyc: Cycle) -> str:
    tz = ZoneInfo(cyc.plan.timezone if cyc.plan is not None else "UTC")
    a = dt.datetime.fromtimestamp(cyc.start_ms / 1000, tz)
    b = dt.datetime.fromtimestamp(cyc.end_ms / 1000, tz)
    return f"{a:%Y-%m-%d %H:%M} – {b:%Y-%m-%d %H:%M} {tz.key}"


def _card_allowance(seg: Segment, card: RateCard, cyc: Cycle) -> int:
    """The card's allowance for a segment, prorated (floor) by its share of the cycle as rating does."""
    if not seg.plan.prorate:
        return card.allowance_bytes
    return card.allowance_bytes * (seg.end_ms - seg.start_ms) // (cyc.end_ms - cyc.start_ms)


def _cumulative_chart(cyc: Cycle, records: list[Row], q_rated: queries.Query) -> ChartView:
    per: dict[str, tuple[list[str], list[int]]] = {}
    for r in records:
        if r["quantity_unit"] != "bytes" or r["rate_card"] in ("zero_rated", "minimum_charge"):
            continue
        xs, ys = per.setdefault(r["rate_card"], ([], []))
        xs.append(utc_label(r["start_s"] * 1000))
        ys.append(r["cycle_to_date"])
    if not per:
        return ChartView("Billable volume, cycle to date", None, [q_rated], id="chart-cumulative")
    data = [{"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": charts.PALETTE[i % 12]},
             "name": f"{card} (billable, cycle to date)", "x": xs, "y": ys}
            for i, (card, (xs, ys)) in enumerate(per.items())]
    lay = charts.layout("", "bytes")
    lay["xaxis"]["range"] = [utc_label(cyc.start_ms), utc_label(cyc.end_ms)]
    shapes, notes = [], []
    for seg in cyc.segments:
        for card in seg.plan.rates:
            if card.allowance_bytes and card.name in per:
                s, n = charts.hline(_card_allowance(seg, card, cyc), f"{card.name} allowance", "#3a9d5d")
                shapes.append(s)
                notes.append(n)
        if seg.plan.fair_usage_bytes:
            s, n = charts.hline(seg.plan.fair_usage_bytes, "fair-usage threshold", "#c4453c")
            shapes.append(s)
            notes.append(n)
    lay["shapes"], lay["annotations"] = shapes, notes
    return ChartView("Billable volume, cycle to date, against the allowance and the fair-usage cap",
                     {"data": data, "layout": lay}, [q_rated], id="chart-cumulative")


def _amount_chart(cyc: Cycle, records: list[Row], q_rated: queries.Query) -> ChartView:
    per: dict[str, tuple[list[str], list[str]]] = {}
    running: dict[str, int] = defaultdict(int)
    for r in sorted(records, key=lambda r: (r["start_s"], r["record_id"])):
        running[r["currency"]] += r["amount_micros"]
        xs, ys = per.setdefault(r["currency"], ([], []))
        xs.append(utc_label(r["start_s"] * 1000))
        ys.append(money_value(running[r["currency"]]))
    if not per:
        return ChartView("Amount, cycle to date", None, [q_rated], id="chart-amount")
    data = [{"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": charts.PALETTE[i % 12]},
             "name": f"amount ({cur})", "x": xs, "y": ys} for i, (cur, (xs, ys)) in enumerate(per.items())]
    lay = charts.layout("", "amount (" + ", ".join(per) + ")")
    lay["xaxis"]["range"] = [utc_label(cyc.start_ms), utc_label(cyc.end_ms)]
    shapes, notes = [], []
    for seg in cyc.segments:
        if seg.plan.max_charge is not None:
            s, n = charts.hline(str(seg.plan.max_charge), "maximum charge", "#c4453c")
            shapes.append(s)
            notes.append(n)
        if seg.plan.minimum_charge:
            s, n = charts.hline(str(seg.plan.minimum_charge), "minimum charge", "#8461b4")
            shapes.append(s)
            notes.append(n)
    lay["shapes"], lay["annotations"] = shapes, notes
    return ChartView("Amount, cycle to date (sum of the rated records)", {"data": data, "layout": lay}, [q_rated],
                     id="chart-amount")


def _pick(ctx: Context, params: dict[str, str]) -> PageValues:
    w: Window = ctx.window(params if params.get("from") or params.get("range") else {**params, "range": "24h"})
    q = queries.top_subscribers(ctx.store.source, ctx.config.rating.source, w)
    data = ctx.run(q)
    table = TableView("Subscribers with the most usage in the window", ["subscriber", "bytes"],
                      [[Cell(r["subscriber_id"]), nbytes(r["bytes"])] for r in data.to_pylist()], [q],
                      id="table-subscribers")
    return {"title": "Subscribers", "window": w, "charts": [], "tables": [table], "subscriber": "", "pick": True,
            "empty": data.num_rows == 0}


# --- downloads ------------------------------------------------------------------------------------------------------


def records_csv(ctx: Context, params: dict[str, str]) -> tuple[str, str]:
    """The cycle's current rated records as CSV (amounts as exact decimals and micro-units); (file name, text)."""
    sid = check_subscriber((params.get("id") or "").strip())
    cyc = resolve_cycle(ctx, sid, params.get("cycle") or None)
    _, rated, _, _ = _read(ctx, cyc)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    cols = ["interval_start", "interval_end", *queries.RATED_COLUMNS, "amount"]
    w.writerow(cols)
    for r in rated.to_pylist():
        w.writerow([utc(r["start_s"]), utc(r["end_s"]),
                    *[r[c] for c in queries.RATED_COLUMNS], money_value(r["amount_micros"])])
    return f"{_safe(sid)}-{cyc.label}-rated.csv", out.getvalue()


def usage_csv(ctx: Context, params: dict[str, str]) -> tuple[str, str]:
    """The cycle's usage per interval, direction and class as CSV; (file name, text)."""
    sid = check_subscriber((params.get("id") or "").strip())
    cyc = resolve_cycle(ctx, sid, params.get("cycle") or None)
    usage, _, _, _ = _read(ctx, cyc)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["interval_start", "direction", "traffic_class", "bytes", "packets"])
    for r in usage.to_pylist():
        w.writerow([utc(r["t"]), r["direction"], r["traffic_class"], r["bytes"], r["packets"]])
    return f"{_safe(sid)}-{cyc.label}-usage.csv", out.getvalue()


def statement_pdf(ctx: Context, params: dict[str, str]) -> tuple[str, bytes]:
    """A one-page PDF statement of the cycle; (file name, bytes)."""
    from collector.console.pdf import statement

    sid = check_subscriber((params.get("id") or "").strip())
    cyc = resolve_cycle(ctx, sid, params.get("cycle") or None)
    usage, rated, _, _ = _read(ctx, cyc)
    lines, totals = summary(rated.to_pylist())
    daily: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    tz = ZoneInfo(cyc.plan.timezone if cyc.plan is not None else "UTC")
    day = dt.datetime.fromtimestamp(cyc.start_ms / 1000, tz)
    while day.timestamp() * 1000 < cyc.end_ms:  # every day of the cycle, used or not
        daily[day.strftime("%m-%d")] = defaultdict(int)
        day = (day + dt.timedelta(days=1)).replace(hour=0, minute=0)
    for r in usage.to_pylist():
        local_day = dt.datetime.fromtimestamp(r["t"], tz).strftime("%m-%d")
        daily[local_day][r["direction"]] += r["bytes"]
    data = statement(subscriber=sid, cycle=cyc.label, period=_cycle_local(cyc),
                     plan=(f"{cyc.plan.id} version {cyc.plan.version}" if cyc.plan is not None else "none"),
                     lines=lines, totals=totals, daily=daily, notes=cyc.notes,
                     generated=iso(ctx.now_ms()).replace("T", " ") + " UTC")
    return f"{_safe(sid)}-{cyc.label}-statement.pdf", data


def utc(seconds: int) -> str:
    """UTC seconds as ISO 8601 (``2026-11-02T09:00:00Z``)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "subscriber"
