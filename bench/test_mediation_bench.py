"""Mediation throughput: correlation + aggregation, and the whole Mediator, with 100,000 subscribers and 1,000,000
bindings in history.

    taskset -c 0 python -m pytest bench/test_mediation_bench.py --benchmark-enable \\
        --benchmark-columns=mean,min,stddev,rounds

Bindings: 100,000 subscribers; 1,000,000 bindings over 30 days of history, 800,000 of them IPv4 addresses from a
CGNAT-style pool of 200,000 addresses in 100.64.0.0/14 (each address held by about four subscribers in turn) and
200,000 IPv6 /56 delegated prefixes; the newest binding of each address or prefix is open. Flows: one batch of
1,000,000 records from the last five minutes (80 % IPv4, 20 % IPv6; 90 % with a subscriber on one side, 10 %
unknown), up to 2 minutes long (an active timeout of 2 minutes), so about one in five crosses an interval
boundary. Flows per second = records per round / mean round time; every round checks that the bytes came out
(attributed + unattributed = bytes in), so a broken pipeline cannot look fast.

The per-batch benchmarks below follow the daemon instead: batches of 30,000 records (1,000 v9 datagrams of 30, what
one 50 ms batch holds at 20,000 datagrams/s) one after another into the same open intervals, 100,000 subscribers,
4 exporters: aggregation (``UsageAggregator.add`` of 64 batches, then the interval's rows), reconciliation
(``Reconciler.add``), record keys (``hash_columns`` over the de-duplication key columns) and
``Mediator.process`` through ``mediation.bounded.mediate_bounded`` and ``mediation.compliance.nat.without_nat_only``,
as the
server calls it. Their ``extra_info`` holds ``ns_per_record`` (mean round time / records).

With ``--benchmark-disable`` (the suite's default) each benchmark runs once on 10,000 bindings and 5,000 flows
(per-batch benchmarks: 4 batches of 2,000 records).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from collector.config import load
from decoders.schema import FLOWS, ipv4_mapped
from mediation.aggregate import UsageAggregator
from mediation.bounded import mediate_bounded
from mediation.classify import Classifier
from mediation.compliance.nat import without_nat_only
from mediation.correlate import (
    ROW_DTYPES,
    address_words,
    attribute,
    count_parts,
    count_rows,
    readonly,
    split_parts,
)
from mediation.hashing import hash_columns
from mediation.mediator import Mediator
from mediation.reconcile import Reconciler
from mediation.subscribers.bindings import Bindings, index_from_arrays, join_addresses

NOW = 1_764_000_000_000 + 4 * 60_000
DAY = 86_400_000
INTERVAL = 300_000


def build_bindings(subscribers: int, bindings: int, seed: int = 1) -> tuple[Bindings, np.ndarray, np.ndarray]:
    """Bindings as described in the module docstring; returns them and the v4 / v6 networks (uint64 halves)."""
    rng = np.random.default_rng(seed)
    n4, n6 = bindings * 8 // 10, bindings * 2 // 10
    pool4 = rng.choice(1 << 18, n4 // 4, replace=False).astype(np.uint64) + np.uint64(0x6440_0000)  # 100.64/14
    pool6 = (np.uint64(0x2001_0db8) << np.uint64(32)) | (rng.choice(1 << 24, n6 // 4, replace=False).astype(np.uint64)
                                                          << np.uint64(8))
    addr4 = np.repeat(pool4, 4)
    addr6 = np.repeat(pool6, 4)
    addresses = np.concatenate([ipv4_mapped(addr4.astype(np.uint32)),
                                join_addresses(addr6, np.zeros(len(addr6), dtype=np.uint64))])
    plen = np.concatenate([np.full(len(addr4), 128), np.full(len(addr6), 56)])
    k = np.tile(np.arange(4), len(pool4) + len(pool6))  # the k-th holder of the address
    start = NOW - 30 * DAY
    valid_from = start + k * 7 * DAY + rng.integers(0, DAY, len(k))
    valid_to = np.where(k == 3, 4_294_967_295_000, start + (k + 1) * 7 * DAY)
    sub = rng.integers(0, subscribers, len(k))
    index = index_from_arrays(sub, addresses, plen, valid_from, valid_to)
    return Bindings.from_index(index, [f"sub{i:06d}" for i in range(subscribers)]), pool4, pool6


def build_flows(n: int, pool4: np.ndarray, pool6: np.ndarray, seed: int = 2) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    cols = FLOWS.empty_columns(n)
    v6 = rng.random(n) < 0.2
    known = rng.random(n) < 0.9
    up = rng.random(n) < 0.5
    sub4 = ipv4_mapped(pool4[rng.integers(0, len(pool4), n)].astype(np.uint32))
    unknown4 = ipv4_mapped(rng.integers(0x0B00_0000, 0x0BFF_FFFF, n).astype(np.uint32))
    hi6 = pool6[rng.integers(0, len(pool6), n)] | rng.integers(0, 256, n).astype(np.uint64)
    sub6 = join_addresses(hi6, rng.integers(1, 1 << 62, n).astype(np.uint64))
    remote4 = ipv4_mapped(rng.integers(0x0100_0000, 0x5FFF_FFFF, n).astype(np.uint32))
    remote6 = join_addresses(np.full(n, 0x2A00_1450_0000_0000, dtype=np.uint64),
                             rng.integers(1, 1 << 62, n).astype(np.uint64))
    subscriber_side = np.where(v6, sub6, np.where(known, sub4, unknown4))
    remote = np.where(v6, remote6, remote4)
    cols["src_addr"] = np.where(up, subscriber_side, remote)
    cols["dst_addr"] = np.where(up, remote, subscriber_side)
    end = NOW - rng.integers(0, 60_000, n)
    cols["flow_end"] = end
    cols["flow_start"] = end - rng.integers(0, 120_000, n)  # active timeout 2 min: about 1 in 5 flows is split
    cols["time_received"][:] = NOW
    cols["bytes"] = rng.integers(40, 10_000_000, n).astype(np.uint64)
    cols["packets"] = np.maximum(cols["bytes"] // 1000, 1).astype(np.uint64)
    cols["src_port"] = rng.integers(1, 65535, n).astype(np.uint16)
    cols["dst_port"] = rng.integers(1, 65535, n).astype(np.uint16)
    cols["protocol"][:] = 6
    cols["exporter"][:] = ipv4_mapped(np.array([0xC000_0201 + i % 4 for i in range(n)], dtype=np.uint32))
    return FLOWS.to_arrow(cols)


@pytest.fixture(scope="module")
def data(request):
    opt = request.config.getoption
    benchmark_disabled = opt("benchmark_disable", True) and not opt("benchmark_enable", False)
    sizes = (1_000, 10_000, 5_000) if benchmark_disabled else (100_000, 1_000_000, 1_000_000)
    bindings, pool4, pool6 = build_bindings(sizes[0], sizes[1])
    return bindings, build_flows(sizes[2], pool4, pool6)


def test_correlation_and_aggregation(benchmark, data):
    """Split at interval boundaries, look up both addresses at the part's time, aggregate usage rows: the
    Mediator's compiled passes (``mediation.correlate``) and the aggregator, without the class rules."""
    bindings, batch = data
    src = address_words(batch.column("src_addr").to_numpy(zero_copy_only=False).astype("S16"))
    dst = address_words(batch.column("dst_addr").to_numpy(zero_copy_only=False).astype("S16"))
    start = readonly(batch.column("flow_start").view(pa.int64()).to_numpy(), np.int64)
    end = readonly(batch.column("flow_end").view(pa.int64()).to_numpy(), np.int64)
    nbytes = readonly(batch.column("bytes").to_numpy(), np.uint64)
    packets = readonly(batch.column("packets").to_numpy(), np.uint64)
    ports = readonly(np.zeros(len(nbytes), np.uint16), np.uint16)
    protocol = readonly(np.full(len(nbytes), 6, np.uint8), np.uint8)
    exporter = readonly(np.arange(len(nbytes), dtype=np.int32) % 4, np.int32)
    ok = readonly(np.arange(len(nbytes)), np.int64)
    total = int(nbytes.sum())
    default_class = Classifier([])

    def run() -> int:
        agg = UsageAggregator(INTERVAL, 60_000)
        n = len(nbytes)
        cum = np.empty(n, dtype=np.int64)
        count_parts(ok, start, end, INTERVAL, cum)
        parts = int(cum[-1])
        record, istart, pstart, first = (np.empty(k, dtype=np.int64) for k in (parts, parts, parts, n))
        values = np.empty((parts, 3), dtype=np.uint64)
        shi, slo, dhi, dlo = (np.empty(parts, dtype=np.uint64) for _ in range(4))
        split_parts(ok, start, end, INTERVAL, nbytes, packets, src, dst, record, istart, pstart, values, shi, slo,
                    dhi, dlo, first)
        ssub, _ = bindings.lookup_split(shi, slo, pstart, ids=False)
        dsub, _ = bindings.lookup_split(dhi, dlo, pstart, ids=False)
        rows = {c: np.empty(count_rows(ssub, dsub), dtype=t) for c, t in ROW_DTYPES.items()}
        attributed, unattributed, usage = (np.zeros(n, dtype=np.uint64) for _ in range(3))
        attribute(record, istart, values, shi, slo, dhi, dlo, ssub, dsub, ports, ports, protocol, exporter,
                  *rows.values(), attributed, unattributed, usage)
        rows["cls"] = default_class.classify(rows.pop("remote_hi"), rows.pop("remote_lo"), rows.pop("remote_port"),
                                             rows.pop("protocol"))
        agg.add(rows, NOW)
        out = agg.emit(NOW, force=True)
        assert int(attributed.sum()) + int(unattributed.sum()) == total
        assert int(out["flows"].sum()) >= len(nbytes)
        return len(nbytes)

    n = benchmark(run)
    benchmark.extra_info["flows"] = n


def test_mediator_process(benchmark, data):
    """``Mediator.process`` on a fresh mediator per round: validation, de-duplication, split, correlation, classes,
    aggregation into open intervals and the reconciliation check (the per-batch work of the daemon)."""
    bindings, batch = data
    cfg = load(None, ['mediation.classes=[{name="cdn", prefixes=["1.0.0.0/8", "2a00:1450::/32"]}]'])
    total = int(pa.compute.sum(batch.column("bytes")).as_py())

    def setup():
        return (Mediator(cfg, bindings, refresh_interval_s=1e9),), {}

    def run(m: Mediator) -> None:
        m.process(batch, NOW)
        c = m.counters
        assert c["bytes_attributed"] + c["bytes_unattributed"] + c["bytes_rejected"] + c["bytes_duplicate"] == total
        assert c["unbalanced_batches"] == 0 and c["bytes_attributed"] > 0

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 5)
    benchmark.extra_info["flows"] = batch.num_rows


def test_mediator_interval_close(benchmark, data):
    """``close_all`` after one batch: the usage rows of the open intervals as an Arrow batch (once per interval)."""
    bindings, batch = data

    def setup():
        m = Mediator(load(None), bindings, refresh_interval_s=1e9)
        m.process(batch, NOW)
        return (m,), {}

    def run(m: Mediator) -> None:
        out = m.close_all(NOW)
        assert out["usage"].num_rows > 0
        benchmark.extra_info["usage_rows"] = out["usage"].num_rows

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 5)


def _per_batch_sizes(benchmark) -> tuple[int, int]:
    """(batches, records per batch) of the per-batch benchmarks."""
    return (4, 2_000) if benchmark.disabled else (64, 30_000)


def _ns_per_record(benchmark, records: int) -> None:
    if not benchmark.disabled:
        benchmark.extra_info["ns_per_record"] = round(benchmark.stats.stats.mean / records * 1e9, 1)


def _usage_parts(n: int, subscribers: int, seed: int) -> dict[str, np.ndarray]:
    """One batch of usage parts as the Mediator hands them to the aggregator: 4 exporters, 90 % attributed (up or
    down), 2 classes; one interval, or two (every other batch: 30 % of the parts in the interval before, as after
    a boundary when flows of the last minutes arrive)."""
    rng = np.random.default_rng(seed)
    direction = rng.choice(np.array([0, 1, 2], np.uint8), n, p=[0.45, 0.45, 0.1])
    interval = NOW // INTERVAL * INTERVAL - INTERVAL * (seed % 2 * (rng.random(n) < 0.3))
    return {"interval_start": interval.astype(np.int64),
            "sub": np.where(direction == 2, -1, rng.integers(0, subscribers, n)).astype(np.int32),
            "direction": direction, "cls": (rng.random(n) < 0.3).astype(np.uint8),
            "exporter": rng.integers(0, 4, n).astype(np.int32),
            "bytes": rng.integers(40, 10_000_000, n).astype(np.uint64),
            "packets": rng.integers(1, 10_000, n).astype(np.uint64), "flows": np.ones(n, np.uint64)}


def test_aggregation_per_batch(benchmark):
    """``UsageAggregator.add`` of consecutive batches into the open intervals, then the intervals' rows (their share
    of the close): the aggregation cost per record of the daemon."""
    nb, n = _per_batch_sizes(benchmark)
    batches = [_usage_parts(n, 100_000, seed) for seed in range(nb)]
    total = sum(int(b["bytes"].sum()) for b in batches)

    def run() -> None:
        agg = UsageAggregator(INTERVAL, 60_000)
        for b in batches:
            agg.add(b, NOW)
        rows = agg.emit(NOW, force=True)
        assert int(rows["bytes"].sum()) == total and int(rows["flows"].sum()) == nb * n

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 5)
    _ns_per_record(benchmark, nb * n)


def test_reconciliation_per_batch(benchmark):
    """``Reconciler.add`` of consecutive batches (the nine per-record counters the Mediator passes); half the
    batches from one exporter, half from four."""
    nb, n = _per_batch_sizes(benchmark)
    rng = np.random.default_rng(4)
    batches = []
    for i in range(nb):
        nbytes = rng.integers(40, 10_000_000, n).astype(np.uint64)
        rejected = rng.random(n) < 0.01
        zero = np.zeros(n, np.uint64)
        per_record = {"records_in": np.ones(n, np.uint64), "bytes_in": nbytes,
                      "bytes_rejected": np.where(rejected, nbytes, zero), "bytes_duplicate": zero,
                      "records_rejected": rejected.astype(np.uint64), "records_duplicate": zero,
                      "bytes_attributed": np.where(rejected, zero, nbytes), "bytes_unattributed": zero,
                      "bytes_usage": np.where(rejected, zero, nbytes)}
        exporter = np.zeros(n, np.int32) if i % 2 else rng.integers(0, 4, n).astype(np.int32)
        batches.append((np.full(n, NOW + i * 50, np.int64), exporter, per_record))

    def run() -> None:
        r = Reconciler(INTERVAL)
        for received, exporter, per_record in batches:
            assert r.add(received, exporter, per_record, {}, np.zeros(0, np.int64))
        assert sum(int(row[2][0]) for row in r.emit(NOW, force=True)) == nb * n

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 5)
    _ns_per_record(benchmark, nb * n)


def test_record_keys_per_batch(benchmark, data):
    """``hash_columns`` over the de-duplication key columns of a batch (exporter, domain, addresses, ports,
    protocol, times, counters): the record keys' cost per record."""
    _, batch = data
    n = min(batch.num_rows, 30_000 if not benchmark.disabled else 2_000)
    b = batch.slice(0, n)
    cols = [b.column(c).to_numpy(zero_copy_only=False) for c in (
        "exporter", "observation_domain", "src_addr", "dst_addr", "src_port", "dst_port", "protocol")]
    cols += [b.column(c).view(pa.int64()).to_numpy() for c in ("flow_start", "flow_end")]
    cols += [b.column(c).to_numpy() for c in ("bytes", "packets")]
    cols = [c.astype("S16") if c.dtype == object else c for c in cols]

    hash_columns(*cols, seed=1)  # compiled (or loaded from numba's cache) before the timing

    def run() -> None:
        for _ in range(10):
            assert len(hash_columns(*cols, seed=1)) == n

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 10)
    _ns_per_record(benchmark, 10 * n)


def test_mediator_per_batch(benchmark, data):
    """``Mediator.process`` of consecutive batches as the server calls it (``mediate_bounded`` of
    ``without_nat_only``), one mediator for all batches, 50 ms apart; then the interval close."""
    bindings, batch = data
    nb, n = _per_batch_sizes(benchmark)
    nb = min(nb, batch.num_rows // n)
    cfg = load(None, ['mediation.classes=[{name="cdn", prefixes=["1.0.0.0/8", "2a00:1450::/32"]}]'])
    slices = [batch.slice(i * n, n) for i in range(nb)]
    total = sum(int(pa.compute.sum(s.column("bytes")).as_py()) for s in slices)

    def setup():
        return (Mediator(cfg, bindings, refresh_interval_s=1e9),), {}

    def run(m: Mediator) -> None:
        for i, s in enumerate(slices):
            mediate_bounded(m, without_nat_only(s), NOW + 50 * i, INTERVAL)
        m.close_all(NOW + 50 * nb)
        c = m.counters
        assert c["bytes_attributed"] + c["bytes_unattributed"] + c["bytes_rejected"] + c["bytes_duplicate"] == total

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 3)
    _ns_per_record(benchmark, nb * n)


def test_mediator_per_batch_warm(benchmark, data):
    """``Mediator.process`` of consecutive batches as in ``test_mediator_per_batch``, but into a mediator that has
    already taken a few batches of the same intervals (its interval sums and de-duplication tables in memory, as
    in a running daemon): the steady per-batch cost, without first touching that memory."""
    bindings, batch = data
    nb, n = _per_batch_sizes(benchmark)
    warm, timed = (1, 1) if benchmark.disabled else (4, 9)
    cfg = load(None, ['mediation.classes=[{name="cdn", prefixes=["1.0.0.0/8", "2a00:1450::/32"]}]'])
    slices = [batch.slice(i * n, n) for i in range(min(batch.num_rows // n, warm + timed))]

    def setup():
        m = Mediator(cfg, bindings, refresh_interval_s=1e9)
        for i, s in enumerate(slices[:warm]):
            mediate_bounded(m, without_nat_only(s), NOW + 50 * i, INTERVAL)
        return (m,), {}

    def run(m: Mediator) -> None:
        for i, s in enumerate(slices[warm:]):
            mediate_bounded(m, without_nat_only(s), NOW + 50 * (warm + i), INTERVAL)
        assert m.counters["records_in"] == len(slices) * n and m.counters["unbalanced_batches"] == 0

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 5)
    _ns_per_record(benchmark, (len(slices) - warm) * n)


def test_radius_accounting_throughput(benchmark, tmp_path):
    """RADIUS Interim-Updates handled by ``RadiusAccounting.handle`` in batches of 512 (one SQLite transaction with
    fsync per batch, as the listener does), with counter deltas becoming usage rows; 20,000 open sessions."""
    import struct

    from mediation.subscribers.radius import ATTRIBUTES, RadiusAccounting, accounting_request

    n_sessions = 200 if benchmark.disabled else 20_000
    cfg = load(None, ["radius.enabled=true", 'radius.clients=[{address="127.0.0.1", secret="s"}]'])
    bindings = Bindings(tmp_path / "b.sqlite")
    acct = RadiusAccounting(cfg.radius, bindings, INTERVAL)
    t0 = NOW // 1000 - 3600

    def request(i: int, status: int, t: int, octets: int) -> bytes:
        attrs = [(ATTRIBUTES["Acct-Status-Type"], struct.pack("!I", status)),
                 (ATTRIBUTES["User-Name"], f"sub{i}".encode()), (ATTRIBUTES["Acct-Session-Id"], f"s{i}".encode()),
                 (ATTRIBUTES["Framed-IP-Address"], struct.pack("!I", 0x64400000 + i)),
                 (ATTRIBUTES["Event-Timestamp"], struct.pack("!I", t)),
                 (ATTRIBUTES["Acct-Input-Octets"], struct.pack("!I", octets)),
                 (ATTRIBUTES["Acct-Output-Octets"], struct.pack("!I", 2 * octets))]
        return accounting_request(i % 256, attrs, b"s")

    for lo in range(0, n_sessions, 512):
        acct.handle([(request(i, 1, t0, 0), ("127.0.0.1", 1)) for i in range(lo, min(lo + 512, n_sessions))], NOW)
    rounds = iter(range(1, 1000))

    def run() -> int:
        r = next(rounds)
        answered = 0
        for lo in range(0, n_sessions, 512):
            batch = [(request(i, 3, t0 + 60 * r, 1000 * r), ("127.0.0.1", 1))
                     for i in range(lo, min(lo + 512, n_sessions))]
            result = acct.handle(batch, NOW)
            answered += len(result.responses)
        assert answered == n_sessions
        return answered

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3)
    benchmark.extra_info["requests"] = n_sessions
