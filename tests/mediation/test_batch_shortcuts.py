"""Shortcuts taken per batch before mediation: slicing by interval parts and dropping NAT-only records return what
the full computation returns, including at the edges the shortcuts decide on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.schema import FLOWS
from mediation.bounded import parts_per_record, slices_by_parts
from mediation.compliance.nat import without_nat_only

IV = 300_000


def batch_of(start: list[int], end: list[int], **extra) -> pa.RecordBatch:
    cols = FLOWS.empty_columns(len(start))
    cols["flow_start"] = np.array(start, dtype=np.int64)
    cols["flow_end"] = np.array(end, dtype=np.int64)
    for name, values in extra.items():
        cols[name] = np.array(values, dtype=cols[name].dtype)
    return FLOWS.to_arrow(cols)


def counted_slices(start: np.ndarray, end: np.ndarray, max_parts: int) -> list[int]:
    """Slice lengths by counting every record's parts (what slices_by_parts does without its shortcut)."""
    parts = np.clip(parts_per_record(start, end, IV), 1, max_parts).tolist()
    out, n, used = [], 0, 0
    for p in parts:
        if n and used + p > max_parts:
            out.append(n)
            n, used = 0, 0
        n, used = n + 1, used + p
    return out + [n]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**40, 2**42), st.integers(-10**6, 3 * IV)), min_size=1, max_size=40),
       st.integers(1, 60))
def test_slices_match_counting_every_record(records, max_parts):
    start = np.array([r[0] for r in records], dtype=np.int64)
    end = start + np.array([r[1] for r in records], dtype=np.int64)
    slices = slices_by_parts(batch_of(start.tolist(), end.tolist()), IV, max_parts=max_parts)
    assert [s.num_rows for s in slices] == counted_slices(start, end, max_parts)


def test_slice_shortcut_edges():
    """Exactly max_parts parts: one slice; one more: two; absurd times (int64 extremes) never pass for short."""
    start = [0, IV - 1, 2 * IV - 1]  # 1 part, 2 parts, 2 parts
    end = [1, IV + 1, 2 * IV + 1]
    assert len(slices_by_parts(batch_of(start, end), IV, max_parts=5)) == 1
    assert [s.num_rows for s in slices_by_parts(batch_of(start, end), IV, max_parts=4)] == [2, 1]
    extreme = batch_of([-(2**62), 0], [2**62, 1])
    assert [s.num_rows for s in slices_by_parts(extreme, IV, max_parts=3)] == [1, 1]
    assert slices_by_parts(batch_of([], []), IV) and slices_by_parts(batch_of([], []), IV)[0].num_rows == 0


def test_without_nat_only_shortcut():
    plain = batch_of([0, 1], [1, 2], bytes=[0, 10], packets=[0, 1])
    assert without_nat_only(plain) is plain  # no natEvent at all: the batch itself, not a copy
    nat = batch_of([0, 1, 2], [1, 2, 3], bytes=[0, 10, 0], packets=[0, 1, 0], nat_event=[1, 1, 0])
    kept = without_nat_only(nat)
    assert kept.column("bytes").to_pylist() == [10, 0]  # the NAT-only record goes; a zero-traffic flow stays
    nulls = nat.set_column(nat.schema.get_field_index("nat_event"), "nat_event",
                           pa.array([None, 0, 0], type=nat.schema.field("nat_event").type))
    assert without_nat_only(nulls).num_rows == 3  # nulls take the general path: as before (a null is no event)
