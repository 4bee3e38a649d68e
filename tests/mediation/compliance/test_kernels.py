"""The compliance stage's compiled passes (:mod:`mediation.compliance.kernels`): the same answers as the whole-array
numpy expressions they replace, at the edges (times before 1970, 0.0.0.0 as post-NAT source, records without
traffic, ids outside the binding cache), and no compiling after :func:`warm_up`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from collector.config import load
from decoders.schema import FLOWS, ipv4_mapped
from mediation.compliance import kernels
from mediation.compliance.stage import ComplianceStage, translated
from mediation.correlate import address_words, readonly
from mediation.subscribers.bindings import Bindings, parse_network
from tests.mediation.mediation_helpers import T0, a16

NAT_VALUES = ["::", "::ffff:0.0.0.0", "::ffff:203.0.113.7", "2001:db8::", "::1", "::ffff:0.0.0.1", "0.0.0.0"]


def _scan(nbytes, packets, code, fw, nat):
    n = len(nbytes)
    traffic, is_nat = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)
    counts = kernels.scan(readonly(nbytes, np.uint64), readonly(packets, np.uint64), readonly(code, np.uint8),
                          readonly(fw, np.uint8), address_words(nat), traffic, is_nat)
    return traffic[:counts[0]], is_nat, counts[1:]


def test_scan_matches_numpy():
    r = np.random.default_rng(3)
    n = 500
    nat = np.array([a16(v) for v in NAT_VALUES], dtype="S16")[r.integers(0, len(NAT_VALUES), n)]
    nbytes = r.integers(0, 2, n).astype(np.uint64) * 100
    packets = r.integers(0, 2, n).astype(np.uint64)
    code = r.choice(np.array([0, 0, 0, 1, 2, 16], np.uint8), n)
    fw = r.choice(np.array([0, 0, 1, 2, 5], np.uint8), n)
    traffic, is_nat, (events, nsel, seen) = _scan(nbytes, packets, code, fw, nat)
    has = (nbytes > 0) | (packets > 0)
    assert traffic.tolist() == np.flatnonzero(has).tolist()
    assert is_nat.tolist() == translated(nat).tolist()
    assert events == int((code > 0).sum())
    assert nsel == int(((code == 0) & ((fw == 1) | (fw == 2)) & is_nat).sum())
    assert seen == int(((code == 0) & (fw != 1) & (fw != 2) & is_nat & has).sum())
    empty = np.zeros(0, dtype=np.uint64)
    assert _scan(empty, empty, empty.astype(np.uint8), empty.astype(np.uint8), np.zeros(0, "S16"))[2] == (0, 0, 0)


def test_ipdr_rows_matches_numpy():
    r = np.random.default_rng(4)
    n, m = 400, 300
    rows = np.sort(r.choice(n, m, replace=False)).astype(np.int64)
    start = r.integers(-5_000, 5_000, n).astype(np.int64)  # before 1970 too: milliseconds stay 0-999
    end = start + r.integers(0, 3_000, n)
    nat = np.array([a16(v) for v in NAT_VALUES], dtype="S16")[r.integers(0, len(NAT_VALUES), n)]
    nat_port = r.integers(0, 65536, n).astype(np.uint16)
    is_nat = translated(nat)
    ssub = np.where(r.random(m) < 0.5, r.integers(0, 50, m), -1).astype(np.int32)
    dsub = np.where(r.random(m) < 0.5, r.integers(0, 50, m), -1).astype(np.int32)
    sbid = np.where(ssub >= 0, r.integers(0, 10**6, m), -1).astype(np.int64)
    dbid = np.where(dsub >= 0, r.integers(0, 10**6, m), -1).astype(np.int64)
    status, name = np.empty(m, np.int32), np.empty(m, np.int32)
    bid, binding_id = np.empty(m, np.int64), np.empty(m, np.uint64)
    smsec, emsec, port_out = (np.empty(m, np.uint16) for _ in range(3))
    nat_out, counts = np.empty((m, 2), np.uint64), np.zeros(3, np.int64)
    base = 7 << 40
    kernels.ipdr_rows(rows, readonly(start, np.int64), readonly(end, np.int64), address_words(nat),
                      readonly(nat_port, np.uint16), is_nat, readonly(ssub, np.int32), readonly(sbid, np.int64),
                      readonly(dsub, np.int32), readonly(dbid, np.int64), base, 50, status, name, bid, binding_id,
                      smsec, emsec, nat_out, port_out, counts)
    src, dst = ssub >= 0, (ssub < 0) & (dsub >= 0)
    want_status = np.where(src, 0, np.where(dst, 1, 2))
    want_bid = np.where(src, sbid, np.where(dst, dbid, -1))
    assert status.tolist() == want_status.tolist()
    assert counts.tolist() == np.bincount(want_status, minlength=3).tolist()
    assert name.tolist() == np.where(src, ssub, np.where(dst, dsub, 50)).tolist()
    assert bid.tolist() == want_bid.tolist()
    assert binding_id.tolist() == np.where(want_bid >= 0, want_bid + base, 0).tolist()
    assert smsec.tolist() == (start[rows] % 1000).tolist() and emsec.tolist() == (end[rows] % 1000).tolist()
    assert min(smsec.tolist()) >= 0 and max(smsec.tolist()) <= 999
    want_nat = np.where(is_nat[rows], nat[rows], np.array([b"\0" * 16], "S16"))
    assert nat_out.view("S16").ravel().tolist() == want_nat.tolist()
    assert port_out.tolist() == np.where(is_nat[rows], nat_port[rows], 0).tolist()


def _flows(n: int, *, traffic_every: int = 1) -> pa.RecordBatch:
    r = np.random.default_rng(n)
    i = np.arange(n)
    cols = {"time_received": np.full(n, T0 + 60_000), "flow_start": np.full(n, T0) + i, "flow_end": np.full(n, T0) + i,
            "exporter": ipv4_mapped(np.full(n, 0xC0000201, np.uint32)), "version": np.full(n, 10, np.uint8),
            "src_addr": ipv4_mapped((0x0A000000 + r.integers(0, 40, n)).astype(np.uint32)),
            "dst_addr": ipv4_mapped((0x08080000 + r.integers(0, 40, n)).astype(np.uint32)),
            "src_port": np.full(n, 1000, np.uint16), "dst_port": np.full(n, 443, np.uint16),
            "protocol": np.full(n, 6, np.uint8),
            "bytes": np.where(i % traffic_every == 0, 100, 0).astype(np.uint64),
            "packets": np.where(i % traffic_every == 0, 1, 0).astype(np.uint64),
            "post_nat_src_addr": np.where(i % 3 == 0, a16("203.0.113.9"), a16("0.0.0.0")).astype("S16"),
            "post_nat_src_port": np.full(n, 4000, np.uint16)}
    return FLOWS.to_arrow(cols)


def test_warm_up_compiles_what_batches_use(tmp_path):
    """After ``warm_up``, batches with and without records lacking traffic, with translated flows, binding ids
    new to the cache and the Mediator's attribution or none use the signatures it compiled."""
    kernels.warm_up()
    compiled = [kernels.scan, kernels.ipdr_rows, kernels.binding_slots]
    before = [len(k.signatures) for k in compiled]
    b = Bindings(str(tmp_path / "b.db"))
    b.open_many([(f"s{i}", parse_network(f"10.0.0.{i}"), T0 - 1000, 2**62) for i in range(20)],
                session_ids=[f"k{i}" for i in range(20)])
    b.commit()
    b.refresh()
    stage = ComplianceStage(load(None, ["compliance.enabled=true"]), b)
    every = stage.process(_flows(50), T0 + 60_000)["ip_detail_records"]
    some = stage.process(_flows(51, traffic_every=2), T0 + 60_000)["ip_detail_records"]
    assert every.num_rows == 50 and some.num_rows == 26
    assert [len(k.signatures) for k in compiled] == before
    rows = every.to_pylist()
    assert {r["status"] for r in rows} <= {"attributed", "attributed_destination", "unattributed"}
    assert all(r["nat_port"] == (4000 if i % 3 == 0 else 0) for i, r in enumerate(rows))
    assert all((r["binding_id"] == 0) == (r["status"] == "unattributed") for r in rows)
    assert all(r["session_id"] == f"k{int(r['subscriber_id'][1:])}" for r in rows if r["status"] == "attributed")


def test_tick_mirrors_static_changes_by_the_seq_index(tmp_path):
    """The static bindings changed since the last tick, once each, RADIUS ones never; found through the seq index
    (no scan of the table each second)."""
    b = Bindings(str(tmp_path / "b.db"))
    b.open_many([(f"s{i}", parse_network(f"10.0.0.{i}"), T0, 2**62) for i in range(5)],
                session_ids=[f"k{i}" for i in range(5)])
    b.open("r1", "10.0.1.1", T0, source="radius", session_id="q1")
    b.commit()
    stage = ComplianceStage(load(None, ["compliance.enabled=true"]), b, mirror_static=True)
    first = stage.tick(T0)["bindings"].column("session_id").to_pylist()
    assert sorted(first) == [f"k{i}" for i in range(5)]
    assert stage.tick(T0) == {}
    b.open("s9", "10.0.0.9", T0, session_id="k9")
    b.open("r2", "10.0.1.2", T0, source="radius", session_id="q2")
    b.commit()
    assert stage.tick(T0)["bindings"].column("session_id").to_pylist() == ["k9"]
    plan = b.conn.execute("EXPLAIN QUERY PLAN SELECT id FROM bindings WHERE id IN (SELECT id FROM bindings WHERE "
                          "seq>?) AND source='static'", (0,)).fetchall()
    assert any("bindings_seq" in str(step) for step in plan)
