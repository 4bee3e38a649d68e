"""The asyncio collector against the CMTS simulator over loopback TCP: full sessions, restarts, reboots,
disconnects with redelivery, malformed input; usage must equal what the simulator's counters advanced."""

from __future__ import annotations

import asyncio
import os
import struct
import time

import pytest

from bench.cmts import CmtsSimulator
from collector.config import IpdrConfig, IpdrExporter
from collector.ipdr import IpdrCollector
from decoders.ipdr import messages as m
from mediation.ipdr.usage import CmSubscribers, IpdrUsage


def _subs(sim: CmtsSimulator) -> dict[int, str]:
    return {modem.mac: f"sub{i}" for i, modem in enumerate(sim.modems)}


def _config(port: int, **kw) -> IpdrConfig:
    base = dict(enabled=True, exporters=[IpdrExporter(f"127.0.0.1:{port}", "cmts1")], keepalive_s=5,
                idle_ack_s=0.1, reconnect_min_s=0.05, reconnect_max_s=0.2)
    base.update(kw)
    return IpdrConfig(**base)


async def _collector(sim, sink, state_dir, port, **kw) -> IpdrCollector:
    usage = IpdrUsage(state_dir, CmSubscribers.from_dict(_subs(sim)))
    coll = IpdrCollector(_config(port, **kw), sink, usage)
    await coll.start()
    return coll


async def _interval(sim: CmtsSimulator, **kw) -> None:
    sim.generate_interval(**kw)
    await sim.wait_acked(timeout=20)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_full_session_usage_equals_counters_advanced(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(40, ack_sequence_interval=16, wrap_fraction=0.2)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)  # flows existed before collection: baseline only
        sim.reset_advanced()
        for _ in range(3):
            await _interval(sim, active_fraction=0.7)  # some interims suppressed (unchanged counters)
        sim.recreate_flow(3, direction=1)  # Stop record, then the SFID reused
        await _interval(sim)
        await coll.stop()
        await sim.close()
        return sim, coll

    sim, coll = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))
    records = sink.rows("ipdr_records")
    assert len(records) == sim.records_generated
    assert {r["template"] for r in records} == {"DOCSIS-SAMIS-TYPE-1", "DOCSIS-SAMIS-TYPE-2"}
    reasons = {r["delta_reason"] for r in records}
    assert {"baseline", "delta", "wrap", "first"} <= reasons
    assert coll.stats.acks_sent > 0 and not coll.stats.errors
    usage = sink.rows("usage")
    assert {u["source"] for u in usage} == {"ipdr"} and len({u["row_id"] for u in usage}) == len(usage)


def test_collector_restart_mid_document_is_exactly_once(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(30, ack_sequence_interval=8)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        await _interval(sim)
        # Next document: stop the collector abruptly once part of it is acknowledged (a crash: unflushed rows lost).
        total = sim.generate_interval()
        await sim.wait_for(lambda: 0 < sim.unacked < total)
        # Crash between two syncs (holding the lock: no flush is half done). A crash *during* a sync, after the
        # flush and before the journal commit, re-derives identical rows (same row_id): see mediation.ipdr.usage.
        async with coll.durability.lock:
            coll._stopping = True
            for conn in list(coll.connections):
                conn.writer.transport.abort()
            for task in list(coll._tasks):
                task.cancel()
            coll.usage.close()
            sink.lose_pending()
        # A new collector process: state from disk, the CMTS redelivers what was not acknowledged.
        coll2 = await _collector(sim, sink, tmp_path / "state", port)
        await sim.wait_acked(timeout=20)
        await _interval(sim)
        await coll2.stop()
        await sim.close()
        return sim

    sim = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))


def test_cmts_reboot_counts_new_counters_from_zero(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(20, ack_sequence_interval=8)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        await _interval(sim)
        sim.reboot()  # drops the connection; flows restart from zero with reused SFIDs
        await _interval(sim)
        await _interval(sim)
        await coll.stop()
        await sim.close()
        return sim

    sim = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))


def test_disconnect_with_redelivery_counts_once(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(30, ack_sequence_interval=8)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        before = coll.stats.records
        total = sim.generate_interval()
        assert total % 8, "a tail shorter than the ack interval keeps records received but unacknowledged"

        def received_not_acked() -> bool:  # the collector holds records the CMTS has not seen acknowledged
            return sim.unacked > 0 and coll.stats.records - before > total - sim.unacked

        async with asyncio.timeout(20):  # polled: receiving changes no simulator state that wait_for would see
            while not received_not_acked():
                await asyncio.sleep(0.001)
        sim.drop_connections()  # those records are re-sent, flagged duplicate, after the reconnect
        await sim.wait_acked(timeout=20)
        await _interval(sim)
        await coll.stop()
        await sim.close()
        return sim, coll

    sim, coll = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))
    assert coll.stats.connections_opened >= 2
    # the exporter re-sent what was in flight (flagged duplicate): recognised, not billed again
    assert coll.usage.counters.get("redelivered", 0) + coll.usage.counters.get("stale", 0) > 0


def test_malformed_messages_close_only_the_affected_session(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(10, ack_sequence_interval=8)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        # unknown message id: counted, skipped
        sim.inject(struct.pack(">BBBBI", 2, 0x77, 0, 0, 12) + b"junk")
        # a template with an unknown enabled field type on session 2: only session 2 is stopped
        bad = m.TemplateData(2, sim.config_id, 0, (m.TemplateBlock(1, "x", "DOCSIS-SAMIS-TYPE-2", (
            m.FieldDescriptor(0x999, 1, "Mystery", True),)),))
        sim.inject(m.encode(bad))
        await asyncio.sleep(0.5)
        assert coll.stats.errors.get("unknown_message_id") == 1
        assert coll.stats.errors.get("unknown_field_type") == 1
        # session 1 still collects
        sim.generate_interval()
        await sim.wait_for(lambda: not sim.sessions[1].queue, timeout=20)
        # a wrong length (beyond the message size limit) breaks framing: that connection closes, and reconnects
        opened = coll.stats.connections_opened
        sim.inject(struct.pack(">BBBBI", 2, m.MsgId.KEEP_ALIVE, 0, 0, 1 << 30))
        await sim.wait_for(lambda: coll.stats.connections_opened > opened, timeout=20)
        await coll.stop()
        await sim.close()
        return sim, coll

    sim, coll = run(scenario())
    assert coll.stats.errors.get("bad_length") == 1
    assert coll.stats.sessions_stopped == 1
    got = sink.usage_by_subscriber()
    even = {k: v for k, v in sim.expected_usage(_subs(sim)).items() if int(k[0][3:]) % 2 == 0}
    assert {k: v for k, v in got.items() if int(k[0][3:]) % 2 == 0} == even


def test_exporter_initiated_connection_and_allowlist(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(6, ack_sequence_interval=4)
        usage = IpdrUsage(tmp_path / "s", CmSubscribers.from_dict(_subs(sim)), preexisting="count")
        cfg = IpdrConfig(enabled=True, listen="127.0.0.1:0", allow=["127.0.0.0/8"], keepalive_s=5, idle_ack_s=0.1)
        coll = IpdrCollector(cfg, sink, usage)
        await coll.start()
        sim.generate_interval()
        await sim.connect("127.0.0.1", coll.listen_port)
        await sim.wait_acked(timeout=20)
        await coll.stop()
        # allowlist on, nothing allowed: the connection is refused and counted
        denied = IpdrCollector(IpdrConfig(enabled=True, listen="127.0.0.1:0"), sink, usage)
        await denied.start()
        sim.generate_interval()
        await sim.connect("127.0.0.1", denied.listen_port)
        await asyncio.sleep(0.3)
        await denied.stop()
        await sim.close()
        return sim, denied

    sim, denied = run(scenario())
    assert denied.stats.connections_rejected == {"not_allowed": 1}
    assert sink.rows("ipdr_records")


@pytest.mark.parametrize("flush_fails", [True])
def test_failed_flush_acknowledges_nothing(sink, tmp_path, flush_fails):
    async def scenario():
        sim = CmtsSimulator(8, ack_sequence_interval=4)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        sink.fail_next_flush = flush_fails
        await _interval(sim)  # first flush fails: connection drops, redelivered, billed once
        await coll.stop()
        await sim.close()
        return sim

    sim = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))


def test_several_cmts_at_once_and_one_failing_does_not_stall_the_others(sink, tmp_path):
    async def scenario():
        sims = [CmtsSimulator(10, host_name=f"cmts{i}.example.net", ack_sequence_interval=8, seed=i)
                for i in range(2)]
        for i, s in enumerate(sims):  # distinct modems per CMTS
            for modem in s.modems:
                modem.mac += (i + 1) << 24
        ports = [await s.listen("127.0.0.1", 0) for s in sims]
        dead = free_tcp_port()  # a configured CMTS that refuses connections
        subs = {mm.mac: f"sub{mm.mac:x}" for s in sims for mm in s.modems}
        usage = IpdrUsage(tmp_path / "state", CmSubscribers.from_dict(subs))
        cfg = _config(0, exporters=[IpdrExporter(f"127.0.0.1:{p}", f"cmts{i}") for i, p in enumerate(ports)]
                      + [IpdrExporter(f"127.0.0.1:{dead}", "dead")])
        coll = IpdrCollector(cfg, sink, usage)
        await coll.start()
        for s in sims:
            s.generate_interval()
        await asyncio.gather(*(s.wait_acked(timeout=20) for s in sims))
        for s in sims:
            s.reset_advanced()
        for _ in range(2):
            for s in sims:
                s.generate_interval()
            await asyncio.gather(*(s.wait_acked(timeout=20) for s in sims))
        await coll.stop()
        for s in sims:
            await s.close()
        return sims, subs

    sims, subs = run(scenario())
    expected: dict = {}
    for s in sims:
        for k, v in s.expected_usage(subs).items():
            expected[k] = expected.get(k, 0) + v
    assert sink.usage_by_subscriber() == expected
    assert {r["cmts_host"] for r in sink.rows("ipdr_records")} == {"cmts0.example.net", "cmts1.example.net"}


def test_silent_exporter_is_declared_dead_and_reconnected(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(2, keepalive_s=3600)  # would send KEEP_ALIVE every 30 minutes only
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port, keepalive_s=1)
        await sim.wait_for(lambda: coll.stats.errors.get("keepalive_expired", 0) >= 1, timeout=20)
        await sim.wait_for(lambda: coll.stats.connections_opened >= 2, timeout=20)
        await coll.stop()
        await sim.close()

    run(scenario())


def free_tcp_port() -> int:
    import socket

    from tests.fixtures.peers import free_port

    return free_port(socket.SOCK_STREAM)


def test_group_commit_serves_waiting_requests_with_one_flush(tmp_path):
    import threading

    from collector.ipdr import Durability

    class SlowSink:
        def __init__(self) -> None:
            self.flushes = 0
            self.gate = threading.Event()

        def flush(self) -> None:
            self.gate.wait(5)
            self.flushes += 1

    async def scenario():
        sink = SlowSink()
        usage = IpdrUsage(tmp_path / "s")
        d = Durability(sink, usage)
        first = asyncio.create_task(d.sync())
        await asyncio.sleep(0.05)  # the first flush is running
        rest = [asyncio.create_task(d.sync()) for _ in range(3)]
        await asyncio.sleep(0.05)
        sink.gate.set()
        await asyncio.gather(first, *rest)
        return sink.flushes

    assert run(scenario()) == 2


def test_dial_out_over_ipv6_loopback(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(4, ack_sequence_interval=4)
        port = await sim.listen("::1", 0)
        usage = IpdrUsage(tmp_path / "s", CmSubscribers.from_dict(_subs(sim)), preexisting="count")
        coll = IpdrCollector(_config(0, exporters=[IpdrExporter(f"[::1]:{port}", "v6")]), sink, usage)
        await coll.start()
        sim.generate_interval()
        await sim.wait_acked(timeout=20)
        await coll.stop()
        await sim.close()
        return sim

    sim = run(scenario())
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))
    assert {bytes(r["exporter"]) for r in sink.rows("usage")} == {bytes(15) + b"\x01"}


def test_sink_refusal_undoes_the_batch_and_gets_it_redelivered(sink, tmp_path):
    async def scenario():
        sim = CmtsSimulator(12, ack_sequence_interval=8)
        port = await sim.listen("127.0.0.1", 0)
        coll = await _collector(sim, sink, tmp_path / "state", port)
        await _interval(sim)
        sim.reset_advanced()
        sink.refuse_next_usage = True
        await _interval(sim)
        await _interval(sim)
        await coll.stop()
        await sim.close()
        return sim, coll

    sim, coll = run(scenario())
    assert coll.stats.errors.get("sink_refused") == 1 and coll.stats.connections_opened >= 2
    assert sink.usage_by_subscriber() == sim.expected_usage(_subs(sim))


def _expected(sim: CmtsSimulator, subs: dict[int, str], only=None, without=()) -> dict[tuple[str, str], int]:
    """What the simulator advanced since its last reset, for the given modems (all but ``without`` by default)."""
    out: dict[tuple[str, str], int] = {}
    for (who, direction), octets in sim.expected_usage(subs).items():
        if (only is None or who in only) and who not in without:
            out[(who, direction)] = out.get((who, direction), 0) + octets
    return out


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def test_fifteen_minute_intervals_pre_existing_means_before_the_first_session_even_across_restarts(sink, tmp_path):
    """A CMTS reporting every 15 minutes (simulated time, the collector on the CMTS's clock): flows created after
    flowmed's first session are billed from their creation, also when first reported after a collector restart;
    flows created before it (even one first reported after the restart) only set a baseline."""
    sim = CmtsSimulator(6, ack_sequence_interval=8)
    subs = {0x00_10_95_00_00_00 | i: f"sub{i}" for i in range(20)}  # the modems to come too
    expected: dict[tuple[str, str], int] = {}

    async def start(port: int) -> IpdrCollector:
        usage = IpdrUsage(tmp_path / "state", CmSubscribers.from_dict(subs))  # preexisting = "baseline"
        coll = IpdrCollector(_config(port), sink, usage, wall_clock=lambda: sim.clock)
        await coll.start()
        await sim.wait_for(lambda: sim.collecting, timeout=20)  # flowmed's first session with this CMTS: now
        return coll

    async def scenario():
        port = await sim.listen("127.0.0.1", 0)
        coll = await start(port)
        sim.clock += 120
        new = sim.add_modem()  # registers 2 minutes into the first 15-minute interval
        await coll.stop()  # a restart before any record arrived: only the first session's time is on disk
        sim.clock += 300
        coll = await start(port)
        sim.generate_interval(480)
        await sim.wait_acked(timeout=20)
        _add(expected, _expected(sim, subs, only={subs[new.mac]}))  # the others pre-existed: baseline
        sim.reset_advanced()
        sim.clock += 60
        after = sim.add_modem()  # created after the first session, first reported after the restart below
        await coll.stop()
        sim.clock += 600  # the collector is down for 10 minutes
        old = sim.add_modem(age_s=7200)  # existed before the first session, never reported so far
        coll = await start(port)
        ahead = sim.add_modem(created_ahead_cs=40, report_now=True)  # ServiceTimeCreated 0.4 s past sysUpTime
        sim.generate_interval(240)
        await sim.wait_acked(timeout=20)
        _add(expected, _expected(sim, subs, without={subs[old.mac]}))
        sim.reset_advanced()
        sim.generate_interval(900)
        await sim.wait_acked(timeout=20)
        _add(expected, _expected(sim, subs))
        await coll.stop()
        await sim.close()
        return new, after, old, ahead

    new, after, old, ahead = run(scenario())
    assert sink.usage_by_subscriber() == expected
    firsts = {r["cm_mac"]: r["delta_reason"] for r in sink.rows("ipdr_records")
              if r["delta_reason"] in ("first", "baseline")}
    assert {firsts[x.mac_text] for x in (new, after, ahead)} == {"first"}
    assert firsts[old.mac_text] == "baseline" and firsts[sim.modems[0].mac_text] == "baseline"


def test_a_changed_cm_mac_file_is_picked_up_while_running(sink, tmp_path):
    """The housekeeping runs the usage stage's tick: a CM MAC file edited while the collector runs attributes the
    next interval's usage to the new subscriber."""
    async def scenario():
        sim = CmtsSimulator(4, ack_sequence_interval=16)
        port = await sim.listen("127.0.0.1", 0)
        cm_file = tmp_path / "cm.csv"
        cm_file.write_text("cm_mac,subscriber_id\n" + "".join(
            f"{modem.mac:012x},old{i}\n" for i, modem in enumerate(sim.modems)))
        usage = IpdrUsage(tmp_path / "state", CmSubscribers(cm_file))
        coll = IpdrCollector(_config(port), sink, usage, housekeeping_s=0.05)
        await coll.start()
        await _interval(sim)  # baseline
        await _interval(sim, active_fraction=1.0)
        cm_file.write_text("cm_mac,subscriber_id\n" + "".join(
            f"{modem.mac:012x},new{i}\n" for i, modem in enumerate(sim.modems)))
        os.utime(cm_file, (time.time() + 5, time.time() + 5))  # a new mtime even on a coarse clock
        for _ in range(100):
            await asyncio.sleep(0.05)
            if usage.subscribers.names[0].startswith("new"):
                break
        await _interval(sim, active_fraction=1.0)
        await coll.stop()
        await sim.close()

    run(scenario())
    subscribers = {u["subscriber_id"] for u in sink.rows("usage") if u["bytes"]}
    assert any(s.startswith("old") for s in subscribers) and any(s.startswith("new") for s in subscribers)
