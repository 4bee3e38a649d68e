"""Helpers for the rating tests: plans and assignments from text, usage tables from tuples."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pyarrow as pa

from rating.assignments import parse_assignments
from rating.plans import parse_plans


def ms(text: str) -> int:
    """UTC milliseconds of an ISO time with offset, e.g. '2026-11-02T09:00:00+01:00'."""
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def usage(rows: list[tuple[str, str, str, str, int]], interval_ms: int = 300_000) -> pa.Table:
    """Usage rows (subscriber, interval start ISO, direction, class, bytes) as a usage table."""
    return pa.table({
        "subscriber_id": [r[0] for r in rows],
        "interval_start": pa.array([ms(r[1]) for r in rows], pa.int64()),
        "interval_end": pa.array([ms(r[1]) + interval_ms for r in rows], pa.int64()),
        "direction": [r[2] for r in rows],
        "traffic_class": [r[3] for r in rows],
        "bytes": pa.array([r[4] for r in rows], pa.uint64()),
    })


def plans(text: str):
    return parse_plans(tomllib.loads(text))


def assignments(text: str):
    return parse_assignments(text, "assignments.csv")


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["record_id"]: r for r in table.to_pylist()}


HOME_PLAN = """
[[plan]]
id = "home"
version = 1
active_from = "2026-01-01T00:00:00+01:00"
currency = "EUR"
timezone = "Europe/Berlin"
cycle_day = 1
unit = "GB"
quantity_increment_bytes = 1000000
quantity_rounding = "interval"
money_rounding = "half_up"
zero_rated_classes = ["cdn"]
default_band = "offpeak"

[[plan.band]]
name = "peak"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "08:00"
to = "20:00"

[[plan.rate]]
name = "download"
direction = "down"
allowance_bytes = 2000000000
tier_mode = "graduated"
[[plan.rate.tier]]
up_to_bytes = 5000000000
price = { peak = "1.20", offpeak = "0.60" }
[[plan.rate.tier]]
price = { peak = "0.80", offpeak = "0.40" }

[[plan.rate]]
name = "upload"
direction = "up"
price = "0.3333"
"""
