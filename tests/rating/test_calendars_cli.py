"""``flowmed rerate`` periods and ``flowmed bill-run`` control rows with plans in two time zones (Berlin and New York)
over a month boundary and their DST changes; ``flowmed explain`` of a prorated commit charge.

Calendar facts used below (2026): Berlin leaves summer time on Sunday Oct 25 (02:00-03:00 local happens twice);
New York on Sunday Nov 1 (01:00-02:00 local happens twice), the first day of its November cycle.

* Berlin October cycle: 2026-09-30T22:00Z .. 2026-10-31T23:00Z; November: .. 2026-11-30T23:00Z.
* New York September cycle: 2026-09-01T04:00Z .. 2026-10-01T04:00Z; October: .. 2026-11-01T04:00Z (EDT);
  November: .. 2026-12-01T05:00Z (EST).
"""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import load
from mediation.tables import USAGE
from rating.tables import current_sql
from storage.query import QueryEngine
from storage.store import ParquetStore
from tests.rating.helpers import ms
from tests.rating.storeutil import usage_batch

GB = 1_000_000_000

PLAN = """
[[plan]]
id = "{id}"
version = {version}
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "{tz}"
cycle_day = 1
unit = "GB"
[[plan.rate]]
name = "all"
direction = "total"
price = "{price}"
"""


def plans_file(*versions: tuple[int, str]) -> str:
    """Both plans, one version per (version, price): a correction is a higher version with the same activation."""
    return "".join(PLAN.format(id=pid, version=v, tz=tz, price=price) for v, price in versions
                   for pid, tz in (("berlin", "Europe/Berlin"), ("newyork", "America/New_York")))


# (name, interval start, bytes, plan calendar's cycle)
USAGE_ROWS = [
    ("b1", "berta", "2026-10-25T00:30:00+00:00", 1 * GB, "2026-10"),  # 02:30 CEST, the first 02:30 of Oct 25
    ("b2", "berta", "2026-10-25T01:30:00+00:00", 2 * GB, "2026-10"),  # 02:30 CET, the second one
    ("b3", "berta", "2026-10-31T22:30:00+00:00", 3 * GB, "2026-10"),  # Oct 31 23:30 CET
    ("b4", "berta", "2026-10-31T23:30:00+00:00", 4 * GB, "2026-11"),  # Nov 1 00:30 CET
    ("n1", "nora", "2026-10-01T03:30:00+00:00", 5 * GB, "2026-09"),   # Sep 30 23:30 EDT
    ("n2", "nora", "2026-11-01T03:30:00+00:00", 9 * GB, "2026-10"),   # Oct 31 23:30 EDT
    ("n3", "nora", "2026-11-01T05:30:00+00:00", 7 * GB, "2026-11"),   # Nov 1 01:30 EDT
    ("n4", "nora", "2026-11-01T06:30:00+00:00", 8 * GB, "2026-11"),   # Nov 1 01:30 EST, the hour again
]
RECORD = {name: f"{sub}/{ms(start)}/down/default/any" for name, sub, start, _, _ in USAGE_ROWS}


@pytest.fixture
def site(tmp_path):
    (tmp_path / "plans.toml").write_text(plans_file((1, "1.00")))
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\nberta,berlin,2026-01-01T00:00:00Z\n"
                                              "nora,newyork,2026-01-01T00:00:00Z\n")
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[rating]\nlookback_cycles = 240\n')  # real clock: any run date
    store = ParquetStore.for_config(load(cfg), housekeeper=False)
    store.write(USAGE, usage_batch([(sub, start, "down", "default", n) for _, sub, start, n, _ in USAGE_ROWS]), 1)
    store.close()
    return tmp_path, ["--config", str(cfg)]


def flowmed(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def current(root) -> dict[str, tuple[int, int, str]]:
    """record name -> (version, amount_micros, cycle), read with the documented current-state query."""
    config = load(root / "collector.toml")
    with QueryEngine.for_config(config, "store") as engine:
        rows = engine.query(current_sql(columns="record_id, version, amount_micros, cycle")).to_pylist()
    by_id = {r["record_id"]: (r["version"], r["amount_micros"], r["cycle"]) for r in rows}
    return {name: by_id[rid] for name, rid in RECORD.items()}


@pytest.mark.slow
def test_rerate_periods_are_read_in_each_plans_time_zone(site):
    root, opts = site
    flowmed("rate", *opts)
    # Version 1, 1.00 EUR/GB: every record at 1 000 000 micro-EUR per GB, in its own calendar's cycle.
    assert current(root) == {name: (1, n // GB * 1_000_000, cycle) for name, _, _, n, cycle in USAGE_ROWS}

    # A price correction (version 2: 1.2345 EUR/GB) for October. A bare date is local midnight in each plan's
    # zone and --to is exclusive: exactly October in Berlin and in New York, nothing of either November (b4 is
    # Berlin's Nov 1 00:30, n3/n4 New York's Nov 1) nor New York's September (n1, Sep 30 23:30 EDT).
    (root / "plans.toml").write_text(plans_file((1, "1.00"), (2, "1.2345")))
    out = flowmed("rerate", "--from", "2026-10-01", "--to", "2026-11-01", *opts)
    assert "  America/New_York (cycle day 1): cycles 2026-10\n" in out
    assert "  Europe/Berlin (cycle day 1): cycles 2026-10\n" in out
    # Before and after over the cycles re-rated. berta: 6 GB in October -> 6 * 1.2345 = 7.407 EUR; nora: 9 GB (n2)
    # -> 11.1105 EUR.
    assert "berta\tEUR\t6.000000\t7.407000\t1.407000" in out
    assert "nora\tEUR\t9.000000\t11.110500\t2.110500" in out
    assert current(root) == {
        "b1": (2, 1_234_500, "2026-10"), "b2": (2, 2_469_000, "2026-10"), "b3": (2, 3_703_500, "2026-10"),
        "b4": (1, 4_000_000, "2026-11"),
        "n1": (1, 5_000_000, "2026-09"), "n2": (2, 11_110_500, "2026-10"),
        "n3": (1, 7_000_000, "2026-11"), "n4": (1, 8_000_000, "2026-11")}

    # With an offset the bounds are instants, the same in every zone: [Oct 31 23:00Z, Nov 1 04:00Z) is Berlin's
    # Nov 1 00:00-05:00 CET (its November cycle) and New York's Oct 31 19:00-23:59 EDT (its October cycle).
    (root / "plans.toml").write_text(plans_file((1, "1.00"), (2, "1.2345"), (3, "2.00")))
    out = flowmed("rerate", "--from", "2026-10-31T23:00:00Z", "--to", "2026-11-01T04:00:00+00:00", *opts)
    assert "  America/New_York (cycle day 1): cycles 2026-10\n" in out
    assert "  Europe/Berlin (cycle day 1): cycles 2026-11\n" in out
    now = current(root)
    assert now == {
        "b1": (2, 1_234_500, "2026-10"), "b2": (2, 2_469_000, "2026-10"), "b3": (2, 3_703_500, "2026-10"),
        "b4": (2, 8_000_000, "2026-11"),
        "n1": (1, 5_000_000, "2026-09"), "n2": (3, 18_000_000, "2026-10"),
        "n3": (1, 7_000_000, "2026-11"), "n4": (1, 8_000_000, "2026-11")}

    # A bound that is not after the other in some zone is refused.
    r = CliRunner().invoke(main, ["rerate", "--from", "2026-11-01", "--to", "2026-10-01", *opts])
    assert r.exit_code == 2 and "must be after --from" in r.output
    r = CliRunner().invoke(main, ["rerate", "--from", "last week", "--to", "2026-10-01", *opts])
    assert r.exit_code == 2 and "expected a date or time such as 2026-11-01" in r.output


def test_bill_run_control_rows_are_per_plan_calendar(site):
    """The cycle 2026-10 is a different span of time in Berlin and New York: one control row per calendar, each
    with its own bounds and figures, never one row spanning both."""
    root, opts = site
    flowmed("rate", *opts)
    export = root / "export"
    out = flowmed("bill-run", "--cycle", "2026-10", "--output", str(export), *opts)
    control = list(csv.DictReader(open(export / "bill-run-2026-10-control.csv")))
    assert [(c["currency"], c["timezone"], c["cycle_day"], c["record_count"], c["total_bytes"],
             c["total_amount_micros"], c["total_amount"], c["subscribers"], c["cycle_start"], c["cycle_end"],
             c["complete"]) for c in control] == [
        ("EUR", "America/New_York", "1", "1", str(9 * GB), "9000000", "9.000000", "1", "2026-10-01T04:00:00Z",
         "2026-11-01T04:00:00Z", "true"),
        ("EUR", "Europe/Berlin", "1", "3", str(6 * GB), "6000000", "6.000000", "1", "2026-09-30T22:00:00Z",
         "2026-10-31T23:00:00Z", "true")]
    assert ("control 2026-10 EUR Europe/Berlin (cycle day 1, 2026-09-30T22:00:00Z .. 2026-10-31T23:00:00Z): "
            "3 records, 6000000000 bytes, 6.000000 EUR, 1 subscribers") in out
    lines = {(x["subscriber_id"], x["timezone"]): (int(x["records"]), int(x["amount_micros"]))
             for x in csv.DictReader(open(export / "bill-run-2026-10-lines.csv"))}
    assert lines == {("berta", "Europe/Berlin"): (3, 6_000_000), ("nora", "America/New_York"): (1, 9_000_000)}
    # November: Berlin's b4 (Nov 1 00:30 CET), New York's n3 and n4 (the repeated 01:30 of Nov 1).
    flowmed("bill-run", "--cycle", "2026-11", "--output", str(export), *opts)
    control = list(csv.DictReader(open(export / "bill-run-2026-11-control.csv")))
    assert [(c["timezone"], c["record_count"], c["total_amount_micros"], c["cycle_start"], c["cycle_end"])
            for c in control] == [
        ("America/New_York", "2", "15000000", "2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z"),
        ("Europe/Berlin", "1", "4000000", "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z")]


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


def test_explain_shows_the_commit_charge_as_charged(tmp_path):
    """A burstable plan assigned for the last two days of November: the commit charge is prorated to 2/30."""
    (tmp_path / "plans.toml").write_text(BURST)
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\nacme,transit,2026-11-29T00:00:00Z\n")
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[rating]\nlookback_cycles = 240\n')
    store = ParquetStore.for_config(load(cfg), housekeeper=False)
    start = ms("2026-11-29T00:00:00+00:00")
    # 576 five-minute samples (2 days), up at ceil(562 500 001 * 8 / 300) = 15 000 001 bit/s in each.
    rows = [("acme", f"2026-11-{29 + i // 288:02d}T{i % 288 // 12:02d}:{i % 12 * 5:02d}:00+00:00", "up", "default",
             562_500_001) for i in range(576)]
    assert ms(rows[-1][1]) == start + 575 * 300_000
    store.write(USAGE, usage_batch(rows), 1)
    store.close()
    opts = ["--config", str(cfg)]
    flowmed("rate", *opts)
    text = flowmed("explain", "--subscriber", "acme", "--cycle", "2026-11", *opts)
    # Excess 5 000 001 bit/s -> 6 Mbit/s * 2.00 = 12.00 EUR; commit 100.00 * 48 h / 720 h = 6.666666 (floor).
    assert ("burstable: max 95th percentile 15 000 001 bit/s, commit 10 000 000 bit/s, billed excess 6 000 000 bit/s "
            "(rounded up to 1 000 000 bit/s) at 2.00 EUR per Mbit/s = 12.000000 EUR") in text
    assert "    commit charge 6.666666 EUR (prorated: 48 h of the cycle's 720 h, full 100.000000 EUR)" in text
    assert "    amount 18.666666 EUR (18 666 666 micro-EUR)" in text
    assert "stored: version 1, same amount" in text
    assert "total 2026-11: 18.666666 EUR (18 666 666 micro-EUR) over 1 records" in text
    assert "instead" not in text
