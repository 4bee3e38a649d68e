"""The daemon's exporter history: once a minute, what each exporter sent since the last time, as table rows.

:class:`ExporterStatsRecorder` reads the counters the daemon already keeps (the status board's per-exporter totals
and the ``flowmed_decode_errors`` counter per exporter and reason), subtracts what it saw last time and returns
``exporter_stats`` / ``exporter_errors`` batches for the sink (:mod:`mediation.exporter_stats`). It is called from the
server's once-a-second tick and does work only once per ``interval_s``; it never raises (history is housekeeping:
a bug here must not stop the daemon).
"""

from __future__ import annotations

import pyarrow as pa
from prometheus_client.registry import Collector

from collector.logging import log
from collector.status import StatusBoard
from mediation.exporter_stats import errors_batch, stats_batch


class ExporterStatsRecorder:
    """Turns the daemon's cumulative per-exporter counters into per-period rows (see the module docstring)."""

    def __init__(self, worker: int | None, interval_s: float = 60.0, start_ms: int | None = None) -> None:
        self.worker = worker or 0
        self.interval_ms = int(interval_s * 1000)
        self._last_ms = start_ms
        self._seen: dict[str, tuple[int, ...]] = {}
        self._errors_seen: dict[tuple[str, str], int] = {}

    def tick(self, now_ms: int, board: StatusBoard, decode_errors: Collector | None) -> dict[str, pa.RecordBatch]:
        """The batches to write now (empty until ``interval_s`` has passed since the last ones)."""
        if self._last_ms is None:
            self._last_ms = now_ms
        if now_ms - self._last_ms < self.interval_ms:
            return {}
        try:
            return self._record(now_ms, self._last_ms, board, decode_errors)
        except Exception as exc:  # a bug: the history misses a minute, the daemon goes on
            log("error", "exporter statistics not recorded", error=repr(exc))
            return {}
        finally:
            self._last_ms = now_ms

    def _record(self, now_ms: int, last_ms: int, board: StatusBoard,
                decode_errors: Collector | None) -> dict[str, pa.RecordBatch]:
        period = int(min(now_ms - last_ms, 2**32 - 1))
        rows = []
        for address, entry in list(board.exporters.items()):
            totals = (entry.datagrams, entry.records, entry.errors, entry.sequence_lost)
            before = self._seen.get(address, (0, 0, 0, 0))
            # A total below what was seen: the board forgot the exporter and counts again from zero.
            delta = [t - b if t >= b else t for t, b in zip(totals, before, strict=True)]
            self._seen[address] = totals
            if any(delta):
                rows.append({"exporter": address, "datagrams": delta[0], "records": delta[1],
                             "decode_errors": delta[2], "sequence_lost": delta[3],
                             "templates": int(entry.templates), "last_seen": int(entry.last_seen_ms)})
        for address in set(self._seen) - set(board.exporters):  # forgotten: keep the memory bounded like the board
            del self._seen[address]
        errors = []
        for (exporter, reason), total in self._error_totals(decode_errors).items():
            seen = self._errors_seen.get((exporter, reason), 0)
            new = total - seen if total >= seen else total
            self._errors_seen[(exporter, reason)] = total
            if new > 0:
                errors.append((exporter, reason, new))
        out = {}
        if rows:
            out["exporter_stats"] = stats_batch(now_ms, period, self.worker, rows)
        if errors:
            out["exporter_errors"] = errors_batch(now_ms, period, self.worker, errors)
        return out

    @staticmethod
    def _error_totals(decode_errors: Collector | None) -> dict[tuple[str, str], int]:
        """``flowmed_decode_errors`` of this process per (exporter label, reason), from the counter's samples."""
        totals: dict[tuple[str, str], int] = {}
        if decode_errors is None:
            return totals
        for family in decode_errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels.get("exporter", ""), sample.labels.get("reason", ""))
                    totals[key] = totals.get(key, 0) + int(sample.value)
        return totals
