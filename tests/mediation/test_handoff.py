"""The sink's handoff journal: a batch is recorded before any output gets it and replayed at start into the outputs
that lack it, so a SIGKILL at any step leaves the Parquet store and ClickHouse with the same batches, each once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from decoders.schema import FLOWS
from storage.clickhouse.output import ClickHouseOutput
from storage.handoff import HandoffJournal
from storage.outputs import with_batch_id
from storage.settings import ClickHouseConfig, SpoolConfig
from storage.sink import Sink
from storage.store import ParquetStore
from tests.mediation.handoff_writer import batch_b
from tests.storage.clickhouse_helpers import flow_batch
from tests.storage.test_sink import Recorder

ROOT = Path(__file__).resolve().parents[2]


class JournalChecker(Recorder):
    """A Recorder that notes, at each write, whether the batch is recorded in the journal at that moment."""

    def __init__(self, name: str, journal: HandoffJournal) -> None:
        super().__init__(name)
        self.journal = journal
        self.recorded_at_write: list[bool] = []

    def write(self, table, batch, batch_id) -> None:
        self.recorded_at_write.append(self.journal.path(table.name, batch_id, batch.num_rows) is not None)
        super().write(table, batch, batch_id)


def test_batch_is_recorded_before_any_output_and_forgotten_after_all(tmp_path: Path) -> None:
    journal = HandoffJournal(tmp_path / "handoff")
    a, b = JournalChecker("a", journal), JournalChecker("b", journal)
    sink = Sink([a, b], flush_rows=100, journal=journal)
    steps: list[str] = []
    sink.step_hook = lambda step, batch_id: steps.append(step)
    sink.add("flows", flow_batch(0, rows=150))
    sink.close()
    assert a.recorded_at_write == b.recorded_at_write == [True]
    assert steps == ["journaled", "wrote:a", "wrote:b", "done"]
    assert journal.entries() == []
    assert sink.replays == 0 and sink.journal_errors == 0


def test_a_table_only_one_output_takes_is_not_recorded(tmp_path: Path) -> None:
    """ClickHouse with ``flows = false``: only the store takes flows, so recording them would only cost a write."""
    journal = HandoffJournal(tmp_path / "handoff")
    a = JournalChecker("a", journal)
    sink = Sink([a, Recorder("b")], flush_rows=10, journal=journal, unjournaled=("flows",))
    sink.add("flows", flow_batch(0, rows=10))
    sink.close()
    assert a.recorded_at_write == [False] and sink.journal_errors == 0


def test_start_replays_a_recorded_batch_into_the_outputs_that_lack_it(tmp_path: Path) -> None:
    """As after a SIGKILL between the two outputs: ``a`` has the batch, ``b`` does not, the record is there."""
    journal = HandoffJournal(tmp_path / "handoff")
    batch = with_batch_id(FLOWS, flow_batch(3, rows=40), 777)  # as the sink records it
    journal.record("flows", 777, batch)
    a, b = Recorder("a"), Recorder("b")
    a.writes.append(("flows", batch, 777))
    replayed: list[tuple[str, str, int]] = []
    sink = Sink([a, b], journal=HandoffJournal(tmp_path / "handoff"),
                on_replay=lambda out, table, rows: replayed.append((out, table, rows)))
    sink.close()
    assert [w[2] for w in a.writes] == [777] and [w[2] for w in b.writes] == [777]
    assert b.writes[0][1].equals(batch)
    assert (sink.stats["a"].replayed_rows, sink.stats["b"].replayed_rows) == (0, 40)
    assert replayed == [("b", "flows", 40)]
    assert sink.replays == 1 and journal.entries() == []
    assert sink.stats["b"].rows == 0  # a replay is not counted again as a new write


def test_unreadable_record_is_set_aside_and_counted_not_a_crash(tmp_path: Path) -> None:
    directory = tmp_path / "handoff"
    directory.mkdir()
    (directory / f"{5:020d}.flows.10.arrow").write_bytes(b"not arrow at all")
    (directory / f"{6:020d}.no_such_table.10.arrow").write_bytes(b"")
    (directory / "stray.arrow").write_bytes(b"")
    journal = HandoffJournal(directory)
    rec = Recorder()
    sink = Sink([rec], journal=journal)
    sink.close()
    assert rec.writes == [] and sink.replays == 0
    assert journal.set_aside == 3
    assert sorted(p.name for p in (directory / "corrupt").iterdir()) == [
        f"{5:020d}.flows.10.arrow", f"{6:020d}.no_such_table.10.arrow", "stray.arrow"]
    assert journal.entries() == []


def test_a_record_the_disk_refuses_still_hands_the_batch_over(tmp_path: Path, monkeypatch) -> None:
    journal = HandoffJournal(tmp_path / "handoff")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "record", disk_full)
    a, b = Recorder("a"), Recorder("b")
    sink = Sink([a, b], flush_rows=10, journal=journal)
    sink.add("flows", flow_batch(0, rows=10))
    sink.close()
    assert a.rows == b.rows == 10
    assert sink.journal_errors == 1


def test_store_replay_writes_only_the_missing_hour(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path / "data")
    batch = batch_b()
    store.write(FLOWS, batch, 42)
    first, second = store.files("flows")
    kept = first.stat()
    second.unlink()  # as if the process died between the two hour files
    assert store.replay(FLOWS, batch, 42) is True
    assert first.stat().st_ino == kept.st_ino and first.stat().st_mtime_ns == kept.st_mtime_ns
    assert sum(pq.read_metadata(f).num_rows for f in store.files("flows")) == 2000
    assert store.replay(FLOWS, batch, 42) is False  # all there: nothing written


def test_clickhouse_output_links_the_record_into_its_spool(tmp_path: Path) -> None:
    """With the journal the batch is written to disk once for both: the spool entry is a hard link of the record."""
    journal = HandoffJournal(tmp_path / "handoff")
    out = ClickHouseOutput(ClickHouseConfig(enabled=True, port=1), SpoolConfig(), tmp_path / "spool", start=False,
                           journal=journal)
    batch = flow_batch(0, rows=50)
    record = journal.record("flows", 900, batch)
    out.write(FLOWS, batch, 900)
    (entry,) = out.spool.entries()
    assert entry.path.stat().st_ino == record.stat().st_ino
    assert out.spool.read(entry).equals(batch)
    journal.remove("flows", 900, 50)
    assert out.spool.read(entry).num_rows == 50  # the spool's link outlives the record
    # A replay of a batch still in the spool is skipped; one that is not is spooled again (to be checked first).
    assert out.replay(FLOWS, batch, 900) is False
    assert out.replay(FLOWS, flow_batch(1, rows=50), 901) is True
    assert [e.batch_id for e in out.spool.entries()] == [900, 901]
    out.close(timeout=0.1)


# ---- a real process SIGKILLed at each step of the handoff, against a real clickhouse-server ------------------------

STEPS = ["journaled", "store-mid", "wrote:store", "wrote:clickhouse", "done"]


def _store_counts(data: Path) -> dict[int, int]:
    store = ParquetStore(data, recover=False)
    ids = [pq.read_table(f, columns=["batch_id"]).column("batch_id").to_numpy() for f in store.files("flows")]
    values, counts = np.unique(np.concatenate(ids) if ids else np.array([], dtype=np.uint64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _clickhouse_counts(server, db: str) -> dict[int, int]:
    out = server.query(f"SELECT batch_id, count() FROM {db}.flows GROUP BY batch_id ORDER BY batch_id")
    return {int(b): int(c) for b, c in (line.split() for line in out.splitlines())}


@pytest.mark.external
@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_of_the_handoff_leaves_both_outputs_equal(clickhouse_server, tmp_path, step):
    db = "handoff_" + re.sub(r"\W", "_", step)
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.mediation.handoff_writer", str(data), str(clickhouse_server.port), db]
    first = subprocess.run([*cmd, step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr[-3000:]
    batch_a, batch_b_id = (int(x) for x in (data / "ids").read_text().split())
    again = subprocess.run([*cmd, "restart"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    report = json.loads(again.stdout.strip().splitlines()[-1])
    expected = {batch_a: 1000, batch_b_id: 2000}  # B was recorded before the kill: both outputs must have it
    assert _store_counts(data) == expected
    assert _clickhouse_counts(clickhouse_server, db) == expected  # and nothing twice
    # What the restart replayed, and into which output, follows from where the first run died.
    replayed = report["replayed_rows"]
    if step == "done":
        assert report["replays"] == 0
    else:
        assert report["replays"] == 1
        assert replayed["store"] == (2000 if step in ("journaled", "store-mid") else 0)
        if step in ("journaled", "store-mid", "wrote:store"):
            assert replayed["clickhouse"] == 2000
    assert not list((data / "handoff").glob("*.arrow"))
