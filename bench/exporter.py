"""A NetFlow v5 / v9 / IPFIX exporter simulator: an *encoder* library for tests, scenarios and load generation.

It writes what real exporters send, including the awkward parts a collector must survive:

- v5 datagrams (header sampling interval, engine type/id, flow sequence);
- v9 (RFC 3954) and IPFIX (RFC 7011) template sets, options template sets, options data (sampling: IEs 34/35,
  48/49/50, 302/305/306) and data sets; IPFIX template withdrawal;
- fixed and variable-length fields (IPFIX varlen encoding with 1 or 3-byte lengths; also accepted in v9 since some
  vendors send it), IPFIX enterprise fields, IPv4 and IPv6, NAT fields (IEs 225-228, 230, 281, 282);
- sequence numbers per (exporter, domain) as each protocol defines them, exporter restarts (sequence and sysUptime
  reset), several domains reusing template ids;
- every common flow time form: sysUptime-relative, Seconds, Milliseconds, Microseconds, NanoSeconds (NTP format,
  RFC 7011 6.1.9/6.1.10) and DeltaMicroseconds.

The truth a scenario encodes is a list of :class:`Flow`; :func:`record_values` maps a flow onto the fields of a
template, so expected decoder output can be derived from the same flows. Times are UTC milliseconds (plus an optional
microsecond remainder for the sub-millisecond forms).

Fixed-length templates encode column-wise with numpy (for load generation); variable-length ones record by record.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

VARLEN = 0xFFFF
"""Template field length meaning "variable length" (RFC 7011 7)."""

NTP_EPOCH_OFFSET_S = 2_208_988_800
"""Seconds from 1900-01-01 (NTP era 0) to 1970-01-01."""

# IPFIX information elements the simulator knows: id -> (name, default length, kind). Kinds: uint, ipv4, ipv6, mac,
# string, bytes, ntp (dateTimeMicro/Nanoseconds, 64-bit NTP format).
IES: dict[int, tuple[str, int, str]] = {
    1: ("octetDeltaCount", 8, "uint"),
    2: ("packetDeltaCount", 8, "uint"),
    4: ("protocolIdentifier", 1, "uint"),
    5: ("ipClassOfService", 1, "uint"),
    6: ("tcpControlBits", 1, "uint"),
    7: ("sourceTransportPort", 2, "uint"),
    8: ("sourceIPv4Address", 4, "ipv4"),
    9: ("sourceIPv4PrefixLength", 1, "uint"),
    10: ("ingressInterface", 4, "uint"),
    11: ("destinationTransportPort", 2, "uint"),
    12: ("destinationIPv4Address", 4, "ipv4"),
    13: ("destinationIPv4PrefixLength", 1, "uint"),
    14: ("egressInterface", 4, "uint"),
    15: ("ipNextHopIPv4Address", 4, "ipv4"),
    16: ("bgpSourceAsNumber", 4, "uint"),
    17: ("bgpDestinationAsNumber", 4, "uint"),
    21: ("flowEndSysUpTime", 4, "uint"),
    22: ("flowStartSysUpTime", 4, "uint"),
    27: ("sourceIPv6Address", 16, "ipv6"),
    28: ("destinationIPv6Address", 16, "ipv6"),
    29: ("sourceIPv6PrefixLength", 1, "uint"),
    30: ("destinationIPv6PrefixLength", 1, "uint"),
    34: ("samplingInterval", 4, "uint"),
    35: ("samplingAlgorithm", 1, "uint"),
    48: ("samplerId", 1, "uint"),
    49: ("samplerMode", 1, "uint"),
    50: ("samplerRandomInterval", 4, "uint"),
    56: ("sourceMacAddress", 6, "mac"),
    58: ("vlanId", 2, "uint"),
    61: ("flowDirection", 1, "uint"),
    62: ("ipNextHopIPv6Address", 16, "ipv6"),
    82: ("interfaceName", VARLEN, "string"),
    83: ("interfaceDescription", VARLEN, "string"),
    94: ("applicationDescription", VARLEN, "string"),
    95: ("applicationId", VARLEN, "bytes"),
    96: ("applicationName", VARLEN, "string"),
    136: ("flowEndReason", 1, "uint"),
    144: ("exportingProcessId", 4, "uint"),
    149: ("observationDomainId", 4, "uint"),
    150: ("flowStartSeconds", 4, "uint"),
    151: ("flowEndSeconds", 4, "uint"),
    152: ("flowStartMilliseconds", 8, "uint"),
    153: ("flowEndMilliseconds", 8, "uint"),
    154: ("flowStartMicroseconds", 8, "ntp"),
    155: ("flowEndMicroseconds", 8, "ntp"),
    156: ("flowStartNanoseconds", 8, "ntp"),
    157: ("flowEndNanoseconds", 8, "ntp"),
    158: ("flowStartDeltaMicroseconds", 4, "uint"),
    159: ("flowEndDeltaMicroseconds", 4, "uint"),
    160: ("systemInitTimeMilliseconds", 8, "uint"),
    225: ("postNATSourceIPv4Address", 4, "ipv4"),
    226: ("postNATDestinationIPv4Address", 4, "ipv4"),
    227: ("postNAPTSourceTransportPort", 2, "uint"),
    228: ("postNAPTDestinationTransportPort", 2, "uint"),
    230: ("natEvent", 1, "uint"),
    231: ("initiatorOctets", 8, "uint"),
    233: ("firewallEvent", 1, "uint"),
    281: ("postNATSourceIPv6Address", 16, "ipv6"),
    282: ("postNATDestinationIPv6Address", 16, "ipv6"),
    283: ("natPoolId", 4, "uint"),
    323: ("observationTimeMilliseconds", 8, "uint"),
    361: ("portRangeStart", 2, "uint"),
    362: ("portRangeEnd", 2, "uint"),
    363: ("portRangeStepSize", 2, "uint"),
    364: ("portRangeNumPorts", 2, "uint"),
    302: ("selectorId", 8, "uint"),
    305: ("samplingPacketInterval", 4, "uint"),
    306: ("samplingPacketSpace", 4, "uint"),
}
IE_BY_NAME: dict[str, int] = {name: ie for ie, (name, _, _) in IES.items()}


@dataclass(frozen=True, slots=True)
class Field:
    """One field specifier of a template: information element, length on the wire, enterprise number."""

    ie: int
    length: int
    enterprise: int = 0
    kind: str = "uint"
    name: str = ""

    @property
    def varlen(self) -> bool:
        return self.length == VARLEN

    def spec(self, version: int) -> bytes:
        """The field specifier as it appears in a template record (RFC 3954 5.2, RFC 7011 3.2)."""
        if self.enterprise:
            if version != 10:
                raise ValueError("enterprise fields exist only in IPFIX")
            return struct.pack("!HHI", self.ie | 0x8000, self.length, self.enterprise)
        return struct.pack("!HH", self.ie, self.length)


def fld(ie: int | str, length: int | None = None, *, enterprise: int = 0, kind: str | None = None) -> Field:
    """A :class:`Field` by IE id or name, with the IE's usual length unless ``length`` is given.

    Enterprise fields (unknown to the registry) default to kind ``bytes`` and a name ``e<PEN>.<id>``.
    """
    ie_id = IE_BY_NAME[ie] if isinstance(ie, str) else ie
    if enterprise:
        return Field(ie_id, VARLEN if length is None else length, enterprise, kind or "bytes", f"e{enterprise}.{ie_id}")
    name, default_len, default_kind = IES[ie_id]
    return Field(ie_id, default_len if length is None else length, 0, kind or default_kind, name)


@dataclass(frozen=True, slots=True)
class Template:
    """A (data) template, or an options template when ``scope`` is non-empty."""

    template_id: int
    fields: tuple[Field, ...]
    scope: tuple[Field, ...] = ()

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return self.scope + self.fields

    @property
    def is_options(self) -> bool:
        return bool(self.scope)

    @property
    def fixed_length(self) -> int | None:
        """Record length in bytes, or None when a field is variable-length."""
        if any(f.varlen for f in self.all_fields):
            return None
        return sum(f.length for f in self.all_fields)


def template(template_id: int, *fields: Field | int | str, scope: Sequence[Field | int | str] = ()) -> Template:
    """Build a :class:`Template` from :class:`Field` objects, IE ids or IE names."""
    as_field = [f if isinstance(f, Field) else fld(f) for f in fields]
    as_scope = [f if isinstance(f, Field) else fld(f) for f in scope]
    return Template(template_id, tuple(as_field), tuple(as_scope))


# ---------------------------------------------------------------------------------------------------------------
# The truth: flows, and how a flow fills a template's fields


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow as a scenario means it; encoders map it onto template fields, tests compare decodes against it."""

    src_addr: str
    dst_addr: str
    src_port: int = 0
    dst_port: int = 0
    protocol: int = 6
    bytes: int = 0
    packets: int = 0
    start_ms: int = 0
    end_ms: int = 0
    start_us_frac: int = 0
    """Extra microseconds (0-999) after ``start_ms``, for the sub-millisecond time forms."""
    end_us_frac: int = 0
    tcp_flags: int = 0
    tos: int = 0
    in_if: int = 0
    out_if: int = 0
    src_as: int = 0
    dst_as: int = 0
    src_mask: int = 0
    dst_mask: int = 0
    next_hop: str = ""
    direction: int = 0
    post_nat_src_addr: str = ""
    post_nat_dst_addr: str = ""
    post_nat_src_port: int = 0
    post_nat_dst_port: int = 0
    nat_event: int = 0
    extra: Mapping[str, object] = field(default_factory=dict)
    """Values of fields with no flow meaning (varlen strings, enterprise fields), by field name."""

    @property
    def ipv6(self) -> bool:
        return ":" in self.src_addr


TIME_FORMS: dict[str, tuple[str, str]] = {
    "sysuptime": ("flowStartSysUpTime", "flowEndSysUpTime"),
    "seconds": ("flowStartSeconds", "flowEndSeconds"),
    "milliseconds": ("flowStartMilliseconds", "flowEndMilliseconds"),
    "microseconds": ("flowStartMicroseconds", "flowEndMicroseconds"),
    "nanoseconds": ("flowStartNanoseconds", "flowEndNanoseconds"),
    "delta_microseconds": ("flowStartDeltaMicroseconds", "flowEndDeltaMicroseconds"),
}
"""The template field pair each time form uses."""
_TIME_FIELDS = frozenset(name for pair in TIME_FORMS.values() for name in pair)


def ntp_timestamp(unix_us: int, *, nanoseconds: bool = False) -> int:
    """A UNIX time in microseconds as a 64-bit NTP timestamp (RFC 7011 6.1.9/6.1.10).

    dateTimeMicroseconds leaves the low 11 bits of the fraction zero; nanoseconds keeps the full fraction.
    """
    seconds, us = divmod(unix_us, 1_000_000)
    fraction = (us << 32) // 1_000_000
    if not nanoseconds:
        fraction &= ~0x7FF
    return ((seconds + NTP_EPOCH_OFFSET_S) << 32) | fraction


def decoded_time_ms(form: str, ms: int) -> int:
    """The UTC milliseconds a correct decoder yields for a flow time ``ms`` (plus any sub-millisecond part) written
    in ``form``: Seconds lose the milliseconds; every other form keeps them, sub-millisecond parts truncated."""
    if form == "seconds":
        return ms - ms % 1000
    return ms


@dataclass(slots=True)
class ExportContext:
    """What the time fields of a record are relative to: the datagram's export time and the exporter's boot time."""

    export_ms: int
    boot_ms: int


FLOW_ATTRS: dict[str, str] = {
    "octetDeltaCount": "bytes", "packetDeltaCount": "packets", "protocolIdentifier": "protocol",
    "ipClassOfService": "tos", "tcpControlBits": "tcp_flags", "sourceTransportPort": "src_port",
    "destinationTransportPort": "dst_port", "sourceIPv4Address": "src_addr", "destinationIPv4Address": "dst_addr",
    "sourceIPv6Address": "src_addr", "destinationIPv6Address": "dst_addr", "sourceIPv4PrefixLength": "src_mask",
    "destinationIPv4PrefixLength": "dst_mask", "sourceIPv6PrefixLength": "src_mask",
    "destinationIPv6PrefixLength": "dst_mask", "ingressInterface": "in_if", "egressInterface": "out_if",
    "ipNextHopIPv4Address": "next_hop", "ipNextHopIPv6Address": "next_hop", "bgpSourceAsNumber": "src_as",
    "bgpDestinationAsNumber": "dst_as", "flowDirection": "direction", "postNATSourceIPv4Address": "post_nat_src_addr",
    "postNATDestinationIPv4Address": "post_nat_dst_addr", "postNATSourceIPv6Address": "post_nat_src_addr",
    "postNATDestinationIPv6Address": "post_nat_dst_addr", "postNAPTSourceTransportPort": "post_nat_src_port",
    "postNAPTDestinationTransportPort": "post_nat_dst_port", "natEvent": "nat_event",
}


def _time_value(name: str, flow: Flow, ctx: ExportContext) -> int:
    start = "Start" in name
    ms = flow.start_ms if start else flow.end_ms
    us = ms * 1000 + (flow.start_us_frac if start else flow.end_us_frac)
    form = name.removeprefix("flowStart").removeprefix("flowEnd")
    if form == "SysUpTime":
        return (ms - ctx.boot_ms) & 0xFFFFFFFF
    if form == "DeltaMicroseconds":
        return ctx.export_ms * 1000 - us  # RFC 7011 A.2: microseconds before the export time
    if form == "Seconds":
        return ms // 1000
    if form == "Microseconds":
        return ntp_timestamp(us)
    if form == "Nanoseconds":
        return ntp_timestamp(us, nanoseconds=True)
    return ms  # Milliseconds


def record_values(flow: Flow, fields: Iterable[Field], ctx: ExportContext) -> dict[str, object]:
    """The value of each of ``fields`` for ``flow``: flow attributes, time forms relative to ``ctx``, extras."""
    out: dict[str, object] = {}
    for f in fields:
        if f.name in flow.extra:
            out[f.name] = flow.extra[f.name]
        elif f.name in FLOW_ATTRS:
            out[f.name] = getattr(flow, FLOW_ATTRS[f.name])
        elif f.name in _TIME_FIELDS:
            out[f.name] = _time_value(f.name, flow, ctx)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Field and record encoding


def _addr_bytes(value: object, size: int) -> bytes:
    if not value:
        return bytes(size)
    if isinstance(value, bytes):
        return value.rjust(size, b"\0")[:size]
    packed = ipaddress.ip_address(value).packed
    if len(packed) != size:
        raise ValueError(f"address {value} does not fit a {size}-byte field")
    return packed


def encode_value(f: Field, value: object, *, varlen_long: bool = False) -> bytes:
    """One field value as bytes on the wire; variable-length fields get their 1- or 3-byte length prefix.

    ``varlen_long`` forces the 3-byte form (255, then a 16-bit length) even for short values, as RFC 7011 7 allows.
    """
    if f.kind in ("ipv4", "ipv6"):
        data = _addr_bytes(value, 4 if f.kind == "ipv4" else 16)
    elif f.kind == "mac":
        data = bytes.fromhex(str(value).replace(":", "")) if value else bytes(6)
    elif f.kind in ("string", "bytes"):
        data = value.encode() if isinstance(value, str) else bytes(value or b"")
        if not f.varlen:
            data = data[: f.length].ljust(f.length, b"\0")
    else:
        data = int(value or 0).to_bytes(8 if f.varlen else f.length, "big")
    if not f.varlen:
        return data
    if len(data) < 255 and not varlen_long:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


def _column_bytes(f: Field, values: Sequence[object]) -> np.ndarray:
    """One fixed-length field of n records as an (n, length) uint8 array."""
    n = len(values)
    if isinstance(values, np.ndarray) and values.ndim == 2:  # already bytes per record, e.g. IPv6 (n, 16) uint8
        return np.ascontiguousarray(values, dtype=np.uint8)
    numeric = isinstance(values, np.ndarray) and values.dtype.kind in "ui"  # e.g. IPv4 addresses as integers
    if f.kind in ("uint", "ntp") or numeric:
        arr = np.asarray(values, dtype=np.uint64).astype(">u8").view(np.uint8).reshape(n, 8)
        if f.length > 8:
            return np.hstack([np.zeros((n, f.length - 8), np.uint8), arr])
        return arr[:, 8 - f.length:]
    blob = b"".join(encode_value(f, v) for v in values)
    return np.frombuffer(blob, dtype=np.uint8).reshape(n, f.length)


def encode_records(tmpl: Template, records: Sequence[Mapping[str, object]] | Mapping[str, Sequence[object]],
                   *, varlen_long: bool = False) -> tuple[bytes, int]:
    """Encode records (a list of dicts, or a dict of columns, by field name) for ``tmpl``; missing values are 0.

    Returns ``(bytes, record_count)``. Fixed-length templates encode column-wise with numpy.
    """
    fields = tmpl.all_fields
    if isinstance(records, Mapping):
        n = len(next(iter(records.values()))) if records else 0
        columns = {f.name: records.get(f.name, [0] * n) for f in fields}
    else:
        n = len(records)
        columns = {f.name: [r.get(f.name, 0) for r in records] for f in fields}
    if n == 0:
        return b"", 0
    if tmpl.fixed_length is not None:
        return np.hstack([_column_bytes(f, columns[f.name]) for f in fields]).tobytes(), n
    out = bytearray()
    for i in range(n):  # variable-length records: no way around encoding one by one
        for f in fields:
            out += encode_value(f, columns[f.name][i], varlen_long=varlen_long)
    return bytes(out), n


# ---------------------------------------------------------------------------------------------------------------
# Sets and messages


@dataclass(frozen=True, slots=True)
class FlowSet:
    """An encoded set (flowset in v9 words): its bytes and how many records it holds (for header counts)."""

    payload: bytes
    records: int
    data_records: int


def _set(set_id: int, body: bytes, records: int, data_records: int, pad: bool) -> FlowSet:
    padding = (-(4 + len(body)) % 4) if pad else 0
    return FlowSet(struct.pack("!HH", set_id, 4 + len(body) + padding) + body + bytes(padding), records, data_records)


class _TemplateExporter:
    """State shared by v9 and IPFIX exporters: domain, sequence number, boot time (sysUptime reference)."""

    version = 0
    template_set_id = 0
    options_set_id = 0

    def __init__(self, domain: int = 0, *, boot_ms: int = 0, sequence: int = 0, pad: bool = True) -> None:
        self.domain = domain
        self.boot_ms = boot_ms
        self.sequence = sequence
        self.pad = pad

    def restart(self, boot_ms: int) -> None:
        """The exporter reboots: sequence numbers start again at 0 and sysUptime counts from ``boot_ms``."""
        self.boot_ms = boot_ms
        self.sequence = 0

    def context(self, export_ms: int) -> ExportContext:
        return ExportContext(export_ms=export_ms, boot_ms=self.boot_ms)

    def templates(self, *templates: Template) -> FlowSet:
        """A template set, or an options template set when the templates are options templates (not mixed)."""
        kinds = {t.is_options for t in templates}
        if len(kinds) != 1:
            raise ValueError("a set holds either templates or options templates")
        body = b"".join(self._template_record(t) for t in templates)
        set_id = self.options_set_id if kinds.pop() else self.template_set_id
        return _set(set_id, body, len(templates), 0, self.pad)

    def _template_record(self, t: Template) -> bytes:
        raise NotImplementedError

    def data(self, tmpl: Template, records: Sequence[Mapping[str, object]] | Mapping[str, Sequence[object]],
             *, varlen_long: bool = False) -> FlowSet:
        """A data set of ``records`` (dicts or columns by field name) for ``tmpl``."""
        body, n = encode_records(tmpl, records, varlen_long=varlen_long)
        return _set(tmpl.template_id, body, n, n, self.pad)

    def flows(self, tmpl: Template, flows: Sequence[Flow], export_ms: int) -> FlowSet:
        """A data set of ``flows``, their times relative to ``export_ms`` and this exporter's boot time."""
        ctx = self.context(export_ms)
        return self.data(tmpl, [record_values(f, tmpl.all_fields, ctx) for f in flows])


class V9Exporter(_TemplateExporter):
    """NetFlow v9 (RFC 3954): the header counts all records; the sequence counts export packets."""

    version = 9
    template_set_id = 0
    options_set_id = 1

    def _template_record(self, t: Template) -> bytes:
        if t.is_options:  # RFC 3954 6.1: scope and option lengths are in bytes
            scope = b"".join(f.spec(9) for f in t.scope)
            opts = b"".join(f.spec(9) for f in t.fields)
            return struct.pack("!HHH", t.template_id, len(scope), len(opts)) + scope + opts
        return struct.pack("!HH", t.template_id, len(t.fields)) + b"".join(f.spec(9) for f in t.fields)

    def datagram(self, *sets: FlowSet, export_ms: int) -> bytes:
        """An export packet of ``sets``, exported at ``export_ms`` (UTC); advances the sequence by one."""
        count = sum(s.records for s in sets)
        uptime = (export_ms - self.boot_ms) & 0xFFFFFFFF
        header = struct.pack("!HHIIII", 9, count, uptime, export_ms // 1000, self.sequence & 0xFFFFFFFF, self.domain)
        self.sequence += 1
        return header + b"".join(s.payload for s in sets)


class IpfixExporter(_TemplateExporter):
    """IPFIX (RFC 7011): the header carries the message length; the sequence counts data records sent before."""

    version = 10
    template_set_id = 2
    options_set_id = 3

    def __init__(self, domain: int = 0, *, boot_ms: int = 0, sequence: int = 0, pad: bool = False) -> None:
        super().__init__(domain, boot_ms=boot_ms, sequence=sequence, pad=pad)

    def _template_record(self, t: Template) -> bytes:
        specs = b"".join(f.spec(10) for f in t.all_fields)
        if t.is_options:
            return struct.pack("!HHH", t.template_id, len(t.all_fields), len(t.scope)) + specs
        return struct.pack("!HH", t.template_id, len(t.fields)) + specs

    def withdraw(self, *template_ids: int, options: bool = False) -> FlowSet:
        """A template withdrawal (RFC 7011 8.1): field count 0; id 2 (or 3 for options) withdraws all."""
        body = b"".join(struct.pack("!HH", tid, 0) for tid in template_ids)
        return _set(self.options_set_id if options else self.template_set_id, body, len(template_ids), 0, self.pad)

    def datagram(self, *sets: FlowSet, export_ms: int) -> bytes:
        """An IPFIX message of ``sets``; the sequence advances by the data records it carries."""
        body = b"".join(s.payload for s in sets)
        header = struct.pack("!HHIII", 10, 16 + len(body), export_ms // 1000, self.sequence & 0xFFFFFFFF, self.domain)
        self.sequence += sum(s.data_records for s in sets)
        return header + body


class V5Exporter:
    """NetFlow v5: fixed 48-byte records, IPv4 only, up to 30 per datagram; the sequence counts flows."""

    RECORD = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")
    HEADER = struct.Struct("!HHIIIIBBH")
    MAX_RECORDS = 30

    def __init__(self, *, engine_type: int = 0, engine_id: int = 0, sampling_interval: int = 0,
                 sampling_mode: int = 0, boot_ms: int = 0, sequence: int = 0) -> None:
        self.engine_type = engine_type
        self.engine_id = engine_id
        self.sampling_interval = sampling_interval
        self.sampling_mode = sampling_mode
        self.boot_ms = boot_ms
        self.sequence = sequence

    def restart(self, boot_ms: int) -> None:
        """The exporter reboots: flow sequence restarts at 0, sysUptime counts from ``boot_ms``."""
        self.boot_ms = boot_ms
        self.sequence = 0

    def datagram(self, flows: Sequence[Flow], *, export_ms: int) -> bytes:
        """A v5 datagram of up to 30 flows, exported at ``export_ms``; sysUptime-relative First/Last."""
        if len(flows) > self.MAX_RECORDS:
            raise ValueError("a v5 datagram holds at most 30 records")
        uptime = (export_ms - self.boot_ms) & 0xFFFFFFFF
        secs, ms = divmod(export_ms, 1000)
        sampling = ((self.sampling_mode & 0x3) << 14) | (self.sampling_interval & 0x3FFF)
        header = self.HEADER.pack(5, len(flows), uptime, secs, ms * 1_000_000, self.sequence & 0xFFFFFFFF,
                                  self.engine_type, self.engine_id, sampling)
        self.sequence += len(flows)
        body = b"".join(
            self.RECORD.pack(
                _addr_bytes(f.src_addr, 4), _addr_bytes(f.dst_addr, 4), _addr_bytes(f.next_hop, 4),
                f.in_if, f.out_if, f.packets, f.bytes, (f.start_ms - self.boot_ms) & 0xFFFFFFFF,
                (f.end_ms - self.boot_ms) & 0xFFFFFFFF, f.src_port, f.dst_port, f.tcp_flags, f.protocol, f.tos,
                f.src_as, f.dst_as, f.src_mask, f.dst_mask,
            )
            for f in flows
        )
        return header + body


def v5_datagrams_columns(n_datagrams: int, records: int, *, export_ms: int, boot_ms: int, seed: int = 0) -> list[bytes]:
    """Many v5 datagrams of random flows, built with numpy (for benchmarks and load); sequence numbers continue."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype([("src", ">u4"), ("dst", ">u4"), ("nh", ">u4"), ("in", ">u2"), ("out", ">u2"),
                      ("pkts", ">u4"), ("octets", ">u4"), ("first", ">u4"), ("last", ">u4"), ("sport", ">u2"),
                      ("dport", ">u2"), ("pad1", "u1"), ("flags", "u1"), ("proto", "u1"), ("tos", "u1"),
                      ("src_as", ">u2"), ("dst_as", ">u2"), ("smask", "u1"), ("dmask", "u1"), ("pad2", ">u2")])
    assert dtype.itemsize == 48
    total = n_datagrams * records
    recs = np.zeros(total, dtype=dtype)
    recs["src"] = rng.integers(0x0A000000, 0x0AFFFFFF, total)
    recs["dst"] = rng.integers(0xC0000000, 0xC0FFFFFF, total)
    recs["pkts"] = rng.integers(1, 1000, total)
    recs["octets"] = recs["pkts"] * rng.integers(40, 1500, total)
    uptime = export_ms - boot_ms
    recs["first"] = uptime - rng.integers(1000, 60000, total)
    recs["last"] = uptime - rng.integers(0, 1000, total)
    recs["sport"] = rng.integers(1024, 65535, total)
    recs["dport"] = rng.choice([53, 80, 443], total)
    recs["proto"] = rng.choice([6, 17], total)
    raw = recs.tobytes()
    out = []
    secs, ms = divmod(export_ms, 1000)
    for i in range(n_datagrams):
        header = V5Exporter.HEADER.pack(5, records, uptime, secs, ms * 1_000_000, i * records, 0, 0, 0)
        out.append(header + raw[i * records * 48:(i + 1) * records * 48])
    return out


def random_flows(n: int, *, export_ms: int, seed: int = 0, ipv6: bool = False) -> list[Flow]:
    """``n`` plausible random flows ending before ``export_ms`` (for scenarios and load)."""
    rng = np.random.default_rng(seed)
    flows = []
    for i in range(n):
        pkts = int(rng.integers(1, 1000))
        start = export_ms - int(rng.integers(2000, 60000))
        if ipv6:
            src, dst = f"2001:db8:1::{i % 65536:x}", f"2001:db8:2::{int(rng.integers(1, 65535)):x}"
        else:
            src = str(ipaddress.IPv4Address(0x0A000000 + i % 65536))
            dst = str(ipaddress.IPv4Address(int(rng.integers(0xC0000000, 0xC0FFFFFF))))
        flows.append(Flow(src, dst, int(rng.integers(1024, 65535)), int(rng.choice([53, 80, 443])),
                          int(rng.choice([6, 17])), pkts * int(rng.integers(40, 1500)), pkts, start,
                          start + int(rng.integers(0, 1500)), start_us_frac=250, end_us_frac=250,
                          in_if=int(rng.integers(1, 16)), out_if=int(rng.integers(1, 16))))
    return flows


def flow_template(template_id: int, *, ipv6: bool = False, time_form: str = "sysuptime",
                  octets_len: int = 8, extra: Sequence[Field] = ()) -> Template:
    """A typical data template (5-tuple, counters, interfaces, times in ``time_form``) plus ``extra`` fields."""
    af = ("sourceIPv6Address", "destinationIPv6Address") if ipv6 else ("sourceIPv4Address", "destinationIPv4Address")
    start, end = TIME_FORMS[time_form]
    return template(template_id, af[0], af[1], "sourceTransportPort", "destinationTransportPort",
                    "protocolIdentifier", "tcpControlBits", "ipClassOfService", fld("octetDeltaCount", octets_len),
                    fld("packetDeltaCount", octets_len), fld("ingressInterface", 4), fld("egressInterface", 4),
                    start, end, *extra)


def random_columns(tmpl: Template, n: int, *, export_ms: int, boot_ms: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but plausible values for every field of ``tmpl`` (a :func:`flow_template`), as numpy columns.

    Vectorised, for benchmarks and load generation; addresses are IPv4 10.0.0.0/8 -> 192.0.0.0/8 (or the IPv6
    documentation prefix, as 16-byte values).
    """
    rng = np.random.default_rng(seed)
    start_ms = export_ms - rng.integers(2000, 60_000, n)
    end_ms = start_ms + rng.integers(0, 1500, n)
    packets = rng.integers(1, 1000, n)
    ctx = ExportContext(export_ms, boot_ms)
    cols: dict[str, np.ndarray] = {}
    for f in tmpl.all_fields:
        if f.kind == "ipv4":
            base = 0x0A000000 if "source" in f.name else 0xC0000000
            cols[f.name] = base + rng.integers(0, 1 << 24, n)
        elif f.kind == "ipv6":
            prefix = np.frombuffer(bytes.fromhex("20010db8000000000000000000000000"), np.uint8)
            raw = np.tile(prefix, (n, 1))
            raw[:, 8:] = rng.integers(0, 256, (n, 8), dtype=np.uint8)
            cols[f.name] = raw
        elif f.name in _TIME_FIELDS:
            cols[f.name] = _vector_time(f.name, start_ms if "Start" in f.name else end_ms, ctx)
        elif f.name == "octetDeltaCount":
            cols[f.name] = packets * rng.integers(40, 1500, n)
        elif f.name == "packetDeltaCount":
            cols[f.name] = packets
        elif f.name == "sourceTransportPort":
            cols[f.name] = rng.integers(1024, 65535, n)
        elif f.name == "destinationTransportPort":
            cols[f.name] = rng.choice([53, 80, 443], n)
        elif f.name == "protocolIdentifier":
            cols[f.name] = rng.choice([6, 17], n)
        elif f.name in ("ingressInterface", "egressInterface"):
            cols[f.name] = rng.integers(1, 64, n)
        else:
            cols[f.name] = np.zeros(n, dtype=np.uint64)
    return cols


def _vector_time(name: str, ms: np.ndarray, ctx: ExportContext) -> np.ndarray:
    form = name.removeprefix("flowStart").removeprefix("flowEnd")
    if form == "SysUpTime":
        return (ms - ctx.boot_ms) & 0xFFFFFFFF
    if form == "Seconds":
        return ms // 1000
    if form == "DeltaMicroseconds":
        return (ctx.export_ms - ms) * 1000
    if form in ("Microseconds", "Nanoseconds"):  # NTP format, as ntp_timestamp() does it
        us = ms.astype(np.uint64) * np.uint64(1000)
        secs = us // np.uint64(1_000_000) + np.uint64(NTP_EPOCH_OFFSET_S)
        fraction = ((us % np.uint64(1_000_000)) << np.uint64(32)) // np.uint64(1_000_000)
        if form == "Microseconds":
            fraction &= np.uint64(~0x7FF & 0xFFFFFFFF)
        return (secs << np.uint64(32)) | fraction
    return ms


WIDE_EXTRA: tuple[Field, ...] = tuple(fld(n) for n in (
    "ipNextHopIPv4Address", "bgpSourceAsNumber", "bgpDestinationAsNumber", "sourceIPv4PrefixLength",
    "destinationIPv4PrefixLength", "flowDirection", "vlanId", "flowEndReason"))
"""Fields a router template typically adds to :func:`flow_template` (21 fields in all, like Cisco's or softflowd's)."""

SEQUENCE_OFFSET = {5: 16, 9: 12, 10: 8}
"""Byte offset of the sequence number in each version's header (for patching pre-encoded datagrams)."""


def bulk_datagrams(version: int, n_datagrams: int, records: int, *, export_ms: int, boot_ms: int | None = None,
                   ipv6: bool = False, time_form: str | None = None, template_id: int = 256, domain: int = 0,
                   extra: Sequence[Field] = (), seed: int = 0) -> tuple[list[bytes], bytes | None]:
    """``n_datagrams`` datagrams of ``records`` random flows each, with correct sequence numbers, and for v9/IPFIX
    the template datagram that must precede them (sequence 0; data datagrams follow it).

    Returns ``(datagrams, template_datagram)``; the template datagram is None for v5.
    """
    boot_ms = export_ms - 3_600_000 if boot_ms is None else boot_ms
    if version == 5:
        return v5_datagrams_columns(n_datagrams, records, export_ms=export_ms, boot_ms=boot_ms, seed=seed), None
    encoder: V9Exporter | IpfixExporter = V9Exporter(domain, boot_ms=boot_ms) if version == 9 \
        else IpfixExporter(domain, boot_ms=boot_ms)
    form = time_form or ("sysuptime" if version == 9 else "milliseconds")
    tmpl = flow_template(template_id, ipv6=ipv6, time_form=form, extra=extra)
    first = encoder.datagram(encoder.templates(tmpl), export_ms=export_ms)
    cols = random_columns(tmpl, n_datagrams * records, export_ms=export_ms, boot_ms=boot_ms, seed=seed)
    out = []
    for i in range(n_datagrams):
        part = {k: v[i * records:(i + 1) * records] for k, v in cols.items()}
        out.append(encoder.datagram(encoder.data(tmpl, part), export_ms=export_ms))
    return out, first
