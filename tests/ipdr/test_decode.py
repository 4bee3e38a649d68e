"""Compact XDR column decoding and the collector session state machine (sans-I/O)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cmts import CmtsSimulator
from decoders.ipdr import messages as m
from decoders.ipdr.errors import IpdrStateError, IpdrTemplateError
from decoders.ipdr.session import SESSION_TRANSITIONS, CollectorConnection, SessionInfo, SessState
from decoders.ipdr.xdr import TYPES, compile_template, decode_records, encode_value
from tests.ipdr.helpers import connected, records, start_flows, violations

ALL_TYPES = [(f"f{t:x}", t) for t in TYPES]
VALUES = {0x21: -5, 0x22: 4_000_000_000, 0x23: -(2**40), 0x24: 2**64 - 1, 0x25: 1.5, 0x26: -2.25,
          0x27: b"\x01\x02", 0x28: "h\u00e9llo", 0x29: True, 0x2A: -3, 0x2B: 250, 0x2C: -300, 0x2D: 65000,
          0x122: 1_700_000_000, 0x224: 1_700_000_000_123, 0x322: "10.1.2.3", 0x427: "2001:db8::5",
          0x527: bytes(range(16)), 0x623: 1_700_000_000_123_456, 0x723: 0x001122334455, 0x827: "192.0.2.9"}


def _template(fields, enabled=None):
    enabled = enabled or {}
    return compile_template(m.TemplateBlock(1, "s", "t", tuple(
        m.FieldDescriptor(t, i, name, enabled.get(name, True)) for i, (name, t) in enumerate(fields))))


def _decode(template, blobs):
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return decode_records(template, b"".join(blobs), starts, lengths)


def test_every_type_decodes_to_its_column():
    blob = b"".join(encode_value(t, VALUES[t]) for _, t in ALL_TYPES)
    out = _decode(_template(ALL_TYPES), [blob, blob]).columns
    assert out["f21"].tolist() == [-5, -5] and out["f24"].tolist() == [2**64 - 1] * 2
    assert out["f28"].to_pylist() == ["h\u00e9llo"] * 2 and out["f27"].to_pylist() == [b"\x01\x02"] * 2
    assert out["f29"].tolist() == [True, True] and out["f25"][0] == 1.5
    assert out["f122"][0] == 1_700_000_000_000 and out["f224"][0] == 1_700_000_000_123
    assert out["f623"][0] == 1_700_000_000_123 and out["f723"][0] == 0x001122334455
    assert out["f322"][0] == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert out["f427"][0] == bytes.fromhex("20010db8000000000000000000000005")
    assert out["f827"][0] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 9])
    assert out["f527"][0] == bytes(range(16))


@pytest.mark.parametrize("encoded,expected", [
    (struct.pack(">I", 16) + bytes.fromhex("20010db8000000000000000000000001"), "20010db8000000000000000000000001"),
    (struct.pack(">I", 0), "00" * 16),
    (struct.pack(">I", 11) + b"2001:db8::7", "20010db8000000000000000000000007"),  # sent as text
])
def test_ipv6_variants_seen_in_the_field(encoded, expected):
    fields = [("CmIpv6Addr", 0x427), ("After", 0x22)]
    out = _decode(_template(fields), [encoded + struct.pack(">I", 42)]).columns
    assert out["CmIpv6Addr"][0].hex() == expected.ljust(32, "0")[:32] if expected != "00" * 16 else True
    assert out["After"][0] == 42


def test_ipv6_bare_16_bytes_per_exporter_option():
    block = m.TemplateBlock(1, "s", "t", (m.FieldDescriptor(0x427, 1, "A", True), m.FieldDescriptor(0x22, 2, "B")))
    raw = bytes.fromhex("20010db8000000000000000000000009") + struct.pack(">I", 7)
    out = decode_records(compile_template(block, ipv6_bare=True), raw, np.array([0]), np.array([len(raw)])).columns
    assert out["A"][0][-1] == 9 and out["B"][0] == 7


def test_disabled_fields_are_not_on_the_wire_and_unknown_types_only_matter_enabled():
    fields = [("A", 0x22), ("Mystery", 0x999), ("B", 0x28)]
    t = _template(fields, {"Mystery": False})
    assert _decode(t, [struct.pack(">I", 1) + encode_value(0x28, "x")]).columns["B"].to_pylist() == ["x"]
    with pytest.raises(IpdrTemplateError) as exc:
        _template(fields)
    assert exc.value.reason == "unknown_field_type"


def test_a_bad_record_costs_only_itself():
    t = _template([("S", 0x28), ("N", 0x24)])
    good = encode_value(0x28, "ok") + encode_value(0x24, 5)
    overrun = struct.pack(">I", 1000) + b"xx"
    leftover = good + b"\0"
    res = _decode(t, [good, overrun, good, leftover, good])
    assert res.bad == 2 and res.index.tolist() == [0, 2, 4] and res.columns["N"].tolist() == [5, 5, 5]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=8))
def test_random_records_never_raise(blobs):
    t = _template([("S", 0x28), ("M", 0x723), ("V", 0x427), ("N", 0x24)])
    res = _decode(t, blobs)
    assert res.bad + len(res) == len(blobs)


def _conn_with_flows(sim=None):
    sim = sim or CmtsSimulator(4)
    conn = connected()
    start_flows(conn, sim)
    return conn, sim


def test_data_before_session_start_closes_only_that_session():
    conn, sim = _conn_with_flows()
    sim.generate_interval()
    q1 = sim.sessions[1].queue
    stray = m.encode(m.Data(1, 1, sim.config_id, 0, q1[0].dsn, q1[0].record))
    events = conn.receive_data(stray + sim.encode_document(2))
    (v,) = violations(events)
    assert v.session_id == 1 and v.reason == "invalid_for_state" and not v.fatal
    assert conn.sessions[1].state is SessState.CLOSED and conn.sessions[2].state is SessState.READY
    assert sum(len(r.records) for r in records(events)) == 4


def test_unknown_template_and_wrong_lengths():
    conn, sim = _conn_with_flows()
    sim.generate_interval()
    n = len(sim.sessions[1].queue)
    doc = sim.encode_document(1, stop=False)
    conn.receive_data(doc[:53])  # SESSION_START
    body = m.DATA_HEADER.pack(1, sim.config_id, 0, 100, 50) + b"x" * 10  # dataLength 50, 10 bytes follow
    wrong = struct.pack(">BBBBI", 2, m.MsgId.DATA, 1, 0, 8 + len(body)) + body
    events = conn.receive_data(doc[53:] + wrong)
    assert [v.reason for v in violations(events)] == ["record_length_mismatch"]
    assert sum(len(r.records) for r in records(events)) == n
    unknown = m.encode(m.Data(1, 9, sim.config_id, 0, 101, b""))
    (v,) = violations(conn.receive_data(unknown))
    assert v.reason == "unknown_template" and v.session_id == 1


def test_dsn_replay_and_gap_tracking_and_ack_rules():
    conn, sim = _conn_with_flows(CmtsSimulator(20, ack_sequence_interval=5))
    sim.generate_interval()
    q = sim.sessions[1].queue
    start = m.encode(m.SessionStart(1, sim.boot_time, 0, 0, True, 10, 5, bytes(16)))
    data = [m.encode(m.Data(1, 1, sim.config_id, 0, r.dsn, r.record)) for r in q]
    (ev,) = records(conn.receive_data(start + data[0] + data[1] + data[4], now=100.0))
    assert ev.gap == 2 and ev.dsn.tolist() == [0, 1, 4]
    (ev,) = records(conn.receive_data(data[1], now=101.0))
    assert ev.replayed == 1 and len(ev.records) == 0
    assert not conn.ack_due(1, now=101.0) and conn.ack_due(1, now=105.0)  # half of ackTimeInterval 10 s
    (ev,) = records(conn.receive_data(data[5], now=102.0))
    assert ev.dsn.tolist() == [5] and conn.ack_due(1, now=102.0)  # 5 DATA received: ackSequenceInterval
    assert conn.ack_for(1) == m.DataAck(1, sim.config_id, 5)
    conn.send(conn.ack_for(1))
    assert conn.ack_for(1) is None


def test_transition_table_is_total_over_session_messages():
    session_msgs = [m.FlowStart(1), m.FlowStop(1), m.TemplateData(1), m.FinalTemplateDataAck(1),
                    m.SessionStart(1), m.SessionStop(1), m.DataAck(1)]
    for state in SessState:
        for msg in session_msgs:
            for direction in ("send", "recv"):
                conn = connected()
                conn.sessions[1] = SessionInfo(1, state=state)
                key = (state, direction, type(msg))
                try:
                    if direction == "send":
                        conn.send(msg)
                        ok = True
                    else:
                        ok = not violations(conn.receive_data(m.encode(msg)))
                except IpdrStateError:  # only a state error may come out of send()
                    ok = False
                assert ok == (key in SESSION_TRANSITIONS), key
                if ok:
                    assert conn.sessions[1].state is SESSION_TRANSITIONS[key]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([
    m.encode(x) for x in (m.ConnectResponse(2, 30, "x"), m.KeepAlive(), m.TemplateData(1), m.SessionStart(1),
                          m.Data(1, 1, 0, 0, 3, b"abc"), m.SessionStop(1), m.Error(0, 0, 3, "e"),
                          m.GetSessionsResponse(1, (m.SessionBlock(1, "x"),)), m.Disconnect())
]) | st.binary(max_size=40), max_size=12))
def test_any_input_sequence_yields_events_never_exceptions(chunks):
    conn = CollectorConnection()
    conn.send(m.Connect())
    for chunk in chunks:
        conn.receive_data(chunk)


def test_records_before_a_broken_message_are_kept_and_the_break_is_fatal():
    conn, sim = _conn_with_flows()
    sim.generate_interval()
    n = len(sim.sessions[1].queue)
    doc = sim.encode_document(1, stop=False)
    events = conn.receive_data(doc + struct.pack(">BBBBI", 2, 0x40, 0, 0, 3))
    assert sum(len(r.records) for r in records(events)) == n
    (v,) = violations(events)
    assert v.fatal and v.reason == "bad_length"
    assert conn.receive_data(m.encode(m.KeepAlive())) == []  # closed: nothing more is read


def test_keepalive_is_accepted_during_the_handshake():
    conn = CollectorConnection()
    conn.send(m.Connect())
    assert conn.receive_data(m.encode(m.KeepAlive())) == [m.KeepAlive()]
