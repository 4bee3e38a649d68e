"""Deterministic NAT (RFC 7422, ``compliance.deterministic``): the mapping both ways, the trace of an outside address
and port without any NAT log on the embedded store and on clickhouse-server 18.16, and the report's public side."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from collector.commands.compliance import run_trace, verdict
from collector.config import load
from collector.configtree import ConfigError
from decoders.schema import ipv4_mapped
from mediation.compliance.deterministic import DeterministicNat
from mediation.compliance.report import fill_deterministic
from mediation.compliance.tables import IP_DETAIL_RECORDS, NAT_EVENTS
from mediation.subscribers.bindings import Bindings
from mediation.tables import BINDINGS
from storage.clickhouse.client import connect, executor, server_caps
from storage.clickhouse.columns import arrow_to_columns
from storage.clickhouse.query import ClickHouseBackend
from storage.clickhouse.schema import SchemaManager
from storage.query import QueryEngine
from storage.settings import ClickHouseConfig
from storage.store import ParquetStore
from tests.mediation.compliance.scenario import T0

RULE = '{inside="100.64.0.0/22", outside="203.0.113.0/28", ports_per_host=1008}'


def det() -> DeterministicNat:
    return DeterministicNat(load(None, [f"compliance.deterministic=[{RULE}]"]).compliance.deterministic)


def test_mapping_both_ways():
    d = det()
    m = d.outside_of("100.64.0.0")
    assert (m.outside, m.first_port, m.last_port) == ("203.0.113.0", 1024, 2031)
    m = d.outside_of("100.64.0.127")  # 64 hosts per outside address: host 127 is the last block of .1
    assert (m.outside, m.first_port, m.last_port) == ("203.0.113.1", 64528, 65535)
    assert d.inside_of("203.0.113.1", 1500).inside == "100.64.0.64"
    assert d.inside_of("203.0.113.1", 65000).inside == "100.64.0.127"
    assert d.inside_of("203.0.113.15", 65535).inside == "100.64.3.255"  # the last host of the /22
    for i in range(0, 1024, 37):  # round trip over the prefix
        inside = f"100.64.{i // 256}.{i % 256}"
        m = d.outside_of(inside)
        assert d.inside_of(m.outside, m.first_port).inside == inside
        assert d.inside_of(m.outside, m.last_port).inside == inside
    assert d.inside_of("203.0.113.1", 1000) is None  # below first_port
    assert d.inside_of("203.0.113.16", 2000) is None  # outside the outside prefix
    assert d.outside_of("100.64.4.0") is None and d.outside_of("2001:db8::1") is None
    assert not DeterministicNat([])


def test_rules_are_validated():
    with pytest.raises(ConfigError, match="at most 512 hosts"):
        load(None, ['compliance.deterministic=[{inside="100.64.0.0/22", outside="203.0.113.0/28", '
                    'ports_per_host=2016}]'])
    with pytest.raises(ConfigError, match="IPv4 prefix"):
        load(None, ['compliance.deterministic=[{inside="2001:db8::/64", outside="203.0.113.0/28", '
                    'ports_per_host=64}]'])


def batches():
    """dora holds 100.64.0.64 (deterministically 203.0.113.1 ports 1024-2031); one flow of hers; no NAT log."""
    b = Bindings(None)
    b.open("dora", "100.64.0.64", T0 - 3600_000, source="static", session_id="dora-line")
    binding = b.commit()
    flow = IP_DETAIL_RECORDS.to_arrow({
        "flow_start": np.array([T0 + 10_000]), "flow_end": np.array([T0 + 20_000]),
        "protocol": np.array([6], np.uint8), "src_addr": ipv4_mapped(np.array([0x64400040])),
        "src_port": np.array([40000], np.uint16), "dst_addr": ipv4_mapped(np.array([0xC0000250])),
        "dst_port": np.array([443], np.uint16), "bytes": np.array([777], np.uint64),
        "packets": np.array([3], np.uint64), "binding_id": np.array([1], np.uint64)})
    strings = {"subscriber_id": pa.array(["dora"]), "status": pa.array(["attributed"])}
    arrays = [strings.get(n, flow.column(n)) for n in IP_DETAIL_RECORDS.column_names]
    flow = pa.RecordBatch.from_arrays(arrays, schema=IP_DETAIL_RECORDS.arrow_schema)
    return [(BINDINGS, binding), (IP_DETAIL_RECORDS, flow), (NAT_EVENTS, NAT_EVENTS.to_arrow({}))]


def check(answer) -> None:
    v = verdict(answer, T0 + 15_000)
    assert (v.subscriber_id, v.private_addr) == ("dora", "100.64.0.64")
    assert v.nat.startswith("block start deterministic NAT (RFC 7422): 203.0.113.1 ports 1024-2031")
    rows = answer.to_pylist()
    assert [r["evidence"] for r in rows] == ["nat", "binding", "flow"]
    assert rows[2]["bytes"] == 777


def test_trace_on_the_store(tmp_path):
    store = ParquetStore(tmp_path, recover=False)
    for i, (table, batch) in enumerate(batches(), start=1):
        store.write(table, batch, i)
    store.close()
    with QueryEngine.for_store(tmp_path) as engine:
        check(run_trace(engine, address="203.0.113.1", port=1500, at_ms=T0 + 15_000, deterministic=det()))
        # without the rule, nothing names her
        assert verdict(run_trace(engine, address="203.0.113.1", port=1500, at_ms=T0 + 15_000)).subscriber_id == ""


@pytest.mark.external
def test_trace_on_clickhouse(clickhouse_server):
    cfg = ClickHouseConfig(port=clickhouse_server.port, database="compliance_deterministic")
    client = connect(cfg)
    caps = server_caps(client)
    client.execute("DROP DATABASE IF EXISTS compliance_deterministic")
    SchemaManager(executor(client), caps, cfg.database).ensure([IP_DETAIL_RECORDS, NAT_EVENTS, BINDINGS])
    for table, batch in batches():
        if batch.num_rows:
            client.execute(f"INSERT INTO {cfg.database}.{table.name} ({', '.join(table.column_names)}) VALUES",
                           arrow_to_columns(table, batch, caps), columnar=True)
    client.disconnect()
    engine = QueryEngine(ClickHouseBackend(cfg))
    try:
        check(run_trace(engine, address="203.0.113.1", port=1500, at_ms=T0 + 15_000, deterministic=det()))
    finally:
        engine.close()


def test_report_public_side():
    rows = [{"source_ip": "100.64.0.64", "public_ip": "", "public_port": ""},
            {"source_ip": "100.64.9.1", "public_ip": "", "public_port": ""},
            {"source_ip": "100.64.0.1", "public_ip": "198.51.100.1", "public_port": 5}]
    assert fill_deterministic(rows, det()) == 1
    assert [(r["public_ip"], r["public_port"]) for r in rows] == [("203.0.113.1", "1024-2031"), ("", ""),
                                                                  ("198.51.100.1", 5)]
