"""NetFlow v9 and IPFIX: templates, options, every timestamp form, IPv6, variable-length and enterprise fields."""

import struct

import numpy as np
import pytest

from decoders.netflow.decoder import FlowDecoder
from tests.decoders.packets import (
    T0_MS,
    V4_FIELDS,
    data_set,
    ip4,
    ip6,
    ipfix,
    mapped,
    options_template_set,
    template_set,
    v4_record,
    v9,
)

EXP = "192.0.2.20"


@pytest.mark.parametrize("proto", ["v9", "ipfix"])
def test_template_and_data_in_one_datagram(proto):
    is_ipfix = proto == "ipfix"
    wrap = ipfix if is_ipfix else v9
    dg = wrap(template_set({256: V4_FIELDS}, ipfix=is_ipfix),
              data_set(256, V4_FIELDS, [v4_record(i) for i in range(3)]), domain=42)
    res = FlowDecoder().decode([(dg, EXP, T0_MS + 7)])
    f = res.flows
    assert res.n_flows == 3 and not res.errors
    assert list(f["src_addr"]) == [mapped(f"10.0.0.{i}") for i in (1, 2, 3)]
    assert list(f["dst_addr"]) == [mapped("192.0.2.7")] * 3
    assert list(f["src_port"]) == [40000, 40001, 40002] and set(f["dst_port"]) == {443}
    assert list(f["raw_bytes"]) == [1000, 2000, 3000] and list(f["raw_packets"]) == [10, 20, 30]
    assert list(f["bytes"]) == [1000, 2000, 3000]
    assert set(f["protocol"]) == {6} and set(f["tcp_flags"]) == {0x12} and set(f["tos"]) == {0x20}
    assert set(f["in_if"]) == {3} and set(f["out_if"]) == {4} and set(f["direction"]) == {1}
    assert set(f["flow_start"]) == {T0_MS - 5000} and set(f["flow_end"]) == {T0_MS - 1000}
    assert set(f["next_hop"]) == {mapped("10.9.9.9")}
    assert set(f["src_as"]) == {64500} and set(f["dst_as"]) == {64501}
    assert set(f["src_mask"]) == {24} and set(f["dst_mask"]) == {16}
    assert set(f["observation_domain"]) == {42} and set(f["version"]) == {10 if is_ipfix else 9}
    assert set(f["time_received"]) == {T0_MS + 7}
    assert res.records[(EXP, 10 if is_ipfix else 9)] == 3
    assert res.templates_learned[EXP] == 1


def test_ipv6_flows():
    fields = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (62, 16), (29, 1), (30, 1)]
    rec = {27: ip6("2001:db8::1"), 28: ip6("2001:db8:ffff::2"), 7: 1, 11: 2, 4: 17, 1: 99, 2: 1,
           62: ip6("fe80::1"), 29: 64, 30: 48}
    res = FlowDecoder().decode([(ipfix(template_set({300: fields}, ipfix=True), data_set(300, fields, [rec])),
                                 EXP, T0_MS)])
    f = res.flows
    assert f["src_addr"][0] == ip6("2001:db8::1") and f["dst_addr"][0] == ip6("2001:db8:ffff::2")
    assert f["next_hop"][0] == ip6("fe80::1") and (f["src_mask"][0], f["dst_mask"][0]) == (64, 48)
    assert f["raw_bytes"][0] == 99


def test_reduced_size_encoding():
    """RFC 7011 6.2: a 4-byte octetDeltaCount, 2-byte interfaces, 1-byte ports, 3-byte counters decode."""
    fields = [(8, 4), (1, 4), (2, 3), (10, 2), (14, 1), (7, 1), (11, 2), (6, 2), (16, 2)]
    rec = {8: ip4("10.0.0.1"), 1: 4_000_000_000, 2: 0x010203, 10: 515, 14: 7, 7: 200, 11: 8080, 6: 0x0112, 16: 65001}
    res = FlowDecoder().decode([(v9(template_set({256: fields}, ipfix=False), data_set(256, fields, [rec] * 2)),
                                 EXP, T0_MS)])
    f = res.flows
    assert list(f["raw_bytes"]) == [4_000_000_000] * 2 and list(f["raw_packets"]) == [0x010203] * 2
    assert (f["in_if"][0], f["out_if"][0], f["src_port"][0], f["dst_port"][0]) == (515, 7, 200, 8080)
    assert f["tcp_flags"][0] == 0x12 and f["src_as"][0] == 65001  # IPFIX 2-byte tcpControlBits: low byte


NTP = 2_208_988_800


def ntp(ms: int, us: int = 0, nano: bool = False) -> int:
    secs, rem = divmod(ms, 1000)
    frac = ((rem * 1000 + us) << 32) // 1_000_000
    return ((secs + NTP) << 32) | (frac if nano else frac & ~0x7FF)


@pytest.mark.parametrize("start_ie,end_ie,start_v,end_v,want_start,want_end", [
    (150, 151, T0_MS // 1000 - 60, T0_MS // 1000 - 1, T0_MS - 60_000, T0_MS - 1000),
    (152, 153, T0_MS - 1234, T0_MS - 5, T0_MS - 1234, T0_MS - 5),
    (154, 155, ntp(T0_MS - 1234, 999), ntp(T0_MS - 5), T0_MS - 1234, T0_MS - 5),
    (156, 157, ntp(T0_MS - 1234, 999, True), ntp(T0_MS - 5, 0, True), T0_MS - 1234, T0_MS - 5),
    (158, 159, 1_234_500, 5000, T0_MS - 1235, T0_MS - 5),
])
def test_ipfix_timestamp_forms(start_ie, end_ie, start_v, end_v, want_start, want_end):
    fields = [(8, 4), (1, 8), (start_ie, 8 if start_ie in range(152, 158) else 4),
              (end_ie, 8 if end_ie in range(152, 158) else 4)]
    rec = {8: ip4("10.0.0.1"), 1: 1, start_ie: start_v, end_ie: end_v}
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [rec])),
                                 EXP, T0_MS + 999)])
    assert (res.flows["flow_start"][0], res.flows["flow_end"][0]) == (want_start, want_end)


def test_v9_sysuptime_times():
    fields = [(8, 4), (1, 4), (22, 4), (21, 4)]
    dg = v9(template_set({256: fields}, ipfix=False),
            data_set(256, fields, [{8: ip4("10.0.0.1"), 1: 5, 22: 3_590_000, 21: 3_599_500}]), uptime=3_600_000)
    res = FlowDecoder().decode([(dg, EXP, T0_MS)])
    assert (res.flows["flow_start"][0], res.flows["flow_end"][0]) == (T0_MS - 10_000, T0_MS - 500)


def test_ipfix_sysuptime_without_system_init_time_is_counted():
    fields = [(8, 4), (1, 4), (22, 4), (21, 4)]
    dg = ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [{22: 1000, 21: 2000}] * 2))
    res = FlowDecoder().decode([(dg, EXP, T0_MS + 300)])
    assert res.n_flows == 2 and res.errors == {(EXP, "missing_init_time"): 2}
    assert set(res.flows["flow_start"]) == {T0_MS}


def test_ipfix_sysuptime_with_system_init_time_from_options_and_record():
    boot = T0_MS - 86_400_000
    fields = [(8, 4), (1, 4), (22, 4), (21, 4)]
    opts = options_template_set(400, [(149, 4)], [(160, 8)], ipfix=True)
    odata = data_set(400, [(149, 4), (160, 8)], [{149: 5, 160: boot}])
    rec = {8: ip4("10.0.0.1"), 1: 5, 22: 1000, 21: 2000}
    dg = ipfix(opts, odata, template_set({256: fields}, ipfix=True), data_set(256, fields, [rec]), domain=5)
    res = FlowDecoder().decode([(dg, EXP, T0_MS)])
    assert (res.flows["flow_start"][0], res.flows["flow_end"][0]) == (boot + 1000, boot + 2000)
    # systemInitTimeMilliseconds carried in the data record itself
    fields2 = [(8, 4), (160, 8), (22, 4), (21, 4)]
    dg2 = ipfix(template_set({257: fields2}, ipfix=True),
                data_set(257, fields2, [{8: ip4("10.0.0.1"), 160: boot + 7, 22: 10, 21: 20}]), domain=6)
    res2 = FlowDecoder().decode([(dg2, EXP, T0_MS)])
    assert (res2.flows["flow_start"][0], res2.flows["flow_end"][0]) == (boot + 17, boot + 27)


def test_templates_keyed_by_exporter_and_domain():
    """Two exporters and two domains reuse template 256 with different layouts; none mixes with another."""
    a = [(8, 4), (1, 4)]
    b = [(1, 4), (8, 4)]
    dec = FlowDecoder()
    dgs = [
        (v9(template_set({256: a}, ipfix=False), domain=1), "192.0.2.1", T0_MS),
        (v9(template_set({256: b}, ipfix=False), domain=2), "192.0.2.1", T0_MS),
        (v9(template_set({256: b}, ipfix=False), domain=1), "192.0.2.2", T0_MS),
        (v9(data_set(256, a, [{8: ip4("10.0.0.1"), 1: 11}]), domain=1), "192.0.2.1", T0_MS),
        (v9(data_set(256, b, [{8: ip4("10.0.0.2"), 1: 22}]), domain=2), "192.0.2.1", T0_MS),
        (v9(data_set(256, b, [{8: ip4("10.0.0.3"), 1: 33}]), domain=1), "192.0.2.2", T0_MS),
    ]
    res = dec.decode(dgs)
    got = sorted(zip(res.flows["src_addr"], res.flows["raw_bytes"].tolist(), strict=True))
    assert got == [(mapped("10.0.0.1"), 11), (mapped("10.0.0.2"), 22), (mapped("10.0.0.3"), 33)]
    assert dec.templates_known() == {"192.0.2.1": 2, "192.0.2.2": 1}


def test_template_redefinition_mid_batch():
    a, b = [(8, 4), (1, 4)], [(8, 4), (2, 4), (1, 8)]
    dg1 = v9(template_set({256: a}, ipfix=False), data_set(256, a, [{8: ip4("10.0.0.1"), 1: 1}]))
    dg2 = v9(template_set({256: b}, ipfix=False), data_set(256, b, [{8: ip4("10.0.0.2"), 2: 7, 1: 2}]), seq=1)
    dg3 = v9(data_set(256, b, [{8: ip4("10.0.0.3"), 2: 8, 1: 3}]), seq=2)
    res = FlowDecoder().decode([(dg1, EXP, T0_MS), (dg2, EXP, T0_MS), (dg3, EXP, T0_MS)])
    assert sorted(res.flows["raw_bytes"].tolist()) == [1, 2, 3]
    assert sorted(res.flows["raw_packets"].tolist()) == [0, 7, 8]
    assert res.templates_learned[EXP] == 2


def test_ipfix_withdrawal_single_and_all():
    a = [(8, 4), (1, 4)]
    dec = FlowDecoder()
    dec.decode([(ipfix(template_set({256: a, 257: a, 258: a}, ipfix=True)), EXP, T0_MS)])
    assert dec.templates_known() == {EXP: 3}
    withdraw_one = struct.pack(">HHHH", 2, 8, 257, 0)
    dec.decode([(ipfix(withdraw_one), EXP, T0_MS)])
    assert dec.templates_known() == {EXP: 2}
    res = dec.decode([(ipfix(data_set(257, a, [{1: 5}])), EXP, T0_MS)])
    assert res.n_flows == 0 and res.pending_held[EXP] == 1  # withdrawn: held until it comes back
    withdraw_all = struct.pack(">HHHH", 2, 8, 2, 0)
    dec.decode([(ipfix(withdraw_all), EXP, T0_MS)])
    assert dec.templates_known() == {}


def test_enterprise_and_variable_length_fields_are_skipped_by_length():
    fields = [(8, 4), (1, 4, 9), (96, 0xFFFF), (2, 4), (100, 0xFFFF, 29305), (12, 4), (1, 4)]
    recs = [{8: ip4("10.0.0.1"), 96: "http", 2: 3, 100: b"x" * 300, 12: ip4("10.0.0.9"), 1: 77},
            {8: ip4("10.0.0.2"), 96: "", 2: 4, 100: b"", 12: ip4("10.0.0.8"), 1: 78}]
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, recs, pad=3)),
                                 EXP, T0_MS)])
    f = res.flows
    assert res.n_flows == 2 and not res.errors
    assert list(f["raw_bytes"]) == [77, 78] and list(f["raw_packets"]) == [3, 4]  # not the enterprise IE 1
    assert list(f["dst_addr"]) == [mapped("10.0.0.9"), mapped("10.0.0.8")]


def test_variable_length_in_v9_and_batched_with_fixed():
    var = [(8, 4), (82, 0xFFFF), (1, 4)]
    fixed = [(8, 4), (1, 4)]
    dgs = [(v9(template_set({256: var, 257: fixed}, ipfix=False)), EXP, T0_MS)]
    for i in range(20):
        dgs.append((v9(data_set(256, var, [{8: ip4("10.0.1.1"), 82: "ge-0/0/" + str(i) * i, 1: i}] * 2),
                       data_set(257, fixed, [{8: ip4("10.0.2.1"), 1: 1000 + i}]), seq=i + 1), EXP, T0_MS))
    res = FlowDecoder().decode(dgs)
    assert res.n_flows == 60 and not res.errors
    v = res.flows["raw_bytes"][res.flows["src_addr"] == mapped("10.0.1.1")]
    assert sorted(v.tolist()) == sorted(list(range(20)) * 2)


def test_nat_fields():
    fields = [(8, 4), (12, 4), (225, 4), (226, 4), (227, 2), (228, 2), (230, 1), (281, 16)]
    rec = {8: ip4("100.64.0.5"), 12: ip4("8.8.8.8"), 225: ip4("203.0.113.9"), 226: ip4("8.8.4.4"), 227: 40001,
           228: 53, 230: 4, 281: ip6("2001:db8::99")}
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [rec])),
                                 EXP, T0_MS)])
    f = res.flows
    assert f["post_nat_src_addr"][0] == mapped("203.0.113.9")  # IPv4 post-NAT wins over IPv6 (rank)
    assert f["post_nat_dst_addr"][0] == mapped("8.8.4.4")
    assert (f["post_nat_src_port"][0], f["post_nat_dst_port"][0], f["nat_event"][0]) == (40001, 53, 4)


def test_total_counters_used_when_no_delta():
    fields = [(8, 4), (85, 8), (86, 8)]
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True),
                                       data_set(256, fields, [{8: ip4("10.0.0.1"), 85: 9, 86: 2}])), EXP, T0_MS)])
    assert (res.flows["raw_bytes"][0], res.flows["raw_packets"][0]) == (9, 2)


def test_options_records_are_not_flows():
    opts = options_template_set(400, [(1, 4)], [(34, 4), (35, 1)], ipfix=False)  # v9 scope "System"
    odata = data_set(400, [(1, 4), (34, 4), (35, 1)], [{1: 0, 34: 10, 35: 1}], pad=3)
    res = FlowDecoder().decode([(v9(opts, odata), EXP, T0_MS)])
    assert res.n_flows == 0 and not res.errors and res.records[(EXP, 9)] == 0


def test_many_datagrams_one_group_columns_match_per_datagram_decode():
    dgs = [(v9(template_set({256: V4_FIELDS}, ipfix=False)), EXP, T0_MS)]
    dgs += [(v9(data_set(256, V4_FIELDS, [v4_record(j) for j in range(i % 5 + 1)]), seq=i + 1), EXP, T0_MS + i)
            for i in range(40)]
    batched = FlowDecoder().decode(dgs)
    one = FlowDecoder()
    singles = [one.decode([d]) for d in dgs]
    for name, col in batched.flows.items():
        assert np.array_equal(col, np.concatenate([s.flows[name] for s in singles])), name


def test_columns_are_writable_native_and_independent():
    fields = [(1, 8)]  # one field: the column could be a view of the datagram bytes
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [{1: 5}] * 3)),
                                 EXP, T0_MS)])
    for name, col in res.flows.items():
        assert col.flags.writeable and col.flags.c_contiguous and col.dtype.isnative, name
    res.flows["bytes"][0] = 99
    assert res.flows["raw_bytes"].tolist() == [5, 5, 5]


def test_event_time_only_records_use_observation_time():
    fields = [(8, 4), (225, 4), (227, 2), (230, 1), (323, 8)]
    rec = {8: ip4("100.64.0.1"), 225: ip4("203.0.113.1"), 227: 1024, 230: 1, 323: T0_MS - 77}
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, [rec])),
                                 EXP, T0_MS)])
    assert (res.flows["flow_start"][0], res.flows["flow_end"][0]) == (T0_MS - 77, T0_MS - 77)
    assert res.flows["nat_event"][0] == 1


def test_no_time_field_uses_the_export_time():
    fields = [(8, 4), (1, 4)]
    res = FlowDecoder().decode([(v9(template_set({256: fields}, ipfix=False), data_set(256, fields, [{1: 1}]),
                                    export_ms=T0_MS + 5000), EXP, T0_MS + 5100)])
    assert (res.flows["flow_start"][0], res.flows["flow_end"][0]) == (T0_MS + 5000, T0_MS + 5000)


def test_dual_stack_template_uses_the_family_that_is_set():
    fields = [(8, 4), (27, 16), (12, 4), (28, 16), (1, 4)]
    recs = [{8: ip4("10.0.0.1"), 12: ip4("10.0.0.2"), 1: 1},
            {27: ip6("2001:db8::1"), 28: ip6("2001:db8::2"), 1: 2}]
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True), data_set(256, fields, recs)),
                                 EXP, T0_MS)])
    assert res.flows["src_addr"].tolist() == [mapped("10.0.0.1"), ip6("2001:db8::1")]
    assert res.flows["dst_addr"].tolist() == [mapped("10.0.0.2"), ip6("2001:db8::2")]
