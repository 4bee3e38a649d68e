"""IPDR/SP 2.1 messages: the 8-byte header, stream framing, and encode/decode of every message body.

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

from decoders.ipdr.errors import FramingError, MalformedMessage

VERSION = 2
HEADER = struct.Struct(">BBBBI")
HEADER_SIZE = 8
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""Largest message accepted. DATA carries one record (well under 1 KiB for SAMIS); TEMPLATE_DATA of a whole CMTS
is a few KiB. 4 MiB leaves room for unusual templates while bounding what a peer can make us buffer."""


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
# Bounds-checked reading and writing


class Reader:
    """Reads big-endian fields from a message body; reading past the end raises :class:`MalformedMessage`."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None, what: str = "message") -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def _take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise MalformedMessage(f"{self.what}: needs {n} bytes at offset {pos}, has {self.end - pos}")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.buf[self._take(1)]

    def u16(self) -> int:
        value: int = struct.unpack_from(">H", self.buf, self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack_from(">I", self.buf, self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack_from(">Q", self.buf, self._take(8))[0]
        return value

    def raw(self, n: int) -> bytes:
        p = self._take(n)
        return bytes(self.buf[p : p + n])

    def string(self) -> str:
        n = self.u32()
        return self.raw(n).decode("utf-8", "replace")

    def count(self, min_item_size: int) -> int:
        """An array count, refused when the remaining bytes cannot hold that many items (bounds allocation)."""
        n = self.u32()
        if n * min_item_size > self.end - self.pos:
            raise MalformedMessage(f"{self.what}: array of {n} items does not fit in {self.end - self.pos} bytes")
        return n

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def done(self) -> None:
        if self.pos != self.end:
            raise MalformedMessage(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


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
        return getattr(self, "session_id", 0)


@dataclass(frozen=True, slots=True)
class _SessionOnly(Message):
    session_id: int = 0

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
                           self.keepalive_s) + _str(self.vendor_id)

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
        return struct.pack(">II", self.capabilities, self.keepalive_s) + _str(self.vendor_id)

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

    def body(self) -> bytes:
        return struct.pack(">H", self.reason_code) + _str(self.reason_info)

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
        out.append(struct.pack(">H", t.template_id) + _str(t.schema_name) + _str(t.type_name))
        out.append(struct.pack(">I", len(t.fields)))
        for f in t.fields:
            out.append(struct.pack(">II", f.type_id, f.field_id) + _str(f.name) + struct.pack(">?", f.enabled))
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
            out.append(struct.pack(">BB", s.session_id, s.reserved) + _str(s.name) + _str(s.description)
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

    def body(self) -> bytes:
        return struct.pack(">IH", self.timestamp, self.code) + _str(self.description)

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


class Framer:
    """Splits a TCP byte stream into messages, bounded by ``max_message_size``.

    ``feed(data)`` appends bytes; ``frames()`` yields ``(msg_id, session_id, start, end)`` of every complete message
    in :attr:`buf` and then drops them from the buffer (so the offsets are valid only until the next ``feed`` or
    ``frames`` call). A bad version or a length outside ``[8, max_message_size]`` raises :class:`FramingError`:
    the stream cannot be resynchronised, so the connection must be closed.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.buf = bytearray()
        self._consumed = 0
        self.error: FramingError | None = None
        """Set when the stream broke; the messages before the break were still returned."""

    def feed(self, data: bytes) -> None:
        if self._consumed:
            del self.buf[: self._consumed]
            self._consumed = 0
        self.buf += data

    def frames(self) -> list[tuple[int, int, int, int]]:
        """Every complete message now buffered, as ``(msg_id, session_id, start, end)`` into :attr:`buf`.

        A bad version or length stops framing for good: the messages before it are returned, :attr:`error` is set,
        and every later call raises it (the stream cannot be resynchronised; close the connection).
        """
        if self.error is not None:
            raise self.error
        if self._consumed:
            del self.buf[: self._consumed]
            self._consumed = 0
        buf, n, pos, out = self.buf, len(self.buf), 0, []
        unpack, limit = HEADER.unpack_from, self.max_message_size
        while n - pos >= HEADER_SIZE:
            version, msg_id, session_id, _flags, length = unpack(buf, pos)
            if version != VERSION:
                self.error = FramingError(f"protocol version {version} at stream offset {pos}, expected {VERSION}",
                                          reason="bad_version")
                break
            if length < HEADER_SIZE or length > limit:
                self.error = FramingError(f"message length {length} outside [{HEADER_SIZE}, {limit}]",
                                          reason="bad_length")
                break
            if n - pos < length:
                break
            out.append((msg_id, session_id, pos, pos + length))
            pos += length
        self._consumed = pos
        if self.error is not None and not out:
            raise self.error
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self.buf) - self._consumed
