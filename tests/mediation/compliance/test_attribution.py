"""The compliance stage reuses the Mediator's subscriber lookups (``Mediator.take_attribution``) in the daemon's
Pipeline: the rows must be exactly those of the stage looking every record up itself."""

from __future__ import annotations

import functools
import types

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

import collector.pipeline as pipeline_mod
import mediation.bounded as bounded
from collector import metrics as metrics_mod
from collector.config import load
from decoders.dispatch import DispatchResult
from decoders.schema import FLOWS, ipv4_mapped
from mediation import Mediator
from mediation.compliance.nat import without_nat_only
from mediation.compliance.stage import BindingStrings, ComplianceStage, translated
from mediation.subscribers.bindings import Bindings, parse_network
from tests.mediation.mediation_helpers import INTERVAL, MIN, T0, a16

S = 1000
K = 600  # static subscribers 10.0.0.0 - 10.0.2.87


def bindings(tmp_path) -> Bindings:
    """Static bindings in the base index, RADIUS sessions opened after the first refresh (the delta index), one of
    them taking over a static address in the middle of the batches, and an IPv6 prefix."""
    b = Bindings(str(tmp_path / "bindings.db"))
    entries = [(f"sub{i}", parse_network(f"10.0.{i >> 8}.{i & 255}"), T0 - 86400 * S, 2**62) for i in range(K)]
    b.open_many(entries, session_ids=[f"key{i}" for i in range(K)])
    b.open("v6", "2001:db8:e::/56", T0 - 86400 * S)
    b.commit()
    b.refresh()
    for i in range(0, 60, 3):
        b.open(f"rad{i}", f"10.0.0.{i}", T0 + 4 * MIN + i * S, source="radius", session_id=f"sess{i}")
    b.open("towards", "8.8.0.0/24", T0 - 10 * S, source="radius", session_id="s-towards")
    b.commit()
    b.refresh()
    return b


def columns(k: int, n: int = 3000, long_share: float = 0.15) -> dict[str, np.ndarray]:
    """A flows batch as numpy columns: long records over several intervals, rejects (end before start, zero
    counters), duplicates, pure NAT events (left out of the Mediator's batch), translated flows, flows towards a
    subscriber, an IPv6 prefix, unknown addresses."""
    r = np.random.default_rng(k)
    cols = FLOWS.empty_columns(n)
    received = T0 + 5 * MIN + k * MIN
    cols["time_received"][:] = received
    cols["flow_end"][:] = received - r.integers(0, 30 * S, n)
    cols["flow_start"][:] = cols["flow_end"] - r.integers(0, 60 * S, n)
    long = r.random(n) < long_share
    cols["flow_start"][long] -= r.integers(INTERVAL, 4 * INTERVAL, long.sum())
    cols["exporter"][:] = ipv4_mapped(0xC0000201 + r.integers(0, 3, n).astype(np.uint32))
    cols["src_addr"][:] = ipv4_mapped((0x0A000000 + r.integers(0, K + 100, n)).astype(np.uint32))
    cols["dst_addr"][:] = ipv4_mapped((0x08080000 + r.integers(0, 512, n)).astype(np.uint32))
    towards = r.random(n) < 0.1
    cols["dst_addr"][towards] = ipv4_mapped((0x0A000000 + r.integers(0, K, towards.sum())).astype(np.uint32))
    cols["dst_addr"][r.random(n) < 0.03] = a16("2001:db8:e:1::5")
    cols["src_port"][:] = r.integers(1024, 65535, n)
    cols["dst_port"][:] = r.choice([53, 80, 443], n)
    cols["protocol"][:] = r.choice([6, 17], n)
    cols["bytes"][:] = r.integers(1, 10**6, n)
    cols["packets"][:] = r.integers(1, 1000, n)
    cols["flow_end"][r.random(n) < 0.02] -= 200 * MIN  # ends before it starts: rejected
    cols["bytes"][r.random(n) < 0.01] = 0  # packets without bytes: rejected, still an ip_detail_record
    translated_rows = r.random(n) < 0.1
    cols["post_nat_src_addr"][translated_rows] = a16("203.0.113.7")
    cols["post_nat_src_port"][translated_rows] = r.integers(1024, 65535, translated_rows.sum())
    nat = r.random(n) < 0.05
    cols["nat_event"][nat] = 1
    cols["bytes"][nat] = cols["packets"][nat] = 0
    cols["post_nat_src_addr"][nat] = a16("203.0.113.8")
    cols["raw_bytes"][:], cols["raw_packets"][:], cols["sampling_rate"][:] = cols["bytes"], cols["packets"], 1
    again = np.flatnonzero(r.random(n) < 0.05)  # the same records twice: duplicates
    return {name: np.concatenate([v, v[again]]) for name, v in cols.items()}


class _Decoder:
    """Hands the Pipeline prepared columns instead of decoding datagrams."""

    def __init__(self) -> None:
        self.cols: dict[str, np.ndarray] = {}

    def decode(self, batch):
        return DispatchResult(flows=self.cols)


class _Sink:
    def __init__(self) -> None:
        self.tables: dict[str, list[pa.RecordBatch]] = {}

    def add(self, name: str, batch: pa.RecordBatch) -> bool:
        self.tables.setdefault(name, []).append(batch)
        return True


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(batches)


def run_both(tmp_path, monkeypatch, batches: int = 3, mediation_errors: int = 0, long_share: float = 0.15):
    """The batches through the daemon's Pipeline (shared lookups) and through a Mediator and a stage that look up
    separately (the reference); returns (pipeline sink, reference tables, pipeline, reference stage)."""
    cfg = load(None, [f"store.path={tmp_path / 'data'}", "mediation.enabled=true", "compliance.enabled=true",
                      "mediation.watermark_s=60"])
    b = bindings(tmp_path)
    now = [0]
    monkeypatch.setattr(pipeline_mod, "now_ms", lambda: now[0])
    decoder, sink = _Decoder(), _Sink()
    mediator = Mediator(cfg, b, refresh_interval_s=3600)
    pipeline = pipeline_mod.Pipeline(cfg, metrics_mod.Metrics(CollectorRegistry()), sink, mediator, decoder,
                                     compliance=ComplianceStage(cfg, b))
    ref_mediator = Mediator(cfg, b, refresh_interval_s=3600)
    ref_stage = ComplianceStage(cfg, b)
    ref: dict[str, list[pa.RecordBatch]] = {}
    for k in range(batches):
        decoder.cols = columns(k, long_share=long_share)
        now[0] = int(decoder.cols["time_received"][0])
        pipeline.process([object()])
        flows = FLOWS.to_arrow(decoder.cols)
        out = dict(bounded.mediate_bounded(ref_mediator, without_nat_only(flows), now[0], INTERVAL))
        out.update(ref_stage.process(flows, now[0]))
        for name, batch in out.items():
            ref.setdefault(name, []).append(batch)
    assert pipeline.metrics.pipeline_errors.labels("mediation")._value.get() == mediation_errors
    return sink, ref, pipeline, ref_stage, ref_mediator


@pytest.mark.parametrize(("max_parts", "long_share"), [(bounded.MAX_PARTS, 0.15), (700, 0.15),
                                                       (bounded.MAX_PARTS, 0.0)])
def test_pipeline_rows_equal_separate_lookups(tmp_path, monkeypatch, max_parts, long_share):
    """Same usage and ip_detail_records rows, with one Mediator call per batch and with the batch in slices
    (``mediation.bounded``), with records split over intervals and without; the stage looked up only what the
    Mediator did not (rejects and duplicates)."""
    monkeypatch.setattr(bounded, "mediate_bounded",
                        functools.partial(bounded.mediate_bounded, max_parts=max_parts))
    sink, ref, pipeline, ref_stage, ref_mediator = run_both(tmp_path, monkeypatch, long_share=long_share)
    for name in ("usage", "rejects", "nat_events", "ip_detail_records"):
        assert _table(sink.tables[name]).equals(_table(ref[name]), check_metadata=True), name
    records = _table(sink.tables["ip_detail_records"])
    statuses = set(records.column("status").to_pylist())
    assert statuses == {"attributed", "attributed_destination", "unattributed"}
    assert {"radius", "static"} <= set(records.column("binding_source").to_pylist())
    stage = pipeline.compliance
    assert stage.counters["records"] == ref_stage.counters["records"] == records.num_rows
    assert ref_stage.counters["records_looked_up"] == records.num_rows
    # every record the Mediator mediated was attributed from its lookups; it rejects nothing with no traffic here
    skipped = ref_mediator.counters["records_rejected"] + ref_mediator.counters["records_duplicate"]
    assert 0 < stage.counters["records_looked_up"] == skipped < records.num_rows
    assert pipeline.mediator.take_attribution() is None  # nothing left behind


def test_a_failed_mediation_leaves_no_partial_attribution(tmp_path, monkeypatch):
    """The Mediator fails on the second slice of a batch: the usage of that batch is lost (counted), the compliance
    rows are still complete and right (the stage looks every record up itself)."""
    monkeypatch.setattr(bounded, "mediate_bounded", functools.partial(bounded.mediate_bounded, max_parts=700))
    calls = {"n": 0}
    original = Mediator.process

    def flaky(self, flows, now_ms):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("mediation bug")
        return original(self, flows, now_ms)

    monkeypatch.setattr(Mediator, "process", flaky)
    sink, ref, pipeline, _, _ = run_both(tmp_path, monkeypatch, batches=1, mediation_errors=1)
    assert calls["n"] > 2  # the reference's Mediator calls come after the Pipeline's
    assert _table(sink.tables["ip_detail_records"]).equals(_table(ref["ip_detail_records"]))
    assert pipeline.compliance.counters["records_looked_up"] == pipeline.compliance.counters["records"]
    assert pipeline.mediator.take_attribution() is None


def test_an_attribution_of_other_records_is_ignored(tmp_path):
    """An attribution that is not the batch's (another batch's records) is not used: the rows stay right."""
    cfg = load(None, ["mediation.watermark_s=60"])
    b = bindings(tmp_path)
    mediator = Mediator(cfg, b, refresh_interval_s=3600)
    mediator.keep_attribution = True
    first, second = FLOWS.to_arrow(columns(0)), FLOWS.to_arrow(columns(1))
    mediator.process(without_nat_only(first), T0 + 5 * MIN)
    wrong = mediator.take_attribution()
    stage, ref_stage = ComplianceStage(cfg, b), ComplianceStage(cfg, b)
    got = stage.process(second, T0 + 6 * MIN, wrong)["ip_detail_records"]
    assert got.equals(ref_stage.process(second, T0 + 6 * MIN)["ip_detail_records"])
    assert stage.counters["records_looked_up"] == got.num_rows


def test_binding_strings_cache(tmp_path):
    b = Bindings(str(tmp_path / "b.db"))
    ids = [b.open(f"s{i}", f"10.1.0.{i}", T0, source="radius" if i % 2 else "static", session_id=f"q{i}")
           for i in range(10)]
    b.commit()
    cache = BindingStrings(b, max_entries=6)
    bid = np.array([ids[3], -1, ids[1], ids[3], 999_999, ids[0]], dtype=np.int64)
    source, session = cache.columns(bid)
    assert source.to_pylist() == ["radius", "", "radius", "radius", "", "static"]
    assert session.to_pylist() == ["q3", "", "q1", "q3", "", "q0"]
    assert len(cache) == 3  # an id the database does not have is not cached
    # more new ids than the cache may hold besides what it has: emptied, then filled with this batch's ids
    bid = np.array(ids[4:9], dtype=np.int64)
    assert cache.columns(bid)[1].to_pylist() == [f"q{i}" for i in range(4, 9)]
    assert len(cache) == 5
    assert cache.columns(np.array([ids[8], ids[0]], dtype=np.int64))[0].to_pylist() == ["static", "static"]
    assert cache.columns(np.zeros(0, dtype=np.int64))[0].to_pylist() == []


def test_translated_addresses():
    values = ["::", "::ffff:0.0.0.0", "::ffff:203.0.113.7", "2001:db8::", "::1", "::ffff:0.0.0.1", "0.0.0.0"]
    addresses = np.array([a16(v) for v in values], dtype="S16")
    expected = [(a != b"\0" * 16) and (a != a16("0.0.0.0")) for a in [a16(v) for v in values]]
    assert translated(addresses).tolist() == expected == [False, False, True, True, True, True, False]
    assert translated(addresses[2:5][::2]).tolist() == [True, True]  # not contiguous


def test_binding_strings_dense_and_sparse_ids():
    """Ids dense (a table by id), below the table (rebuilt), far apart (sorted search), and a cache that fills up:
    every answer is the database's."""
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE bindings (id INTEGER PRIMARY KEY, source TEXT, session_id TEXT)")
    r = np.random.default_rng(5)
    ids = np.unique(np.concatenate([r.integers(1000, 3000, 800), r.integers(1, 1000, 50),
                                    r.integers(10**9, 2 * 10**9, 20)]))
    conn.executemany("INSERT INTO bindings VALUES (?, ?, ?)",
                     [(int(i), ("radius", "static", "other")[int(i) % 3], f"x{i}") for i in ids])
    cache = BindingStrings(types.SimpleNamespace(conn=conn), max_entries=700)
    batches = [r.choice(ids[(ids >= 2000) & (ids < 3000)], 300), r.choice(ids[ids < 3000], 400),
               r.choice(ids, 500), np.concatenate([r.choice(ids, 200), [-1, 5_000_000]]), r.choice(ids, 900)]
    for bid in batches:
        bid = bid.astype(np.int64)
        source, session = cache.columns(bid)
        known = set(ids.tolist())
        assert session.to_pylist() == [f"x{i}" if i in known else "" for i in bid.tolist()]
        assert source.to_pylist() == [("radius", "static", "other")[i % 3] if i in known else ""
                                      for i in bid.tolist()]
        assert len(cache) <= 900


def test_binding_strings_read_close_ids_as_one_range():
    """Many missing ids close together are read as one id range (the ids between them too), once."""
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE bindings (id INTEGER PRIMARY KEY, source TEXT, session_id TEXT)")
    conn.executemany("INSERT INTO bindings VALUES (?, ?, ?)", [(i, "static", f"k{i}") for i in range(1, 3001)])
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    cache = BindingStrings(types.SimpleNamespace(conn=conn), max_entries=10_000)
    bid = np.arange(1000, 3000, 2, dtype=np.int64)  # 1,000 ids over 2,000
    assert cache.columns(bid)[1].to_pylist() == [f"k{i}" for i in bid.tolist()]
    assert len(statements) == 1 and "BETWEEN" in statements[0] and len(cache) == 1999
    bid = np.arange(1, 3001, dtype=np.int64)  # 1,000 missing (1-999, 3000): the range again, cached ids kept
    assert cache.columns(bid)[1].to_pylist() == [f"k{i}" for i in range(1, 3001)]
    assert len(cache) == 3000 and len(statements) == 2 and "BETWEEN" in statements[-1]
    conn.execute("INSERT INTO bindings VALUES (5000, 'radius', 'r5000')")
    assert cache.columns(np.array([5000, 7], dtype=np.int64))[1].to_pylist() == ["r5000", "k7"]
    assert len(statements) == 4 and " IN " in statements[-1]  # few ids: by id
    assert cache.columns(bid)[0].to_pylist() == ["static"] * 3000
    small = BindingStrings(types.SimpleNamespace(conn=conn), max_entries=1500)  # the range would not fit
    assert small.columns(np.arange(1000, 3000, 2, dtype=np.int64))[1].to_pylist()[:2] == ["k1000", "k1002"]
    assert len(small) == 1000
