"""Billing export: a cycle's current rated records as per-subscriber lines, totals and a control record.

``flowmed bill-run --cycle 2026-11`` writes three files into the output directory:

* ``bill-run-2026-11-lines.{csv,parquet}``: per subscriber, currency, plan, plan version, rate card, direction,
  traffic class and band: records, bytes, billable quantity, allowance quantity, amount (micro-units, and as exact
  decimal text);
* ``bill-run-2026-11-totals.{csv,parquet}``: per subscriber and currency: records, bytes, amount;
* ``bill-run-2026-11-control.{csv,parquet}``: per currency: the record count, total bytes and total amount over the
  lines, the number of subscribers, and whether the cycle was complete, so a BSS can check what it loaded.

The export refuses a cycle whose intervals are not all closed (the cycle end, in every plan calendar, is after the
rating job's ``closed_until``) unless forced; a forced export says so in its control record.
"""

from __future__ import annotations

import time
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


def cycle_span(plans: PlanBook, cycle: str) -> tuple[int, int]:
    """Earliest start and latest end of ``cycle`` over every plan calendar."""
    cycle_label_to_month(cycle)
    calendars = {(v[0].timezone, v[0].cycle_day) for v in plans.plans.values()} or {("UTC", 1)}
    spans = [cycle_bounds(tz, day, cycle) for tz, day in calendars]
    return min(s for s, _ in spans), max(e for _, e in spans)


def bill_run(query, plans: PlanBook, cycle: str, closed_until_ms: int, *, force: bool = False) -> BillRun:
    """Build the export of ``cycle`` from the current rated records (``query(sql) -> pa.Table``)."""
    start, end = cycle_span(plans, cycle)
    complete = end <= closed_until_ms
    if not complete and not force:
        raise CycleOpen(f"cycle {cycle} is not closed: it ends at {iso(end)} but intervals are closed only until "
                        f"{iso(closed_until_ms)} (use --force for a provisional export)")
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
    g = lines.group_by(["subscriber_id", "currency"]).aggregate(
        [("records", "sum"), ("bytes", "sum"), ("amount_micros", "sum")])
    totals = pa.table({"subscriber_id": g["subscriber_id"], "currency": g["currency"],
                       "records": g["records_sum"], "bytes": g["bytes_sum"],
                       "amount_micros": g["amount_micros_sum"]}).sort_by([("subscriber_id", "ascending"),
                                                                           ("currency", "ascending")])
    totals = totals.append_column("amount", decimal_text(totals["amount_micros"].to_pylist()))
    c = totals.group_by(["currency"]).aggregate([("records", "sum"), ("bytes", "sum"), ("amount_micros", "sum"),
                                                 ("subscriber_id", "count_distinct")])
    n = c.num_rows
    control = pa.table({
        "cycle": pa.array([cycle] * n), "currency": c["currency"], "record_count": c["records_sum"],
        "total_bytes": c["bytes_sum"], "total_amount_micros": c["amount_micros_sum"],
        "total_amount": decimal_text(c["amount_micros_sum"].to_pylist()),
        "subscribers": c["subscriber_id_count_distinct"], "cycle_start": pa.array([iso(start)] * n),
        "cycle_end": pa.array([iso(end)] * n), "complete": pa.array([complete] * n),
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
