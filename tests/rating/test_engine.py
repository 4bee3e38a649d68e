"""The rating engine against figures worked out by hand (written-out arithmetic, never the engine's own)."""

from __future__ import annotations

from rating.engine import rate
from tests.rating.helpers import HOME_PLAN, assignments, by_id, ms, plans, usage

ALICE = "subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n"


def rid(sub: str, when: str, direction: str, cls: str, band: str) -> str:
    return f"{sub}/{ms(when)}/{direction}/{cls}/{band}"


def test_allowance_two_tiers_bands_zero_rated_and_two_collectors_summed():
    # 2026-11-02 is a Monday; Berlin is on CET (UTC+1) in November.
    rows = [
        ("alice", "2026-11-02T09:00:00+01:00", "down", "default", 1_500_000_000),   # peak, all in allowance
        ("alice", "2026-11-02T21:00:00+01:00", "down", "default", 1_000_000_001),   # off-peak, crosses allowance
        ("alice", "2026-11-03T10:00:00+01:00", "down", "cdn", 7_000_000_000),       # zero-rated
        ("alice", "2026-11-03T10:00:00+01:00", "down", "default", 2_000_000_000),   # peak, crosses tier 1 ...
        ("alice", "2026-11-03T10:00:00+01:00", "down", "default", 1_200_000_000),   # ... same key, other collector
        ("alice", "2026-11-07T12:00:00+01:00", "down", "default", 123_456_789),     # Saturday: off-peak, tier 2
        ("alice", "2026-11-02T09:00:00+01:00", "up", "default", 333_333_333),       # upload, flat 0.3333/GB
    ]
    result = rate(usage(rows), plans(HOME_PLAN), assignments(ALICE))
    rec = by_id(result.records)
    assert len(rec) == 6  # the two collectors' rows became one record

    r1 = rec[rid("alice", "2026-11-02T09:00:00+01:00", "down", "default", "peak")]
    # 1 500 MB exactly, cumulative 0 -> 1.5 GB, all inside the 2 GB allowance.
    assert (r1["billable_quantity"], r1["allowance_quantity"], r1["amount_micros"]) == (1_500_000_000,
                                                                                        1_500_000_000, 0)

    r2 = rec[rid("alice", "2026-11-02T21:00:00+01:00", "down", "default", "offpeak")]
    # 1 000 000 001 bytes -> 1 001 started MB = 1.001 GB; cumulative 1.5 -> 2.501 GB.
    # 0.5 GB in allowance, 0.501 GB at off-peak tier 1 0.60 EUR/GB = 0.3006 EUR = 300 600 micro-EUR.
    assert r2["billable_quantity"] == 1_001_000_000
    assert r2["allowance_quantity"] == 500_000_000
    assert r2["amount_micros"] == 300_600

    r3 = rec[rid("alice", "2026-11-03T10:00:00+01:00", "down", "cdn", "peak")]
    assert (r3["bytes"], r3["billable_quantity"], r3["amount_micros"], r3["rate_card"]) == (
        7_000_000_000, 0, 0, "zero_rated")

    r4 = rec[rid("alice", "2026-11-03T10:00:00+01:00", "down", "default", "peak")]
    # 2.0 + 1.2 = 3.2 GB; cumulative 2.501 -> 5.701 GB.
    # tier 1 up to 5 GB: 2.499 GB * 1.20 = 2.9988 EUR; tier 2: 0.701 GB * 0.80 = 0.5608 EUR; sum 3.5596 EUR.
    assert r4["bytes"] == 3_200_000_000
    assert r4["cycle_to_date"] == 5_701_000_000
    assert r4["amount_micros"] == 3_559_600

    r5 = rec[rid("alice", "2026-11-07T12:00:00+01:00", "down", "default", "offpeak")]
    # 123 456 789 bytes -> 124 started MB; tier 2 off-peak 0.40: 0.124 * 0.40 = 0.0496 EUR.
    assert (r5["billable_quantity"], r5["amount_micros"]) == (124_000_000, 49_600)

    r6 = rec[rid("alice", "2026-11-02T09:00:00+01:00", "up", "default", "peak")]
    # 333 333 333 bytes -> 334 MB; 0.334 * 0.3333 = 0.1113222 EUR = 111 322.2 micro -> half up, once: 111 322.
    assert (r6["billable_quantity"], r6["amount_micros"]) == (334_000_000, 111_322)

    assert {r["cycle"] for r in rec.values()} == {"2026-11"}
    assert {r["currency"] for r in rec.values()} == {"EUR"}
    assert sum(r["amount_micros"] for r in rec.values()) == 300_600 + 3_559_600 + 49_600 + 111_322


def test_rating_is_deterministic_and_order_independent():
    rows = [("alice", f"2026-11-0{d}T1{h}:00:00+01:00", "down", "default", 700_000_000 + d * 1000 + h)
            for d in range(2, 8) for h in range(0, 10)]
    a = rate(usage(rows), plans(HOME_PLAN), assignments(ALICE)).records
    b = rate(usage(list(reversed(rows))), plans(HOME_PLAN), assignments(ALICE)).records
    assert a.sort_by("record_id").equals(b.sort_by("record_id"))


def test_volume_mode_prices_everything_at_the_reached_tier():
    plan = HOME_PLAN.replace('tier_mode = "graduated"', 'tier_mode = "volume"')
    rows = [("alice", "2026-11-02T21:00:00+01:00", "down", "default", 3_000_000_000),
            ("alice", "2026-11-03T21:00:00+01:00", "down", "default", 3_000_000_000)]
    rec = by_id(rate(usage(rows), plans(plan), assignments(ALICE)).records)
    # Cycle total 6 GB reaches tier 2 (off-peak 0.40/GB); beyond the 2 GB allowance everything is at 0.40:
    # first record 3 GB of which 1 GB billable: 0.40 EUR; second 3 GB: 1.20 EUR.
    assert rec[rid("alice", "2026-11-02T21:00:00+01:00", "down", "default", "offpeak")]["amount_micros"] == 400_000
    assert rec[rid("alice", "2026-11-03T21:00:00+01:00", "down", "default", "offpeak")]["amount_micros"] == 1_200_000
    # With only the first record the cycle is still in tier 1 (0.60): 1 GB * 0.60.
    rec1 = by_id(rate(usage(rows[:1]), plans(plan), assignments(ALICE)).records)
    assert rec1[rid("alice", "2026-11-02T21:00:00+01:00", "down", "default", "offpeak")]["amount_micros"] == 600_000


def test_cycle_rounding_rounds_the_cycle_total_not_each_record():
    plan = HOME_PLAN.replace('quantity_rounding = "interval"', 'quantity_rounding = "cycle"')
    rows = [("alice", f"2026-11-02T2{i}:00:00+01:00", "up", "default", 400_000_001) for i in range(3)]
    rec = rate(usage(rows), plans(plan), assignments(ALICE)).records.to_pylist()
    # 3 * 400 000 001 = 1 200 000 003 bytes -> 1 201 started MB for the cycle (per interval it would be 3 * 401).
    # Records get the increase of the rounded cumulative: 401, 400, 400 MB.
    q = sorted((r["interval_start"], r["billable_quantity"]) for r in rec)
    assert [x[1] for x in q] == [401_000_000, 400_000_000, 400_000_000]
    # 0.401 * 0.3333 = 0.1336533 -> 133 653; 0.400 * 0.3333 = 0.13332 -> 133 320 (twice).
    assert sorted(r["amount_micros"] for r in rec) == [133_320, 133_320, 133_653]


def test_unassigned_and_unmatched_usage_is_reported_not_dropped():
    rows = [("mallory", "2026-11-02T09:00:00+01:00", "down", "default", 5_000),
            ("mallory", "2026-11-02T09:05:00+01:00", "down", "default", 7_000)]
    result = rate(usage(rows), plans(HOME_PLAN), assignments(ALICE))
    assert result.records.num_rows == 0
    ev = result.events.to_pylist()
    assert [(e["kind"], e["reason"], e["subscriber_id"], e["bytes"]) for e in ev] == [
        ("unrated", "no_plan_assignment", "mallory", 12_000)]
    assert result.unrated_bytes == 12_000
