"""The Mediator's compiled passes (mediation.correlate, the class table, validation) against the numpy passes they
replaced, kept here as references; and the Mediator's edge cases around them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mediation.mediator as mediator_mod
from collector.config import load
from mediation import Mediator
from mediation.aggregate import allocate, split_intervals
from mediation.classify import Classifier
from mediation.correlate import address_words, count_parts, readonly, split_parts
from mediation.settings import ClassRule
from mediation.subscribers.bindings import BindingIndex, Bindings, parse_network, split_addresses
from mediation.tables import OPEN_END_MS
from mediation.validate import validate
from tests.mediation.mediation_helpers import INTERVAL, MIN, T0, a16, flows, s16

S = 1000


def _split(start: np.ndarray, end: np.ndarray, values: np.ndarray, packets: np.ndarray, interval: int
           ) -> dict[str, np.ndarray]:
    n = len(start)
    ok = readonly(np.arange(n), np.int64)
    start, end = readonly(start, np.int64), readonly(end, np.int64)
    total = np.empty(n, dtype=np.int64)
    count_parts(ok, start, end, interval, total)
    parts = int(total[-1]) if n else 0
    record, istart, pstart = (np.empty(parts, dtype=np.int64) for _ in range(3))
    values3 = np.empty((parts, 3), dtype=np.uint64)
    halves = [np.empty(parts, dtype=np.uint64) for _ in range(4)]
    first = np.empty(n, dtype=np.int64)
    src = address_words(s16(["10.0.0.1"] * n) if n else np.zeros(0, "S16"))
    dst = address_words(s16(["2001:db8::7"] * n) if n else np.zeros(0, "S16"))
    split_parts(ok, start, end, interval, readonly(values, np.uint64), readonly(packets, np.uint64), src, dst, record,
                istart, pstart, values3, *halves, first)
    return {"record": record, "istart": istart, "pstart": pstart, "bytes": values3[:, 0], "packets": values3[:, 1],
            "flows": values3[:, 2], "src_hi": halves[0], "src_lo": halves[1], "dst_hi": halves[2],
            "dst_lo": halves[3], "first": first}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(946_684_800_000, 946_684_800_000 + 3 * 86400_000), st.integers(0, 86400_000),
                          st.integers(0, 2**50), st.integers(0, 2**40)), min_size=1, max_size=40),
       st.sampled_from([60_000, 300_000, 3_600_000]))
def test_split_parts_is_split_intervals_and_allocate(rows, interval):
    """Parts, times and the largest-remainder shares of bytes, packets and flows are what ``split_intervals`` and
    ``allocate`` give (flows spanning several intervals, zero-length ones, values of any size)."""
    start = np.array([r[0] for r in rows], dtype=np.int64)
    end = start + np.array([r[1] for r in rows], dtype=np.int64)
    values = np.array([r[2] for r in rows], dtype=np.uint64)
    packets = np.array([r[3] for r in rows], dtype=np.uint64)
    got = _split(start, end, values, packets, interval)
    rec, istart, pstart, overlap, duration = split_intervals(start, end, interval)
    assert got["record"].tolist() == rec.tolist()
    assert got["istart"].tolist() == istart.tolist() and got["pstart"].tolist() == pstart.tolist()
    for name, v in (("bytes", values), ("packets", packets), ("flows", np.ones(len(rows), np.uint64))):
        assert got[name].tolist() == allocate(v, rec, overlap, duration).tolist(), name
    assert got["first"].tolist() == np.flatnonzero(np.concatenate(([True], rec[1:] != rec[:-1]))).tolist()
    hi, lo = split_addresses(s16(["10.0.0.1", "2001:db8::7"]))
    assert set(got["src_hi"].tolist()) == {int(hi[0])} and set(got["dst_lo"].tolist()) == {int(lo[1])}


def test_split_parts_gives_the_units_left_to_the_largest_remainders():
    """A day-long flow over 289 intervals: the units left after the floors go to the largest remainders, the earlier
    part on a tie (as ``allocate`` does), for several values."""
    start = np.array([T0 + 7 * S], dtype=np.int64)
    end = start + 86_400_000 - 1
    for v in (1, 2, 288, 289, 1000, 2**61 + 12345):
        got = _split(start, end, np.array([v], np.uint64), np.array([v], np.uint64), INTERVAL)
        rec, _, _, overlap, duration = split_intervals(start, end, INTERVAL)
        assert len(rec) == 289 and got["bytes"].tolist() == allocate(np.array([v], np.uint64), rec, overlap,
                                                                      duration).tolist()
        assert int(got["bytes"].sum()) == v and got["flows"].tolist().count(1) == 1


def _classify_reference(rules: list[ClassRule], hi: np.ndarray, lo: np.ndarray, port: np.ndarray,
                        protocol: np.ndarray) -> np.ndarray:
    """The classifier as it was: one mask pass per rule over the batch, a prefix lookup per rule with prefixes."""
    out = np.full(len(hi), len(rules), dtype=np.uint8)
    todo = np.ones(len(hi), dtype=bool)
    for i, r in enumerate(rules):
        match = todo.copy()
        if r.protocols:
            match &= np.isin(protocol, r.protocols)
        if r.ports:
            match &= np.isin(port, r.ports)
        if r.prefixes:
            nets = [parse_network(p) for p in r.prefixes]
            n = len(nets)
            index = BindingIndex(np.arange(n), np.zeros(n), np.array([x[0] for x in nets], dtype=np.uint64),
                                 np.array([x[1] for x in nets], dtype=np.uint64),
                                 np.array([x[2] for x in nets], dtype=np.int16), np.zeros(n), np.full(n, OPEN_END_MS))
            _, row, _ = index.lookup(hi, lo, np.zeros(len(hi), dtype=np.int64))
            match &= row >= 0
        out[match] = i
        todo &= ~match
    return out


PREFIXES = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "0.0.0.0/0", "2001:db8::/32", "2001:db8:1::/48",
            "::/0", "192.0.2.0/25", "192.0.2.128/25"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(PREFIXES), max_size=3), st.lists(st.sampled_from([53, 80, 443]),
                                                                                   max_size=2),
                          st.lists(st.sampled_from([6, 17]), max_size=2)), max_size=6), st.integers(0, 2**32))
def test_the_class_table_gives_the_first_rule_that_matches(rules, seed):
    """Overlapping prefixes of several lengths in several rules, rules with and without prefixes, ports and
    protocols in any order: the least rule that holds, else the default class, as the mask passes gave."""
    rules = [ClassRule(f"r{i}", prefixes=p, ports=q, protocols=pr) for i, (p, q, pr) in enumerate(rules)]
    rng = np.random.default_rng(seed)
    n = 300
    texts = rng.choice(["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.200.0.1", "11.0.0.1", "192.0.2.1", "192.0.2.200",
                        "2001:db8:1::5", "2001:db8:2::5", "2001:db9::1"], n)
    hi, lo = split_addresses(s16(texts.tolist()))
    port = rng.choice(np.array([53, 80, 443, 8080], np.uint16), n)
    protocol = rng.choice(np.array([6, 17, 1], np.uint8), n)
    got = Classifier(rules, "other").classify(hi, lo, port, protocol)
    assert got.tolist() == _classify_reference(rules, hi, lo, port, protocol).tolist()


def _validate_reference(tr, fs, fe, b, p, max_future_ms, max_lateness_ms, max_duration_ms, max_bytes_per_packet):
    """Validation as it was: one mask per reason and ``np.select``."""
    conditions = [
        (fs < 946_684_800_000) | (fe > 4_102_444_800_000) | (tr < 946_684_800_000) | (tr > 4_102_444_800_000),
        fe < fs, fe > tr + max_future_ms, fe < tr - max_lateness_ms, fe - fs > max_duration_ms, (b == 0) | (p == 0),
        (b // np.maximum(p, np.uint64(1)) > np.uint64(max_bytes_per_packet)) | (b < p)]
    return np.select(conditions, [np.uint8(i + 1) for i in range(len(conditions))], np.uint8(0)).astype(np.uint8)


def test_validate_gives_the_first_reason_as_the_mask_passes_did():
    rng = np.random.default_rng(11)
    n = 20_000
    tr = T0 + rng.integers(-10, 10, n) * 100_000
    fs = np.where(rng.random(n) < 0.01, rng.integers(0, 3 * T0, n), T0 + rng.integers(-10**7, 10**6, n))
    fe = fs + rng.integers(-1000, 4_000_000, n)
    b = rng.integers(0, 10**6, n).astype(np.uint64)
    p = np.where(rng.random(n) < 0.02, b + np.uint64(1), rng.integers(0, 100, n)).astype(np.uint64)
    limits = dict(max_future_ms=300_000, max_lateness_ms=3_600_000, max_duration_ms=3_000_000,
                  max_bytes_per_packet=65_535)
    got = validate(tr, fs, fe, b, p, **limits)
    assert got.tolist() == _validate_reference(tr, fs, fe, b, p, *limits.values()).tolist()
    assert len(np.unique(got)) == 8  # every reason and valid records


def _bindings() -> Bindings:
    b = Bindings()
    b.open("alice", "100.64.0.1", T0 - 3600 * S)
    b.open("bob", "100.64.0.2", T0 - 3600 * S)
    b.open("carol", "100.64.0.3", T0 - 3600 * S)
    b.open("dave", "100.64.0.3", T0 + 7 * MIN)  # the address moves to dave in the next interval
    b.commit()
    return b


def _usage(outs: list[dict[str, pa.RecordBatch]]) -> list[tuple]:
    out = []
    for o in outs:
        if "usage" in o:
            starts = o["usage"].column("interval_start").cast(pa.int64()).to_pylist()
            out += [(r["subscriber_id"], s, r["direction"], r["traffic_class"], r["bytes"], r["packets"], r["flows"],
                     r["correction"]) for r, s in zip(o["usage"].to_pylist(), starts, strict=True)]
    return sorted(out)


def test_both_sides_long_flows_unattributed_and_classes_through_the_mediator(monkeypatch):
    """A flow between two subscribers over four intervals (the destination's holder changes on the way), an
    unattributed one, classes by remote side: exact rows; the same rows with MAX_PARTS chunks of one record."""
    config = load(None, ["mediation.watermark_s=60",
                         'mediation.classes=[{name="dns", ports=[53], protocols=[17]}, '
                         '{name="peer", prefixes=["100.64.0.0/30"]}, {name="web", ports=[443]}]'])
    batch = flows([
        dict(src="100.64.0.1", dst="100.64.0.3", start=T0 + 4 * MIN, end=T0 + 19 * MIN, bytes=1501, packets=15,
             src_port=443, dst_port=53, protocol=17, received=T0 + 19 * MIN),
        dict(src="198.51.100.1", dst="203.0.113.1", start=T0, end=T0 + 1000, bytes=77, packets=1, dst_port=443,
             received=T0 + 19 * MIN),
        dict(src="203.0.113.1", dst="100.64.0.2", start=T0, end=T0 + 1000, bytes=55, packets=1, src_port=53,
             protocol=17, received=T0 + 19 * MIN),
    ])
    expected = None
    for max_parts in (mediator_mod.MAX_PARTS, 1, 2, 5):
        monkeypatch.setattr(mediator_mod, "MAX_PARTS", max_parts)
        m = Mediator(config, _bindings())
        m.keep_attribution = True
        outs = [m.process(batch, T0 + 19 * MIN), m.close_all(T0 + 19 * MIN)]
        got = _usage(outs)
        if expected is None:
            expected = got
        assert got == expected
        attribution = m.take_attribution()
        assert attribution.src_sub.tolist()[1:] == [-1, -1] and attribution.dst_sub[1] == -1
        assert m.counters["bytes_attributed"] == 1501 + 55 and m.counters["bytes_unattributed"] == 77
        recon = outs[0].get("reconciliation") or outs[1]["reconciliation"]
        assert sum(recon.column("bytes_usage").to_pylist()) == 2 * 1501 + 77 + 55
    # 1501 bytes over 60 + 300 + 300 + 240 s: 100.07, 500.33, 500.33, 400.27 -> 100, 500, 500, 400 + 1 to the first
    # largest remainder (the second part); the destination is carol's until T0 + 7 min, then dave's
    by_key = {(r[0], r[1], r[2]): r for r in expected}
    up = [by_key[("alice", T0 + k * INTERVAL, "up")] for k in range(4)]
    # remote 100.64.0.3 port 53 over UDP: dns (the first rule) before peer
    assert [r[4] for r in up] == [100, 501, 500, 400] and {r[3] for r in up} == {"dns"}
    assert [r[6] for r in up] == [0, 1, 0, 0]
    assert by_key[("carol", T0, "down")][4] == 100 and by_key[("carol", T0, "down")][3] == "peer"
    assert by_key[("carol", T0 + INTERVAL, "down")][4] == 501  # the part starts at T0 + 5 min: still carol's
    assert by_key[("dave", T0 + 2 * INTERVAL, "down")][4] == 500
    assert by_key[("", T0, "unattributed")][3] == "web"  # remote: the destination, port 443
    assert by_key[("bob", T0, "down")][3] == "dns"  # remote: the source, port 53 over UDP


@pytest.mark.parametrize("n_exporters", [1, 3])
def test_reconciliation_balances_per_exporter_and_receive_interval(n_exporters):
    rows = [dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + i * S, end=T0 + i * S + 700_000, bytes=1000 + i,
                 packets=2, exporter=f"192.0.2.{1 + i % n_exporters}", received=T0 + 700_000 + i * 100_000)
            for i in range(6)]
    m = Mediator(load(None), _bindings())
    outs = [m.process(flows(rows), T0 + 1_300_000), m.close_all(T0 + 1_300_000)]
    recon = [r for o in outs if "reconciliation" in o for r in o["reconciliation"].to_pylist()]
    assert len(recon) == len({(r["interval_start"], r["exporter"]) for r in recon}) and all(r["balanced"]
                                                                                             for r in recon)
    assert sum(r["bytes_in"] for r in recon) == sum(r["bytes_attributed"] for r in recon) == 6 * 1000 + 15


def test_warm_up_compiles_what_real_batches_use():
    """After ``warm_up``, batches of every kind (split records, chunks, rejects, attribution) use the kernels it
    compiled: none compiles on the event loop."""
    from mediation import aggregate, classify, correlate, reconcile
    from mediation import validate as validate_mod
    from mediation.mediator import warm_up

    warm_up()
    kernels = [correlate.count_parts, correlate.split_parts, correlate.count_rows, correlate.attribute,
               correlate.distinct_addresses,
               classify._classify,
               validate_mod._reasons, reconcile._keys, reconcile._add_column, aggregate._add_dense, aggregate._bounds]
    before = [len(k.signatures) for k in kernels]
    batch = flows([dict(src="100.64.0.1", dst="100.64.0.3", start=T0 + 4 * MIN, end=T0 + 19 * MIN, bytes=1501,
                        packets=15, exporter=f"192.0.2.{i}", received=T0 + 19 * MIN + i * MIN) for i in range(4)]
                  + [dict(src="100.64.0.1", dst="100.64.0.3", start=T0, end=T0 - 1, bytes=1, packets=1)])
    m = Mediator(load(None, ['mediation.classes=[{name="x", prefixes=["10.0.0.0/8"]}]']), _bindings())
    m.keep_attribution = True
    m.process(batch, T0 + 30 * MIN)
    m.process(batch.slice(2), T0 + 30 * MIN)
    m.close_all(T0 + 40 * MIN)
    assert [len(k.signatures) for k in kernels] == before


def test_exporters_are_numbered_as_they_appear_with_all_their_bytes():
    """Exporter indexes (the major key of the usage sums, so the order of the rows) follow first appearance in the
    batch, across runs of records; an address ending in zero bytes keeps them."""
    exporters = ["192.0.2.0", "192.0.2.0", "10.0.0.1", "192.0.2.0", "2001:db8::", "10.0.0.1"]
    m = Mediator(load(None), _bindings())
    m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1, bytes=10 + i, packets=1,
                          exporter=e) for i, e in enumerate(exporters)]), T0 + S)
    assert m._exporters == [a16("192.0.2.0"), a16("10.0.0.1"), a16("2001:db8::")]
    rows = m.close_all(T0 + S)["usage"].to_pylist()
    assert [(r["exporter"], r["bytes"]) for r in rows] == [(a16("192.0.2.0"), 10 + 11 + 13), (a16("10.0.0.1"), 12 + 15),
                                                         (a16("2001:db8::"), 14)]
    # more exporters in one batch than the first table holds: numbered in order all the same
    many = [f"198.51.100.{i}" for i in range(200, 0, -1)] + ["192.0.2.0"]
    m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1, bytes=1, packets=1, exporter=e)
                     for e in many * 2]), T0 + S)
    assert m._exporters == [a16("192.0.2.0"), a16("10.0.0.1"), a16("2001:db8::")] + [a16(e) for e in many[:-1]]
