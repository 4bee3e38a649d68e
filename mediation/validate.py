"""Validation of flow records: each record is either valid or rejected with one reason (the first that applies).

Times are checked against the record's own ``time_received`` (not the wall clock), so re-processing a record later
gives the same verdict unless the limits were changed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mediation.correlate import readonly
from mediation.hashing import CACHE

REASONS = ("impossible_timestamp", "end_before_start", "future", "too_old", "too_long", "zero_counters",
           "absurd_counters")
"""Reject reasons; code ``i + 1`` in the array :func:`validate` returns (0 = valid)."""

MIN_TIME_MS = 946_684_800_000
"""2000-01-01: flow times before this are impossible (an exporter clock at zero, a garbage template)."""
MAX_TIME_MS = 4_102_444_800_000
"""2100-01-01."""


@njit(nogil=True, cache=CACHE)
def _reasons(tr: np.ndarray, fs: np.ndarray, fe: np.ndarray, b: np.ndarray, p: np.ndarray, max_future_ms: int,
             max_lateness_ms: int, max_duration_ms: int, max_bytes_per_packet: np.uint64, out: np.ndarray) -> bool:
    """``out[i]``: record i's reason code (the first of :data:`REASONS` that applies, else 0), in one pass (int64
    times and uint64 counters wrap as numpy's do); returns whether every record is valid."""
    all_valid = True
    for i in range(len(tr)):
        t, s, e, nb, npk = tr[i], fs[i], fe[i], b[i], p[i]
        if s < MIN_TIME_MS or e > MAX_TIME_MS or t < MIN_TIME_MS or t > MAX_TIME_MS:
            code = 1
        elif e < s:
            code = 2
        elif e > t + max_future_ms:
            code = 3
        elif e < t - max_lateness_ms:
            code = 4
        elif e - s > max_duration_ms:
            code = 5
        elif nb == 0 or npk == 0:
            code = 6
        elif nb // max(npk, np.uint64(1)) > max_bytes_per_packet or nb < npk:  # (more than a packet can carry,
            code = 7  # or less than one byte per packet)
        else:
            code = 0
        out[i] = code
        all_valid &= code == 0
    return all_valid


def validate(time_received: np.ndarray, flow_start: np.ndarray, flow_end: np.ndarray, bytes_: np.ndarray,
             packets: np.ndarray, *, max_future_ms: int, max_lateness_ms: int, max_duration_ms: int,
             max_bytes_per_packet: int) -> np.ndarray:
    """Reason code per record (uint8; 0 = valid, else ``REASONS[code - 1]``), one compiled pass."""
    return validate_all(time_received, flow_start, flow_end, bytes_, packets, max_future_ms=max_future_ms,
                        max_lateness_ms=max_lateness_ms, max_duration_ms=max_duration_ms,
                        max_bytes_per_packet=max_bytes_per_packet)[0]


def validate_all(time_received: np.ndarray, flow_start: np.ndarray, flow_end: np.ndarray, bytes_: np.ndarray,
                 packets: np.ndarray, *, max_future_ms: int, max_lateness_ms: int, max_duration_ms: int,
                 max_bytes_per_packet: int) -> tuple[np.ndarray, bool]:
    """:func:`validate` and whether every record is valid (no second pass over the codes to find out)."""
    out = np.empty(len(time_received), dtype=np.uint8)
    ok = _reasons(readonly(time_received, np.int64), readonly(flow_start, np.int64), readonly(flow_end, np.int64),
                  readonly(bytes_, np.uint64), readonly(packets, np.uint64), int(max_future_ms), int(max_lateness_ms),
                  int(max_duration_ms), np.uint64(max_bytes_per_packet), out)
    return out, bool(ok)


def warm_up() -> None:
    """Compile the validation kernel now (or load it from numba's disk cache)."""
    one = np.zeros(1, dtype=np.int64)
    validate(one, one, one, one.view(np.uint64), one.view(np.uint64), max_future_ms=0, max_lateness_ms=0,
             max_duration_ms=0, max_bytes_per_packet=1)
