"""Time zones, DST, cycles, mid-cycle plan changes, caps, minimums and burstable plans, by hand."""

from __future__ import annotations

from rating.engine import rate
from tests.rating.helpers import HOME_PLAN, assignments, by_id, ms, plans, usage

DAYNIGHT = """
[[plan]]
id = "daynight"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "{tz}"
cycle_day = 1
unit = "GB"
default_band = "night"
[[plan.band]]
name = "day"
from = "08:00"
to = "20:00"
[[plan.rate]]
name = "all"
direction = "total"
allowance_bytes = {allowance}
price = {{ day = "1.00", night = "0.50" }}
"""
GB = 1_000_000_000


def _amounts(tz: str, allowance: int, rows: list[tuple[str, int]]) -> dict[str, tuple[str, str, int]]:
    book = plans(DAYNIGHT.format(tz=tz, allowance=allowance))
    asg = assignments("subscriber_id,plan_id,from\ns1,daynight,2026-01-01T00:00:00Z\n")
    recs = rate(usage([("s1", t, "down", "default", b) for t, b in rows]), book, asg).records.to_pylist()
    return {next(t for t, _ in rows if ms(t) == r["interval_start"]): (r["band"], r["cycle"], r["amount_micros"])
            for r in recs}


def test_berlin_bands_across_the_october_dst_change():
    # Berlin leaves summer time on Sunday 2026-10-25 at 01:00 UTC (03:00 CEST -> 02:00 CET).
    got = _amounts("Europe/Berlin", 0, [
        ("2026-10-24T07:00:00+00:00", GB),  # 09:00 CEST: day, 1.00 EUR
        ("2026-10-25T00:30:00+00:00", GB),  # 02:30 CEST (first 02:30): night, 0.50
        ("2026-10-25T01:30:00+00:00", GB),  # 02:30 CET (second 02:30): night, 0.50, a distinct record
        ("2026-10-25T06:30:00+00:00", GB),  # 07:30 CET: night (08:30 with a fixed summer offset)
        ("2026-10-25T07:00:00+00:00", GB),  # 08:00 CET: day
        ("2026-10-26T18:55:00+00:00", GB),  # 19:55 CET: day
        ("2026-10-26T19:00:00+00:00", GB),  # 20:00 CET: night (21:00 would be night either way; 19:00 UTC
    ])                                      # was 21:00 CEST the week before)
    assert got == {
        "2026-10-24T07:00:00+00:00": ("day", "2026-10", 1_000_000),
        "2026-10-25T00:30:00+00:00": ("night", "2026-10", 500_000),
        "2026-10-25T01:30:00+00:00": ("night", "2026-10", 500_000),
        "2026-10-25T06:30:00+00:00": ("night", "2026-10", 500_000),
        "2026-10-25T07:00:00+00:00": ("day", "2026-10", 1_000_000),
        "2026-10-26T18:55:00+00:00": ("day", "2026-10", 1_000_000),
        "2026-10-26T19:00:00+00:00": ("night", "2026-10", 500_000),
    }


def test_berlin_cycle_boundary_is_local_midnight_after_dst_and_allowance_resets():
    # November starts at 2026-11-01 00:00 CET = 2026-10-31 23:00 UTC. 1 GB allowance per cycle.
    got = _amounts("Europe/Berlin", GB, [
        ("2026-10-31T22:55:00+00:00", 1_500_000_000),  # 23:55 CET Oct 31: October; 0.5 GB over allowance, night
        ("2026-10-31T23:00:00+00:00", 1_500_000_000),  # 00:00 CET Nov 1: November; a fresh allowance
    ])
    assert got == {"2026-10-31T22:55:00+00:00": ("night", "2026-10", 250_000),   # 0.5 GB * 0.50
                   "2026-10-31T23:00:00+00:00": ("night", "2026-11", 250_000)}   # (UTC months: 1.5 * 0.50)


def test_new_york_cycle_and_bands_across_the_november_dst_change():
    # New York leaves daylight time on Sunday 2026-11-01 at 06:00 UTC (02:00 EDT -> 01:00 EST).
    # The November cycle runs from 2026-11-01 04:00 UTC (00:00 EDT) to 2026-12-01 05:00 UTC (00:00 EST).
    got = _amounts("America/New_York", 0, [
        ("2026-11-01T03:55:00+00:00", GB),  # 23:55 EDT Oct 31: October, night
        ("2026-11-01T04:00:00+00:00", GB),  # 00:00 EDT Nov 1: November, night
        ("2026-10-31T12:05:00+00:00", GB),  # 08:05 EDT: day
        ("2026-11-02T12:55:00+00:00", GB),  # 07:55 EST: night (08:55 EDT the week before)
        ("2026-11-02T13:00:00+00:00", GB),  # 08:00 EST: day
        ("2026-12-01T04:55:00+00:00", GB),  # 23:55 EST Nov 30: still November
        ("2026-12-01T05:00:00+00:00", GB),  # 00:00 EST Dec 1: December
    ])
    assert got == {
        "2026-11-01T03:55:00+00:00": ("night", "2026-10", 500_000),
        "2026-11-01T04:00:00+00:00": ("night", "2026-11", 500_000),
        "2026-10-31T12:05:00+00:00": ("day", "2026-10", 1_000_000),
        "2026-11-02T12:55:00+00:00": ("night", "2026-11", 500_000),
        "2026-11-02T13:00:00+00:00": ("day", "2026-11", 1_000_000),
        "2026-12-01T04:55:00+00:00": ("night", "2026-11", 500_000),
        "2026-12-01T05:00:00+00:00": ("night", "2026-12", 500_000),
    }


FLAT = """
[[plan]]
id = "flat"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "Europe/Berlin"
minimum_charge = "3.00"
[[plan.rate]]
name = "all"
direction = "total"
allowance_bytes = 10000000000
price = "0.10"
"""


def test_plan_change_mid_cycle_splits_the_cycle_and_prorates():
    # November 2026 in Berlin: 30 days, no DST change; bob moves from "home" to "flat" at Nov 16 00:00 CET,
    # exactly half of the cycle each.
    asg = assignments("subscriber_id,plan_id,from\n"
                      "bob,home,2026-01-01T00:00:00+01:00\n"
                      "bob,flat,2026-11-16T00:00:00+01:00\n")
    book = plans(HOME_PLAN + FLAT)
    rows = [("bob", "2026-11-10T21:00:00+01:00", "down", "default", 3 * GB),
            ("bob", "2026-11-20T21:00:00+01:00", "down", "default", 6 * GB)]
    result = rate(usage(rows), book, asg, closed_until_ms=ms("2026-12-02T00:00:00+01:00"))
    rec = by_id(result.records)
    first = rec[f"bob/{ms('2026-11-10T21:00:00+01:00')}/down/default/offpeak"]
    # home, half cycle: allowance 2 GB -> 1 GB, tier-1 bound 5 GB -> 2.5 GB.
    # 3 GB: 1 GB free, 1.5 GB * 0.60 = 0.90, 0.5 GB * 0.40 = 0.20 -> 1.10 EUR.
    assert (first["plan_id"], first["allowance_quantity"], first["amount_micros"]) == ("home", GB, 1_100_000)
    second = rec[f"bob/{ms('2026-11-20T21:00:00+01:00')}/down/default/any"]
    # flat, half cycle: allowance 10 GB -> 5 GB; 1 GB * 0.10 = 0.10 EUR.
    assert (second["plan_id"], second["allowance_quantity"], second["amount_micros"]) == ("flat", 5 * GB, 100_000)
    minimum = rec[f"bob/{ms('2026-11-16T00:00:00+01:00')}/-/-/minimum"]
    # minimum 3.00 prorated to 1.50; the segment is closed and charged 0.10: 1.40 EUR more.
    assert (minimum["plan_id"], minimum["amount_micros"], minimum["interval_end"]) == (
        "flat", 1_400_000, ms("2026-12-01T00:00:00+01:00"))
    assert len(rec) == 3
    # Not closed yet: no minimum record.
    open_ = rate(usage(rows), book, asg, closed_until_ms=ms("2026-11-30T00:00:00+01:00"))
    assert open_.records.num_rows == 2


CAPS = """
[[plan]]
id = "{id}"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "USD"
timezone = "UTC"
prorate = false
{extra}
[[plan.rate]]
name = "all"
direction = "total"
price = "1.00"
"""


def test_max_charge_and_fair_usage():
    book = plans(CAPS.format(id="capped", extra='max_charge = "2.50"') +
                 CAPS.format(id="fup", extra="fair_usage_bytes = 3000000000"))
    asg = assignments("subscriber_id,plan_id,from\nc,capped,2026-01-01T00:00:00Z\nf,fup,2026-01-01T00:00:00Z\n")
    rows = [(s, f"2026-11-0{d}T10:00:00+00:00", "down", "default", GB) for s in "cf" for d in range(2, 6)]
    result = rate(usage(rows), book, asg)
    amounts = {(r["subscriber_id"], r["interval_start"]): r["amount_micros"] for r in result.records.to_pylist()}
    day = [ms(f"2026-11-0{d}T10:00:00+00:00") for d in range(2, 6)]
    # capped: 1.00, 1.00, then 0.50 up to the 2.50 cap, then 0.
    assert [amounts[("c", t)] for t in day] == [1_000_000, 1_000_000, 500_000, 0]
    # fair usage at 3 GB: the third GB reaches it (charged, event), the fourth starts beyond it (not charged).
    assert [amounts[("f", t)] for t in day] == [1_000_000, 1_000_000, 1_000_000, 0]
    events = result.events.to_pylist()
    assert [(e["kind"], e["subscriber_id"], e["event_time"], e["bytes"]) for e in events] == [
        ("fair_usage", "f", day[2], 3 * GB)]


BURST = """
[[plan]]
id = "transit"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "UTC"
kind = "burstable"
[plan.burst]
commit_bps = 10000000
price_per_mbps = "2.00"
increment_bps = 1000000
commit_charge = "100.00"
"""


def test_burstable_95th_percentile():
    start = ms("2026-11-01T00:00:00+00:00")
    rows = []
    # 100 five-minute samples. Down: 95 at 12 Mbit/s (450 000 000 bytes), 5 at 40 Mbit/s (the top 5 %, discarded).
    # Up: 100 at 562 500 001 bytes = ceil(4 500 000 008 / 300) = 15 000 001 bit/s.
    for i in range(100):
        t = start + i * 300_000
        rows.append(("acme", t, "down", "default", 450_000_000 if i >= 5 else 1_500_000_000))
        rows.append(("acme", t, "up", "default", 562_500_001))
    import pyarrow as pa
    table = pa.table({"subscriber_id": [r[0] for r in rows], "interval_start": [r[1] for r in rows],
                      "interval_end": [r[1] + 300_000 for r in rows], "direction": [r[2] for r in rows],
                      "traffic_class": [r[3] for r in rows], "bytes": pa.array([r[4] for r in rows], pa.uint64())})
    asg = assignments("subscriber_id,plan_id,from\nacme,transit,2026-01-01T00:00:00Z\n")
    recs = rate(table, plans(BURST), asg, closed_until_ms=start + 100 * 300_000).records.to_pylist()
    assert len(recs) == 1
    r = recs[0]
    # 95th percentile: down 12 000 000, up 15 000 001; billed the larger, 15 000 001 bit/s.
    # Excess over the 10 Mbit/s commit: 5 000 001 -> 6 started Mbit/s * 2.00 = 12.00, plus 100.00 commit.
    assert r["cycle_to_date"] == 15_000_001
    assert r["billable_quantity"] == 6_000_000
    assert r["amount_micros"] == 112_000_000
    assert r["bytes"] == 95 * 450_000_000 + 5 * 1_500_000_000 + 100 * 562_500_001
