"""IPDR/SP message layouts: published test vectors, round trips of every message, framing, and hostile bytes."""

from __future__ import annotations

import dataclasses
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.ipdr import framing
from decoders.ipdr import messages as m
from decoders.ipdr.errors import FramingError, MalformedMessage

VECTORS = {
    "02400000" "00000008": m.KeepAlive(),
    "02010200" "00000008": m.FlowStart(2),
    "02140000" "0000000a" "0000": m.GetSessions(0),
    "02050000" "00000020" "0a000001" "0000" "00000002" "0000003c" "00000006" "5079436f6c6c":
        m.Connect(0x0A000001, 0, 2, 60, "PyColl"),
    "02060000" "00000018" "00000002" "0000012c" "00000004" "434d5453": m.ConnectResponse(2, 300, "CMTS"),
    "02080200" "00000035" "6553f100" "0000000000000000" "0000000000000000" "01" "0000003c" "000000c8"
    "12345678123456781234567812345678":
        m.SessionStart(2, 1700000000, 0, 0, True, 60, 200, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes),
    "02200200" "00000029" "0001" "0005" "00" "0000000000000000" "00000010" "0000001122334455" "00000000075bcd15":
        m.Data(2, 1, 5, 0, 0, bytes.fromhex("0000001122334455" "00000000075bcd15")),
    "02210200" "00000012" "0005" "0000000000000000": m.DataAck(2, 5, 0),
    "02090200" "0000000e" "0000" "00000000": m.SessionStop(2, 0, ""),
}


@pytest.mark.parametrize("hexbytes", list(VECTORS))
def test_reference_vectors_encode_and_decode(hexbytes):
    raw = bytes.fromhex(hexbytes)
    assert m.encode(VECTORS[hexbytes]) == raw
    assert m.decode(raw) == VECTORS[hexbytes]


TEMPLATES = (m.TemplateBlock(1, "schema", "DOCSIS-SAMIS-TYPE-1", (
    m.FieldDescriptor(0x28, 1, "DOCSIS-CMTS:CmtsHostName", True), m.FieldDescriptor(0x723, 2, "CmMacAddr", False))),)
ALL = [
    m.FlowStart(3), m.FlowStop(3, 1, "bye"), m.Connect(1, 2, 3, 4, "v"), m.ConnectResponse(2, 30, "x"),
    m.Disconnect(), m.SessionStart(1, 2, 3, 4, False, 5, 6, bytes(range(16))), m.SessionStop(1, 6, "end"),
    m.TemplateData(1, 7, 1, TEMPLATES), m.FinalTemplateDataAck(1), m.GetSessions(9),
    m.GetSessionsResponse(9, (m.SessionBlock(1, "DOCSIS-SAMIS-TYPE-1", "d", 60, 200),)), m.GetTemplates(1, 4),
    m.GetTemplatesResponse(1, 4, 7, TEMPLATES), m.ModifyTemplate(1, 7, 0, TEMPLATES),
    m.ModifyTemplateResponse(1, 8, 0, TEMPLATES), m.StartNegotiation(1), m.StartNegotiationReject(1),
    m.Data(1, 1, 7, 1, 2**63, b"abc"), m.DataAck(1, 7, 99), m.Error(0, 1700000000, 0x8003, "late"),
    m.KeepAlive(), m.Request(1, 1, 7, 0, 5, b"zz"), m.Response(1, 1, 7, 0, 5, b"zz"),
]


@pytest.mark.parametrize("msg", ALL, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(msg):
    raw = m.encode(msg)
    assert struct.unpack_from(">I", raw, 4)[0] == len(raw)
    assert m.decode(raw) == msg


def test_truncated_or_padded_bodies_are_malformed():
    raw = m.encode(m.SessionStart(1, 2, 3, 4, True, 5, 6, bytes(16)))
    short = raw[:-1]
    with pytest.raises(MalformedMessage):
        m.decode(short[:4] + struct.pack(">I", len(short)) + short[8:])
    longer = raw + b"\0"
    with pytest.raises(MalformedMessage):
        m.decode(longer[:4] + struct.pack(">I", len(longer)) + longer[8:])


def test_array_counts_cannot_outrun_the_message():
    body = struct.pack(">HB", 1, 0) + struct.pack(">I", 10**9)
    raw = struct.pack(">BBBBI", 2, m.MsgId.TEMPLATE_DATA, 1, 0, 8 + len(body)) + body
    with pytest.raises(MalformedMessage):
        m.decode(raw)


def test_lenient_strings_without_length_prefix():
    body = struct.pack(">IHII", 1, 2, 2, 60) + b"Perl"  # vendorId with no length prefix (Perl collector)
    raw = struct.pack(">BBBBI", 2, m.MsgId.CONNECT, 0, 0, 8 + len(body)) + body
    assert m.decode(raw).vendor_id == "Perl"


STREAM = b"".join(m.encode(x) for x in ALL)


def _frames(chunks):
    framer = framing.Framer()
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        out.extend(m.decode(bytes(framer.buf), s, e) for _, _, s, e in framer.frames())
    return out, framer


def test_framing_whole_bytewise_and_with_trailing_partial():
    whole, _ = _frames([STREAM])
    assert whole == ALL
    bytewise, _ = _frames([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert bytewise == ALL
    partial = m.encode(m.KeepAlive())[:5]
    trailing, framer = _frames([STREAM + partial])
    assert trailing == ALL and framer.pending_bytes == 5


@pytest.mark.parametrize("header,reason", [
    (struct.pack(">BBBBI", 3, 0x40, 0, 0, 8), "bad_version"),
    (struct.pack(">BBBBI", 2, 0x40, 0, 0, 7), "bad_length"),
    (struct.pack(">BBBBI", 2, 0x20, 1, 0, 1 << 30), "bad_length"),
])
def test_framing_errors(header, reason):
    framer = framing.Framer(max_message_size=1 << 20)
    framer.feed(header)
    with pytest.raises(FramingError) as exc:
        framer.frames()
    assert exc.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bodies_decode_or_raise_malformed(body):
    for msg_id in list(m.MESSAGE_TYPES) + [0x77]:
        raw = struct.pack(">BBBBI", 2, msg_id, 1, 0, 8 + len(body)) + body
        try:
            m.decode(raw)
        except MalformedMessage:
            pass


def test_messages_before_a_framing_break_are_still_delivered():
    framer = framing.Framer()
    framer.feed(m.encode(m.KeepAlive()) + m.encode(m.FlowStart(1)) + struct.pack(">BBBBI", 9, 0x40, 0, 0, 8))
    assert [f[0] for f in framer.frames()] == [m.MsgId.KEEP_ALIVE, m.MsgId.FLOW_START]
    assert framer.error is not None and framer.error.reason == "bad_version"
    with pytest.raises(FramingError):
        framer.frames()


@pytest.mark.parametrize("cls", sorted({*m.MESSAGE_TYPES.values(), m.Unknown}, key=lambda c: c.__name__))
def test_sid_is_the_session_id_of_session_level_messages_and_0_otherwise(cls):
    """``Message.sid`` is 0 for connection-level messages; each session-level class returns its ``session_id``
    (declared, not probed for)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if "session_id" in fields:
        assert cls(session_id=7).sid == 7
    else:
        assert cls().sid == 0


def test_sid_after_decoding():
    assert m.decode(bytes.fromhex("02010200" "00000008")).sid == 2
    assert m.decode(bytes.fromhex("02400000" "00000008")).sid == 0
