"""Hypothesis properties of the sFlow decoder: what the simulator encodes decodes back to its truth (round trip), and
any bytes (random, or valid datagrams mutated and cut) only ever give documented error reasons, never an internal
error, with every datagram counted once and columns of equal length. A compiled-kernel run with numba's bounds
checking on confirms that no input makes the walks read outside their buffers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.sflow import CounterSample, FlowSample, Gateway, Packet, SflowAgent, expected_flow
from decoders.sflow import REASONS
from decoders.sflow.decoder import SflowDecoder, SflowLimits

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = "192.0.2.9"
T0 = 1_764_000_000_000
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8, u16, u32 = st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)
v4 = st.integers(0, 2**32 - 1).map(lambda i: ".".join(str(i >> s & 255) for s in (24, 16, 8, 0)))
v6 = st.integers(1, 2**128 - 1).map(lambda i: str(__import__("ipaddress").IPv6Address(i)))


@st.composite
def packets(draw) -> Packet:
    ipv6 = draw(st.booleans())
    addr = v6 if ipv6 else v4
    proto = draw(st.sampled_from([6, 17, 132, 1 if not ipv6 else 58, 47]))
    return Packet(
        draw(addr), draw(addr), proto, draw(u16), draw(u16), tcp_flags=draw(u8), tos=draw(u8),
        icmp_type=draw(u8), icmp_code=draw(u8), vlans=tuple(draw(st.lists(st.integers(0, 4095), max_size=3))),
        mpls=tuple(draw(st.lists(st.integers(0, 2**20 - 1), max_size=3))),
        ipv6_ext=tuple(draw(st.lists(st.sampled_from([0, 43, 60, 51]), max_size=3))) if ipv6 else (),
        ip_options=0 if ipv6 else draw(st.integers(0, 10)), payload=draw(st.integers(0, 200)))


@st.composite
def flow_samples(draw) -> FlowSample:
    p = draw(st.none() | packets())
    gw = draw(st.none() | st.builds(
        Gateway, v4 | v6, u32, u32, u32,
        st.lists(st.tuples(st.sampled_from([1, 2]), st.lists(u32, max_size=4).map(tuple)), max_size=3).map(tuple),
        st.lists(u32, max_size=4).map(tuple), u32))
    ipv6 = p is not None and p.ipv6
    return FlowSample(
        p, sequence=draw(u32), source_type=draw(st.integers(0, 2)), source_index=draw(st.integers(0, 2**24 - 1)),
        sampling_rate=draw(st.integers(1, 2**32 - 1)), sample_pool=draw(u32), drops=draw(u32),
        input=draw(st.integers(0, 2**30 - 1)), output=draw(st.integers(0, 2**30 - 1)),
        input_format=draw(st.integers(0, 2)), output_format=draw(st.integers(0, 2)), expanded=draw(st.booleans()),
        raw_header=draw(st.booleans()), header_protocol=draw(st.sampled_from([1, 12 if ipv6 else 11])),
        header_bytes=draw(st.integers(0, 200)), stripped=draw(st.integers(0, 8)), sampled_ip=draw(st.booleans()),
        sampled_ethernet=draw(st.booleans()),
        switch=draw(st.none() | st.tuples(st.integers(0, 4095), st.integers(0, 7), st.integers(0, 4095),
                                          st.integers(0, 7))),
        router=draw(st.none() | st.tuples(v4 | v6, st.integers(0, 128), st.integers(0, 128))), gateway=gw,
        unknown=draw(st.lists(st.tuples(st.integers(5, 999) | st.integers(4096, 2**20),
                                        st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))), max_size=2)))


@pytest.mark.slow
@SETTINGS
@given(st.lists(flow_samples(), min_size=1, max_size=6), st.none() | v4 | v6, u32)
def test_round_trip(samples: list[FlowSample], agent_addr: str | None, sub: int) -> None:
    agent = SflowAgent(agent_addr, sub)
    d = agent.datagram(samples)
    res = SflowDecoder().decode([(d, EXPORTER, T0)])
    assert not res.errors and res.n_flows == len(samples)
    for i, s in enumerate(samples):
        want = expected_flow(s, EXPORTER, T0, agent_addr, sub)
        got = {}
        for k in want:
            col = res.flows[k] if k in res.flows else res.extras[k]
            got[k] = bytes(col[i]).ljust(16, b"\0") if col.dtype.kind == "S" else int(col[i])
        assert got == want, i


@SETTINGS
@given(st.lists(st.builds(CounterSample, u32, st.integers(0, 2), st.integers(0, 2**24 - 1),
                          st.none() | st.fixed_dictionaries({"if_index": u32, "in_octets": st.integers(0, 2**64 - 1),
                                                             "if_speed": st.integers(0, 2**64 - 1), "in_errors": u32}),
                          st.none() | st.fixed_dictionaries({"dot3_fcs_errors": u32}), st.booleans()),
                min_size=1, max_size=5))
def test_counter_round_trip(samples: list[CounterSample]) -> None:
    res = SflowDecoder().decode([(SflowAgent().datagram(samples), EXPORTER, T0)])
    kept = [s for s in samples if s.generic is not None or s.ethernet is not None]  # rows: interface counters only
    assert not res.errors and res.n_counters == len(kept)
    assert res.samples[(EXPORTER, "counter")] == len(samples)
    c = res.interface_counters
    for i, s in enumerate(kept):
        assert int(c["sequence"][i]) == s.sequence and int(c["source_id_index"][i]) == s.source_index
        for name, value in {**(s.generic or {}), **(s.ethernet or {})}.items():
            assert int(c[name][i]) == value
        if s.generic is None:
            assert int(c["if_index"][i]) == s.source_index


def _check(res, n: int) -> None:
    assert not any(r == "internal_error" for _, r in res.errors), res.errors
    assert {r for _, r in res.errors} <= set(REASONS)
    assert sum(res.datagrams.values()) == n
    assert res.n_flows == sum(res.records.values())
    assert {len(v) for v in [*res.flows.values(), *res.extras.values()]} <= {res.n_flows}
    assert {len(v) for v in res.interface_counters.values()} <= {res.n_counters}


_DEC = SflowDecoder(SflowLimits(max_agents_per_exporter=4, max_sources_per_exporter=8))


@SETTINGS
@given(st.lists(st.binary(max_size=600) | st.binary(max_size=40).map(lambda b: b"\0\0\0\5" + b), max_size=8))
def test_random_bytes_are_counted_never_crash(datagrams: list[bytes]) -> None:
    _check(_DEC.decode([(d, EXPORTER, T0) for d in datagrams]), len(datagrams))
    assert _DEC.agents_known().get(EXPORTER, 0) <= 4


@SETTINGS
@given(st.lists(flow_samples(), min_size=1, max_size=4), st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=6),
       st.integers(0, 10_000))
@pytest.mark.slow
def test_mutated_datagrams_are_counted_never_crash(samples, flips, cut) -> None:
    d = bytearray(SflowAgent().datagram([*samples, CounterSample(generic={"if_index": 1}, ethernet={})]))
    for pos, value in flips:
        d[pos % len(d)] = value
    mutated = bytes(d[:max(cut % (len(d) + 1), 0)])
    _check(SflowDecoder().decode([(mutated, EXPORTER, T0), (bytes(d), EXPORTER, T0)]), 2)


@pytest.mark.slow
def test_kernels_stay_in_bounds_with_numba_bounds_checking(tmp_path: Path) -> None:
    """Random and mutated input through kernels compiled with bounds checking (an IndexError would show as an
    internal_error): the explicit checks of the walks, not the zero padding, keep every read inside the buffer."""
    code = r"""
import random, sys
from bench.sflow import SflowAgent, bulk_datagrams, FlowSample, CounterSample, Packet
from decoders.sflow.decoder import SflowDecoder
from decoders.sflow import kernel
kernel.PAD = 0  # no padding: a read past the last datagram must be caught by the checks, or raise
rng = random.Random(7)
good = bulk_datagrams(4, 5, counters_every=2) + [SflowAgent("2001:db8::1").datagram([
    FlowSample(Packet("2001:db8::1", "2001:db8::2", 6, 1, 2, ipv6_ext=(0, 44, 51), mpls=(3,), vlans=(1, 2)),
               sampled_ip=True, sampled_ethernet=True, switch=(1, 2, 3, 4), router=("10.0.0.1", 1, 2)),
    CounterSample(generic={}, ethernet={})])]
dec = SflowDecoder()
for i in range(3000):
    d = bytearray(rng.choice(good))
    for _ in range(rng.randrange(0, 6)):
        d[rng.randrange(len(d))] = rng.randrange(256)
    d = bytes(d[:rng.randrange(len(d) + 1)]) if rng.random() < 0.5 else bytes(d)
    res = dec.decode([(d, "192.0.2.1", i)])
    bad = [r for _, r in res.errors if r == "internal_error"]
    if bad:
        sys.exit(f"internal_error on {d.hex()}")
print("ok")
"""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-2000:] + proc.stderr[-3000:]
