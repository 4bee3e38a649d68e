"""Faults with exact totals afterwards: a full data disk (store and spool), SIGKILL during a spool write and during a
rating run, corrupt files at start, an exporter whose clock is hours off.

Tested elsewhere (not repeated): ClickHouse down, slow, refusing inserts, the writer SIGKILLed
(tests/storage/test_clickhouse_faults.py); SIGKILL during Parquet writes and during compaction
(tests/storage/test_store_kill.py); corrupt and stray files in the store and the spool at start, as units
(tests/storage/test_store.py::test_stray_tmp_and_corrupt_files_are_quarantined_at_start,
tests/storage/test_clickhouse_spool.py::test_leftover_tmp_is_removed_and_corrupt_files_are_set_aside); the daemon
with both here.

The full disk is a real one: a 2 MiB tmpfs mounted for the test (root needed; ENOSPC comes from the kernel), grown
with ``mount -o remount,size=`` when "space returns".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.flowgen import flows_batch
from decoders.schema import FLOWS
from mediation.tables import USAGE
from storage.clickhouse.output import ClickHouseOutput
from storage.clickhouse.spool import Spool
from storage.settings import ClickHouseConfig, SpoolConfig
from storage.sink import Sink
from storage.store import ParquetStore
from tests.fixtures.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000_000


class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path`` (ENOSPC from the kernel when full); :meth:`grow` is space returning.

    Without the privilege to mount (not root, no CAP_SYS_ADMIN) it falls back to a quota shim: files opened for
    writing under ``path`` raise ``OSError(ENOSPC)`` once the directory would hold more than ``size`` bytes. The
    real tmpfs is preferred: the shim only sees writes made through Python's ``open``, which is what the store and
    the spool use.
    """

    def __init__(self, path: Path, size: str = "2m", monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.mounted = proc.returncode == 0
        self.limit = int(size.rstrip("m")) * 2**20
        if not self.mounted:
            assert monkeypatch is not None
            self._shim(monkeypatch)

    def _used(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def _shim(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import builtins
        import errno
        import io

        real_open, disk = builtins.open, self

        class _Quota(io.FileIO):
            def write(self, b) -> int:  # type: ignore[override]
                if disk._used() + len(b) > disk.limit:
                    raise OSError(errno.ENOSPC, "No space left on device (quota shim)")
                return super().write(b)

        def quota_open(file, mode="r", *args, **kwargs):
            if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+") and "b" in mode \
                    and str(Path(file).resolve()).startswith(str(disk.path.resolve())):
                return _Quota(file, mode.replace("b", ""))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", quota_open)

    def grow(self, size: str = "256m") -> None:
        self.limit = int(size.rstrip("m")) * 2**20
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", monkeypatch=monkeypatch)
    try:
        yield disk
    finally:
        disk.unmount()


def usage_batch(k: int, rows: int = 2000) -> pa.RecordBatch:
    """``rows`` usage rows with distinct row ids (incompressible enough that a few batches fill 2 MiB)."""
    rng = np.random.default_rng(k)
    cols = USAGE.empty_columns(rows)
    cols["interval_start"][:] = T0
    cols["interval_end"][:] = T0 + 300_000
    cols["subscriber_id"] = np.array([f"sub-{k}-{i}-{rng.integers(1 << 60)}" for i in range(rows)], dtype=object)
    cols["direction"] = np.array(["down"] * rows, dtype=object)
    cols["traffic_class"] = np.array(["default"] * rows, dtype=object)
    cols["source"] = np.array(["flow"] * rows, dtype=object)
    cols["bytes"][:] = rng.integers(1, 1 << 40, rows)
    cols["packets"][:] = 1
    cols["flows"][:] = 1
    cols["row_id"][:] = np.arange(rows) + k * rows
    cols["created"][:] = T0
    return USAGE.to_arrow(cols)


def test_store_on_a_full_disk_keeps_usage_and_counts_dropped_flows(small_disk: SmallDisk) -> None:
    """Usage (money) waits in memory while the disk is full and is all written once space returns; raw flows are
    given up after the retries if the wall hits one of theirs (counted), else wait behind the usage; no partial file
    is left taking space."""
    store = ParquetStore(small_disk.path / "data", compact_after_s=0)
    sink = Sink([store], flush_rows=10**9, flush_interval_s=3600, retries=1, retry_backoff_s=0.05)
    usage_rows = flow_rows = 0
    try:
        for k in range(40):  # about 6 MiB of usage and flows into 2 MiB
            b = usage_batch(k)
            sink.add("usage", b)
            usage_rows += b.num_rows
            f = flows_batch(3000, t0_ms=T0, seed=k)
            sink.add("flows", f)
            flow_rows += f.num_rows
            sink.maybe_flush(now=sink.clock() + 7200)  # cut now
        deadline = time.monotonic() + 60
        stats = next(iter(sink.stats.values()))
        while stats.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats.errors > 0, "the disk never filled: the test proved nothing"
        time.sleep(1.0)  # the writer is now stuck retrying a usage batch
        assert stats.rows < usage_rows + flow_rows
        assert not list((small_disk.path / "data").rglob("*.tmp")), "a failed write left its partial file"
        small_disk.grow()
        sink.flush()  # returns once everything still held is durable
    finally:
        sink.close()
    stats = next(iter(sink.stats.values()))
    stored_usage = sum(pq.read_metadata(p).num_rows for p in store.files("usage"))
    stored_flows = sum(pq.read_metadata(p).num_rows for p in store.files("flows"))
    assert stored_usage == usage_rows  # every usage row, none twice
    assert stored_flows + stats.dropped_rows == flow_rows  # flows: stored + counted (dropped if the wall hit them)
    assert stats.rows == stored_usage + stored_flows


def test_spool_on_a_full_disk_with_clickhouse_down_keeps_usage(small_disk: SmallDisk, tmp_path: Path) -> None:
    """The ClickHouse output with its spool on a full disk and no server: usage is neither spooled nor insertable,
    so the Sink keeps retrying it; once space returns every usage row is in the spool (exact), flows beyond what
    fit are counted as dropped."""
    cfg = ClickHouseConfig(enabled=True, hosts=["127.0.0.1"], port=free_port(), database="faults",
                           insert_timeout_s=1)
    out = ClickHouseOutput(cfg, SpoolConfig(max_bytes=10**9), small_disk.path / "spool", max_backoff_s=1)
    sink = Sink([out], flush_rows=10**9, flush_interval_s=3600, retries=1, retry_backoff_s=0.05)
    usage_rows = flow_rows = 0
    try:
        for k in range(30):
            b = usage_batch(k)
            sink.add("usage", b)
            usage_rows += b.num_rows
            f = flows_batch(3000, t0_ms=T0, seed=k)
            sink.add("flows", f)
            flow_rows += f.num_rows
            sink.maybe_flush(now=sink.clock() + 7200)
        deadline = time.monotonic() + 60
        stats = next(iter(sink.stats.values()))
        while stats.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats.errors > 0, "the spool disk never filled: the test proved nothing"
        small_disk.grow()
        sink.flush()
    finally:
        sink.close()
    spool = Spool(small_disk.path / "spool", max_bytes=10**9)
    spooled = {"usage": 0, "flows": 0}
    for e in spool.entries():
        spooled[e.table] += e.rows
    assert spooled["usage"] == usage_rows
    assert spooled["flows"] + out.spool.dropped_rows.get("write_error", 0) == flow_rows


SPOOL_WRITER = textwrap.dedent("""
    import sys
    from bench.flowgen import flows_batch
    from storage.clickhouse.spool import Spool
    spool = Spool(sys.argv[1], max_bytes=10**10)
    batch = flows_batch(20_000)
    i = 0
    while True:
        i += 1
        spool.append("flows", i, batch)
        print(i, flush=True)
""")


def test_spool_writer_sigkilled_mid_write(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SPOOL_WRITER, str(tmp_path / "spool")], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    done = 0
    while done < 5:
        done = int(proc.stdout.readline())
    time.sleep(0.05)  # somewhere inside a later append
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    spool = Spool(tmp_path / "spool", max_bytes=10**10)  # restart: never raises
    ids = sorted(e.batch_id for e in spool.entries())
    assert ids[:done] == list(range(1, done + 1))  # every acknowledged append is there, in order
    assert all(spool.read(e).num_rows == 20_000 for e in spool.entries())  # and whole
    assert not list((tmp_path / "spool").glob("*.tmp"))


# --- SIGKILL during a rating run ---------------------------------------------------------------------------------

RATE_RUN = textwrap.dedent("""
    import sys
    from collector.config import load
    from rating.job import RatingJob
    from tests.rating.helpers import HOME_PLAN, assignments, plans
    store, now_ms, asg = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
    config = load(None, [f"store.path={store}", "rating.slice_subscribers=8", "rating.lease_ttl_s=4",
                         "rating.lookback_cycles=0"])
    job = RatingJob(config, plans=plans(HOME_PLAN), assignments=assignments(asg))
    report = job.run(now_ms=now_ms)
    job.close()
    print("done", flush=True)
""")


def _rating_store(path: Path, subscribers: int) -> None:
    from tests.rating.storeutil import usage_batch as rating_usage

    store = ParquetStore(path, compact_after_s=0)
    days = ["2026-11-02T09:00:00+01:00", "2026-11-03T21:00:00+01:00", "2026-11-04T10:05:00+01:00"]
    for i in range(subscribers):
        rows = [(f"sub{i:03d}", day, direction, "default", (i + 1) * 7_000_000_000 // (j + 1))
                for j, day in enumerate(days) for direction in ("down", "up")]
        store.write(USAGE, rating_usage(rows), i + 1)
    store.close() if hasattr(store, "close") else None


def _rated(path: Path) -> dict[str, tuple[int, int, int]]:
    from rating.tables import current_sql
    from storage.query import QueryEngine

    with QueryEngine.for_store(path) as engine:
        t = engine.query(current_sql(columns="record_id, version, bytes, amount_micros"))
    return {r["record_id"]: (r["version"], r["bytes"], r["amount_micros"]) for r in t.to_pylist()}


@pytest.mark.slow
def test_rating_run_sigkilled_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    import shutil

    from tests.rating.helpers import ms

    subscribers = 160
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    _rating_store(killed, subscribers)
    shutil.copytree(killed, clean)
    asg = tmp_path / "assignments.csv"
    asg.write_text("subscriber_id,plan_id,from\n" + "".join(
        f"sub{i:03d},home,2026-01-01T00:00:00+01:00\n" for i in range(subscribers)))
    now = str(ms("2026-11-10T00:00:00+01:00"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(store: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RATE_RUN, str(store), now, str(asg)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    proc = run(killed)
    deadline = time.monotonic() + 120
    rated_dir = killed / "rated_usage"
    while time.monotonic() < deadline and proc.poll() is None:
        if rated_dir.exists() and len(list(rated_dir.rglob("*.parquet"))) >= 3:  # some slices are written
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert "done" not in out, "the run finished before it was killed; the test proved nothing"
    partial = len(list(rated_dir.rglob("*.parquet")))
    assert partial >= 3
    time.sleep(4.5)  # the killed run's lease (rating.lease_ttl_s = 4) lapses
    for store in (killed, clean):
        p = run(store)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "done" in out, err[-3000:]
    after_kill, reference = _rated(killed), _rated(clean)
    assert len(reference) == subscribers * 6
    assert after_kill == reference  # the same records, amounts and versions: nothing lost, nothing twice
    assert {v for v, _, _ in after_kill.values()} == {1}


# --- an exporter clock wrong by hours ------------------------------------------------------------------------------

def _skewed_v9(skew_ms: int, n: int = 20) -> tuple[list[bytes], int]:
    """v9 datagrams from an exporter whose clock is ``skew_ms`` off (header time and flow times from that clock)."""
    from bench.exporter import V9Exporter, flow_template, random_flows

    exporter_now = int(time.time() * 1000) + skew_ms
    enc = V9Exporter(domain=1, boot_ms=exporter_now - 3_600_000)
    tmpl = flow_template(256)
    flows = random_flows(30 * n, export_ms=exporter_now, seed=11)
    out = [enc.datagram(enc.templates(tmpl), export_ms=exporter_now)]
    out += [enc.datagram(enc.flows(tmpl, flows[30 * i:30 * i + 30], exporter_now), export_ms=exporter_now)
            for i in range(n)]
    return out, sum(f.bytes for f in flows)


@pytest.mark.parametrize("skew_h, sets, kept, reason", [
    (-3, [], True, None),  # 3 h behind, within max_lateness_s (7 days): kept (late intervals become corrections)
    (-3, ["mediation.max_lateness_s=3600"], False, "too_old"),
    (+3, [], False, "future"),  # ahead by more than max_future_s (300 s)
])
def test_exporter_clock_hours_off(tmp_path: Path, skew_h: int, sets: list[str], kept: bool, reason: str | None) -> None:
    from prometheus_client import CollectorRegistry

    from collector.components import make_mediator
    from collector.config import load
    from collector.metrics import Metrics
    from collector.pipeline import Pipeline
    from tests.hardening.test_limits import ListSink

    cfg = load(None, [f"store.path={tmp_path}", *sets])
    mediator = make_mediator(cfg)
    sink = ListSink()
    pipeline = Pipeline(cfg, Metrics(CollectorRegistry()), sink, mediator)
    datagrams, sent_bytes = _skewed_v9(skew_h * 3_600_000)
    pipeline.process([(d, "192.0.2.9", int(time.time() * 1000)) for d in datagrams])
    for name, batch in mediator.close_all(int(time.time() * 1000)).items():
        if batch is not None and batch.num_rows:
            sink.add(name, batch)
    decoded = sum(pa.compute.sum(b.column("bytes")).as_py() for t, b in sink.added if t == "flows")
    assert decoded == sent_bytes  # the decoder keeps every record whatever the clock says
    c = mediator.counters
    accounted = c["bytes_attributed"] + c["bytes_unattributed"] + c["bytes_rejected"] + c["bytes_duplicate"]
    assert accounted == sent_bytes  # never lost silently
    rejects = [b for t, b in sink.added if t == "rejects"]
    rejected_bytes = sum(pa.compute.sum(b.column("bytes")).as_py() for b in rejects)
    assert rejected_bytes == c["bytes_rejected"]
    if kept:
        assert c["bytes_rejected"] == 0
        assert c["correction_rows"] > 0  # the hours-old intervals were closed: late data became correction rows
    else:
        assert c["bytes_rejected"] == sent_bytes
        assert {r for b in rejects for r in b.column("reason").to_pylist()} == {reason}
        assert c[f"rejected_{reason}"] > 0


# --- corrupt files at start: the daemon --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.external
def test_daemon_starts_over_corrupt_store_and_spool_files(tmp_path: Path, clickhouse_server) -> None:
    """A truncated Parquet file and garbage in the store, a truncated batch in the spool: `flowmed run` starts
    (READY), sets them aside with an error (the spool's when delivery reads it), stores and delivers the new flows
    to clickhouse-server 18.16, and stops cleanly."""
    from tests.collector.daemon import Daemon, V9Traffic, stored_flows

    base = tmp_path / "d"
    data = base / "data"
    store = ParquetStore(data, compact_after_s=0)
    store.write(FLOWS, flows_batch(500, t0_ms=T0), 1)
    good = store.files("flows")[0]
    raw = good.read_bytes()
    (good.parent / "00000000000000000007.parquet").write_bytes(raw[: len(raw) // 2])
    (good.parent / "00000000000000000008.parquet").write_bytes(os.urandom(3000))
    spool = Spool(data / "spool", max_bytes=10**9)
    entry = spool.append("flows", 9, flows_batch(100, t0_ms=T0))
    assert entry is not None
    blob = entry.path.read_bytes()
    entry.path.write_bytes(blob[: len(blob) // 3])
    del spool
    db = "faults_corrupt"
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    daemon = Daemon(base, "output.clickhouse.enabled=true", f"output.clickhouse.port={clickhouse_server.port}",
                    f"output.clickhouse.database={db}", "output.clickhouse.batch_interval_s=0.5",
                    "mediation.enabled=false", flush_interval_s=0.5)
    try:
        daemon.wait_message("READY=1")
        traffic = V9Traffic()
        sent = traffic.send(daemon.port, 5)
        traffic.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (data / "spool" / "corrupt").is_dir():
            time.sleep(0.2)
    finally:
        assert daemon.stop() == 0
    log = daemon.log_text()
    assert "Traceback" not in log
    assert stored_flows(data) == 500 + sent  # the good file and the new flows; the corrupt ones are not read
    quarantined = sorted(p.name for p in (data / "quarantine").rglob("*.parquet"))
    assert quarantined == ["00000000000000000007.parquet", "00000000000000000008.parquet"]
    assert int(clickhouse_server.query(f"SELECT count() FROM {db}.flows")) == sent  # delivered, the bad batch not
    assert [p.name for p in (data / "spool" / "corrupt").iterdir()] == [entry.path.name]
