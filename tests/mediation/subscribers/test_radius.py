"""RADIUS accounting: packet handling and counter deltas (sans I/O), then the listener against Debian's radclient."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import struct
import subprocess

import numpy as np
import pytest

from collector.config import load
from collector.radius_listener import start_radius
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import (
    ATTRIBUTES,
    RadiusAccounting,
    RadiusError,
    accounting_request,
    parse_packet,
    request_authenticator_ok,
)
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.mediation_helpers import INTERVAL, T0, s16, usage_totals

SECRET = b"testing123"
NAS = ("127.0.0.1", 50000)


def config(port: int = 1813, *extra: str):
    return load(None, ["radius.enabled=true", f'radius.listen=["127.0.0.1:{port}"]',
                       'radius.clients=[{address="127.0.0.1", secret="testing123", name="nas1"}]', *extra])


def attrs(status: int, session: str = "s1", user: str = "alice", t: int | None = None, **kw) -> list:
    out = [(ATTRIBUTES["Acct-Status-Type"], struct.pack("!I", status))]
    if user:
        out.append((ATTRIBUTES["User-Name"], user.encode()))
    if session:
        out.append((ATTRIBUTES["Acct-Session-Id"], session.encode()))
    if t is not None:
        out.append((ATTRIBUTES["Event-Timestamp"], struct.pack("!I", t // 1000)))
    for name, value in kw.items():
        attr = ATTRIBUTES[name.replace("_", "-")]
        if isinstance(value, int):
            out.append((attr, struct.pack("!I", value)))
        elif name == "Framed_IP_Address":
            out.append((attr, ipaddress.IPv4Address(value).packed))
        elif name in ("Framed_IPv6_Prefix", "Delegated_IPv6_Prefix"):
            net = ipaddress.IPv6Network(value)
            out.append((attr, bytes([0, net.prefixlen]) + net.network_address.packed[: (net.prefixlen + 7) // 8]))
        else:
            out.append((attr, value.encode()))
    return out


def who(b: Bindings, addr: str, t: int) -> str:
    b.refresh()
    sub, _ = b.lookup(s16([addr]), np.array([t]))
    return b.subscriber_names[sub[0]] if sub[0] >= 0 else ""


class Harness:
    def __init__(self, *extra: str) -> None:
        self.b = Bindings()
        self.acct = RadiusAccounting(config(1813, *extra).radius, self.b, INTERVAL)
        self.ident = 0
        self.usage = []

    def send(self, attributes, secret=SECRET, addr=NAS, raw: bytes | None = None, now: int | None = None):
        self.ident = (self.ident + 1) % 256
        data = raw if raw is not None else accounting_request(self.ident, attributes, secret)
        if now is None:  # received a second after the event it reports
            stamps = [struct.unpack("!I", v)[0] * 1000 for t, v in attributes or []
                      if t == ATTRIBUTES["Event-Timestamp"]]
            now = max(stamps, default=T0) + 1000
        result = self.acct.handle([(data, addr)], now)
        if result.usage is not None:
            self.usage.append(result.usage)
        return result


def test_authenticators_and_response():
    req = accounting_request(7, attrs(1, t=T0, Framed_IP_Address="100.64.0.1"), SECRET)
    p = parse_packet(req)
    assert request_authenticator_ok(p, SECRET) and not request_authenticator_ok(p, b"other")
    h = Harness()
    (resp, addr), = h.send(None, raw=req).responses
    assert addr == NAS and resp[0] == 5 and resp[1] == 7 and len(resp) == 20
    assert resp[4:20] == hashlib.md5(resp[:4] + p.authenticator + SECRET).digest()


@pytest.mark.parametrize("data, reason", [
    (b"\x04\x01\x00", "short"),
    (b"\x04\x01\x00\x30" + b"\0" * 16, "bad_length"),
    (b"\x04\x01\x00\x17" + b"\0" * 16 + b"\x01\x05a", "bad_attribute"),
])
def test_malformed_packets(data, reason):
    with pytest.raises(RadiusError) as e:
        parse_packet(data)
    assert e.value.reason == reason


def test_bad_secret_unknown_client_and_retransmission_are_counted():
    h = Harness()
    start = attrs(1, t=T0, Framed_IP_Address="100.64.0.1")
    assert h.send(start, secret=b"wrong").responses == []
    assert h.send(start, addr=("192.0.2.50", 1)).responses == []
    req = accounting_request(9, start, SECRET)
    first = h.acct.handle([(req, NAS)], T0).responses
    again = h.acct.handle([(req, NAS)], T0 + 3000).responses
    assert first == again and len(first) == 1
    assert h.acct.counters == {("nas1", "bad_authenticator"): 1, ("unknown", "unknown_client"): 1,
                               ("nas1", "ok"): 1, ("nas1", "retransmission"): 1}
    assert h.b.conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 1


def test_start_interim_stop_bindings_and_counter_deltas():
    h = Harness()
    h.send(attrs(1, t=T0 + 60_000, Framed_IP_Address="100.64.0.1", Framed_IPv6_Prefix="2001:db8:1::/64",
                 Delegated_IPv6_Prefix="2001:db8:100::/56"))
    assert [who(h.b, a, T0 + 60_000) for a in ("100.64.0.1", "2001:db8:1::9", "2001:db8:100:ff::1")] == ["alice"] * 3
    assert who(h.b, "100.64.0.1", T0 + 59_999) == ""
    # 10 minutes later: 3000 up, 2**32 + 6000 down (with Gigawords), spread over [T0+1min, T0+11min)
    h.send(attrs(3, t=T0 + 660_000, Acct_Input_Octets=3000, Acct_Output_Octets=6000, Acct_Output_Gigawords=1))
    # then the Stop: 600 more up, 0 more down
    h.send(attrs(2, t=T0 + 720_000, Acct_Input_Octets=3600, Acct_Output_Octets=6000, Acct_Output_Gigawords=1))
    assert who(h.b, "100.64.0.1", T0 + 719_999) == "alice" and who(h.b, "100.64.0.1", T0 + 720_000) == ""
    down = 2**32 + 6000
    assert usage_totals(h.usage) == {
        ("alice", T0, "up"): 1200, ("alice", T0 + INTERVAL, "up"): 1500, ("alice", T0 + 2 * INTERVAL, "up"): 300 + 600,
        ("alice", T0, "down"): down * 4 // 10, ("alice", T0 + INTERVAL, "down"): down * 5 // 10,
        ("alice", T0 + 2 * INTERVAL, "down"): down - down * 4 // 10 - down * 5 // 10,
    }
    assert h.acct.open_sessions() == 0


def test_wrap_reset_and_interim_without_start():
    h = Harness()
    # an Interim for a session we never saw a Start for: bound from its start, counters count from there
    h.send(attrs(3, t=T0 + 300_000, Acct_Session_Time=300, Framed_IP_Address="100.64.0.7", Acct_Input_Octets=100))
    assert who(h.b, "100.64.0.7", T0) == "alice"
    # a 32-bit counter without Gigawords wraps
    h.send(attrs(3, t=T0 + 600_000, Acct_Input_Octets=2**32 - 10))
    h.send(attrs(3, t=T0 + 900_000, Acct_Input_Octets=90))
    # a counter that drops a little was reset (a restarted line card): counts from zero again
    h.send(attrs(3, t=T0 + 1200_000, Acct_Input_Octets=50))
    totals = usage_totals(h.usage)
    assert totals[("alice", T0, "up")] == 100
    assert totals[("alice", T0 + INTERVAL, "up")] == 2**32 - 110
    assert totals[("alice", T0 + 2 * INTERVAL, "up")] == 100
    assert totals[("alice", T0 + 3 * INTERVAL, "up")] == 50


def test_accounting_on_closes_every_binding_of_that_nas():
    h = Harness()
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address="100.64.0.1"))
    h.send(attrs(1, session="b", user="bob", t=T0, Framed_IP_Address="100.64.0.2"))
    h.send(attrs(7, session="", user="", t=T0 + 5000))
    assert [who(h.b, a, T0 + 4999) for a in ("100.64.0.1", "100.64.0.2")] == ["alice", "bob"]
    assert [who(h.b, a, T0 + 5000) for a in ("100.64.0.1", "100.64.0.2")] == ["", ""]
    assert h.acct.open_sessions() == 0


def test_subscriber_id_from_another_attribute_and_missing_id():
    h = Harness("radius.subscriber_attribute=Calling-Station-Id")
    h.send(attrs(1, t=T0, Framed_IP_Address="100.64.0.1", Calling_Station_Id="00-11-22-33-44-55"))
    assert who(h.b, "100.64.0.1", T0) == "00-11-22-33-44-55"
    r = h.send(attrs(1, session="x", t=T0, Framed_IP_Address="100.64.0.9"))
    # acknowledged (a retransmission would not help), counted, and nothing bound
    assert len(r.responses) == 1 and h.acct.counters[("nas1", "no_subscriber_id")] == 1
    assert who(h.b, "100.64.0.9", T0) == ""


# --- against radclient ---------------------------------------------------------------------------------------------

async def radclient(port: int, secret: str, text: str, timeout: int = 2, retries: int = 3) -> tuple[int, str]:
    """radclient's exit code and output; it re-sends an unanswered request (same id), as NASes do, so a reply
    slowed by a loaded machine is not a failure (the server answers a retransmission from its duplicate cache)."""
    exe = require_tool("radclient")
    p = await asyncio.create_subprocess_exec(exe, "-x", "-r", str(retries), "-t", str(timeout), f"127.0.0.1:{port}",
                                             "acct", secret, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(p.communicate(text.encode()), timeout * retries * 5 + 10)
    return p.returncode, out.decode()


@pytest.mark.external
def test_radclient_sessions_are_durable_before_the_answer(tmp_path):
    require_tool("radclient")
    port = free_port()
    cfg = config(port, "radius.max_event_age_s=0")  # (sessions of a fixed day in the past)
    db = tmp_path / "bindings.sqlite"
    emitted = []

    async def main():
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), lambda t, b: emitted.append((t, b)))
        try:
            t = T0 // 1000
            results = []
            for i, (user, ip) in enumerate([("alice", "100.64.0.1"), ("bob", "100.64.0.2"), ("carol", "100.64.0.3")]):
                results.append(await radclient(port, "testing123",
                    f"Acct-Status-Type = Start, User-Name = {user}, Acct-Session-Id = s{i}, "
                    f"Framed-IP-Address = {ip}, Event-Timestamp = {t}, NAS-Port = {i}\n"))
                # the answer came, so the binding must already be on disk: a fresh connection sees it
                assert who(Bindings(db), ip, T0) == user
            results.append(await radclient(port, "testing123",
                "Acct-Status-Type = Interim-Update, User-Name = alice, Acct-Session-Id = s0, NAS-Port = 0, "
                f"Framed-IP-Address = 100.64.0.1, Event-Timestamp = {t + 300}, Acct-Input-Octets = 1234, "
                "Acct-Output-Octets = 4321\n"))
            results.append(await radclient(port, "testing123",
                "Acct-Status-Type = Stop, User-Name = bob, Acct-Session-Id = s1, NAS-Port = 1, "
                f"Framed-IP-Address = 100.64.0.2, Event-Timestamp = {t + 120}\n"))
            wrong = await radclient(port, "not-the-secret",
                f"Acct-Status-Type = Start, User-Name = mallory, Acct-Session-Id = m, Framed-IP-Address = 100.64.0.1, "
                f"Event-Timestamp = {t + 1}\n", timeout=1)
            return results, wrong, server.accounting.counters
        finally:
            await server.stop()

    results, wrong, counters = asyncio.run(main())
    for code, out in results:
        assert code == 0 and "Received Accounting-Response" in out, out
    assert wrong[0] != 0 and "Received Accounting-Response" not in wrong[1]
    assert counters[("nas1", "ok")] == 5 and counters[("nas1", "bad_authenticator")] >= 1
    fresh = Bindings(db)  # a restart keeps the bindings
    assert who(fresh, "100.64.0.1", T0 + 1000) == "alice"
    assert who(fresh, "100.64.0.2", T0 + 119_999) == "bob" and who(fresh, "100.64.0.2", T0 + 120_000) == ""
    usage = [b for t, b in emitted if t == "usage"]
    assert usage_totals(usage) == {("alice", T0, "up"): 1234, ("alice", T0, "down"): 4321}
    assert sum(b.num_rows for t, b in emitted if t == "bindings") >= 4


@pytest.mark.external
def test_radclient_from_an_unknown_client_gets_no_answer():
    require_tool("radclient")
    port = free_port()
    cfg = load(None, ["radius.enabled=true", f'radius.listen=["127.0.0.1:{port}"]',
                      'radius.clients=[{address="127.0.0.2", secret="testing123"}]'])

    async def main():
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(), lambda t, b: None)
        try:
            out = await radclient(port, "testing123", "Acct-Status-Type = Start, User-Name = x, "
                                  "Framed-IP-Address = 100.64.0.1\n", timeout=1)
            return out, server.accounting.counters
        finally:
            await server.stop()

    (code, out), counters = asyncio.run(main())
    assert code != 0 and "Received" not in out
    assert counters[("unknown", "unknown_client")] >= 1


class FakeSink:
    """``add``/``flush`` like storage.sink.Sink; ``durable`` holds what a flush made durable."""

    def __init__(self) -> None:
        self.buffered, self.durable, self.flushes = [], [], 0

    def add(self, table, batch):
        self.buffered.append((table, batch))
        return True

    def flush(self):
        self.flushes += 1
        self.durable += self.buffered
        self.buffered = []


def test_usage_is_journaled_until_the_outputs_have_it(tmp_path):
    db = tmp_path / "b.sqlite"
    cfg = config(free_port(), "radius.max_event_age_s=0")
    interim = accounting_request(1, attrs(3, t=T0 + 300_000, Acct_Session_Time=300,
                                          Framed_IP_Address="100.64.0.1", Acct_Input_Octets=777), SECRET)

    async def crash_before_flush():
        sink = FakeSink()
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), sink.add, flush=sink.flush)
        assert server.flush == sink.flush
        answer = await asyncio.get_running_loop().run_in_executor(None, roundtrip, server, interim)
        assert answer[0] == 5  # answered: the usage is journaled
        server._executor.shutdown(wait=True)  # "crash": no stop(), no confirm
        for t in server.transports:
            t.close()
        server._task.cancel()
        server._confirm_task.cancel()
        return sink

    lost = asyncio.run(crash_before_flush())
    assert usage_totals([b for t, b in lost.buffered if t == "usage"]) == {("alice", T0, "up"): 777}

    async def restart():
        sink = FakeSink()
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), sink.add, flush=sink.flush)
        again = [b for t, b in sink.buffered if t == "usage"]
        await server.stop()  # flushes, then confirms
        return again, sink, server

    again, sink, server = asyncio.run(restart())
    assert usage_totals(again) == {("alice", T0, "up"): 777} and sink.flushes == 1
    assert server.accounting.journaled() == []


def roundtrip(server, request: bytes) -> bytes:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect(server.addresses[0])
        s.send(request)
        return s.recv(100)


def test_silent_sessions_expire():
    h = Harness("radius.session_timeout_s=3600")
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address="100.64.0.1"))
    h.send(attrs(1, session="b", user="bob", t=T0, Framed_IP_Address="100.64.0.2"))
    h.send(attrs(3, session="b", user="bob", t=T0 + 3000_000, Framed_IP_Address="100.64.0.2"))
    assert h.acct.expire(T0 + 3600_000) is None  # nobody silent for an hour yet
    changed = h.acct.expire(T0 + 3600_001)
    assert changed.column("subscriber_id").to_pylist() == ["alice"] and h.acct.open_sessions() == 1
    assert who(h.b, "100.64.0.1", T0 + 3600_000) == "alice" and who(h.b, "100.64.0.1", T0 + 3600_001) == ""
    assert who(h.b, "100.64.0.2", T0 + 3600_001) == "bob"


def test_event_timestamp_from_a_clock_far_ahead_is_not_believed():
    h = Harness()
    h.send(attrs(1, t=T0 + 86400_000, Framed_IP_Address="100.64.0.1"), now=T0)
    assert who(h.b, "100.64.0.1", T0) == "alice" and h.acct._skewed == 1


def test_listener_queue_is_bounded():
    """A flood beyond radius.max_queue is dropped and counted before any work is done for it."""
    from collector.radius_listener import RadiusServer

    async def main():
        server = RadiusServer(config(free_port(), "radius.max_queue=3"), Bindings(), lambda t, b: None)
        for i in range(10):
            server.received(b"x" * 20, ("127.0.0.1", 1000 + i), None)
        return server

    server = asyncio.run(main())
    assert len(server.queue) == 3 and server.dropped == 7
    assert server.accounting.counters[("queue", "dropped_queue_full")] == 7


def test_interim_with_new_addresses_rebinds_the_session():
    h = Harness()
    h.send(attrs(1, t=T0, Framed_IP_Address="100.64.0.1", Delegated_IPv6_Prefix="2001:db8:100::/56"))
    h.send(attrs(3, t=T0 + 600_000, Framed_IP_Address="100.64.0.1", Delegated_IPv6_Prefix="2001:db8:200::/56"))
    h.send(attrs(3, t=T0 + 900_000))  # an Interim without address attributes changes nothing
    assert [who(h.b, "2001:db8:100::1", t) for t in (T0 + 599_999, T0 + 600_000)] == ["alice", ""]
    assert [who(h.b, "2001:db8:200::1", t) for t in (T0 + 599_999, T0 + 600_000)] == ["", "alice"]
    assert who(h.b, "100.64.0.1", T0 + 900_000) == "alice"
    assert h.b.conn.execute("SELECT count(*) FROM bindings").fetchone()[0] == 3


def test_two_reports_in_one_second_are_two_parts_not_a_re_send():
    """Event-Timestamp has whole seconds: two Interim-Updates of a session in the same second are distinct usage
    parts (distinct row ids), so ReplacingMergeTree FINAL and the embedded store's usage view do not collapse them."""
    h = Harness()
    h.send(attrs(1, t=T0 + 60_000, Framed_IP_Address="100.64.0.1"))
    h.send(attrs(3, t=T0 + 120_000, Acct_Input_Octets=1000, Acct_Output_Octets=10))
    h.send(attrs(3, t=T0 + 120_000, Acct_Input_Octets=3000, Acct_Output_Octets=30))
    h.send(attrs(3, t=T0 + 120_000, Acct_Input_Octets=5000, Acct_Output_Octets=50))  # the same deltas again
    assert usage_totals(h.usage) == {("alice", T0, "up"): 5000, ("alice", T0, "down"): 50}
    ids = np.concatenate([b.column("row_id").to_numpy() for b in h.usage])
    assert len(ids) == 6 and len(set(ids.tolist())) == 6
