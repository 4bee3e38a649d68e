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
