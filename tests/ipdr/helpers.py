"""Sans-I/O helpers: a collector connection fed by the CMTS simulator's messages, no sockets."""

from __future__ import annotations

from bench.cmts import CmtsSimulator
from decoders.ipdr import messages as m
from decoders.ipdr.session import CollectorConnection, ProtocolViolation, RecordsReceived

EXPORTER_IP = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])


def connected(**kwargs) -> CollectorConnection:
    """A collector connection past CONNECT/CONNECT_RESPONSE."""
    conn = CollectorConnection(**kwargs)
    conn.send(m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, 60, "test"))
    events = conn.receive_data(m.encode(m.ConnectResponse(m.Capability.MULTISESSION, 30, "sim")))
    assert isinstance(events[0], m.ConnectResponse)
    return conn


def start_flows(conn: CollectorConnection, sim: CmtsSimulator, session_ids=(1, 2)) -> list[object]:
    """FLOW_START each session, feed the simulator's TEMPLATE_DATA, acknowledge it."""
    events: list[object] = []
    for sid in session_ids:
        conn.send(m.FlowStart(sid))
        evs = conn.receive_data(m.encode(sim.template_data(sid)))
        events.extend(evs)
        if evs and isinstance(evs[-1], m.TemplateData):
            conn.send(m.FinalTemplateDataAck(sid))
    return events


def records(events: list[object]) -> list[RecordsReceived]:
    return [e for e in events if isinstance(e, RecordsReceived)]


def violations(events: list[object]) -> list[ProtocolViolation]:
    return [e for e in events if isinstance(e, ProtocolViolation)]


def make_event(rows: list[dict], *, fields=None, session_id: int = 1, boot: int = 1_700_000_000,
               first_dsn: int = 0, document: bytes = bytes(16)) -> RecordsReceived:
    """A RecordsReceived of SAMIS records given as dicts (missing fields get defaults), decoded by the real
    column decoder from their wire encoding."""
    import numpy as np

    from decoders.ipdr.samis import SAMIS_TYPE_1
    from decoders.ipdr.xdr import compile_template, decode_records, encode_value

    fields = fields or SAMIS_TYPE_1
    block = m.TemplateBlock(1, "s", "DOCSIS-SAMIS-TYPE-1", tuple(
        m.FieldDescriptor(t, i, name, True) for i, (name, t) in enumerate(fields)))
    template = compile_template(block)
    defaults = {"CmtsHostName": "cmts1", "CmtsSysUpTime": 0, "CmtsIpv4Addr": "192.0.2.1", "CmtsIpv6Addr": "",
                "CmtsMdIfName": "md", "CmtsMdIfIndex": 1, "CmMacAddr": 1, "CmIpv4Addr": "10.0.0.1",
                "CmIpv6Addr": "", "CmIpv6LinkLocalAddr": "", "CmQosVersion": 2, "CmRegStatusValue": 8,
                "CmLastRegTime": 0, "RecType": 1, "RecCreationTime": 0, "ServiceFlowChSet": b"\x01",
                "ServiceAppId": 0, "ServiceDsMulticast": False, "ServiceIdentifier": 1, "ServiceGateId": 0,
                "ServiceClassName": "c", "ServiceDirection": 1, "ServiceOctetsPassed": 0, "ServicePktsPassed": 0,
                "ServiceSlaDropPkts": 0, "ServiceSlaDelayPkts": 0, "ServiceTimeCreated": 0, "ServiceTimeActive": 0}
    blobs = [b"".join(encode_value(t, {**defaults, **r}[name]) for name, t in fields) for r in rows]
    buf = b"".join(blobs)
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    records = decode_records(template, buf, starts, lengths)
    dsn = np.arange(first_dsn, first_dsn + len(rows), dtype=np.uint64)
    return RecordsReceived(session_id, 1, document, boot, records, dsn, np.zeros(len(rows), bool),
                           int(dsn[-1]) if len(rows) else 0)
