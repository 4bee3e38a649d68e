"""Plotly figure specifications (plain dicts, sent as JSON and drawn in the browser by the bundled plotly.min.js).

Times are UTC labels (``YYYY-MM-DD HH:MM:SS``); amounts of money are sent as decimal strings (Plotly reads them as
numbers on the page; the server never turns money into a float).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from collector.console.window import label

Spec = dict[str, Any]
"""A Plotly JSON object (a figure, its layout, a trace, a shape or an annotation)."""

PALETTE = ("#2f6fb3", "#e07b39", "#3a9d5d", "#c4453c", "#8461b4", "#8c6d4f", "#d36fb0", "#7f7f7f", "#b5b53a",
           "#34a7b8", "#1f4e79", "#a3542b")
OTHER_COLOR = "#c8ccd2"


def layout(title: str, y_title: str, *, stacked: bool = False, height: int = 320) -> Spec:
    """The common layout: UTC date axis, legend below, compact margins."""
    return {
        "title": {"text": title, "font": {"size": 14}, "x": 0, "xanchor": "left"},
        "height": height,
        "margin": {"l": 64, "r": 16, "t": 36, "b": 40},
        "xaxis": {"type": "date"},
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.16},
        "barmode": "stack" if stacked else "group",
        "hovermode": "x unified",
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
    }


def figure(data: list[Spec], lay: Spec) -> Spec:
    return {"data": data, "layout": lay}


def stacked_area(title: str, y_title: str, steps: Sequence[int], series: Mapping[str, Mapping[int, float]],
                 *, other: dict[int, int] | None = None, scale: float = 1.0) -> Spec:
    """Stacked areas over ``steps`` (UTC seconds): one trace per series (``{name: {step: value}}``), then "other"."""
    x = [label(t * 1000) for t in steps]
    data = []
    for i, (name, values) in enumerate(series.items()):
        data.append({"type": "scatter", "mode": "lines", "stackgroup": "one", "name": name, "x": x,
                     "y": [values.get(t, 0) / scale for t in steps], "line": {"width": 0.5},
                     "fillcolor": PALETTE[i % len(PALETTE)], "marker": {"color": PALETTE[i % len(PALETTE)]}})
    if other is not None and any(other.values()):
        data.append({"type": "scatter", "mode": "lines", "stackgroup": "one", "name": "other", "x": x,
                     "y": [other.get(t, 0) / scale for t in steps], "line": {"width": 0.5},
                     "fillcolor": OTHER_COLOR, "marker": {"color": OTHER_COLOR}})
    return figure(data, layout(title, y_title, stacked=True))


def lines(title: str, y_title: str, steps: Sequence[int], series: Mapping[str, Mapping[int, float]],
          *, scale: float = 1.0) -> Spec:
    """One line per series over ``steps`` (UTC seconds)."""
    x = [label(t * 1000) for t in steps]
    data = [{"type": "scatter", "mode": "lines", "name": name, "x": x, "y": [values.get(t, 0) / scale for t in steps],
             "line": {"color": PALETTE[i % len(PALETTE)], "width": 1.5}}
            for i, (name, values) in enumerate(series.items())]
    return figure(data, layout(title, y_title))


def stacked_bars(title: str, y_title: str, steps: Sequence[int], series: Mapping[str, Mapping[int, int]],
                 colors: dict[str, str] | None = None) -> Spec:
    """Stacked bars over ``steps`` (UTC seconds), one trace per series."""
    x = [label(t * 1000) for t in steps]
    data = [{"type": "bar", "name": name, "x": x, "y": [values.get(t, 0) for t in steps],
             "marker": {"color": (colors or {}).get(name, PALETTE[i % len(PALETTE)])}}
            for i, (name, values) in enumerate(series.items())]
    return figure(data, layout(title, y_title, stacked=True))


def steps_between(t0_s: int, t1_s: int, step_s: int) -> list[int]:
    """Every bucket start of ``[t0_s, t1_s)`` (so empty buckets are drawn as zero, not bridged)."""
    first = t0_s // step_s * step_s
    return list(range(first, t1_s, step_s))


def band_shapes(spans: Iterable[tuple[int, int, str]], colors: dict[str, str]) -> list[Spec]:
    """Shaded backgrounds for time bands: ``(start_ms, end_ms, band)`` spans."""
    return [{"type": "rect", "xref": "x", "yref": "paper", "x0": label(a), "x1": label(b), "y0": 0, "y1": 1,
             "fillcolor": colors.get(name, "rgba(120,120,120,0.08)"), "line": {"width": 0}, "layer": "below"}
            for a, b, name in spans]


def hline(y: int | str, text: str, color: str) -> tuple[Spec, Spec]:
    """A dashed horizontal line across the plot with its label (shape, annotation)."""
    shape = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
             "line": {"color": color, "width": 1.5, "dash": "dash"}}
    note = {"xref": "paper", "x": 1, "xanchor": "right", "yref": "y", "y": y, "yanchor": "bottom", "text": text,
            "showarrow": False, "font": {"color": color, "size": 11}}
    return shape, note
