"""Interval splitting with exact largest-remainder allocation, grouping, and watermark closing with corrections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.aggregate import (
    DENSE_MAX_SLOTS,
    KEY_COLUMNS,
    VALUE_COLUMNS,
    UsageAggregator,
    allocate,
    group_sum,
    split_intervals,
)

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


class ReferenceAggregator:
    """The aggregator as first written (every batch summed with group_sum, intervals re-summed at emit): the dense
    sums must give the same rows, in the same order, with the same dtypes."""

    def __init__(self, interval_ms: int, watermark_ms: int) -> None:
        self.interval_ms, self.watermark_ms = interval_ms, watermark_ms
        self.open: dict[int, list] = {}
        self.late: list = []
        self.corrections: dict[int, int] = {}
        self.late_parts = 0

    @staticmethod
    def reduce(chunks):
        cat = {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
        keys, values = group_sum([cat[c] for c in KEY_COLUMNS], [cat[c] for c in VALUE_COLUMNS])
        return dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True))

    def closed(self, start, now_ms):
        return start + self.interval_ms + self.watermark_ms <= now_ms

    def remap(self, column, mapping):
        for chunks in [*self.open.values(), self.late]:
            for ch in chunks:
                ch[column] = mapping[ch[column]]

    def add(self, parts, now_ms):
        if not len(parts["bytes"]):
            return
        rows = self.reduce([parts])
        istart = rows["interval_start"]
        pending = np.isin(istart, np.array(list(self.open), dtype=np.int64))
        late = ~pending & self.closed(istart, now_ms)
        if late.any():
            self.late.append({c: v[late] for c, v in rows.items()})
            self.late_parts += int(late.sum())
        for start in np.unique(istart[~late]).tolist():
            sel = ~late & (istart == start)
            self.open.setdefault(start, []).append({c: v[sel] for c, v in rows.items()})

    def emit(self, now_ms, force=False):
        out = []
        for start in sorted(self.open):
            if force or self.closed(start, now_ms):
                rows = self.reduce(self.open.pop(start))
                n = self.corrections.get(start)
                self.corrections[start] = 0 if n is None else n + 1
                rows["correction"] = np.full(len(rows["bytes"]), self.corrections[start], dtype=np.uint32)
                out.append(rows)
        if self.late:
            rows = self.reduce(self.late)
            self.late = []
            corr = np.zeros(len(rows["bytes"]), dtype=np.uint32)
            for start in np.unique(rows["interval_start"]).tolist():
                self.corrections[start] = self.corrections.get(start, 0) + 1
                corr[rows["interval_start"] == start] = self.corrections[start]
            rows["correction"] = corr
            out.append(rows)
        return {c: np.concatenate([o[c] for o in out]) for c in out[0]} if out else None


def assert_same_rows(got, want):
    assert (got is None) == (want is None)
    if want is None:
        return
    assert list(got) == list(want)
    for c in want:
        assert got[c].dtype == want[c].dtype, c
        assert got[c].tolist() == want[c].tolist(), c


_batch = st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 40), st.integers(0, 2), st.integers(0, 3),
                            st.integers(0, 5), st.integers(0, 2**62), st.integers(0, 2**40)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_batch, st.integers(0, 6), st.sampled_from(["add", "emit", "remap"])), max_size=12),
       st.sampled_from([DENSE_MAX_SLOTS, 300, 40]))
@pytest.mark.slow
def test_dense_sums_give_the_rows_of_the_reference(steps, cap):
    """Batches over several intervals (open, closing and late), subscribers appearing and growing the layout,
    the layout outgrowing its cap (rows from then on), class remaps and watermark closing: same rows, same order."""
    import mediation.aggregate as aggregate

    saved, aggregate.DENSE_MAX_SLOTS = aggregate.DENSE_MAX_SLOTS, cap
    try:
        agg, ref = UsageAggregator(IV, 60_000), ReferenceAggregator(IV, 60_000)
        now = 0
        for batch, dt, action in steps:
            now += dt * 100_000
            if action == "remap":
                mapping = np.array([3, 0, 1, 2], dtype=np.uint8)
                agg.remap("cls", mapping)
                ref.remap("cls", mapping)
                continue
            cols = list(zip(*batch, strict=True)) if batch else [[]] * 7
            p = {"interval_start": np.array(cols[0], dtype=np.int64) * IV, "sub": np.array(cols[1], np.int32),
                 "direction": np.array(cols[2], np.uint8), "cls": np.array(cols[3], np.uint8),
                 "exporter": np.array(cols[4], np.int32), "bytes": np.array(cols[5], np.uint64),
                 "packets": np.array(cols[6], np.uint64), "flows": np.ones(len(batch), np.uint64)}
            agg.add(p, now)
            ref.add(p, now)
            assert agg.late_parts == ref.late_parts
            if action == "emit":
                assert_same_rows(agg.emit(now), ref.emit(now))
        assert_same_rows(agg.emit(now, force=True), ref.emit(now, force=True))
    finally:
        aggregate.DENSE_MAX_SLOTS = saved


def test_dense_sums_wrap_like_reduceat_and_keep_dtypes():
    """uint64 sums modulo 2**64 as np.add.reduceat gives them; key dtypes as np.concatenate of the parts gives."""
    agg, ref = UsageAggregator(IV, 60_000), ReferenceAggregator(IV, 60_000)
    for exporter_dtype in (np.int32, np.int64):
        p = parts([0, 0], [5, 5], [2**63, 2**63 + 7])
        p["exporter"] = p["exporter"].astype(exporter_dtype)
        agg.add(p, 0)
        ref.add(p, 0)
    got = agg.emit(0, force=True)
    assert_same_rows(got, ref.emit(0, force=True))
    assert got["bytes"].tolist() == [14] and got["exporter"].dtype == np.int64


def test_keys_that_do_not_fit_dense_sums_are_summed_as_rows():
    """Subscriber indexes far apart (beyond DENSE_MAX_SLOTS) or non-integer keys: rows, same result."""
    agg, ref = UsageAggregator(IV, 60_000), ReferenceAggregator(IV, 60_000)
    for p in (parts([0, 0], [1, 2**30], [1, 2]), parts([0, 0, IV], [1, 3, 3], [4, 5, 6])):
        agg.add(p, 0)
        ref.add(p, 0)
    assert_same_rows(agg.emit(0, force=True), ref.emit(0, force=True))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-3 * IV, 3 * IV), st.integers(-IV, 2 * IV)), min_size=1, max_size=20))
def test_split_one_interval_shortcut_matches_the_general_split(records):
    """A batch that lies in one interval takes a shortcut (no division per record): same parts as the general
    split computes record by record."""
    start = np.array([r[0] for r in records], dtype=np.int64)
    end = start + np.array([r[1] for r in records], dtype=np.int64)
    got = split_intervals(start, end, IV)
    want = []  # record by record, in Python integers
    for i, (s, e) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
        e = max(e, s)
        for k in range(s // IV, max(e - 1, s) // IV + 1):
            part_start = max(s, k * IV)
            overlap, duration = min(e, k * IV + IV) - part_start, e - s
            want.append((i, k * IV, part_start) + ((overlap, duration) if duration else (1, 1)))
    assert list(zip(*(g.tolist() for g in got), strict=True)) == want
    assert got[1].dtype == np.int64 and got[0].tolist() == sorted(got[0].tolist())
    values = np.arange(1, len(start) + 1, dtype=np.uint64)
    assert allocate(values, got[0], got[3], got[4]).sum() == values.sum()
