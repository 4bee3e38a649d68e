"""IPDR/SP connection slots cannot be held by peers that connect and trickle bytes: the CONNECT handshake deadline
counts from the accept, one source address holds a bounded share of the slots, and a silent peer is one that sends
no complete message. Refusals and timeouts are counted in ``flowmed_ipdr_connections_refused``."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import CollectorRegistry

from bench.cmts import CmtsSimulator
from collector import metrics
from collector.config import IpdrConfig
from collector.ipdr import IpdrCollector
from decoders.ipdr import messages as m
from mediation.ipdr.usage import IpdrUsage

CONNECT = m.encode(m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, 60, "dripper"))
SLOW_CONNECT = m.encode(m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, 60, "d" * 2000))  # 200 s at 10 B/s


@pytest.fixture
def registry(monkeypatch) -> CollectorRegistry:
    reg = CollectorRegistry()
    monkeypatch.setattr(metrics, "_current", metrics.Metrics(reg))
    return reg


def refused(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("flowmed_ipdr_connections_refused_total", {"reason": reason}) or 0.0


class Dripper:
    """A peer that connects, sends ``prefix`` at once, then ``data`` one byte every ``every_s`` seconds."""

    def __init__(self, data: bytes = SLOW_CONNECT, every_s: float = 0.1, prefix: bytes = b"") -> None:
        self.data, self.every_s, self.prefix = data, every_s, prefix
        self.closed = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self, port: int, local_host: str = "127.0.0.1") -> Dripper:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local_host, 0))
        self.task = asyncio.get_running_loop().create_task(self._run(reader, writer))
        return self

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            eof = asyncio.ensure_future(reader.read())  # returns when the collector closes the connection
            writer.write(self.prefix)
            for i in range(len(self.data)):
                if eof.done():
                    break
                writer.write(self.data[i : i + 1])
                await writer.drain()
                await asyncio.wait([eof], timeout=self.every_s)
            await eof
        self.closed.set()
        writer.close()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _collector(**kw) -> tuple[IpdrCollector, CmtsSimulator]:
    cfg = IpdrConfig(**{"enabled": True, "listen": "127.0.0.1:0", "allow": ["127.0.0.0/8"], "keepalive_s": 5,
                        "idle_ack_s": 0.1, **kw})
    sim = CmtsSimulator(4, ack_sequence_interval=4)
    return IpdrCollector(cfg, _NullSink(), IpdrUsage(None, preexisting="count")), sim


class _NullSink:
    def add(self, table, batch) -> bool:
        return True

    def flush(self) -> None:
        pass


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_drippers_are_cut_off_at_the_handshake_deadline_and_a_cmts_gets_in(registry):
    async def scenario():
        coll, sim = _collector(max_connections=4, max_connections_per_address=4, connect_timeout_s=1.0)
        await coll.start()
        # Every slot taken by peers sending a CONNECT one byte every 0.1 s (it would take 3 s to complete).
        drippers = [await Dripper(every_s=0.1).start(coll.listen_port) for _ in range(4)]
        await sim.wait_for(lambda: len(coll.connections) == 4, timeout=10)
        fifth = await Dripper().start(coll.listen_port)  # what a real CMTS met: every slot taken
        async with asyncio.timeout(10):
            await fifth.closed.wait()
        try:
            async with asyncio.timeout(15):  # never happens while each byte restarts the deadline
                await asyncio.gather(*(d.closed.wait() for d in drippers))
        finally:
            for d in drippers:
                d.stop()
        sim.generate_interval()
        await sim.connect("127.0.0.1", coll.listen_port)
        await sim.wait_acked(timeout=20)  # the real exporter got a slot and delivered
        await coll.stop()
        await sim.close()
        return coll

    coll = run(scenario())
    assert coll.stats.connections_rejected == {"max_connections": 1, "handshake_timeout": 4}
    assert refused(registry, "handshake_timeout") == 4 and refused(registry, "max_connections") == 1


def test_one_address_cannot_take_every_slot(registry):
    async def scenario():
        coll, sim = _collector(max_connections=4, max_connections_per_address=2, connect_timeout_s=30)
        await coll.start()
        drippers = [await Dripper(every_s=5).start(coll.listen_port) for _ in range(3)]
        async with asyncio.timeout(10):
            await drippers[2].closed.wait()  # the third from the same address is refused at once
        assert len(coll.connections) == 2
        sim.generate_interval()
        await sim.connect("127.0.0.1", coll.listen_port, local_host="127.0.0.2")  # a CMTS elsewhere still gets in
        await sim.wait_acked(timeout=20)
        for d in drippers:
            d.stop()
        await coll.stop()
        await sim.close()
        return coll

    coll = run(scenario())
    assert coll.stats.connections_rejected == {"max_per_address": 1}
    assert refused(registry, "max_per_address") == 1
    assert coll.stats.records > 0


def test_after_the_handshake_trickled_bytes_are_no_sign_of_life(registry):
    async def scenario():
        coll, sim = _collector(keepalive_s=1)
        await coll.start()
        # A whole CONNECT, then a KEEP_ALIVE that never completes: one byte every 0.3 s.
        trickle = m.HEADER.pack(m.VERSION, m.MsgId.KEEP_ALIVE, 0, 0, 1000) + bytes(992)
        dripper = await Dripper(trickle, every_s=0.3, prefix=CONNECT).start(coll.listen_port)
        async with asyncio.timeout(20):  # closed after 2 x keepalive_s without a complete message
            await dripper.closed.wait()
        dripper.stop()
        await coll.stop()
        await sim.close()
        return coll

    coll = run(scenario())
    assert coll.stats.errors.get("keepalive_expired") == 1


def test_before_the_handshake_a_peer_cannot_make_the_collector_buffer_megabytes():
    from decoders.ipdr.session import CollectorConnection, ProtocolViolation
    from tests.ipdr.helpers import connected

    big = m.HEADER.pack(m.VERSION, m.MsgId.CONNECT, 0, 0, 1 << 20)  # a "CONNECT" of 1 MiB
    events = CollectorConnection().receive_data(big + bytes(1000))
    (v,) = [e for e in events if isinstance(e, ProtocolViolation)]
    assert v.fatal and v.reason == "bad_length"
    # once connected, the configured max_message_size applies (a large TEMPLATE_DATA is fine)
    conn = connected()
    assert conn.receive_data(m.HEADER.pack(m.VERSION, m.MsgId.TEMPLATE_DATA, 1, 0, 1 << 20) + bytes(1000)) == []
