"""Bounding the work one batch of flows makes for the mediator.

Mediation splits every flow record at the usage interval boundaries; a record lasting a day is 288 parts at
5-minute intervals. An exporter (or a spoofed one) sending a batch of long records could make one
``Mediator.process`` call build hundreds of millions of parts (20,000 day-long records: 5.7 M parts, 0.7 GB; a
full batch of 2,048 datagrams about four times that). :func:`slices_by_parts` cuts a batch into consecutive slices
of at most ``max_parts`` parts each (a single record is never cut), so memory per call stays bounded; the mediator
is a streaming stage, so consecutive slices give the same result as one call.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mediation.stage import Stage, Tables

MAX_PARTS = 2_000_000
"""Interval parts per Mediator.process call (about 100 MB of part columns)."""


def parts_per_record(start_ms: np.ndarray, end_ms: np.ndarray, interval_ms: int) -> np.ndarray:
    """How many interval parts each record ``[start, end)`` becomes (at least 1)."""
    start = np.asarray(start_ms, dtype=np.int64)
    end = np.maximum(np.asarray(end_ms, dtype=np.int64), start)
    parts: np.ndarray = (np.maximum(end - 1, start) // interval_ms) - (start // interval_ms) + 1
    return parts


def slices_by_parts(batch: pa.RecordBatch, interval_ms: int, max_parts: int = MAX_PARTS,
                    start: str = "flow_start", end: str = "flow_end") -> list[pa.RecordBatch]:
    """``batch`` as consecutive slices of at most ``max_parts`` parts (one slice when it is small enough)."""
    if batch.num_rows == 0:
        return [batch]
    s = batch.column(start).cast(pa.int64()).to_numpy(zero_copy_only=False)
    e = batch.column(end).cast(pa.int64()).to_numpy(zero_copy_only=False)
    # the usual case, short records: a record of duration d makes at most (d - 1) // interval + 2 parts, and no
    # record lasts longer than the batch's span (Python ints: no int64 overflow on absurd times)
    longest = max(int(e.max()) - int(s.min()), 1)
    if batch.num_rows * ((longest - 1) // interval_ms + 2) <= max_parts:
        return [batch]
    # records outside the validation bounds (negative or absurd durations) count as one part: the mediator
    # rejects them before splitting
    parts = np.clip(parts_per_record(s, e, interval_ms), 1, max_parts)
    total = np.cumsum(parts)
    if total[-1] <= max_parts:
        return [batch]
    out, begin = [], 0
    while begin < batch.num_rows:
        base = total[begin - 1] if begin else 0
        stop = int(np.searchsorted(total, base + max_parts, side="right"))
        stop = max(stop, begin + 1)
        out.append(batch.slice(begin, stop - begin))
        begin = stop
    return out


def mediate_bounded(mediator: Stage[pa.RecordBatch], flows: pa.RecordBatch, received_ms: int, interval_ms: int,
                    max_parts: int = MAX_PARTS) -> Tables:
    """``mediator.process(flows, received_ms)`` slice by slice (:func:`slices_by_parts`), the outputs of the slices
    concatenated per table."""
    slices = slices_by_parts(flows, interval_ms, max_parts)
    if len(slices) == 1:
        return mediator.process(flows, received_ms)
    merged: dict[str, list[pa.RecordBatch]] = {}
    for part in slices:
        for name, out in mediator.process(part, received_ms).items():
            if out is not None and out.num_rows:
                merged.setdefault(name, []).append(out)
    return {name: outs[0] if len(outs) == 1 else pa.Table.from_batches(outs).combine_chunks().to_batches()[0]
            for name, outs in merged.items()}
