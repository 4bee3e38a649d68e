"""Bad input: each problem is counted per exporter and reason, never raised, and the good sets still decode."""

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.errors import REASONS
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from tests.decoders.packets import (
    T0_MS,
    V4_FIELDS,
    data_set,
    ip4,
    ipfix,
    options_template_set,
    template_set,
    v4_record,
    v5,
    v9,
)

EXP = "192.0.2.70"
SMALL = [(8, 4), (1, 4)]
GOOD_V9 = template_set({256: SMALL}, ipfix=False)
GOOD_DATA = data_set(256, SMALL, [{8: ip4("10.0.0.1"), 1: 42}])


def decode(*payloads, dec=None):
    return (dec or FlowDecoder()).decode([(p, EXP, T0_MS) for p in payloads])


def check_consistent(res, n_inputs):
    assert res.errors[(EXP, "internal_error")] == 0
    assert {reason for _, reason in res.errors} <= set(REASONS) - {"internal_error"}
    assert sum(res.datagrams.values()) == n_inputs
    assert res.n_flows == sum(res.records.values())
    assert {len(c) for c in res.flows.values()} == {res.n_flows}


def test_unknown_version_and_empty_datagrams():
    res = decode(b"", b"\x00", struct.pack(">H", 7) + bytes(30), b"\xff" * 100)
    assert res.errors[(EXP, "truncated")] == 2 and res.errors[(EXP, "unknown_version")] == 2
    assert res.datagrams[(EXP, 0)] == 4


def test_short_headers():
    res = decode(b"\x00\x09" + bytes(10), b"\x00\x0a" + bytes(10), b"\x00\x05" + bytes(10))
    assert res.errors[(EXP, "truncated")] == 3
    assert res.datagrams == {(EXP, 9): 1, (EXP, 10): 1, (EXP, 5): 1}


def test_set_length_beyond_datagram_keeps_earlier_sets():
    bad = struct.pack(">HH", 256, 400) + bytes(8)
    res = decode(v9(GOOD_V9, GOOD_DATA, bad))
    assert res.n_flows == 1 and res.errors[(EXP, "bad_set_length")] == 1


def test_set_length_below_header():
    res = decode(v9(GOOD_V9, GOOD_DATA, struct.pack(">HH", 256, 2)))
    assert res.n_flows == 1 and res.errors[(EXP, "bad_set_length")] == 1


def test_zero_length_and_padding_only_sets_skip_to_the_next_set():
    empty = struct.pack(">HH", 256, 4)
    padding_only = struct.pack(">HH", 256, 8) + bytes(4)  # shorter than one 8-byte record
    empty_template_set = struct.pack(">HH", 0, 4)
    res = decode(v9(GOOD_V9, empty, padding_only, empty_template_set, GOOD_DATA))
    assert res.n_flows == 1 and res.errors[(EXP, "empty_set")] == 3


def test_templates_with_zero_and_sixty_thousand_fields():
    zero = struct.pack(">HH", 0, 8) + struct.pack(">HH", 300, 0)
    huge = struct.pack(">HH", 0, 8 + 16) + struct.pack(">HH", 301, 60_000) + bytes(16)
    res = decode(v9(zero, huge, GOOD_V9, GOOD_DATA))
    assert res.n_flows == 1
    assert res.errors[(EXP, "bad_template")] == 1 and res.errors[(EXP, "template_too_many_fields")] == 1
    ipfix_huge = struct.pack(">HH", 2, 8 + 16) + struct.pack(">HH", 301, 60_000) + bytes(16)
    res = decode(ipfix(ipfix_huge, template_set({256: SMALL}, ipfix=True), GOOD_DATA))
    assert res.n_flows == 1 and res.errors[(EXP, "template_too_many_fields")] == 1


def test_template_limits_configurable():
    dec = FlowDecoder(limits=DecoderLimits(max_template_fields=10))
    res = decode(v9(template_set({256: V4_FIELDS}, ipfix=False),
                    data_set(256, V4_FIELDS, [v4_record()])), dec=dec)
    assert res.errors[(EXP, "template_too_many_fields")] == 1 and res.pending_held[EXP] == 1


def test_truncated_template_and_reserved_ids():
    cut = struct.pack(">HH", 0, 12) + struct.pack(">HH", 300, 5) + bytes(4)
    reserved_template = struct.pack(">HH", 0, 12) + struct.pack(">HHHH", 12, 1, 8, 4)
    reserved_set = struct.pack(">HH", 77, 8) + bytes(4)
    res = decode(v9(cut, reserved_template, reserved_set, GOOD_V9, GOOD_DATA))
    assert res.n_flows == 1
    assert res.errors[(EXP, "truncated")] == 1 and res.errors[(EXP, "bad_template")] == 1
    assert res.errors[(EXP, "reserved_set_id")] == 1


def test_bad_options_templates():
    bad_v9 = struct.pack(">HH", 1, 12) + struct.pack(">HHH", 300, 3, 0) + bytes(2)  # scope length not x4
    no_scope = struct.pack(">HH", 3, 14) + struct.pack(">HHH", 300, 1, 0) + struct.pack(">HH", 34, 4)
    res = decode(v9(bad_v9, GOOD_V9, GOOD_DATA))
    assert res.n_flows == 1 and res.errors[(EXP, "bad_template")] == 1
    res = decode(ipfix(no_scope, template_set({256: SMALL}, ipfix=True), GOOD_DATA))
    assert res.n_flows == 1 and res.errors[(EXP, "bad_template")] == 1


def test_ipfix_length_disagrees():
    good = ipfix(template_set({256: SMALL}, ipfix=True), GOOD_DATA)
    longer = good[:2] + struct.pack(">H", len(good) + 50) + good[4:]
    shorter = good[:2] + struct.pack(">H", len(good) - len(GOOD_DATA)) + good[4:]
    tiny = good[:2] + struct.pack(">H", 3) + good[4:]
    res = decode(longer, shorter, tiny)
    assert res.errors[(EXP, "truncated")] == 1 and res.errors[(EXP, "length_mismatch")] == 2
    assert res.n_flows == 1  # the longer one is complete; the shorter one ends before its data set


def test_variable_length_record_overrun_keeps_earlier_records():
    fields = [(8, 4), (96, 0xFFFF), (1, 4)]
    good = b"".join(struct.pack(">4sB", ip4("10.0.0.1"), 2) + b"ab" + struct.pack(">I", 5) for _ in range(2))
    bad = struct.pack(">4sB", ip4("10.0.0.2"), 200) + b"short"
    body = good + bad
    res = decode(ipfix(template_set({256: fields}, ipfix=True), struct.pack(">HH", 256, 4 + len(body)) + body))
    assert res.n_flows == 2 and res.errors[(EXP, "bad_record")] == 1


def test_trailing_garbage_after_last_set():
    res = decode(v9(GOOD_V9, GOOD_DATA) + b"\x01\x02")
    assert res.n_flows == 1 and res.errors[(EXP, "truncated")] == 1


# ---------------------------------------------------------------------------------------------- properties
VALID = [
    v5([{}, {"src": "10.9.9.9"}], seq=3),
    v9(GOOD_V9, GOOD_DATA, template_set({257: V4_FIELDS}, ipfix=False), data_set(257, V4_FIELDS, [v4_record(1)])),
    ipfix(options_template_set(300, [(48, 1)], [(50, 4)], ipfix=True), data_set(300, [(48, 1), (50, 4)],
          [{48: 1, 50: 10}]), template_set({256: SMALL + [(48, 1)]}, ipfix=True),
          data_set(256, SMALL + [(48, 1)], [{8: ip4("10.0.0.1"), 1: 1, 48: 1}] * 3)),
    ipfix(template_set({258: [(8, 4), (96, 0xFFFF), (1, 4, 9), (1, 2)]}, ipfix=True),
          data_set(258, [(8, 4), (96, 0xFFFF), (1, 4), (1, 2)], [{96: "x" * 300, 1: 3}, {96: "", 1: 4}])),
    v9(options_template_set(301, [(1, 4)], [(34, 4)], ipfix=False), data_set(301, [(1, 4), (34, 4)], [{34: 9}])),
]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "u16"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=8))
        elif op == "u16" and pos + 2 <= len(data):
            data[pos:pos + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 3, 4, 255, 256, 0x8000, 0xFFFF])))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=5))
def test_random_bytes_never_raise(payloads):
    check_consistent(decode(*payloads), len(payloads))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([5, 9, 10]), st.binary(max_size=400)), min_size=1, max_size=5))
def test_random_bodies_behind_valid_versions_never_raise(items):
    payloads = [struct.pack(">H", v) + body for v, body in items]
    check_consistent(decode(*payloads), len(payloads))


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=6))
def test_mutated_valid_datagrams_never_raise(payloads):
    dec = FlowDecoder()
    res = decode(*VALID, *payloads, dec=dec)  # templates learned first, so mutated data sets go deep
    check_consistent(res, len(VALID) + len(payloads))
    res = decode(*payloads, dec=dec)
    check_consistent(res, len(payloads))
    dec.load_state(dec.save_state())
    dec.expire(T0_MS + 10**9)


def test_good_sets_survive_among_fuzzed_ones():
    rng = np.random.default_rng(1)
    junk = [bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)) for _ in range(200)]
    res = decode(*junk, v9(GOOD_V9, GOOD_DATA))
    assert res.flows["raw_bytes"].tolist()[-1] == 42
    check_consistent(res, 201)
