"""Re-rating: recompute a period after a plan or assignment correction and report the difference per subscriber.

A re-rate is a rating run over the whole cycles that overlap ``[from, to)`` (tiers and allowances are cycle-wide, so
a part of a cycle cannot be re-rated alone), optionally for one subscriber. Records whose figures change get a new
version; nothing is deleted, so the history of every amount stays in ``rated_usage`` and the run is recorded in
``rating_runs`` with its amount delta.
"""

from __future__ import annotations

from decimal import Decimal

from rating.job import RatingJob, RunReport, iso
from rating.timebase import Instant


def rerate(job: RatingJob, from_: Instant, to: Instant, subscriber: str | None = None,
           now_ms: int | None = None) -> RunReport:
    """Re-rate the cycles overlapping ``[from_, to)`` (each plan calendar on its own) under the lease; see
    :meth:`RatingJob.run`."""
    return job.run("rerate", from_=from_, to=to, subscriber=subscriber, now_ms=now_ms)


def _money(micros: int) -> str:
    return str(Decimal(micros).scaleb(-6).quantize(Decimal("0.000001")))


def format_report(report: RunReport) -> list[str]:
    """Human-readable summary: the period, record counts and the difference per subscriber and currency."""
    lines = [f"{report.kind} {report.run_id}: usage from {iso(report.period_from)} to {iso(report.period_to)} "
             f"(closed until {iso(report.closed_until)})",
             *(f"  {calendar}: cycles {', '.join(labels) if labels else 'none'}"
               for calendar, labels in report.cycles.items()),
             f"usage keys {report.usage_rows}; records new {report.records_new}, changed {report.records_changed}, "
             f"voided {report.records_voided}, unchanged {report.records_unchanged}; events {report.events_written}"]
    if report.unrated_bytes:
        lines.append(f"unrated bytes {report.unrated_bytes} (see rating_events)")
    if not report.per_subscriber:
        lines.append("no subscriber's amount changed")
        return lines
    lines.append("subscriber\tcurrency\tbefore\tafter\tdifference")
    for (sub, cur), (before, after) in sorted(report.per_subscriber.items()):
        lines.append(f"{sub}\t{cur}\t{_money(before)}\t{_money(after)}\t{_money(after - before)}")
    return lines
