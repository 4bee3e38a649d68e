"""Interval splitting with exact largest-remainder allocation, grouping, and watermark closing with corrections."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.aggregate import UsageAggregator, allocate, group_sum, split_intervals

IV = 300_000


def test_a_flow_over_three_intervals_splits_exactly():
    start, end = np.array([IV - 100_000]), np.array([2 * IV + 50_000])  # 100 s + 300 s + 50 s
    rec, istart, pstart, overlap, duration = split_intervals(start, end, IV)
    assert istart.tolist() == [0, IV, 2 * IV]
    assert pstart.tolist() == [IV - 100_000, IV, 2 * IV]
    assert overlap.tolist() == [100_000, 300_000, 50_000] and duration.tolist() == [450_000] * 3
    parts = allocate(np.array([1000], dtype=np.uint64), rec, overlap, duration)
    # 222.2, 666.7, 111.1 -> floors 222, 666, 111 (999) + 1 to the largest remainder (666.7)
    assert parts.tolist() == [222, 667, 111]
    assert allocate(np.array([1], dtype=np.uint64), rec, overlap, duration).tolist() == [0, 1, 0]


def test_zero_length_and_boundary_flows():
    rec, istart, _, overlap, duration = split_intervals(np.array([IV, IV - 1, 5]), np.array([IV, IV, 5]), IV)
    assert istart.tolist() == [IV, 0, 0]  # a flow ending exactly at a boundary stays in the earlier interval
    assert overlap.tolist() == [1, 1, 1] and duration.tolist() == [1, 1, 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 86400_000), st.integers(0, 86400_000), st.integers(0, 2**50)),
                min_size=1, max_size=40))
def test_parts_always_add_up_and_stay_proportional(flows):
    start = np.array([f[0] for f in flows], dtype=np.int64)
    end = start + np.array([f[1] for f in flows], dtype=np.int64)
    values = np.array([f[2] for f in flows], dtype=np.uint64)
    rec, istart, _, overlap, duration = split_intervals(start, end, IV)
    parts = allocate(values, rec, overlap, duration)
    sums = np.bincount(rec, weights=parts.astype(np.float64), minlength=len(flows))
    for i in range(len(flows)):
        assert int(sum(int(p) for p, r in zip(parts, rec, strict=True) if r == i)) == int(values[i])
        assert abs(sums[i] - float(values[i])) <= max(1.0, float(values[i]) * 1e-12)
    exact = values[rec].astype(object) * overlap.astype(object) / duration.astype(object)
    assert all(abs(int(p) - float(e)) < 1.0 + 1e-9 for p, e in zip(parts, exact, strict=True))
    assert ((istart % IV) == 0).all()


def test_group_sum_exact_and_wide_keys():
    keys = [np.array([1, 2, 1, 2**40]), np.array([0, 0, 0, 5])]
    values = [np.array([2**63, 1, 2**63 - 1, 7], dtype=np.uint64)]
    k, v = group_sum(keys, values)
    got = {(a, b): c for a, b, c in zip(k[0].tolist(), k[1].tolist(), v[0].tolist(), strict=True)}
    assert got == {(1, 0): 2**64 - 1, (2, 0): 1, (2**40, 5): 7}
    wide = [np.array([0, 2**62, 0]), np.array([0, 2**62, 0]), np.array([1, 1, 1])]  # > 63 bits: lexsort path
    k, v = group_sum(wide, [np.array([1, 2, 3], dtype=np.uint64)])
    assert sorted(v[0].tolist()) == [2, 4]


def parts(interval_start, sub, nbytes):
    n = len(sub)
    return {"interval_start": np.array(interval_start, dtype=np.int64), "sub": np.array(sub, dtype=np.int32),
            "direction": np.zeros(n, np.uint8), "cls": np.zeros(n, np.uint8), "exporter": np.zeros(n, np.int32),
            "bytes": np.array(nbytes, dtype=np.uint64), "packets": np.ones(n, np.uint64),
            "flows": np.ones(n, np.uint64)}


def test_watermark_closing_and_correction_rows():
    agg = UsageAggregator(IV, 60_000)
    agg.add(parts([0, 0, IV], [1, 1, 2], [10, 20, 5]), now_ms=IV + 1000)
    assert agg.emit(IV + 59_999) is None  # the first interval closes at IV + watermark
    rows = agg.emit(IV + 60_000)
    assert rows["bytes"].tolist() == [30] and rows["correction"].tolist() == [0]
    # a late part for the closed interval becomes correction 1, then 2; the open interval is unaffected
    agg.add(parts([0], [1], [7]), now_ms=IV + 70_000)
    rows = agg.emit(IV + 70_000)
    assert (rows["bytes"].tolist(), rows["correction"].tolist()) == ([7], [1])
    agg.add(parts([0, IV], [1, 2], [3, 4]), now_ms=IV + 80_000)
    rows = agg.emit(IV + 80_000)
    assert (rows["bytes"].tolist(), rows["correction"].tolist()) == ([3], [2])
    rows = agg.emit(0, force=True)
    assert (rows["interval_start"].tolist(), rows["bytes"].tolist(), rows["correction"].tolist()) == ([IV], [9], [0])
    assert agg.open_intervals() == []
