"""Local time in a plan's IANA timezone, vectorised: UTC offsets, weekdays, minutes of day, billing cycles.

zoneinfo gives the offset at one instant; numpy arrays of UTC milliseconds need it for millions of instants. Every
timezone in the tz database changes its offset on a quarter-hour of UTC, so the offset sampled at each quarter hour
of the range is exact for every instant of that quarter hour: one Python call per quarter hour, one array lookup per
row. This is what makes bands and cycles correct across daylight-saving changes (the 25-hour and 23-hour days).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

QUARTER_MS = 15 * 60 * 1000
DAY_MS = 86_400_000


@lru_cache(maxsize=4096)
def _day_offsets(tz: str, day: int) -> tuple[int, ...]:
    """UTC offsets (ms) at the 96 quarter hours of UTC day ``day`` (days since the epoch)."""
    zone = ZoneInfo(tz)
    base = day * DAY_MS
    offsets = []
    for i in range(96):
        offset = datetime.fromtimestamp((base + i * QUARTER_MS) / 1000, UTC).astimezone(zone).utcoffset()
        assert offset is not None  # an aware datetime in a ZoneInfo always has one
        offsets.append(int(offset.total_seconds() * 1000))
    return tuple(offsets)


def utc_offsets(tz: str, ms: np.ndarray) -> np.ndarray:
    """The UTC offset (ms) of ``tz`` at each instant of ``ms``."""
    ms = np.asarray(ms, dtype=np.int64)
    if len(ms) == 0:
        return np.zeros(0, dtype=np.int64)
    first, last = int(ms.min()) // DAY_MS, int(ms.max()) // DAY_MS
    table = np.array([o for d in range(first, last + 1) for o in _day_offsets(tz, d)], dtype=np.int64)
    offsets: np.ndarray = table[(ms - first * DAY_MS) // QUARTER_MS]
    return offsets


def local_fields(tz: str, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weekday with Monday = 0, minute of the local day) of each instant, in ``tz``."""
    local = np.asarray(ms, dtype=np.int64) + utc_offsets(tz, ms)
    days = np.floor_divide(local, DAY_MS)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    minute = np.floor_divide(local - days * DAY_MS, 60_000)
    return weekday.astype(np.int8), minute.astype(np.int16)


def cycle_start_ms(tz: str, cycle_day: int, year: int, month: int) -> int:
    """UTC ms of local midnight starting ``cycle_day`` of ``year-month`` in ``tz``."""
    return int(datetime(year, month, cycle_day, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def cycle_label_to_month(label: str) -> tuple[int, int]:
    """``"2026-11"`` -> (2026, 11); raises ValueError otherwise."""
    year, sep, month = label.partition("-")
    if not sep or len(year) != 4 or not year.isdigit() or not month.isdigit() or not 1 <= int(month) <= 12:
        raise ValueError(f"cycle {label!r}: expected YYYY-MM")
    return int(year), int(month)


@lru_cache(maxsize=65536)
def cycle_bounds(tz: str, cycle_day: int, label: str) -> tuple[int, int]:
    """[start, end) of the billing cycle labelled ``YYYY-MM`` (it starts in that month)."""
    y, m = cycle_label_to_month(label)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return cycle_start_ms(tz, cycle_day, y, m), cycle_start_ms(tz, cycle_day, ny, nm)


def cycles(tz: str, cycle_day: int, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """For each instant: (cycle start ms, cycle end ms, index into the returned labels), and the labels."""
    ms = np.asarray(ms, dtype=np.int64)
    if len(ms) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, []
    lo = datetime.fromtimestamp(int(ms.min()) / 1000, UTC)
    hi = int(ms.max())
    y, m = (lo.year, lo.month - 1) if lo.month > 1 else (lo.year - 1, 12)
    starts: list[int] = []
    labels: list[str] = []
    while True:
        starts.append(cycle_start_ms(tz, cycle_day, y, m))
        labels.append(f"{y:04d}-{m:02d}")
        if starts[-1] > hi:  # the cycle holding the last instant is closed by this start
            break
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    bounds = np.array(starts, dtype=np.int64)
    idx = np.searchsorted(bounds, ms, side="right") - 1
    return bounds[idx], bounds[idx + 1], idx, labels[:-1]


@dataclass(frozen=True)
class WallTime:
    """A date or time written without a UTC offset (``2026-11-01``): that wall-clock time in *each plan's own*
    time zone, so ``2026-10-01 .. 2026-11-01`` is October in every plan calendar. Resolved like a cycle start
    (zoneinfo, ``fold = 0``: a time in a DST gap or overlap means the offset in force before the change)."""

    value: datetime
    """Naive local date and time."""

    def in_zone(self, tz: str) -> int:
        """UTC ms of this wall-clock time in ``tz``."""
        return int(self.value.replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)

    def __str__(self) -> str:
        return self.value.isoformat(timespec="seconds") + " local"


Instant = int | WallTime
"""A period bound: UTC ms (an absolute instant) or a :class:`WallTime` read in each plan's time zone."""


def parse_instant(text: str) -> Instant:
    """``2026-11-01`` or ``2026-11-01T06:00`` (no offset) -> :class:`WallTime`; ``2026-11-01T00:00:00Z`` or with an
    offset -> UTC ms. Raises ValueError for anything else."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: expected a date or time such as 2026-11-01 (in each plan's time zone) or "
                         "2026-11-01T00:00:00+01:00 (an instant)") from None
    if dt.tzinfo is None:
        return WallTime(dt)
    return int(dt.timestamp() * 1000)


def resolve(t: Instant, tz: str) -> int:
    """UTC ms of a period bound in time zone ``tz`` (an absolute instant is the same in every zone)."""
    return t.in_zone(tz) if isinstance(t, WallTime) else int(t)


def cycle_window(tz: str, cycle_day: int, start: int, end: int) -> tuple[int, int]:
    """[start of the first, end of the last) of the cycles overlapping [start, end) in one plan calendar."""
    s, _, _, _ = cycles(tz, cycle_day, np.array([start], dtype=np.int64))
    _, e, _, _ = cycles(tz, cycle_day, np.array([max(end - 1, start)], dtype=np.int64))
    return int(s[0]), int(e[0])


def cycle_labels(tz: str, cycle_day: int, start: int, end: int) -> list[str]:
    """Labels of the cycles of one plan calendar that start in [start, end)."""
    if end <= start:
        return []
    first, _, idx, labels = cycles(tz, cycle_day, np.array([start, end - 1], dtype=np.int64))
    out = labels[int(idx[0]):int(idx[1]) + 1]
    return out if int(first[0]) == start else out[1:]
