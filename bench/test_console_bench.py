"""Console page times over a 10-million-row store: every query of a page is bounded by its window and reads only the
window's partitions, so a page costs what its window holds, not what the store holds.

    python -m pytest bench/test_console_bench.py --benchmark-enable --benchmark-columns=mean,stddev,rounds

The store: 10 million flows over 7 days (168 hourly partitions of about 60,000 rows, ``bench.flowgen.flows_batch``),
exporter statistics per minute for 4 exporters, reconciliation per 5 minutes, and usage of 500 subscribers per
5-minute interval (1 million rows). Each benchmark is one page handler (all of its queries, as the browser waits for
them) for a window of 1, 6 or 24 hours; a week (all 10 million rows, within console.max_window_h) holds more than
console.max_rows and is refused after counting its rows. With ``--benchmark-disable`` (the suite default) the store
is small (and max_rows too) and each page runs once, as a plain test of the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.flowgen import flows_batch
from collector.config import load
from collector.console import pages, subscriber
from collector.console.data import ConsoleStore
from collector.console.views import Context
from collector.tables import load_tables
from decoders.schema import TABLES, ipv4_mapped
from storage.layout import HOUR_MS, file_name, partition_of

T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z
HOURS = 168


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def _write(root: Path, table: str, hour: int, cols: dict[str, np.ndarray], name: int) -> None:
    """One file of ``table`` in the store's layout (written directly: the fixture must be quick to build)."""
    pdir = root / table / partition_of(T0 // HOUR_MS + hour)
    pdir.mkdir(parents=True, exist_ok=True)
    batch = TABLES[table].to_arrow(cols)
    pq.write_table(pa.Table.from_batches([batch]), pdir / file_name(name), compression="zstd")


@pytest.fixture(scope="module")
def store(request, tmp_path_factory) -> Path:
    load_tables()
    big = _enabled(request)
    root = tmp_path_factory.mktemp("console-store")
    hours = HOURS if big else 30
    per_hour = 10_000_000 // HOURS if big else 100
    subscribers = 500 if big else 20
    names = np.array([f"sub{i:05d}" for i in range(subscribers)], dtype=object)
    for h in range(hours):
        t = T0 + h * HOUR_MS
        flows = flows_batch(per_hour, seed=h, t0_ms=t, span_ms=HOUR_MS, sources=50_000)
        pdir = root / "flows" / partition_of(T0 // HOUR_MS + h)
        pdir.mkdir(parents=True)
        pq.write_table(pa.Table.from_batches([flows]), pdir / file_name(h + 1), compression="zstd")
        minutes = np.repeat(t + np.arange(1, 61) * 60_000, 4)
        _write(root, "exporter_stats", h, {
            "time": minutes, "period_ms": np.full(240, 60_000, np.uint32),
            "exporter": ipv4_mapped(np.tile(0xC0000201 + np.arange(4, dtype=np.uint32), 60)),
            "datagrams": np.full(240, 2_000, np.uint64), "records": np.full(240, per_hour // 240, np.uint64),
            "templates": np.full(240, 3, np.uint32), "last_seen": minutes - 10}, h + 1)
        starts = t + np.arange(12) * 300_000
        _write(root, "reconciliation", h, {
            "interval_start": starts, "interval_end": starts + 300_000,
            "exporter": ipv4_mapped(np.full(12, 0xC0000201, np.uint32)),
            "source": np.array(["flow"] * 12, dtype=object), "bytes_in": np.full(12, 1000, np.uint64),
            "bytes_attributed": np.full(12, 1000, np.uint64), "balanced": np.ones(12, np.uint8),
            "created": starts + 400_000}, h + 1)
        n = 12 * subscribers
        _write(root, "usage", h, {
            "interval_start": np.repeat(starts, subscribers), "interval_end": np.repeat(starts + 300_000, subscribers),
            "subscriber_id": np.tile(names, 12), "direction": np.array(["down"] * n, dtype=object),
            "traffic_class": np.array(["default"] * n, dtype=object), "bytes": np.full(n, 10**6, np.uint64),
            "source": np.array(["flow"] * n, dtype=object), "row_id": np.arange(n, dtype=np.uint64) + h * n + 1,
            "exporter": ipv4_mapped(np.full(n, 0xC0000201, np.uint32))}, h + 1)
    return root


@pytest.fixture(scope="module")
def ctx(request, store):
    config = load(None, [f"store.path={store}", *([] if _enabled(request) else ["console.max_rows=2500"])])
    console_store = ConsoleStore.open(config)
    end = T0 + (HOURS if _enabled(request) else 30) * HOUR_MS  # "now": the end of the data
    yield Context(console_store, config, clock=lambda: end / 1000)
    console_store.close()


def _window(hours: int) -> dict[str, str]:
    """The last ``hours`` before "now" (the end of the data)."""
    return {"range": {1: "1h", 6: "6h", 24: "24h", 168: "7d"}[hours]}


@pytest.mark.parametrize("hours", [1, 6, 24])
@pytest.mark.parametrize("by", ["src_addr", "dst_port", "traffic_class"])
def test_traffic_page(benchmark, request, ctx, by: str, hours: int) -> None:
    """The traffic page (row guard, top table, top series, total series) for one grouping."""
    out = benchmark.pedantic(lambda: pages.traffic(ctx, {**_window(hours), "by": by}), rounds=5, iterations=1,
                             warmup_rounds=1) if _enabled(request) else pages.traffic(ctx, {**_window(hours), "by": by})
    assert out["tables"][0].rows


def test_traffic_page_refuses_a_week_of_10m_rows(benchmark, request, ctx) -> None:
    """The whole store in the window: the row guard counts it (one column) and the page says to narrow it."""
    from collector.console.views import PageError

    def refused() -> str:
        with pytest.raises(PageError) as info:
            pages.traffic(ctx, {"range": "7d", "by": "src_addr"})
        return str(info.value)

    message = benchmark.pedantic(refused, rounds=5, iterations=1, warmup_rounds=1) if _enabled(request) \
        else refused()
    assert "console.max_rows" in message


@pytest.mark.parametrize("hours", [6, 24])
def test_exporters_page(benchmark, request, ctx, hours: int) -> None:
    """The exporters page: six queries over exporter_stats, exporter_errors and rejects."""
    out = benchmark.pedantic(lambda: pages.exporters(ctx, _window(hours)), rounds=5, iterations=1,
                             warmup_rounds=1) if _enabled(request) else pages.exporters(ctx, _window(hours))
    assert len(out["tables"][0].rows) == 4


def test_reconciliation_page(benchmark, request, ctx) -> None:
    out = benchmark.pedantic(lambda: pages.reconciliation(ctx, _window(24)), rounds=5, iterations=1,
                             warmup_rounds=1) if _enabled(request) else pages.reconciliation(ctx, _window(6))
    assert out["flagged"] == 0 and out["tables"][0].rows


def test_subscriber_page(benchmark, request, ctx) -> None:
    """A subscriber's cycle (usage of the whole month's partitions, keyed by the subscriber; no plans file)."""
    params = {"id": "sub00007", "cycle": "2026-11"}
    out = benchmark.pedantic(lambda: subscriber.subscriber_page(ctx, params), rounds=5, iterations=1,
                             warmup_rounds=1) if _enabled(request) else subscriber.subscriber_page(ctx, params)
    assert out["usage_bytes"] > 0
