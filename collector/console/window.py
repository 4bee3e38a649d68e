"""Time windows of the console's pages: parsed from the query string, bounded, with a chart step.

Every query of a page reads one :class:`Window` (``[t0_ms, t1_ms)``, UTC); a window longer than
``console.max_window_h`` is refused with a message before anything is read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

HOUR_MS = 3_600_000
STEPS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
"""Chart steps: the smallest that keeps a window under :data:`MAX_POINTS` points is used."""
MAX_POINTS = 400
RANGES = {"1h": 1, "6h": 6, "24h": 24, "7d": 168}
"""Quick ranges offered above every chart (hours)."""
DEFAULT_H = 6


class WindowError(ValueError):
    """A window the console refuses (bad time, empty, too long); the message is shown on the page."""


def parse_instant(text: str, name: str = "time") -> int:
    """``2026-11-02T09:00`` (a browser's datetime-local: UTC), ISO 8601 with an offset, or epoch ms -> UTC ms."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(f"{name} {text!r}: expected a time such as 2026-11-02T09:00 (UTC) or "
                          "2026-11-02T10:00+01:00") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def iso(ms: int) -> str:
    """UTC ms as ``YYYY-MM-DDTHH:MM`` (what a datetime-local input shows), seconds only when there are some."""
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S" if t.second else "%Y-%m-%dT%H:%M")


def label(ms: int) -> str:
    """UTC ms as a chart's time label (``YYYY-MM-DD HH:MM:SS``, which Plotly reads as a date)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Window:
    """``[t0_ms, t1_ms)`` in UTC ms."""

    t0_ms: int
    t1_ms: int

    @property
    def hours(self) -> float:
        return (self.t1_ms - self.t0_ms) / HOUR_MS

    def step_s(self, minimum_s: int = 60) -> int:
        """The chart step: the smallest of :data:`STEPS_S` (and at least ``minimum_s``) giving few enough points."""
        span_s = (self.t1_ms - self.t0_ms) / 1000
        for step in STEPS_S:
            if step >= minimum_s and span_s / step <= MAX_POINTS:
                return step
        return STEPS_S[-1]

    def query(self) -> str:
        """The window as query-string parameters."""
        return f"from={iso(self.t0_ms)}&to={iso(self.t1_ms)}"


def window_from(params: dict[str, str], now_ms: int, max_window_h: int) -> Window:
    """The window a request asks for: ``from``/``to``, or ``range`` (1h, 6h, 24h, 7d) ending at ``to`` (default:
    now, rounded up to the minute), or the last :data:`DEFAULT_H` hours. Raises :class:`WindowError`."""
    end = parse_instant(params["to"], "to") if params.get("to") else -(-now_ms // 60_000) * 60_000
    if params.get("range"):
        if params["range"] not in RANGES:
            raise WindowError(f"range {params['range']!r}: expected one of {', '.join(RANGES)}")
        start = end - RANGES[params["range"]] * HOUR_MS
    elif params.get("from"):
        start = parse_instant(params["from"], "from")
    else:
        start = end - DEFAULT_H * HOUR_MS
    if end <= start:
        raise WindowError(f"the window ends ({iso(end)}) before it starts ({iso(start)})")
    window = Window(start, end)
    if window.hours > max_window_h:
        raise WindowError(f"the window is {window.hours:g} hours long; the console reads at most {max_window_h} hours "
                          "at a time (console.max_window_h): choose a shorter one")
    return window
