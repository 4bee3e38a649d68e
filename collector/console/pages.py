"""The exporters, traffic and reconciliation pages: each reads a bounded window with a few templated queries.

A handler takes the :class:`~collector.console.views.Context` and the request's parameters and returns what its
template shows; it runs in a worker thread (the queries block), never on the event loop.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from collector.console import charts, queries
from collector.console.queries import DIMENSIONS, METRICS
from collector.console.views import (
    Cell,
    ChartView,
    Context,
    PageError,
    PageValues,
    TableView,
    address_text,
    column,
    key_text,
    nbytes,
    number,
    text,
    time_cell,
)
from collector.console.window import Window
from collector.console.window import label as utc_label

RATE_UNIT = {"bytes": "bit/s", "packets": "packets/s", "flows": "flows/s"}


def _rate_scale(metric: str, step_s: int) -> float:
    """Divide a per-step sum by this to get the per-second rate (bytes become bits)."""
    return step_s / 8 if metric == "bytes" else float(step_s)


def traffic(ctx: Context, params: dict[str, str]) -> PageValues:
    """Top sources, destinations, ports, protocols, AS numbers, exporters or classes over the window."""
    w = ctx.window(params)
    by = params.get("by") or "src_addr"
    metric = params.get("metric") or "bytes"
    if by not in DIMENSIONS:
        raise PageError(f"by={by!r}: expected one of {', '.join(DIMENSIONS)}")
    if metric not in METRICS:
        raise PageError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    dim = DIMENSIONS[by]
    n = ctx.config.console.top_n
    step = w.step_s(ctx.config.mediation.interval_s if dim.table == "usage" else 60)
    src = ctx.store.source
    if dim.table == "usage":  # a few classes: everything in one read, the table summed from the series
        top, series, q_series = _classes(ctx, w, step, metric)
        total, q_top, q_total, guard = None, q_series, None, None
    else:
        guard = ctx.guard(dim.table, w)
        q_top = queries.traffic_top(src, by, metric, w, n)
        q_series = queries.traffic_series(src, by, metric, w, step, n)
        q_total = queries.traffic_total(src, by, metric, w, step)
        top, series, total = ctx.run(q_top), ctx.run(q_series), ctx.run(q_total)

    names = {k: key_text(by, k) for k in column(top, "key")}
    per_key: dict[str, dict[int, int]] = {names[k]: {} for k in column(top, "key")}
    top_sum: dict[int, int] = defaultdict(int)
    for t, k, v in zip(column(series, "t"), column(series, "key"), column(series, "value"), strict=True):
        name = names.get(k, key_text(by, k))
        per_key.setdefault(name, {})[t] = v
        top_sum[t] += v
    totals = dict(top_sum) if total is None else dict(zip(column(total, "t"), column(total, "value"), strict=True))
    other = {t: v - top_sum.get(t, 0) for t, v in totals.items()}
    steps = charts.steps_between(w.t0_ms // 1000, -(-w.t1_ms // 1000), step)
    scale = _rate_scale(metric, step)
    chart = ChartView(
        f"{dim.title} by {metric} ({RATE_UNIT[metric]}, per {step} s step; top {n} and other)",
        charts.stacked_area("", RATE_UNIT[metric], steps, per_key, other=other, scale=scale) if totals else None,
        [q for q in (q_series, q_total, guard) if q is not None], id="chart-traffic")

    rows = []
    all_total = sum(totals.values())
    for r in top.to_pylist():
        share = r[metric] / all_total * 100 if all_total else 0.0
        rows.append([text(names[r["key"]]), nbytes(r["bytes"]), number(r["packets"]), number(r["flows"]),
                     Cell(f"{share:.1f} %", f"{share:.3f}", True)])
    table = TableView(f"Top {n} {dim.title.lower()}", [dim.title[:-1] if dim.title.endswith("s") else dim.title,
                                                        "bytes", "packets", "flows", f"share of {metric}"],
                      rows[:n], [q_top], id="table-top")
    if totals:
        table.note = f"All {dim.table} in the window: {all_total:,} {metric}."
    return {"title": "Traffic", "window": w, "charts": [chart], "tables": [table], "by": by, "metric": metric,
            "dimensions": DIMENSIONS, "metrics": METRICS, "total": all_total,
            "empty": not totals}


def _classes(ctx: Context, w: Window, step: int, metric: str) -> tuple[pa.Table, pa.Table, queries.Query]:
    """Traffic classes in one read: (every class with its totals, ranked by ``metric``; the series of ``metric``)."""
    q = queries.class_series(ctx.store.source, w, step)
    series = ctx.run(q)
    sums: dict[str, dict[str, int]] = {}
    for r in series.to_pylist():
        acc = sums.setdefault(r["key"], {m: 0 for m in METRICS})
        for m in METRICS:
            acc[m] += r[m]
    ranked = sorted(sums.items(), key=lambda kv: (-kv[1][metric], kv[0]))
    top = pa.table({"key": [k for k, _ in ranked], **{m: [v[m] for _, v in ranked] for m in METRICS}})
    values = series.select(["t", "key", metric]).rename_columns(["t", "key", "value"])
    return top, values, q


def exporters(ctx: Context, params: dict[str, str]) -> PageValues:
    """Per exporter: datagrams and records per second, sequence losses, templates, errors, rejects, last seen."""
    w = ctx.window(params)
    step = w.step_s(60)
    src = ctx.store.source
    q_table, q_series = queries.exporter_table(src, w), queries.exporter_series(src, w, step)
    q_err_series, q_err_table = queries.error_series(src, w, step), queries.error_table(src, w)
    q_rej_series, q_rej_table = queries.reject_series(src, w, step), queries.reject_table(src, w)
    table, series = ctx.run(q_table), ctx.run(q_series)
    err_series, err_table = ctx.run(q_err_series), ctx.run(q_err_table)
    rej_series, rej_table = ctx.run(q_rej_series), ctx.run(q_rej_table)
    steps = charts.steps_between(w.t0_ms // 1000, -(-w.t1_ms // 1000), step)

    by_counter: dict[str, dict[str, dict[int, int]]] = {"datagrams": {}, "records": {}, "sequence_lost": {}}
    for r in series.to_pylist():
        name = address_text(r["exporter"])
        for counter, values in by_counter.items():
            values.setdefault(name, {})[r["t"]] = r[counter]
    chart_list = [
        ChartView(f"Datagrams per second (per {step} s step)",
                  charts.lines("", "datagrams/s", steps, by_counter["datagrams"], scale=step) if series.num_rows
                  else None, [q_series], id="chart-datagrams"),
        ChartView(f"Records per second (per {step} s step)",
                  charts.lines("", "records/s", steps, by_counter["records"], scale=step) if series.num_rows
                  else None, [q_series], id="chart-records"),
        ChartView(f"Sequence losses per {step} s",
                  charts.stacked_bars("", "lost", steps, by_counter["sequence_lost"])
                  if any(v for s in by_counter["sequence_lost"].values() for v in s.values()) else None,
                  [q_series], id="chart-sequence"),
        _reason_chart(f"Decode errors by reason per {step} s", err_series, steps, q_err_series, "chart-errors"),
        _reason_chart(f"Records rejected by mediation, by reason, per {step} s", rej_series, steps, q_rej_series,
                      "chart-rejects"),
    ]
    rejected: dict[str, int] = defaultdict(int)
    for r in rej_table.to_pylist():
        rejected[address_text(r["exporter"])] += r["records"]
    rows = [[text(address_text(r["exporter"])), time_cell(r["last_seen_s"]), number(r["datagrams"]),
             number(r["records"]), number(r["sequence_lost"]), number(r["templates"]), number(r["decode_errors"]),
             number(rejected.get(address_text(r["exporter"]), 0))] for r in table.to_pylist()]
    tables = [
        TableView("Exporters", ["exporter", "last seen (UTC)", "datagrams", "records", "sequence lost", "templates",
                                "decode errors", "rejected records"], rows, [q_table, q_rej_table],
                  id="table-exporters"),
        TableView("Decode errors by exporter and reason", ["exporter", "reason", "errors"],
                  [[text(address_text(r["exporter"]) if r["exporter"] != "::" else "other"), text(r["reason"]),
                    number(r["errors"])] for r in err_table.to_pylist()], [q_err_table], id="table-errors"),
        TableView("Rejected records by exporter and reason", ["exporter", "reason", "records", "bytes"],
                  [[text(address_text(r["exporter"])), text(r["reason"]), number(r["records"]), nbytes(r["bytes"])]
                   for r in rej_table.to_pylist()], [q_rej_table], id="table-rejects"),
    ]
    return {"title": "Exporters", "window": w, "charts": chart_list, "tables": tables,
            "empty": table.num_rows == 0 and rej_table.num_rows == 0}


def _reason_chart(title: str, data: pa.Table, steps: list[int], q: queries.Query, chart_id: str) -> ChartView:
    per: dict[str, dict[int, int]] = {}
    for r in data.to_pylist():
        per.setdefault(r["key"], {})[r["t"]] = r["value"]
    return ChartView(title, charts.stacked_bars("", "count", steps, per) if per else None, [q], id=chart_id)


def reconciliation(ctx: Context, params: dict[str, str]) -> PageValues:
    """Per receive interval: in = attributed + unattributed + rejected + duplicate, flagged when it does not hold."""
    w = ctx.window(params)
    only_flagged = params.get("flagged") == "1"
    q = queries.reconciliation(ctx.store.source, w)
    data = ctx.run(q)
    rows, classes = [], []
    flagged = 0
    parts: dict[str, dict[int, int]] = {"attributed": {}, "unattributed": {}, "rejected": {}, "duplicate": {}}
    bad_x: list[int] = []
    for r in data.to_pylist():
        accounted = r["attributed"] + r["unattributed"] + r["rejected"] + r["duplicate"]
        diff = r["bytes_in"] - accounted
        bad = diff != 0 or not r["parts_balanced"]
        flagged += bad
        for name, values in parts.items():
            values[r["t"]] = r[name]
        if bad:
            bad_x.append(r["t"])
        if only_flagged and not bad:
            continue
        rows.append([time_cell(r["t"]), nbytes(r["bytes_in"]), nbytes(r["attributed"]), nbytes(r["unattributed"]),
                     nbytes(r["rejected"]), nbytes(r["duplicate"]), Cell(f"{diff:,}", str(diff), True),
                     number(r["records_in"]), number(r["parts"]),
                     Cell("NOT BALANCED" if bad else "ok", "0" if bad else "1")])
        classes.append("flagged" if bad else "")
    steps = sorted(parts["attributed"])
    fig = None
    if steps:
        fig = charts.stacked_bars("", "bytes", steps, parts, colors={
            "attributed": "#3a9d5d", "unattributed": "#2f6fb3", "rejected": "#c4453c", "duplicate": "#e0a339"})
        bytes_in = {r["t"]: r["bytes_in"] for r in data.to_pylist()}
        fig["data"].append({"type": "scatter", "mode": "markers", "name": "bytes in",
                            "x": [utc_label(t * 1000) for t in steps], "y": [bytes_in[t] for t in steps],
                            "marker": {"color": "#111", "symbol": "line-ew-open", "size": 8, "line": {"width": 1.5}}})
        if bad_x:
            top = max(bytes_in.values())
            fig["data"].append({"type": "scatter", "mode": "markers", "name": "not balanced",
                                "x": [utc_label(t * 1000) for t in bad_x], "y": [top * 1.05] * len(bad_x),
                                "marker": {"color": "#c4453c", "symbol": "triangle-down", "size": 11}})
        half = ctx.config.mediation.interval_s * 500
        fig["layout"]["shapes"] = [{"type": "rect", "xref": "x", "yref": "paper", "x0": utc_label(t * 1000 - half),
                                    "x1": utc_label(t * 1000 + half), "y0": 0, "y1": 1, "layer": "below",
                                    "fillcolor": "rgba(196,69,60,0.18)", "line": {"width": 0}} for t in bad_x]
    chart = ChartView("Where the received bytes went, per interval (bars: the four parts; marks: bytes in)", fig, [q],
                      id="chart-reconciliation")
    table = TableView("Intervals", ["interval start (UTC)", "bytes in", "attributed", "unattributed", "rejected",
                                    "duplicate", "in − parts", "records in", "parts", "balance"],
                      rows, [q], row_classes=classes, id="table-reconciliation")
    table.note = (f"{data.num_rows} intervals, {flagged} flagged (in ≠ attributed + unattributed + rejected + "
                  "duplicate, or a part written unbalanced)" + ("; only the flagged ones are listed." if only_flagged
                                                                else ".") if data.num_rows else "")
    return {"title": "Reconciliation", "window": w, "charts": [chart], "tables": [table], "flagged": flagged,
            "only_flagged": only_flagged, "empty": data.num_rows == 0}
