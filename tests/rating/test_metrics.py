"""RatingMetrics counts a finished run from its report (no attribute looked up by a built name)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from rating.job import RunReport
from rating.metrics import CHANGES, RatingMetrics


def test_report_changes_name_every_change_label() -> None:
    report = RunReport("r1", "rate", 0, 1, 1, records_new=1, records_changed=2, records_voided=3, records_unchanged=4)
    assert tuple(report.changes()) == CHANGES
    assert report.changes() == {"new": 1, "changed": 2, "voided": 3, "unchanged": 4}


def test_succeeded_counts_records_by_change() -> None:
    registry = CollectorRegistry()
    metrics = RatingMetrics(registry)
    report = RunReport("r1", "rate", 0, 3_600_000, 7_200_000, usage_rows=9, records_new=1, records_changed=2,
                       records_voided=3, records_unchanged=4, events_written=5, unrated_bytes=6)
    metrics.succeeded(report, 1.5, 1000.0)
    metrics.succeeded(report, 1.5, 1001.0)
    counts = {c: registry.get_sample_value("flowmed_rating_records_total", {"change": c}) for c in CHANGES}
    assert counts == {"new": 2.0, "changed": 4.0, "voided": 6.0, "unchanged": 8.0}
    assert registry.get_sample_value("flowmed_rating_events_written_total") == 10.0
    assert registry.get_sample_value("flowmed_rating_closed_until_timestamp_seconds") == 7200.0
    assert metrics.last["run_id"] == "r1"
