"""The saved form of decoder state: a compact binary log of records (sans-I/O: bytes in, bytes out).

A state file is :data:`MAGIC` followed by records, each ``[u32 payload length][u32 CRC-32 of kind + payload]
[u8 kind][payload]``. Records are *set* or *delete* operations on keys, so a file can be written whole (a
snapshot) or grow by appending only what changed (a log): reading applies them in order, the last record of a key
wins. A record cut short or damaged (a crash while appending) ends the file there; everything before it holds.

Kinds and keys:

* ``TEMPLATE`` ``("t", exporter, version, domain, template id)``: a template's field specifiers as on the wire
  (nothing compiled: loading costs a parse of headers, compiling waits for the template's first data);
* ``TEMPLATE_DELETE``: that template is gone (withdrawn, expired, replaced by one refused, exporter forgotten);
* ``EXPORTER`` ``("e", exporter)``: sampling rates from options data, system init times, last seen;
* ``EXPORTER_DELETE``: the exporter was forgotten;
* ``HELD``: a data set held for its missing template (a separate file: it changes wholesale, never appended).

:class:`StateMirror` keeps the last record of every live key, so that the writer can rewrite the log compactly
without asking the decoder for anything.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from decoders.errors import SavedStateError

MAGIC = b"FMSTATE\x02"
"""First 8 bytes of a state file (the ``\\x02``: format 2; format 1 was JSON)."""

TEMPLATE, TEMPLATE_DELETE, EXPORTER, EXPORTER_DELETE, HELD = 1, 2, 3, 4, 5
_HEAD = struct.Struct(">IIB")
_TEMPLATE = struct.Struct(">BIHBHHq")  # version, domain, template id, flags, scope, count, last seen ms
_TEMPLATE_KEY = struct.Struct(">BIH")
_EXPORTER = struct.Struct(">qHH")  # last seen ms, init times, sampler rates
_INIT = struct.Struct(">Iq")
_RATE = struct.Struct(">IHQI")  # domain, key element (0: domain-wide), sampler id, rate
_HELD = struct.Struct(">BIHqqq")
OPTIONS, IPFIX = 1, 2
"""Template flags."""
MAX_RECORD = 1 << 24
"""A record longer than this is damage, not data (the longest real one is a held set of one datagram)."""

TemplateStateKey = tuple[str, str, int, int, int]
"""``("t", exporter, version, domain, template id)``."""
ExporterStateKey = tuple[str, str]
"""``("e", exporter)``."""
Key = TemplateStateKey | ExporterStateKey
"""A key of the state: a template of an exporter, or an exporter's own values."""


def template_key(key: Key) -> tuple[int, int, int]:
    """The (version, domain, template id) of a template's state key."""
    if len(key) != 5:
        raise ValueError(f"not a template key: {key!r}")
    return key[2], key[3], key[4]


def frame(kind: int, payload: bytes) -> bytes:
    """One record: header (length, CRC-32) and payload."""
    body = bytes([kind]) + payload
    return _HEAD.pack(len(payload), zlib.crc32(body), kind) + payload


def _name(name: str) -> bytes:
    raw = name.encode()[:255]
    return bytes([len(raw)]) + raw


def _read_name(payload: bytes) -> tuple[str, int]:
    n = payload[0]
    if len(payload) < 1 + n:
        raise SavedStateError("state record cut short")
    return payload[1:1 + n].decode(), 1 + n


def template_record(exporter: str, version: int, domain: int, template_id: int, *, options: bool, ipfix: bool,
                    scope: int, count: int, last_seen_ms: int, spec: bytes) -> bytes:
    flags = (OPTIONS if options else 0) | (IPFIX if ipfix else 0)
    return frame(TEMPLATE, _name(exporter) + _TEMPLATE.pack(version, domain, template_id, flags, scope, count,
                                                            last_seen_ms) + spec)


def template_delete_record(exporter: str, version: int, domain: int, template_id: int) -> bytes:
    return frame(TEMPLATE_DELETE, _name(exporter) + _TEMPLATE_KEY.pack(version, domain, template_id))


def exporter_record(exporter: str, last_seen_ms: int, init_ms: dict[int, int],
                    rates: dict[tuple[int, tuple[int, int] | None], int]) -> bytes:
    parts = [_name(exporter), _EXPORTER.pack(last_seen_ms, len(init_ms), len(rates))]
    parts += [_INIT.pack(d, ms) for d, ms in init_ms.items()]
    parts += [_RATE.pack(d, k[0] if k else 0, k[1] if k else 0, r) for (d, k), r in rates.items()]
    return frame(EXPORTER, b"".join(parts))


def exporter_delete_record(exporter: str) -> bytes:
    return frame(EXPORTER_DELETE, _name(exporter))


def delete_record(key: Key) -> bytes:
    """The record deleting ``key``."""
    return template_delete_record(key[1], *template_key(key)) if key[0] == "t" else exporter_delete_record(key[1])


def held_record(exporter: str, version: int, domain: int, template_id: int, received_ms: int, export_ms: int,
                uptime_ms: int, body: bytes) -> bytes:
    return frame(HELD, _name(exporter) + _HELD.pack(version, domain, template_id, received_ms, export_ms, uptime_ms)
                 + body)


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    exporter: str
    version: int
    domain: int
    template_id: int
    options: bool
    ipfix: bool
    scope: int
    count: int
    last_seen_ms: int
    spec: bytes


@dataclass(frozen=True, slots=True)
class ExporterRecord:
    exporter: str
    last_seen_ms: int
    init_ms: dict[int, int]
    rates: dict[tuple[int, tuple[int, int] | None], int]


@dataclass(frozen=True, slots=True)
class HeldRecord:
    exporter: str
    version: int
    domain: int
    template_id: int
    received_ms: int
    export_ms: int
    uptime_ms: int
    body: bytes


def records(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """The whole records of a state file, as (kind, payload, record bytes), and the length they fill.

    Reading stops at the first record cut short or failing its CRC (the tail a crash left); raises
    :class:`SavedStateError` when ``data`` is not a state file at all.
    """
    if data[:len(MAGIC)] != MAGIC:
        raise SavedStateError("not a flowmed state file")
    out = []
    pos, end = len(MAGIC), len(data)
    view = memoryview(data)
    while end - pos >= _HEAD.size:
        length, crc, kind = _HEAD.unpack_from(data, pos)
        stop = pos + _HEAD.size + length
        if length > MAX_RECORD or stop > end or zlib.crc32(view[pos + 8:stop]) != crc:
            break
        out.append((kind, data[pos + _HEAD.size:stop], data[pos:stop]))
        pos = stop
    return out, pos


def decode(kind: int, payload: bytes) -> TemplateRecord | ExporterRecord | HeldRecord | Key:
    """A record's content; a delete record decodes to the key it deletes. Raises SavedStateError when malformed."""
    try:
        name, at = _read_name(payload)
        if kind == TEMPLATE:
            version, domain, tid, flags, scope, count, seen = _TEMPLATE.unpack_from(payload, at)
            return TemplateRecord(name, version, domain, tid, bool(flags & OPTIONS), bool(flags & IPFIX), scope,
                                  count, seen, payload[at + _TEMPLATE.size:])
        if kind == TEMPLATE_DELETE:
            version, domain, tid = _TEMPLATE_KEY.unpack_from(payload, at)
            return ("t", name, version, domain, tid)
        if kind == EXPORTER:
            seen, n_init, n_rates = _EXPORTER.unpack_from(payload, at)
            at += _EXPORTER.size
            init = {}
            for _ in range(n_init):
                d, ms = _INIT.unpack_from(payload, at)
                init[d] = ms
                at += _INIT.size
            rates: dict[tuple[int, tuple[int, int] | None], int] = {}
            for _ in range(n_rates):
                d, ie, sid, rate = _RATE.unpack_from(payload, at)
                rates[(d, (ie, sid) if ie else None)] = rate
                at += _RATE.size
            return ExporterRecord(name, seen, init, rates)
        if kind == EXPORTER_DELETE:
            return ("e", name)
        if kind == HELD:
            version, domain, tid, received, export, uptime = _HELD.unpack_from(payload, at)
            return HeldRecord(name, version, domain, tid, received, export, uptime, payload[at + _HELD.size:])
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise SavedStateError(f"malformed state record: {e}") from e
    raise SavedStateError(f"unknown state record kind {kind}")


def key_of(kind: int, payload: bytes) -> tuple[Key, bool]:
    """The key a log record sets or deletes, and whether it deletes it."""
    item = decode(kind, payload)
    if isinstance(item, tuple):
        return item, True
    if isinstance(item, TemplateRecord):
        return ("t", item.exporter, item.version, item.domain, item.template_id), False
    if isinstance(item, ExporterRecord):
        return ("e", item.exporter), False
    raise SavedStateError("held data in a template log")


class StateMirror:
    """The last record of every live key of a log: what a compacted rewrite of the log holds.

    Owned by the state writer (one thread); it shares the bytes of the records it was given, so it costs about one
    copy of the saved templates' field specifiers (accounted in :func:`decoders.netflow.templates.template_cost`).
    """

    def __init__(self) -> None:
        self.records: dict[Key, bytes] = {}
        self.bytes = 0

    def load(self, data: bytes) -> int:
        """Apply a log's records; returns the length of its whole records (a shorter tail is damage)."""
        recs, valid = records(data)
        for kind, payload, raw in recs:
            key, delete = key_of(kind, payload)
            self.apply(key, None if delete else raw)
        return valid

    def apply(self, key: Key, record: bytes | None) -> None:
        """Set (``record``) or delete (None) a key."""
        old = self.records.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        if record is not None:
            self.records[key] = record
            self.bytes += len(record)

    def snapshot(self) -> bytes:
        """A compact state file: one record per live key."""
        return MAGIC + b"".join(self.records.values())

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.records.values())
