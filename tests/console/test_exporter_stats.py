"""The exporter history: per-minute rows of what each exporter sent, from the counters the daemon keeps."""

from __future__ import annotations

import pyarrow as pa
from prometheus_client import CollectorRegistry

from collector import metrics as metrics_mod
from collector.config import load
from collector.exporter_stats import ExporterStatsRecorder
from collector.server import Server
from collector.status import StatusBoard
from mediation.exporter_stats import EXPORTER_ERRORS, EXPORTER_STATS

T = 1_793_577_600_000
MIN = 60_000


def _rows(batch: pa.RecordBatch) -> list[dict]:
    return pa.Table.from_batches([batch]).to_pylist()


def test_rows_are_the_counts_of_each_minute_per_exporter():
    board = StatusBoard()
    metrics = metrics_mod.Metrics(CollectorRegistry())
    rec = ExporterStatsRecorder(None, start_ms=T)
    a = board.exporter("192.0.2.1", T + 1000)
    a.datagrams, a.records, a.sequence_lost, a.templates = 10, 200, 3, 2
    metrics.decode_errors.labels("192.0.2.1", "truncated").inc(4)
    a.errors = 4
    assert rec.tick(T + 59_000, board, metrics.decode_errors) == {}  # not a minute yet
    out = rec.tick(T + MIN, board, metrics.decode_errors)
    assert out["exporter_stats"].schema == EXPORTER_STATS.arrow_schema
    [row] = _rows(out["exporter_stats"])
    assert (row["exporter"], row["period_ms"], row["worker"]) == (b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1]),
                                                                  MIN, 0)
    assert (row["datagrams"], row["records"], row["sequence_lost"], row["decode_errors"], row["templates"]) == \
        (10, 200, 3, 4, 2)
    assert out["exporter_errors"].schema == EXPORTER_ERRORS.arrow_schema
    assert [(r["reason"], r["errors"]) for r in _rows(out["exporter_errors"])] == [("truncated", 4)]

    # the next minute: only what changed since (b is new; a sent 5 more datagrams, no new errors)
    a.datagrams, a.records = 15, 260
    b = board.exporter("2001:db8::9", T + MIN + 5000)
    b.datagrams, b.records = 1, 30
    out = rec.tick(T + 2 * MIN, board, metrics.decode_errors)
    rows = {bytes(r["exporter"]): r for r in _rows(out["exporter_stats"])}
    assert [(r["datagrams"], r["records"], r["decode_errors"]) for r in rows.values()] == [(5, 60, 0), (1, 30, 0)]
    assert "exporter_errors" not in out

    # an idle minute writes nothing; an exporter the board forgot and saw again counts from zero
    assert rec.tick(T + 3 * MIN, board, metrics.decode_errors) == {}
    del board.exporters["192.0.2.1"]
    a2 = board.exporter("192.0.2.1", T + 3 * MIN + 1)
    a2.datagrams = 2
    [row] = _rows(rec.tick(T + 4 * MIN, board, metrics.decode_errors)["exporter_stats"])
    assert row["datagrams"] == 2


def test_other_exporters_count_under_the_unspecified_address():
    metrics = metrics_mod.Metrics(CollectorRegistry(), max_exporter_labels=1)
    metrics.decode_errors.labels(metrics.exporter_label("192.0.2.1"), "bad_version").inc()
    metrics.decode_errors.labels(metrics.exporter_label("192.0.2.2"), "bad_version").inc(2)
    rec = ExporterStatsRecorder(3, start_ms=T)
    out = rec.tick(T + MIN, StatusBoard(), metrics.decode_errors)
    rows = sorted((bytes(r["exporter"]), r["errors"], r["worker"]) for r in _rows(out["exporter_errors"]))
    assert rows == [(bytes(16), 2, 3), (b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1]), 1, 3)]


class _Sink:
    outputs: list = []
    stats: dict = {}
    pending_rows = 0
    dropped_rows: dict = {}
    journal_errors = journal_set_aside = 0

    def __init__(self) -> None:
        self.added: list[tuple[str, int]] = []

    def add(self, name: str, batch: pa.RecordBatch) -> bool:
        self.added.append((name, batch.num_rows))
        return True

    def maybe_flush(self, now=None) -> None:
        pass


class _Decoder:
    exporters: dict = {}

    def expire(self, now):
        return {}

    def templates_known(self):
        return {"192.0.2.1": 1}

    def pending_bytes(self):
        return 0

    def template_memory(self):
        return 0


def test_the_daemons_tick_hands_the_rows_to_the_sink(tmp_path):
    """Server.on_tick passes the recorder's batches to the sink (the daemon's once-a-second tick)."""
    config = load(None, [f"store.path={tmp_path}", "mediation.enabled=false"])
    sink = _Sink()
    server = Server(config, registry=CollectorRegistry(), sink=sink, decoder=_Decoder(), mediator=None)
    from collector.pipeline import Pipeline

    server.pipeline = Pipeline(config, server.metrics, sink, None, _Decoder())
    server.pipeline.board.exporter("192.0.2.1", T).datagrams = 7
    server.exporter_stats = ExporterStatsRecorder(None, interval_s=0.0)
    server.on_tick()
    assert ("exporter_stats", 1) in sink.added
