"""sFlow version 5 on the wire (sflow.org "sFlow Version 5", July 2004): formats, layouts, and what the decoder counts.

An sFlow datagram is XDR (RFC 4506): big-endian 32-bit words, variable-length data prefixed by its length and padded
to a multiple of 4. Every sample and every record is ``[uint32 format][uint32 length][length bytes]``, where format
is ``enterprise << 12 | number``; so a collector can skip what it does not know by its length.

Datagram header::

    uint32 version (5) | uint32 address type (0 unknown, 1 IPv4, 2 IPv6) | 0, 4 or 16 bytes agent address
    uint32 sub_agent_id | uint32 sequence_number | uint32 uptime (ms) | uint32 num_samples | samples...

NetFlow and IPFIX start with a uint16 version (5, 9, 10), so the first two bytes of any sFlow datagram (a uint32
version below 65536) are zero, which no NetFlow/IPFIX datagram has: :func:`is_sflow` tells them apart.
"""

from __future__ import annotations

SFLOW_VERSION = 105
"""The ``flows.version`` (and counter label) of sFlow v5 rows: 100 + 5, apart from NetFlow v5's 5."""

PORT = 6343
"""The registered sFlow port (IANA)."""

# Sample formats (enterprise 0).
FLOW_SAMPLE = 1
COUNTERS_SAMPLE = 2
FLOW_SAMPLE_EXPANDED = 3
COUNTERS_SAMPLE_EXPANDED = 4

# Flow record formats (enterprise 0).
RAW_HEADER = 1
SAMPLED_ETHERNET = 2
SAMPLED_IPV4 = 3
SAMPLED_IPV6 = 4
EXTENDED_SWITCH = 1001
EXTENDED_ROUTER = 1002
EXTENDED_GATEWAY = 1003

# Counter record formats (enterprise 0).
GENERIC_INTERFACE = 1
ETHERNET_INTERFACE = 2

# Raw packet header protocols (header_protocol).
HEADER_ETHERNET = 1
HEADER_IPV4 = 11
HEADER_IPV6 = 12

INTERFACE_UNKNOWN = 0x3FFFFFFF
"""Interface value meaning "unknown" / internal (compact format, low 30 bits); stored as interface 0."""

# Per-datagram counts the kernel returns: column -> reason label (DecodeResult.errors / limit_hits).
ERROR_REASONS = (
    "truncated",
    "unknown_version",
    "sflow_bad_address",
    "sflow_bad_sample",
    "bad_record",
    "length_mismatch",
)
E_TRUNCATED, E_VERSION, E_ADDRESS, E_SAMPLE, E_RECORD, E_TRAILING = range(len(ERROR_REASONS))
LIMITS = ("max_samples_per_datagram", "max_records_per_sample")
L_SAMPLES, L_RECORDS = range(len(LIMITS))
SKIPPED = ("sample", "flow_record", "counter_record")
"""What :class:`SflowResult.skipped` counts: samples and records of formats not decoded (other enterprises,
host/vlan/processor counters, ...), skipped by their length, never an error."""
K_SAMPLE, K_FLOW_RECORD, K_COUNTER_RECORD = range(len(SKIPPED))

# Interface counter records: fields in wire order.
GENERIC_FIELDS = (  # (name, bytes on the wire)
    ("if_index", 4), ("if_type", 4), ("if_speed", 8), ("if_direction", 4), ("if_status", 4), ("in_octets", 8),
    ("in_ucast_pkts", 4), ("in_multicast_pkts", 4), ("in_broadcast_pkts", 4), ("in_discards", 4), ("in_errors", 4),
    ("in_unknown_protos", 4), ("out_octets", 8), ("out_ucast_pkts", 4), ("out_multicast_pkts", 4),
    ("out_broadcast_pkts", 4), ("out_discards", 4), ("out_errors", 4), ("promiscuous_mode", 4))
ETHERNET_FIELDS = (
    "dot3_alignment_errors", "dot3_fcs_errors", "dot3_single_collision_frames", "dot3_multiple_collision_frames",
    "dot3_sqe_test_errors", "dot3_deferred_transmissions", "dot3_late_collisions", "dot3_excessive_collisions",
    "dot3_internal_mac_transmit_errors", "dot3_carrier_sense_errors", "dot3_frame_too_longs",
    "dot3_internal_mac_receive_errors", "dot3_symbol_errors")

REASONS: dict[str, str] = {
    "truncated": "The datagram ends inside its header or inside a sample (the samples before it are kept).",
    "unknown_version": "Not an sFlow version 5 datagram (sFlow v2/v4, or not sFlow at all).",
    "sflow_bad_address": "An agent or next-hop address of unknown type: the datagram (or record) cannot be walked.",
    "sflow_bad_sample": "A sample shorter than its fixed fields, or whose records overrun it: that sample is dropped.",
    "bad_record": "A known record shorter than its format, or a raw header longer than its record: record ignored.",
    "length_mismatch": "Bytes left after the announced number of samples (ignored).",
    "internal_error": "A decoder bug (never expected; the batch's sFlow datagrams are lost, the decoder goes on).",
}
"""Every ``reason`` label :class:`decoders.sflow.SflowDecoder` counts in ``errors``, documented."""


def is_sflow(datagram: bytes) -> bool:
    """True for an sFlow datagram (its uint32 version has two zero high bytes), False for NetFlow v5/v9 and IPFIX.

    Any sFlow version is True (the sFlow decoder counts v2/v4 as ``unknown_version``); so is a datagram of two zero
    bytes or more, which no NetFlow/IPFIX exporter sends.
    """
    return len(datagram) >= 2 and datagram[0] == 0 and datagram[1] == 0
