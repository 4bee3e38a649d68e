"""From flow records to rated usage: the Mediator's usage rows, written to the embedded store, rated by the job.

Checks the contract between mediation (issue 4) and rating (issue 5) with hand-computed figures: a flow between two
subscribers counts for both, a flow spanning three intervals is split exactly, duplicates and unattributed traffic
cost nothing, and a late record (a correction row) gives a new version of exactly the affected records.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from collector.config import load
from mediation import Mediator
from mediation.subscribers.bindings import Bindings
from mediation.tables import USAGE
from rating.job import RatingJob
from rating.tables import current_sql
from storage.store import ParquetStore
from tests.mediation.mediation_helpers import flows
from tests.rating.helpers import HOME_PLAN, assignments, ms, plans

T0 = ms("2026-11-02T09:00:00+01:00")  # Monday, peak in Berlin; a multiple of 5 minutes
S = 1000
GB = 1_000_000_000
PK = 1_000_000  # packets per record: 1,000 to 4,500 bytes per packet, a plausible size (validation checks it)


@pytest.fixture
def env(tmp_path):
    config = load(None, [f"store.path={tmp_path}", "mediation.watermark_s=60"])
    store = ParquetStore.for_config(config, housekeeper=False)
    b = Bindings()
    b.open("alice", "100.64.0.1", T0 - 86_400 * S)
    b.open("bob", "100.64.0.2", T0 - 86_400 * S)
    b.commit()
    ids = iter(range(1, 100))

    def write(out: dict) -> None:
        if out.get("usage") is not None and out["usage"].num_rows:
            store.write(USAGE, out["usage"], next(ids))

    job = RatingJob(config, plans=plans(HOME_PLAN), assignments=assignments(
        "subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\nbob,home,2026-01-01T00:00:00+01:00\n"))
    yield Mediator(config, b), write, job
    job.close()
    store.close()


def amounts(job) -> dict[tuple[str, int, str], tuple[int, int, int]]:
    t = job.engine.query(current_sql(columns="subscriber_id, interval_start, direction, bytes, amount_micros, version"))
    starts = t["interval_start"].cast(pa.int64()).to_pylist()
    return {(r["subscriber_id"], start, r["direction"]): (r["bytes"], r["amount_micros"], r["version"])
            for r, start in zip(t.to_pylist(), starts, strict=True)}


def test_mediated_usage_is_rated_exactly(env):
    mediator, write, job = env
    r = T0 + 355 * S
    write(mediator.process(flows([
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=GB, packets=PK, received=r),
        dict(src="8.8.8.8", dst="100.64.0.1", start=T0 + 20 * S, end=T0 + 50 * S, bytes=3 * GB, packets=PK,
             received=r),
        dict(src="100.64.0.1", dst="100.64.0.2", start=T0 + 30 * S, end=T0 + 60 * S, bytes=700_000_000, packets=PK,
             received=r),
        dict(src="198.51.100.9", dst="8.8.4.4", start=T0 + 30 * S, end=T0 + 31 * S, bytes=300, packets=3,
             received=r),
        # 100 s + 300 s + 50 s over three intervals: 1 GB, 3 GB and 0.5 GB to bob
        dict(src="8.8.8.8", dst="100.64.0.2", start=T0 - 100 * S, end=T0 + 350 * S, bytes=4_500_000_000,
             packets=PK, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=GB, packets=PK, received=r),
    ]), r))
    write(mediator.close_all(T0 + 3600 * S))
    first = job.run(now_ms=T0 + 3 * 3600 * S)
    assert first.unrated_bytes == 0  # unattributed traffic (300 bytes) has no subscriber: it is not usage to rate
    i0, i_prev, i_next = T0, T0 - 300 * S, T0 + 300 * S
    got = amounts(job)
    assert got == {
        # alice down 3 GB: 2 GB allowance, 1 GB * 1.20 (peak).
        ("alice", i0, "down"): (3 * GB, 1_200_000, 1),
        # alice up 1 GB + 0.7 GB to bob (the duplicate record is not counted): 1.7 GB * 0.3333 = 0.56661.
        ("alice", i0, "up"): (1_700_000_000, 566_610, 1),
        # bob: 1 GB (in the allowance), then 3 GB + 0.7 GB from alice = 3.7 GB: cumulative 1 -> 4.7 GB, 1 GB
        # allowance, 2.7 GB * 1.20 = 3.24; then 0.5 GB: 0.3 GB * 1.20 + 0.2 GB * 0.80 = 0.52.
        ("bob", i_prev, "down"): (GB, 0, 1),
        ("bob", i0, "down"): (3_700_000_000, 3_240_000, 1),
        ("bob", i_next, "down"): (500_000_000, 520_000, 1),
    }

    # A record that arrives two hours late for alice's first interval becomes a correction row of mediation and a
    # new version of exactly alice's download record.
    late = T0 + 2 * 3600 * S
    write(mediator.process(flows([
        dict(src="8.8.8.8", dst="100.64.0.1", start=T0 + 100 * S, end=T0 + 110 * S, bytes=500_000_000, packets=PK,
             received=late)]), late))
    write(mediator.close_all(late + 600 * S))
    report = job.run(now_ms=T0 + 3 * 3600 * S)
    assert (report.records_changed, report.records_new, report.records_unchanged) == (1, 0, 4)
    # 3.5 GB: 1.5 GB * 1.20 = 1.80 EUR.
    assert amounts(job)[("alice", i0, "down")] == (3_500_000_000, 1_800_000, 2)
    assert report.per_subscriber == {("alice", "EUR"): (1_200_000 + 566_610, 1_800_000 + 566_610)}
