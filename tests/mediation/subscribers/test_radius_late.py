"""Late RADIUS reports of a superseded session (issue 13 item 2): a report may extend or end its own session's
binding, never past the start of a newer session on that address, and never open it again; mediation (the index)
and ``flowmed trace`` (the stored ``bindings`` table) give the same holder at every instant."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from collector import metrics as metrics_mod
from collector.commands.compliance import run_trace, verdict
from collector.components import make_sink
from collector.radius_listener import start_radius
from mediation.subscribers.bindings import Bindings
from mediation.tables import OPEN_END_MS
from storage.query import QueryEngine
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.mediation_helpers import T0, s16, usage_totals
from tests.mediation.subscribers.test_radius import Harness, attrs, config, radclient, who

H = 3_600_000
M = 60_000
ADDR = "10.0.1.30"


def holders(b: Bindings, times: list[int], addr: str = ADDR) -> list[str]:
    return [who(b, addr, t) for t in times]


def rows(b: Bindings) -> list[tuple[str, int, int]]:
    """Every binding as (subscriber, valid_from, valid_to) relative to T0, in id order."""
    return [(s, vf - T0, vt - T0 if vt < OPEN_END_MS else None) for s, vf, vt in b.conn.execute(
        "SELECT subscriber_id, valid_from, valid_to FROM bindings ORDER BY id").fetchall()]


def test_late_interim_without_session_time_does_not_take_the_address_back():
    """(a) A Starts at 10:00, B Starts the same address at 11:00, A's Interim stamped 11:10 arrives late: before,
    B's binding was cut at 11:10 and a flow at 11:30 was billed to A."""
    h = Harness()
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(1, session="b", user="bob", t=T0 + H, Framed_IP_Address=ADDR))
    h.send(attrs(3, session="a", user="alice", t=T0 + H + 10 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=10))
    assert holders(h.b, [T0, T0 + H - 1, T0 + H, T0 + H + 10 * M, T0 + H + 30 * M]) == \
        ["alice", "alice", "bob", "bob", "bob"]
    assert rows(h.b) == [("alice", 0, H), ("bob", H, None)]


def test_late_interim_with_session_time_opens_no_second_binding():
    """(b) The same with Acct-Session-Time on A's late Interim: before, A got a second open binding beside B's, so
    after B's Stop mediation said nobody while the stored table (trace) named A."""
    h = Harness()
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(1, session="b", user="bob", t=T0 + H, Framed_IP_Address=ADDR))
    h.send(attrs(3, session="a", user="alice", t=T0 + H + 10 * M, Framed_IP_Address=ADDR, Acct_Session_Time=70 * 60))
    h.send(attrs(2, session="b", user="bob", t=T0 + 2 * H, Framed_IP_Address=ADDR))
    assert holders(h.b, [T0 + 30 * M, T0 + H + 30 * M, T0 + 2 * H + 30 * M]) == ["alice", "bob", ""]
    assert rows(h.b) == [("alice", 0, H), ("bob", H, 2 * H)]


def test_late_interim_of_a_session_whose_start_was_never_seen_ends_at_the_newer_start():
    h = Harness()
    h.send(attrs(1, session="b", user="bob", t=T0 + H, Framed_IP_Address=ADDR))
    h.send(attrs(3, session="a", user="alice", t=T0 + H + 10 * M, Framed_IP_Address=ADDR, Acct_Session_Time=70 * 60))
    assert holders(h.b, [T0 - 1, T0, T0 + H - 1, T0 + H, T0 + 3 * H]) == ["", "alice", "alice", "bob", "bob"]
    assert rows(h.b) == [("bob", H, None), ("alice", 0, H)]


@pytest.mark.parametrize("stop_at, alice_until", [(50 * M, 50 * M), (80 * M, H)], ids=["before", "after"])
def test_delayed_stop_shortens_the_old_binding_and_leaves_no_empty_one(stop_at, alice_until):
    """A's Stop arrives after B's Start: stamped before B's start it ends A's binding there; stamped after, A's
    binding keeps ending at B's start. Before, a second (empty) binding was opened for A, and a Stop stamped after
    B's start cut B's binding."""
    h = Harness()
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(1, session="b", user="bob", t=T0 + H, Framed_IP_Address=ADDR))
    h.send(attrs(2, session="a", user="alice", t=T0 + stop_at, Framed_IP_Address=ADDR, Acct_Input_Octets=500))
    assert rows(h.b) == [("alice", 0, alice_until), ("bob", H, None)]
    assert holders(h.b, [T0 + alice_until - 1, T0 + alice_until, T0 + 3 * H]) == \
        ["alice", "" if alice_until < H else "bob", "bob"]
    assert usage_totals(h.usage) and sum(usage_totals(h.usage).values()) == 500  # its usage still counts
    assert h.acct.open_sessions() == 1  # bob's


def test_reordered_interims_count_usage_once():
    """An Interim older than one already applied changes no counters: before, its lower counters looked like a
    reset and were counted again."""
    h = Harness()
    h.send(attrs(1, session="a", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(3, session="a", t=T0 + 10 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=3000))
    h.send(attrs(3, session="a", t=T0 + 5 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=1000))  # late
    h.send(attrs(3, session="a", t=T0 + 15 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=4500))
    assert sum(usage_totals(h.usage).values()) == 4500
    assert rows(h.b) == [("alice", 0, None)]


def test_reports_after_the_stop_count_no_usage_and_bind_nothing():
    """An Interim that arrives after its session's Stop (a retransmission the NAS sent first, or a replay beyond
    the duplicate window): before, the session was taken as new and its counters counted again from zero."""
    h = Harness()
    h.send(attrs(1, session="a", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(2, session="a", t=T0 + 20 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=2000))
    h.send(attrs(3, session="a", t=T0 + 10 * M, Framed_IP_Address=ADDR, Acct_Input_Octets=1000))
    h.send(attrs(1, session="a", t=T0, Framed_IP_Address=ADDR))  # and its Start again
    assert sum(usage_totals(h.usage).values()) == 2000
    assert rows(h.b) == [("alice", 0, 20 * M)] and h.acct.open_sessions() == 0


def test_an_address_that_comes_back_to_its_session_is_bound_again():
    """Not a late report: the session's address changed and changed back, nobody held it meanwhile."""
    h = Harness()
    h.send(attrs(1, session="a", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(3, session="a", t=T0 + 10 * M, Framed_IP_Address="10.0.1.31"))
    h.send(attrs(3, session="a", t=T0 + 20 * M, Framed_IP_Address=ADDR))
    assert rows(h.b) == [("alice", 0, 10 * M), ("alice", 10 * M, 20 * M), ("alice", 20 * M, None)]
    assert holders(h.b, [T0 + 15 * M, T0 + 5 * H]) == ["", "alice"]


def test_a_restarted_nas_reusing_a_session_id_gets_a_new_binding():
    h = Harness()
    h.send(attrs(1, session="a", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(2, session="a", t=T0 + 10 * M, Framed_IP_Address=ADDR))
    h.send(attrs(1, session="a", t=T0 + H, Framed_IP_Address=ADDR))  # the same ids after a NAS restart
    assert rows(h.b) == [("alice", 0, 10 * M), ("alice", H, None)]


def test_a_late_accounting_on_ends_only_the_sessions_of_before_it():
    """Accounting-On at 10:30 arriving after a session started at 10:40 (or re-sent later): the NAS restarted at
    10:30, so the 10:40 session stays. Before, its binding was ended at 10:30 (left empty) and its session dropped."""
    h = Harness()
    h.send(attrs(1, session="a", user="alice", t=T0, Framed_IP_Address=ADDR))
    h.send(attrs(1, session="b", user="bob", t=T0 + 40 * M, Framed_IP_Address="10.0.1.31"))
    h.send(attrs(7, session="", user="", t=T0 + 30 * M))
    assert rows(h.b) == [("alice", 0, 30 * M), ("bob", 40 * M, None)]
    assert h.acct.open_sessions() == 1


# --- against radclient: mediation and flowmed trace agree -------------------------------------------------------

@pytest.mark.external
@pytest.mark.slow
@pytest.mark.parametrize("session_time", [False, True], ids=["without-session-time", "with-session-time"])
def test_radclient_late_interim_mediation_and_trace_agree(tmp_path, session_time):
    """Both cases of the issue through radclient, the listener and the embedded store: the holder of the address
    at each instant, asked of the bindings index (mediation) and of ``flowmed trace``, is the same and right."""
    require_tool("radclient")
    port = free_port()
    cfg = config(port, f"store.path={tmp_path / 'data'}")
    sink = make_sink(cfg, metrics_mod.Metrics(CollectorRegistry()))
    base = (int(time.time()) - 3 * 3600) // 60 * 60  # three hours ago, whole minutes (default max_event_age_s)
    extra = ", Acct-Session-Time = 4200" if session_time else ""
    requests = [
        f"Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = a, Framed-IP-Address = {ADDR}, "
        f"Event-Timestamp = {base}",
        f"Acct-Status-Type = Start, User-Name = bob, Acct-Session-Id = b, Framed-IP-Address = {ADDR}, "
        f"Event-Timestamp = {base + 3600}",
        f"Acct-Status-Type = Interim-Update, User-Name = alice, Acct-Session-Id = a, Framed-IP-Address = {ADDR}, "
        f"Event-Timestamp = {base + 4200}, Acct-Input-Octets = 100{extra}",
        f"Acct-Status-Type = Stop, User-Name = bob, Acct-Session-Id = b, Framed-IP-Address = {ADDR}, "
        f"Event-Timestamp = {base + 7200}",
    ]

    async def sessions() -> None:
        server = await start_radius(asyncio.get_running_loop(), cfg, None, sink.add, flush=sink.flush)
        try:
            for text in requests:
                code, out = await radclient(port, "testing123", text + "\n")
                assert code == 0 and "Received Accounting-Response" in out, out
        finally:
            await server.stop()

    asyncio.run(sessions())
    sink.close()
    b = Bindings(cfg.data_path(cfg.subscribers.bindings_db))
    offsets = {30 * 60: "alice", 3600 - 1: "alice", 3600: "bob", 4200: "bob", 5400: "bob", 7200: "", 9000: ""}
    times = [(base + s) * 1000 for s in offsets]
    sub, _ = b.lookup(s16([ADDR] * len(times)), np.array(times, dtype=np.int64))
    mediation = [b.subscriber_names[i] if i >= 0 else "" for i in sub]
    with QueryEngine.for_config(cfg, "store") as engine:
        traced = [verdict(run_trace(engine, address=ADDR, at_ms=t), t).subscriber_id for t in times]
    assert mediation == traced == list(offsets.values())


def test_the_listener_hands_bindings_separated_in_an_older_database_to_the_outputs(tmp_path):
    """A database written by the previous code holds alice's re-opened binding beside bob's: opening it ends alice's
    at bob's start, and the listener emits that version, so the outputs' table (flowmed trace) agrees."""
    from mediation.subscribers.bindings import parse_network

    db = tmp_path / "b.sqlite"
    b = Bindings(db)
    b.conn.execute("DELETE FROM meta WHERE key='separated'")
    hi, lo, plen = parse_network(ADDR)
    for i, (sub, vf, vt) in enumerate([("alice", T0, T0 + H), ("bob", T0 + H, T0 + 2 * H), ("alice", T0, OPEN_END_MS)]):
        b.conn.execute("INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
                       "seq) VALUES (?, ?, ?, ?, ?, ?, 'radius', ?)", (sub, hi, lo, plen, vf, vt, 10 + i))
    b.close()
    emitted = []

    async def main() -> None:
        server = await start_radius(asyncio.get_running_loop(), config(free_port()), Bindings(db),
                                    lambda t, batch: emitted.append((t, batch)))
        await server.stop()

    asyncio.run(main())
    (table, batch), = emitted
    assert table == "bindings" and batch.column("binding_id").to_pylist() == [1, 3]
    assert [v - T0 for v in batch.column("valid_to").cast("int64").to_pylist()] == [0, H]  # both end at bob's start
