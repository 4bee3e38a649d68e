"""ParquetStore: atomic hourly files, splitting, idempotent rewrites, recovery/quarantine, compaction, retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.flowgen import T0_MS, flows_batch
from decoders.schema import FLOWS, TABLES, Column, table
from storage.layout import HOUR_MS, JOURNAL, check_parquet, partition_of
from storage.store import RETENTION_SETTINGS, CompactionCrash, ParquetStore, retention_setting

DEAD_PID = 99_999_999  # above Linux's pid_max: never a live process

# A second table, to show retention and compaction are generic (registered once per test session).
EVENTS = TABLES.get("test_store_events") or table(
    "test_store_events", "Test-only table.",
    (Column("at", "timestamp_ms", "When."), Column("n", "u64", "Value."), Column("who", "string", "Who."),
     Column("batch_id", "u64", "Write batch (an append-only table has one: tests/storage/test_batch_ids.py).")),
    time_column="at", order_by=("at",))


def visible_rows(store: ParquetStore, name: str = "flows") -> int:
    """Rows a reader globbing ``*.parquet`` would see right now."""
    return sum(pq.read_metadata(f).num_rows for f in store.files(name))


def read_all(store: ParquetStore, name: str = "flows") -> pa.Table:
    tables = [pq.read_table(f) for f in store.files(name)]
    return pa.concat_tables(tables) if tables else FLOWS.arrow_schema.empty_table()


def test_write_one_hour_one_file_atomic_zstd(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    batch = flows_batch(1000, t0_ms=T0_MS, span_ms=60_000)
    store.write(FLOWS, batch, 42)
    files = store.files("flows")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "flows/date=2026-11-25/hour=19/00000000000000000042.parquet"]
    assert not list(tmp_path.rglob("*.tmp"))
    back = pq.read_table(files[0])
    assert back.schema.equals(FLOWS.arrow_schema, check_metadata=False)
    assert back.to_batches()[0].equals(batch)
    md = pq.read_metadata(files[0])
    assert md.row_group(0).column(0).compression == "ZSTD"


def test_batch_spanning_hours_is_split_by_partition(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    batch = flows_batch(30_000, t0_ms=T0_MS, span_ms=3 * HOUR_MS)  # 19:40 .. 22:40
    store.write(FLOWS, batch, 7)
    parts = [p.relative_to(tmp_path / "flows").as_posix() for _, p in store.partitions("flows")]
    assert parts == ["date=2026-11-25/hour=19", "date=2026-11-25/hour=20", "date=2026-11-25/hour=21",
                     "date=2026-11-25/hour=22"]
    for hour, pdir in store.partitions("flows"):
        t = pq.read_table(pdir / "00000000000000000007.parquet")
        ms = t.column("time_received").cast(pa.int64()).to_numpy()
        assert (ms // HOUR_MS == hour).all()
    assert visible_rows(store) == 30_000
    assert pc.sum(read_all(store).column("bytes")).as_py() == pc.sum(batch.column("bytes")).as_py()


def test_partition_across_midnight(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    midnight = 1_795_651_200_000  # 2026-11-26T00:00:00Z
    store.write(FLOWS, flows_batch(100, t0_ms=midnight - 1000, span_ms=2000), 1)
    assert [p.relative_to(tmp_path / "flows").as_posix() for _, p in store.partitions("flows")] == [
        "date=2026-11-25/hour=23", "date=2026-11-26/hour=00"]
    assert partition_of(midnight // HOUR_MS) == "date=2026-11-26/hour=00"


def test_rewriting_the_same_batch_id_does_not_duplicate(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    batch = flows_batch(5000, span_ms=2 * HOUR_MS)
    store.write(FLOWS, batch, 99)
    store.write(FLOWS, batch, 99)  # a retry after an error halfway
    assert visible_rows(store) == 5000
    store.write(FLOWS, batch, 100)  # a different batch does add
    assert visible_rows(store) == 10_000


def test_batch_not_matching_the_table_is_refused(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    bad = pa.record_batch({"time_received": pa.array([1], pa.int64())})
    with pytest.raises(ValueError, match="missing columns"):
        store.write(FLOWS, bad, 1)
    assert store.files("flows") == []


def test_columns_are_cast_to_the_table_types(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    batch = flows_batch(10)
    arrays = [batch.column(i).cast(pa.int64()) if f.name == "src_port" else batch.column(i)
              for i, f in enumerate(batch.schema)]
    store.write(FLOWS, pa.RecordBatch.from_arrays(arrays, names=batch.schema.names), 5)
    assert pq.read_table(store.files("flows")[0]).schema.field("src_port").type == pa.uint16()


# --- recovery / quarantine --------------------------------------------------------------------------------------------


def test_stray_tmp_and_corrupt_files_are_quarantined_at_start(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    store.write(FLOWS, flows_batch(1000), 1)
    store.write(FLOWS, flows_batch(1000, seed=2), 2)
    pdir = store.files("flows")[0].parent
    good = sorted(pdir.glob("*.parquet"))
    # A truncated copy of a real file, a random file with a .parquet name, and a write cut by a crash.
    data = good[0].read_bytes()
    (pdir / "00000000000000000003.parquet").write_bytes(data[: len(data) // 2])
    (pdir / "00000000000000000004.parquet").write_bytes(os.urandom(5000))
    (pdir / "00000000000000000005.parquet").write_bytes(b"")
    (pdir / f"00000000000000000006.parquet.{DEAD_PID}.tmp").write_bytes(data[:100])
    store2 = ParquetStore(tmp_path)  # recovery runs at start
    assert sorted(pdir.iterdir()) == good
    assert store2.stats.quarantined == 4
    reasons = dict(store2.stats.quarantine_log)
    assert "truncated" in reasons["flows/date=2026-11-25/hour=19/00000000000000000003.parquet"] or \
        "magic" in reasons["flows/date=2026-11-25/hour=19/00000000000000000003.parquet"]
    q = tmp_path / "quarantine" / "flows" / "date=2026-11-25" / "hour=19"
    assert sorted(p.name for p in q.iterdir()) == [
        "00000000000000000003.parquet", "00000000000000000004.parquet", "00000000000000000005.parquet",
        f"00000000000000000006.parquet.{DEAD_PID}.tmp"]
    assert visible_rows(store2) == 2000


def test_tmp_file_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    store.write(FLOWS, flows_batch(10), 1)
    pdir = store.files("flows")[0].parent
    live = pdir / f"00000000000000000002.parquet.{os.getppid()}.tmp"  # another worker, still writing
    live.write_bytes(b"partial")
    ParquetStore(tmp_path)
    assert live.exists()


def test_check_parquet_accepts_good_files_only(tmp_path: Path) -> None:
    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), good)
    assert check_parquet(good) is None
    bad = tmp_path / "b.parquet"
    raw = good.read_bytes()
    bad.write_bytes(raw[:4] + b"\0" * (len(raw) - 8) + raw[-4:])  # magic intact, footer garbage
    assert check_parquet(bad) is not None


def test_unknown_directories_are_not_touched(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "x.arrow.tmp").write_bytes(b"spool's own business")
    ParquetStore(tmp_path)
    assert (tmp_path / "spool" / "x.arrow.tmp").exists()


# --- compaction -------------------------------------------------------------------------------------------------------


def _small_files(store: ParquetStore, n: int, rows: int = 2000) -> pa.Table:
    batches = [flows_batch(rows, seed=i, span_ms=600_000) for i in range(n)]
    for i, b in enumerate(batches):
        store.write(FLOWS, b, 1000 + i)
    return pa.Table.from_batches(batches)


def _fingerprint(t: pa.Table) -> tuple[int, int, int]:
    return t.num_rows, pc.sum(t.column("bytes")).as_py(), pc.sum(t.column("src_port").cast(pa.uint64())).as_py()


def test_compaction_merges_old_small_files(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=60, row_group_rows=3000)
    written = _small_files(store, 6)
    assert store.compact(now=time.time()) == 0  # too young
    merged = store.compact(now=time.time() + 61)
    assert merged == 6
    files = store.files("flows")
    assert [f.name for f in files] == ["00000000000000001000-00000000000000001005.parquet"]
    assert _fingerprint(read_all(store)) == _fingerprint(written)
    assert pq.read_metadata(files[0]).num_row_groups == 4  # 12000 rows in groups of 3000
    assert not [p for p in files[0].parent.iterdir() if p.suffix != ".parquet"]
    # Later files are merged together with the merged one.
    store.write(FLOWS, flows_batch(100, seed=50), 2000)
    store.write(FLOWS, flows_batch(100, seed=51), 2001)
    store.compact(now=time.time() + 61)
    assert [f.name for f in store.files("flows")] == ["00000000000000001000-00000000000000002001.parquet"]
    assert visible_rows(store) == 12_200


def test_compaction_respects_target_size(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=1)
    _small_files(store, 6)
    size = store.files("flows")[0].stat().st_size
    store.compact_target_bytes = size * 3  # a group closes once it reaches 3 files' size
    store.compact(now=time.time() + 10)
    assert len(store.files("flows")) == 2
    assert visible_rows(store) == 12_000


@pytest.mark.parametrize("step", [1, 2, 30, 3, 4, 5])
def test_crash_during_compaction_never_double_counts(tmp_path: Path, step: int) -> None:
    store = ParquetStore(tmp_path, compact_after_s=1)
    written = _small_files(store, 5)
    store._crash_after_step = step
    with pytest.raises(CompactionCrash):
        store.compact(now=time.time() + 10)
    # What a reader sees right after the "crash": never more than was written.
    seen = visible_rows(store)
    assert seen <= written.num_rows
    if step in (1, 2, 4, 5):
        assert seen == written.num_rows
    # Another round of compaction does not touch a partition with a pending journal.
    store._crash_after_step = None
    if step > 1:
        assert store.compact(now=time.time() + 10) == 0
    # Restart: recovery finishes or rolls back; every row exactly once, nothing left over.
    store2 = ParquetStore(tmp_path, compact_after_s=1)
    assert _fingerprint(read_all(store2)) == _fingerprint(written)
    pdir = store2.files("flows")[0].parent
    assert not (pdir / JOURNAL).exists()
    assert not list(pdir.glob("*.replaced")) and not list(pdir.glob("*.tmp"))
    if step in (4, 5):  # the merged file was in place: recovery finished the job
        assert len(store2.files("flows")) == 1
    # And compaction completes afterwards.
    store2.compact(now=time.time() + 10)
    assert len(store2.files("flows")) == 1
    assert _fingerprint(read_all(store2)) == _fingerprint(written)


def test_unreadable_source_is_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=1)
    _small_files(store, 3)
    victim = store.files("flows")[1]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:4] + b"\x01" * (len(raw) - 8) + raw[-4:])
    store.compact(now=time.time() + 10)  # abandoned: the bad file goes to quarantine
    assert store.stats.quarantined == 1
    store.compact(now=time.time() + 10)  # the next round merges the other two
    assert len(store.files("flows")) == 1
    assert visible_rows(store) == 4000


def test_compaction_disabled_with_zero(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=0)
    _small_files(store, 3)
    assert store.compact(now=time.time() + 10**6) == 0
    assert len(store.files("flows")) == 3


# --- retention --------------------------------------------------------------------------------------------------------


def test_retention_drops_whole_expired_partitions_per_table(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, retention_days={"flows": 2})
    day = 24 * HOUR_MS
    now_ms = T0_MS + 10 * day
    for age_days in (5, 3, 2, 1, 0):
        store.write(FLOWS, flows_batch(10, t0_ms=now_ms - age_days * day, span_ms=1000), 100 + age_days)
    ev = EVENTS.to_arrow({"at": np.array([now_ms - 5 * day, now_ms], dtype=np.int64),
                          "n": np.array([1, 2], dtype=np.uint64), "who": np.array(["a", "b"], dtype=object)})
    store.write(EVENTS, ev, 1)
    dropped = store.apply_retention(now=now_ms / 1000)
    # A partition goes once its hour ended 2 days (48 h) or more before now: the 5- and 3-day-old ones. The one from
    # exactly 2 days ago (19:00-20:00, now is 19:40) ended 47 h 40 min ago and stays.
    assert sorted(dropped) == ["flows/date=2026-11-30/hour=19", "flows/date=2026-12-02/hour=19"]
    assert [h for h, _ in store.partitions("flows")] == [(now_ms - d * day) // HOUR_MS for d in (2, 1, 0)]
    assert visible_rows(store) == 30
    assert len(store.files("test_store_events")) == 2  # no retention for that table yet
    store.set_retention("test_store_events", 1)
    store.apply_retention(now=now_ms / 1000)
    assert visible_rows(store, "test_store_events") == 1
    # Empty date directories are removed as well; nothing is left in the trash.
    assert all(any(d.iterdir()) for d in (tmp_path / "flows").iterdir())
    assert not list((tmp_path / ".trash").iterdir())


def test_for_config_reads_store_section(tmp_path: Path) -> None:
    from collector.config import load

    cfg = load(None, [f"store.path={tmp_path}", "store.flows_retention_days=30", "store.compact_after_s=120"])
    retention_setting("test_store_events", lambda c: c.store.flows_retention_days * 2)
    try:
        store = ParquetStore.for_config(cfg, {"usage": 400}, housekeeper=False)
    finally:
        RETENTION_SETTINGS.pop("test_store_events")
    try:
        # other table modules (compliance) register their own settings too: check the ones this test controls
        assert {k: store.retention_days[k] for k in ("flows", "test_store_events", "usage")} == {
            "flows": 30, "test_store_events": 60, "usage": 400}
        assert store.compact_after_s == 120
        assert store.root == tmp_path
    finally:
        store.close()


def test_recovery_covers_tables_this_process_does_not_know(tmp_path: Path) -> None:
    pdir = tmp_path / "some_future_table" / "date=2026-01-01" / "hour=00"
    pdir.mkdir(parents=True)
    (pdir / f"00000000000000000001.parquet.{DEAD_PID}.tmp").write_bytes(b"cut short")
    store = ParquetStore(tmp_path)
    assert not list(pdir.iterdir())
    assert store.stats.quarantine_log[0][0] == f"some_future_table/date=2026-01-01/hour=00/" \
                                               f"00000000000000000001.parquet.{DEAD_PID}.tmp"


def test_compaction_keeps_files_of_an_older_schema(tmp_path: Path) -> None:
    """A file written before a column existed (or with a column since removed) is merged with defaults."""
    store = ParquetStore(tmp_path, compact_after_s=1)
    ev = EVENTS.to_arrow({"at": np.array([T0_MS, T0_MS + 1], dtype=np.int64), "n": np.array([1, 2], dtype=np.uint64),
                          "who": np.array(["a", "b"], dtype=object)})
    store.write(EVENTS, ev, 1)
    pdir = store.files("test_store_events")[0].parent
    old = pa.table({"at": ev.column("at"), "n": ev.column("n"), "gone": pa.array([9, 9])})  # no "who", extra "gone"
    pq.write_table(old, pdir / "00000000000000000002.parquet")
    store.compact(now=time.time() + 10)
    assert store.stats.quarantined == 0
    (merged,) = store.files("test_store_events")
    t = pq.read_table(merged)
    assert t.column_names == ["at", "n", "who", "batch_id"]
    assert sorted(zip(t.column("n").to_pylist(), t.column("who").to_pylist(), strict=True)) == [
        (1, ""), (1, "a"), (2, ""), (2, "b")]


def test_restart_examines_only_partitions_changed_since_the_checkpoint(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)  # first start: full check, then a checkpoint
    assert (tmp_path / ".checkpoint").exists()
    store.write(FLOWS, flows_batch(100, t0_ms=T0_MS - 30 * 24 * HOUR_MS), 1)  # a month-old partition
    store.write(FLOWS, flows_batch(100), 2)
    old_dir, new_dir = (p for _, p in store.partitions("flows"))
    (old_dir / "00000000000000000009.parquet").write_bytes(b"rot")  # outside damage, long after it was written
    (new_dir / f"00000000000000000003.parquet.{DEAD_PID}.tmp").write_bytes(b"cut short by a crash")
    past = time.time() - 7200
    os.utime(old_dir, (past, past))
    os.utime(tmp_path / ".checkpoint", (past + 3600, past + 3600))  # last maintenance round: an hour ago
    restarted = ParquetStore(tmp_path)
    assert [r for r, _ in restarted.stats.quarantine_log] == [
        f"flows/date=2026-11-25/hour=19/00000000000000000003.parquet.{DEAD_PID}.tmp"]
    restarted.recover(full=True)  # a full check also finds the damaged old file
    assert restarted.stats.quarantined == 2


def test_settled_partitions_are_not_rescanned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ParquetStore(tmp_path, compact_after_s=1)
    for i in range(3):
        store.write(FLOWS, flows_batch(100, seed=i, t0_ms=T0_MS + i * HOUR_MS, span_ms=1000), 10 + i)
        store.write(FLOWS, flows_batch(100, seed=i, t0_ms=T0_MS + i * HOUR_MS, span_ms=1000), 20 + i)
    scanned: list[Path] = []
    original = store._compaction_groups
    monkeypatch.setattr(store, "_compaction_groups", lambda pdir, now: (scanned.append(pdir), original(pdir, now))[1])
    assert store.compact(now=time.time() + 10) == 6
    assert len(scanned) == 3
    assert store.compact(now=time.time() + 10) == 0
    assert len(scanned) == 3  # nothing changed: no partition looked at again
    store.write(FLOWS, flows_batch(100, seed=9, t0_ms=T0_MS, span_ms=1000), 30)
    store.compact(now=time.time() + 10)
    assert len(scanned) == 4 and len(store.files("flows")) == 3  # only the changed partition, merged again


def test_rewriting_a_batch_after_compaction_does_not_duplicate(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=1)
    batches = [flows_batch(1000, seed=i, span_ms=600_000) for i in range(3)]
    for i, b in enumerate(batches):
        store.write(FLOWS, b, 10 + i)
    store.compact(now=time.time() + 10)
    (merged,) = store.files("flows")
    assert pq.read_schema(merged).metadata[b"flowmed.batch_ids"] == b"[10, 11, 12]"
    store.write(FLOWS, batches[1], 11)  # a replay of a batch that is already in the merged file
    assert visible_rows(store) == 3000 and store.stats.duplicate_writes == 1
    store.write(FLOWS, batches[1], 13)  # a new batch id inside no merged file is written
    assert visible_rows(store) == 4000
    # Merging the merged file again keeps the full list of ids.
    store.write(FLOWS, batches[2], 14)
    store.compact(now=time.time() + 10)
    (merged,) = store.files("flows")
    assert pq.read_schema(merged).metadata[b"flowmed.batch_ids"] == b"[10, 11, 12, 13, 14]"
    store.write(FLOWS, batches[0], 10)
    assert visible_rows(store) == 5000 and store.stats.duplicate_writes == 2
