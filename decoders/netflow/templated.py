"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011): headers, template sets and the column plan of data sets.

This module is pure parsing; state (template cache, pending data, sampling, sequences) lives in
:mod:`decoders.netflow.decoder`. Template sets yield :class:`~decoders.netflow.templates.Template`,
:class:`Withdrawal` or a
:class:`~decoders.errors.DecodeError` per record, so one bad template does not cost the good ones beside it.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from decoders.errors import BadTemplate, DecodeError, TooManyFields, Truncated
from decoders.netflow import fields as ies
from decoders.netflow.kernel import Gathered
from decoders.netflow.templates import Compiled, Template, fields_of
from decoders.netflow.v5 import uptime_to_ms

V9_HEADER = struct.Struct(">HHIIII")  # version, count, sysUptime, unix_secs, package_sequence, source_id
IPFIX_HEADER = struct.Struct(">HHIII")  # version, length, export time, sequence, observation domain
SET_HEADER = struct.Struct(">HH")
U16 = struct.Struct(">H")
U16X2 = struct.Struct(">HH")
U16X3 = struct.Struct(">HHH")
U32 = struct.Struct(">I")

V9_TEMPLATE_SET, V9_OPTIONS_SET = 0, 1
IPFIX_TEMPLATE_SET, IPFIX_OPTIONS_SET = 2, 3
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class Joiner:
    """Joins a batch's datagrams into one buffer that is reused from batch to batch.

    A fresh multi-megabyte buffer per batch costs a page fault per 4 KiB on first write; this one keeps its memory.
    The buffer of a batch is valid until the next :meth:`join` (which starts a new buffer if a view of the old one
    is still alive). Batches larger than ``keep_bytes`` get a buffer of their own, so memory stays bounded.
    """

    def __init__(self, keep_bytes: int = 16 << 20) -> None:
        self.keep_bytes = keep_bytes
        self._io = io.BytesIO()

    def join(self, payloads: Sequence[bytes], total: int) -> bytes | memoryview:
        if total > self.keep_bytes:
            return b"".join(payloads)
        bio = self._io
        try:
            bio.seek(0)
            bio.writelines(payloads)
        except BufferError:  # the previous batch's buffer is still referenced: leave it to its holder
            bio = self._io = io.BytesIO()
            bio.writelines(payloads)
        return bio.getbuffer()[:total]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """IPFIX template withdrawal (RFC 7011 section 8.1): one template, or all (``template_id`` 2 or 3)."""

    template_id: int
    options: bool

    @property
    def all(self) -> bool:
        return self.template_id in (IPFIX_TEMPLATE_SET, IPFIX_OPTIONS_SET)


def _padding(body: bytes | memoryview, pos: int, end: int) -> bool:
    return not any(body[pos:end])


class RawTemplate:
    """A template or options template record as received: its header checked, its field specifiers kept as wire
    bytes, nothing per field made.

    The decoder first decides whether it is a refresh of a template it knows (compare :attr:`spec`) or can fit its
    memory budget at all (its cost with no variable-length field is a lower bound: ``count`` and ``len(spec)``);
    only a template it may keep is looked at further (:meth:`problem`, :attr:`variable`: numpy over the lengths),
    and only one that gets data is compiled.
    """

    __slots__ = ("template_id", "spec", "count", "scope", "options", "ipfix", "_lengths")

    def __init__(self, template_id: int, spec: bytes, count: int, scope: int, options: bool, ipfix: bool) -> None:
        self.template_id = template_id
        self.spec = spec
        """Field specifiers as on the wire (IPFIX: enterprise fields with their PEN; v9 options: scope first)."""
        self.count = count
        self.scope = scope
        """Scope fields (options templates)."""
        self.options = options
        self.ipfix = ipfix
        self._lengths: np.ndarray | None = None  # read from ``spec`` when needed

    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = spec_lengths(self.spec, self.ipfix)
        return self._lengths

    @property
    def variable(self) -> int:
        """Fields of variable length (65535)."""
        return int(np.count_nonzero(self.lengths() == ies.VARIABLE_LENGTH))

    @property
    def zero(self) -> int:
        """Fields of length 0 (legal on the wire, but they carry nothing: counted as ``zero_length_field``)."""
        return int(np.count_nonzero(self.lengths() == 0))

    def problem(self) -> BadTemplate | None:
        """Why the template cannot be used (every field of length 0), or None."""
        lengths = self.lengths()
        if not lengths.any():
            return BadTemplate(f"template {self.template_id} has zero record length")
        return None

    def template(self) -> Template:
        """The template with its fields parsed (tests, tools; the decoder keeps :attr:`spec`)."""
        v9_scope = self.scope if self.options and not self.ipfix else 0
        return Template(self.template_id, fields_of(self.spec, ipfix=self.ipfix, v9_scope=v9_scope), self.scope,
                        self.options)


_SPECS: dict[int, re.Pattern[bytes]] = {}
"""Per field count: a field is a word whose high bit is clear, or one whose high bit is set and the PEN after it."""


def scan_specs(body: bytes, pos: int, end: int, count: int, ipfix: bool) -> int | None:
    """Where ``count`` field specifiers starting at ``pos`` end; None if they pass ``end``.

    Every specifier is 4 bytes, or 8 for an IPFIX enterprise field (high bit of the element id), so each starts at a
    multiple of 4: when no such word has its high bit set (one C-speed ``isascii`` over every fourth byte) they
    are all 4 bytes; otherwise one regular expression match over those bytes counts the fields (C speed too).
    """
    plain = 4 * count
    if end - pos < plain:
        return None
    if not ipfix or body[pos:pos + plain:4].isascii():
        return pos + plain
    pattern = _SPECS.get(count)
    if pattern is None:
        pattern = _SPECS[count] = re.compile(rb"(?:[\x00-\x7f]|[\x80-\xff][\x00-\xff]){%d}" % count)
    match = pattern.match(body[pos:min(end, pos + 8 * count):4])
    if match is None or pos + 4 * match.end() > end:
        return None
    return pos + 4 * match.end()


def spec_lengths(spec: bytes, ipfix: bool) -> np.ndarray:
    """The field lengths of wire field specifiers (see :func:`scan_specs`)."""
    if not ipfix or spec[::4].isascii():
        return np.frombuffer(spec, dtype=">u2")[1::2]
    # Word w starts a field unless the word before it starts an enterprise field (then w is its PEN): within a run
    # of words with the high bit set, starts alternate from the run's first word, so w is a start exactly when the
    # run of such words just before it is of even length.
    high = np.frombuffer(spec[::4], dtype=np.uint8) >> 7
    index = np.arange(len(high))
    run = index - np.maximum.accumulate(np.where(high == 0, index, -1))  # high words ending here (0 if not high)
    starts = np.flatnonzero(np.concatenate(([0], run[:-1])) % 2 == 0)
    return np.frombuffer(spec, dtype=">u2")[2 * starts + 1]


def parse_template_set(body: bytes, pos: int, end: int, *, ipfix: bool, options: bool,
                       max_fields: int) -> Iterator[RawTemplate | Withdrawal | DecodeError]:
    """Template or options template records of one set ``body[pos:end]`` (``body`` is bytes), in order.

    Per record: its header is unpacked and its specifiers skipped (see :func:`scan_specs`); nothing else.
    """
    min_record = 6 if options and not ipfix else 4
    while end - pos >= min_record:
        if not any(body[pos:pos + 4]) and _padding(body, pos, end):  # a template id is never 0: look further
            return
        start = pos
        if ipfix:
            tid, count = U16X2.unpack_from(body, pos)
            scope = 0
            pos += 4
            if count == 0:
                if tid < 256 and tid != (IPFIX_OPTIONS_SET if options else IPFIX_TEMPLATE_SET):
                    yield BadTemplate(f"withdrawal of invalid template id {tid}", offset=start)
                else:
                    yield Withdrawal(tid, options)
                continue
            if options:
                if end - pos < 2:
                    yield Truncated("options template header cut short", offset=start)
                    return
                scope = U16.unpack_from(body, pos)[0]
                pos += 2
        elif options:
            tid, scope_len, option_len = U16X3.unpack_from(body, pos)
            pos += 6
            if scope_len % 4 or option_len % 4 or scope_len + option_len == 0:
                yield BadTemplate(f"v9 options template {tid}: scope/option lengths {scope_len}/{option_len}",
                                    offset=start)
                return
            count = (scope_len + option_len) // 4
            scope = scope_len // 4
        else:
            tid, count = U16X2.unpack_from(body, pos)
            pos += 4
            scope = 0
        if count > max_fields:
            yield TooManyFields(f"template {tid} announces {count} fields (limit {max_fields})", offset=start)
            return  # (IPFIX) its length is unknown without walking it: the rest of the set is not looked at
        scanned = scan_specs(body, pos, end, count, ipfix)
        if scanned is None:
            yield Truncated(f"{'options template' if options else 'template'} {tid} cut short", offset=start)
            return
        spec_start, pos = pos, scanned
        if tid < 256:
            yield BadTemplate(f"template id {tid} is reserved (must be >= 256)", offset=start)
        elif count == 0:
            yield BadTemplate(f"template {tid} has no field", offset=start)
        elif ipfix and options and not 0 < scope <= count:
            yield BadTemplate(f"options template {tid}: scope count {scope} of {count} fields", offset=start)
        else:
            yield RawTemplate(tid, body[spec_start:pos], count, scope, options, ipfix)


def options_values(compiled: Compiled, view: Gathered) -> list[dict[int, int]]:
    """The sampling/system-init values of each options record (options data are few: a loop is fine here)."""
    cols = {ie: view.uint(ref.name) for ie, ref in compiled.refs.items() if ie in ies.OPTIONS_IES}
    return [{ie: int(v[i]) for ie, v in cols.items()} for i in range(view.n)]


def _ntp_to_ms(v: np.ndarray, *, nanoseconds: bool) -> np.ndarray:
    """RFC 7011 section 6.1.9/6.1.10: 32-bit seconds since 1900 + 32-bit fraction, to UTC ms (truncated).

    The fraction is first rounded to the nearest micro- (or nano-) second, which is exact for what exporters
    encode, so that e.g. 5.000 ms is not read as 4.999.
    """
    v = v.astype(np.uint64)
    secs = (v >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
    frac = v & np.uint64(0xFFFFFFFF)
    unit = 1_000_000_000 if nanoseconds else 1_000_000
    sub = ((frac * np.uint64(unit) + np.uint64(1 << 31)) >> np.uint64(32)).astype(np.int64)
    return secs * 1000 + sub // (unit // 1000)


def time_column(view: Gathered, compiled: Compiled, ie: int | None, export_ms: np.ndarray,
                uptime_ms: np.ndarray, init_ms: np.ndarray) -> np.ndarray:
    """flow_start/flow_end in UTC ms from whichever timestamp form the template carries.

    ``uptime_ms`` is the v9 header sysUptime per record (-1 for IPFIX); ``init_ms`` the IPFIX
    systemInitTimeMilliseconds per record (-1 when unknown). Without any time field, the export time is used.
    """
    if ie is None:
        return export_ms.copy()
    v = view.uint(compiled.refs[ie].name)
    if ie in (152, 153, 323):
        return v.astype(np.int64)
    if ie in (150, 151):
        return v.astype(np.int64) * 1000
    if ie in (154, 155, 156, 157):
        return _ntp_to_ms(v, nanoseconds=ie in (156, 157))
    if ie in (158, 159):  # microseconds before the message's export time (IANA IE 158/159)
        return (export_ms * 1000 - v.astype(np.int64)) // 1000
    # 21/22: sysUptime-relative ms. v9: against the header's sysUptime; IPFIX: systemInitTimeMilliseconds + value.
    if np.ndim(uptime_ms) == 0 and uptime_ms >= 0:  # all v9
        return uptime_to_ms(v, export_ms, uptime_ms)
    v64 = v.astype(np.int64)
    if ies.SYSTEM_INIT_TIME in compiled.refs:
        init_ms = view.uint(compiled.refs[ies.SYSTEM_INIT_TIME].name).astype(np.int64)
    ipfix = np.where(init_ms >= 0, _uptime_near_export(init_ms, v64, export_ms), export_ms)
    if np.ndim(uptime_ms) == 0:  # all IPFIX
        return ipfix
    return np.where(uptime_ms >= 0, uptime_to_ms(v, export_ms, uptime_ms), ipfix)


SANE_INIT_MS = (946_684_800_000, 86_400_000)
"""A systemInitTimeMilliseconds after 2000-01-01 and at most a day after the export time is a real clock reading."""


def _uptime_near_export(init_ms: np.ndarray, uptime: np.ndarray, export_ms: np.ndarray) -> np.ndarray:
    """``init + uptime`` for the 32-bit sysUpTime fields, taken modulo 2**32 to the time nearest the export time.

    The counter wraps every 49.7 days, so after that ``init + value`` lies a multiple of 2**32 ms in the past; and
    softflowd replaying a capture sets its init time to the wall clock and writes ``packet time - init`` (negative
    for the capture's older packets) as an unsigned 32-bit value, which ``init + value`` put 2**32 ms ahead: every
    record of a replay was rejected as ``future``. As the v9 header's sysUptime does, the export time settles the
    wrap (times within 24.8 days of it are exact). A garbage init time (zero, or after the export) is left alone:
    its records stay visibly wrong instead of being moved near the export time.
    """
    plain = init_ms + uptime
    wrapped = export_ms + ((plain - export_ms + (1 << 31)) % (1 << 32)) - (1 << 31)
    sane = (init_ms >= SANE_INIT_MS[0]) & (init_ms <= export_ms + SANE_INIT_MS[1])
    out: np.ndarray = np.where(sane, wrapped, plain)
    return out


def flow_columns(compiled: Compiled, view: Gathered) -> dict[str, np.ndarray]:
    """The ``flows`` columns a template carries (addresses as S16, IPv4 mapped; integers as uint64, not yet cast)."""
    out: dict[str, np.ndarray] = {}
    for column, (ref, kind) in compiled.columns.items():
        out[column] = view.address(column) if kind in ("ipv4", "ipv6") else view.uint(ref.name)
    return out
