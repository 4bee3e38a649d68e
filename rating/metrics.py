"""Prometheus metrics of the rating job (``flowmed rate --follow`` serves them on ``rating.metrics_listen``).

What billing operations alert on: a job that stopped succeeding (``flowmed_rating_last_success_timestamp_seconds``),
rating that falls behind the closed usage (``flowmed_rating_closed_until_timestamp_seconds``), failed or skipped runs
(another host holds the lease), usage that no plan rates (``flowmed_rating_unrated_bytes``), and how much each run
changed (records by change, the amount delta of the last run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from rating.job import RunReport

OUTCOMES = ("ok", "failed", "skipped")
CHANGES = ("new", "changed", "voided", "unchanged")
"""The ``change`` labels, registered up front (``RunReport.changes`` has the same keys)."""


class RatingMetrics:
    """The metric objects of one rating process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.runs = Counter("flowmed_rating_runs", "Rating runs by kind and outcome (skipped: another host held the "
                            "lease).", ["kind", "outcome"], registry=r)
        self.duration = Histogram("flowmed_rating_run_duration_seconds", "Wall time of a rating run.", ["kind"],
                                  buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600), registry=r)
        self.usage_rows = Counter("flowmed_rating_usage_rows", "Usage rows read and rated.", registry=r)
        self.records = Counter("flowmed_rating_records", "Rated usage records compared by a run, by what changed "
                               "(only new, changed and voided ones are written).", ["change"], registry=r)
        self.events = Counter("flowmed_rating_events_written", "Rating events written.", registry=r)
        self.unrated_bytes = Counter("flowmed_rating_unrated_bytes", "Usage bytes no plan rated (no assignment or "
                                     "no rate card).", registry=r)
        self.amount_delta = Gauge("flowmed_rating_last_amount_delta_micros", "Sum over subscribers and currencies "
                                  "of the change in rated amounts made by the last successful run (micro-units).",
                                  registry=r)
        self.last_success = Gauge("flowmed_rating_last_success_timestamp_seconds", "Unix time the last successful "
                                  "run finished.", registry=r)
        self.closed_until = Gauge("flowmed_rating_closed_until_timestamp_seconds", "Usage ending before this time "
                                  "was closed and rated by the last successful run.", registry=r)
        for kind in ("rate", "rerate"):
            for outcome in OUTCOMES:
                self.runs.labels(kind, outcome)
        for change in CHANGES:
            self.records.labels(change)
        self.last: dict[str, Any] = {}

    def succeeded(self, report: RunReport, seconds: float, finished_s: float) -> None:
        """Count a finished run."""
        self.runs.labels(report.kind, "ok").inc()
        self.duration.labels(report.kind).observe(seconds)
        self.usage_rows.inc(report.usage_rows)
        for change, n in report.changes().items():
            self.records.labels(change).inc(n)
        self.events.inc(report.events_written)
        self.unrated_bytes.inc(report.unrated_bytes)
        self.amount_delta.set(report.amount_delta)
        self.last_success.set(finished_s)
        self.closed_until.set(report.closed_until / 1000)
        self.last = {"run_id": report.run_id, "kind": report.kind, "seconds": round(seconds, 3),
                     "period_from_ms": report.period_from, "period_to_ms": report.period_to,
                     "closed_until_ms": report.closed_until, "usage_rows": report.usage_rows}

    def failed(self, kind: str, seconds: float, outcome: str = "failed") -> None:
        """Count a run that failed, or was ``skipped`` because another host held the lease."""
        self.runs.labels(kind, outcome).inc()
        if outcome == "failed":
            self.duration.labels(kind).observe(seconds)

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: the last successful run."""
        return {"role": "rating", "last_run": self.last}
