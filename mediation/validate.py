"""Validation of flow records: each record is either valid or rejected with one reason (the first that applies).

Times are checked against the record's own ``time_received`` (not the wall clock), so re-processing a record later
gives the same verdict unless the limits were changed.
"""

from __future__ import annotations

import numpy as np

REASONS = ("impossible_timestamp", "end_before_start", "future", "too_old", "too_long", "zero_counters",
           "absurd_counters")
"""Reject reasons; code ``i + 1`` in the array :func:`validate` returns (0 = valid)."""

MIN_TIME_MS = 946_684_800_000
"""2000-01-01: flow times before this are impossible (an exporter clock at zero, a garbage template)."""
MAX_TIME_MS = 4_102_444_800_000
"""2100-01-01."""


def validate(time_received: np.ndarray, flow_start: np.ndarray, flow_end: np.ndarray, bytes_: np.ndarray,
             packets: np.ndarray, *, max_future_ms: int, max_lateness_ms: int, max_duration_ms: int,
             max_bytes_per_packet: int) -> np.ndarray:
    """Reason code per record (uint8; 0 = valid, else ``REASONS[code - 1]``), vectorised."""
    tr = np.asarray(time_received, dtype=np.int64)
    fs = np.asarray(flow_start, dtype=np.int64)
    fe = np.asarray(flow_end, dtype=np.int64)
    b = np.asarray(bytes_, dtype=np.uint64)
    p = np.asarray(packets, dtype=np.uint64)
    conditions = [
        (fs < MIN_TIME_MS) | (fe > MAX_TIME_MS) | (tr < MIN_TIME_MS) | (tr > MAX_TIME_MS),
        fe < fs,
        fe > tr + max_future_ms,
        fe < tr - max_lateness_ms,
        fe - fs > max_duration_ms,
        (b == 0) | (p == 0),
        # more bytes per packet than any packet can carry, or less than one byte per packet
        (b // np.maximum(p, np.uint64(1)) > np.uint64(max_bytes_per_packet)) | (b < p),
    ]
    return np.select(conditions, [np.uint8(i + 1) for i in range(len(conditions))], np.uint8(0)).astype(np.uint8)
