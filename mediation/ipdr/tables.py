"""The ``ipdr_records`` table: every IPDR record collected, queryable next to the usage it produced.

SAMIS-TYPE-1/2 fields have typed columns (absent fields stay zero/empty: SAMIS-TYPE-2 carries no addresses);
records of other templates (CM-REG-STATUS, CPE-TYPE, ...) keep their identifying columns plus every field as JSON
text in ``fields``. ``delta_octets``/``delta_packets``/``subscriber_id`` are what the mediation billed for the record,
so a usage row can be traced to its SAMIS records (``usage.row_id`` = ``ipdr_records.usage_row_id``).

The ClickHouse table is a ReplacingMergeTree on ``(exporter, session_id, dsn, rec_creation_time, cm_mac)``: a record
redelivered after a reconnect (in a new document) that slipped past the collector's DSN watermark collapses to one
row on a server.
"""

from __future__ import annotations

from decoders.schema import Column, table

IPDR_RECORDS = table(
    "ipdr_records",
    "IPDR/SP records as received from CMTSs (SAMIS-TYPE-1/2 typed, other templates as JSON), with the usage delta "
    "flowmed derived from each.",
    (
        Column("time_received", "timestamp_ms", "When the collector received the record (UTC).",
               codec="DoubleDelta, LZ4"),
        Column("exporter", "ip", "CMTS (IPDR exporter) address.", low_cardinality=True),
        Column("session_id", "u8", "IPDR/SP session id."),
        Column("document_id", "string", "IPDR document (SESSION_START documentId) as UUID text."),
        Column("dsn", "u64", "Data sequence number within the session."),
        Column("duplicate", "u8", "1 when the exporter flagged the record as a possible retransmission."),
        Column("template", "string", "Template type name, e.g. DOCSIS-SAMIS-TYPE-1.", low_cardinality=True),
        Column("cmts_host", "string", "CmtsHostName.", low_cardinality=True),
        Column("cmts_sys_up_time", "u32", "CmtsSysUpTime (1/100 s) when the record was made."),
        Column("cmts_ipv4", "ip", "CmtsIpv4Addr (IPv4 mapped)."),
        Column("cmts_ipv6", "ip", "CmtsIpv6Addr."),
        Column("md_if_name", "string", "CmtsMdIfName.", low_cardinality=True),
        Column("md_if_index", "u32", "CmtsMdIfIndex."),
        Column("cm_mac", "string", "CmMacAddr as aa:bb:cc:dd:ee:ff."),
        Column("cm_ipv4", "ip", "CmIpv4Addr (IPv4 mapped)."),
        Column("cm_ipv6", "ip", "CmIpv6Addr."),
        Column("cm_ipv6_link_local", "ip", "CmIpv6LinkLocalAddr."),
        Column("cm_qos_version", "i32", "CmQosVersion."),
        Column("cm_reg_status", "i32", "CmRegStatusValue."),
        Column("cm_last_reg_time", "timestamp_ms", "CmLastRegTime (UTC)."),
        Column("rec_type", "i32", "RecType: 1 Interim, 2 Stop (3 Start, 4 Event in other templates)."),
        Column("rec_creation_time", "timestamp_ms", "RecCreationTime (UTC).", codec="DoubleDelta, LZ4"),
        Column("service_flow_ch_set", "string", "ServiceFlowChSet as channel ids, e.g. 1,2,3."),
        Column("service_app_id", "u32", "ServiceAppId."),
        Column("service_ds_multicast", "u8", "ServiceDsMulticast."),
        Column("service_identifier", "u32", "ServiceIdentifier (SFID)."),
        Column("service_gate_id", "u32", "ServiceGateId."),
        Column("service_class_name", "string", "ServiceClassName.", low_cardinality=True),
        Column("service_direction", "i32", "ServiceDirection: 1 downstream, 2 upstream."),
        Column("service_octets_passed", "u64", "ServiceOctetsPassed (cumulative since the flow was created)."),
        Column("service_pkts_passed", "u64", "ServicePktsPassed (cumulative)."),
        Column("service_sla_drop_pkts", "u32", "ServiceSlaDropPkts."),
        Column("service_sla_delay_pkts", "u32", "ServiceSlaDelayPkts."),
        Column("service_time_created", "u32", "ServiceTimeCreated (sysUpTime, 1/100 s)."),
        Column("service_time_active", "u32", "ServiceTimeActive (seconds)."),
        Column("fields", "string", "Every field as JSON text (records of non-SAMIS templates; empty for SAMIS)."),
        Column("delta_octets", "u64", "Octets flowmed billed from this record (0: baseline, stale or duplicate)."),
        Column("delta_packets", "u64", "Packets flowmed billed from this record."),
        Column("delta_reason", "string", "How the delta was derived: first, delta, wrap, wrap32, reboot, reset, "
               "stale, duplicate, baseline, not_samis.", low_cardinality=True),
        Column("subscriber_id", "string", "Subscriber owning the CM MAC when billed (empty: unknown)."),
        Column("usage_row_id", "u64", "row_id of the usage row this record produced in its own interval (0: none); "
               "the parts of its delta in earlier intervals have ids derived from it."),
    ),
    time_column="time_received",
    order_by=("exporter", "session_id", "dsn", "rec_creation_time", "cm_mac"),
    engine="ReplacingMergeTree",
    version_column="time_received",
)

__all__ = ["IPDR_RECORDS"]
