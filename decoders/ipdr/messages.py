"""IPDR/SP 2.1 messages: the 8-byte header and encode/decode of every message body.

Over 500 lines on purpose: this is the catalogue of the 23 IPDR/SP 2.1 messages, one small frozen dataclass each
with its layout beside it, kept in one module (as h11 keeps its events in ``_events.py``) so the protocol reads in
one place. Stream framing is :mod:`decoders.ipdr.framing`; bounds-checked reading of bodies is
:mod:`decoders.ipdr.reader`.

Layouts follow the IPDR/SP 2.1 message definitions as implemented by the IPDR.org reference exporter and collector
and by Wireshark's dissector (see docs: every integer big-endian; strings are ``u32 length + bytes`` with no padding;
arrays are ``u32 count + elements``). The header is ``version u8 | messageId u8 | sessionId u8 | flags u8 |
messageLength u32`` where the length covers the whole message including the header.

Each message is a frozen dataclass with a ``MSG_ID``; :func:`encode` turns one into bytes and :func:`decode` turns one
framed message back. DATA messages are not decoded here one by one on the hot path: :mod:`decoders.ipdr.session`
frames them and hands runs of them to the columnar record decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from decoders.ipdr.errors import FramingError
from decoders.ipdr.reader import Reader, pack_string

VERSION = 2
HEADER = struct.Struct(">BBBBI")
HEADER_SIZE = 8


class MsgId(IntEnum):
    FLOW_START = 0x01
    FLOW_STOP = 0x03
    CONNECT = 0x05
    CONNECT_RESPONSE = 0x06
    DISCONNECT = 0x07
    SESSION_START = 0x08
    SESSION_STOP = 0x09
    TEMPLATE_DATA = 0x10
    FINAL_TEMPLATE_DATA_ACK = 0x13
    GET_SESSIONS = 0x14
    GET_SESSIONS_RESPONSE = 0x15
    GET_TEMPLATES = 0x16
    GET_TEMPLATES_RESPONSE = 0x17
    MODIFY_TEMPLATE = 0x1A
    MODIFY_TEMPLATE_RESPONSE = 0x1B
    START_NEGOTIATION = 0x1D
    START_NEGOTIATION_REJECT = 0x1E
    DATA = 0x20
    DATA_ACK = 0x21
    ERROR = 0x23
    REQUEST = 0x30
    RESPONSE = 0x31
    KEEP_ALIVE = 0x40


class Capability(IntEnum):
    STRUCTURE = 0x01
    MULTISESSION = 0x02
    TEMPLATE_NEGOTIATION = 0x04


class ErrorCode(IntEnum):
    KEEPALIVE_EXPIRED = 0
    INVALID_FOR_CAPABILITIES = 1
    INVALID_FOR_STATE = 2
    DECODE_ERROR = 3
    PROCESS_TERMINATING = 4


class SessionStopReason(IntEnum):
    END_OF_DATA = 0
    HANDOFF = 1
    EXPORTER_TERMINATING = 2
    CONGESTION = 3
    RENEGOTIATION = 4
    START_NEGOTIATION_ACK = 5
    END_OF_DOCUMENT = 6
    TEMPLATE_UPDATED = 7


# --------------------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every IPDR/SP message; ``session_id`` is 0 for connection-level messages."""

    MSG_ID: ClassVar[int] = -1

    def body(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        r.done()
        return cls()

    @property
    def sid(self) -> int:
        """The session the message belongs to: 0 here (connection level); every session-level class has a
        ``session_id`` field and returns it."""
        return 0


@dataclass(frozen=True, slots=True)
class _SessionOnly(Message):
    session_id: int = 0

    @property
    def sid(self) -> int:
        return self.session_id

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        r.done()
        return cls(session_id)


@dataclass(frozen=True, slots=True)
class FlowStart(_SessionOnly):
    MSG_ID: ClassVar[int] = MsgId.FLOW_START


@dataclass(frozen=True, slots=True)
class FinalTemplateDataAck(_SessionOnly):
    MSG_ID: ClassVar[int] = MsgId.FINAL_TEMPLATE_DATA_ACK


@dataclass(frozen=True, slots=True)
class StartNegotiation(_SessionOnly):
    MSG_ID: ClassVar[int] = MsgId.START_NEGOTIATION


@dataclass(frozen=True, slots=True)
class StartNegotiationReject(_SessionOnly):
    MSG_ID: ClassVar[int] = MsgId.START_NEGOTIATION_REJECT


@dataclass(frozen=True, slots=True)
class KeepAlive(Message):
    MSG_ID: ClassVar[int] = MsgId.KEEP_ALIVE


@dataclass(frozen=True, slots=True)
class Disconnect(Message):
    MSG_ID: ClassVar[int] = MsgId.DISCONNECT


@dataclass(frozen=True, slots=True)
class Connect(Message):
    MSG_ID: ClassVar[int] = MsgId.CONNECT
    initiator_id: int = 0
    """IPv4 address of the initiator as a 32-bit number."""
    initiator_port: int = 0
    capabilities: int = Capability.MULTISESSION
    keepalive_s: int = 60
    """Longest silence the sender accepts from its peer, in seconds."""
    vendor_id: str = ""

    def body(self) -> bytes:
        return struct.pack(">IHII", self.initiator_id, self.initiator_port, self.capabilities,
                           self.keepalive_s) + pack_string(self.vendor_id)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        ident, port, caps, ka = r.u32(), r.u16(), r.u32(), r.u32()
        # Lenient on the vendor string: some encoders omit its length prefix (pitfall 17).
        vendor = _lenient_string(r)
        return cls(ident, port, caps, ka, vendor)


@dataclass(frozen=True, slots=True)
class ConnectResponse(Message):
    MSG_ID: ClassVar[int] = MsgId.CONNECT_RESPONSE
    capabilities: int = Capability.MULTISESSION
    keepalive_s: int = 60
    vendor_id: str = ""

    def body(self) -> bytes:
        return struct.pack(">II", self.capabilities, self.keepalive_s) + pack_string(self.vendor_id)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        caps, ka = r.u32(), r.u32()
        return cls(caps, ka, _lenient_string(r))


def _lenient_string(r: Reader) -> str:
    """A trailing UTF8String, or the raw rest of the message when its length prefix does not add up."""
    if r.remaining >= 4:
        n = struct.unpack_from(">I", r.buf, r.pos)[0]
        if n == r.remaining - 4:
            r.pos += 4
    text = r.raw(r.remaining).decode("utf-8", "replace")
    return text


@dataclass(frozen=True, slots=True)
class _ReasonMessage(Message):
    """FLOW_STOP and SESSION_STOP share one body: a reason code and a reason text."""

    session_id: int = 0
    reason_code: int = 0
    reason_info: str = ""

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">H", self.reason_code) + pack_string(self.reason_info)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        return cls(session_id, r.u16(), _lenient_string(r))


@dataclass(frozen=True, slots=True)
class FlowStop(_ReasonMessage):
    MSG_ID: ClassVar[int] = MsgId.FLOW_STOP


@dataclass(frozen=True, slots=True)
class SessionStart(Message):
    MSG_ID: ClassVar[int] = MsgId.SESSION_START
    session_id: int = 0
    exporter_boot_time: int = 0
    """Seconds since the epoch; a change means the exporter restarted."""
    first_dsn: int = 0
    dropped_records: int = 0
    primary: bool = True
    ack_time_s: int = 60
    ack_sequence_interval: int = 200
    document_id: bytes = bytes(16)

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">IQQ?II16s", self.exporter_boot_time, self.first_dsn, self.dropped_records,
                           self.primary, self.ack_time_s, self.ack_sequence_interval, self.document_id)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        msg = cls(session_id, r.u32(), r.u64(), r.u64(), r.u8() != 0, r.u32(), r.u32(), r.raw(16))
        r.done()
        return msg


@dataclass(frozen=True, slots=True)
class SessionStop(_ReasonMessage):
    MSG_ID: ClassVar[int] = MsgId.SESSION_STOP


@dataclass(frozen=True, slots=True)
class FieldDescriptor:
    type_id: int
    field_id: int
    name: str
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class TemplateBlock:
    template_id: int
    schema_name: str
    type_name: str
    fields: tuple[FieldDescriptor, ...]


def _templates_body(templates: tuple[TemplateBlock, ...]) -> bytes:
    out = [struct.pack(">I", len(templates))]
    for t in templates:
        out.append(struct.pack(">H", t.template_id) + pack_string(t.schema_name) + pack_string(t.type_name))
        out.append(struct.pack(">I", len(t.fields)))
        for f in t.fields:
            out.append(struct.pack(">II", f.type_id, f.field_id) + pack_string(f.name) + struct.pack(">?", f.enabled))
    return b"".join(out)


def _parse_templates(r: Reader) -> tuple[TemplateBlock, ...]:
    blocks = []
    for _ in range(r.count(14)):  # u16 id + two empty strings + empty field list = 14 bytes at least
        tid, schema, tname = r.u16(), r.string(), r.string()
        fields = tuple(FieldDescriptor(r.u32(), r.u32(), r.string(), r.u8() != 0) for _ in range(r.count(13)))
        blocks.append(TemplateBlock(tid, schema, tname, fields))
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class TemplateData(Message):
    MSG_ID: ClassVar[int] = MsgId.TEMPLATE_DATA
    session_id: int = 0
    config_id: int = 0
    flags: int = 0
    templates: tuple[TemplateBlock, ...] = ()

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">HB", self.config_id, self.flags) + _templates_body(self.templates)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        config_id, flags = r.u16(), r.u8()
        templates = _parse_templates(r)
        r.done()
        return cls(session_id, config_id, flags, templates)


@dataclass(frozen=True, slots=True)
class ModifyTemplate(TemplateData):
    MSG_ID: ClassVar[int] = MsgId.MODIFY_TEMPLATE


@dataclass(frozen=True, slots=True)
class ModifyTemplateResponse(TemplateData):
    MSG_ID: ClassVar[int] = MsgId.MODIFY_TEMPLATE_RESPONSE


@dataclass(frozen=True, slots=True)
class GetSessions(Message):
    MSG_ID: ClassVar[int] = MsgId.GET_SESSIONS
    request_id: int = 0

    def body(self) -> bytes:
        return struct.pack(">H", self.request_id)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        msg = cls(r.u16())
        r.done()
        return msg


@dataclass(frozen=True, slots=True)
class SessionBlock:
    session_id: int
    name: str
    description: str = ""
    ack_time_s: int = 60
    """As sent; the reference exporter puts milliseconds here, so SESSION_START's value is authoritative."""
    ack_sequence_interval: int = 200
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class GetSessionsResponse(Message):
    MSG_ID: ClassVar[int] = MsgId.GET_SESSIONS_RESPONSE
    request_id: int = 0
    sessions: tuple[SessionBlock, ...] = ()

    def body(self) -> bytes:
        out = [struct.pack(">HI", self.request_id, len(self.sessions))]
        for s in self.sessions:
            out.append(struct.pack(">BB", s.session_id, s.reserved) + pack_string(s.name) + pack_string(s.description)
                       + struct.pack(">II", s.ack_time_s, s.ack_sequence_interval))
        return b"".join(out)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        request_id = r.u16()
        sessions = []
        for _ in range(r.count(18)):
            sid, reserved, name, desc = r.u8(), r.u8(), r.string(), r.string()
            sessions.append(SessionBlock(sid, name, desc, r.u32(), r.u32(), reserved))
        r.done()
        return cls(request_id, tuple(sessions))


@dataclass(frozen=True, slots=True)
class GetTemplates(Message):
    MSG_ID: ClassVar[int] = MsgId.GET_TEMPLATES
    session_id: int = 0
    request_id: int = 0

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">H", self.request_id)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        msg = cls(session_id, r.u16())
        r.done()
        return msg


@dataclass(frozen=True, slots=True)
class GetTemplatesResponse(Message):
    MSG_ID: ClassVar[int] = MsgId.GET_TEMPLATES_RESPONSE
    session_id: int = 0
    request_id: int = 0
    config_id: int = 0
    templates: tuple[TemplateBlock, ...] = ()

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">HH", self.request_id, self.config_id) + _templates_body(self.templates)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        request_id, config_id = r.u16(), r.u16()
        templates = _parse_templates(r)
        r.done()
        return cls(session_id, request_id, config_id, templates)


DATA_HEADER = struct.Struct(">HHBQI")
"""DATA body: templateId u16 | configId u16 | flags u8 | sequenceNum u64 | dataLength u32 (then the record)."""
DATA_FLAG_DUPLICATE = 0x01


@dataclass(frozen=True, slots=True)
class Data(Message):
    MSG_ID: ClassVar[int] = MsgId.DATA
    session_id: int = 0
    template_id: int = 0
    config_id: int = 0
    flags: int = 0
    dsn: int = 0
    record: bytes = b""

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return DATA_HEADER.pack(self.template_id, self.config_id, self.flags, self.dsn, len(self.record)) + self.record

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        tid, cid, flags, dsn = r.u16(), r.u16(), r.u8(), r.u64()
        record = r.raw(r.u32())
        r.done()
        return cls(session_id, tid, cid, flags, dsn, record)


@dataclass(frozen=True, slots=True)
class DataAck(Message):
    MSG_ID: ClassVar[int] = MsgId.DATA_ACK
    session_id: int = 0
    config_id: int = 0
    dsn: int = 0
    """Last record durably handled; the acknowledgement is cumulative."""

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">HQ", self.config_id, self.dsn)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        msg = cls(session_id, r.u16(), r.u64())
        r.done()
        return msg


@dataclass(frozen=True, slots=True)
class Error(Message):
    MSG_ID: ClassVar[int] = MsgId.ERROR
    session_id: int = 0
    timestamp: int = 0
    code: int = 0
    description: str = ""

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">IH", self.timestamp, self.code) + pack_string(self.description)

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        return cls(session_id, r.u32(), r.u16(), _lenient_string(r))

    @property
    def session_specific(self) -> bool:
        return bool(self.code & 0x8000)


@dataclass(frozen=True, slots=True)
class Request(Message):
    """REQUEST/RESPONSE (later IPDR/SP revisions, unused by SAMIS): decoded for logging, never acted upon."""

    MSG_ID: ClassVar[int] = MsgId.REQUEST
    session_id: int = 0
    template_id: int = 0
    config_id: int = 0
    flags: int = 0
    request_number: int = 0
    data: bytes = b""

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return struct.pack(">HHBQ", self.template_id, self.config_id, self.flags, self.request_number) + self.data

    @classmethod
    def parse(cls, r: Reader, session_id: int) -> Message:
        return cls(session_id, r.u16(), r.u16(), r.u8(), r.u64(), r.raw(r.remaining))


@dataclass(frozen=True, slots=True)
class Response(Request):
    MSG_ID: ClassVar[int] = MsgId.RESPONSE


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A message whose id is not in IPDR/SP 2.1 (kept so it can be counted and reported)."""

    msg_id: int = 0
    session_id: int = 0
    payload: bytes = field(default=b"", repr=False)

    @property
    def sid(self) -> int:
        return self.session_id

    def body(self) -> bytes:
        return self.payload


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.MSG_ID: cls
    for cls in (FlowStart, FlowStop, Connect, ConnectResponse, Disconnect, SessionStart, SessionStop, TemplateData,
                FinalTemplateDataAck, GetSessions, GetSessionsResponse, GetTemplates, GetTemplatesResponse,
                ModifyTemplate, ModifyTemplateResponse, StartNegotiation, StartNegotiationReject, Data, DataAck,
                Error, Request, Response, KeepAlive)
}


def encode(msg: Message) -> bytes:
    """The wire bytes of ``msg`` (header included)."""
    body = msg.body()
    msg_id = msg.msg_id if isinstance(msg, Unknown) else msg.MSG_ID
    return HEADER.pack(VERSION, msg_id, msg.sid, 0, HEADER_SIZE + len(body)) + body


def decode(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Message:
    """Decode one framed message ``buf[start:end]`` (header included); raises :class:`MalformedMessage`."""
    end = len(buf) if end is None else end
    version, msg_id, session_id, _flags, length = HEADER.unpack_from(buf, start)
    if version != VERSION or length != end - start:
        raise FramingError(f"bad header: version {version}, length {length} for {end - start} bytes")
    cls = MESSAGE_TYPES.get(msg_id)
    if cls is None:
        return Unknown(msg_id, session_id, bytes(buf[start + HEADER_SIZE : end]))
    name = MsgId(msg_id).name
    return cls.parse(Reader(buf, start + HEADER_SIZE, end, name), session_id)
