"""The ``interface_counters`` table: sFlow counter samples (generic and Ethernet interface counters), one row each.

Importing this module registers the table in :data:`decoders.schema.TABLES` (it is listed in
``collector.tables``, so outputs, the query engine and ``flowmed schema`` know it).
"""

from __future__ import annotations

from decoders.schema import Column, table
from decoders.sflow.wire import ETHERNET_FIELDS

_ETHERNET_DOC = {
    "dot3_alignment_errors": "dot3StatsAlignmentErrors.",
    "dot3_fcs_errors": "dot3StatsFCSErrors.",
    "dot3_single_collision_frames": "dot3StatsSingleCollisionFrames.",
    "dot3_multiple_collision_frames": "dot3StatsMultipleCollisionFrames.",
    "dot3_sqe_test_errors": "dot3StatsSQETestErrors.",
    "dot3_deferred_transmissions": "dot3StatsDeferredTransmissions.",
    "dot3_late_collisions": "dot3StatsLateCollisions.",
    "dot3_excessive_collisions": "dot3StatsExcessiveCollisions.",
    "dot3_internal_mac_transmit_errors": "dot3StatsInternalMacTransmitErrors.",
    "dot3_carrier_sense_errors": "dot3StatsCarrierSenseErrors.",
    "dot3_frame_too_longs": "dot3StatsFrameTooLongs.",
    "dot3_internal_mac_receive_errors": "dot3StatsInternalMacReceiveErrors.",
    "dot3_symbol_errors": "dot3StatsSymbolErrors.",
}

INTERFACE_COUNTERS = table(
    "interface_counters",
    "Interface counters from sFlow counter samples (generic interface counters, RFC 2233, and Ethernet counters, "
    "RFC 2358), one row per counter sample. The counters are cumulative as the agent keeps them (32-bit ones wrap): "
    "traffic over a period is the difference of two rows of one interface.",
    (
        Column("time_received", "timestamp_ms", "When the collector received the datagram (UTC).",
               codec="DoubleDelta, LZ4"),
        Column("exporter", "ip", "Address the datagram came from.", low_cardinality=True),
        Column("agent", "ip", "sFlow agent address from the datagram header (IPv4-mapped for IPv4).",
               low_cardinality=True),
        Column("sub_agent_id", "u32", "sFlow sub-agent id."),
        Column("agent_uptime_ms", "u32", "Agent uptime when the datagram was sent (ms; wraps after 49.7 days)."),
        Column("sequence", "u32", "Counter sample sequence number of the data source."),
        Column("source_id_type", "u8", "Data source type: 0 ifIndex, 1 smonVlanDataSource, 2 entPhysicalEntry."),
        Column("source_id_index", "u32", "Data source index (the ifIndex for type 0)."),
        Column("counter_records", "u8", "Records the sample carried: 1 generic, 2 Ethernet, 3 both."),
        Column("if_index", "u32", "ifIndex (generic counters; else the data source index)."),
        Column("if_type", "u32", "ifType (IANAifType, 6 = ethernetCsmacd)."),
        Column("if_speed", "u64", "ifSpeed in bits per second."),
        Column("if_direction", "u8", "0 unknown, 1 full-duplex, 2 half-duplex, 3 in, 4 out."),
        Column("if_status", "u8", "Bit 0 ifAdminStatus up, bit 1 ifOperStatus up."),
        Column("in_octets", "u64", "ifInOctets (64-bit).", codec="T64, LZ4"),
        Column("in_ucast_pkts", "u32", "ifInUcastPkts."),
        Column("in_multicast_pkts", "u32", "ifInMulticastPkts."),
        Column("in_broadcast_pkts", "u32", "ifInBroadcastPkts."),
        Column("in_discards", "u32", "ifInDiscards."),
        Column("in_errors", "u32", "ifInErrors."),
        Column("in_unknown_protos", "u32", "ifInUnknownProtos."),
        Column("out_octets", "u64", "ifOutOctets (64-bit).", codec="T64, LZ4"),
        Column("out_ucast_pkts", "u32", "ifOutUcastPkts."),
        Column("out_multicast_pkts", "u32", "ifOutMulticastPkts."),
        Column("out_broadcast_pkts", "u32", "ifOutBroadcastPkts."),
        Column("out_discards", "u32", "ifOutDiscards."),
        Column("out_errors", "u32", "ifOutErrors."),
        Column("promiscuous_mode", "u8", "ifPromiscuousMode (1 true, 2 false)."),
        *(Column(name, "u32", _ETHERNET_DOC[name] + " Zero without an Ethernet record.") for name in ETHERNET_FIELDS),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="time_received",
    order_by=("exporter", "agent", "if_index", "time_received"),
)
