"""Fixtures for the IPDR tests: an in-memory durable sink."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest


class MemorySink:
    """Sink stand-in: ``add`` buffers, ``flush`` makes the buffer 'durable' (kept across collector restarts)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[pa.RecordBatch]] = {}
        self.durable: dict[str, list[pa.RecordBatch]] = {}
        self.flushes = 0
        self.fail_next_flush = False
        self.refuse_next_usage = False
        self._lock = threading.Lock()

    def add(self, table: str, batch: pa.RecordBatch) -> bool:
        if table == "usage" and self.refuse_next_usage and batch.num_rows:
            self.refuse_next_usage = False  # what the real Sink does past max_pending_rows
            return False
        if batch.num_rows:
            with self._lock:
                self.pending.setdefault(table, []).append(batch)
        return True

    def flush(self) -> None:
        with self._lock:
            if self.fail_next_flush:
                self.fail_next_flush = False
                raise OSError("disk full (test)")
            for table, batches in self.pending.items():
                self.durable.setdefault(table, []).extend(batches)
            self.pending.clear()
            self.flushes += 1

    def lose_pending(self) -> None:
        """What a crash does to rows not yet flushed."""
        with self._lock:
            self.pending.clear()

    def rows(self, table: str) -> list[dict]:
        out: list[dict] = []
        for b in self.durable.get(table, []):
            out.extend(b.to_pylist())
        return out

    def usage_by_subscriber(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for r in self.rows("usage"):
            key = (r["subscriber_id"], r["direction"])
            out[key] = out.get(key, 0) + r["bytes"]
        return out


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()
