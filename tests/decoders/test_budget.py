"""Issue 14: template memory bounded in bytes, refused before work is spent; zero-length fields and v9 record counts."""

from __future__ import annotations

import gc
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.netflow import fields as ies
from decoders.netflow import saved_state as saved
from decoders.netflow import templated
from decoders.netflow import templates as T
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from decoders.netflow.templates import template_cost
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, template_set, v9

EXP = "192.0.2.80"
KNOWN = [ie.id for ie in ies.REGISTRY.values() if ie.length != ies.VARIABLE_LENGTH and ie.length <= 8]


def _shapes() -> dict[str, list[tuple]]:
    """The template shapes that cost most per field or per byte on the wire."""
    alternating = []
    for i in range(256):  # a variable-length field before every field read: a dtype per segment
        alternating += [(82, 65535), (KNOWN[i % len(KNOWN)], ies.REGISTRY[KNOWN[i % len(KNOWN)]].length)]
    return {
        "typical": [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (5, 1), (1, 8), (2, 8), (10, 4), (14, 4),
                    (152, 8), (153, 8), (15, 4), (16, 4), (17, 4), (9, 1), (13, 1), (61, 1)],
        "unknown_512": [(1000 + i, 4) for i in range(512)],
        "known_512": [(KNOWN[i % len(KNOWN)], ies.REGISTRY[KNOWN[i % len(KNOWN)]].length) for i in range(512)],
        "variable_alternating_512": alternating,
        "variable_512": [(82, 65535)] * 512,
        "enterprise_512": [(100 + i, 4, 9) for i in range(512)],
    }


@pytest.mark.parametrize("shape", list(_shapes()))
def test_the_cost_estimate_covers_what_the_decoder_keeps(shape: str) -> None:
    """Learned, compiled at first data and copied into the state writer's mirror: the memory really held per
    template (tracemalloc, distinct templates so nothing is shared) stays within template_cost()."""
    fields = _shapes()[shape]
    n = 60
    dec = FlowDecoder(DecoderLimits(max_templates_per_exporter=10_000, template_max_bytes_per_exporter=1 << 40,
                                    template_max_bytes=1 << 42))
    distinct = [[*fields[:-1], (30000 + i, 4)] for i in range(n)]  # every template its own compiled form
    tmpl = [ipfix(template_set({256 + i: f}, ipfix=True), domain=i) for i, f in enumerate(distinct)]
    data = [ipfix(data_set(256 + i, f, [{}]), domain=i) for i, f in enumerate(distinct)]
    dec.decode([(tmpl[0], EXP, T0_MS), (data[0], EXP, T0_MS)])  # first-use allocations out of the measurement
    mirror = saved.StateMirror()
    for key, record in dec.state_changes().records():
        mirror.apply(key, record)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t, d in zip(tmpl[1:], data[1:], strict=True):
            dec.decode([(t, EXP, T0_MS)])
            dec.decode([(d, EXP, T0_MS)])
        for key, record in dec.state_changes().records():
            mirror.apply(key, record)
        gc.collect()
        kept = (tracemalloc.get_traced_memory()[0] - before) / (n - 1)
    finally:
        tracemalloc.stop()
    entries = list(dec.exporters[EXP].templates.values())
    assert len(entries) == n and all(e._compiled is not None for e in entries)
    estimate = entries[-1].cost
    assert kept <= estimate, f"{shape}: {kept:.0f} bytes kept per template, estimated {estimate}"
    assert dec.template_memory() == sum(e.cost for e in entries)


def _big_templates(first: int, count: int, *, generation: int = 0) -> bytes:
    return ipfix(template_set({first + i: [(1000 + (j + i + 7 * generation) % 20000, 4) for j in range(512)]
                               for i in range(count)}, ipfix=True))


def test_refused_templates_cost_no_field_parsing_and_nothing_is_compiled_before_data(monkeypatch) -> None:
    calls = {"fields_of": 0, "compile": 0}
    fields_of, compile_ = T.fields_of, T._compile

    def counting_fields_of(*a, **k):
        calls["fields_of"] += 1
        return fields_of(*a, **k)

    def counting_compile(*a, **k):
        calls["compile"] += 1
        return compile_(*a, **k)

    monkeypatch.setattr(T, "fields_of", counting_fields_of)
    monkeypatch.setattr(T, "_compile", counting_compile)
    cost = template_cost(512, 0, 2048)
    dec = FlowDecoder(DecoderLimits(template_max_bytes_per_exporter=3 * cost))
    res = dec.decode([(_big_templates(256, 30), EXP, T0_MS)])  # a 61 KB datagram of 30 512-field templates
    assert dec.templates_known() == {EXP: 3}
    assert res.limit_hits[(EXP, "template_max_bytes_per_exporter")] == 27
    assert dec.template_memory() == 3 * cost
    assert calls == {"fields_of": 0, "compile": 0}  # refused ones never, admitted ones not before their data
    fields = [(1000 + j % 20000, 4) for j in range(512)]
    res = dec.decode([(ipfix(data_set(256, fields, [{}, {}])), EXP, T0_MS)])
    assert res.n_flows == 2 and calls == {"fields_of": 1, "compile": 1}


def test_the_total_budget_keeps_a_share_for_every_exporter() -> None:
    """Flooding sources fill the shared pool; an exporter that starts afterwards still gets its templates."""
    cost = template_cost(512, 0, 2048)
    # 8 exporters: a reserved share of one such template each, a pool of 8 more
    limits = DecoderLimits(max_exporters=8, template_max_bytes=16 * cost, template_max_bytes_per_exporter=5 * cost)
    dec = FlowDecoder(limits)
    flood = [(_big_templates(256, 30), f"198.51.100.{i}", T0_MS) for i in range(6)]
    res = dec.decode(flood)
    assert res.limit_hits[("198.51.100.0", "template_max_bytes_per_exporter")] == 25
    assert res.limit_hits[("198.51.100.2", "template_max_bytes")] == 29  # the pool is full: its own share only
    assert dec.template_memory() == (5 + 5 + 4 * 1) * cost <= limits.template_max_bytes
    fields = [(8, 4), (1, 4)]
    first = data_set(256, fields, [{8: ip4("10.0.0.1"), 1: 5}])
    res = dec.decode([(v9(template_set({256: fields}, ipfix=False), first), EXP, T0_MS)])
    assert res.n_flows == 1 and not res.limit_hits and not res.errors
    assert dec.template_memory() <= limits.template_max_bytes


def test_a_change_refused_for_the_budget_forgets_the_old_template() -> None:
    """Data must not be decoded with fields its exporter replaced: they wait for a template that fits instead."""
    small = [(8, 4), (1, 4)]
    dec = FlowDecoder(DecoderLimits(template_max_bytes_per_exporter=template_cost(2, 0, 8) + 100))
    assert dec.decode([(ipfix(template_set({256: small}, ipfix=True)), EXP, T0_MS)]).templates_learned[EXP] == 1
    big = [(1000 + i, 4) for i in range(100)]
    res = dec.decode([(ipfix(template_set({256: big}, ipfix=True), data_set(256, big, [{}])), EXP, T0_MS)])
    assert res.limit_hits[(EXP, "template_max_bytes_per_exporter")] == 1
    assert dec.templates_known() == {} and res.n_flows == 0 and res.pending_held[EXP] == 1
    assert dec.template_memory() == 0


def test_compiled_forms_live_only_as_long_as_a_template_uses_them() -> None:
    fields = [(8, 4), (1, 4), (31000, 2)]
    dec = FlowDecoder()
    dec.decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [{}])), EXP, T0_MS)])
    spec = dec.exporters[EXP].templates[(10, 0, 256)].spec
    assert (spec, False, False, 0) in T._CACHE or any(k[0] == spec for k in T._CACHE.keys())
    dec.decode([(ipfix(b"\x00\x02\x00\x08\x01\x00\x00\x00"), EXP, T0_MS)])  # IPFIX withdrawal of 256
    gc.collect()
    assert dec.templates_known() == {} and not any(k[0] == spec for k in T._CACHE.keys())


def test_zero_length_fields_are_kept_but_counted() -> None:
    fields = [(8, 4), (999, 0), (1, 4)]
    res = FlowDecoder().decode([
        (ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [{8: ip4("10.0.0.1"), 1: 9}])), EXP,
         T0_MS),
        (ipfix(template_set({256: fields}, ipfix=True), seq=1), EXP, T0_MS)])
    assert res.errors == {(EXP, "zero_length_field"): 2}  # counted each time the template is received
    assert res.n_flows == 1 and res.flows["raw_bytes"].tolist() == [9]


def test_v9_record_count_disagreeing_with_the_content_is_counted_and_the_records_still_decode() -> None:
    fields = [(8, 4), (1, 4)]
    recs = [{8: ip4("10.0.0.1"), 1: i} for i in range(3)]
    tmpl = template_set({256: fields}, ipfix=False)
    dec = FlowDecoder()
    res = dec.decode([(v9(tmpl, data_set(256, fields, recs), count=2), EXP, T0_MS),  # 4 records
                      (v9(data_set(256, fields, recs), seq=1), EXP, T0_MS)])  # right
    assert res.errors == {(EXP, "record_count_mismatch"): 1} and res.n_flows == 6
    # the batched path (single data set datagrams taken as a block): the same count
    res = dec.decode([(v9(data_set(256, fields, recs), seq=2 + i, count=3 if i % 2 else 7), EXP, T0_MS)
                      for i in range(8)])
    assert res.errors == {(EXP, "record_count_mismatch"): 4} and res.n_flows == 24
    # variable-length records: checked once they are counted; data held for a missing template: not checkable
    var = [(8, 4), (82, 65535)]
    res = dec.decode([(v9(template_set({257: var}, ipfix=False), data_set(257, var, [{82: b"ge-0/0/1"}] * 2),
                          seq=10), EXP, T0_MS),
                      (v9(data_set(257, var, [{82: b"x"}] * 2), seq=11, count=5), EXP, T0_MS),
                      (v9(data_set(300, fields, recs), seq=12, count=9), EXP, T0_MS)])
    assert res.errors == {(EXP, "record_count_mismatch"): 1} and res.n_flows == 4


def test_a_v9_count_of_flow_records_only_is_accepted_as_softflowd_sends_it() -> None:
    """softflowd's header counts the flow records only (not templates, options templates or options data)."""
    from tests.decoders.packets import options_template_set

    fields = [(8, 4), (1, 4)]
    recs = [{8: ip4("10.0.0.1"), 1: i} for i in range(3)]
    parts = (template_set({256: fields}, ipfix=False), options_template_set(300, [(1, 4)], [(34, 4)], ipfix=False),
             data_set(300, [(1, 4), (34, 4)], [{34: 10}]), data_set(256, fields, recs))
    res = FlowDecoder().decode([(v9(*parts, count=3), EXP, T0_MS), (v9(*parts, seq=1), EXP, T0_MS),
                                (v9(*parts, seq=2, count=4), EXP, T0_MS)])
    assert res.errors == {(EXP, "record_count_mismatch"): 1} and res.n_flows == 9


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1)), min_size=1,
                max_size=20), st.integers(1, 20), st.integers(0, 200))
def test_field_specifiers_are_skipped_as_a_walk_one_by_one_would(specs, count, cut) -> None:
    """scan_specs and spec_lengths (no Python loop) find where IPFIX specifiers end and their lengths exactly as
    walking them one by one does."""
    body = b"xx" + b"".join(struct.pack(">HHI", ie, n, pen) if ie & 0x8000 else struct.pack(">HH", ie, n)
                            for ie, n, pen in specs)
    end = max(2, len(body) - cut)
    pos, lengths, want = 2, [], None
    for _ in range(count):
        if end - pos < 4:
            break
        ie, n = struct.unpack_from(">HH", body, pos)
        pos += 4
        if ie & 0x8000:
            if end - pos < 4:
                break
            pos += 4
        lengths.append(n)
    else:
        want = (pos, lengths)
    got = templated.scan_specs(body, 2, end, count, True)
    if want is None:
        assert got is None
    else:
        assert got == want[0]
        assert templated.spec_lengths(body[2:got], True).tolist() == want[1]
