"""Cumulative SAMIS counters -> usage deltas: wrap, reboot, re-creation, Stop, duplicates, gaps, restarts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.ipdr.samis import SAMIS_TYPE_1
from mediation.ipdr.usage import CmSubscribers, IpdrUsage
from tests.ipdr.helpers import EXPORTER_IP, make_event

T0 = 1_800_000_000_000  # ms
MAC = 0x001095000001


def rec(t_min: float, octets: int, *, up_cs: int | None = None, created: int = 100, rec_type: int = 1,
        sfid: int = 7, direction: int = 1, mac: int = MAC) -> dict:
    t = T0 + int(t_min * 60_000)
    return {"RecCreationTime": t, "ServiceOctetsPassed": octets, "ServicePktsPassed": octets // 100,
            "CmtsSysUpTime": up_cs if up_cs is not None else 500_000 + int(t_min * 6000), "ServiceTimeCreated": created,
            "RecType": rec_type, "ServiceIdentifier": sfid, "ServiceDirection": direction, "CmMacAddr": mac}


def usage(state=None, **kw) -> IpdrUsage:
    return IpdrUsage(state, CmSubscribers.from_dict({MAC: "alice"}), preexisting="count", **kw)


def deltas(u: IpdrUsage, rows: list[dict], first_dsn: int = 0, **kw) -> tuple[list[int], list[str]]:
    res = u.mediate(make_event(rows, first_dsn=first_dsn, **kw), "cmts1", EXPORTER_IP, T0)
    return res.ipdr_records.column("delta_octets").to_pylist(), res.ipdr_records.column("delta_reason").to_pylist()


def test_interims_give_differences_and_gaps_need_nothing():
    u = usage()
    assert deltas(u, [rec(0, 1000), rec(15, 3000)]) == ([1000, 2000], ["first", "delta"])
    # the 30-minute interim was suppressed or lost: the next one covers both intervals
    assert deltas(u, [rec(45, 10_000)], first_dsn=2) == ([7000], ["delta"])


def test_64_and_32_bit_wraps():
    u = usage()
    d, r = deltas(u, [rec(0, 2**64 - 100), rec(15, 50)])
    assert d == [2**64 - 100, 150] and r[1] == "wrap"
    u = usage()
    d, r = deltas(u, [rec(0, 2**32 - 10, sfid=8), rec(15, 5, sfid=8)])
    assert d[1] == 15 and r[1] == "wrap32"


def test_reboot_is_not_a_wrap():
    u = usage()
    # sysUpTime goes back: counters restarted; same SFID and the same creation value (flows made at boot)
    d, r = deltas(u, [rec(0, 5_000_000), rec(15, 700, up_cs=9000)])
    assert d == [5_000_000, 700] and r == ["first", "reboot"]
    # and a rebooted flow whose new counter already exceeds the old one is still counted from zero
    u = usage()
    d, r = deltas(u, [rec(0, 100), rec(15, 900, up_cs=3000)])
    assert d == [100, 900] and r[1] == "reboot"


def test_stop_then_sfid_reused_by_a_new_flow():
    u = usage()
    d, r = deltas(u, [rec(0, 100), rec(10, 400, rec_type=2), rec(15, 50, created=70_000)])
    assert d == [100, 300, 50]
    # the Stop left a tombstone: its redelivery is stale, not a new flow
    d, r = deltas(u, [rec(10, 400, rec_type=2)], first_dsn=10)
    assert d == [0] and r == ["stale"]


def test_duplicates_and_replays_count_nothing():
    u = usage()
    deltas(u, [rec(0, 100), rec(15, 300)])
    d, r = deltas(u, [rec(15, 300), rec(0, 100)], first_dsn=5)  # redelivered after a failover (new DSNs)
    assert d == [0, 0] and r == ["stale", "stale"]
    d, r = deltas(u, [rec(30, 500), rec(30, 500)], first_dsn=7)  # the same record twice in one burst
    assert d == [200, 0] and r == ["delta", "duplicate"]


def test_dsn_watermark_drops_redelivered_records():
    u = usage()
    deltas(u, [rec(0, 100), rec(15, 300)])
    res = u.mediate(make_event([rec(15, 300), rec(30, 600)], first_dsn=1), "cmts1", EXPORTER_IP, T0)
    assert res.ipdr_records.num_rows == 1 and u.counters["redelivered"] == 1


def test_usage_rows_per_subscriber_and_direction_spread_over_intervals():
    u = usage(interval_s=300)
    just_created = 500_000 - 10  # sysUpTime at T0 is 500_000: flows created 0.1 s before the first record
    res = u.mediate(make_event([rec(0, 100, created=just_created), rec(15, 300, created=just_created),
                                rec(15, 40, sfid=9, direction=2, created=just_created + 6001 * 10),
                                rec(15, 77, mac=0xABC, created=just_created + 6000 * 15)]), "cmts1", EXPORTER_IP, T0)
    rows = res.usage.to_pylist()
    totals: dict = {}
    for r in rows:
        key = (r["subscriber_id"], r["direction"])
        totals[key] = totals.get(key, 0) + r["bytes"]
    assert totals == {("alice", "down"): 300, ("alice", "up"): 40, ("", "unattributed"): 77}
    # the 0 -> 15 min delta of 200 octets is spread over the three 5-minute intervals it covers, exactly
    ms = lambda r: int(r["interval_start"].timestamp() * 1000)  # noqa: E731
    parts = sorted((ms(r), r["bytes"], r["flows"]) for r in rows
                   if r["subscriber_id"] == "alice" and r["direction"] == "down" and ms(r) >= T0)
    assert parts == [(T0, 66, 0), (T0 + 300_000, 67, 0), (T0 + 600_000, 67, 1)]
    # a flow created 5 minutes before its first record: its counter goes to that last interval
    assert [(ms(r), r["bytes"]) for r in rows if r["direction"] == "up"] == [(T0 + 600_000, 40)]
    assert all(r["source"] == "ipdr" and r["traffic_class"] == "all" for r in rows)
    assert len({r["row_id"] for r in rows}) == len(rows)


def test_preexisting_flows_only_set_a_baseline():
    u = IpdrUsage(None, preexisting="baseline")
    # created at sysUpTime 100 (long before the first record): baseline; a flow created just now: counted
    d, r = deltas(u, [rec(0, 10**9), rec(0, 500, sfid=9, created=500_000 - 100)])
    assert d == [0, 500] and r == ["baseline", "first"]
    assert deltas(u, [rec(15, 10**9 + 42)], first_dsn=2)[0] == [42]


def up(t_min: float) -> int:
    """The CMTS's sysUpTime (1/100 s) at ``t_min`` minutes after T0, as ``rec`` reports it."""
    return 500_000 + int(t_min * 6000)


def test_pre_existing_means_before_the_first_session_whatever_the_interval():
    u = IpdrUsage(None, CmSubscribers.from_dict({MAC: "alice"}), preexisting="baseline")
    u.session_started("cmts1", T0)  # flowmed connects; the CMTS reports every 15 minutes
    u.session_started("cmts1", T0 + 60_000)  # later sessions change nothing
    rows = [rec(15, 5000, created=up(2)),  # created 2 minutes into the first interval: new
            rec(15, 10**9, sfid=8, created=up(-10)),  # created 10 minutes before flowmed connected
            rec(15, 700, mac=0xABC, created=up(-0.5))]  # 30 s before: within the clock-skew tolerance
    res = u.mediate(make_event(rows), "cmts1", EXPORTER_IP, T0 + 15 * 60_000)
    assert res.ipdr_records.column("delta_octets").to_pylist() == [5000, 0, 700]
    assert res.ipdr_records.column("delta_reason").to_pylist() == ["first", "baseline", "first"]
    # the new flow's counter covers 2 -> 15 minutes: spread from its creation, not over the whole day
    alice = [r for r in res.usage.to_pylist() if r["subscriber_id"] == "alice"]
    assert [int(r["interval_start"].timestamp() * 1000) for r in alice] == [T0, T0 + 300_000, T0 + 600_000]
    assert sum(r["bytes"] for r in alice) == 5000


def test_creation_a_fraction_of_a_second_after_the_records_sysuptime_is_now():
    u = IpdrUsage(None, preexisting="baseline", interval_s=300)
    u.session_started("cmts1", T0 - 3_600_000)
    # ServiceTimeCreated 0.3 s past the record's own CmtsSysUpTime: not 497 days ago through the 2^32 wrap
    d, r = deltas(u, [rec(0, 900, created=up(0) + 30), rec(0, 400, sfid=8, created=up(0) + 100)])
    assert d == [900, 400] and r == ["first", "first"]
    res = u.mediate(make_event([rec(0, 50, sfid=9, created=up(0) + 30)], first_dsn=2), "cmts1", EXPORTER_IP, T0)
    assert [int(x["interval_start"].timestamp() * 1000) for x in res.usage.to_pylist()] == [T0 - 300_000]
    # a genuinely old creation value still reads as old: sysUpTime wrapped since, the flow is 5 minutes old
    u = IpdrUsage(None, preexisting="baseline")
    u.session_started("cmts1", T0 - 600_000)
    d, r = deltas(u, [rec(0, 10, up_cs=20_000, created=2**32 - 10_000)])
    assert d == [10] and r == ["first"]


def test_first_session_is_kept_across_restarts(tmp_path):
    u = IpdrUsage(tmp_path, preexisting="baseline")
    assert u.session_started("cmts1", T0) == T0
    u.close()  # a restart before any record was committed
    u = IpdrUsage(tmp_path, preexisting="baseline")
    assert u.session_started("cmts1", T0 + 30 * 60_000) == T0  # the restart's own connect does not count
    # a flow created 20 minutes after the first session, first reported after the restart: new
    d, r = deltas(u, [rec(45, 800, created=up(20)), rec(45, 10**9, sfid=8, created=up(-60))])
    assert d == [800, 0] and r == ["first", "baseline"]
    u.commit()
    u.state.compact(T0)
    u.close()
    u = IpdrUsage(tmp_path, preexisting="baseline")  # compaction keeps it too
    assert u.state.summary()["first_sessions"] == {"cmts1": T0}
    # a long-lived flow first reported after the restarts is still pre-existing, not new
    d, r = deltas(u, [rec(60, 10**9, sfid=10, created=up(-50))], first_dsn=2)
    assert d == [0] and r == ["baseline"]


def test_a_renamed_cmts_does_not_bill_its_flows_history_again():
    u = IpdrUsage(None, preexisting="baseline")
    u.session_started("cmts1", T0)
    assert deltas(u, [rec(15, 5000, created=up(2))]) == ([5000], ["first"])
    # The CMTS is renamed: every flow looks new under the new name, but was billed under the old one.
    renamed = [{**rec(30, 9000, created=up(2)), "CmtsHostName": "cmts1-renamed"}]
    assert deltas(u, renamed, first_dsn=1) == ([0], ["baseline"])


def test_fields_are_matched_by_name_not_position():
    shuffled = tuple(reversed(SAMIS_TYPE_1))
    a, b = usage(), usage()
    rows = [rec(0, 100), rec(15, 350)]
    assert deltas(a, rows) == deltas(b, rows, fields=shuffled)


def test_state_survives_restart_and_torn_journal(tmp_path):
    u = usage(tmp_path)
    deltas(u, [rec(0, 100), rec(15, 300)])
    u.commit()
    deltas(u, [rec(30, 1000)], first_dsn=2)  # processed, never committed (crash before the flush)
    u.close()
    with open(next(tmp_path.glob("journal-*.bin")), "ab") as f:
        f.write(b"IPDJ\x05\x00")  # a torn chunk at the end
    u2 = usage(tmp_path)
    assert deltas(u2, [rec(30, 1000)], first_dsn=2) == ([700], ["delta"])
    u2.commit()
    u2.state.compact(T0)
    u2.close()
    u3 = usage(tmp_path)
    assert deltas(u3, [rec(45, 1500)], first_dsn=3) == ([500], ["delta"])
    assert {p.name for p in tmp_path.glob("*")} == {"snapshot-1.npz"}  # old generation removed


def test_cm_subscriber_file(tmp_path):
    path = tmp_path / "cm.csv"
    path.write_text("cm_mac,subscriber_id\n00:10:95:00:00:01,alice\n0010.9500.0002,bob\n")
    subs = CmSubscribers(path)
    assert subs.lookup(np.array([MAC, MAC + 1, 5], np.uint64)).tolist() == ["alice", "bob", ""]
    path.write_text("cm_mac,subscriber_id\nnot-a-mac,carol\n")
    import os
    os.utime(path, (1, 1))
    assert not subs.reload() and subs.lookup(np.array([MAC], np.uint64)).tolist() == ["alice"]


def test_unmapped_cm_mac_attributed_through_address_bindings(tmp_path):
    from collector.config import load
    from collector.ipdr import address_lookup
    from mediation.subscribers.bindings import Bindings

    config = load(None, [f"store.path={tmp_path}"])
    bindings = Bindings(config.data_path(config.subscribers.bindings_db))
    bindings.open("carol", "10.0.0.9", T0 - 3_600_000)
    bindings.commit()
    u = IpdrUsage(None, CmSubscribers.from_dict({MAC: "alice"}), preexisting="count",
                  address_lookup=address_lookup(config))
    rows = [rec(0, 100), {**rec(0, 300, mac=0xBEEF), "CmIpv4Addr": "10.0.0.9"},
            {**rec(0, 50, mac=0xCAFE), "CmIpv4Addr": "10.0.0.10"}]
    res = u.mediate(make_event(rows), "cmts1", EXPORTER_IP, T0)
    got: dict = {}
    for r in res.usage.to_pylist():
        got[(r["subscriber_id"], r["direction"])] = got.get((r["subscriber_id"], r["direction"]), 0) + r["bytes"]
    assert got == {("", "unattributed"): 50, ("alice", "down"): 100, ("carol", "down"): 300}
    assert res.ipdr_records.column("subscriber_id").to_pylist() == ["alice", "carol", ""]
    bindings.close()


def test_reset_without_sysuptime_is_not_billed_as_a_wrap():
    no_uptime = tuple(f for f in SAMIS_TYPE_1 if f[0] != "CmtsSysUpTime")
    u = usage()
    d, r = deltas(u, [rec(0, 5_000_000), rec(15, 700)], fields=no_uptime)
    assert d == [5_000_000, 700] and r == ["first", "reset"]


def test_other_templates_are_stored_generically_as_json():
    import json

    cpe = (("CmtsHostName", 0x28), ("CmMacAddr", 0x723), ("CpeMacAddr", 0x723), ("CpeIpv4Addr", 0x322),
           ("CpeIpv6Addr", 0x427), ("CpeIpv4AddrList", 0x27), ("RecType", 0x21), ("RecCreationTime", 0x224))
    ev = make_event([{"CmtsHostName": "c1", "CmMacAddr": MAC, "CpeMacAddr": 0xAABBCCDDEEFF, "CpeIpv4Addr": "10.9.8.7",
                      "CpeIpv6Addr": "2001:db8::9", "CpeIpv4AddrList": bytes([10, 0, 0, 1, 10, 0, 0, 2]),
                      "RecType": 3, "RecCreationTime": T0}], fields=cpe)
    ev.records.template = type(ev.records.template)(1, "DOCSIS-CPE-TYPE", "s", ev.records.template.fields,
                                                     ev.records.template.all_names, ev.records.template.segments)
    res = usage().mediate(ev, "cmts1", EXPORTER_IP, T0)
    (row,) = res.ipdr_records.to_pylist()
    assert res.usage.num_rows == 0 and row["delta_reason"] == "not_samis" and row["template"] == "DOCSIS-CPE-TYPE"
    assert row["cm_mac"] == "00:10:95:00:00:01" and row["cmts_host"] == "c1"
    fields = json.loads(row["fields"])
    assert fields["CpeMacAddr"] == "aa:bb:cc:dd:ee:ff" and fields["CpeIpv4Addr"] == "10.9.8.7"
    assert fields["CpeIpv6Addr"] == "2001:db8::9" and fields["CpeIpv4AddrList"] == ["10.0.0.1", "10.0.0.2"]
    assert fields["RecType"] == 3


def test_undo_last_restores_the_state_exactly():
    u = usage()
    deltas(u, [rec(0, 100), rec(15, 300)])
    before = (u.state.n, u.state.rows[: u.state.n].copy(), dict(u.state.index), str(u.state.meta))
    deltas(u, [rec(30, 1000), rec(30, 77, sfid=99)], first_dsn=2)  # changes one row, adds one
    u.undo_last()
    assert (u.state.n, str(u.state.meta)) == (before[0], before[3]) and u.state.index == before[2]
    assert (u.state.rows[: u.state.n] == before[1]).all()
    assert deltas(u, [rec(30, 1000), rec(30, 77, sfid=99)], first_dsn=2)[0] == [700, 77]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 10**7), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**40)), min_size=1, max_size=20))
def test_split_parts_sum_exactly_and_stay_in_the_period(spans):
    from mediation.ipdr.usage import _split

    start = np.array([T0 + a for a, _, _, _ in spans], dtype=np.int64)
    end = start + np.array([d for _, d, _, _ in spans], dtype=np.int64)
    octets = np.array([o for _, _, o, _ in spans], dtype=np.uint64)
    packets = np.array([p for _, _, _, p in spans], dtype=np.uint64)
    piece, iv, o, p, last = _split(start, end, octets, packets, 300_000, 86_400_000)
    for i in range(len(spans)):
        mine = piece == i
        assert int(o[mine].sum(dtype=object)) == int(octets[i]) and int(p[mine].sum(dtype=object)) == int(packets[i])
        assert last[mine].sum() == 1 and iv[mine & last][0] == (end[i] - 1) // 300_000 * 300_000
        assert (iv[mine] + 300_000 > max(start[i], end[i] - 86_400_000)).all() and (iv[mine] < end[i]).all()
