"""A simulated CMTS: an IPDR/SP 2.1 exporter serving SAMIS-TYPE-1 and SAMIS-TYPE-2 for N cable modems.

Usable as a library (tests, benchmarks) and as ``python -m bench.cmts``. The simulator keeps what a CMTS keeps across
collector connections: service flows with cumulative counters, the per-session DSN and the queue of records not yet
acknowledged (re-sent, flagged duplicate, after a reconnect). It records what it advanced (``advanced``: octets and
packets per (CM MAC, direction)) so tests can check the collector billed exactly that.

The modems present at construction registered 10 to 60 minutes earlier (their flows pre-exist any collector);
:meth:`CmtsSimulator.add_modem` registers one now. Time is simulated: :meth:`CmtsSimulator.generate_interval` moves
the CMTS clock (:attr:`CmtsSimulator.clock`) by a whole reporting interval at once, so 15-minute SAMIS intervals
take no real time (a collector under test can be given the same clock).

Faults on demand: :meth:`CmtsSimulator.reboot` (new boot time, sysUpTime and counters restart),
:meth:`CmtsSimulator.recreate_flow` (Stop record, then the SFID reused by a new flow), counters started near 2^64
(wrap), suppressed interims (unchanged counters not re-sent), a flow created a fraction of a second after the
sysUpTime of its first record (``add_modem(created_ahead_cs=...)``), :meth:`CmtsSimulator.drop_connections`, and
:meth:`CmtsSimulator.inject` to write arbitrary bytes (malformed messages) to the collector.

Modems alternate between the two sessions: even modems are reported in session 1 (SAMIS-TYPE-1), odd ones in
session 2 (SAMIS-TYPE-2), as a CMTS serves one SAMIS type per service flow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field

from decoders.ipdr import messages as m
from decoders.ipdr.samis import SAMIS_TYPE_1, SAMIS_TYPE_2
from decoders.ipdr.xdr import encode_value

log = logging.getLogger("bench.cmts")
SESSION_TYPES = {1: ("DOCSIS-SAMIS-TYPE-1", SAMIS_TYPE_1), 2: ("DOCSIS-SAMIS-TYPE-2", SAMIS_TYPE_2)}
SCHEMA = "http://www.cablelabs.com/namespaces/DOCSIS/3.0/xsd/ipdr/DOCSIS-SAMIS-TYPE-{n}/DOCSIS-SAMIS-TYPE-{n}_3.5.1-A.1.xsd"


@dataclass
class ServiceFlow:
    sfid: int
    direction: int  # 1 downstream, 2 upstream
    created: int  # sysUpTime (1/100 s) at creation
    octets: int = 0
    packets: int = 0
    class_name: str = ""
    reported: tuple[int, int] | None = None  # counters in the last record sent (for suppression)
    unreported: list[int] = field(default_factory=lambda: [0, 0])  # growth since the last record


@dataclass
class Modem:
    mac: int
    ipv4: str
    ipv6: str
    flows: list[ServiceFlow] = field(default_factory=list)

    @property
    def mac_text(self) -> str:
        return ":".join(f"{(self.mac >> s) & 0xFF:02x}" for s in range(40, -8, -8))


@dataclass
class _Queued:
    dsn: int
    template_id: int
    record: bytes
    sent: bool = False
    ever_sent: bool = False
    growth: tuple[int, int, int, int] = (0, 0, 0, 0)  # (mac, direction, octets, packets) this record reports


@dataclass
class _SessionQueue:
    session_id: int
    next_dsn: int = 0
    queue: list[_Queued] = field(default_factory=list)  # unacknowledged records, in DSN order


class CmtsSimulator:
    """An IPDR/SP exporter for ``modems`` cable modems with two service flows each (one per direction).

    Args:
        modems: number of cable modems.
        host_name: CmtsHostName.
        ack_time_s / ack_sequence_interval: sent in SESSION_START.
        keepalive_s: keepAliveInterval sent in CONNECT_RESPONSE.
        wrap_fraction: share of flows whose counters start just below 2^64 (they wrap soon).
        suppress_unchanged: do not send Interim records whose counters did not change (ARRIS record suppression).
        seed: random seed for reproducible counter growth.
    """

    def __init__(self, modems: int = 10, *, host_name: str = "cmts1.example.net", ack_time_s: int = 2,
                 ack_sequence_interval: int = 64, keepalive_s: int = 30, wrap_fraction: float = 0.0,
                 suppress_unchanged: bool = True, seed: int = 1, now: float | None = None) -> None:
        self.rng = random.Random(seed)
        self.host_name = host_name
        self.ack_time_s = ack_time_s
        self.ack_sequence_interval = ack_sequence_interval
        self.keepalive_s = keepalive_s
        self.suppress_unchanged = suppress_unchanged
        self.boot_time = int(now if now is not None else time.time()) - 86400
        self.clock = float(self.boot_time + 86400)
        self.sessions = {sid: _SessionQueue(sid) for sid in SESSION_TYPES}
        self.config_id = 1
        self.advanced: dict[tuple[int, int], list[int]] = {}
        """(CM MAC, direction) -> [octets, packets] the counters advanced in total (what must be billed)."""
        self.next_sfid = 1000
        self.modems = [self._modem(i, wrap_fraction) for i in range(modems)]
        self.records_generated = 0
        self._conns: set[_ExporterConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._waiters: set[asyncio.Event] = set()

    # -- the simulated CMTS ----------------------------------------------------------------------------------

    def _modem(self, i: int, wrap_fraction: float, age_cs: int | None = None) -> Modem:
        mac = 0x00_10_95_00_00_00 | i
        modem = Modem(mac, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", f"2001:db8::{i:x}")
        if age_cs is None:  # registered 10 to 60 minutes ago
            age_cs = self.rng.randint(600 * 100, 3600 * 100)
        for direction in (1, 2):
            sf = self._new_flow(direction)
            sf.created = (sf.created - age_cs) % 2**32
            if self.rng.random() < wrap_fraction:
                sf.octets = 2**64 - self.rng.randint(1, 10**6)
                sf.packets = 2**64 - self.rng.randint(1, 1000)
            modem.flows.append(sf)
        return modem

    def _new_flow(self, direction: int, sfid: int | None = None) -> ServiceFlow:
        if sfid is None:
            sfid, self.next_sfid = self.next_sfid, self.next_sfid + 1
        name = "Gold_Down" if direction == 1 else "Gold_Up"
        return ServiceFlow(sfid, direction, self.sys_up_time(), class_name=name)

    def add_modem(self, age_s: float = 0.0, created_ahead_cs: int = 0, report_now: bool = False) -> Modem:
        """A cable modem registers (its two flows are created at the current clock); returns it.

        ``age_s``: it registered that long ago instead, and was never reported (as a CMTS that suppresses flows
        that never passed traffic). ``created_ahead_cs``: the flows' ServiceTimeCreated is that many hundredths of a
        second past the current sysUpTime, as a CMTS reports a flow created during its report run against the
        sysUpTime it sampled when the run began. ``report_now``: the flows pass some traffic and are reported at
        once (before the clock moves on).
        """
        i = len(self.modems)
        modem = self._modem(i, 0.0, age_cs=int(age_s * 100) - created_ahead_cs)
        self.modems.append(modem)
        if report_now:
            for sf in modem.flows:
                pkts = self.rng.randint(1, 100)
                self._advance(modem, sf, pkts * self.rng.randint(64, 1500), pkts)
                self._report(i, modem, sf, rec_type=1)
        self._notify()
        return modem

    def sys_up_time(self) -> int:
        """sysUpTime in hundredths of a second, wrapping at 2^32 like the MIB object."""
        return int((self.clock - self.boot_time) * 100) % 2**32

    def _advance(self, modem: Modem, sf: ServiceFlow, octets: int, packets: int) -> None:
        sf.octets = (sf.octets + octets) % 2**64
        sf.packets = (sf.packets + packets) % 2**64
        total = self.advanced.setdefault((modem.mac, sf.direction), [0, 0])
        total[0] += octets
        total[1] += packets
        sf.unreported[0] += octets
        sf.unreported[1] += packets

    def generate_interval(self, seconds: float = 900.0, active_fraction: float = 1.0, max_packets: int = 5000) -> int:
        """Advance the clock by ``seconds``, grow the counters of a share of the flows (1..``max_packets`` packets of
        64..1500 bytes each), queue one Interim per flow (unchanged ones suppressed if configured). Returns the
        number of records queued."""
        self.clock += seconds
        queued = 0
        for i, modem in enumerate(self.modems):
            for sf in modem.flows:
                if self.rng.random() < active_fraction:
                    pkts = self.rng.randint(1, max_packets)
                    self._advance(modem, sf, pkts * self.rng.randint(64, 1500), pkts)
                queued += self._report(i, modem, sf, rec_type=1)
        self._notify()
        return queued

    def reset_advanced(self) -> None:
        """Forget what was advanced so far (e.g. after the interval a collector takes as its baseline)."""
        self.advanced.clear()

    def expected_usage(self, subscriber_of: dict[int, str] | None = None) -> dict[tuple[str, str], int]:
        """Octets advanced per (subscriber or MAC text, 'down'/'up')."""
        out: dict[tuple[str, str], int] = {}
        for (mac, direction), (octets, _) in self.advanced.items():
            who = subscriber_of.get(mac, "") if subscriber_of is not None else f"{mac:012x}"
            key = (who, "down" if direction == 1 else "up")
            out[key] = out.get(key, 0) + octets
        return out

    def recreate_flow(self, modem_index: int, direction: int = 1, final_octets: int = 12345) -> None:
        """The flow grows by ``final_octets``, is deleted (Stop record), and a new flow reuses its SFID."""
        self.clock += 1
        modem = self.modems[modem_index]
        k = next(j for j, sf in enumerate(modem.flows) if sf.direction == direction)
        old = modem.flows[k]
        self._advance(modem, old, final_octets, 10)
        self._report(modem_index, modem, old, rec_type=2)
        self.clock += 5
        modem.flows[k] = self._new_flow(direction, sfid=old.sfid)
        self._notify()

    def reboot(self, downtime_s: float = 120.0) -> None:
        """The CMTS restarts: new boot time, sysUpTime from 0, every service flow re-created with zero counters.
        Unacknowledged records are lost with the CMTS's memory; what never-sent ones reported leaves ``advanced``
        (records already sent but not acknowledged may or may not have reached a collector: for an exact account,
        reboot once :meth:`wait_acked` returned)."""
        self.clock += downtime_s
        self.boot_time = int(self.clock)
        self.config_id += 1
        for q in self.sessions.values():
            for item in q.queue:  # never sent: what those records reported is lost, no collector can bill it
                if item.ever_sent:  # on the wire: a collector may have it (ambiguous: reboot after the ACKs)
                    continue
                mac, direction, octets, packets = item.growth
                total = self.advanced.get((mac, direction))
                if total is not None:
                    total[0] -= octets
                    total[1] -= packets
            q.queue.clear()
        self.next_sfid = 1000  # SFIDs are reused after a reboot: only the creation time tells them apart
        for modem in self.modems:
            modem.flows = [self._new_flow(sf.direction) for sf in modem.flows]
        self.drop_connections()

    def _report(self, i: int, modem: Modem, sf: ServiceFlow, rec_type: int) -> int:
        counters = (sf.octets, sf.packets)
        if rec_type == 1 and self.suppress_unchanged and sf.reported == counters:
            return 0
        sf.reported = counters
        session_id = 1 if i % 2 == 0 else 2
        values = self._record_values(modem, sf, rec_type)
        record = b"".join(encode_value(t, values[name]) for name, t in SESSION_TYPES[session_id][1])
        q = self.sessions[session_id]
        growth = (modem.mac, sf.direction, sf.unreported[0], sf.unreported[1])
        sf.unreported = [0, 0]
        q.queue.append(_Queued(q.next_dsn, 1, record, growth=growth))
        q.next_dsn += 1
        self.records_generated += 1
        return 1

    def _record_values(self, modem: Modem, sf: ServiceFlow, rec_type: int) -> dict[str, object]:
        up = self.sys_up_time()
        return {
            "CmtsHostName": self.host_name, "CmtsSysUpTime": up, "CmtsIpv4Addr": "192.0.2.1",
            "CmtsIpv6Addr": "2001:db8::1", "CmtsMdIfName": "Cable1/0/0", "CmtsMdIfIndex": 100,
            "CmMacAddr": modem.mac, "CmIpv4Addr": modem.ipv4, "CmIpv6Addr": modem.ipv6, "CmIpv6LinkLocalAddr": "",
            "CmQosVersion": 2, "CmRegStatusValue": 8, "CmLastRegTime": self.boot_time + 60, "RecType": rec_type,
            "RecCreationTime": int(self.clock * 1000), "ServiceFlowChSet": bytes([1, 2, 3, 4]), "ServiceAppId": 0,
            "ServiceDsMulticast": False, "ServiceIdentifier": sf.sfid, "ServiceGateId": 0,
            "ServiceClassName": sf.class_name, "ServiceDirection": sf.direction, "ServiceOctetsPassed": sf.octets,
            "ServicePktsPassed": sf.packets, "ServiceSlaDropPkts": 0, "ServiceSlaDelayPkts": 0,
            "ServiceTimeCreated": sf.created, "ServiceTimeActive": max(0, (up - sf.created) // 100),
        }

    def template_data(self, session_id: int) -> m.TemplateData:
        name, fields = SESSION_TYPES[session_id]
        descs = tuple(m.FieldDescriptor(t, k + 1, f"DOCSIS-CMTS:{n}", True) for k, (n, t) in enumerate(fields))
        block = m.TemplateBlock(1, SCHEMA.format(n=session_id), name, descs)
        return m.TemplateData(session_id, self.config_id, 0, (block,))

    def encode_document(self, session_id: int, *, stop: bool = True) -> bytes:
        """Sans-I/O use (unit tests, benchmarks): SESSION_START, every queued record of ``session_id`` as DATA and
        SESSION_STOP, as wire bytes; the records count as delivered and acknowledged."""
        q = self.sessions[session_id]
        out = [m.encode(m.SessionStart(session_id, self.boot_time, q.queue[0].dsn if q.queue else q.next_dsn, 0,
                                       True, self.ack_time_s, self.ack_sequence_interval, uuid.uuid4().bytes))]
        out.extend(m.encode(m.Data(session_id, r.template_id, self.config_id, 0, r.dsn, r.record)) for r in q.queue)
        if stop:
            out.append(m.encode(m.SessionStop(session_id, m.SessionStopReason.END_OF_DOCUMENT, "")))
        q.queue = []
        return b"".join(out)

    @property
    def collecting(self) -> bool:
        """A collector has started every session (FLOW_START) and acknowledged its templates."""
        return any(c.acked_templates & c.flows == set(SESSION_TYPES) for c in self._conns)

    @property
    def unacked(self) -> int:
        return sum(len(q.queue) for q in self.sessions.values())

    def _notify(self) -> None:
        for ev in self._waiters:
            ev.set()

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever the simulator's state changes)."""
        ev = asyncio.Event()
        self._waiters.add(ev)
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    ev.clear()
                    await ev.wait()
        finally:
            self._waiters.discard(ev)

    async def wait_acked(self, timeout: float = 30.0) -> None:
        """Wait until every queued record has been acknowledged by a collector."""
        await self.wait_for(lambda: not self.unacked, timeout)

    # -- network ---------------------------------------------------------------------------------------------

    async def listen(self, host: str = "127.0.0.1", port: int = 4737) -> int:
        """Accept collector connections (the DOCSIS arrangement); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def connect(self, host: str, port: int, local_host: str | None = None) -> None:
        """Dial out to a collector that listens (exporter-initiated connection), from ``local_host`` if given."""
        reader, writer = await asyncio.open_connection(host, port,
                                                       local_addr=(local_host, 0) if local_host else None)
        asyncio.get_running_loop().create_task(self._serve(reader, writer, initiator=True))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     initiator: bool = False) -> None:
        conn = _ExporterConnection(self, reader, writer)
        self._conns.add(conn)
        try:
            await conn.run(initiator)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:  # the simulator is shutting down: end this connection quietly
            pass
        finally:
            self._conns.discard(conn)
            writer.close()
            for q in self.sessions.values():
                for item in q.queue:
                    item.sent = False  # re-sent, flagged duplicate, on the next connection
            self._notify()

    def drop_connections(self) -> None:
        """Close every collector connection abruptly (no DISCONNECT)."""
        for conn in list(self._conns):
            conn.abort()

    def inject(self, data: bytes) -> None:
        """Write raw bytes to every connected collector (fault injection)."""
        for conn in self._conns:
            conn.writer.write(data)

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _ExporterConnection:
    """One collector connection, exporter role."""

    def __init__(self, sim: CmtsSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sim, self.reader, self.writer = sim, reader, writer
        self.flows: set[int] = set()  # sessions the collector started
        self.started: set[int] = set()  # sessions with SESSION_START sent
        self.acked_templates: set[int] = set()
        self.tasks: list[asyncio.Task] = []

    def abort(self) -> None:
        self.writer.transport.abort()

    def send(self, msg: m.Message) -> None:
        self.writer.write(m.encode(msg))

    async def run(self, initiator: bool) -> None:
        if initiator:
            self.send(m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, self.sim.keepalive_s, "flowmed-cmts-sim"))
        sender = asyncio.get_running_loop().create_task(self._sender())
        keepalive = asyncio.get_running_loop().create_task(self._keepalive())
        self.tasks = [sender, keepalive]
        try:
            while True:
                header = await self.reader.readexactly(m.HEADER_SIZE)
                version, msg_id, sid, _flags, length = m.HEADER.unpack(header)
                if version != m.VERSION or not m.HEADER_SIZE <= length <= 1 << 20:
                    return
                body = await self.reader.readexactly(length - m.HEADER_SIZE)
                try:
                    msg = m.decode(header + body)
                except ValueError:
                    continue
                if isinstance(msg, m.Disconnect):
                    return
                self.handle(msg)
                await self.writer.drain()
        finally:
            for t in self.tasks:
                t.cancel()

    def handle(self, msg: m.Message) -> None:
        sim = self.sim
        if isinstance(msg, m.Connect):
            self.send(m.ConnectResponse(m.Capability.MULTISESSION, sim.keepalive_s, "flowmed-cmts-sim"))
        elif isinstance(msg, m.GetSessions):
            blocks = tuple(m.SessionBlock(sid, name, f"{name} usage", sim.ack_time_s, sim.ack_sequence_interval)
                           for sid, (name, _) in SESSION_TYPES.items())
            self.send(m.GetSessionsResponse(msg.request_id, blocks))
        elif isinstance(msg, m.FlowStart) and msg.session_id in SESSION_TYPES:
            self.flows.add(msg.session_id)
            self.send(sim.template_data(msg.session_id))
        elif isinstance(msg, m.FinalTemplateDataAck) and msg.session_id in self.flows:
            self.acked_templates.add(msg.session_id)
            sim._notify()
        elif isinstance(msg, m.DataAck):
            q = sim.sessions.get(msg.session_id)
            if q is not None and msg.config_id == sim.config_id:  # a wrong configId is ignored, as CMTSs do
                q.queue = [r for r in q.queue if r.dsn > msg.dsn]
                sim._notify()
        elif isinstance(msg, m.FlowStop):
            self.flows.discard(msg.session_id)
            self.started.discard(msg.session_id)
            self.acked_templates.discard(msg.session_id)

    async def _sender(self) -> None:
        """Stream queued records per session within the ack window; close documents when all is acknowledged."""
        sim = self.sim
        ev = asyncio.Event()
        sim._waiters.add(ev)
        try:
            await self._send_loop(ev)
        finally:
            sim._waiters.discard(ev)

    async def _send_loop(self, ev: asyncio.Event) -> None:
        sim = self.sim
        while True:
            ev.clear()
            for sid in sorted(self.acked_templates & self.flows):
                q = sim.sessions[sid]
                if sid not in self.started and q.queue:
                    self.started.add(sid)
                    self.send(m.SessionStart(sid, sim.boot_time, q.queue[0].dsn, 0, True, sim.ack_time_s,
                                             sim.ack_sequence_interval, uuid.uuid4().bytes))
                if sid in self.started:
                    in_flight = sum(1 for r in q.queue if r.sent)
                    for r in q.queue:
                        if in_flight >= sim.ack_sequence_interval:
                            break
                        if not r.sent:
                            flags = m.DATA_FLAG_DUPLICATE if r.ever_sent else 0
                            self.send(m.Data(sid, r.template_id, sim.config_id, flags, r.dsn, r.record))
                            r.sent = r.ever_sent = True
                            in_flight += 1
                    if not q.queue:
                        self.started.discard(sid)
                        self.send(m.SessionStop(sid, m.SessionStopReason.END_OF_DOCUMENT, "end of interval"))
            await self.writer.drain()
            await ev.wait()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.sim.keepalive_s / 2))
            self.send(m.KeepAlive())


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cmts", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:4737", help="address:port to accept collectors on")
    p.add_argument("--connect", default="", help="collector address:port to dial out to instead of listening")
    p.add_argument("--modems", type=int, default=100)
    p.add_argument("--interval", type=float, default=15.0, help="seconds between SAMIS intervals (documents)")
    p.add_argument("--intervals", type=int, default=0, help="stop after this many intervals (0: run forever)")
    p.add_argument("--reboot-every", type=int, default=0, help="reboot the CMTS every N intervals")
    p.add_argument("--disconnect-every", type=int, default=0, help="drop the collector every N intervals")
    p.add_argument("--wrap-fraction", type=float, default=0.0, help="share of flows whose counters start near 2^64")
    p.add_argument("--active-fraction", type=float, default=1.0, help="share of flows with traffic per interval")
    p.add_argument("--max-packets", type=int, default=5000, help="most packets a flow passes per interval")
    p.add_argument("--host-name", default="cmts1.example.net")
    return p.parse_args()


async def _main(args: argparse.Namespace) -> None:
    sim = CmtsSimulator(args.modems, host_name=args.host_name, wrap_fraction=args.wrap_fraction)
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        await sim.connect(host.strip("[]"), int(port))
    else:
        host, _, port = args.listen.rpartition(":")
        port = await sim.listen(host.strip("[]"), int(port))
        log.info("listening on %s:%s", host, port)
    n = 0
    while not args.intervals or n < args.intervals:
        await asyncio.sleep(args.interval)
        n += 1
        queued = sim.generate_interval(args.interval, args.active_fraction, args.max_packets)
        log.info("interval %d: %d records queued, %d unacknowledged", n, queued, sim.unacked)
        if args.reboot_every and n % args.reboot_every == 0:
            with contextlib.suppress(TimeoutError):  # reboot after the collector has the interval, if it can
                await sim.wait_acked(timeout=args.interval)
            sim.reboot()
            log.info("interval %d: CMTS rebooted", n)
        if args.disconnect_every and n % args.disconnect_every == 0:
            sim.drop_connections()
            log.info("interval %d: collector connections dropped", n)
    with contextlib.suppress(TimeoutError):
        await sim.wait_acked(timeout=args.interval * 4)
    await sim.close()
    totals = {f"{mac:012x}/{d}": v for (mac, d), v in sorted(sim.advanced.items())}
    print(json.dumps({"records": sim.records_generated, "advanced": totals}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main(_parse_args()))
