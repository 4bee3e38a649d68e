"""The collector side of an IPDR/SP connection, sans-I/O (h11 style).

Theory of operation: the caller pushes received bytes with :meth:`CollectorConnection.receive_data` and gets events
back (control messages as their dataclasses, runs of DATA as :class:`RecordsReceived`, problems as
:class:`ProtocolViolation`); it turns messages it wants to send into bytes with :meth:`CollectorConnection.send`.
Every state change lives in the two transition tables below (Rule 1 of h11's ``_state.py``); a (state, message)
pair not in a table is a protocol violation naming both. The connection never reads a clock or touches a socket:
acknowledgement timing (ack interval, ack sequence interval) is decided by the caller with :meth:`ack_due`, from
the ``now`` it passes in.

A violation is scoped: one that concerns a session (DATA before SESSION_START, a template with an unknown field
type, DATA for an unknown template) closes only that session (``ProtocolViolation.session_id`` set, the session moves
to ``CLOSED`` and the caller sends FLOW_STOP for it); one that breaks the byte stream (bad version, a length outside
the limits) closes the connection (``fatal``). Unknown message ids and malformed bodies of non-essential messages
are counted and skipped, as IPDR/SP implementations are advised to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from decoders.ipdr import framing
from decoders.ipdr import messages as m
from decoders.ipdr.errors import FramingError, IpdrError, IpdrStateError, IpdrTemplateError, MalformedMessage
from decoders.ipdr.xdr import CompiledTemplate, DecodedRecords, compile_template, decode_records


class ConnState(Enum):
    IDLE = "IDLE"  # TCP up, nothing exchanged
    CONNECT_SENT = "CONNECT_SENT"  # we dialled out and sent CONNECT
    CONNECT_RECEIVED = "CONNECT_RECEIVED"  # the exporter dialled in and sent CONNECT
    CONNECTED = "CONNECTED"
    CLOSED = "CLOSED"


class SessState(Enum):
    IDLE = "IDLE"  # listed by GET_SESSIONS_RESPONSE, or not yet seen
    FLOW_STARTED = "FLOW_STARTED"  # FLOW_START sent, waiting for TEMPLATE_DATA
    TEMPLATES = "TEMPLATES"  # TEMPLATE_DATA received, FINAL_TEMPLATE_DATA_ACK not yet sent
    READY = "READY"  # templates acknowledged; between documents
    STARTED = "STARTED"  # SESSION_START received: DATA flows
    CLOSED = "CLOSED"  # FLOW_STOP sent or the session failed


SEND, RECV = "send", "recv"
HANDSHAKE_MAX_MESSAGE_SIZE = 64 * 1024
"""Largest message accepted before CONNECT/CONNECT_RESPONSE completes (a CONNECT is a few dozen bytes): a peer that
has not shown it speaks IPDR/SP cannot make the collector buffer megabytes."""

# Connection-level transitions: (state, direction, message type) -> new state.
CONN_TRANSITIONS: dict[tuple[ConnState, str, type[m.Message]], ConnState] = {
    (ConnState.IDLE, SEND, m.Connect): ConnState.CONNECT_SENT,
    (ConnState.IDLE, RECV, m.Connect): ConnState.CONNECT_RECEIVED,
    (ConnState.CONNECT_SENT, RECV, m.ConnectResponse): ConnState.CONNECTED,
    (ConnState.CONNECT_RECEIVED, SEND, m.ConnectResponse): ConnState.CONNECTED,
    (ConnState.CONNECTED, SEND, m.GetSessions): ConnState.CONNECTED,
    (ConnState.CONNECTED, RECV, m.GetSessionsResponse): ConnState.CONNECTED,
}
# Messages that are valid in any state that is not CLOSED, and what they do.
CONN_ANY: dict[tuple[str, type[m.Message]], ConnState | None] = {
    (SEND, m.Disconnect): ConnState.CLOSED,
    (RECV, m.Disconnect): ConnState.CLOSED,
    (SEND, m.Error): None,
    (RECV, m.Error): None,
    (SEND, m.KeepAlive): None,  # also during the handshake: some exporters send it early
    (RECV, m.KeepAlive): None,
}

# Session-level transitions: (state, direction, message type) -> new state.
SESSION_TRANSITIONS: dict[tuple[SessState, str, type[m.Message]], SessState] = {
    (SessState.IDLE, SEND, m.FlowStart): SessState.FLOW_STARTED,
    (SessState.CLOSED, SEND, m.FlowStart): SessState.FLOW_STARTED,
    (SessState.FLOW_STARTED, RECV, m.TemplateData): SessState.TEMPLATES,
    (SessState.READY, RECV, m.TemplateData): SessState.TEMPLATES,
    # A template change without SESSION_STOP: the document is over (lenient, firmware varies).
    (SessState.STARTED, RECV, m.TemplateData): SessState.TEMPLATES,
    (SessState.TEMPLATES, SEND, m.FinalTemplateDataAck): SessState.READY,
    (SessState.READY, RECV, m.SessionStart): SessState.STARTED,
    (SessState.STARTED, RECV, m.SessionStart): SessState.STARTED,  # new document without SESSION_STOP
    (SessState.STARTED, RECV, m.Data): SessState.STARTED,
    (SessState.STARTED, SEND, m.DataAck): SessState.STARTED,
    (SessState.READY, SEND, m.DataAck): SessState.READY,  # acknowledging the tail after SESSION_STOP
    (SessState.STARTED, RECV, m.SessionStop): SessState.READY,
    (SessState.READY, RECV, m.SessionStop): SessState.READY,  # repeated stop: harmless
    (SessState.FLOW_STARTED, SEND, m.FlowStop): SessState.CLOSED,
    (SessState.TEMPLATES, SEND, m.FlowStop): SessState.CLOSED,
    (SessState.READY, SEND, m.FlowStop): SessState.CLOSED,
    (SessState.STARTED, SEND, m.FlowStop): SessState.CLOSED,
    (SessState.CLOSED, SEND, m.FlowStop): SessState.CLOSED,
    (SessState.CLOSED, RECV, m.SessionStop): SessState.CLOSED,  # in flight when we stopped the flow
    (SessState.CLOSED, RECV, m.Data): SessState.CLOSED,  # likewise: ignored, never acknowledged
    (SessState.CLOSED, RECV, m.TemplateData): SessState.CLOSED,
}
SESSION_MESSAGES = (m.FlowStart, m.FlowStop, m.TemplateData, m.FinalTemplateDataAck, m.SessionStart,
                    m.SessionStop, m.Data, m.DataAck)


# ----------------------------------------------------------------------------------------------------------------
# Events


@dataclass(slots=True)
class RecordsReceived:
    """A run of DATA messages of one session and template, decoded into columns.

    ``dsn`` and ``duplicate`` are per good record (aligned with ``records``). Records the session had already
    received on this connection (DSN below the next expected) are dropped before decoding and counted in
    ``replayed``; ``gap`` counts DSNs skipped by the exporter.
    """

    session_id: int
    config_id: int
    document_id: bytes
    exporter_boot_time: int
    records: DecodedRecords
    dsn: np.ndarray
    duplicate: np.ndarray
    last_dsn: int
    """DSN of the last DATA of the run, good or not: acknowledging it acknowledges the whole run."""
    gap: int = 0
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Something the exporter got wrong, counted under ``reason``.

    ``session_id`` set: only that session is closed (send FLOW_STOP). ``fatal``: the connection must be closed.
    Neither: the offending message was skipped.
    """

    reason: str
    detail: str
    session_id: int | None = None
    fatal: bool = False
    error_code: int = m.ErrorCode.DECODE_ERROR


@dataclass(slots=True)
class SessionInfo:
    """What the collector knows about one session of the connection."""

    session_id: int
    name: str = ""
    state: SessState = SessState.IDLE
    config_id: int = 0
    templates: dict[int, CompiledTemplate] = field(default_factory=dict)
    document_id: bytes = bytes(16)
    exporter_boot_time: int = 0
    ack_time_s: float = 60.0
    ack_sequence_interval: int = 200
    next_dsn: int | None = None
    received: int = 0
    """Records received since the last DATA_ACK was sent."""
    last_dsn: int | None = None
    """DSN of the last DATA received (to acknowledge)."""
    last_acked: int | None = None
    first_unacked_at: float | None = None
    dropped_reported: int = 0


# ----------------------------------------------------------------------------------------------------------------


class CollectorConnection:
    """One IPDR/SP connection, collector role.

    Args:
        max_message_size: largest message accepted once connected (before, at most ``HANDSHAKE_MAX_MESSAGE_SIZE``);
            a longer one closes the connection.
        max_sessions: sessions tracked at once; further sessions get FLOW_STOP (counted).
        max_templates: templates per session.
        max_template_fields: fields per template.
        ipv6_bare: this exporter sends ipV6Addr as a bare 16 bytes (2005 reference code) instead of length-prefixed.
    """

    def __init__(self, *, max_message_size: int = framing.DEFAULT_MAX_MESSAGE_SIZE, max_sessions: int = 32,
                 max_templates: int = 64, max_template_fields: int = 512, ipv6_bare: bool = False) -> None:
        self.state = ConnState.IDLE
        self.sessions: dict[int, SessionInfo] = {}
        self.max_message_size = max_message_size
        self.framer = framing.Framer(min(max_message_size, HANDSHAKE_MAX_MESSAGE_SIZE))  # raised once connected
        self.frames_received = 0
        """Complete messages received (whatever they were): a byte here and there is not a sign of life."""
        self.max_sessions = max_sessions
        self.max_templates = max_templates
        self.max_template_fields = max_template_fields
        self.ipv6_bare = ipv6_bare
        self.peer_keepalive_s: int | None = None
        self.peer_vendor = ""
        self.peer_capabilities = 0
        self.messages_in: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    # -- sending ---------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (DISCONNECT, or a fatal protocol violation)."""
        return self.state is ConnState.CLOSED

    def send(self, msg: m.Message, now: float = 0.0) -> bytes:
        """Validate ``msg`` against the state tables, apply its transition and return its bytes.

        Raises :class:`IpdrStateError` when the collector itself would break the protocol (a local bug).
        """
        self._transition(SEND, msg)
        if isinstance(msg, m.DataAck):
            s = self.sessions[msg.session_id]
            s.received, s.last_acked, s.first_unacked_at = 0, msg.dsn, None
        return m.encode(msg)

    def ack_for(self, session_id: int) -> m.DataAck | None:
        """The DATA_ACK that acknowledges everything received on ``session_id``, or None if nothing is pending."""
        s = self.sessions.get(session_id)
        if s is None or s.last_dsn is None or s.last_dsn == s.last_acked or s.state not in (SessState.STARTED,
                                                                                            SessState.READY):
            return None
        return m.DataAck(session_id, s.config_id, s.last_dsn)

    def ack_due(self, session_id: int, now: float, time_fraction: float = 0.5) -> bool:
        """Whether an ACK must go out: ``ackSequenceInterval`` records received, or ``time_fraction`` of
        ``ackTimeInterval`` elapsed since the first unacknowledged record."""
        s = self.sessions.get(session_id)
        if s is None or s.received == 0:
            return False
        if s.received >= s.ack_sequence_interval:
            return True
        return s.first_unacked_at is not None and now - s.first_unacked_at >= s.ack_time_s * time_fraction

    # -- receiving -------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[object]:
        """Feed received bytes; returns the events they complete, in order.

        Never raises for bad input: problems come back as :class:`ProtocolViolation` events (a fatal one is the
        last event; the connection is then CLOSED and further data is ignored).
        """
        if self.state is ConnState.CLOSED:
            return []
        self.framer.feed(data)
        try:
            frames = self.framer.frames()
        except FramingError:
            frames = []
        frames_error = self.framer.error  # the messages before a break are still handled
        self.frames_received += len(frames)
        events: list[object] = []
        buf = bytes(self.framer.buf[: frames[-1][3]]) if frames else b""
        run: list[tuple[int, int, int, int]] = []  # consecutive DATA frames of one session
        for frame in frames:
            msg_id, sid = frame[0], frame[1]
            if msg_id == m.MsgId.DATA and (not run or run[0][1] == sid):
                run.append(frame)
                continue
            if run:
                events.extend(self._data_run(buf, run, now))
                run = []
            if msg_id == m.MsgId.DATA:
                run.append(frame)
                continue
            events.extend(self._control(buf, frame))
            if self.closed:  # _control may have closed the connection
                return events
        if run:
            events.extend(self._data_run(buf, run, now))
        if frames_error is not None:
            events.append(self._violation(frames_error.reason, frames_error.detail, fatal=True))
            self.state = ConnState.CLOSED
        return events

    def _count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def _violation(self, reason: str, detail: str, session_id: int | None = None, fatal: bool = False,
                   code: int = m.ErrorCode.DECODE_ERROR) -> ProtocolViolation:
        self._count(self.errors, reason)
        if session_id is not None and session_id in self.sessions:
            self.sessions[session_id].state = SessState.CLOSED
        return ProtocolViolation(reason, detail, session_id, fatal, code)

    def _control(self, buf: bytes, frame: tuple[int, int, int, int]) -> list[object]:
        msg_id, sid, start, end = frame
        try:
            msg = m.decode(buf, start, end)
        except IpdrError as exc:
            name = m.MsgId(msg_id).name if msg_id in m.MESSAGE_TYPES else str(msg_id)
            essential = msg_id in (m.MsgId.CONNECT, m.MsgId.CONNECT_RESPONSE)
            in_session = msg_id in (m.MsgId.TEMPLATE_DATA, m.MsgId.SESSION_START) and sid in self.sessions
            return [self._violation(exc.reason, f"{name}: {exc.detail}", sid if in_session else None,
                                    fatal=essential)]
        self._count(self.messages_in, type(msg).__name__)
        if isinstance(msg, m.Unknown):
            return [self._violation("unknown_message_id", f"message id 0x{msg.msg_id:02x} ({end - start} bytes)")]
        if isinstance(msg, m.Request | m.GetTemplatesResponse | m.ModifyTemplateResponse | m.StartNegotiationReject):
            return [msg]  # not used by this collector: reported, no state change
        try:
            self._transition(RECV, msg)
        except IpdrStateError as exc:
            fatal = not isinstance(msg, SESSION_MESSAGES)
            scoped = None if fatal or msg.sid not in self.sessions else msg.sid
            return [self._violation(exc.reason, exc.detail, scoped, fatal=fatal,
                                    code=m.ErrorCode.INVALID_FOR_STATE)]
        except IpdrTemplateError as exc:
            return [self._violation(exc.reason, exc.detail, msg.sid)]
        return [msg]

    def _transition(self, direction: str, msg: m.Message) -> None:
        kind = type(msg)
        if isinstance(msg, SESSION_MESSAGES):
            if self.state is not ConnState.CONNECTED:
                raise IpdrStateError(f"{kind.__name__} ({direction}) in connection state {self.state.name}")
            s = self.sessions.get(msg.sid)
            if s is None:
                if direction == SEND and kind is m.FlowStart and len(self.sessions) < self.max_sessions:
                    s = self.sessions[msg.sid] = SessionInfo(msg.sid)
                else:
                    raise IpdrStateError(f"{kind.__name__} ({direction}) for unknown session {msg.sid}",
                                     session_id=msg.sid)
            key = (s.state, direction, kind)
            if key not in SESSION_TRANSITIONS:
                raise IpdrStateError(f"{kind.__name__} ({direction}) in session {msg.sid} state {s.state.name}",
                                 session_id=msg.sid)
            if not (s.state is SessState.CLOSED and direction == RECV):  # late arrivals change nothing
                self._apply_session(s, direction, msg)
            s.state = SESSION_TRANSITIONS[key]
            return
        key2 = (direction, kind)
        if key2 in CONN_ANY and self.state is not ConnState.CLOSED:
            new_conn = CONN_ANY[key2]
            if new_conn is not None:
                self.state = new_conn
            return
        key3 = (self.state, direction, kind)
        if key3 not in CONN_TRANSITIONS:
            raise IpdrStateError(f"{kind.__name__} ({direction}) in connection state {self.state.name}")
        self._apply_connection(direction, msg)
        self.state = CONN_TRANSITIONS[key3]
        if self.state is ConnState.CONNECTED:
            self.framer.max_message_size = self.max_message_size

    def _apply_connection(self, direction: str, msg: m.Message) -> None:
        if direction == RECV and isinstance(msg, m.Connect | m.ConnectResponse):
            self.peer_keepalive_s = msg.keepalive_s
            self.peer_vendor = msg.vendor_id
            self.peer_capabilities = msg.capabilities
        elif direction == RECV and isinstance(msg, m.GetSessionsResponse):
            for block in msg.sessions:
                s = self.sessions.get(block.session_id)
                if s is None and len(self.sessions) < self.max_sessions:
                    s = self.sessions[block.session_id] = SessionInfo(block.session_id)
                if s is not None:
                    s.name = block.name

    def _apply_session(self, s: SessionInfo, direction: str, msg: m.Message) -> None:
        if direction == RECV and isinstance(msg, m.TemplateData):
            if len(msg.templates) > self.max_templates:
                raise IpdrTemplateError(f"session {s.session_id}: {len(msg.templates)} templates, limit "
                                    f"{self.max_templates}", session_id=s.session_id)
            compiled = {t.template_id: compile_template(t, max_fields=self.max_template_fields,
                                                        ipv6_bare=self.ipv6_bare) for t in msg.templates}
            s.templates, s.config_id = compiled, msg.config_id
        elif direction == RECV and isinstance(msg, m.SessionStart):
            s.document_id, s.exporter_boot_time = msg.document_id, msg.exporter_boot_time
            s.ack_time_s = max(1, msg.ack_time_s)
            s.ack_sequence_interval = max(1, msg.ack_sequence_interval)
            s.next_dsn = msg.first_dsn
        elif direction == SEND and isinstance(msg, m.FlowStart):
            s.templates, s.next_dsn, s.last_dsn, s.last_acked, s.received = {}, None, None, None, 0

    def _data_run(self, buf: bytes, run: list[tuple[int, int, int, int]], now: float) -> list[object]:
        """Decode consecutive DATA messages of one session: headers in numpy, records per template, columnar."""
        sid = run[0][1]
        s = self.sessions.get(sid)
        self._count(self.messages_in, "Data", len(run))
        if s is None or self.state is not ConnState.CONNECTED:
            return [self._violation("invalid_for_state", f"{len(run)} DATA for unknown session {sid}",
                                    code=m.ErrorCode.INVALID_FOR_STATE)]
        if s.state is SessState.CLOSED:
            return []  # in flight when the session was stopped; never acknowledged, so redelivered later
        if s.state is not SessState.STARTED:
            return [self._violation("invalid_for_state", f"DATA in session {sid} state {s.state.name}", sid,
                                    code=m.ErrorCode.INVALID_FOR_STATE)]
        starts = np.fromiter((f[2] for f in run), dtype=np.int64, count=len(run))
        ends = np.fromiter((f[3] for f in run), dtype=np.int64, count=len(run))
        too_short = ends - starts < m.HEADER_SIZE + m.DATA_HEADER.size
        events: list[object] = []
        if too_short.any():
            events.append(self._violation("malformed_message", f"{int(too_short.sum())} DATA shorter than "
                                          f"{m.HEADER_SIZE + m.DATA_HEADER.size} bytes in session {sid}"))
            starts, ends = starts[~too_short], ends[~too_short]
            if not len(starts):
                return events
        u8 = np.frombuffer(buf, dtype=np.uint8)
        h = starts + m.HEADER_SIZE
        # DATA header fields, gathered for the whole run
        tid = (u8[h].astype(np.int64) << 8) | u8[h + 1]
        cid = (u8[h + 2].astype(np.int64) << 8) | u8[h + 3]
        flags = u8[h + 4]
        dsn = np.ascontiguousarray(u8[(h + 5)[:, None] + np.arange(8)]).view(">u8").reshape(-1).astype(np.uint64)
        dlen = np.ascontiguousarray(u8[(h + 13)[:, None] + np.arange(4)]).view(">u4").reshape(-1).astype(np.int64)
        rec_start = h + m.DATA_HEADER.size
        wrong_len = rec_start + dlen != ends
        last_dsn = int(dsn[-1])
        s.last_dsn = last_dsn
        s.received += len(starts)
        if s.first_unacked_at is None:
            s.first_unacked_at = now
        keep = ~wrong_len
        if wrong_len.any():
            events.append(self._violation("record_length_mismatch", f"{int(wrong_len.sum())} DATA in session "
                                          f"{sid} whose dataLength does not match the message length"))
        # DSN tracking: drop replays of this connection, count gaps.
        gap = replayed = 0
        if s.next_dsn is not None:
            expected = np.uint64(s.next_dsn)
            old = dsn < expected
            replayed = int((old & keep).sum())
            keep &= ~old
        kept_dsn = dsn[keep]
        if len(kept_dsn):
            first = int(kept_dsn[0]) if s.next_dsn is None else s.next_dsn
            steps = np.diff(np.concatenate([[np.uint64(first)], kept_dsn]).astype(np.int64))
            if s.next_dsn is None:
                steps[0] = 1
            gap = int(np.clip(steps - 1, 0, None).sum())
            s.next_dsn = int(kept_dsn.max()) + 1
        wrong_cfg = keep & (cid != s.config_id)
        if wrong_cfg.any():
            events.append(self._violation("wrong_config_id", f"{int(wrong_cfg.sum())} DATA in session {sid} "
                                          f"with a configId other than {s.config_id}", sid))
            return events
        for template_id in np.unique(tid[keep]):
            sel = keep & (tid == template_id)
            template = s.templates.get(int(template_id))
            if template is None:
                events.append(self._violation("unknown_template", f"{int(sel.sum())} DATA in session {sid} for "
                                              f"template {int(template_id)} not in configId {s.config_id}", sid))
                return events
            records = decode_records(template, buf, rec_start[sel], dlen[sel])
            if records.bad:
                events.append(self._violation("record_length_mismatch", f"{records.bad} records of template "
                                              f"{int(template_id)} in session {sid} do not fit their length"))
            events.append(RecordsReceived(sid, s.config_id, s.document_id, s.exporter_boot_time, records,
                                          dsn[sel][records.index], (flags[sel][records.index] & 1) != 0,
                                          last_dsn, gap, replayed))
            gap = replayed = 0
        if replayed or gap:  # every record was dropped: still report the counters
            events.append(RecordsReceived(sid, s.config_id, s.document_id, s.exporter_boot_time,
                                          _empty(s), np.zeros(0, np.uint64), np.zeros(0, bool), last_dsn, gap,
                                          replayed))
        return events


def _empty(s: SessionInfo) -> DecodedRecords:
    template = next(iter(s.templates.values()), None) or CompiledTemplate(0, "", "", (), ())
    return DecodedRecords(template, {}, np.zeros(0, np.int64), 0)


__all__ = ["CollectorConnection", "ConnState", "SessState", "RecordsReceived", "ProtocolViolation",
           "SessionInfo", "MalformedMessage", "CONN_TRANSITIONS", "SESSION_TRANSITIONS"]
