"""The batch fast path (single-set datagrams taken as blocks) gives exactly what decoding one datagram at a time gives.

``FlowDecoder.decode`` parses the headers of a whole batch with numpy and decodes runs of datagrams that are one
data set of a known fixed-length template without a Python step per datagram; every other datagram goes through the
per-datagram path at its place. With ``FAST_MIN_RUN`` set beyond any batch, everything takes the per-datagram path:
the two decoders below are fed the same mixed traffic (several exporters and domains, templates learned and
redefined mid-batch, data before its template, options, variable-length and multi-set datagrams, v5, sequence
gaps, reordering and restarts, garbage) and must agree on every column, every counter and the state they keep.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from decoders.netflow import fast_path
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, options_template_set, template_set, v5, v9

EXPORTERS = ["192.0.2.1", "192.0.2.2", "2001:db8::9"]
NARROW = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (21, 4), (22, 4)]
WIDE = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (5, 1), (1, 8), (2, 8), (10, 4), (14, 4), (152, 8),
        (153, 8), (15, 4), (16, 4), (17, 4), (9, 1), (13, 1), (61, 1), (34, 4)]
V6 = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (48, 1), (150, 4), (151, 4)]
ODD = [(8, 4), (12, 4), (1, 3), (2, 5), (7, 2)]  # odd-length counters: gathered bytes, not a dtype field
VARIABLE = [(8, 4), (12, 4), (1, 4), (82, 0xFFFF), (2, 4)]
LAYOUTS = [NARROW, WIDE, V6, ODD]


def _record(fields: list[tuple], rng: random.Random) -> dict:
    out: dict = {}
    for ie, length in fields:
        if length == 0xFFFF:
            out[ie] = b"x" * rng.choice([0, 3, 40, 300])
        elif ie in (21, 22):
            out[ie] = 3_600_000 - rng.randrange(0, 60_000)
        elif ie in (150, 151):
            out[ie] = T0_MS // 1000 - rng.randrange(0, 60)
        elif ie in (152, 153):
            out[ie] = T0_MS - rng.randrange(0, 60_000)
        elif ie == 34:
            out[ie] = rng.choice([0, 0, 1, 100])
        elif ie == 48:
            out[ie] = rng.choice([1, 2])
        else:
            out[ie] = rng.randrange(0, 1 << min(8 * length, 32)) if length != 16 else rng.randbytes(16)
    return out


class _Exporter:
    """One simulated exporter: its templates per (version, domain, id) and its sequence numbers."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.layouts: dict[tuple[int, int, int], list[tuple]] = {}
        self.seq: dict[tuple[int, int], int] = {}

    def header(self, version: int, domain: int, sets: list[bytes], records: int) -> bytes:
        """A datagram of ``sets``; advances the sequence number (v9: datagrams, IPFIX: data records)."""
        seq = self.seq.get((version, domain), self.rng.randrange(0, 1 << 32))
        self.seq[(version, domain)] = (seq + (1 if version == 9 else records)) % (1 << 32)
        export_ms = T0_MS + self.rng.choice([0, 0, 0, 1000])
        if version == 9:
            return v9(*sets, seq=seq, domain=domain, export_ms=export_ms)
        return ipfix(*sets, seq=seq, domain=domain, export_ms=export_ms)

    def template(self, version: int, domain: int, tid: int, layout: list[tuple]) -> bytes:
        self.layouts[(version, domain, tid)] = layout
        return template_set({tid: layout}, ipfix=version == 10)

    def data(self, version: int, domain: int, tid: int, n: int, pad: int = 0) -> tuple[bytes, int]:
        layout = self.layouts.get((version, domain, tid), NARROW)
        return data_set(tid, layout, [_record(layout, self.rng) for _ in range(n)], pad=pad), n


def traffic(seed: int, n: int = 600) -> list[list[tuple[bytes, str, int]]]:
    """Mixed traffic of three exporters, cut into batches of random sizes."""
    rng = random.Random(seed)
    exps = [_Exporter(name, rng) for name in EXPORTERS]
    keys = [(9, 0, 256), (9, 7, 256), (10, 0, 256), (10, 0, 300)]
    out: list[tuple[bytes, str, int]] = []
    received = T0_MS
    uniform = rng.choice([30, 10, 1])
    for i in range(n):
        e = rng.choice(exps[:2]) if rng.random() < 0.9 else exps[2]
        version, domain, tid = rng.choice(keys)
        received += rng.choice([0, 0, 1, 7])
        r = rng.random()
        if i < 3 or r < 0.03:  # a template (maybe redefined) on its own
            layout = rng.choice(LAYOUTS)
            dg = e.header(version, domain, [e.template(version, domain, tid, layout)], 0)
        elif r < 0.05:  # template and data in one datagram
            layout = rng.choice(LAYOUTS)
            t = e.template(version, domain, tid, layout)
            d, k = e.data(version, domain, tid, rng.randrange(1, 5))
            dg = e.header(version, domain, [t, d], k)
        elif r < 0.07:  # data of a template not yet known (held, replayed when it comes)
            d, k = e.data(version, domain, 400 + rng.randrange(2), 3)
            dg = e.header(version, domain, [d], k)
            if rng.random() < 0.5:
                out.append((dg, e.name, received))
                dg = e.header(version, domain, [e.template(version, domain, 400 + rng.randrange(2), NARROW)], 0)
        elif r < 0.08:  # variable-length records
            t = e.template(version, domain, 500, VARIABLE)
            d, k = e.data(version, domain, 500, rng.randrange(1, 6))
            dg = e.header(version, domain, [t, d] if rng.random() < 0.5 else [d], k)
        elif r < 0.09:  # sampling options
            opt = options_template_set(600, [(149 if version == 10 else 1, 4)], [(34, 4), (35, 1)],
                                       ipfix=version == 10)
            lay = [(149 if version == 10 else 1, 4), (34, 4), (35, 1)]
            d = data_set(600, lay, [{149: domain, 1: domain, 34: rng.choice([10, 100]), 35: 1}])
            dg = e.header(version, domain, [opt, d], 0)
        elif r < 0.10:
            dg = v5([{"src": "10.1.1.1"}] * rng.randrange(1, 4), seq=rng.randrange(1000), engine=domain & 0xFF)
        elif r < 0.11:  # withdrawal of every template (IPFIX) or garbage
            dg = ipfix(struct.pack(">HHHH", 2, 8, 2, 0), domain=domain) if rng.random() < 0.5 else rng.randbytes(60)
        elif r < 0.12:  # two data sets in one datagram
            d1, k1 = e.data(version, domain, tid, 2)
            d2, k2 = e.data(version, domain, tid, 3)
            dg = e.header(version, domain, [d1, d2], k1 + k2)
        else:  # the usual: one data set of a known template
            k = uniform if rng.random() < 0.7 else rng.randrange(1, 40)
            pad = rng.choice([0, 0, 0, 0, 1, 3])
            d, k = e.data(version, domain, tid, k, pad)
            dg = e.header(version, domain, [d], k)
        m = rng.random()
        if m < 0.01:
            dg = dg[:rng.randrange(len(dg))]  # truncated
        elif m < 0.02 and dg[:2] == b"\x00\x0a":
            dg = dg[:2] + struct.pack(">H", len(dg) + 4) + dg[4:]  # IPFIX length disagrees
        elif m < 0.03:
            e.seq = {k: (v + rng.choice([1, 5, -3, 1 << 20])) % (1 << 32) for k, v in e.seq.items()}  # gap/restart
        elif m < 0.04 and out:
            out[-1], dg = (dg, e.name, received), out[-1][0]  # reordered
        out.append((dg, e.name, received))
    batches, i = [], 0
    while i < len(out):
        k = rng.choice([1, 3, 5, 40, 200, 600])
        batches.append(out[i:i + k])
        i += k
    return batches


def _snapshot(dec: FlowDecoder) -> tuple:
    def tracker(t):
        return t.resets, {k: (s.expected, [list(g) for g in s.gaps], s.behind) for k, s in t.states.items()}
    last_seen = {name: st.last_seen_ms for name, st in dec.exporters.items()}
    return dec.save_state(), tracker(dec.state.sequences), tracker(dec.state.records_sequences), last_seen


def _same(a, b) -> None:
    assert a.n_flows == b.n_flows
    for attr in ("datagrams", "records", "errors", "sequence_lost", "sequence_resets", "limit_hits",
                 "templates_learned", "pending_held", "pending_replayed", "pending_dropped"):
        assert +getattr(a, attr) == +getattr(b, attr), attr
    assert list(a.flows) == list(b.flows)
    for name, col in a.flows.items():
        other = b.flows[name]
        assert col.dtype == other.dtype and col.shape == other.shape, name
        assert np.array_equal(col, other), name
        assert col.flags.writeable and col.flags.c_contiguous, name


def _compare(batches, limits: DecoderLimits | None = None, monkeypatch=None, prepare=None) -> int:
    """Decode ``batches`` with the fast path and without; every result and the final state must match.
    ``prepare`` is called on both decoders first."""
    fast, slow = FlowDecoder(limits), FlowDecoder(limits)
    if prepare is not None:
        prepare(fast)
        prepare(slow)
    flows_seen = 0
    for batch in batches:
        a = fast.decode(batch)
        monkeypatch.setattr(fast_path, "FAST_MIN_RUN", 1 << 30)
        b = slow.decode(batch)
        monkeypatch.undo()
        _same(a, b)
        assert not a.errors.get(("192.0.2.1", "internal_error")) and not a.errors.get(("192.0.2.2", "internal_error"))
        flows_seen += a.n_flows
    assert _snapshot(fast) == _snapshot(slow)
    return flows_seen


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_equals_per_datagram_path(seed: int, monkeypatch) -> None:
    assert _compare(traffic(seed), monkeypatch=monkeypatch) > 1000


def test_fast_path_equals_per_datagram_path_at_limits(monkeypatch) -> None:
    """Tight bounds: templates refused, held data dropped, sequence keys evicted (order matters there)."""
    limits = DecoderLimits(max_exporters=2, max_templates_per_exporter=2, pending_max_bytes=2000)
    for seed in range(3):
        _compare(traffic(100 + seed), limits, monkeypatch)


def test_sequence_key_eviction_keeps_datagram_order(monkeypatch) -> None:
    """A tracker full of keys: the batch's observations are made in datagram order, as one at a time would."""
    def small_trackers(dec: FlowDecoder) -> None:
        for tracker in (dec.state.sequences, dec.state.records_sequences):
            tracker.max_keys = 2

    _compare(traffic(7), monkeypatch=monkeypatch, prepare=small_trackers)


def _uniform(n: int, records: int, *, seq0: int = 0) -> list[tuple[bytes, str, int]]:
    t = template_set({256: NARROW}, ipfix=False)
    rng = random.Random(1)
    out = [(v9(t, seq=seq0), "192.0.2.1", T0_MS)]
    for i in range(n):
        recs = [_record(NARROW, rng) for _ in range(records)]
        out.append((v9(data_set(256, NARROW, recs), seq=seq0 + 1 + i), "192.0.2.1", T0_MS + i))
    return out


def test_block_of_evenly_spaced_datagrams_decodes_every_record(monkeypatch) -> None:
    """Datagrams of one length: their records are read in place (a strided view); values as one at a time."""
    batch = _uniform(50, 30)
    a = FlowDecoder().decode(batch)
    monkeypatch.setattr(fast_path, "FAST_MIN_RUN", 1 << 30)
    b = FlowDecoder().decode(batch)
    _same(a, b)
    assert a.n_flows == 1500 and not a.errors and not a.sequence_lost
    assert list(a.flows["src_addr"][:1]) == [b"\0" * 10 + b"\xff\xff" + batch[1][0][24:28]]
    assert list(a.flows["time_received"][[0, 29, 30, 1499]]) == [T0_MS, T0_MS, T0_MS + 1, T0_MS + 49]


def test_sequence_gap_inside_a_block_is_counted() -> None:
    batch = _uniform(60, 2)
    del batch[50]  # v9 datagram with sequence 50 lost; 10 datagrams follow it in this batch
    dec = FlowDecoder()
    res = dec.decode(batch)
    assert res.n_flows == 59 * 2 and not res.sequence_lost  # it may still come (reordering)
    later = _uniform(40, 2, seq0=60)[1:]  # counted once patience (32 datagrams) has passed, and once only
    assert dec.decode(later).sequence_lost == {"192.0.2.1": 1}
    assert not dec.decode(_uniform(40, 2, seq0=100)[1:]).sequence_lost


def test_template_learned_mid_batch_applies_to_the_datagrams_after_it() -> None:
    """Data before its template is held, the template in the middle of the batch releases it, data after it
    decodes at once; all in one batch of single-set datagrams."""
    rng = random.Random(3)
    data = [v9(data_set(256, NARROW, [_record(NARROW, rng) for _ in range(5)]), seq=i) for i in range(20)]
    batch = [(d, "192.0.2.1", T0_MS) for d in data[:10]]
    batch.append((v9(template_set({256: NARROW}, ipfix=False), seq=10), "192.0.2.1", T0_MS))
    batch += [(v9(data_set(256, NARROW, [_record(NARROW, rng)] * 5), seq=11 + i), "192.0.2.1", T0_MS)
              for i in range(10)]
    res = FlowDecoder().decode(batch)
    assert res.n_flows == 100 and res.pending_held["192.0.2.1"] == 10 and res.pending_replayed["192.0.2.1"] == 10
    assert not res.errors and not res.sequence_lost


def test_bad_datagram_in_a_block_costs_only_itself() -> None:
    batch = _uniform(20, 3)
    batch.insert(8, (batch[8][0][:30], "192.0.2.1", T0_MS))  # truncated copy
    batch.insert(12, (b"\x00\x09" + bytes(10), "192.0.2.1", T0_MS))
    res = FlowDecoder().decode(batch)
    assert res.n_flows == 60
    assert res.errors == {("192.0.2.1", "bad_set_length"): 1, ("192.0.2.1", "truncated"): 1}


def test_ipv4_address_bytes_in_place() -> None:
    fields = [(8, 4), (12, 4), (1, 4)]
    dgs = [(v9(template_set({256: fields}, ipfix=False)), "192.0.2.1", T0_MS)]
    dgs += [(v9(data_set(256, fields, [{8: ip4(f"10.0.{i}.{j}"), 12: ip4("192.0.2.9"), 1: j} for j in range(4)]),
                seq=i + 1), "192.0.2.1", T0_MS) for i in range(8)]
    f = FlowDecoder().decode(dgs).flows
    raw = f["src_addr"][:5].view(np.uint8).reshape(5, 16)
    assert [r[12:].tobytes() for r in raw] == [ip4(a) for a in ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3",
                                                                "10.0.1.0")]
    assert list(f["raw_bytes"][:5]) == [0, 1, 2, 3, 0]


def test_joiner_reuses_its_buffer_but_never_overwrites_a_view_still_held() -> None:
    from decoders.netflow.templated import Joiner

    j = Joiner(keep_bytes=64)
    first = j.join([b"ab", b"cd"], 4)
    held = first  # a view of the batch still alive: the next batch must not write over it
    second = j.join([b"xy"], 2)
    assert bytes(held) == b"abcd" and bytes(second) == b"xy"
    del first, held
    third = j.join([b"12", b"345"], 5)
    assert bytes(third) == b"12345"
    big = j.join([b"z" * 100], 100)  # beyond keep_bytes: a buffer of its own, not kept
    assert isinstance(big, bytes) and big == b"z" * 100


def test_flows_to_arrow_shares_memory_and_fills_only_missing_columns() -> None:
    from decoders.schema import FLOWS

    res = FlowDecoder().decode(_uniform(6, 3))
    batch = FLOWS.to_arrow(res.flows)
    assert batch.schema == FLOWS.arrow_schema and batch.num_rows == 18
    assert batch.column("batch_id").to_pylist() == [0] * 18  # not produced by the decoder: zeros
    src = batch.column("src_addr")
    assert src.buffers()[1].address == res.flows["src_addr"].ctypes.data  # no copy of the addresses
    assert src.buffers()[1].to_pybytes()[:18 * 16] == res.flows["src_addr"].tobytes()
    assert batch.column("flow_start").cast("int64").to_pylist() == res.flows["flow_start"].tolist()
