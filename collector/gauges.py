"""What the daemon shows of itself besides the Pipeline's counters: the sink's and outputs' gauges and drop counters
(:class:`SinkGauges`), the listeners' datagram counters, the outputs' part of the status snapshot and the one-line
status systemd shows."""

from __future__ import annotations

from typing import Any

from collector import metrics as metrics_mod
from collector.components import SinkPort
from collector.listener import UdpListener
from collector.logging import log
from storage.clickhouse.output import ClickHouseOutput
from storage.outputs import OutputStats

STATUS_LINE_INTERVAL_S = 10.0


def status_line(snapshot: dict[str, Any]) -> str:
    """The short summary systemd shows (``systemctl status``) from a status snapshot."""
    drops = sum(li.get("kernel_drops", 0) for li in snapshot.get("listeners", []))
    return (f"{len(snapshot.get('exporters', []))} exporters, {snapshot.get('datagrams', 0)} datagrams, "
            f"{snapshot.get('flows', 0)} flows, {drops} kernel drops")


def spool_summary(sink: SinkPort | None) -> dict[str, Any]:
    """Bytes, batches, rows, rows dropped and age of the oldest batch over the spools of the sink's outputs (the
    ClickHouse outputs: the only ones with a spool)."""
    out: dict[str, Any] = {"bytes": 0, "batches": 0, "rows": 0, "dropped_rows": 0, "oldest_age_s": 0.0}
    for o in sink.outputs if sink is not None else ():
        if not isinstance(o, ClickHouseOutput):
            continue
        st = o.status()
        out["bytes"] += int(st.get("spool_bytes", 0))
        out["batches"] += int(st.get("spool_batches", 0))
        out["rows"] += int(st.get("spool_rows", 0))
        out["dropped_rows"] += int(st.get("dropped_rows", 0))
        out["oldest_age_s"] = max(out["oldest_age_s"], float(st.get("spool_oldest_age_s", 0.0)))
    return out


def rows_flushed(sink: SinkPort | None) -> int:
    """Rows this process made durable in the store (written, or replayed from the handoff journal): what
    ``/status`` reports as ``rows_flushed``. Without a store, the rows handed durably to the first output."""
    stats = sink.stats if sink is not None else {}
    if not stats:
        return 0
    st = stats.get("store") or next(iter(stats.values()))
    return int(st.rows + st.replayed_rows)


def count_kernel_drops(lst: UdpListener, m: metrics_mod.Metrics) -> None:
    """Add a listener's new kernel drops (from /proc/net/udp) to the counter, with a warning."""
    drops = lst.new_kernel_drops()
    if drops and m.socket_drops is not None:
        m.socket_drops.labels(lst.endpoint).inc(drops)
        log("warning", "kernel dropped datagrams: receive buffer full", listener=lst.endpoint, drops=drops)


def count_listeners(listeners: list[UdpListener], m: metrics_mod.Metrics) -> None:
    """Once a tick: the listeners' new datagrams and bytes, and their kernel drops unless the supervisor counts
    them."""
    for lst in listeners:
        if m.socket_drops is not None:  # else the supervisor counts them
            count_kernel_drops(lst, m)
        new = lst.datagrams - lst.reported_datagrams
        if new:
            m.listener_datagrams.labels(lst.address).inc(new)
            m.listener_bytes.labels(lst.address).inc(lst.bytes - lst.reported_bytes)
            lst.reported_datagrams, lst.reported_bytes = lst.datagrams, lst.bytes


def output_entries(sink: SinkPort | None) -> list[dict[str, Any]]:
    """The ``outputs`` of the status snapshot: per output what it wrote, and for ClickHouse the server's side."""
    outputs: list[dict[str, Any]] = []
    if sink is None:
        return outputs
    for o in sink.outputs:
        name = o.name
        stats = sink.stats.get(name, OutputStats())
        entry: dict[str, Any] = {
            "name": name, "state": "ok", "rows": stats.rows, "batches": stats.batches, "errors": stats.errors,
            "dropped_rows": stats.dropped_rows, "last_error": stats.last_error,
            "replayed_rows": stats.replayed_rows}
        if isinstance(o, ClickHouseOutput):  # the server side: what it acknowledged, the connection, the backlog
            st = o.status()
            entry["state"] = "connected" if st["connected"] else "spooling"
            entry["last_error"] = st["last_error"] or entry["last_error"]
            entry.update({
                "connected": st["connected"], "rows_inserted": st.get("rows_inserted", 0),
                "rows_inserted_by_table": st["rows_inserted_by_table"],
                "insert_errors": st.get("insert_errors", 0), "connect_errors": st.get("connect_errors", 0),
                "errors_by_code": st["errors_by_code"], "last_insert_ms": st["last_insert_ms"],
                "last_insert_seconds": st["last_insert_seconds"], "retry_in_s": st["retry_in_s"],
                "disconnected_for_s": st["disconnected_for_s"], "backlog_rows": st["spool_rows"],
                "backlog_batches": st["spool_batches"], "backlog_age_s": st["spool_oldest_age_s"],
                "already_stored": st.get("already_stored", 0)})
        outputs.append(entry)
    return outputs


class SinkGauges:
    """The sink's cumulative drop counts into Prometheus counters (the deltas since the last tick) and its gauges."""

    def __init__(self, metrics: metrics_mod.Metrics) -> None:
        self.metrics = metrics
        self._dropped_seen: dict[tuple[str, str], int] = {}

    def update(self, sink: SinkPort) -> None:
        """Buffered rows, rows dropped (with an error line for the sink's), spool size and age, ClickHouse state."""
        m = self.metrics
        m.sink_rows_buffered.set(sink.pending_rows)
        for table, rows in dict(sink.dropped_rows).items():
            key = ("sink", table)
            if rows > self._dropped_seen.get(key, 0):
                m.sink_dropped_rows.labels(table).inc(rows - self._dropped_seen.get(key, 0))
                log("error", "rows dropped: the outputs cannot keep up", table=table,
                    rows=rows - self._dropped_seen.get(key, 0))
                self._dropped_seen[key] = rows
        for output, stats in dict(sink.stats).items():
            key = ("output", output)
            rows = stats.dropped_rows
            if rows > self._dropped_seen.get(key, 0):
                m.output_dropped_rows.labels(output).inc(rows - self._dropped_seen.get(key, 0))
                self._dropped_seen[key] = rows
        for name, counter, value in (("journal_errors", m.handoff_unjournaled, sink.journal_errors),
                                     ("journal_set_aside", m.handoff_set_aside, sink.journal_set_aside)):
            if value > self._dropped_seen.get((name, ""), 0):
                counter.inc(value - self._dropped_seen.get((name, ""), 0))
                self._dropped_seen[(name, "")] = value
        spool = spool_summary(sink)
        m.spool_bytes.set(spool.get("bytes", 0))
        m.spool_oldest_age.set(spool.get("oldest_age_s", 0.0))
        for o in sink.outputs:
            if isinstance(o, ClickHouseOutput):
                st = o.status()
                m.clickhouse_connected.set(1 if st["connected"] else 0)
                m.clickhouse_backlog_rows.set(st["spool_rows"])
        dropped = spool.get("dropped_rows", 0)
        if dropped > self._dropped_seen.get(("spool", ""), 0):
            m.spool_dropped_rows.inc(dropped - self._dropped_seen.get(("spool", ""), 0))
            self._dropped_seen[("spool", "")] = dropped
