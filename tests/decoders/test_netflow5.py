"""NetFlow v5: every field, sysUptime-relative times, header sampling, sequence accounting, length checks."""

import ipaddress

import numpy as np

from decoders.netflow.decoder import FlowDecoder
from decoders.sampling import SamplingPolicy
from decoders.schema import FLOWS
from tests.decoders.packets import T0_MS, mapped, v5

EXP = "192.0.2.10"


def test_every_field_decodes():
    rec = dict(src="10.1.2.3", dst="172.16.0.9", nh="10.0.0.254", in_if=7, out_if=9, packets=12, bytes=3400,
               first=3_600_000 - 5000, last=3_600_000 - 250, sport=5353, dport=53, flags=0x1B, proto=17, tos=0xB8,
               src_as=64512, dst_as=65000, src_mask=24, dst_mask=12)
    res = FlowDecoder().decode([(v5([rec], engine=0x0102, export_ms=T0_MS + 123), EXP, T0_MS + 500)])
    f = res.flows
    assert res.n_flows == 1
    assert set(f) == set(FLOWS.column_names) - {"batch_id"}
    assert f["src_addr"][0] == mapped("10.1.2.3") and f["dst_addr"][0] == mapped("172.16.0.9")
    assert f["next_hop"][0] == mapped("10.0.0.254") and f["exporter"][0] == mapped(EXP)
    assert (f["in_if"][0], f["out_if"][0]) == (7, 9)
    assert (f["raw_packets"][0], f["raw_bytes"][0], f["packets"][0], f["bytes"][0]) == (12, 3400, 12, 3400)
    assert (f["src_port"][0], f["dst_port"][0], f["protocol"][0], f["tcp_flags"][0], f["tos"][0]) == \
        (5353, 53, 17, 0x1B, 0xB8)
    assert (f["src_as"][0], f["dst_as"][0], f["src_mask"][0], f["dst_mask"][0]) == (64512, 65000, 24, 12)
    # header: unix time T0+123 ms at uptime 3,600,000 ms
    assert f["flow_start"][0] == T0_MS + 123 - 5000
    assert f["flow_end"][0] == T0_MS + 123 - 250
    assert f["time_received"][0] == T0_MS + 500
    assert f["observation_domain"][0] == 0x0102 and f["version"][0] == 5
    assert f["sampling_rate"][0] == 1
    assert res.datagrams[(EXP, 5)] == 1 and res.records[(EXP, 5)] == 1 and not res.errors


def test_uptime_wrap_and_flow_ending_after_header():
    # sysUptime wrapped past 2**32 between the flow start and the export
    recs = [dict(first=2**32 - 1000, last=500), dict(first=1000, last=2100)]
    res = FlowDecoder().decode([(v5(recs, uptime=2000), EXP, T0_MS)])
    assert list(res.flows["flow_start"]) == [T0_MS - 3000, T0_MS - 1000]
    assert list(res.flows["flow_end"]) == [T0_MS - 1500, T0_MS + 100]


def test_header_sampling_interval_upscales_and_keeps_raw():
    dg = v5([dict(bytes=100, packets=2)], sampling=(1 << 14) | 100)  # mode 1 (deterministic), 1 in 100
    res = FlowDecoder().decode([(dg, EXP, T0_MS)])
    f = res.flows
    assert (f["sampling_rate"][0], f["bytes"][0], f["packets"][0]) == (100, 10_000, 200)
    assert (f["raw_bytes"][0], f["raw_packets"][0]) == (100, 2)


def test_configured_override_beats_header_and_default_applies_without():
    pol = SamplingPolicy(default_rate=3, rules=[(ipaddress.ip_network("192.0.2.0/24"), 50, True)])
    dec = FlowDecoder(sampling=pol)
    res = dec.decode([(v5([{}], sampling=100), EXP, T0_MS), (v5([{}]), "198.51.100.1", T0_MS)])
    assert list(res.flows["sampling_rate"]) == [50, 3]


def test_many_datagrams_one_batch_keep_their_own_header_times():
    dgs = [(v5([dict(first=3_600_000 - 10)] * 3, export_ms=T0_MS + i * 1000, seq=3 * i), EXP, T0_MS + i)
           for i in range(50)]
    res = FlowDecoder().decode(dgs)
    assert res.n_flows == 150
    assert np.array_equal(res.flows["flow_start"], np.repeat(T0_MS + np.arange(50) * 1000 - 10, 3))
    assert np.array_equal(res.flows["time_received"], np.repeat(T0_MS + np.arange(50), 3))
    assert not res.sequence_lost


def test_sequence_counts_lost_flows():
    dec = FlowDecoder()
    dec.decode([(v5([{}] * 2, seq=0), EXP, T0_MS)])
    dec.decode([(v5([{}] * 2, seq=2), EXP, T0_MS)])
    lost = lost_over(dec, [(v5([{}] * 2, seq=10), EXP, T0_MS)] + [(v5([{}], seq=12 + i), EXP, T0_MS)
                                                                      for i in range(40)])
    assert lost == 6  # flows 4..9 never arrived; counted once the reorder patience ran out


def lost_over(dec, dgs):
    return sum(dec.decode([d]).sequence_lost[EXP] for d in dgs)


def test_truncated_and_padded_datagrams():
    dec = FlowDecoder()
    two = v5([{}, {}])
    res = dec.decode([(two[:-10], EXP, T0_MS), (two + b"\0\0", EXP, T0_MS), (two[:20], EXP, T0_MS)])
    assert res.n_flows == 1 + 2  # the one complete record of the cut datagram, both of the padded one
    assert res.errors[(EXP, "truncated")] == 2 and res.errors[(EXP, "length_mismatch")] == 1
    assert res.datagrams[(EXP, 5)] == 3
