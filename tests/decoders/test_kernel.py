"""The compiled fast path on the shapes it took over from the per-datagram path: v5 datagrams and datagrams of
several data sets, compared with decoding one datagram at a time (tests/decoders/test_fast_path.py's harness)."""

import random

import numpy as np

from decoders.digest import record_context
from decoders.netflow import kernel
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from tests.decoders.packets import T0_MS, data_set, template_set, v5, v9
from tests.decoders.test_fast_path import NARROW, ODD, V6, WIDE, _compare, _record

EXPORTERS = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def _batches(out: list[tuple[bytes, str, int]], rng: random.Random, sizes: list[int]
             ) -> list[list[tuple[bytes, str, int]]]:
    """``out`` cut into consecutive batches of sizes drawn from ``sizes``."""
    batches, i = [], 0
    while i < len(out):
        k = rng.choice(sizes)
        batches.append(out[i:i + k])
        i += k
    return batches


def _v5_traffic(seed: int, n: int = 400) -> list[list[tuple[bytes, str, int]]]:
    rng = random.Random(seed)
    seq = {e: rng.randrange(1 << 32) for e in EXPORTERS}
    out = []
    for i in range(n):
        e = rng.choice(EXPORTERS)
        k = rng.choice([30, 30, 1, 7])
        records = [{"src": f"10.0.{i % 256}.{j}", "bytes": rng.randrange(1 << 32), "packets": rng.randrange(1 << 16),
                    "first": 3_600_000 - rng.randrange(60_000), "src_as": rng.randrange(1 << 16)} for j in range(k)]
        dg = v5(records, seq=seq[e], engine=rng.choice([0, 0x102]), sampling=rng.choice([0, 0, 0x4000 | 100]))
        seq[e] = (seq[e] + k + (5 if rng.random() < 0.02 else 0)) % (1 << 32)
        r = rng.random()
        if r < 0.02:
            dg = dg[:rng.randrange(len(dg))]  # truncated
        elif r < 0.03:
            dg = dg + b"\0" * 5  # longer than its records
        out.append((dg, e, T0_MS + i))
    return _batches(out, rng, [3, 40, 200])


def test_v5_batches_equal_the_per_datagram_path(monkeypatch) -> None:
    for seed in range(4):
        assert _compare(_v5_traffic(seed), monkeypatch=monkeypatch) > 1000


def test_v5_exporters_beyond_the_limit_are_counted_as_one_at_a_time(monkeypatch) -> None:
    _compare(_v5_traffic(9), DecoderLimits(max_exporters=2), monkeypatch)


def _multiset_traffic(seed: int, n: int = 300) -> list[list[tuple[bytes, str, int]]]:
    rng = random.Random(seed)
    layouts = {256: NARROW, 257: V6, 258: WIDE, 259: ODD}
    out = [(v9(template_set(layouts, ipfix=False), seq=0), e, T0_MS) for e in EXPORTERS[:2]]
    seq = dict.fromkeys(EXPORTERS[:2], 1)
    for i in range(n):
        e = rng.choice(EXPORTERS[:2])
        sets, count = [], 0
        for tid in rng.sample(sorted(layouts), rng.choice([1, 2, 2, 3])):
            k = rng.randrange(1, 12)
            sets.append(data_set(tid if rng.random() > 0.02 else 999, layouts[tid],
                                 [_record(layouts[tid], rng) for _ in range(k)], pad=rng.choice([0, 0, 2])))
            count += k
        dg = v9(*sets, seq=seq[e])
        seq[e] += 1
        if rng.random() < 0.02:
            dg = dg[:2] + (count + 1).to_bytes(2, "big") + dg[4:]  # a header count that disagrees
        out.append((dg, e, T0_MS + i))
    return _batches(out, rng, [5, 60, 300])


def test_multiset_batches_equal_the_per_datagram_path(monkeypatch) -> None:
    for seed in range(4):
        assert _compare(_multiset_traffic(seed), monkeypatch=monkeypatch) > 1000


def test_multiset_datagrams_decode_every_set() -> None:
    t = template_set({256: NARROW, 257: V6}, ipfix=False)
    rng = random.Random(3)
    batch = [(v9(t, seq=0), "192.0.2.1", T0_MS)]
    for i in range(10):
        a = [_record(NARROW, rng) for _ in range(3)]
        b = [_record(V6, rng) for _ in range(2)]
        batch.append((v9(data_set(256, NARROW, a), data_set(257, V6, b), seq=i + 1), "192.0.2.1", T0_MS))
    res = FlowDecoder().decode(batch)
    assert res.n_flows == 50 and not res.errors and not res.sequence_lost
    v4_rows = res.flows["src_addr"][:30]
    assert all(bytes(x)[:12] == b"\0" * 10 + b"\xff\xff" for x in v4_rows)  # IPv4 group first, then IPv6
    assert res.records[("192.0.2.1", 9)] == 50


def test_scan_marks_only_plain_data_datagrams() -> None:
    t = template_set({256: NARROW}, ipfix=False)
    d = data_set(256, NARROW, [_record(NARROW, random.Random(1))])
    payloads = [v9(t), v9(d), v9(d, d), v5([{}]), v5([{}], count=2), b"\0\x09", v9(d)[:-1]]
    lens = np.array([len(p) for p in payloads], dtype=np.int64)
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    D = np.zeros((len(payloads), kernel.ND), dtype=np.int64)
    S = np.zeros((1, kernel.NS), dtype=np.int64)  # too small: the kernel says how many rows it needs
    need = kernel.scan(buf, np.cumsum(lens) - lens, lens, D, S)
    assert need == 4
    S = np.zeros((need, kernel.NS), dtype=np.int64)
    kernel.scan(buf, np.cumsum(lens) - lens, lens, D, S)
    assert D[:, kernel.D_KIND].tolist() == [0, 9, 9, 5, 0, 0, 0]
    assert D[:, kernel.D_NSETS].tolist() == [0, 1, 2, 1, 0, 0, 0]
    assert S[:, kernel.S_ID].tolist() == [256, 256, 256, 0]


def test_warm_up_compiles_what_real_batches_use() -> None:
    """Batches joined into the reused buffer or into bytes, blocks or single datagrams: one compiled version of
    each kernel, the one warm_up made (a further one would compile on the event loop)."""
    kernel.warm_up()
    kernels = (kernel.scan, kernel.gather, kernel.fill_records, record_context)
    before = {f: list(f.signatures) for f in kernels}
    for batches in (_multiset_traffic(1, 60), _v5_traffic(2, 60)):
        dec = FlowDecoder()
        for batch in batches:
            dec.decode(batch)
    big = FlowDecoder()
    big._joiner.keep_bytes = 0  # every batch joined into bytes of its own
    for batch in _multiset_traffic(2, 60):
        big.decode(batch)
    assert {f: list(f.signatures) for f in kernels} == before
    assert all(len(s) == 1 for s in before.values())


def test_fill_records_times_rates_and_counters_are_those_of_the_numpy_forms() -> None:
    """The compiled pass makes the same times (sysUptime with wraps on both sides, ms, s, export time), rates and
    sampled counters as the numpy expressions it replaced, record by record, from an offset into the columns."""
    from decoders.netflow.v5 import uptime_to_ms

    rng = np.random.default_rng(7)
    counts = np.array([3, 0, 5, 1], dtype=np.int64)
    n, lo = int(counts.sum()), 2
    export = rng.integers(0, 1 << 41, len(counts)).astype(np.int64)
    uptime = np.array([0, 5, (1 << 32) - 1, 1 << 31], dtype=np.int64)
    rate = np.array([1, 7, 1 << 31, 3], dtype=np.uint32)
    U4 = np.zeros((2, lo + n), dtype=np.uint32)
    U8 = np.zeros((3, lo + n), dtype=np.uint64)
    U4[1, lo:] = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    U8[1, lo:] = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2)  # ms, past the int64 range too
    U8[2, lo:] = rng.integers(0, 1 << 40, n, dtype=np.uint64)  # raw counters
    per = {name: np.repeat(v, counts) for name, v in (("export", export), ("uptime", uptime), ("rate", rate))}
    cases = [((kernel.T_UPTIME, 4, 1), uptime_to_ms(U4[1, lo:], per["export"], per["uptime"])),
             ((kernel.T_MS, 8, 1), U8[1, lo:].astype(np.int64)),
             ((kernel.T_S, 4, 1), U4[1, lo:].astype(np.int64) * 1000),
             ((kernel.T_NONE, 8, 0), per["export"])]
    for (spec, expected), (end_spec, end_expected) in zip(cases, cases[1:] + cases[:1], strict=True):
        start, end = np.zeros(lo + n, dtype=np.int64), np.zeros(lo + n, dtype=np.int64)
        sampling = np.zeros(lo + n, dtype=np.uint32)
        out_bytes, out_packets = np.zeros(lo + n, dtype=np.uint64), np.zeros(lo + n, dtype=np.uint64)
        kernel.fill_records(counts, export, uptime, rate, np.array([spec, end_spec], dtype=np.int64), U4, U8, lo,
                            start, end, sampling, U8[2], U8[2], out_bytes, out_packets)
        assert (start[lo:] == expected).all() and (end[lo:] == end_expected).all()
        assert (start[:lo] == 0).all() and (sampling[:lo] == 0).all()
        assert (sampling[lo:] == per["rate"]).all()
        assert (out_bytes[lo:] == U8[2, lo:] * per["rate"]).all() and (out_packets == out_bytes).all()
