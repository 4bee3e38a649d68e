"""The ClickHouse output against a real clickhouse-server 18.16: exact totals, addresses, exactly-once replays."""

from __future__ import annotations

import ipaddress
import re
import time

import numpy as np
import pyarrow as pa
import pytest

from collector.config import load
from decoders.schema import FLOWS
from storage.clickhouse.client import connect
from storage.clickhouse.columns import arrow_to_columns
from storage.clickhouse.ddl import LEGACY, MODERN
from storage.clickhouse.output import ClickHouseOutput
from storage.clickhouse.spool import Spool
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.storage.clickhouse_helpers import duplicate_batches, flow_batch, server_totals, totals

pytestmark = pytest.mark.external


@pytest.fixture
def db(clickhouse_server, request) -> str:
    name = "out_" + re.sub(r"\W", "_", request.node.name)[-40:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {name}")
    return name


def make_output(server, db, spool_dir, **kw) -> ClickHouseOutput:
    cfg = ClickHouseConfig(enabled=True, port=server.port, database=db, **kw)
    return ClickHouseOutput(cfg, SpoolConfig(), spool_dir, retention_interval_s=10**9, max_backoff_s=1.0)


def test_flows_exact_totals_via_clickhouse_client_and_query_engine(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "spool")
    for k in range(12):
        out.write(FLOWS, flow_batch(k), 1_000 + k)
    assert out.drain(60), out.status()
    out.close()
    assert out.stats["batches_inserted"] == 12 and out.stats["rows_inserted"] == 12_000
    assert out.stats["inserts"] < 12  # small batches share inserts
    assert server_totals(clickhouse_server, db) == totals(range(12))
    assert duplicate_batches(clickhouse_server, db) == ""
    # Addresses, including IPv4-mapped ones ending in zero bytes and IPv6, are stored byte for byte.
    got = clickhouse_server.query(f"SELECT DISTINCT IPv6NumToString(src_addr) FROM {db}.flows "
                                  "WHERE src_port = 1 AND batch_id = 1000")
    assert got == "::ffff:10.0.1.0\n"
    got = clickhouse_server.query(f"SELECT count() FROM {db}.flows WHERE dst_addr = IPv6StringToNum('2001:db8::c7')")
    assert int(got) == 12 * 5  # i % 200 == 199 for 5 of every 1000 rows
    assert clickhouse_server.query(f"SELECT DISTINCT src_addr FROM {db}_read.flows WHERE src_port = 2 "
                                   "AND batch_id = 1000") == "::ffff:10.0.2.0\n"
    # The same answers through flowmed's query engine (the path `flowmed query --target clickhouse` takes).
    from storage.query import QueryEngine

    config = load(None, [f"output.clickhouse.port={clickhouse_server.port}", f"output.clickhouse.database={db}",
                         "output.clickhouse.enabled=true"])
    with QueryEngine.for_config(config, target="clickhouse") as engine:
        t = engine.query("SELECT count() AS n, sum(bytes) AS b, sum(packets) AS p FROM flows")
        assert tuple(t.to_pylist()[0].values()) == totals(range(12))
        rows = engine.query("SELECT src_addr, dst_addr, exporter, time_received FROM flows "
                            "WHERE batch_id = 1001 AND src_port = 3").to_pylist()
        assert rows[0]["src_addr"] == "10.0.3.0" and rows[0]["dst_addr"] == "2001:db8::3"
        assert rows[0]["exporter"] == "127.0.0.2"
        assert rows[0]["time_received"].timestamp() == (1_764_000_000_000 + 1000 + 3) // 1000  # 18.16: seconds
        with pytest.raises(Exception, match="readonly"):
            engine.query("DROP TABLE flows")


def test_batch_found_stored_at_start_is_not_inserted_again(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "a")
    out.write(FLOWS, flow_batch(1), 11)
    assert out.drain(60)
    out.close()
    # A crash after the insert but before the spool file was deleted leaves the file behind: the next start finds
    # it, checks the server, and does not insert it twice.
    Spool(tmp_path / "b", 10**9).append("flows", 11, flow_batch(1))
    Spool(tmp_path / "b", 10**9).append("flows", 12, flow_batch(2))
    out = make_output(clickhouse_server, db, tmp_path / "b")
    assert out.drain(60)
    out.close()
    assert out.stats["already_stored"] == 1 and out.stats["inserted"] == 1
    assert server_totals(clickhouse_server, db) == totals([1, 2])


def test_partly_stored_batch_is_repaired_not_duplicated(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "a")
    out.write(FLOWS, flow_batch(0), 20)
    assert out.drain(60)
    out.close()
    # Half of batch 21 landed (an insert split over partitions or blocks, cut in the middle).
    client = connect(ClickHouseConfig(port=clickhouse_server.port))
    half = flow_batch(1).slice(0, 500)
    client.execute(f"INSERT INTO {db}.flows ({', '.join(FLOWS.column_names)}) VALUES",
                   arrow_to_columns(FLOWS, half, LEGACY, 21), columnar=True)
    client.disconnect()
    Spool(tmp_path / "b", 10**9).append("flows", 21, flow_batch(1))
    out = make_output(clickhouse_server, db, tmp_path / "b")
    assert out.drain(60)
    out.close()
    assert out.stats["partial_repaired"] == 1
    assert server_totals(clickhouse_server, db) == totals([0, 1])
    assert duplicate_batches(clickhouse_server, db) == ""


def test_flows_disabled_and_mediated_tables_still_written(clickhouse_server, db, tmp_path):
    from collector.tables import load_tables

    tables = load_tables()
    out = make_output(clickhouse_server, db, tmp_path / "s", flows=False)
    out.write(FLOWS, flow_batch(0), 1)
    if "reconciliation" in tables:
        rec = tables["reconciliation"]
        out.write(rec, rec.to_arrow({"records_in": np.array([5, 6], dtype=np.uint64),
                                     "interval_start": np.array([1_764_000_000_000] * 2)}), 2)
    assert out.drain(60)
    out.close()
    assert int(clickhouse_server.query(f"SELECT count() FROM {db}.flows")) == 0
    if "reconciliation" in tables:
        assert clickhouse_server.query(f"SELECT sum(records_in) FROM {db}.reconciliation") == "11\n"


def test_bad_batch_is_a_bug_not_spooled(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "s")
    bad = pa.RecordBatch.from_pydict({"nonsense": [1]})
    with pytest.raises(ValueError, match="unknown columns"):
        out.write(FLOWS, bad, 1)
    out.close()
    assert len(out.spool) == 0


def test_arrow_to_columns_types():
    batch = flow_batch(3, rows=4)
    legacy = dict(zip(FLOWS.column_names, arrow_to_columns(FLOWS, batch, LEGACY, 99), strict=True))
    assert legacy["time_received"].dtype == np.uint32
    assert legacy["time_received"][0] == (1_764_000_000_000 + 3000) // 1000
    assert legacy["src_addr"].dtype == np.dtype("S16") and legacy["bytes"].dtype == np.uint64
    assert legacy["batch_id"].tolist() == [99] * 4
    modern = dict(zip(FLOWS.column_names, arrow_to_columns(FLOWS, batch, MODERN, 99), strict=True))
    assert modern["time_received"].dtype == np.int64 and modern["time_received"][0] == 1_764_000_003_000
    assert isinstance(modern["src_addr"], list)
    assert ipaddress.IPv6Address(modern["src_addr"][1].ljust(16, b"\0")) == ipaddress.IPv6Address("::ffff:10.0.1.0")
    # An older spooled batch without a newer column: zero-filled.
    old = batch.drop_columns(["nat_event"])
    cols = dict(zip(FLOWS.column_names, arrow_to_columns(FLOWS, old, LEGACY), strict=True))
    assert cols["nat_event"].tolist() == [0] * 4


def test_batches_coalesce_up_to_batch_rows_and_wait_at_most_batch_interval(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "s", batch_rows=2500, batch_interval_s=3600)
    for k in range(12):
        out.write(FLOWS, flow_batch(k), 300 + k)
    # Full groups (2 batches: a third would pass batch_rows) go at once; the last group waits (up to
    # batch_interval_s) for more rows.
    deadline = time.monotonic() + 60
    while out.status()["spool_batches"] > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert out.status()["spool_batches"] == 2
    assert out.drain(60)  # draining sends at once, in groups of at most batch_rows rows
    out.close()
    assert out.stats["inserts"] == 6 and out.stats["batches_inserted"] == 12
    assert server_totals(clickhouse_server, db) == totals(range(12))
    assert duplicate_batches(clickhouse_server, db) == ""
    # Without a drain, a small group goes once its oldest batch is batch_interval_s old.
    out = make_output(clickhouse_server, db, tmp_path / "s2", batch_interval_s=0.3)
    out.write(FLOWS, flow_batch(20), 320)
    deadline = time.monotonic() + 60
    while out.stats["batches_inserted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.stats["batches_inserted"] == 1
    out.close()
    assert server_totals(clickhouse_server, db) == totals([*range(12), 20])


def native_file(table, batch, caps, batch_id, path):
    """``batch`` as clickhouse-driver serialises it for an insert, as a Native-format file (no protocol header)."""
    from clickhouse_driver.block import ColumnOrientedBlock
    from clickhouse_driver.bufferedwriter import CompressedBufferedWriter
    from clickhouse_driver.client import Client
    from clickhouse_driver.context import Context
    from clickhouse_driver.streams.native import BlockOutputStream

    from storage.clickhouse.ddl import column_type

    class NoBlockInfo:  # a revision-0 "server": Native format without the protocol's block header
        used_revision = 0
        timezone = "UTC"

    class Collect:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk) -> None:
            self.data += bytes(chunk)

    ctx = Context()
    ctx.server_info = NoBlockInfo()
    ctx.settings = {}
    ctx.client_settings = Client("127.0.0.1", settings={"use_numpy": True}).client_settings  # never connects
    columns = arrow_to_columns(table, batch, caps, batch_id)
    block = ColumnOrientedBlock([(c.name, column_type(c, caps)) for c in table.columns], columns)
    sink = Collect()
    out = CompressedBufferedWriter(sink, 1 << 20)  # a "compressor" that keeps the raw bytes
    BlockOutputStream(out, ctx).write(block)
    path.write_bytes(bytes(sink.data))
    return path


@pytest.mark.parametrize("caps", [MODERN, LEGACY], ids=["modern", "18.16"])
def test_driver_columns_read_back_by_chdb(caps, tmp_path):
    """The columns for a modern server (IPv6, LowCardinality, DateTime64(3)) cannot be inserted into a real modern
    server here (chDB has no native-protocol port), so they are serialised by clickhouse-driver's own block writer
    into Native format and read back by chDB (ClickHouse 26.x): every value as sent."""
    import chdb

    path = native_file(FLOWS, flow_batch(2, rows=300), caps, 77, tmp_path / "block.native")
    text = "toString({})" if caps.ipv6 else "IPv6NumToString({})"  # IPv6, or the 16 bytes of FixedString(16)
    got = chdb.query(f"SELECT count(), sum(bytes), sum(packets), uniqExact(batch_id), any(batch_id), "
                     f"toUInt64(max(toUnixTimestamp64Milli(toDateTime64(time_received, 3)))), "
                     f"{text.format('any(src_addr)')} "
                     f"FROM file('{path}', Native) WHERE src_port = 1", "CSV").bytes().decode().strip()
    last_ms = 1_764_000_000_000 + 2000 + 1
    expected_ms = last_ms if caps.datetime64 else last_ms // 1000 * 1000
    assert got == f'1,6,2,1,77,{expected_ms},"::ffff:10.0.1.0"'
    total = chdb.query(f"SELECT count(), sum(bytes) FROM file('{path}', Native)", "CSV").bytes().decode().strip()
    assert total == f"300,{sum((i + 1) * 3 for i in range(300))}"
    addrs = chdb.query(f"SELECT DISTINCT {text.format('dst_addr')} FROM file('{path}', Native) WHERE src_port = 199",
                       "CSV").bytes().decode().strip()
    assert addrs == '"2001:db8::c7"'


@pytest.mark.parametrize("caps", [MODERN, LEGACY], ids=["modern", "18.16"])
def test_usage_columns_with_low_cardinality_strings_read_back_by_chdb(caps, tmp_path):
    import chdb

    from collector.tables import load_tables

    usage = load_tables()["usage"]
    n = 500
    batch = usage.to_arrow({
        "interval_start": np.full(n, 1_764_000_000_000, dtype=np.int64),
        "subscriber_id": np.array([f"sub-ü-{i % 7}" for i in range(n)], dtype=object),
        "direction": np.array(["up", "down"] * (n // 2), dtype=object),
        "traffic_class": np.array(["all"] * n, dtype=object),
        "exporter": np.array([ipaddress.IPv6Address("::ffff:192.0.2.1").packed] * n, dtype="S16"),
        "bytes": np.arange(n, dtype=np.uint64),
    })
    path = native_file(usage, batch, caps, 0, tmp_path / "usage.native")
    text = "toString(exporter)" if caps.ipv6 else "IPv6NumToString(exporter)"
    got = chdb.query(f"SELECT subscriber_id, direction, {text}, sum(bytes), count() FROM file('{path}', Native) "
                     "WHERE subscriber_id = 'sub-ü-3' GROUP BY 1, 2, 3 ORDER BY 2", "CSV").bytes().decode().split()
    expected = {d: (sum(i for i in range(n) if i % 7 == 3 and ("up", "down")[i % 2] == d),
                    sum(1 for i in range(n) if i % 7 == 3 and ("up", "down")[i % 2] == d)) for d in ("down", "up")}
    assert got == [f'"sub-ü-3","{d}","::ffff:192.0.2.1",{expected[d][0]},{expected[d][1]}' for d in ("down", "up")]


def test_disk_refusing_the_spool_falls_back_to_a_direct_insert_or_counts(clickhouse_server, db, tmp_path,
                                                                         monkeypatch):
    out = make_output(clickhouse_server, db, tmp_path / "s")
    assert out.drain(30)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(out.spool, "_write", disk_full)
    out.write(FLOWS, flow_batch(0), 400)  # the spool cannot take it: inserted directly, synchronously
    assert server_totals(clickhouse_server, db) == totals([0])
    assert out.stats["batches_inserted"] == 1
    # The server is unreachable as well: the rows are lost, and counted and logged as such.
    out.config = ClickHouseConfig(enabled=True, port=1, database=db, insert_timeout_s=1)
    out._disconnect()
    out.write(FLOWS, flow_batch(1), 401)
    assert out.spool.dropped_rows["write_error"] == 1000
    assert out.status()["dropped_rows"] == 1000
    out.close(timeout=1)
    assert server_totals(clickhouse_server, db) == totals([0])


def test_retention_job_drops_old_partitions(clickhouse_server, db, tmp_path):
    out = make_output(clickhouse_server, db, tmp_path / "a")
    assert out.drain(30)
    out.close()
    now = int(time.time())
    clickhouse_server.query(f"INSERT INTO {db}.flows (time_received, bytes) VALUES ({now - 40 * 86400}, 1), "
                            f"({now - 86400}, 2), ({now}, 3)")
    cfg = ClickHouseConfig(enabled=True, port=clickhouse_server.port, database=db, flows_retention_days=30)
    out = ClickHouseOutput(cfg, SpoolConfig(), tmp_path / "b", retention_interval_s=3600)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and clickhouse_server.query(f"SELECT sum(bytes) FROM {db}.flows") != "5\n":
        time.sleep(0.1)
    out.close()
    assert clickhouse_server.query(f"SELECT sum(bytes) FROM {db}.flows") == "5\n"


def test_spooled_batch_of_another_schema_is_set_aside_not_retried_forever(clickhouse_server, db, tmp_path):
    spool = Spool(tmp_path / "s", 10**9)
    spool.append("flows", 1, flow_batch(0).append_column("column_from_the_future", pa.array([1] * 1000)))
    spool.append("flows", 2, flow_batch(1))
    out = make_output(clickhouse_server, db, tmp_path / "s")
    assert out.drain(60)
    out.close()
    assert out.spool.dropped_rows["corrupt"] == 1000
    assert server_totals(clickhouse_server, db) == totals([1])
    assert len(list((tmp_path / "s" / "corrupt").iterdir())) == 1


def test_every_column_kind_round_trips_through_output_and_query_backend(clickhouse_server, db, tmp_path):
    """Edge values of every column kind, written by the output and read back by `flowmed query`'s backend."""
    from decoders.schema import KINDS, Column, Table
    from storage.clickhouse.query import ClickHouseBackend

    table = Table("kinds", "every kind", tuple(Column(f"c_{k}", k, k) for k in KINDS) + (Column("n", "u32", "row"),),
                  time_column="c_timestamp_ms", order_by=("n",))
    addrs = [bytes(16), b"\xff" * 16, ipaddress.IPv6Address("::ffff:10.0.0.0").packed,
             ipaddress.IPv6Address("2001:db8::").packed, ipaddress.IPv6Address("fe80::1:0").packed]
    n = len(addrs)
    cols = {
        "c_timestamp_ms": np.array([0, 1_764_000_000_999, 4_294_967_295_000, 1_000, 86_400_123], dtype=np.int64),
        "c_ip": np.array(addrs, dtype="S16"),
        "c_u8": np.array([0, 255, 1, 2, 3], dtype=np.uint8),
        "c_u16": np.array([0, 65535, 1, 2, 3], dtype=np.uint16),
        "c_u32": np.array([0, 2**32 - 1, 1, 2, 3], dtype=np.uint32),
        "c_u64": np.array([0, 2**64 - 1, 1, 2, 3], dtype=np.uint64),
        "c_i32": np.array([-(2**31), 2**31 - 1, 0, -1, 1], dtype=np.int32),
        "c_i64": np.array([-(2**63), 2**63 - 1, 0, -1, 1], dtype=np.int64),
        "c_string": np.array(["", "ü€😀", "x" * 1000, "a\tb\nc", "'quoted'"], dtype=object),
        "n": np.arange(n, dtype=np.uint32),
    }
    cfg = ClickHouseConfig(enabled=True, port=clickhouse_server.port, database=db)
    out = ClickHouseOutput(cfg, SpoolConfig(), tmp_path / "s", tables=[table])
    out.write(table, table.to_arrow(cols), 5)
    assert out.drain(60), out.status()
    out.close()
    backend = ClickHouseBackend(cfg)
    try:
        got = backend.query("SELECT * FROM kinds ORDER BY n")
    finally:
        backend.close()
    assert got.column("c_ip").type == pa.binary(16)
    assert got.column("c_ip").to_pylist() == addrs
    ms = got.column("c_timestamp_ms").cast(pa.int64()).to_pylist()
    assert ms == [v // 1000 * 1000 for v in cols["c_timestamp_ms"].tolist()]  # 18.16 DateTime: whole seconds
    for k in ("u8", "u16", "u32", "u64", "i32", "i64", "string"):
        assert got.column(f"c_{k}").to_pylist() == cols[f"c_{k}"].tolist(), k


def test_query_backend_result_types(clickhouse_server, db, tmp_path):
    from storage.clickhouse.query import ClickHouseBackend

    out = make_output(clickhouse_server, db, tmp_path / "s")
    assert out.drain(30)
    out.close()
    backend = ClickHouseBackend(ClickHouseConfig(port=clickhouse_server.port, database=db))
    try:
        empty = backend.query("SELECT time_received, src_addr, bytes, version FROM flows LIMIT 0")
        assert [str(t) for t in empty.schema.types] == ["timestamp[ms, tz=UTC]", "fixed_size_binary[16]", "uint64",
                                                          "uint8"]
        t = backend.query("SELECT avg(number) AS a, groupArray(number) AS g, toDate('2026-01-01') AS d, "
                          "toDecimal64(1.5, 2) AS m, 'x' AS s FROM numbers(3)")
        row = t.to_pylist()[0]
        assert row["a"] == 1.0 and row["g"] == [0, 1, 2] and str(row["m"]) == "1.5" and row["s"] == "x"
        assert row["d"].isoformat() == "2026-01-01T00:00:00+00:00"
    finally:
        backend.close()


def test_fails_over_to_the_next_host(clickhouse_server, db, tmp_path):
    # The server listens on 127.0.0.1 only: 127.0.0.2 refuses, the output goes on to the next host.
    out = make_output(clickhouse_server, db, tmp_path / "s", hosts=["127.0.0.2", "127.0.0.1"])
    out.write(FLOWS, flow_batch(0), 1)
    assert out.drain(60), out.status()
    out.close()
    assert server_totals(clickhouse_server, db) == totals([0])
