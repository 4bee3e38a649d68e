"""Every SQL statement the console runs, templated from validated parameters (never from text a user typed).

Each function takes ``source`` (:meth:`collector.console.data.ConsoleStore.source`: a table's rows in a time range,
reading only that range's partitions) and returns a :class:`Query`, whose text the page shows beside its chart. The
SQL keeps to what ClickHouse 18.16 also runs (times as ``toUInt32`` seconds, steps with ``intDiv``), so the same
statements serve the embedded store and a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from collector.console.window import Window

Source = Callable[[str, int, int], str]


@dataclass(frozen=True)
class Query:
    """One statement and what it answers (shown with the SQL, copyable)."""

    title: str
    sql: str


@dataclass(frozen=True)
class Dimension:
    """A traffic page grouping: a column of ``table``."""

    title: str
    table: str
    column: str
    time_column: str


DIMENSIONS = {
    "src_addr": Dimension("Sources", "flows", "src_addr", "time_received"),
    "dst_addr": Dimension("Destinations", "flows", "dst_addr", "time_received"),
    "src_port": Dimension("Source ports", "flows", "src_port", "time_received"),
    "dst_port": Dimension("Destination ports", "flows", "dst_port", "time_received"),
    "protocol": Dimension("Protocols", "flows", "protocol", "time_received"),
    "src_as": Dimension("Source AS", "flows", "src_as", "time_received"),
    "dst_as": Dimension("Destination AS", "flows", "dst_as", "time_received"),
    "exporter": Dimension("Exporters", "flows", "exporter", "time_received"),
    "traffic_class": Dimension("Traffic classes", "usage", "traffic_class", "interval_start"),
}
"""The groupings of the traffic page (``by=``)."""

METRICS = ("bytes", "packets", "flows")
"""What the traffic page sums (``metric=``)."""


def literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bucket(column: str, step_s: int) -> str:
    """The start (UTC seconds) of the ``step_s`` bucket holding ``column``."""
    return f"intDiv(toUInt32(`{column}`), {int(step_s)}) * {int(step_s)}"


def _metric(dim: Dimension, metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if dim.table == "usage":  # usage rows carry their flow count
        return f"sum(`{metric}`)"
    return "count()" if metric == "flows" else f"sum(`{metric}`)"


def _rows(source: Source, dim: Dimension, w: Window) -> str:
    src = source(dim.table, w.t0_ms, w.t1_ms)
    if dim.table == "usage":
        # Flow usage only; one copy of a re-sent row (exact on a server without FINAL, free on the store).
        return f"(SELECT * FROM {src} WHERE source = 'flow' LIMIT 1 BY row_id)"
    return src


def rows_in_window(source: Source, table: str, w: Window) -> Query:
    """How many rows of ``table`` the window holds (read first: a page refuses windows over console.max_rows)."""
    return Query(f"Rows of {table} in the window", f"SELECT count() AS n FROM {source(table, w.t0_ms, w.t1_ms)}")


def traffic_top(source: Source, by: str, metric: str, w: Window, n: int) -> Query:
    """The top ``n`` values of a grouping over the window, with bytes, packets and flows."""
    dim = DIMENSIONS[by]
    flows = "sum(`flows`)" if dim.table == "usage" else "count()"
    return Query(
        f"Top {n} {dim.title.lower()} by {metric}",
        f"SELECT `{dim.column}` AS key, sum(`bytes`) AS bytes, sum(`packets`) AS packets, {flows} AS flows\n"
        f"FROM {_rows(source, dim, w)}\n"
        f"GROUP BY key\nORDER BY {metric} DESC, key\nLIMIT {int(n)}")


def traffic_series(source: Source, by: str, metric: str, w: Window, step_s: int, n: int) -> Query:
    """Per step, the metric of each of the top ``n`` values (the rest is the total minus these)."""
    dim = DIMENSIONS[by]
    rows = _rows(source, dim, w)
    value = _metric(dim, metric)
    return Query(
        f"{dim.title} over time ({metric} per {step_s} s)",
        f"SELECT {bucket(dim.time_column, step_s)} AS t, `{dim.column}` AS key, {value} AS value\n"
        f"FROM {rows}\n"
        f"WHERE `{dim.column}` IN (SELECT `{dim.column}` FROM {rows} GROUP BY `{dim.column}` "
        f"ORDER BY {value} DESC, `{dim.column}` LIMIT {int(n)})\n"
        "GROUP BY t, key\nORDER BY t, key")


def class_series(source: Source, w: Window, step_s: int) -> Query:
    """Per step and traffic class: bytes, packets and flows of flow usage (classes are few: no top list, one read)."""
    dim = DIMENSIONS["traffic_class"]
    return Query(
        f"Traffic classes over time (per {step_s} s)",
        f"SELECT {bucket(dim.time_column, step_s)} AS t, traffic_class AS key, sum(bytes) AS bytes, "
        "sum(packets) AS packets, sum(flows) AS flows\n"
        f"FROM {_rows(source, dim, w)}\nGROUP BY t, key\nORDER BY t, key")


def traffic_total(source: Source, by: str, metric: str, w: Window, step_s: int) -> Query:
    """Per step, the metric over everything (the top values plus "other")."""
    dim = DIMENSIONS[by]
    return Query(
        f"All {dim.table} over time ({metric} per {step_s} s)",
        f"SELECT {bucket(dim.time_column, step_s)} AS t, {_metric(dim, metric)} AS value\n"
        f"FROM {_rows(source, dim, w)}\nGROUP BY t\nORDER BY t")


# --- exporters ------------------------------------------------------------------------------------------------------


def exporter_table(source: Source, w: Window) -> Query:
    """Per exporter over the window: datagrams, records, sequence losses, decode errors, templates, last seen."""
    return Query(
        "Exporters in the window",
        "SELECT exporter, sum(datagrams) AS datagrams, sum(records) AS records, sum(sequence_lost) AS sequence_lost, "
        "sum(decode_errors) AS decode_errors, argMax(templates, time) AS templates, "
        "toUInt32(max(last_seen)) AS last_seen_s\n"
        f"FROM {source('exporter_stats', w.t0_ms, w.t1_ms)}\nGROUP BY exporter\nORDER BY exporter")


def exporter_series(source: Source, w: Window, step_s: int) -> Query:
    """Per step and exporter: datagrams, records and sequence losses."""
    return Query(
        f"Exporter counters per {step_s} s",
        f"SELECT {bucket('time', step_s)} AS t, exporter, sum(datagrams) AS datagrams, sum(records) AS records, "
        "sum(sequence_lost) AS sequence_lost\n"
        f"FROM {source('exporter_stats', w.t0_ms, w.t1_ms)}\nGROUP BY t, exporter\nORDER BY t, exporter")


def error_series(source: Source, w: Window, step_s: int) -> Query:
    """Per step and reason: decode errors."""
    return Query(
        f"Decode errors by reason per {step_s} s",
        f"SELECT {bucket('time', step_s)} AS t, reason AS key, sum(errors) AS value\n"
        f"FROM {source('exporter_errors', w.t0_ms, w.t1_ms)}\nGROUP BY t, key\nORDER BY t, key")


def error_table(source: Source, w: Window) -> Query:
    """Decode errors per exporter and reason over the window."""
    return Query(
        "Decode errors by exporter and reason",
        "SELECT exporter, reason, sum(errors) AS errors\n"
        f"FROM {source('exporter_errors', w.t0_ms, w.t1_ms)}\nGROUP BY exporter, reason\nORDER BY exporter, reason")


def reject_series(source: Source, w: Window, step_s: int) -> Query:
    """Per step and reason: records rejected by mediation."""
    return Query(
        f"Rejected records by reason per {step_s} s",
        f"SELECT {bucket('time_received', step_s)} AS t, reason AS key, count() AS value\n"
        f"FROM {source('rejects', w.t0_ms, w.t1_ms)}\nGROUP BY t, key\nORDER BY t, key")


def reject_table(source: Source, w: Window) -> Query:
    """Rejected records and their bytes per exporter and reason over the window."""
    return Query(
        "Rejected records by exporter and reason",
        "SELECT exporter, reason, count() AS records, sum(bytes) AS bytes\n"
        f"FROM {source('rejects', w.t0_ms, w.t1_ms)}\nGROUP BY exporter, reason\nORDER BY exporter, reason")


# --- a subscriber ---------------------------------------------------------------------------------------------------


def subscriber_usage(source: Source, subscriber: str, usage_source: str, t0_ms: int, t1_ms: int) -> Query:
    """A subscriber's usage per interval, direction and class over a cycle (parts summed, re-sent rows once)."""
    return Query(
        "Usage per interval",
        "SELECT toUInt32(interval_start) AS t, direction, traffic_class, sum(bytes) AS bytes, "
        "sum(packets) AS packets\n"
        f"FROM (SELECT * FROM {source('usage', t0_ms, t1_ms)}\n"
        f"  WHERE subscriber_id = {literal(subscriber)} AND source = {literal(usage_source)} LIMIT 1 BY row_id)\n"
        "GROUP BY t, direction, traffic_class\nORDER BY t, direction, traffic_class")


RATED_COLUMNS = ("record_id", "version", "plan_id", "plan_version", "rate_card", "direction", "traffic_class", "band",
                 "bytes", "billable_quantity", "quantity_unit", "allowance_quantity", "cycle_to_date",
                 "amount_micros", "currency", "cycle")


def rated_records(source: Source, subscriber: str, cycle: str, t0_ms: int, t1_ms: int) -> Query:
    """The current version of each rated record of the subscriber's cycle (void ones left out), the documented
    current-state query (docs/rating.md) over the cycle's partitions."""
    cols = ", ".join(RATED_COLUMNS)
    return Query(
        "Rated records (current versions)",
        f"SELECT toUInt32(interval_start) AS start_s, toUInt32(interval_end) AS end_s, {cols}\n"
        f"FROM (SELECT * FROM {source('rated_usage', t0_ms, t1_ms)}\n"
        f"  WHERE subscriber_id = {literal(subscriber)}\n"
        "  ORDER BY record_id, version DESC LIMIT 1 BY record_id)\n"
        f"WHERE void = 0 AND cycle = {literal(cycle)}\n"
        "ORDER BY start_s, direction, traffic_class, band, record_id")


# --- reconciliation -------------------------------------------------------------------------------------------------


def reconciliation(source: Source, w: Window) -> Query:
    """Per receive interval: bytes in and where they went, summed over exporters and parts."""
    return Query(
        "Reconciliation per interval",
        "SELECT toUInt32(interval_start) AS t, sum(bytes_in) AS bytes_in, sum(bytes_attributed) AS attributed, "
        "sum(bytes_unattributed) AS unattributed, sum(bytes_rejected) AS rejected, "
        "sum(bytes_duplicate) AS duplicate, sum(records_in) AS records_in, min(balanced) AS parts_balanced, "
        "count() AS parts\n"
        f"FROM {source('reconciliation', w.t0_ms, w.t1_ms)}\nGROUP BY t\nORDER BY t")


def top_subscribers(source: Source, usage_source: str, w: Window, n: int = 50) -> Query:
    """The subscribers with the most usage in the window (the subscriber page's starting list)."""
    return Query(
        f"Top {n} subscribers by usage",
        "SELECT subscriber_id, sum(bytes) AS bytes\n"
        f"FROM (SELECT * FROM {source('usage', w.t0_ms, w.t1_ms)}\n"
        f"  WHERE subscriber_id != '' AND source = {literal(usage_source)} LIMIT 1 BY row_id)\n"
        f"GROUP BY subscriber_id\nORDER BY bytes DESC, subscriber_id\nLIMIT {int(n)}")
