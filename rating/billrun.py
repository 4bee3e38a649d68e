"""Billing export: a cycle's current rated records as per-subscriber lines, totals and a control record.

``flowmed bill-run --cycle 2026-11`` writes three files into the output directory:

* ``bill-run-2026-11-lines.{csv,parquet}``: per subscriber, currency, plan, plan version, rate card, direction,
  traffic class and band: records, bytes, billable quantity, allowance quantity, amount (micro-units, and as exact
  decimal text);
* ``bill-run-2026-11-totals.{csv,parquet}``: per subscriber and currency: records, bytes, amount;
* ``bill-run-2026-11-control.{csv,parquet}``: per currency and plan calendar (time zone, cycle day): the record
  count, total bytes and total amount over the lines, the number of subscribers, that calendar's cycle start and
  end, and whether the cycle was complete there, so a BSS can check what it loaded. The lines carry the calendar
  of their plan too.

The export refuses a cycle whose intervals are not all closed (the cycle end, in some plan calendar, is after the
rating job's ``closed_until``) unless forced; a forced export says so in its control rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rating.job import iso, sql_string, sql_time
from rating.plans import PlanBook
from rating.tables import current_sql
from rating.timebase import cycle_bounds, cycle_label_to_month

LINE_KEY = ("subscriber_id", "currency", "plan_id", "plan_version", "rate_card", "direction", "traffic_class", "band")


class CycleOpen(RuntimeError):
    """The cycle still has intervals that are not closed."""


@dataclass
class BillRun:
    cycle: str
    lines: pa.Table
    totals: pa.Table
    control: pa.Table

    def write(self, directory: str | Path, fmt: str = "csv") -> list[Path]:
        """Write the three files; returns their paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, table in (("lines", self.lines), ("totals", self.totals), ("control", self.control)):
            path = out / f"bill-run-{self.cycle}-{name}.{fmt}"
            tmp = path.with_suffix(path.suffix + ".tmp")
            if fmt == "csv":
                pacsv.write_csv(table, tmp)
            elif fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                raise ValueError(f"unknown format {fmt!r}: csv or parquet")
            tmp.replace(path)
            paths.append(path)
        return paths


def decimal_text(micros: list[int]) -> pa.Array:
    """Micro-units as exact decimal text (``1234567`` -> ``"1.234567"``)."""
    return pa.array([str(Decimal(m).scaleb(-6).quantize(Decimal("0.000001"))) for m in micros], pa.string())


def calendars(plans: PlanBook) -> dict[str, tuple[str, int]]:
    """Plan id -> its calendar (IANA time zone, cycle day); every version of a plan shares them."""
    return {pid: (v[0].timezone, v[0].cycle_day) for pid, v in plans.plans.items() if v}


def cycle_span(plans: PlanBook, cycle: str) -> tuple[int, int]:
    """Earliest start and latest end of ``cycle`` over every plan calendar (the range to read, not a cycle)."""
    cycle_label_to_month(cycle)
    spans = [cycle_bounds(tz, day, cycle) for tz, day in set(calendars(plans).values()) or {("UTC", 1)}]
    return min(s for s, _ in spans), max(e for _, e in spans)


def bill_run(query: Callable[[str], pa.Table], plans: PlanBook, cycle: str, closed_until_ms: int, *,
             force: bool = False) -> BillRun:
    """Build the export of ``cycle`` from the current rated records (``query(sql) -> pa.Table``).

    A cycle label means a different span of time in each plan calendar (``2026-11`` of a Berlin plan starts an hour
    before that of a UTC plan), so the control has one row per currency *and calendar*, each with that calendar's
    own cycle bounds and completeness: no row mixes two calendars.
    """
    start, end = cycle_span(plans, cycle)
    plan_calendar = calendars(plans)
    bounds = {cal: cycle_bounds(cal[0], cal[1], cycle) for cal in set(plan_calendar.values())}
    still_open = sorted((e, tz, day) for (tz, day), (_, e) in bounds.items() if e > closed_until_ms)
    complete = not still_open
    if still_open and not force:
        e, tz, day = still_open[-1]
        raise CycleOpen(f"cycle {cycle} is not closed: in {tz} (cycle day {day}) it ends at {iso(e)} but intervals "
                        f"are closed only until {iso(closed_until_ms)} (use --force for a provisional export)")
    sums = ("count() AS records, sum(bytes) AS bytes, sum(billable_quantity) AS billable_quantity, "
            "sum(allowance_quantity) AS allowance_quantity, sum(amount_micros) AS amount_micros")
    inner = f"interval_start >= {sql_time(start)} AND interval_start < {sql_time(end)}"
    sql = current_sql(inner, columns=f"{', '.join(LINE_KEY)}, {sums}", outer=f"cycle = {sql_string(cycle)}")
    sql += f" GROUP BY {', '.join(LINE_KEY)} ORDER BY {', '.join(LINE_KEY)}"
    lines = _plain(query(sql))
    if lines.num_rows == 0:
        lines = pa.table({**{k: pa.array([], pa.string()) for k in LINE_KEY},
                          **{k: pa.array([], pa.int64()) for k in ("records", "bytes", "billable_quantity",
                                                                    "allowance_quantity", "amount_micros")}})
    lines = lines.append_column("amount", decimal_text(lines["amount_micros"].to_pylist()))
    # A plan no longer in the plans file has no known calendar: timezone "" and cycle day 0.
    cal = [plan_calendar.get(pid, ("", 0)) for pid in lines["plan_id"].to_pylist()]
    lines = lines.append_column("timezone", pa.array([c[0] for c in cal], pa.string()))
    lines = lines.append_column("cycle_day", pa.array([c[1] for c in cal], pa.int32()))
    g = lines.group_by(["subscriber_id", "currency"]).aggregate(
        [("records", "sum"), ("bytes", "sum"), ("amount_micros", "sum")])
    totals = pa.table({"subscriber_id": g["subscriber_id"], "currency": g["currency"],
                       "records": g["records_sum"], "bytes": g["bytes_sum"],
                       "amount_micros": g["amount_micros_sum"]}).sort_by([("subscriber_id", "ascending"),
                                                                           ("currency", "ascending")])
    totals = totals.append_column("amount", decimal_text(totals["amount_micros"].to_pylist()))
    c = lines.group_by(["currency", "timezone", "cycle_day"]).aggregate(
        [("records", "sum"), ("bytes", "sum"), ("amount_micros", "sum"), ("subscriber_id", "count_distinct")]
    ).sort_by([("currency", "ascending"), ("timezone", "ascending"), ("cycle_day", "ascending")])
    n = c.num_rows
    spans = [bounds.get((tz, day)) for tz, day in zip(c["timezone"].to_pylist(), c["cycle_day"].to_pylist(),
                                                        strict=True)]
    control = pa.table({
        "cycle": pa.array([cycle] * n), "currency": c["currency"], "timezone": c["timezone"],
        "cycle_day": c["cycle_day"], "record_count": c["records_sum"],
        "total_bytes": c["bytes_sum"], "total_amount_micros": c["amount_micros_sum"],
        "total_amount": decimal_text(c["amount_micros_sum"].to_pylist()),
        "subscribers": c["subscriber_id_count_distinct"],
        "cycle_start": pa.array([iso(sp[0]) if sp else "" for sp in spans], pa.string()),
        "cycle_end": pa.array([iso(sp[1]) if sp else "" for sp in spans], pa.string()),
        "complete": pa.array([sp[1] <= closed_until_ms if sp else complete for sp in spans], pa.bool_()),
        "generated_at": pa.array([iso(int(time.time() * 1000))] * n),
    })
    return BillRun(cycle, lines, totals, control)


def _plain(t: pa.Table) -> pa.Table:
    """Query result with plain types (strings, int64 sums)."""
    cols = {}
    for name in t.column_names:
        arr = t[name]
        if pa.types.is_dictionary(arr.type):
            arr = pc.cast(arr, pa.string())
        if pa.types.is_integer(arr.type) and name != "plan_version":
            arr = pc.cast(arr, pa.int64())
        cols[name] = arr
    return pa.table(cols)
