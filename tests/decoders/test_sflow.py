"""The sFlow v5 decoder against the exporter simulator's truth: every record type, truncation, bad input, limits,
loss accounting (datagram and sample sequence numbers, sample pools, drops) and the interface counters table."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bench.sflow import CounterSample, FlowSample, Gateway, Packet, SflowAgent, bulk_datagrams, expected_flow
from decoders.netflow.decoder import FlowDecoder
from decoders.sampling import SamplingPolicy
from decoders.schema import FLOWS
from decoders.sflow import REASONS, SFLOW_VERSION, is_sflow
from decoders.sflow.decoder import SflowDecoder, SflowLimits
from decoders.sflow.tables import INTERFACE_COUNTERS

EXPORTER = "198.51.100.7"
T0 = 1_764_000_000_000
EXTRAS = ("agent", "sample_sequence", "source_id_type", "source_id_index", "vlan", "src_vlan", "dst_vlan",
          "src_peer_as", "next_hop_as", "local_pref", "communities")


def rows(result) -> list[dict]:
    """The decoded flows (and extras) as one dict per row, addresses as 16 bytes."""
    out = []
    for i in range(result.n_flows):
        row = {}
        for name, col in [*result.flows.items(), *result.extras.items()]:
            v = col[i]
            row[name] = bytes(v).ljust(16, b"\0") if col.dtype.kind == "S" else int(v)
        out.append(row)
    return out


def check(samples: list[FlowSample], agent: SflowAgent | None = None, **kw) -> list[dict]:
    """Encode ``samples`` in one datagram, decode it, compare every row with the simulator's expectation."""
    agent = agent or SflowAgent("192.0.2.1", sub_agent=3)
    d = agent.datagram(samples)
    res = SflowDecoder(**kw).decode([(d, EXPORTER, T0)])
    assert not res.errors, res.errors
    got = rows(res)
    want = [expected_flow(s, EXPORTER, T0, agent.agent, agent.sub_agent) for s in samples]
    assert len(got) == len(want)
    for g, e in zip(got, want, strict=True):
        assert {k: g[k] for k in e} == e
    return got


TCP = Packet("10.1.2.3", "203.0.113.9", 6, 40000, 443, tcp_flags=0x12, tos=0x28, payload=100)
UDP6 = Packet("2001:db8::1", "2001:db8:1::2", 17, 5353, 53, tos=0x40, payload=30)


def test_is_sflow_tells_sflow_from_netflow_and_ipfix() -> None:
    assert is_sflow(SflowAgent().datagram([]))
    assert is_sflow(b"\0\0\0\4rest")  # sFlow v4: the sFlow decoder counts it
    for version in (5, 9, 10):
        assert not is_sflow(struct.pack(">HH", version, 1) + bytes(20))
    assert not is_sflow(b"") and not is_sflow(b"\0")


@pytest.mark.slow
@pytest.mark.parametrize("expanded", [False, True])
def test_flow_sample_with_every_record(expanded: bool) -> None:
    gw = Gateway("192.0.2.254", 64500, 64501, 64502, ((2, (64510, 64511)), (1, (64520, 64521))), (0xFDE80001, 7),
                 250)
    s = FlowSample(TCP, sequence=9, source_type=0, source_index=17, sampling_rate=512, sample_pool=5120, drops=3,
                   input=17, output=21, expanded=expanded, sampled_ip=True, sampled_ethernet=True,
                   switch=(100, 1, 200, 2), router=("192.0.2.253", 24, 16), gateway=gw,
                   unknown=[(1004, b"\0\0\0\0")])
    [row] = check([s])
    assert row["bytes"] == row["raw_bytes"] * 512 and row["packets"] == 512 and row["sampling_rate"] == 512
    assert row["dst_as"] == 64521 and row["next_hop_as"] == 64510 and row["local_pref"] == 250
    assert row["next_hop"] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 253])  # router's, not the gateway's
    assert row["version"] == SFLOW_VERSION and row["observation_domain"] == 3


def test_gateway_next_hop_and_own_as_when_no_router_record_and_no_path() -> None:
    s = FlowSample(TCP, gateway=Gateway("2001:db8::fe", 64500, 0, 0))
    [row] = check([s])
    assert row["dst_as"] == 64500


@pytest.mark.parametrize("packet", [
    TCP, UDP6,
    Packet("10.0.0.1", "10.0.0.2", 1, icmp_type=8, icmp_code=0),
    Packet("2001:db8::1", "2001:db8::2", 58, icmp_type=128, icmp_code=0),
    Packet("10.0.0.1", "10.0.0.2", 6, 1, 2, vlans=(42,)),
    Packet("10.0.0.1", "10.0.0.2", 17, 1, 2, vlans=(100, 200)),  # QinQ
    Packet("10.0.0.1", "10.0.0.2", 17, 1, 2, vlans=(100, 200, 300)),
    Packet("10.0.0.1", "10.0.0.2", 6, 1, 2, mpls=(16, 17, 18)),
    Packet("2001:db8::1", "2001:db8::2", 6, 1, 2, mpls=(16,), vlans=(7,)),
    Packet("2001:db8::1", "2001:db8::2", 6, 1, 2, tcp_flags=2, ipv6_ext=(0, 43, 60, 51)),
    Packet("2001:db8::1", "2001:db8::2", 17, 1, 2, ipv6_ext=(44,)),  # first fragment: ports present
    Packet("2001:db8::1", "2001:db8::2", 17, 1, 2, ipv6_ext=(0, 44), fragment_offset=100),  # later fragment
    Packet("10.0.0.1", "10.0.0.2", 17, 1, 2, fragment_offset=185),
    Packet("10.0.0.1", "10.0.0.2", 6, 1, 2, ip_options=3, tcp_flags=0x11),
    Packet("10.0.0.1", "10.0.0.2", 132, 9, 10),  # SCTP
    Packet("10.0.0.1", "10.0.0.2", 47),  # GRE: no ports
], ids=lambda p: f"{p.protocol}-v{6 if p.ipv6 else 4}-vl{len(p.vlans)}-mpls{len(p.mpls)}-ext{len(p.ipv6_ext)}"
                 f"-frag{p.fragment_offset}")
def test_raw_header_layers(packet: Packet) -> None:
    for proto in (1, 12 if packet.ipv6 else 11):
        check([FlowSample(packet, header_protocol=proto, header_bytes=256)])


def test_raw_header_cut_at_every_length() -> None:
    """A header cut anywhere (inside MAC, tag, label, IP, extension or transport header) gives the fields it still
    holds and zeros for the rest; never an error. With a sampled IP record beside it, that record fills in when the
    cut header holds no IP header."""
    packets = [Packet("10.0.0.1", "10.0.0.2", 6, 1000, 2000, tcp_flags=0x18, tos=4, vlans=(5, 6), mpls=(16, 17)),
               Packet("2001:db8::1", "2001:db8::2", 17, 1000, 2000, tos=9, vlans=(5,), ipv6_ext=(0, 60, 44)),
               Packet("10.0.0.1", "10.0.0.2", 1, icmp_type=3, icmp_code=1)]
    for p in packets:
        full = len(p.frame())
        samples = [FlowSample(p, header_bytes=n, sampled_ip=n % 2 == 0) for n in range(0, full + 1)]
        for i in range(0, len(samples), 50):
            check(samples[i:i + 50])


def test_sampled_ip_and_ethernet_records_alone() -> None:
    check([FlowSample(TCP, raw_header=False, sampled_ip=True),
           FlowSample(UDP6, raw_header=False, sampled_ip=True, sampled_ethernet=True),
           FlowSample(TCP, raw_header=False, sampled_ethernet=True),
           FlowSample(None)])


def test_interface_formats_and_unknown_interface() -> None:
    check([FlowSample(TCP, input=5, output=7, output_format=1),  # discarded
           FlowSample(TCP, input=0x3FFFFFFF, output=3, output_format=2),  # unknown in, multiple out
           FlowSample(TCP, expanded=True, input=0x12345678 & 0x3FFFFFFF, output=0x3FFFFFFF)])


def test_ipv6_agent_and_unknown_agent_address() -> None:
    check([FlowSample(TCP)], SflowAgent("2001:db8::a", 1))
    check([FlowSample(TCP)], SflowAgent(None, 2))


def test_unknown_samples_and_records_are_skipped_and_counted() -> None:
    agent = SflowAgent()
    odd_sample = struct.pack(">II", (4300 << 12) | 5, 8) + bytes(8)  # another enterprise's sample
    d = agent.datagram([FlowSample(TCP, unknown=[((9 << 12) | 1, b"x" * 12), (1004, b"")]), odd_sample,
                        CounterSample(generic={"if_index": 3}, unknown=[(1001, bytes(40))]),
                        CounterSample(source_index=9, unknown=[(2003, bytes(68))])])  # host counters only
    res = SflowDecoder().decode([(d, EXPORTER, T0)])
    assert not res.errors
    assert res.n_flows == 1 and res.n_counters == 1  # no row for the sample without interface counters
    assert res.samples == {(EXPORTER, "flow"): 1, (EXPORTER, "counter"): 2}
    assert res.skipped == {(EXPORTER, "sample"): 1, (EXPORTER, "flow_record"): 2, (EXPORTER, "counter_record"): 2}


def test_counter_samples_into_interface_counters() -> None:
    agent = SflowAgent("192.0.2.9", 4)
    generic = {"if_index": 12, "if_type": 6, "if_speed": 25 * 10**9, "if_direction": 1, "if_status": 3,
               "in_octets": 2**40 + 5, "in_ucast_pkts": 4_000_000_000, "in_multicast_pkts": 7, "in_broadcast_pkts": 8,
               "in_discards": 9, "in_errors": 10, "in_unknown_protos": 11, "out_octets": 2**63 + 1,
               "out_ucast_pkts": 12, "out_multicast_pkts": 13, "out_broadcast_pkts": 14, "out_discards": 15,
               "out_errors": 16, "promiscuous_mode": 2}
    ethernet = {name: i + 100 for i, name in enumerate(INTERFACE_COUNTERS.column_names) if name.startswith("dot3")}
    samples = [CounterSample(5, 0, 12, generic, ethernet), CounterSample(6, 0, 13, None, {"dot3_fcs_errors": 1},
                                                                         expanded=True),
               CounterSample(7, 0, 14, {"if_index": 14}, None)]
    d = agent.datagram(samples, uptime_ms=123_456)
    res = SflowDecoder().decode([(d, EXPORTER, T0)])
    assert not res.errors and res.n_flows == 0 and res.n_counters == 3
    c = res.interface_counters
    assert set(c) == set(INTERFACE_COUNTERS.column_names) - {"batch_id"}
    for name, value in generic.items():
        assert int(c[name][0]) == value, name
    for name, value in ethernet.items():
        assert int(c[name][0]) == value, name
    assert c["counter_records"].tolist() == [3, 2, 1]
    assert c["if_index"].tolist() == [12, 13, 14]  # no generic record: the data source index
    assert c["sequence"].tolist() == [5, 6, 7] and c["sub_agent_id"].tolist() == [4, 4, 4]
    assert c["agent_uptime_ms"].tolist() == [123_456] * 3 and c["time_received"].tolist() == [T0] * 3
    assert bytes(c["agent"][0])[-4:] == bytes([192, 0, 2, 9])
    INTERFACE_COUNTERS.to_arrow(c)  # the columns fit the table


def test_flows_columns_fit_the_table_and_match_netflow_shape() -> None:
    res = SflowDecoder().decode([(d, EXPORTER, T0 + i) for i, d in enumerate(bulk_datagrams(20, counters_every=3))])
    assert res.n_flows == 140 and not res.errors
    nf = FlowDecoder().decode([])
    assert list(res.flows) == list(nf.flows)
    assert all(res.flows[k].dtype == nf.flows[k].dtype for k in nf.flows)
    assert FLOWS.to_arrow(res.flows).num_rows == 140
    assert res.records == {(EXPORTER, SFLOW_VERSION): 140}
    assert res.datagrams == {(EXPORTER, SFLOW_VERSION): 20}
    assert res.samples == {(EXPORTER, "flow"): 140, (EXPORTER, "counter"): 7}
    assert int(res.flows["packets"].sum()) == 140 * 1000


def test_sampling_policy_override_and_default_for_rate_zero() -> None:
    agent = SflowAgent()
    d = agent.datagram([FlowSample(TCP, sampling_rate=0), FlowSample(TCP, sampling_rate=100)])
    res = SflowDecoder(sampling=SamplingPolicy(default_rate=64)).decode([(d, EXPORTER, T0)])
    assert res.flows["sampling_rate"].tolist() == [64, 100]
    over = SflowDecoder(sampling=SamplingPolicy(rules=[(EXPORTER + "/32", 10, True)])).decode([(d, EXPORTER, T0)])
    assert over.flows["sampling_rate"].tolist() == [10, 10]
    assert over.flows["bytes"].tolist() == (over.flows["raw_bytes"] * 10).tolist()


# ------------------------------------------------------------------------------------------------- bad input
def _good() -> bytes:
    return SflowAgent().datagram([FlowSample(TCP, sampled_ip=True, switch=(1, 0, 2, 0)), CounterSample(generic={}),
                                  FlowSample(UDP6, expanded=True)])


def test_truncated_datagrams_keep_the_samples_before_the_cut() -> None:
    d = _good()
    full = SflowDecoder().decode([(d, EXPORTER, T0)])
    assert full.n_flows == 2 and full.n_counters == 1 and not full.errors
    for cut in range(len(d)):
        res = SflowDecoder().decode([(d[:cut], EXPORTER, T0), (d, EXPORTER, T0)])
        assert not any(r == "internal_error" for _, r in res.errors)
        assert sum(res.errors.values()) == 1, (cut, res.errors)
        assert res.n_flows >= 2 and res.n_flows <= 4  # the whole datagram after it is always decoded


def test_bad_structures_cost_only_themselves() -> None:
    agent = SflowAgent()
    good = FlowSample(TCP).encode()
    short_sample = struct.pack(">II", 1, 8) + bytes(8)  # flow sample shorter than its 32 fixed bytes
    overrun = bytearray(FlowSample(TCP).encode())
    struct.pack_into(">I", overrun, 8 + 28, 5)  # announces 5 records, holds 1: the records overrun the sample
    short_record = FlowSample(TCP, unknown=[]).encode()
    short_switch = FlowSample(TCP, switch=(1, 0, 2, 0)).encode()
    sw = bytearray(short_switch)
    # extended switch record cut to 8 bytes: record length 8, sample length fixed up
    i = sw.rfind(struct.pack(">II", 1001, 16))
    sw = sw[:i] + struct.pack(">II", 1001, 8) + sw[i + 8:i + 16]
    struct.pack_into(">I", sw, 4, len(sw) - 8)
    hdr_too_long = bytearray(FlowSample(TCP).encode())
    struct.pack_into(">I", hdr_too_long, 8 + 32 + 8 + 12, 4000)  # header_length beyond its record
    d = agent.datagram([good, short_sample, bytes(overrun), short_record, bytes(sw), bytes(hdr_too_long), good])
    res = SflowDecoder().decode([(d, EXPORTER, T0)])
    assert res.errors == {(EXPORTER, "sflow_bad_sample"): 2, (EXPORTER, "bad_record"): 2}
    assert res.n_flows == 5  # the good ones, the one without the short switch record, the one without the header
    bad_version = b"\0\0\0\4" + d[4:]
    bad_agent = d[:4] + b"\0\0\0\7" + d[8:]
    trailing = d + b"\0\0\0\0"
    res = SflowDecoder().decode([(bad_version, EXPORTER, T0), (bad_agent, EXPORTER, T0), (trailing, EXPORTER, T0)])
    assert res.errors == {(EXPORTER, "unknown_version"): 1, (EXPORTER, "sflow_bad_address"): 1,
                          (EXPORTER, "sflow_bad_sample"): 2, (EXPORTER, "bad_record"): 2,
                          (EXPORTER, "length_mismatch"): 1}
    assert res.datagrams == {(EXPORTER, 0): 1, (EXPORTER, SFLOW_VERSION): 2}
    assert set(r for _, r in res.errors) <= set(REASONS)


def test_limits_bound_samples_records_agents_sources_and_exporters() -> None:
    lim = SflowLimits(max_exporters=2, max_agents_per_exporter=2, max_sources_per_exporter=3,
                      max_samples_per_datagram=4, max_records_per_sample=2)
    dec = SflowDecoder(lim)
    many = SflowAgent().datagram([FlowSample(TCP, source_index=i) for i in range(6)])
    recs = SflowAgent().datagram([FlowSample(TCP, switch=(1, 0, 2, 0), router=("10.0.0.1", 8, 8))])
    res = dec.decode([(many, EXPORTER, T0), (recs, EXPORTER, T0)])
    assert res.limit_hits[(EXPORTER, "max_samples_per_datagram")] == 1
    assert res.limit_hits[(EXPORTER, "max_records_per_sample")] == 1
    assert res.limit_hits[(EXPORTER, "max_sources_per_exporter")] == 1  # sources 0-3 walked, 3 tracked
    assert res.n_flows == 5 and res.flows["src_mask"].tolist()[-1] == 0  # the router record was not walked
    agents = [SflowAgent(f"192.0.2.{i}").datagram([FlowSample(TCP)]) for i in range(4)]
    res = dec.decode([(d, EXPORTER, T0) for d in agents])
    assert res.n_flows == 4 and res.limit_hits[(EXPORTER, "max_agents_per_exporter")] == 2  # .1 was known
    assert dec.agents_known() == {EXPORTER: 2}
    res = dec.decode([(recs, "192.0.2.77", T0), (recs, "192.0.2.78", T0)])
    assert res.limit_hits[("192.0.2.78", "max_exporters")] == 1
    assert not [key for key in res.limit_hits if key[0] == "192.0.2.78" and key[1] != "max_exporters"]
    assert res.n_flows == 1 and res.datagrams == {("192.0.2.77", SFLOW_VERSION): 1, ("192.0.2.78", 0): 1}
    assert len(dec.exporters) == 2
    assert dec.expire(T0 + lim.exporter_idle_ms + 1) == {(EXPORTER, "exporter_expired"): 1,
                                                           ("192.0.2.77", "exporter_expired"): 1}
    assert dec.exporters == {} and dec.datagram_sequences.states == {} and dec.sample_sequences.states == {}


# ------------------------------------------------------------------------------------------------- loss accounting
def test_datagram_and_sample_sequence_gaps_pools_and_drops() -> None:
    agent = SflowAgent("192.0.2.1")
    datagrams = []
    drops = {1: 0, 2: 0}
    for i in range(100):  # gaps count as lost once 32 later datagrams did not fill them (reordering)
        samples = []
        for src in (1, 2):
            s = agent.number(FlowSample(TCP, source_index=src, sampling_rate=100))
            drops[src] += 1 if i % 10 == 0 else 0
            s.drops = drops[src]
            samples.append(s)
        samples.append(agent.number(CounterSample(source_index=1, generic={})))
        datagrams.append(agent.datagram(samples))
    lost = {5, 6, 20}  # three datagrams lost: 3 datagrams, 6 flow samples, 3 counter samples
    kept = [(d, EXPORTER, T0 + i) for i, d in enumerate(datagrams) if i not in lost]
    dec = SflowDecoder()
    res = dec.decode(kept[:10])
    res2 = dec.decode(kept[10:])
    assert res.sequence_lost[EXPORTER] + res2.sequence_lost[EXPORTER] == 3
    assert res.samples_lost[EXPORTER] + res2.samples_lost[EXPORTER] == 9
    # the pools grew by the rate per sample sent, lost ones included, after the first of each source
    assert res.sample_pool[EXPORTER] + res2.sample_pool[EXPORTER] == 2 * 99 * 100
    assert res.agent_drops[EXPORTER] + res2.agent_drops[EXPORTER] == 2 * 9  # the first samples set the baseline
    # the same again, one datagram at a time: the same totals
    one = SflowDecoder()
    totals = [one.decode([k]) for k in kept]
    assert sum(r.sequence_lost[EXPORTER] for r in totals) == 3
    assert sum(r.samples_lost[EXPORTER] for r in totals) == 9


def test_agent_restart_is_a_reset_not_a_loss() -> None:
    a = SflowAgent()
    before = [a.datagram([a.number(FlowSample(TCP))]) for _ in range(50)]
    b = SflowAgent()  # the agent restarted: sequences and pools from 1 again
    after = [b.datagram([b.number(FlowSample(TCP))]) for _ in range(50)]
    dec = SflowDecoder()
    res = dec.decode([(d, EXPORTER, T0) for d in before + after])
    assert res.sequence_lost[EXPORTER] == 0 and res.samples_lost[EXPORTER] == 0
    assert res.sequence_resets[EXPORTER] == 1
    assert res.sample_pool[EXPORTER] == 98 * 1000  # the step back of the pool is a restart, not 4 billion packets


def test_batches_of_many_exporters_and_agents_decode_like_one_at_a_time() -> None:
    items = []
    for e in range(3):
        for sub in range(2):
            ds = bulk_datagrams(10, 3, seed=e * 10 + sub, agent=f"192.0.2.{e}")
            items += [(d, f"203.0.113.{e}", T0 + i) for i, d in enumerate(ds)]
    items.sort(key=lambda x: x[2])
    batch = SflowDecoder().decode(items)
    one = SflowDecoder()
    singles = [one.decode([it]) for it in items]
    for name in batch.flows:
        assert np.array_equal(batch.flows[name], np.concatenate([s.flows[name] for s in singles])), name
    assert batch.n_flows == 180 and not batch.errors


def test_empty_batch_and_garbage() -> None:
    dec = SflowDecoder()
    res = dec.decode([])
    assert res.n_flows == 0 and set(res.flows) == {c.name for c in FLOWS.columns} - {"batch_id"}
    res = dec.decode([(b"", EXPORTER, T0), (b"\0\0", EXPORTER, T0), (bytes(3), EXPORTER, T0)])
    assert res.errors == {(EXPORTER, "truncated"): 3} and res.datagrams == {(EXPORTER, 0): 3}


def test_results_own_their_columns_across_batches() -> None:
    """The decoder reuses its working memory: a result must not change when the next batch is decoded."""
    dec = SflowDecoder()
    first = dec.decode([(d, EXPORTER, T0) for d in bulk_datagrams(5, seed=1)])
    kept = {name: col.copy() for name, col in [*first.flows.items(), *first.extras.items()]}
    dec.decode([(d, EXPORTER, T0 + 1) for d in bulk_datagrams(5, seed=2, ipv6=True)])
    for name, col in [*first.flows.items(), *first.extras.items()]:
        assert np.array_equal(col, kept[name]), name
