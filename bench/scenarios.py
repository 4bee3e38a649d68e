"""Ready-made exporter scenarios: the datagrams an exporter sends and the flows a correct collector must produce.

Each scenario is a list of :class:`~bench.pcapwrite.Datagram` (exporter address, payload, receive time) and, per
datagram, the flow rows it carries, in the column names and units of flowmed's ``flows`` table (addresses as text,
times as UTC ms, counters upscaled by ``sampling_rate``). Tests write them to pcap for tshark, feed them to the
decoder, or send them to a running daemon.

Run ``python -m bench.scenarios DIR`` to write every scenario as ``DIR/<name>.pcap``.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.exporter import (
    FLOW_ATTRS,
    TIME_FORMS,
    Field,
    Flow,
    FlowSet,
    IpfixExporter,
    Template,
    V5Exporter,
    V9Exporter,
    decoded_time_ms,
    fld,
    flow_template,
    random_flows,
    record_values,
    template,
)
from bench.pcapwrite import Datagram, write_pcap

T0 = 1_764_000_000_000
"""2025-11-24 16:00:00 UTC: export times are whole seconds (v9 and IPFIX headers carry seconds only)."""

RECEIVE_DELAY_MS = 3
"""Received time = export time + this (a collector on the same LAN)."""

_ROW_DEFAULTS: dict[str, object] = {
    "src_port": 0, "dst_port": 0, "protocol": 0, "tcp_flags": 0, "tos": 0, "in_if": 0, "out_if": 0, "src_as": 0,
    "dst_as": 0, "src_mask": 0, "dst_mask": 0, "next_hop": "", "direction": 0, "post_nat_src_addr": "",
    "post_nat_dst_addr": "", "post_nat_src_port": 0, "post_nat_dst_port": 0, "nat_event": 0,
}


def _addr_text(value: object) -> str:
    """Normalised address text; "" for absent or unspecified (0.0.0.0, ::), as flowmed's zero address reads."""
    if not value:
        return ""
    addr = ipaddress.ip_address(str(value))
    return "" if addr.is_unspecified else str(addr)


def expected_row(flow: Flow, fields: Sequence[Field] | None, *, exporter: str, domain: int, version: int,
                 time_form: str, received_ms: int, sampling_rate: int = 1) -> dict[str, object]:
    """The ``flows`` row a correct decoder produces for ``flow`` sent with template ``fields`` (None: v5, all)."""
    covered = set(_ROW_DEFAULTS) if fields is None else {FLOW_ATTRS[f.name] for f in fields if f.name in FLOW_ATTRS}
    row: dict[str, object] = {k: (getattr(flow, k) if k in covered else v) for k, v in _ROW_DEFAULTS.items()}
    for key in ("next_hop", "post_nat_src_addr", "post_nat_dst_addr"):
        row[key] = _addr_text(row[key])
    row.update(
        time_received=received_ms, exporter=_addr_text(exporter), observation_domain=domain, version=version,
        src_addr=_addr_text(flow.src_addr), dst_addr=_addr_text(flow.dst_addr),
        flow_start=decoded_time_ms(time_form, flow.start_ms),
        flow_end=decoded_time_ms(time_form, flow.end_ms), raw_bytes=flow.bytes, raw_packets=flow.packets,
        bytes=flow.bytes * sampling_rate, packets=flow.packets * sampling_rate, sampling_rate=sampling_rate,
    )
    return row


@dataclass(slots=True)
class Scenario:
    """Datagrams in send order and, for each, the flow rows it carries once decodable."""

    name: str
    description: str
    datagrams: list[Datagram] = field(default_factory=list)
    rows: list[list[dict[str, object]]] = field(default_factory=list)
    tshark_segments: list[int] = field(default_factory=lambda: [0])
    """Datagram indices where tshark needs a fresh capture: tshark 4.0 keeps the first definition of a template id
    and ignores redefinitions and withdrawals, so a redefined template starts a new segment for the tshark check."""
    held: list[bool] = field(default_factory=list)
    """Per datagram: its data cannot be decoded on arrival (template not seen yet); rows appear later."""
    expected_sequence_losses: int = 0
    """Datagrams (v9) or records (v5, IPFIX) a correct collector counts as lost over the whole scenario."""
    expected_errors: dict[str, int] = field(default_factory=dict)
    """Decode errors a correct collector counts per exporter (bad sets, bad datagrams)."""
    tshark_check: bool = True
    """False for deliberately malformed datagrams, which tshark flags rather than decodes."""

    @property
    def expected(self) -> list[dict[str, object]]:
        """Every row the scenario should produce, in datagram order."""
        return [r for rows in self.rows for r in rows]

    @property
    def ports(self) -> list[int]:
        return sorted({d.dport for d in self.datagrams})

    def add(self, payload: bytes, exporter: str, export_ms: int, rows: list[dict[str, object]] | None = None,
            *, held: bool = False) -> None:
        dst = "::1" if ":" in exporter else "127.0.0.1"
        self.datagrams.append(Datagram(payload, exporter, dst, 2055, 2055, export_ms + RECEIVE_DELAY_MS))
        self.rows.append(rows or [])
        self.held.append(held)

    def write_pcap(self, path: str | Path) -> Path:
        """Write the datagrams to a classic pcap; returns the path."""
        write_pcap(path, self.datagrams)
        return Path(path)


class _Sender:
    """Glue: encode flows for one exporter/domain with one template and record the expected rows."""

    def __init__(self, scenario: Scenario, exporter: str, encoder: V9Exporter | IpfixExporter) -> None:
        self.scenario = scenario
        self.exporter = exporter
        self.encoder = encoder

    def rows(self, tmpl: Template, flows: Sequence[Flow], export_ms: int, *, rate: int = 1,
             rates: Sequence[int] | None = None) -> list[dict[str, object]]:
        form = next((k for k, (s, _) in TIME_FORMS.items() if any(f.name == s for f in tmpl.fields)), "sysuptime")
        return [
            expected_row(f, tmpl.all_fields, exporter=self.exporter, domain=self.encoder.domain,
                         version=self.encoder.version, time_form=form, received_ms=export_ms + RECEIVE_DELAY_MS,
                         sampling_rate=rates[i] if rates else rate)
            for i, f in enumerate(flows)
        ]

    def send(self, export_ms: int, *parts: tuple[Template, Sequence[Flow]],
             rate: int = 1, rates: Sequence[int] | None = None, templates: Sequence[Template] = (),
             held: bool = False) -> None:
        """One datagram: optional template set(s) first, then one data set per ``(template, flows)`` part."""
        sets = []
        rows: list[dict[str, object]] = []
        if templates:
            plain = [t for t in templates if not t.is_options]
            opts = [t for t in templates if t.is_options]
            sets += [self.encoder.templates(*group) for group in (opts, plain) if group]
        for tmpl, flows in parts:
            sets.append(self.encoder.flows(tmpl, flows, export_ms))
            rows += self.rows(tmpl, flows, export_ms, rate=rate, rates=rates)
        self.scenario.add(self.encoder.datagram(*sets, export_ms=export_ms), self.exporter, export_ms, rows,
                          held=held)

    def send_sets(self, export_ms: int, *sets: FlowSet, rows: list[dict[str, object]] | None = None) -> None:
        """One datagram of pre-built sets (options data, withdrawals), carrying ``rows``."""
        self.scenario.add(self.encoder.datagram(*sets, export_ms=export_ms), self.exporter, export_ms, rows)


def _flows(n: int, seed: int, *, ipv6: bool = False, export_ms: int = T0, start_after: int = 0,
           **changes: object) -> list[Flow]:
    """``n`` random flows ending before ``export_ms``, none starting before ``start_after`` (an exporter's boot)."""
    flows = random_flows(n, export_ms=export_ms, seed=seed, ipv6=ipv6)
    flows = [replace(f, start_ms=max(f.start_ms, start_after), end_ms=max(f.end_ms, start_after)) for f in flows]
    return [replace(f, **changes) for f in flows]


def ipv6() -> Scenario:
    """IPv6 flows over IPFIX and v9 (IPv6 next hop, prefix lengths), an exporter on IPv6 transport, and IPv4 flows
    from the same domain under a second template."""
    s = Scenario("ipv6", ipv6.__doc__ or "")
    extra = (fld("ipNextHopIPv6Address"), fld("sourceIPv6PrefixLength"), fld("destinationIPv6PrefixLength"))
    t6 = flow_template(256, ipv6=True, time_form="milliseconds", extra=extra)
    t4 = flow_template(257, time_form="milliseconds")
    flows6 = _flows(5, 1, ipv6=True, next_hop="2001:db8:ffff::1", src_mask=48, dst_mask=64)
    ipfix = _Sender(s, "2001:db8::10", IpfixExporter(1, boot_ms=T0 - 86_400_000))
    ipfix.send(T0, (t6, flows6[:3]), templates=[t6, t4])
    ipfix.send(T0 + 1000, (t4, _flows(2, 2)), (t6, flows6[3:]))
    v9 = _Sender(s, "192.0.2.11", V9Exporter(3, boot_ms=T0 - 3_600_000))
    t6v9 = flow_template(256, ipv6=True, time_form="sysuptime", octets_len=4, extra=extra)
    v9.send(T0 + 2000, (t6v9, _flows(4, 3, ipv6=True, export_ms=T0 + 2000, next_hop="2001:db8::1")),
            templates=[t6v9])
    return s


def options_with_sampling() -> Scenario:
    """Sampling rates from options data: v9 samplingInterval (IE 34) per domain, v9 sampler table (IEs 48/49/50)
    with two samplers selected by FLOW_SAMPLER_ID in the records, IPFIX selectorId (302) with
    samplingPacketInterval/Space (305/306) and two selectors in one domain, an IPFIX record carrying its own
    samplingInterval, and the v5 header sampling interval."""
    s = Scenario("options-with-sampling", options_with_sampling.__doc__ or "")
    t = flow_template(256, octets_len=4)
    # v9, IE 34 scoped to the whole system: one rate for the domain
    a = _Sender(s, "192.0.2.20", V9Exporter(1, boot_ms=T0 - 3_600_000))
    opt34 = template(260, "samplingInterval", "samplingAlgorithm", scope=[fld(1, 4)])
    a.send_sets(T0, a.encoder.templates(opt34), a.encoder.templates(t),
                a.encoder.data(opt34, [{"samplingInterval": 100, "samplingAlgorithm": 1}]))
    a.send(T0 + 1000, (t, _flows(3, 10, export_ms=T0 + 1000)), rate=100)
    # v9 sampler table: samplers 1 (1:10) and 2 (1:1000); records name their sampler
    b = _Sender(s, "192.0.2.21", V9Exporter(0, boot_ms=T0 - 3_600_000))
    opt48 = template(261, "samplerId", "samplerMode", "samplerRandomInterval", scope=[fld(1, 4)])
    tb = flow_template(257, octets_len=4, extra=[fld("samplerId")])
    b.send_sets(T0, b.encoder.templates(opt48), b.encoder.templates(tb),
                b.encoder.data(opt48, [{"samplerId": 1, "samplerMode": 2, "samplerRandomInterval": 10},
                                       {"samplerId": 2, "samplerMode": 2, "samplerRandomInterval": 1000}]))
    fb = _flows(4, 11, export_ms=T0 + 1000)
    fb = [replace(f, extra={"samplerId": 1 + i % 2}) for i, f in enumerate(fb)]
    b.send(T0 + 1000, (tb, fb), rates=[10, 1000, 10, 1000])
    # IPFIX selectors 7 (1 in 50) and 8 (1 in 512) in one domain
    c = _Sender(s, "192.0.2.22", IpfixExporter(5, boot_ms=T0 - 3_600_000))
    opt302 = template(262, "samplingPacketInterval", "samplingPacketSpace", scope=["selectorId"])
    tc = flow_template(258, time_form="milliseconds", extra=[fld("selectorId")])
    c.send_sets(T0, c.encoder.templates(opt302), c.encoder.templates(tc),
                c.encoder.data(opt302, [{"selectorId": 7, "samplingPacketInterval": 1, "samplingPacketSpace": 49},
                                        {"selectorId": 8, "samplingPacketInterval": 1, "samplingPacketSpace": 511}]))
    fc = [replace(f, extra={"selectorId": 7 + i % 2}) for i, f in enumerate(_flows(4, 12, export_ms=T0 + 1000))]
    c.send(T0 + 1000, (tc, fc), rates=[50, 512, 50, 512])
    # IPFIX record carrying its own samplingInterval (IE 34)
    d = _Sender(s, "192.0.2.23", IpfixExporter(1))
    td = flow_template(259, time_form="milliseconds", extra=[fld("samplingInterval")])
    fd = [replace(f, extra={"samplingInterval": 20}) for f in _flows(2, 13, export_ms=T0 + 1000)]
    d.send(T0 + 1000, (td, fd), rate=20, templates=[td])
    # v5 header: sampling mode 1 (deterministic), interval 64
    v5 = V5Exporter(sampling_interval=64, sampling_mode=1, engine_type=1, engine_id=2, boot_ms=T0 - 600_000)
    f5 = _flows(3, 14, export_ms=T0 + 1000)
    rows = [expected_row(f, None, exporter="192.0.2.24", domain=(1 << 8) | 2, version=5, time_form="sysuptime",
                         received_ms=T0 + 1000 + RECEIVE_DELAY_MS, sampling_rate=64) for f in f5]
    s.add(v5.datagram(f5, export_ms=T0 + 1000), "192.0.2.24", T0 + 1000, rows)
    return s


def varlen() -> Scenario:
    """Variable-length fields between fixed ones (1-byte and 3-byte lengths, empty values, the 3-byte form used for
    a short value), IPFIX enterprise fields (variable and fixed), and a v9 template with a varlen field."""
    s = Scenario("varlen", varlen.__doc__ or "")
    x = _Sender(s, "192.0.2.30", IpfixExporter(1))
    t = template(300, "sourceIPv4Address", "destinationIPv4Address", "interfaceName", "sourceTransportPort",
                 "destinationTransportPort", "protocolIdentifier", "applicationDescription",
                 fld(12345, enterprise=9), fld(1, 4, enterprise=2636), "octetDeltaCount", "packetDeltaCount",
                 "flowStartMilliseconds", "flowEndMilliseconds", "ingressInterface", "egressInterface")
    values = [("ge-0/0/1", "web", b"\x01\x02"), ("", "x" * 300, b""), ("xe-1/2/3.100", "", b"\xff" * 260)]
    flows = [replace(f, extra={"interfaceName": v[0], "applicationDescription": v[1], "e9.12345": v[2],
                               "e2636.1": 0xDEADBEEF})
             for f, v in zip(_flows(3, 20), values, strict=True)]
    x.send(T0, (t, flows), templates=[t])
    more = [replace(f, extra={"interfaceName": "lo0", "applicationDescription": "dns"}) for f in _flows(2, 21)]
    sets = [x.encoder.data(t, [_values(t, f, x.encoder, T0 + 1000) for f in more], varlen_long=True)]
    x.send_sets(T0 + 1000, *sets, rows=x.rows(t, more, T0 + 1000))
    v = _Sender(s, "192.0.2.31", V9Exporter(2, boot_ms=T0 - 3_600_000))
    tv = flow_template(301, octets_len=4, extra=[fld("interfaceName")])
    fv = [replace(f, extra={"interfaceName": name}) for f, name in zip(_flows(2, 22), ["Gi0/1", "y" * 280],
                                                                        strict=True)]
    v.send(T0, (tv, fv), templates=[tv])
    return s


def _values(tmpl: Template, flow: Flow, encoder: V9Exporter | IpfixExporter, export_ms: int) -> dict[str, object]:
    return record_values(flow, tmpl.all_fields, encoder.context(export_ms))


def multi_exporter_domain_same_template_id() -> Scenario:
    """Template id 256 means something different for each (exporter, domain): two IPFIX exporters, one of them with
    two domains, and a v9 exporter with two source ids; their datagrams interleave."""
    s = Scenario("multi-exporter-domain-same-template-id", multi_exporter_domain_same_template_id.__doc__ or "")
    a1 = _Sender(s, "192.0.2.40", IpfixExporter(1))
    a2 = _Sender(s, "192.0.2.40", IpfixExporter(2))
    b1 = _Sender(s, "192.0.2.41", IpfixExporter(1, boot_ms=T0 - 7_200_000))
    b1_boot = {"systemInitTimeMilliseconds": b1.encoder.boot_ms}
    ta1 = flow_template(256, time_form="milliseconds")
    ta2 = flow_template(256, ipv6=True, time_form="seconds", octets_len=4)
    tb1 = template(256, "destinationIPv4Address", fld("octetDeltaCount", 4), "sourceIPv4Address",
                   fld("packetDeltaCount", 2), "protocolIdentifier", "destinationTransportPort",
                   "sourceTransportPort", "flowStartSysUpTime", "flowEndSysUpTime", "bgpSourceAsNumber",
                   "systemInitTimeMilliseconds")  # IPFIX has no sysUptime in its header: IE 160 anchors it
    v1 = _Sender(s, "192.0.2.42", V9Exporter(1, boot_ms=T0 - 3_600_000))
    v2 = _Sender(s, "192.0.2.42", V9Exporter(2, boot_ms=T0 - 3_600_000))
    tv1 = flow_template(256, octets_len=4)
    tv2 = flow_template(256, ipv6=True, octets_len=8)
    a1.send(T0, (ta1, _flows(3, 30)), templates=[ta1])
    b1.send(T0, (tb1, _flows(2, 31, src_as=64512, packets=7, extra=b1_boot)), templates=[tb1])
    a2.send(T0, (ta2, _flows(2, 32, ipv6=True)), templates=[ta2])
    v1.send(T0, (tv1, _flows(2, 33)), templates=[tv1])
    v2.send(T0, (tv2, _flows(2, 34, ipv6=True)), templates=[tv2])
    for i in range(1, 3):  # more data, interleaved, templates known
        t = T0 + i * 1000
        b1.send(t, (tb1, _flows(2, 40 + i, export_ms=t, packets=9, extra=b1_boot)))
        a1.send(t, (ta1, _flows(2, 50 + i, export_ms=t)))
        v2.send(t, (tv2, _flows(1, 60 + i, ipv6=True, export_ms=t)))
        a2.send(t, (ta2, _flows(2, 70 + i, ipv6=True, export_ms=t)))
        v1.send(t, (tv1, _flows(1, 80 + i, export_ms=t)))
    return s


def data_before_template() -> Scenario:
    """Data sets that arrive before their template (v9 and IPFIX): a correct collector holds them and decodes them
    when the template arrives."""
    s = Scenario("data-before-template", data_before_template.__doc__ or "")
    v = _Sender(s, "192.0.2.50", V9Exporter(1, boot_ms=T0 - 3_600_000))
    t = flow_template(256, octets_len=4)
    v.send(T0, (t, _flows(3, 90)), held=True)
    v.send(T0 + 1000, (t, _flows(2, 91, export_ms=T0 + 1000)), held=True)
    v.send(T0 + 2000, (t, _flows(2, 92, export_ms=T0 + 2000)), templates=[t])
    v.send(T0 + 3000, (t, _flows(1, 93, export_ms=T0 + 3000)))
    x = _Sender(s, "192.0.2.51", IpfixExporter(3))
    tx = flow_template(300, time_form="milliseconds")
    x.send(T0, (tx, _flows(2, 94)), held=True)
    x.send(T0 + 1000, (tx, _flows(2, 95, export_ms=T0 + 1000)), templates=[tx])
    return s


def template_change_mid_stream() -> Scenario:
    """A template id redefined with another layout (v9: new template in a later datagram, and again followed by data
    in the same datagram); IPFIX: withdrawal of one template, then of all templates (id 2), each followed by a new
    definition."""
    s = Scenario("template-change-mid-stream", template_change_mid_stream.__doc__ or "",
                 tshark_segments=[0, 1, 3, 4, 5, 6])
    v = _Sender(s, "192.0.2.60", V9Exporter(1, boot_ms=T0 - 3_600_000))
    a = flow_template(256, octets_len=4)
    b = flow_template(256, ipv6=True, octets_len=8)
    c = template(256, "sourceIPv4Address", "destinationIPv4Address", fld("octetDeltaCount", 8),
                 fld("packetDeltaCount", 4), "flowStartSysUpTime", "flowEndSysUpTime", "protocolIdentifier")
    v.send(T0, (a, _flows(2, 100)), templates=[a])
    v.send(T0 + 1000, templates=[b])
    v.send(T0 + 2000, (b, _flows(2, 101, ipv6=True, export_ms=T0 + 2000)))
    v.send(T0 + 3000, (c, _flows(2, 102, export_ms=T0 + 3000)), templates=[c])
    x = _Sender(s, "192.0.2.61", IpfixExporter(1))
    xa = flow_template(256, time_form="milliseconds")
    xb = flow_template(256, ipv6=True, time_form="milliseconds")
    xc = template(256, "destinationIPv4Address", "sourceIPv4Address", "octetDeltaCount", "packetDeltaCount",
                  "flowStartSeconds", "flowEndSeconds")
    x.send(T0, (xa, _flows(2, 110)), templates=[xa])
    x.send_sets(T0 + 1000, x.encoder.withdraw(256), x.encoder.templates(xb),
                x.encoder.flows(xb, fb := _flows(2, 111, ipv6=True, export_ms=T0 + 1000), T0 + 1000),
                rows=x.rows(xb, fb, T0 + 1000))
    x.send_sets(T0 + 2000, x.encoder.withdraw(2), x.encoder.templates(xc),
                x.encoder.flows(xc, fc := _flows(2, 112, export_ms=T0 + 2000), T0 + 2000),
                rows=x.rows(xc, fc, T0 + 2000))
    return s


def exporter_restart() -> Scenario:
    """Exporters reboot: sequence numbers start again at 0 and sysUptime restarts near 0 (v9, v5), templates are
    sent again (v9, IPFIX). Times must follow the new boot time; a restart is not a huge sequence loss."""
    s = Scenario("exporter-restart", exporter_restart.__doc__ or "")
    boot1, boot2 = T0 - 40 * 86_400_000, T0 + 10_000 - 5_000
    v = _Sender(s, "192.0.2.70", V9Exporter(1, boot_ms=boot1, sequence=5000))
    t = flow_template(256, octets_len=4)
    v.send(T0, (t, _flows(2, 120)), templates=[t])
    v.send(T0 + 1000, (t, _flows(2, 121, export_ms=T0 + 1000)))
    v.encoder.restart(boot2)
    v.send(T0 + 10_000, (t, _flows(2, 122, export_ms=T0 + 10_000, start_after=boot2 + 100)), templates=[t])
    v.send(T0 + 11_000, (t, _flows(2, 123, export_ms=T0 + 11_000, start_after=boot2 + 100)))
    v5 = V5Exporter(boot_ms=boot1, sequence=90_000)
    for export_ms, seed in ((T0, 124), (T0 + 1000, 125), ("restart", 0), (T0 + 10_000, 126), (T0 + 11_000, 127)):
        if export_ms == "restart":
            v5.restart(boot2)
            continue
        f5 = _flows(3, seed, export_ms=export_ms, start_after=boot2 + 100 if export_ms > boot2 else 0)
        rows = [expected_row(f, None, exporter="192.0.2.71", domain=0, version=5, time_form="sysuptime",
                             received_ms=export_ms + RECEIVE_DELAY_MS) for f in f5]
        s.add(v5.datagram(f5, export_ms=export_ms), "192.0.2.71", export_ms, rows)
    x = _Sender(s, "192.0.2.72", IpfixExporter(4, sequence=1_000_000))
    tx = flow_template(300, time_form="milliseconds")
    x.send(T0, (tx, _flows(3, 128)), templates=[tx])
    x.encoder.restart(boot2)
    x.send(T0 + 10_000, (tx, _flows(3, 129, export_ms=T0 + 10_000, start_after=boot2 + 100)), templates=[tx])
    x.send(T0 + 11_000, (tx, _flows(1, 130, export_ms=T0 + 11_000, start_after=boot2 + 100)))
    return s


def sysuptime_wrap() -> Scenario:
    """Exporters up for more than 49.7 days: the 32-bit millisecond sysUptime has wrapped, so the header's uptime is
    small while flows that started before the wrap carry huge First/Last values (v9 and v5)."""
    s = Scenario("sysuptime-wrap", sysuptime_wrap.__doc__ or "")
    boot = T0 - ((1 << 32) + 2_000)  # header sysUptime at T0 is 2,000 ms after the wrap
    v = _Sender(s, "192.0.2.110", V9Exporter(1, boot_ms=boot))
    t = flow_template(256, octets_len=4)
    v.send(T0, (t, _flows(3, 180)), templates=[t])  # flows started 2-60 s before T0: before the wrap
    v.send(T0 + 60_000, (t, _flows(2, 181, export_ms=T0 + 60_000)))  # after it
    v5 = V5Exporter(boot_ms=boot)
    f5 = _flows(3, 182)
    rows = [expected_row(f, None, exporter="192.0.2.111", domain=0, version=5, time_form="sysuptime",
                         received_ms=T0 + RECEIVE_DELAY_MS) for f in f5]
    s.add(v5.datagram(f5, export_ms=T0), "192.0.2.111", T0, rows)
    return s


def time_forms() -> Scenario:
    """One IPFIX template per flow time form (sysUptime, Seconds, Milliseconds, Microseconds, Nanoseconds,
    DeltaMicroseconds), and v9 with sysUptime and Milliseconds."""
    s = Scenario("time-forms", time_forms.__doc__ or "")
    x = _Sender(s, "192.0.2.80", IpfixExporter(1, boot_ms=T0 - 86_400_000))
    v = _Sender(s, "192.0.2.81", V9Exporter(1, boot_ms=T0 - 86_400_000))
    for i, form in enumerate(TIME_FORMS):
        t = flow_template(256 + i, time_form=form)
        init: dict[str, object] = {}
        if form == "sysuptime":  # IPFIX has no sysUptime in its header: systemInitTimeMilliseconds anchors it
            t = flow_template(256 + i, time_form=form, extra=[fld("systemInitTimeMilliseconds")])
            init = {"systemInitTimeMilliseconds": x.encoder.boot_ms}
        x.send(T0 + i * 1000, (t, _flows(2, 140 + i, export_ms=T0 + i * 1000, extra=init)), templates=[t])
        t = flow_template(256 + i, time_form=form)
        if form in ("sysuptime", "milliseconds"):
            v.send(T0 + i * 1000, (t, _flows(2, 150 + i, export_ms=T0 + i * 1000)), templates=[t])
    return s


def nat() -> Scenario:
    """NAT events (IE 230) with post-NAT addresses and ports (IEs 225-228), IPv4 and IPv6 (281/282)."""
    s = Scenario("nat", nat.__doc__ or "")
    x = _Sender(s, "192.0.2.90", IpfixExporter(1))
    nat4 = [fld(n) for n in ("postNATSourceIPv4Address", "postNATDestinationIPv4Address",
                             "postNAPTSourceTransportPort", "postNAPTDestinationTransportPort", "natEvent")]
    nat6 = [fld(n) for n in ("postNATSourceIPv6Address", "postNATDestinationIPv6Address", "natEvent")]
    t4 = flow_template(256, time_form="milliseconds", extra=nat4)
    t6 = flow_template(257, ipv6=True, time_form="milliseconds", extra=nat6)
    f4 = [replace(f, post_nat_src_addr=f"100.64.0.{i + 1}", post_nat_dst_addr=f.dst_addr,
                  post_nat_src_port=40000 + i, post_nat_dst_port=f.dst_port, nat_event=1 + i % 2)
          for i, f in enumerate(_flows(3, 160))]
    f6 = [replace(f, post_nat_src_addr="2001:db8:64::1", post_nat_dst_addr="64:ff9b::c000:201", nat_event=1)
          for f in _flows(2, 161, ipv6=True)]
    x.send(T0, (t4, f4), (t6, f6), templates=[t4, t6])
    return s


def sequence_loss() -> Scenario:
    """Datagrams lost and reordered on the way: of 40 v9 datagrams one is lost (1 lost datagram) and two arrive
    swapped (no loss); of 40 IPFIX messages one carrying 4 records is lost (4 lost records) and two arrive swapped.
    The collector can only call a gap lost once later datagrams have had their chance, so many follow."""
    s = Scenario("sequence-loss", sequence_loss.__doc__ or "", expected_sequence_losses=5)
    v = _Sender(s, "192.0.2.100", V9Exporter(1, boot_ms=T0 - 3_600_000))
    t = flow_template(256, octets_len=4)
    x = _Sender(s, "192.0.2.101", IpfixExporter(2))
    tx = flow_template(300, time_form="milliseconds")
    for i in range(40):
        export_ms = T0 + i * 1000
        v.send(export_ms, (t, _flows(1, 1000 + i, export_ms=export_ms)), templates=[t] if i == 0 else [])
        x.send(export_ms, (tx, _flows(4 if i == 5 else 2, 2000 + i, export_ms=export_ms)),
               templates=[tx] if i == 0 else [])
    # datagram i of each exporter is at 2i (v9) and 2i + 1 (IPFIX): lose #5 of each, swap #10 and #11
    for lists in (s.datagrams, s.rows, s.held):
        lists[20:24] = [lists[22], lists[23], lists[20], lists[21]]
        del lists[10:12]
    return s


def malformed() -> Scenario:
    """Bad input among good input: a set whose length runs past the datagram, a zero-length set and a template of 0
    fields after good sets, a datagram of an unknown version, one of a single byte and one of random bytes. Each
    bad piece is an error counted for its exporter; the good sets in the same datagrams still decode."""
    s = Scenario("malformed", malformed.__doc__ or "", tshark_check=False)
    x = _Sender(s, "192.0.2.120", IpfixExporter(1))
    t = flow_template(256, time_form="milliseconds")
    good = _flows(2, 190)
    body = x.encoder.templates(t).payload + x.encoder.flows(t, good, T0).payload
    body += struct.pack("!HH", 256, 400) + bytes(10)  # a set claiming 400 bytes where 14 remain
    s.add(struct.pack("!HHIII", 10, 16 + len(body), T0 // 1000, 0, 1) + body, x.exporter, T0, x.rows(t, good, T0))
    x.encoder.sequence = 2
    more = _flows(1, 191, export_ms=T0 + 1000)
    body = x.encoder.flows(t, more, T0 + 1000).payload + struct.pack("!HH", 300, 0)  # zero-length set
    s.add(struct.pack("!HHIII", 10, 16 + len(body), T0 // 1000 + 1, 2, 1) + body, x.exporter, T0 + 1000,
          x.rows(t, more, T0 + 1000))
    v = _Sender(s, "192.0.2.121", V9Exporter(1, boot_ms=T0 - 3_600_000))
    tv = flow_template(256, octets_len=4)
    fv = _flows(2, 192)
    empty_template = struct.pack("!HHHH", 0, 8, 257, 0)  # template 257 with no fields
    sets = [v.encoder.templates(tv), v.encoder.flows(tv, fv, T0)]
    payload = v.encoder.datagram(*sets, export_ms=T0) + empty_template
    payload = payload[:2] + struct.pack("!H", 4) + payload[4:]  # header count: 3 records + the bad template
    s.add(payload, v.exporter, T0, v.rows(tv, fv, T0))
    s.add(struct.pack("!HH", 7, 0) + bytes(20), "192.0.2.122", T0)  # NetFlow v7: not supported
    s.add(b"\x00", "192.0.2.122", T0 + 1)
    s.add(bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8)), "192.0.2.122", T0 + 2)
    s.expected_errors = {"192.0.2.120": 2, "192.0.2.121": 1, "192.0.2.122": 3}
    return s


def address_text(values: np.ndarray) -> list[str]:
    """flowmed ``S16`` addresses as text: IPv4-mapped ones as IPv4, the zero address as ""."""
    out = []
    for raw in np.asarray(values, dtype="S16").tolist():
        addr = ipaddress.IPv6Address(raw.ljust(16, b"\0"))
        v4 = addr.ipv4_mapped
        out.append("" if addr.is_unspecified or (v4 is not None and v4.is_unspecified) else str(v4 or addr))
    return out


def rows_from_columns(columns: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> list[dict[str, object]]:
    """flowmed ``flows`` columns (numpy, as ``FlowDecoder`` returns them) as rows comparable with
    :attr:`Scenario.expected`: addresses as text, integers as Python ints; only ``keys`` (default: every expected-row
    key)."""
    keys = list(keys or [*_ROW_DEFAULTS, "time_received", "exporter", "observation_domain", "version", "src_addr",
                         "dst_addr", "flow_start", "flow_end", "raw_bytes", "raw_packets", "bytes", "packets",
                         "sampling_rate"])
    cols: dict[str, list[object]] = {}
    for k in keys:
        values = columns[k]
        cols[k] = address_text(values) if values.dtype == np.dtype("S16") else values.tolist()
    n = len(next(iter(cols.values()))) if cols else 0
    return [{k: cols[k][i] for k in keys} for i in range(n)]


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "ipv6": ipv6,
    "options-with-sampling": options_with_sampling,
    "varlen": varlen,
    "multi-exporter-domain-same-template-id": multi_exporter_domain_same_template_id,
    "data-before-template": data_before_template,
    "template-change-mid-stream": template_change_mid_stream,
    "exporter-restart": exporter_restart,
    "sysuptime-wrap": sysuptime_wrap,
    "time-forms": time_forms,
    "nat": nat,
    "sequence-loss": sequence_loss,
    "malformed": malformed,
}
"""Every scenario by name."""


def main(argv: list[str] | None = None) -> int:
    """Write every scenario as ``<dir>/<name>.pcap``."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else ".")
    out.mkdir(parents=True, exist_ok=True)
    for name, build in SCENARIOS.items():
        sc = build()
        sc.write_pcap(out / f"{name}.pcap")
        print(f"{name}: {len(sc.datagrams)} datagrams, {len(sc.expected)} flows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
