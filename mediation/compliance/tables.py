"""Tables of lawful-intercept style record keeping: ``nat_events`` (CGNAT logging) and ``ip_detail_records``.

Importing this module registers them in :data:`decoders.schema.TABLES` and registers their store retention
(``compliance.retention_days``). How they are read is in ``docs/compliance.md``: ``flowmed trace`` and
``flowmed ipdr-report`` each run one SQL query over them (and over ``bindings``).

Layout, chosen for the two lookups:

* ``nat_events`` is ordered by ``(public_addr, public_port_start, time)``: "who held public address A, port P at T"
  reads one primary-key range on a server, and one day of hour partitions in the embedded store. Validity intervals
  are derived at query time (the latest start at or before T that no later end closed), so a create and its delete
  may arrive in different batches, workers or days, and a lost delete is ended by the next create of the same port.
* ``ip_detail_records`` is ordered by ``(subscriber_id, flow_start)``: a subscriber's connections over a period
  are one key range; the flows behind a public address are found after the holder is known.
"""

from __future__ import annotations

from decoders.schema import Column, table
from storage.store import retention_setting

NAT_ACTIONS = ("other", "start", "end", "observed")
"""``nat_events.action``: 0 other (exhaustion, quota, threshold), 1 start (session/BIB/binding create, port block
allocation), 2 end (delete, de-allocation), 3 observed (a flow record that carried the translation)."""

NAT_EVENTS = table(
    "nat_events",
    "CGNAT logging: NAT session create/delete, port block allocation/release and address binding events (IPFIX / "
    "NetFlow v9 natEvent, RFC 8158 and the pre-RFC draft), plus translations observed in flow records. A mapping "
    "holds from a start row until the next end row of the same public address and port range.",
    (
        Column("time", "timestamp_ms", "Event time (observationTimeMilliseconds or the record's flow time, UTC).",
               codec="DoubleDelta, LZ4"),
        Column("time_end", "timestamp_ms", "End of the observation for action 3 (the flow's end); = time otherwise."),
        Column("time_msec", "u16", "Milliseconds of time within its second (0-999): lookups order the events of one "
               "second by them on servers that keep whole seconds (ClickHouse 18.16 DateTime)."),
        Column("time_end_msec", "u16", "Milliseconds of time_end within its second (0-999)."),
        Column("exporter", "ip", "NAT device that logged it.", low_cardinality=True),
        Column("observation_domain", "u32", "IPFIX observation domain / v9 source id."),
        Column("nat_event", "u8", "natEvent code as sent (IE 230); 0 for observed translations and NSEL events."),
        Column("firewall_event", "u8", "Cisco NSEL firewallEvent (IE 233) when the event came that way: 1 flow "
               "created (a session start), 2 flow deleted (its end); 0 otherwise."),
        Column("action", "u8", "0 other, 1 start, 2 end, 3 observed (see NAT_ACTIONS)."),
        Column("scope", "string", "session, block (port block), address (address binding, all ports), flow "
               "(observed) or other.", low_cardinality=True),
        Column("protocol", "u8", "IP protocol (0 for port blocks and bindings that cover every protocol)."),
        Column("private_addr", "ip", "Subscriber-side (inside) source address.", codec="ZSTD(1)"),
        Column("private_port", "u16", "Inside source port (0 for blocks and bindings)."),
        Column("public_addr", "ip", "Outside (post-NAT) source address.", codec="ZSTD(1)"),
        Column("public_port_start", "u16", "First public port of the mapping (the port itself for a session)."),
        Column("public_port_end", "u16", "Last public port of the mapping (inclusive)."),
        Column("port_step", "u16", "Port step of a port block (1 for contiguous blocks and sessions)."),
        Column("dst_addr", "ip", "Destination address of a session (zero when not logged).", codec="ZSTD(1)"),
        Column("dst_port", "u16", "Destination port of a session."),
        Column("nat_pool_id", "u32", "natPoolId (IE 283) when sent."),
        Column("time_received", "timestamp_ms", "When flowmed received it (UTC)."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="time",
    order_by=("public_addr", "public_port_start", "time"),
)

ATTRIBUTION = ("attributed", "attributed_destination", "unattributed")
"""``ip_detail_records.status``: the source address is a subscriber's, only the destination is (traffic towards a
subscriber), or no binding matched either side at the flow's time."""

IP_DETAIL_RECORDS = table(
    "ip_detail_records",
    "One compliance record per flow: who (subscriber, user name, binding) used which private and public address "
    "and port towards which destination, when, through which device. Records no binding matched are kept with "
    "status 'unattributed'.",
    (
        Column("flow_start", "timestamp_ms", "First packet (UTC).", codec="DoubleDelta, LZ4"),
        Column("flow_end", "timestamp_ms", "Last packet (UTC)."),
        Column("flow_start_msec", "u16", "Milliseconds of flow_start within its second (0-999), kept on servers that "
               "store whole seconds (ClickHouse 18.16 DateTime)."),
        Column("flow_end_msec", "u16", "Milliseconds of flow_end within its second (0-999)."),
        Column("protocol", "u8", "IP protocol number."),
        Column("src_addr", "ip", "Source address as seen inside (the subscriber's private address).",
               codec="ZSTD(1)"),
        Column("src_port", "u16", "Source port inside."),
        Column("nat_addr", "ip", "Public (post-NAT) source address; zero when the flow was not translated or the "
               "translation is only in nat_events.", codec="ZSTD(1)"),
        Column("nat_port", "u16", "Public (post-NAPT) source port; 0 when unknown."),
        Column("dst_addr", "ip", "Destination address.", codec="ZSTD(1)"),
        Column("dst_port", "u16", "Destination port."),
        Column("exporter", "ip", "Exporting device.", low_cardinality=True),
        Column("bytes", "u64", "Octets (upscaled by sampling).", codec="T64, LZ4"),
        Column("packets", "u64", "Packets (upscaled by sampling).", codec="T64, LZ4"),
        Column("subscriber_id", "string", "Subscriber holding the source (or, for status attributed_destination, "
               "the destination) address at flow_start; empty when unattributed."),
        Column("session_id", "string", "RADIUS unique session id (or the static file key) of that binding."),
        Column("binding_source", "string", "radius or static (empty when unattributed).", low_cardinality=True),
        Column("binding_id", "u64", "Id of the binding used (bindings.binding_id); 0 when unattributed."),
        Column("status", "string", "attributed, attributed_destination or unattributed.", low_cardinality=True),
        Column("time_received", "timestamp_ms", "When flowmed received the flow (UTC)."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="flow_start",
    order_by=("subscriber_id", "flow_start"),
)

retention_setting("ip_detail_records", lambda config: config.compliance.retention_days)
retention_setting("nat_events", lambda config: config.compliance.retention_days)

__all__ = ["ATTRIBUTION", "IP_DETAIL_RECORDS", "NAT_ACTIONS", "NAT_EVENTS"]
