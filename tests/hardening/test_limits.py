"""Resource bounds against a hostile or broken peer: each limit refuses, is configurable and is counted.

Limits tested elsewhere (not repeated here): templates per exporter and exporters in total in the decoder
(tests/decoders/test_state.py), data waiting for templates (tests/decoders/test_pending.py), fields per template
(tests/decoders/test_bad_input.py), metric labels, the status board and the error log under 2,000 spoofed exporters
(tests/collector/test_parts.py::test_hostile_exporters_are_bounded_everywhere), IPDR connections and allowlist
(tests/ipdr/test_collector.py), the Sink's pending rows (tests/storage/test_sink.py), the spool's size and full
policies (tests/storage/test_clickhouse_spool.py).
"""

from __future__ import annotations

import asyncio
import struct

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from bench.exporter import bulk_datagrams
from collector.admission import Admission, make_admission
from collector.components import make_sink
from collector.config import load
from collector.metrics import Metrics
from collector.pipeline import Pipeline
from decoders.ipdr import messages as m
from decoders.ipdr.session import ProtocolViolation
from fuzz.targets import ipdr_connection
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import ATTRIBUTES, RadiusAccounting, accounting_request
from tests.fixtures.peers import free_port

T0 = 1_700_000_000_000
SECRET = b"s3cret-for-tests"


class ListSink:
    """Keeps what the pipeline hands over."""

    def __init__(self) -> None:
        self.added: list[tuple[str, pa.RecordBatch]] = []
        self.outputs: list = []
        self.stats: dict = {}
        self.pending_rows = 0
        self.dropped_rows: dict[str, int] = {}
        self.journal_errors = self.journal_set_aside = 0

    def add(self, table: str, batch: pa.RecordBatch) -> bool:
        self.added.append((table, batch))
        return True

    def maybe_flush(self, now: float | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def rows_from(self, exporter16: bytes) -> int:
        return sum(pa.compute.sum(pa.compute.equal(b.column("exporter"), pa.scalar(exporter16, b.column(
            "exporter").type))).as_py() or 0 for t, b in self.added if t == "flows")


def _pipeline(*sets: str) -> tuple[Pipeline, ListSink, CollectorRegistry]:
    cfg = load(None, ["mediation.enabled=false", *sets])
    registry = CollectorRegistry()
    sink = ListSink()
    return Pipeline(cfg, Metrics(registry, 16), sink), sink, registry


def _v5(n: int, records: int = 10, seed: int = 0) -> list[bytes]:
    datagrams, _ = bulk_datagrams(5, n, records, export_ms=T0, seed=seed)
    return datagrams


def _mapped(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in ip.split("."))


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- exporter allowlist for flows -------------------------------------------------------------------------------

def test_flow_allowlist_is_off_by_default() -> None:
    cfg = load(None, [])
    assert cfg.listen.allow == [] and cfg.listen.exporter_rate_limit == 0
    assert make_admission(cfg) is None
    pipeline, sink, _ = _pipeline()
    assert pipeline.process([(d, "203.0.113.9", T0) for d in _v5(2)]) == 20


def test_flow_allowlist_drops_other_exporters_before_decoding_and_counts_them() -> None:
    pipeline, sink, registry = _pipeline('listen.allow=["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]')
    batch = ([(d, "192.0.2.44", T0) for d in _v5(3, seed=1)] + [(d, "203.0.113.9", T0) for d in _v5(4, seed=2)]
             + [(d, "198.51.100.7", T0) for d in _v5(1, seed=3)] + [(d, "198.51.100.8", T0) for d in _v5(2, seed=4)]
             + [(d, "::ffff:192.0.2.45", T0) for d in _v5(1, seed=5)])
    assert pipeline.process(batch) == (3 + 1 + 1) * 10
    assert sink.rows_from(_mapped("192.0.2.44")) == 30 and sink.rows_from(_mapped("203.0.113.9")) == 0
    refused = "flowmed_datagrams_refused_total"
    assert _metric(registry, refused, exporter="203.0.113.9", reason="not_allowed") == 4
    assert _metric(registry, refused, exporter="198.51.100.8", reason="not_allowed") == 2
    # refused datagrams never reach the decoder: no decode counters for them
    assert _metric(registry, "flowmed_datagrams_received_total", exporter="203.0.113.9", version="5") == 0
    assert _metric(registry, "flowmed_datagrams_received_total", exporter="192.0.2.44", version="5") == 3


def test_allowlist_must_be_addresses_or_prefixes() -> None:
    from collector.configtree import ConfigError

    with pytest.raises(ConfigError, match=r"listen.allow\[1\]"):
        load(None, ['listen.allow=["10.0.0.0/8", "router-1"]'])


# --- per-exporter rate limit ------------------------------------------------------------------------------------

def test_token_bucket_per_exporter() -> None:
    adm = Admission(rate=10, burst=5)
    batch = [(b"x", "a", 0)] * 8 + [(b"y", "b", 0)] * 3
    assert len(adm.filter(batch, now_s=100.0)) == 5 + 3  # a: its burst of 5; b: all 3
    assert adm.take_refused() == {("a", "rate_limited"): 3}
    assert len(adm.filter([(b"x", "a", 0)] * 4, now_s=100.2)) == 2  # 0.2 s at 10/s refills 2
    assert len(adm.filter([(b"x", "a", 0)] * 100, now_s=200.0)) == 5  # never more than the burst
    assert adm.admitted == 5 + 3 + 2 + 5 and adm.refused_total == 3 + 2 + 95


def test_a_flooding_exporter_cannot_starve_the_others() -> None:
    pipeline, sink, registry = _pipeline("listen.exporter_rate_limit=50", "listen.exporter_rate_burst=100")
    flood = [(d, "192.0.2.1", T0) for d in _v5(2000, records=1, seed=7)]
    quiet = [(d, "192.0.2.2", T0) for d in _v5(20, records=1, seed=8)]
    mixed = flood[:1000] + quiet[:10] + flood[1000:] + quiet[10:]
    pipeline.process(mixed)
    assert sink.rows_from(_mapped("192.0.2.2")) == 20  # every datagram of the quiet exporter
    assert sink.rows_from(_mapped("192.0.2.1")) <= 100 + 1  # the flooder gets its burst (plus refill, if any)
    limited = _metric(registry, "flowmed_datagrams_refused_total", exporter="192.0.2.1", reason="rate_limited")
    assert limited + sink.rows_from(_mapped("192.0.2.1")) == 2000  # received = decoded + counted drops


def test_admission_state_is_bounded_by_max_exporters() -> None:
    adm = Admission(allow=["10.0.0.0/8"], rate=1, max_exporters=100)
    adm.filter([(b"", f"10.0.{i // 256}.{i % 256}", 0) for i in range(5000)], now_s=0.0)
    assert len(adm._buckets) <= 100 and len(adm._verdict) <= 100


# --- decoder limits reach the metrics -----------------------------------------------------------------------------

def test_decoder_limits_are_configurable_and_counted_in_metrics() -> None:
    pipeline, _, registry = _pipeline("decoder.max_exporters=2", "decoder.max_templates_per_exporter=1")
    datagrams, first = bulk_datagrams(9, 1, 1, export_ms=T0, template_id=300)
    other, other_first = bulk_datagrams(9, 1, 1, export_ms=T0, template_id=301)
    pipeline.process([(first, "192.0.2.1", T0), (other_first, "192.0.2.1", T0),
                      (first, "192.0.2.2", T0), (first, "192.0.2.3", T0)])
    hits = "flowmed_decoder_limit_hits_total"
    assert _metric(registry, hits, exporter="192.0.2.1", limit="max_templates_per_exporter") == 1
    assert _metric(registry, hits, exporter="192.0.2.3", limit="max_exporters") == 1


# --- IPDR/SP message size and sessions ----------------------------------------------------------------------------

def test_ipdr_message_size_limit_closes_the_connection() -> None:
    conn = ipdr_connection()  # max_message_size 64 KiB
    huge = struct.pack(">BBBBI", 2, m.MsgId.DATA, 1, 0, (1 << 16) + 1)  # only the header: refused before buffering
    events = conn.receive_data(huge)
    (v,) = [e for e in events if isinstance(e, ProtocolViolation)]
    assert v.fatal and v.reason == "bad_length" and conn.framer.pending_bytes <= 8


def test_ipdr_sessions_per_connection_are_bounded() -> None:
    conn = ipdr_connection()  # max_sessions 4: sessions 1 and 2 are started
    blocks = tuple(m.SessionBlock(sid, f"s{sid}") for sid in range(1, 40))
    conn.receive_data(m.encode(m.GetSessionsResponse(1, blocks)))
    for sid in range(3, 40):
        data = m.encode(m.TemplateData(sid))
        conn.receive_data(data)
    assert len(conn.sessions) <= 4


def test_ipdr_limits_are_configurable() -> None:
    cfg = load(None, ["ipdr.max_sessions=3", "ipdr.max_message_size=4096", "ipdr.max_connections=2"])
    assert (cfg.ipdr.max_sessions, cfg.ipdr.max_message_size, cfg.ipdr.max_connections) == (3, 4096, 2)
    # allowlist on by default for IPDR
    assert load(None, []).ipdr.allowlist is True


# --- RADIUS sessions and queue ------------------------------------------------------------------------------------

def _radius_config(*extra: str):
    return load(None, ["radius.enabled=true", f'radius.listen=["127.0.0.1:{free_port()}"]',
                       f'radius.clients=[{{address="127.0.0.1", secret="{SECRET.decode()}", name="nas1"}}]',
                       *extra])


def _start(ident: int, session: str) -> bytes:
    attrs = [(ATTRIBUTES["Acct-Status-Type"], struct.pack("!I", 1)), (ATTRIBUTES["User-Name"], b"u" + session.encode()),
             (ATTRIBUTES["Acct-Session-Id"], session.encode()),
             (ATTRIBUTES["Framed-IP-Address"], bytes([100, 64, 0, ident % 250 + 1]))]
    return accounting_request(ident % 256, attrs, SECRET)


def test_radius_open_sessions_are_bounded_and_refusals_counted() -> None:
    acct = RadiusAccounting(_radius_config("radius.max_sessions=3").radius, Bindings(), 300_000)
    res = acct.handle([(_start(i, f"s{i}"), ("127.0.0.1", 1)) for i in range(10)], T0)
    assert acct.open_sessions() == 3 and len(res.responses) == 3  # refused Starts are not answered
    assert acct.counters[("nas1", "too_many_sessions")] == 7 and acct.counters[("nas1", "ok")] == 3


def test_radius_queue_is_bounded_and_counted() -> None:
    from collector.radius_listener import start_radius

    async def main() -> tuple[int, dict]:
        cfg = _radius_config("radius.max_queue=4")
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(), lambda t, b: None)
        try:
            for i in range(20):  # synchronously, as a burst read from the socket before the writer runs
                server.received(_start(i, f"q{i}"), ("127.0.0.1", 1), None)
            return server.dropped, dict(server.accounting.counters)
        finally:
            await server.stop()

    dropped, counters = asyncio.run(main())
    assert dropped == 16 and counters[("queue", "dropped_queue_full")] == 16


def test_radius_unknown_clients_share_one_label_and_are_not_answered() -> None:
    acct = RadiusAccounting(_radius_config().radius, Bindings(), 300_000)
    res = acct.handle([(_start(i, f"x{i}"), (f"10.9.{i // 256}.{i % 256}", 1)) for i in range(500)], T0)
    assert res.responses == [] and acct.counters == {("unknown", "unknown_client"): 500}


# --- Sink pending rows: configurable --------------------------------------------------------------------------------

def test_sink_pending_rows_limit_comes_from_the_config(tmp_path) -> None:
    cfg = load(None, [f"store.path={tmp_path}", "store.max_pending_rows=1234"])
    sink = make_sink(cfg, Metrics(CollectorRegistry()))
    try:
        assert sink.max_pending_rows == 1234
    finally:
        sink.close()


# --- the log under a flood ------------------------------------------------------------------------------------------

def test_log_lines_per_peer_and_new_peers_are_bounded() -> None:
    import logging

    from collector.logflood import FloodFilter

    now = [0.0]
    f = FloodFilter(interval_s=60, max_new_keys=100, clock=lambda: now[0])

    def rec(client: str) -> logging.LogRecord:
        r = logging.LogRecord("mediation.subscribers.radius", logging.WARNING, "", 0, "dropped %s", ("x",), None)
        r.client = client
        return r

    passed = sum(f.filter(rec(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")) for i in range(5000))
    assert passed == 100  # 5,000 spoofed sources: 100 lines, not 5,000
    assert sum(f.filter(rec("10.0.0.1")) for _ in range(1000)) == 0  # repeats of a known peer within the minute
    now[0] = 61.0
    r = rec("10.0.0.1")
    assert f.filter(r) and r.suppressed_repeats == 1000 and r.suppressed_other_peers == 4900
    info = logging.LogRecord("x", logging.INFO, "", 0, "status", None, None)
    assert all(f.filter(info) for _ in range(10))  # only peer-naming warnings are limited


def test_radius_flood_from_unknown_addresses_does_not_flood_the_log() -> None:
    import io

    from collector import logging as flog

    buf = io.StringIO()
    flog.setup("info", "logfmt", buf)
    try:
        acct = RadiusAccounting(_radius_config().radius, Bindings(), 300_000)
        acct.handle([(b"\x04" + bytes(30), (f"10.8.{i // 256}.{i % 256}", 1)) for i in range(3000)], T0)
        malformed = [(b"\x04\x01\x00", ("127.0.0.1", 1))] * 500
        acct.handle([(_start(i, "x"), ("127.0.0.1", 1)) for i in range(50)] + malformed, T0)
    finally:
        flog.setup("info", "logfmt")
    lines = buf.getvalue().splitlines()
    assert acct.counters[("unknown", "unknown_client")] == 3000  # every request still counted
    assert acct.counters[("nas1", "short")] == 500
    assert len(lines) <= 100 + 5  # 100 new peers per minute, one line for the 500 malformed repeats


def test_radius_report_after_a_wrong_nas_clock_makes_bounded_usage() -> None:
    """A Start stamped in 1970 (a NAS without NTP) and an Interim stamped now: the delta is spread over at most
    radius.session_timeout_s before the Interim (not 56 years of 5-minute rows), every byte kept."""
    # (radius.max_event_age_s, on by default, would refuse the 1970 Start as too_old: tests/mediation/test_radius*.py)
    acct = RadiusAccounting(_radius_config("radius.session_timeout_s=86400", "radius.max_event_age_s=0").radius,
                            Bindings(), 300_000)
    a = ATTRIBUTES

    def req(ident: int, status: int, t_s: int, octets: int = 0) -> bytes:
        return accounting_request(ident, [(a["Acct-Status-Type"], struct.pack("!I", status)),
                                          (a["User-Name"], b"bob"), (a["Acct-Session-Id"], b"clock"),
                                          (a["Framed-IP-Address"], bytes([100, 64, 9, 9])),
                                          (a["Event-Timestamp"], struct.pack("!I", t_s)),
                                          (a["Acct-Output-Octets"], struct.pack("!I", octets))], SECRET)

    acct.handle([(req(1, 1, 100_000), ("127.0.0.1", 1))], T0)
    res = acct.handle([(req(2, 3, T0 // 1000, 123_456_789), ("127.0.0.1", 1))], T0)
    assert len(res.responses) == 1 and acct.span_clamped == 1
    assert res.usage.num_rows <= 2 * (86400 // 300 + 1)
    assert pa.compute.sum(res.usage.column("bytes")).as_py() == 123_456_789


# --- mediation work per batch ---------------------------------------------------------------------------------------

def test_long_records_are_mediated_in_bounded_slices_with_the_same_totals(tmp_path) -> None:
    """Day-long records split into 288 parts each: the batch goes to the mediator in slices of at most max_parts
    parts, and usage + rejects carry exactly the bytes one call would."""
    import time

    import numpy as np

    from bench.flowgen import flows_batch
    from collector.components import make_mediator
    from mediation.bounded import mediate_bounded, parts_per_record, slices_by_parts

    now = int(time.time() * 1000)
    b = flows_batch(3000, t0_ms=now - 90_000_000, span_ms=1000)
    cols = {n: b.column(n) for n in b.schema.names}
    for name, value in (("flow_start", now - 86_000_000), ("flow_end", now - 1000)):
        cols[name] = pa.array(np.full(3000, value, dtype=np.int64)).cast(b.schema.field(name).type)
    batch = pa.RecordBatch.from_arrays([cols[n] for n in b.schema.names], schema=b.schema)
    slices = slices_by_parts(batch, 300_000, max_parts=50_000)
    assert len(slices) > 10 and sum(s.num_rows for s in slices) == 3000
    per_record = int(parts_per_record(np.array([now - 86_000_000]), np.array([now - 1000]), 300_000)[0])
    assert per_record >= 287 and all(s.num_rows * per_record <= 50_000 for s in slices)

    def total(out: dict) -> dict:
        return {k: pa.compute.sum(v.column("bytes")).as_py() for k, v in out.items()
                if k in ("usage", "rejects") and v is not None and v.num_rows}

    sliced = total(mediate_bounded(make_mediator(load(None, [f"store.path={tmp_path / 'a'}"])), batch, now, 300_000,
                                   max_parts=50_000))
    whole = total(make_mediator(load(None, [f"store.path={tmp_path / 'b'}"])).process(batch, now))
    assert sliced == whole and sliced


def test_allowlist_and_rate_limit_follow_a_reload(tmp_path) -> None:
    """SIGHUP (Server.reload): a changed listen.allow / exporter_rate_limit applies to the next batch."""
    from collector.server import Server

    conf = tmp_path / "collector.toml"
    conf.write_text(f'[store]\npath = "{tmp_path}"\n[mediation]\nenabled = false\n')
    cfg = load(str(conf))
    server = Server(cfg, str(conf), registry=CollectorRegistry(), sink=ListSink(), mediator=None)
    server.pipeline = Pipeline(cfg, server.metrics, ListSink())
    assert server.pipeline.admission is None
    conf.write_text(conf.read_text() + '[listen]\nallow = ["192.0.2.0/24"]\n')
    assert server.reload()
    assert server.pipeline.process([(d, "203.0.113.1", T0) for d in _v5(2)]) == 0
    assert server.pipeline.process([(d, "192.0.2.1", T0) for d in _v5(2)]) == 20
    conf.write_text(conf.read_text().replace('allow = ["192.0.2.0/24"]', "allow = []"))
    assert server.reload() and server.pipeline.admission is None


def test_one_radius_request_that_trips_a_bug_costs_only_itself() -> None:
    """A request whose handling raises (a bug) must not cost the other requests of its batch their answers: the
    batch is rolled back and handled request by request; the bad one is counted as internal_error."""
    from collector.radius_listener import start_radius

    async def main() -> tuple[dict, int, set]:
        cfg = _radius_config()
        bindings = Bindings()
        server = await start_radius(asyncio.get_running_loop(), cfg, bindings, lambda t, b: None)
        acct = server.accounting
        real_apply = acct._apply

        def apply(p, nas, now_ms, sessions):
            if p.get(ATTRIBUTES["Acct-Session-Id"]) == b"poison":
                raise ZeroDivisionError("a bug")
            return real_apply(p, nas, now_ms, sessions)

        acct._apply = apply
        sent: list[bytes] = []

        class Proto:
            class transport:  # noqa: N801 - stands in for the datagram transport
                @staticmethod
                def sendto(payload, addr) -> None:
                    sent.append(payload)

        try:
            for i, session in enumerate(["a", "b", "poison", "c", "d"]):
                server.received(_start(i, session), ("127.0.0.1", 1), Proto)
            deadline = asyncio.get_running_loop().time() + 10
            while len(sent) < 4 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            return dict(acct.counters), acct.open_sessions(), {r[1] for r in sent}
        finally:
            await server.stop()

    counters, sessions, answered_ids = asyncio.run(main())
    assert answered_ids == {0, 1, 3, 4}  # every request but the poisoned one (identifier 2) answered
    assert sessions == 4
    assert counters[("nas1", "ok")] == 4 and counters[("internal", "internal_error")] == 1
