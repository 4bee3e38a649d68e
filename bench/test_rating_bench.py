"""Rating engine speed: usage rows rated per second per core.

    python -m pytest bench/test_rating_bench.py --benchmark-enable -s

The workload of issue 5: 100,000 subscribers over a day of 5-minute intervals (288), usage in both directions in
every interval: 57.6 million usage rows, rated under a plan with an allowance, two graduated tiers with peak and
off-peak prices (bands in Europe/Berlin), a zero-rated class and an upload card. Rating is independent per
subscriber, so the day is rated in slices of 5,000 subscribers (2.88 M rows, about 2.5 GB peak) against the full
assignment book of 100,000 subscribers; what is timed is :func:`rating.engine.rate` on already summed usage (the job
gets usage summed by the store's ``GROUP BY``), in CPU time of this process (``time.process_time``), so the figure is
per core even on a busy machine. It includes building the ``rated_usage`` columns (record ids, strings).

With ``--benchmark-disable`` (the suite default) it runs once on 1,000 subscribers as a plain test.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from rating.assignments import Assignment, Assignments
from rating.engine import rate
from tests.rating.helpers import HOME_PLAN, ms, plans

DAY = ms("2026-11-02T00:00:00+01:00")  # a Monday in Berlin: peak and off-peak bands both occur
INTERVALS = 288


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def _names(first: int, count: int) -> pa.Array:
    return pa.array([f"sub{i:07d}" for i in range(first, first + count)], pa.string())


def usage_slice(first: int, count: int, seed: int) -> pa.Table:
    """``count`` subscribers' day: every interval, both directions; 5 % of download rows in the zero-rated class."""
    per_sub = INTERVALS * 2
    n = count * per_sub
    sub = np.repeat(np.arange(count, dtype=np.int32), per_sub)
    interval = np.tile(np.repeat(np.arange(INTERVALS, dtype=np.int64), 2), count)
    direction = np.tile(np.array([0, 1], dtype=np.int32), count * INTERVALS)
    rng = np.random.default_rng(seed)
    cls = ((direction == 1) & (rng.random(n) < 0.05)).astype(np.int32)
    start = DAY + interval * 300_000
    return pa.table({
        "subscriber_id": pa.DictionaryArray.from_arrays(pa.array(sub), _names(first, count)).cast(pa.string()),
        "interval_start": pa.array(start),
        "interval_end": pa.array(start + 300_000),
        "direction": pa.DictionaryArray.from_arrays(pa.array(direction), pa.array(["up", "down"])).cast(pa.string()),
        "traffic_class": pa.DictionaryArray.from_arrays(pa.array(cls), pa.array(["default", "cdn"])).cast(pa.string()),
        "bytes": pa.array(rng.integers(0, 40_000_000, n, dtype=np.int64)),
    })


def test_rating_rows_per_second_per_core(benchmark, request):
    subscribers, slice_size = (100_000, 5_000) if _enabled(request) else (1_000, 1_000)
    book = plans(HOME_PLAN)
    since = ms("2026-01-01T00:00:00+01:00")
    asg = Assignments([Assignment(f"sub{i:07d}", "home", since) for i in range(subscribers)])
    totals = {"rows": 0, "records": 0, "cpu": 0.0}
    threads = pa.cpu_count()
    pa.set_cpu_count(1)  # one core: Arrow kernels must not spread over a thread pool (numpy is single-threaded)
    request.addfinalizer(lambda: pa.set_cpu_count(threads))

    def run() -> None:
        for k, first in enumerate(range(0, subscribers, slice_size)):
            usage = usage_slice(first, slice_size, seed=k)
            t0 = time.process_time()
            result = rate(usage, book, asg, presummed=True)
            totals["cpu"] += time.process_time() - t0
            totals["rows"] += usage.num_rows
            totals["records"] += result.records.num_rows
            assert result.records.num_rows == usage.num_rows  # every usage row is one record
            assert result.counters["unrated_rows"] == 0

    benchmark.pedantic(run, rounds=1, iterations=1)
    rate_per_core = totals["rows"] / totals["cpu"]
    benchmark.extra_info.update(usage_rows=totals["rows"], records=totals["records"], cpu_s=round(totals["cpu"], 2),
                                rows_per_s_per_core=round(rate_per_core))
    print(f"\nrating: {totals['rows']:,} usage rows ({subscribers:,} subscribers x {INTERVALS} intervals x 2 "
          f"directions) in {totals['cpu']:.1f} s CPU: {rate_per_core:,.0f} rows/s/core")
    assert totals["rows"] == subscribers * INTERVALS * 2


@pytest.mark.slow
def test_rating_job_end_to_end(benchmark, request, tmp_path):
    """The whole job over the embedded store: SQL GROUP BY of the usage (chDB over Parquet), rating, reading the
    current state, the diff and the Parquet write; then a second run that finds nothing to write."""
    from collector.config import load
    from mediation.tables import USAGE
    from rating.job import RatingJob
    from storage.store import ParquetStore

    subscribers = 10_000 if _enabled(request) else 200
    config = load(None, [f"store.path={tmp_path}", "mediation.watermark_s=0", "rating.extra_lateness_s=0"])
    store = ParquetStore.for_config(config, housekeeper=False)
    for k, first in enumerate(range(0, subscribers, 5_000)):
        u = usage_slice(first, min(5_000, subscribers - first), seed=k)
        n = u.num_rows
        batch = USAGE.to_arrow({
            "interval_start": u["interval_start"].to_numpy(), "interval_end": u["interval_end"].to_numpy(),
            "subscriber_id": u["subscriber_id"].to_numpy(zero_copy_only=False),
            "direction": u["direction"].to_numpy(zero_copy_only=False),
            "traffic_class": u["traffic_class"].to_numpy(zero_copy_only=False),
            "bytes": u["bytes"].to_numpy().astype(np.uint64), "packets": np.ones(n, dtype=np.uint64),
            "flows": np.ones(n, dtype=np.uint64), "source": np.full(n, "flow", dtype=object),
            "row_id": np.arange(n, dtype=np.uint64)})
        store.write(USAGE, batch, 1 + k)
    store.close()
    since = ms("2026-01-01T00:00:00+01:00")
    asg = Assignments([Assignment(f"sub{i:07d}", "home", since) for i in range(subscribers)])
    job = RatingJob(config, plans=plans(HOME_PLAN), assignments=asg)
    now = DAY + 86_400_000 + 3_600_000
    reports = []
    times = []

    def first_run() -> None:
        t = time.perf_counter()
        reports.append(job.run(now_ms=now))
        times.append(time.perf_counter() - t)

    benchmark.pedantic(first_run, rounds=1, iterations=1)
    t0 = time.perf_counter()
    again = job.run(now_ms=now)
    second = time.perf_counter() - t0
    job.close()
    rows = subscribers * INTERVALS * 2
    assert reports[0].records_new == rows and again.records_unchanged == rows and again.records_new == 0
    first_s = times[0]
    benchmark.extra_info.update(usage_rows=rows, first_run_s=round(first_s, 2), second_run_s=round(second, 2))
    print(f"\nrating job: {rows:,} usage rows: first run {first_s:.1f} s ({rows / first_s:,.0f} rows/s), "
          f"second run (nothing to write) {second:.1f} s")
