"""The rating job over the embedded store (chDB over Parquet) and over clickhouse-server 18.16: idempotent runs,
late usage, re-rating, the lease.

Every amount is worked out by hand in the comments and checked to the micro-unit through the documented
current-state SQL (rating.tables.current_sql).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from collector.config import load
from collector.tables import load_tables
from mediation.tables import USAGE
from rating.billrun import CycleOpen, bill_run
from rating.explain import explain
from rating.job import RatingJob
from rating.lease import LeaseHeld
from rating.tables import current_sql
from storage.clickhouse.output import ClickHouseOutput
from storage.store import ParquetStore
from tests.rating.helpers import HOME_PLAN, assignments, ms, plans
from tests.rating.storeutil import usage_batch

ALICE = "subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n"
NOW = ms("2026-11-10T00:00:00+01:00")


@pytest.fixture(params=["store", pytest.param("clickhouse", marks=pytest.mark.external)])
def store_env(request, tmp_path):
    """(add usage rows, make a rating job) over the embedded store or a real clickhouse-server 18.16."""
    if request.param == "store":
        config = load(None, [f"store.path={tmp_path}", "rating.lookback_cycles=2",
                             "rating.slice_subscribers=1"])
        out = ParquetStore.for_config(config, housekeeper=False)
    else:
        server = request.getfixturevalue("clickhouse_server")
        db = "rating_" + re.sub(r"\W", "_", request.node.name)[-40:]
        server.query(f"DROP DATABASE IF EXISTS {db}")
        config = load(None, [f"store.path={tmp_path}", "store.enabled=false", "output.clickhouse.enabled=true",
                             f"output.clickhouse.port={server.port}", f"output.clickhouse.database={db}",
                             "rating.target=clickhouse", "rating.lookback_cycles=2",
                             "rating.slice_subscribers=1"])
        out = ClickHouseOutput(config.output.clickhouse, config.spool, tmp_path / "usage-spool",
                               tables=list(load_tables().values()), max_backoff_s=1.0)
    ids = iter(range(1, 1000))

    def add(rows, **kw):
        out.write(USAGE, usage_batch(rows, **kw), next(ids))
        if hasattr(out, "drain"):
            assert out.drain(60)

    jobs = []

    def job(plan_text=HOME_PLAN, owner=None, clock=None, asg=ALICE):
        kw = {"clock": clock} if clock else {}
        j = RatingJob(config, plans=plans(plan_text), assignments=assignments(asg), owner=owner, **kw)
        jobs.append(j)
        return j

    yield add, job
    for j in jobs:
        j.close()
    out.close()


def current(job) -> dict[str, tuple[int, int, int]]:
    t = job.engine.query(current_sql(columns="record_id, version, bytes, amount_micros"))
    return {r["record_id"]: (r["version"], r["bytes"], r["amount_micros"]) for r in t.to_pylist()}


def rid(when: str, direction: str, band: str, cls: str = "default") -> str:
    return f"alice/{ms(when)}/{direction}/{cls}/{band}"


A = rid("2026-11-02T09:00:00+01:00", "down", "peak")
B = rid("2026-11-03T10:00:00+01:00", "down", "peak")
C = rid("2026-11-02T09:00:00+01:00", "up", "peak")
D = rid("2026-11-04T21:00:00+01:00", "down", "offpeak")


def test_runs_are_idempotent_late_usage_makes_new_versions_and_rerate_reports_the_difference(store_env):
    add, make_job = store_env
    add([("alice", "2026-11-02T09:00:00+01:00", "down", "default", 1_000_000_000),
         ("alice", "2026-11-02T09:00:00+01:00", "up", "default", 333_333_333)], exporter=1)
    # The same subscriber seen by a second collector host: its part is summed before rating.
    add([("alice", "2026-11-02T09:00:00+01:00", "down", "default", 500_000_000),
         ("alice", "2026-11-03T10:00:00+01:00", "down", "default", 3_200_000_000)], exporter=2)
    # Another source (RADIUS) is not billed (rating.source = flow); unattributed traffic is not rated.
    add([("alice", "2026-11-03T10:00:00+01:00", "down", "default", 9_999_999_999)], source="radius")
    add([("", "2026-11-03T10:00:00+01:00", "unattributed", "default", 77)])
    job = make_job()

    first = job.run(now_ms=NOW)
    # A: 1.5 GB peak, inside the 2 GB allowance: 0.
    # B: 3.2 GB peak, cumulative 1.5 -> 4.7 GB: 0.5 GB allowance, 2.7 GB * 1.20 = 3.24 EUR.
    # C: 333 333 333 bytes -> 334 MB * 0.3333/GB = 0.1113222 -> 111 322.
    assert current(job) == {A: (1, 1_500_000_000, 0), B: (1, 3_200_000_000, 3_240_000), C: (1, 333_333_333, 111_322)}
    assert (first.records_new, first.records_changed, first.records_unchanged) == (3, 0, 0)
    assert first.per_subscriber == {("alice", "EUR"): (0, 3_351_322)}

    again = job.run(now_ms=NOW)
    assert (again.records_new, again.records_changed, again.records_voided, again.records_unchanged) == (0, 0, 0, 3)
    assert job.engine.query("SELECT count() AS n FROM rated_usage").column("n")[0].as_py() == 3  # nothing written

    # Late usage: a correction row for A's interval (+1 001 bytes) and a new interval D.
    add([("alice", "2026-11-02T09:00:00+01:00", "down", "default", 1_001)], correction=1)
    add([("alice", "2026-11-04T21:00:00+01:00", "down", "default", 800_000_000)])
    late = job.run(now_ms=NOW)
    # A: 1 500 001 001 bytes -> 1 501 MB, still in the allowance: 0 (new version: bytes changed).
    # B: cumulative 1.501 -> 4.701 GB: 0.499 GB allowance, 2.701 GB * 1.20 = 3.2412 EUR.
    # D: 0.8 GB off-peak, cumulative 4.701 -> 5.501 GB: 0.299 GB * 0.60 = 0.1794 plus 0.501 GB * 0.40 = 0.2004,
    #    0.3798 EUR.
    assert current(job) == {A: (2, 1_500_001_001, 0), B: (2, 3_200_000_000, 3_241_200),
                            C: (1, 333_333_333, 111_322), D: (1, 800_000_000, 379_800)}
    assert (late.records_new, late.records_changed, late.records_unchanged) == (1, 2, 1)
    assert late.per_subscriber == {("alice", "EUR"): (3_351_322, 111_322 + 3_241_200 + 379_800)}
    # No double billing: the current total is the corrected total, whatever the number of versions stored.
    total = job.engine.query(current_sql(columns="sum(amount_micros) AS s")).column("s")[0].as_py()
    assert total == 3_732_322
    # Every version is stored (the embedded store's rated_usage view collapses versions like FINAL: read the files).
    stored = "rated_usage_raw" if job.engine.target == "store" else "rated_usage"
    assert job.engine.query(f"SELECT count() AS n FROM {stored}").column("n")[0].as_py() == 6

    # A plan correction (version 2, same activation): upload at 0.5000/GB. Re-rate November.
    corrected = HOME_PLAN.replace('price = "0.3333"', 'price = "0.5000"').replace("version = 1", "version = 2")
    job2 = make_job(HOME_PLAN + corrected)
    rr = job2.run("rerate", from_=ms("2026-11-01T00:00:00+01:00"), to=ms("2026-11-09T00:00:00+01:00"),
                  subscriber="alice", now_ms=NOW)
    # C: 0.334 GB * 0.50 = 0.167 EUR; every record now names plan version 2, so each gets a new version.
    assert rr.per_subscriber == {("alice", "EUR"): (3_732_322, 3_732_322 - 111_322 + 167_000)}
    assert (rr.records_changed, rr.records_new) == (4, 0)
    now = current(job2)
    assert now[C] == (2, 333_333_333, 167_000)
    assert now[B] == (3, 3_200_000_000, 3_241_200)
    runs = job2.engine.query("SELECT kind, records_changed, amount_delta_micros FROM rating_runs "
                             "ORDER BY started, kind").to_pylist()
    assert {"kind": "rerate", "records_changed": 4, "amount_delta_micros": 55_678} in runs

    if job2.engine.target == "clickhouse":  # on a server, FINAL gives the same current state
        final = job2.engine.query("SELECT record_id, version, bytes, amount_micros FROM rated_usage FINAL "
                                  "WHERE void = 0").to_pylist()
        assert {r["record_id"]: (r["version"], r["bytes"], r["amount_micros"]) for r in final} == now

    # The billing export and the explanation read the same current state, on either store.
    export = bill_run(job2.engine.query, job2.plans, "2026-11", NOW, force=True)
    assert export.totals.to_pylist() == [{"subscriber_id": "alice", "currency": "EUR", "records": 4,
                                          "bytes": 1_500_001_001 + 3_200_000_000 + 333_333_333 + 800_000_000,
                                          "amount_micros": 3_788_000, "amount": "3.788000"}]
    (control,) = export.control.to_pylist()
    assert (control["record_count"], control["total_amount_micros"], control["complete"]) == (4, 3_788_000, False)
    with pytest.raises(CycleOpen):
        bill_run(job2.engine.query, job2.plans, "2026-11", NOW)
    text = "\n".join(explain(job2, "alice", "2026-11"))
    assert "tier 1 (up to 5 000 000 000): 2 701 000 000 bytes at 1.20 EUR/GB = 3.2412 EUR" in text
    assert text.count("stored: version") == 4 and "DIFFERS" not in text


def test_unassigned_usage_becomes_an_event_once(store_env):
    add, make_job = store_env
    add([("mallory", "2026-11-02T09:00:00+01:00", "down", "default", 5_000),
         ("mallory", "2026-11-02T09:05:00+01:00", "down", "default", 7_000)])
    job = make_job()
    r1 = job.run(now_ms=NOW)
    r2 = job.run(now_ms=NOW)
    assert (r1.unrated_bytes, r1.events_written, r2.events_written) == (12_000, 1, 0)
    ev = job.engine.query("SELECT kind, reason, subscriber_id, bytes FROM rating_events").to_pylist()
    assert ev == [{"kind": "unrated", "reason": "no_plan_assignment", "subscriber_id": "mallory", "bytes": 12_000}]


def test_only_one_job_holds_the_lease(store_env):
    _, make_job = store_env
    t = [1_800_000_000.0]
    clock = lambda: t[0]  # noqa: E731
    a = make_job(owner="host-a:1:x", clock=clock)
    b = make_job(owner="host-b:2:y", clock=clock)
    # Two contenders claiming in the same second: both see the same claims and agree on one holder (oldest claim,
    # then the smaller owner); the loser withdraws its claim.
    now_ms = int(t[0]) * 1000
    a.lease._row(now_ms, now_ms + 900_000)  # a's claim landed, a has not read it back yet
    with pytest.raises(LeaseHeld) as held:
        b.lease.acquire()
    assert held.value.holder == "host-a:1:x"
    assert [s[0] for s in a.lease.states() if s[2] > now_ms] == ["host-a:1:x"]  # b's claim was withdrawn
    a.lease.acquire()
    with pytest.raises(LeaseHeld) as held:
        b.run(now_ms=NOW)
    assert held.value.holder == "host-a:1:x"
    t[0] += 1
    a.lease.release()
    t[0] += 1
    b.run(now_ms=NOW)  # free again
    # A holder that died: its lease lapses after the ttl (900 s by default).
    a.lease.acquire()
    t[0] += 901
    b.run(now_ms=NOW)


def test_dst_cycle_and_mid_cycle_plan_change_through_the_store(store_env):
    """The calendar cases of test_calendar.py, end to end through usage in the store and the documented query."""
    from tests.rating.test_calendar import DAYNIGHT, FLAT

    add, make_job = store_env
    GB = 1_000_000_000
    add([("s1", "2026-10-25T00:30:00+00:00", "down", "default", GB),     # 02:30 CEST: night 0.50
         ("s1", "2026-10-25T01:30:00+00:00", "down", "default", GB),     # 02:30 CET: night 0.50
         ("s1", "2026-10-25T06:30:00+00:00", "down", "default", GB),     # 07:30 CET: night 0.50
         ("s1", "2026-10-25T07:00:00+00:00", "down", "default", GB),     # 08:00 CET: day 1.00
         ("s1", "2026-10-31T23:00:00+00:00", "down", "default", GB),     # 00:00 CET Nov 1: cycle 2026-11, night
         ("bob", "2026-11-10T21:00:00+01:00", "down", "default", 3 * GB),
         ("bob", "2026-11-20T21:00:00+01:00", "down", "default", 6 * GB)])
    asg = ("subscriber_id,plan_id,from\ns1,daynight,2026-01-01T00:00:00Z\nbob,home,2026-01-01T00:00:00+01:00\n"
           "bob,flat,2026-11-16T00:00:00+01:00\ncarol,flat,2026-01-01T00:00:00Z\n")
    job = make_job(DAYNIGHT.format(tz="Europe/Berlin", allowance=0) + HOME_PLAN + FLAT, asg=asg)
    job.run(now_ms=ms("2026-12-05T00:00:00+01:00"))
    rows = job.engine.query(current_sql(columns="subscriber_id, cycle, band, amount_micros")).to_pylist()
    got = sorted((r["subscriber_id"], r["cycle"], r["band"], r["amount_micros"]) for r in rows)
    assert got == sorted([
        ("s1", "2026-10", "night", 500_000), ("s1", "2026-10", "night", 500_000), ("s1", "2026-10", "night", 500_000),
        ("s1", "2026-10", "day", 1_000_000), ("s1", "2026-11", "night", 500_000),
        # bob (see test_calendar): home half cycle 1.10 EUR, flat half cycle 0.10 EUR + minimum top-up 1.40 EUR.
        ("bob", "2026-11", "offpeak", 1_100_000), ("bob", "2026-11", "any", 100_000),
        ("bob", "2026-11", "minimum", 1_400_000),
        # carol used nothing: the full minimum of "flat" (3.00 EUR) for October and November (closed cycles).
        ("carol", "2026-10", "minimum", 3_000_000), ("carol", "2026-11", "minimum", 3_000_000)])
    again = job.run(now_ms=ms("2026-12-05T00:00:00+01:00"))
    assert (again.records_new, again.records_changed, again.records_voided) == (0, 0, 0)
    # carol's late usage in November (inside the allowance): a usage record, the minimum record stays as it is.
    add([("carol", "2026-11-20T21:00:00+01:00", "down", "default", GB)])
    late = job.run(now_ms=ms("2026-12-05T00:00:00+01:00"))
    assert (late.records_new, late.records_changed, late.records_voided) == (1, 0, 0)
    carol = job.engine.query(current_sql("subscriber_id = 'carol'", columns="band, version, amount_micros"))
    assert sorted(tuple(r.values()) for r in carol.to_pylist()) == [
        ("any", 1, 0), ("minimum", 1, 3_000_000), ("minimum", 1, 3_000_000)]
    text = "\n".join(explain(job, "carol", "2026-10"))
    assert ("minimum charge 3.00 EUR for Thu 2026-10-01 00:00 CEST .. Sun 2026-11-01 00:00 CET: adds 3.000000 EUR"
            in text)
    assert "stored: version 1, same amount" in text


def test_records_that_go_away_are_voided(store_env):
    add, make_job = store_env
    add([("alice", "2026-11-02T21:00:00+01:00", "down", "default", 3_000_000_000)])
    job = make_job()
    job.run(now_ms=NOW)
    # 3 GB off-peak: 1 GB over the allowance * 0.60.
    assert current(job) == {rid("2026-11-02T21:00:00+01:00", "down", "offpeak"): (1, 3_000_000_000, 600_000)}
    # The assignment was wrong: alice has no plan in November. Re-rating withdraws her record (a void version)
    # and reports her usage as unrated.
    fixed = make_job(asg="subscriber_id,plan_id,from\nalice,home,2026-12-01T00:00:00+01:00\n")
    r = fixed.run("rerate", from_=ms("2026-11-01T00:00:00+01:00"), to=ms("2026-11-10T00:00:00+01:00"),
                  now_ms=NOW)
    assert (r.records_voided, r.records_new, r.unrated_bytes) == (1, 0, 3_000_000_000)
    assert r.per_subscriber == {("alice", "EUR"): (600_000, 0)}
    assert current(fixed) == {}
    stored = "rated_usage_raw" if fixed.engine.target == "store" else "rated_usage"  # every version, as stored
    assert fixed.engine.query(f"SELECT count() AS n FROM {stored}").column("n")[0].as_py() == 2
    again = fixed.run("rerate", from_=ms("2026-11-01T00:00:00+01:00"), to=ms("2026-11-10T00:00:00+01:00"),
                      now_ms=NOW)
    assert (again.records_voided, again.records_new, again.events_written) == (0, 0, 0)


MID = """
[[plan]]
id = "mid"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "UTC"
cycle_day = 15
[[plan.rate]]
name = "all"
direction = "total"
allowance_bytes = 4000000000
price = "1.00"
"""


def test_plans_with_different_cycle_days_are_read_whole(tmp_path):
    """A "rate" run starts at the current cycle of one calendar; a plan billed from the 15th still has its cycle
    read from the 15th of the previous month, so its cycle-to-date figures stay right."""
    from dataclasses import replace

    config = load(None, [f"store.path={tmp_path}", "rating.lookback_cycles=1"])
    store = ParquetStore.for_config(config, housekeeper=False)
    store.write(USAGE, usage_batch([("b", "2026-10-20T10:00:00+00:00", "down", "default", 3_000_000_000),
                                    ("b", "2026-11-05T10:00:00+00:00", "down", "default", 2_000_000_000),
                                    ("a", "2026-11-05T10:00:00+00:00", "down", "default", 1_000_000_000)]), 1)
    store.close()
    asg = assignments("subscriber_id,plan_id,from\na,home,2026-01-01T00:00:00Z\nb,mid,2026-01-01T00:00:00Z\n")
    job = RatingJob(config, plans=plans(HOME_PLAN + MID), assignments=asg)
    job.run(now_ms=ms("2026-11-10T00:00:00+00:00"))
    rec = f"b/{ms('2026-11-05T10:00:00+00:00')}/down/default/any"
    # b's cycle runs from Oct 15: 3 GB then 2 GB against a 4 GB allowance: 1 GB * 1.00 on Nov 5.
    assert current(job)[rec] == (1, 2_000_000_000, 1_000_000)
    job.close()
    # No lookback now: the run starts at home's November cycle (Nov 1, Berlin), but mid's cycle from Oct 15 is read
    # whole, so nothing changes (a partial read would have found b's 2 GB inside the allowance).
    job2 = RatingJob(replace(config, rating=replace(config.rating, lookback_cycles=0)), plans=plans(HOME_PLAN + MID),
                     assignments=asg)
    report = job2.run(now_ms=ms("2026-11-20T00:00:00+00:00"))
    assert (report.records_new, report.records_changed, report.records_voided) == (0, 0, 0)
    assert current(job2)[rec] == (1, 2_000_000_000, 1_000_000)
    job2.close()


def test_burstable_95th_percentile_through_the_store(store_env):
    from tests.rating.test_calendar import BURST

    add, make_job = store_env
    start = ms("2026-11-01T00:00:00+00:00")
    rows = []
    for i in range(100):  # as in test_calendar: down 95 x 12 Mbit/s + 5 x 40 Mbit/s, up 100 x 15 000 001 bit/s
        t = datetime.fromtimestamp((start + i * 300_000) / 1000, UTC).isoformat()
        rows.append(("acme", t, "down", "default", 450_000_000 if i >= 5 else 1_500_000_000))
        rows.append(("acme", t, "up", "default", 562_500_001))
    add(rows[:100])
    add(rows[100:])  # two collectors' parts
    job = make_job(BURST, asg="subscriber_id,plan_id,from\nacme,transit,2026-01-01T00:00:00Z\n")
    # closed until exactly the end of the 100th interval (watermark 120 s + extra lateness 60 s)
    job.run(now_ms=start + 100 * 300_000 + 180_000)
    t = job.engine.query(current_sql(columns="band, cycle_to_date, billable_quantity, amount_micros")).to_pylist()
    # p95 of up 15 000 001 bit/s; 5 000 001 over the commit -> 6 Mbit/s * 2.00 + 100.00 commit charge.
    assert t == [{"band": "p95", "cycle_to_date": 15_000_001, "billable_quantity": 6_000_000,
                  "amount_micros": 112_000_000}]


def test_the_documented_query_runs_verbatim(store_env):
    """The SQL in docs/rating.md, as written, on either store."""
    from pathlib import Path

    add, make_job = store_env
    add([("alice", "2026-11-02T21:00:00+01:00", "down", "default", 3_000_000_000)])
    job = make_job()
    job.run(now_ms=NOW)
    text = (Path(__file__).resolve().parents[2] / "docs" / "rating.md").read_text()
    sql = text.split("```sql\n", 1)[1].split("```", 1)[0]
    rows = job.engine.query(sql).to_pylist()
    assert [(r["record_id"], r["version"], r["amount_micros"]) for r in rows] == [
        (rid("2026-11-02T21:00:00+01:00", "down", "offpeak"), 1, 600_000)]
