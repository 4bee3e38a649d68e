"""RADIUS replays (issue 14 item 6): a captured Start re-sent after a restart re-opened an open-ended binding dated
in the past, because the duplicate window lived in memory. The window is now kept in the database; requests older
than ``radius.max_event_age_s`` are acknowledged, not applied, and counted (``result="too_old"``); and a Start of a
session that already held its address after that Start opens nothing (a replay beyond the window)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from prometheus_client import CollectorRegistry

import mediation.subscribers.radius as radius_mod
from collector import metrics as metrics_mod
from collector.radius_listener import start_radius
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import RadiusAccounting, accounting_request
from mediation.tables import OPEN_END_MS
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.mediation_helpers import INTERVAL, T0
from tests.mediation.subscribers.test_radius import NAS, SECRET, attrs, config, radclient, who

DAY = 86_400_000
ADDR = "100.64.0.9"


def bound(b: Bindings) -> list[tuple[str, int, int]]:
    return [(s, vf, vt) for s, vf, vt in b.conn.execute(
        "SELECT subscriber_id, valid_from, valid_to FROM bindings ORDER BY id").fetchall()]


def test_a_start_re_sent_after_a_restart_is_answered_not_applied(tmp_path):
    db = tmp_path / "b.sqlite"
    start = accounting_request(1, attrs(1, session="a", t=T0, Framed_IP_Address=ADDR), SECRET)
    stop = accounting_request(2, attrs(2, session="a", t=T0 + 600_000, Framed_IP_Address=ADDR), SECRET)
    first = RadiusAccounting(config().radius, Bindings(db), INTERVAL)
    answer = first.handle([(start, NAS)], T0 + 1000).responses
    first.handle([(stop, NAS)], T0 + 601_000)
    first.bindings.close()
    again = RadiusAccounting(config().radius, Bindings(db), INTERVAL)  # a restart
    assert again.handle([(start, NAS)], T0 + 700_000).responses == answer
    assert again.counters == {("nas1", "retransmission"): 1}
    assert bound(again.bindings) == [("alice", T0, T0 + 600_000)]
    assert who(again.bindings, ADDR, T0 + 700_000) == "" and again.open_sessions() == 0


def test_a_start_replayed_beyond_the_window_opens_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(radius_mod, "DUPLICATE_WINDOW", 2)
    db = tmp_path / "b.sqlite"
    start = accounting_request(1, attrs(1, session="a", t=T0, Framed_IP_Address=ADDR), SECRET)
    acct = RadiusAccounting(config().radius, Bindings(db), INTERVAL)
    acct.handle([(start, NAS)], T0 + 1000)
    acct.handle([(accounting_request(2, attrs(2, session="a", t=T0 + 600_000, Framed_IP_Address=ADDR), SECRET),
                  NAS)], T0 + 601_000)
    for i in range(3):  # other sessions push the Start out of the window
        acct.handle([(accounting_request(3 + i, attrs(1, session=f"x{i}", user=f"u{i}", t=T0 + 700_000,
                                                      Framed_IP_Address=f"100.64.1.{i}"), SECRET), NAS)], T0 + 701_000)
    assert acct.bindings.conn.execute("SELECT count(*) FROM radius_recent").fetchone()[0] == 2
    again = RadiusAccounting(config().radius, Bindings(db), INTERVAL)
    assert len(again._recent) == 2
    assert len(again.handle([(start, NAS)], T0 + 800_000).responses) == 1  # not a known duplicate: handled
    assert bound(again.bindings)[0] == ("alice", T0, T0 + 600_000)  # but not re-opened
    assert who(again.bindings, ADDR, T0 + 800_000) == "" and again.open_sessions() == 3


def test_requests_older_than_the_limit_are_acknowledged_not_applied_and_counted():
    b = Bindings()
    acct = RadiusAccounting(config().radius, b, INTERVAL)
    now = T0 + 3 * DAY
    old_start = accounting_request(1, attrs(1, session="a", t=T0, Framed_IP_Address=ADDR), SECRET)
    old_on = accounting_request(2, attrs(7, session="", user="", t=T0), SECRET)
    fresh = accounting_request(3, attrs(1, session="b", user="bob", t=now - 60_000,
                                        Framed_IP_Address="100.64.0.10"), SECRET)
    res = acct.handle([(fresh, NAS), (old_start, NAS), (old_on, NAS)], now)
    assert len(res.responses) == 3  # acknowledged: retransmitting would not make them younger
    assert acct.counters == {("nas1", "ok"): 1, ("nas1", "too_old"): 2}
    assert bound(b) == [("bob", now - 60_000, OPEN_END_MS)]  # the old Accounting-On closed nothing either
    # with the limit off (or raised), the same Start is applied
    off = RadiusAccounting(config(1813, "radius.max_event_age_s=0").radius, Bindings(), INTERVAL)
    off.handle([(old_start, NAS)], now)
    assert bound(off.bindings) == [("alice", T0, OPEN_END_MS)]


def test_the_age_counts_acct_delay_time_too():
    acct = RadiusAccounting(config(1813, "radius.max_event_age_s=3600").radius, Bindings(), INTERVAL)
    late = accounting_request(1, [a for a in attrs(1, session="a", Framed_IP_Address=ADDR)] +
                              [(41, (7200).to_bytes(4, "big"))], SECRET)  # Acct-Delay-Time: two hours
    assert len(acct.handle([(late, NAS)], T0).responses) == 1
    assert acct.counters == {("nas1", "too_old"): 1} and bound(acct.bindings) == []


def test_config_refuses_a_negative_age():
    from collector.configtree import ConfigError

    with pytest.raises(ConfigError, match="max_event_age_s"):
        config(1813, "radius.max_event_age_s=-1")


@pytest.mark.external
def test_radclient_start_captured_and_re_sent_after_a_restart(tmp_path):
    """radclient's Start is captured off the listener; after the session's Stop and a restart of the listener, the
    captured datagram is sent again: it is answered as before and opens nothing. An old Start from radclient is
    acknowledged, not applied, and counted in flowmed_radius_requests_total{result="too_old"}."""
    require_tool("radclient")
    port = free_port()
    cfg = config(port)
    db = tmp_path / "bindings.sqlite"
    now = int(time.time())
    captured: list[bytes] = []
    registry = CollectorRegistry()
    metrics = metrics_mod.Metrics(registry)

    async def first() -> None:
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), lambda t, b: None)
        real = server.received
        server.received = lambda data, addr, proto: (captured.append(data), real(data, addr, proto))
        try:
            for text in (f"Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = a, "
                         f"Framed-IP-Address = {ADDR}, Event-Timestamp = {now - 600}",
                         f"Acct-Status-Type = Stop, User-Name = alice, Acct-Session-Id = a, "
                         f"Framed-IP-Address = {ADDR}, Event-Timestamp = {now - 300}"):
                code, out = await radclient(port, "testing123", text + "\n")
                assert code == 0 and "Received Accounting-Response" in out, out
        finally:
            await server.stop()

    async def second() -> tuple[bytes, str]:
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), lambda t, b: None, metrics)
        try:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(None, send, port, captured[0])
            code, out = await radclient(port, "testing123", "Acct-Status-Type = Start, User-Name = mallory, "
                                        f"Acct-Session-Id = m, Framed-IP-Address = {ADDR}, "
                                        f"Event-Timestamp = {now - 3 * 86400}\n")
            return answer, out if code == 0 else f"no answer: {out}"
        finally:
            await server.stop()

    asyncio.run(first())
    answer, old = asyncio.run(second())
    assert answer[0] == 5 and answer[1] == captured[0][1]  # the Accounting-Response to the captured request
    assert "Received Accounting-Response" in old
    b = Bindings(db)
    assert [s for s, _, vt in bound(b)] == ["alice"] and bound(b)[0][2] == (now - 300) * 1000
    assert who(b, ADDR, now * 1000) == ""
    assert registry.get_sample_value("flowmed_radius_requests_total", {"client": "nas1", "result": "too_old"}) == 1
    assert registry.get_sample_value("flowmed_radius_requests_total",
                                     {"client": "nas1", "result": "retransmission"}) == 1


def send(port: int, datagram: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.send(datagram)
        return s.recv(100)
