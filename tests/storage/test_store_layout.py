"""The store's Parquet layout: BYTE_STREAM_SPLIT columns, statistics where queries filter, configurable codec.

The layout is an optimisation of the writer's CPU: whatever it is, the rows read back (by pyarrow and by chDB, with
and without row-group pruning, before and after compaction, mixed with files of the older dictionary layout) must
be exactly the rows written.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.flowgen import T0_MS, addr, flows_batch
from collector.configtree import ConfigError
from decoders.schema import FLOWS, TABLES, Column, table
from storage.layout import HOUR_MS, parquet_options
from storage.query import QueryEngine
from storage.store import ParquetStore

EVENTS = TABLES.get("test_store_events") or table(
    "test_store_events", "Test-only table.",
    (Column("at", "timestamp_ms", "When."), Column("n", "u64", "Value."), Column("who", "string", "Who."),
     Column("batch_id", "u64", "Write batch (an append-only table has one: tests/storage/test_batch_ids.py).")),
    time_column="at", order_by=("at",))


def _edge_batch(n: int = 5000) -> pa.RecordBatch:
    """Flows whose values sit at the edges of their types: u64/u32/u16/u8 maxima, zeros, IPv6 and IPv4-mapped
    addresses differing only in their last byte or only in their first, times before 1970 and far ahead."""
    b = flows_batch(n, seed=7, sources=300)
    cols = {name: b.column(name).to_numpy(zero_copy_only=False) for name in FLOWS.column_names}
    cols = {c.name: cols[c.name].astype(c.numpy_dtype) for c in FLOWS.columns}  # datetime64 / bytes objects
    cols["bytes"][:3] = [np.iinfo(np.uint64).max, 0, 1 << 63]
    cols["packets"][:2] = [np.iinfo(np.uint64).max - 1, 0]
    cols["in_if"][:2] = [np.iinfo(np.uint32).max, 0]
    cols["src_port"][:2] = [65535, 0]
    cols["protocol"][:2] = [255, 0]
    cols["flow_start"][:2] = [-1, -86_400_000]  # before the epoch (exporter clock trouble)
    cols["flow_end"][:1] = [253_402_300_799_000]  # 9999-12-31T23:59:59Z
    cols["src_addr"][:3] = [addr("2001:db8::1"), addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), addr("::")]
    return FLOWS.to_arrow(cols)


def _encodings(path: Path) -> dict[str, tuple[set[str], bool, bool]]:
    """Per column of a file: (encodings, has a dictionary page, has statistics), over all its row groups."""
    md = pq.read_metadata(path)
    out: dict[str, tuple[set[str], bool, bool]] = {}
    for i in range(md.num_columns):
        chunks = [md.row_group(g).column(i) for g in range(md.num_row_groups)]
        out[chunks[0].path_in_schema] = (set().union(*(c.encodings for c in chunks)),
                                         any(c.has_dictionary_page for c in chunks),
                                         all(c.is_stats_set for c in chunks))
    return out


def test_default_layout_split_fixed_width_dictionary_strings_statistics_where_filtered(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    batch = _edge_batch()
    store.write(FLOWS, batch, 1)
    store.write(EVENTS, EVENTS.to_arrow({"at": np.array([T0_MS, T0_MS + 1], np.int64),
                                         "n": np.array([1, 2], np.uint64),
                                         "who": np.array(["alice", "alice"], object)}), 2)
    (f,) = store.files("flows")
    assert pq.read_table(f).to_batches()[0].equals(batch)
    enc = _encodings(f)
    for name in ("time_received", "flow_start", "src_addr", "exporter", "src_port", "protocol", "bytes", "batch_id"):
        encodings, dictionary, _ = enc[name]
        assert "BYTE_STREAM_SPLIT" in encodings and not dictionary, name
    stats = {name for name, (_, _, s) in enc.items() if s}
    assert stats == {c.name for c in FLOWS.columns if c.kind in ("timestamp_ms", "ip")}
    assert pq.read_metadata(f).row_group(0).column(0).compression == "ZSTD"
    (ev,) = store.files("test_store_events")
    ev_enc = _encodings(ev)
    assert ev_enc["who"][1] and ev_enc["who"][2]  # strings: dictionary and statistics
    assert "BYTE_STREAM_SPLIT" in ev_enc["n"][0] and not ev_enc["n"][2]


def test_byte_stream_split_off_writes_the_dictionary_layout(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, byte_stream_split=False)
    batch = _edge_batch()
    store.write(FLOWS, batch, 1)
    (f,) = store.files("flows")
    assert pq.read_table(f).to_batches()[0].equals(batch)
    enc = _encodings(f)
    assert not any("BYTE_STREAM_SPLIT" in e for e, _, _ in enc.values())
    assert enc["src_addr"][1] and enc["exporter"][1]


@pytest.mark.parametrize(("codec", "level", "expected"), [("lz4", 1, "LZ4"), ("snappy", 1, "SNAPPY"),
                                                          ("none", 1, "UNCOMPRESSED"), ("gzip", 6, "GZIP"),
                                                          ("zstd", -7, "ZSTD"), ("zstd", 19, "ZSTD")])
def test_codec_and_level_are_applied_and_read_back(tmp_path: Path, codec: str, level: int, expected: str) -> None:
    store = ParquetStore(tmp_path, compression=codec, compression_level=level)
    batch = _edge_batch(2000)
    store.write(FLOWS, batch, 1)
    (f,) = store.files("flows")
    md = pq.read_metadata(f)
    assert {md.row_group(0).column(i).compression for i in range(md.num_columns)} == {expected}
    assert pq.read_table(f).to_batches()[0].equals(batch)


def test_zstd_level_reaches_the_encoder(tmp_path: Path) -> None:
    sizes = {}
    for level in (-7, 19):
        store = ParquetStore(tmp_path / str(level), compression_level=level)
        store.write(FLOWS, flows_batch(20_000, seed=3), 1)
        sizes[level] = store.files("flows")[0].stat().st_size
    assert sizes[19] < sizes[-7]


@pytest.mark.parametrize(("codec", "level"), [("lz5", 1), ("zstd", 23), ("zstd", -8), ("gzip", 0), ("brotli", 12)])
def test_bad_codec_or_level_is_refused(tmp_path: Path, codec: str, level: int) -> None:
    with pytest.raises(ValueError, match="store compression"):
        ParquetStore(tmp_path, compression=codec, compression_level=level)
    with pytest.raises(ValueError):
        parquet_options(FLOWS, codec, level)


def test_config_sets_and_checks_the_codec(tmp_path: Path) -> None:
    from collector.config import load

    cfg = load(None, [f"store.path={tmp_path}", "store.compression=lz4", "store.byte_stream_split=false"])
    store = ParquetStore.for_config(cfg, housekeeper=False)
    try:
        store.write(FLOWS, flows_batch(100), 1)
        (f,) = store.files("flows")
        assert pq.read_metadata(f).row_group(0).column(0).compression == "LZ4"
        assert not any("BYTE_STREAM_SPLIT" in e for e, _, _ in _encodings(f).values())
    finally:
        store.close()
    with pytest.raises(ConfigError) as err:
        load(None, ["store.compression=lz5"])
    assert err.value.key == "store.compression"
    with pytest.raises(ConfigError) as err:
        load(None, ["store.compression_level=30"])
    assert (err.value.key, err.value.value) == ("store.compression_level", 30)
    load(None, ["store.compression=snappy", "store.compression_level=30"])  # snappy has no level: ignored


def test_compaction_of_old_and_new_layout_files_keeps_every_row(tmp_path: Path) -> None:
    """Files of the dictionary layout (written by earlier versions) and of the split layout merge into one file
    of the store's layout, row for row."""
    old = ParquetStore(tmp_path, byte_stream_split=False, compact_after_s=1)
    batches = [_edge_batch(3000), flows_batch(3000, seed=11), flows_batch(3000, seed=12)]
    old.write(FLOWS, batches[0], 1)
    store = ParquetStore(tmp_path, compact_after_s=1, row_group_rows=4000)
    store.write(FLOWS, batches[1], 2)
    store.write(FLOWS, batches[2], 3)
    assert store.compact(now=time.time() + 10) == 3
    (merged,) = store.files("flows")
    assert "BYTE_STREAM_SPLIT" in _encodings(merged)["bytes"][0]
    assert pq.read_metadata(merged).num_row_groups == 3  # 9000 rows in groups of 4000
    assert pq.read_table(merged).equals(pa.Table.from_batches(batches))


def test_chdb_reads_the_split_layout_exactly_with_and_without_pruning(tmp_path: Path) -> None:
    """chDB (``flowmed query``) over split-layout files, old-layout files and a compacted file: totals, extreme
    values, address text, and a time + address filter (which chDB evaluates against the row-group statistics)."""
    store = ParquetStore(tmp_path, compact_after_s=1)
    old = ParquetStore(tmp_path, byte_stream_split=False, recover=False)
    edge = _edge_batch()
    hours = [flows_batch(4000, seed=20 + h, t0_ms=T0_MS + h * HOUR_MS, span_ms=HOUR_MS // 2) for h in range(3)]
    store.write(FLOWS, edge, 1)
    old.write(FLOWS, hours[0], 2)
    for h, b in enumerate(hours[1:], start=3):
        store.write(FLOWS, b, h)
    everything = pa.Table.from_batches([edge, *hours])
    exact = {
        "n": everything.num_rows,
        "b": int(sum(int(x) for x in everything.column("bytes").to_numpy()) % (1 << 64)),
        "p": int(everything.column("in_if").to_numpy().astype(np.uint64).sum()),
        "mx": int(everything.column("bytes").to_numpy().max()),
        "t0": int(everything.column("flow_start").cast(pa.int64()).to_numpy().min()),
        "t1": int(everything.column("flow_end").cast(pa.int64()).to_numpy().max()),
    }
    sql = ("SELECT count() AS n, sum(bytes) AS b, sum(toUInt64(in_if)) AS p, max(bytes) AS mx, "
           "toUnixTimestamp64Milli(min(flow_start)) AS t0, toUnixTimestamp64Milli(max(flow_end)) AS t1 FROM flows")
    src_b = hours[2].column("src_addr")[17].as_py()
    lo, hi = T0_MS + 2 * HOUR_MS, T0_MS + 3 * HOUR_MS
    want = sum(1 for s, t in zip(hours[2].column("src_addr").to_pylist(),
                                 hours[2].column("time_received").cast(pa.int64()).to_pylist(), strict=True)
               if s == src_b and lo <= t < hi)
    lookup = (f"SELECT count() AS n FROM flows WHERE src_addr = toIPv6('{_text(src_b)}') "
              f"AND time_received >= fromUnixTimestamp64Milli(toInt64({lo})) "
              f"AND time_received < fromUnixTimestamp64Milli(toInt64({hi}))")
    for phase in ("written", "compacted"):
        with QueryEngine.for_store(store.root) as engine:
            r = engine.query(sql).to_pylist()[0]
            r["b"] %= 1 << 64
            assert r == exact, phase
            assert engine.query(lookup).column("n")[0].as_py() == want >= 1, phase
            top = engine.query("SELECT src_addr FROM flows WHERE bytes = 18446744073709551615")
            assert top.column("src_addr").to_pylist() == ["2001:db8::1"], phase
        if phase == "written":
            assert store.compact(now=time.time() + 10) >= 4  # partitions holding several files were merged


def _text(packed: bytes) -> str:
    import ipaddress

    a = ipaddress.IPv6Address(packed)
    return str(a.ipv4_mapped or a)
