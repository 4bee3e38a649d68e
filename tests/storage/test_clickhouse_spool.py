"""The on-disk spool: atomic files, order, restart, full policies with counted drops, corrupt files."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from decoders.schema import FLOWS
from storage.clickhouse.spool import Spool, SpoolCorrupt


def batch(n: int, first: int = 0) -> pa.RecordBatch:
    return FLOWS.to_arrow({"bytes": np.arange(first, first + n, dtype=np.uint64),
                           "time_received": np.full(n, 1_764_000_000_123, dtype=np.int64)})


def test_append_read_remove_in_order(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**8)
    for i in range(5):
        assert spool.append("flows", 100 + i, batch(10, i * 10)) is not None
    entries = spool.entries()
    assert [e.batch_id for e in entries] == [100, 101, 102, 103, 104]
    assert spool.rows == 50 and len(spool) == 5
    first = spool.oldest()
    got = spool.read(first)
    assert got.schema.names == FLOWS.column_names
    assert got.column("bytes").to_pylist() == list(range(10))
    assert got.column("time_received").cast(pa.int64()).to_pylist() == [1_764_000_000_123] * 10
    spool.remove(first)
    assert [e.batch_id for e in spool.entries()] == [101, 102, 103, 104]
    assert not list(tmp_path.glob("*.tmp"))


def test_survives_restart_and_keeps_order(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**8)
    for i in range(3):
        spool.append("flows", 7 + i, batch(4, i))
    spool.append("usage_like", 99, batch(2))
    del spool
    again = Spool(tmp_path, max_bytes=10**8)
    assert [(e.table, e.batch_id, e.rows) for e in again.entries()] == [
        ("flows", 7, 4), ("flows", 8, 4), ("flows", 9, 4), ("usage_like", 99, 2)]
    # New entries continue after the old ones.
    again.append("flows", 1, batch(1))
    assert again.entries()[-1].batch_id == 1
    assert again.entries()[-1].seq > again.entries()[-2].seq


def test_leftover_tmp_is_removed_and_corrupt_files_are_set_aside(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=10**8)
    good = spool.append("flows", 1, batch(5))
    bad = spool.append("flows", 2, batch(5))
    trunc = spool.append("flows", 3, batch(5))
    del spool
    (tmp_path / "0000000000000099.flows.9.5.arrow.tmp").write_bytes(b"partial")
    bad.path.write_bytes(b"this is not arrow")
    data = trunc.path.read_bytes()
    trunc.path.write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.arrow").write_bytes(b"x")

    spool = Spool(tmp_path, max_bytes=10**8)  # never raises at start
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "corrupt" / "garbage.arrow").exists()
    delivered, set_aside = [], []
    while (entry := spool.oldest()) is not None:
        try:
            delivered.append(spool.read(entry).num_rows)
            spool.remove(entry)
        except SpoolCorrupt as exc:
            set_aside.append(entry.batch_id)
            spool.quarantine(entry, str(exc))
    assert delivered == [5] and good.batch_id == 1
    assert set_aside == [2, 3]
    assert spool.dropped_rows["corrupt"] == 10
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == sorted(
        ["garbage.arrow", bad.path.name, trunc.path.name])
    assert "set aside" in caplog.text


def _size_of_one(tmp_path) -> int:
    probe = Spool(tmp_path / "probe", max_bytes=10**8)
    return probe.append("flows", 1, batch(1000)).size


def test_drop_oldest_counts_every_row(tmp_path, caplog):
    one = _size_of_one(tmp_path)
    spool = Spool(tmp_path / "s", max_bytes=int(one * 3.5), full_policy="drop_oldest")
    for i in range(6):
        spool.append("flows", i, batch(1000))
    assert [e.batch_id for e in spool.entries()] == [3, 4, 5]
    assert spool.dropped_rows["full_oldest"] == 3000
    assert spool.dropped_batches["full_oldest"] == 3
    assert spool.size_bytes <= spool.max_bytes
    assert "drop_oldest" in caplog.text


def test_drop_oldest_never_drops_the_batch_in_delivery(tmp_path):
    one = _size_of_one(tmp_path)
    spool = Spool(tmp_path / "s", max_bytes=int(one * 2.5), full_policy="drop_oldest")
    spool.append("flows", 0, batch(1000))
    busy = spool.oldest()
    for i in range(1, 4):
        spool.append("flows", i, batch(1000))
    ids = [e.batch_id for e in spool.entries()]
    assert ids[0] == busy.batch_id == 0 and ids[-1] == 3
    assert spool.dropped_rows["full_oldest"] == 2000


def test_drop_newest(tmp_path):
    one = _size_of_one(tmp_path)
    spool = Spool(tmp_path / "s", max_bytes=int(one * 2.5), full_policy="drop_newest")
    results = [spool.append("flows", i, batch(1000)) for i in range(4)]
    assert [r is not None for r in results] == [True, True, False, False]
    assert [e.batch_id for e in spool.entries()] == [0, 1]
    assert spool.dropped_rows["full_newest"] == 2000


def test_too_large_batch_is_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.append("flows", 1, batch(10_000)) is None
    assert spool.dropped_rows["too_large"] == 10_000 and len(spool) == 0


def test_block_waits_for_room(tmp_path):
    one = _size_of_one(tmp_path)
    spool = Spool(tmp_path / "s", max_bytes=int(one * 1.5), full_policy="block")
    spool.append("flows", 0, batch(1000))
    done = threading.Event()

    def writer():
        spool.append("flows", 1, batch(1000))
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not done.wait(0.5)  # blocked: no room
    spool.remove(spool.oldest())  # the output delivered the first batch
    assert done.wait(10)
    t.join()
    assert [e.batch_id for e in spool.entries()] == [1]
    assert sum(spool.dropped_rows.values()) == 0


def test_block_gives_up_after_timeout_and_counts(tmp_path):
    one = _size_of_one(tmp_path)
    spool = Spool(tmp_path / "s", max_bytes=int(one * 1.5), full_policy="block", block_timeout_s=0.2)
    spool.append("flows", 0, batch(1000))
    assert spool.append("flows", 1, batch(1000)) is None
    assert spool.dropped_rows["full_newest"] == 1000


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_fsync_policies_write_complete_files(tmp_path, fsync):
    spool = Spool(tmp_path, max_bytes=10**8, fsync=fsync)
    e = spool.append("flows", 5, batch(3))
    assert Spool(tmp_path, max_bytes=10**8).read(e).num_rows == 3
