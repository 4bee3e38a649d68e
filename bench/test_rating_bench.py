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
