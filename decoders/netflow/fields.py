"""IPFIX / NetFlow v9 information elements as data (IANA "IPFIX Information Elements" registry, RFC 7012).

Each :class:`IE` says how the element is encoded (``kind``), its registered length, and which ``flows`` column it
feeds, with a rank: when a template carries several elements for one column (``octetDeltaCount`` and
``octetTotalCount``), the lowest rank wins. Elements that are not listed here are still decoded correctly: they are
skipped by their length, as are enterprise-specific elements (RFC 7011 section 3.2).

To map a further element: add it to ``_TABLE`` with its column (the column must exist in
``decoders.schema.FLOWS``); integer kinds accept reduced-size encoding (RFC 7011 section 6.2) automatically.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIABLE_LENGTH = 65535
"""A template field length of 65535 announces a variable-length field (RFC 7011 section 7)."""


@dataclass(frozen=True, slots=True)
class IE:
    """One information element."""

    id: int
    name: str
    kind: str
    """unsigned, signed, ipv4, ipv6, mac, string, octets, float, bool, dt_s, dt_ms, dt_us, dt_ns."""
    length: int
    """Registered (maximum) length in bytes; 65535 for variable-length types."""
    column: str | None = None
    """``flows`` column fed by this element, if any."""
    rank: int = 0
    """Preference among elements feeding the same column (lowest wins)."""


U, V4, V6 = "unsigned", "ipv4", "ipv6"

_TABLE: tuple[IE, ...] = (
    IE(1, "octetDeltaCount", U, 8, "raw_bytes", 0),
    IE(2, "packetDeltaCount", U, 8, "raw_packets", 0),
    IE(3, "deltaFlowCount", U, 8),
    IE(4, "protocolIdentifier", U, 1, "protocol"),
    IE(5, "ipClassOfService", U, 1, "tos"),
    IE(6, "tcpControlBits", U, 2, "tcp_flags"),
    IE(7, "sourceTransportPort", U, 2, "src_port", 0),
    IE(8, "sourceIPv4Address", V4, 4, "src_addr", 0),
    IE(9, "sourceIPv4PrefixLength", U, 1, "src_mask", 0),
    IE(10, "ingressInterface", U, 4, "in_if", 0),
    IE(11, "destinationTransportPort", U, 2, "dst_port", 0),
    IE(12, "destinationIPv4Address", V4, 4, "dst_addr", 0),
    IE(13, "destinationIPv4PrefixLength", U, 1, "dst_mask", 0),
    IE(14, "egressInterface", U, 4, "out_if", 0),
    IE(15, "ipNextHopIPv4Address", V4, 4, "next_hop", 0),
    IE(16, "bgpSourceAsNumber", U, 4, "src_as"),
    IE(17, "bgpDestinationAsNumber", U, 4, "dst_as"),
    IE(18, "bgpNextHopIPv4Address", V4, 4, "next_hop", 2),
    IE(19, "postMCastPacketDeltaCount", U, 8),
    IE(20, "postMCastOctetDeltaCount", U, 8),
    IE(21, "flowEndSysUpTime", U, 4),
    IE(22, "flowStartSysUpTime", U, 4),
    IE(23, "postOctetDeltaCount", U, 8, "raw_bytes", 2),
    IE(24, "postPacketDeltaCount", U, 8, "raw_packets", 2),
    IE(25, "minimumIpTotalLength", U, 8),
    IE(26, "maximumIpTotalLength", U, 8),
    IE(27, "sourceIPv6Address", V6, 16, "src_addr", 1),
    IE(28, "destinationIPv6Address", V6, 16, "dst_addr", 1),
    IE(29, "sourceIPv6PrefixLength", U, 1, "src_mask", 1),
    IE(30, "destinationIPv6PrefixLength", U, 1, "dst_mask", 1),
    IE(31, "flowLabelIPv6", U, 4),
    IE(32, "icmpTypeCodeIPv4", U, 2),
    IE(33, "igmpType", U, 1),
    IE(34, "samplingInterval", U, 4),
    IE(35, "samplingAlgorithm", U, 1),
    IE(36, "flowActiveTimeout", U, 2),
    IE(37, "flowIdleTimeout", U, 2),
    IE(38, "engineType", U, 1),
    IE(39, "engineId", U, 1),
    IE(40, "exportedOctetTotalCount", U, 8),
    IE(41, "exportedMessageTotalCount", U, 8),
    IE(42, "exportedFlowRecordTotalCount", U, 8),
    IE(44, "sourceIPv4Prefix", V4, 4),
    IE(45, "destinationIPv4Prefix", V4, 4),
    IE(46, "mplsTopLabelType", U, 1),
    IE(47, "mplsTopLabelIPv4Address", V4, 4),
    IE(48, "samplerId", U, 1),
    IE(49, "samplerMode", U, 1),
    IE(50, "samplerRandomInterval", U, 4),
    IE(51, "classId", U, 1),
    IE(52, "minimumTTL", U, 1),
    IE(53, "maximumTTL", U, 1),
    IE(54, "fragmentIdentification", U, 4),
    IE(55, "postIpClassOfService", U, 1),
    IE(56, "sourceMacAddress", "mac", 6),
    IE(57, "postDestinationMacAddress", "mac", 6),
    IE(58, "vlanId", U, 2),
    IE(59, "postVlanId", U, 2),
    IE(60, "ipVersion", U, 1),
    IE(61, "flowDirection", U, 1, "direction"),
    IE(62, "ipNextHopIPv6Address", V6, 16, "next_hop", 1),
    IE(63, "bgpNextHopIPv6Address", V6, 16, "next_hop", 3),
    IE(64, "ipv6ExtensionHeaders", U, 4),
    IE(70, "mplsTopLabelStackSection", "octets", VARIABLE_LENGTH),
    IE(80, "destinationMacAddress", "mac", 6),
    IE(81, "postSourceMacAddress", "mac", 6),
    IE(82, "interfaceName", "string", VARIABLE_LENGTH),
    IE(83, "interfaceDescription", "string", VARIABLE_LENGTH),
    IE(85, "octetTotalCount", U, 8, "raw_bytes", 1),
    IE(86, "packetTotalCount", U, 8, "raw_packets", 1),
    IE(88, "fragmentOffset", U, 2),
    IE(89, "forwardingStatus", U, 4),
    IE(90, "mplsVpnRouteDistinguisher", "octets", 8),
    IE(94, "applicationDescription", "string", VARIABLE_LENGTH),
    IE(95, "applicationId", "octets", VARIABLE_LENGTH),
    IE(96, "applicationName", "string", VARIABLE_LENGTH),
    IE(98, "postIpDiffServCodePoint", U, 1),
    IE(128, "bgpNextAdjacentAsNumber", U, 4),
    IE(129, "bgpPrevAdjacentAsNumber", U, 4),
    IE(130, "exporterIPv4Address", V4, 4),
    IE(131, "exporterIPv6Address", V6, 16),
    IE(132, "droppedOctetDeltaCount", U, 8),
    IE(133, "droppedPacketDeltaCount", U, 8),
    IE(136, "flowEndReason", U, 1),
    IE(137, "commonPropertiesId", U, 8),
    IE(138, "observationPointId", U, 8),
    IE(139, "icmpTypeCodeIPv6", U, 2),
    IE(140, "mplsTopLabelIPv6Address", V6, 16),
    IE(141, "lineCardId", U, 4),
    IE(142, "portId", U, 4),
    IE(143, "meteringProcessId", U, 4),
    IE(144, "exportingProcessId", U, 4),
    IE(145, "templateId", U, 2),
    IE(148, "flowId", U, 8),
    IE(149, "observationDomainId", U, 4),
    IE(150, "flowStartSeconds", "dt_s", 4),
    IE(151, "flowEndSeconds", "dt_s", 4),
    IE(152, "flowStartMilliseconds", "dt_ms", 8),
    IE(153, "flowEndMilliseconds", "dt_ms", 8),
    IE(154, "flowStartMicroseconds", "dt_us", 8),
    IE(155, "flowEndMicroseconds", "dt_us", 8),
    IE(156, "flowStartNanoseconds", "dt_ns", 8),
    IE(157, "flowEndNanoseconds", "dt_ns", 8),
    IE(158, "flowStartDeltaMicroseconds", U, 4),
    IE(159, "flowEndDeltaMicroseconds", U, 4),
    IE(160, "systemInitTimeMilliseconds", "dt_ms", 8),
    IE(161, "flowDurationMilliseconds", U, 4),
    IE(162, "flowDurationMicroseconds", U, 4),
    IE(163, "observedFlowTotalCount", U, 8),
    IE(164, "ignoredPacketTotalCount", U, 8),
    IE(165, "ignoredOctetTotalCount", U, 8),
    IE(166, "notSentFlowTotalCount", U, 8),
    IE(167, "notSentPacketTotalCount", U, 8),
    IE(168, "notSentOctetTotalCount", U, 8),
    IE(176, "icmpTypeIPv4", U, 1),
    IE(177, "icmpCodeIPv4", U, 1),
    IE(178, "icmpTypeIPv6", U, 1),
    IE(179, "icmpCodeIPv6", U, 1),
    IE(180, "udpSourcePort", U, 2, "src_port", 1),
    IE(181, "udpDestinationPort", U, 2, "dst_port", 1),
    IE(182, "tcpSourcePort", U, 2, "src_port", 2),
    IE(183, "tcpDestinationPort", U, 2, "dst_port", 2),
    IE(192, "ipTTL", U, 1),
    IE(195, "ipDiffServCodePoint", U, 1),
    IE(196, "ipPrecedence", U, 1),
    IE(197, "fragmentFlags", U, 1),
    IE(224, "ipTotalLength", U, 8),
    IE(225, "postNATSourceIPv4Address", V4, 4, "post_nat_src_addr", 0),
    IE(226, "postNATDestinationIPv4Address", V4, 4, "post_nat_dst_addr", 0),
    IE(227, "postNAPTSourceTransportPort", U, 2, "post_nat_src_port"),
    IE(228, "postNAPTDestinationTransportPort", U, 2, "post_nat_dst_port"),
    IE(229, "natOriginatingAddressRealm", U, 1),
    IE(230, "natEvent", U, 1, "nat_event"),
    IE(231, "initiatorOctets", U, 8, "raw_bytes", 3),
    IE(232, "responderOctets", U, 8),
    IE(233, "firewallEvent", U, 1, "firewall_event"),
    IE(234, "ingressVRFID", U, 4),
    IE(235, "egressVRFID", U, 4),
    IE(236, "VRFname", "string", VARIABLE_LENGTH),
    IE(239, "biflowDirection", U, 1),
    IE(243, "dot1qVlanId", U, 2),
    IE(252, "ingressPhysicalInterface", U, 4, "in_if", 1),
    IE(253, "egressPhysicalInterface", U, 4, "out_if", 1),
    IE(256, "ethernetType", U, 2),
    IE(281, "postNATSourceIPv6Address", V6, 16, "post_nat_src_addr", 1),
    IE(282, "postNATDestinationIPv6Address", V6, 16, "post_nat_dst_addr", 1),
    IE(283, "natPoolId", U, 4, "nat_pool_id"),
    IE(298, "initiatorPackets", U, 8, "raw_packets", 3),
    IE(299, "responderPackets", U, 8),
    IE(302, "selectorId", U, 8),
    IE(304, "selectorAlgorithm", U, 2),
    IE(305, "samplingPacketInterval", U, 4),
    IE(306, "samplingPacketSpace", U, 4),
    IE(307, "samplingTimeInterval", U, 4),
    IE(308, "samplingTimeSpace", U, 4),
    IE(309, "samplingSize", U, 4),
    IE(310, "samplingPopulation", U, 4),
    IE(323, "observationTimeMilliseconds", "dt_ms", 8),
    IE(361, "portRangeStart", U, 2, "port_range_start"),
    IE(362, "portRangeEnd", U, 2, "port_range_end"),
    IE(363, "portRangeStepSize", U, 2, "port_range_step"),
    IE(364, "portRangeNumPorts", U, 2, "port_range_ports"),
)

REGISTRY: dict[int, IE] = {ie.id: ie for ie in _TABLE}
"""Known IANA elements by id (enterprise 0)."""

INTEGER_KINDS = frozenset({U, "dt_s", "dt_ms", "signed", "bool"})
"""Kinds that may use reduced-size encoding (any length 1..8)."""

# Timestamps (RFC 7011 section 6.1.7-6.1.10, RFC 3954 section 8): preference order, most precise first.
# observationTimeMilliseconds (323) is the last resort for both: NAT/firewall event records (NSEL) carry only it.
START_TIME_IES = (152, 154, 156, 150, 158, 22, 323)
END_TIME_IES = (153, 155, 157, 151, 159, 21, 323)
SYSTEM_INIT_TIME = 160

# Sampling (RFC 7270 / RFC 5477 / RFC 3954): elements that carry a rate or key one.
SAMPLER_ID = 48
SELECTOR_ID = 302
RATE_IES = (34, 50, 305, 306, 309, 310)
OPTIONS_IES = frozenset({SAMPLER_ID, SELECTOR_ID, SYSTEM_INIT_TIME, 34, 35, 49, 50, 304, 305, 306, 309, 310})


def name(ie_id: int, enterprise: int = 0) -> str:
    """Human name of an element: the IANA name, or ``e<PEN>.<id>`` / ``ie<id>`` when unknown."""
    if enterprise:
        return f"e{enterprise}.{ie_id}"
    known = REGISTRY.get(ie_id)
    return known.name if known else f"ie{ie_id}"


def column_of(ie_id: int, enterprise: int, length: int) -> tuple[str, int, str] | None:
    """``(column, rank, kind)`` if this template field feeds a ``flows`` column at this length, else None.

    Integers accept any length 1..8 (reduced-size encoding); addresses need their exact length.
    """
    if enterprise:
        return None
    known = REGISTRY.get(ie_id)
    if known is None or known.column is None:
        return None
    if known.kind in INTEGER_KINDS:
        ok = 1 <= length <= 8
    else:
        ok = length == known.length
    return (known.column, known.rank, known.kind) if ok else None
