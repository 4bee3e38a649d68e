"""Subscriber correlation lookups: ``Bindings.lookup_split`` on one decoded batch, as the Mediator calls it.

    taskset -c 0 python -m pytest bench/test_bindings_bench.py --benchmark-enable \\
        --benchmark-columns=median,min,stddev,rounds

A round looks up the source and the destination addresses of one batch of 61,440 records (the daemon's batch at
20,000 datagrams/s of 30 records), at each record's time, subscribers only (``ids=False``, the Mediator's call) or
with binding ids (compliance). ns per record = median round time / 61,440 (``extra_info`` has the record count).

Two sets of bindings:

* ``harness``: the 100,000 static bindings of the pipeline harness (:func:`bench.harness.bindings_csv`: 10.0.0.0/8
  as 68,928 /25s and 31,072 /24s), with the load generator's addresses (sources anywhere in 10.0.0.0/8, all
  attributed; destinations in 192.0.0.0/8, none attributed).
* ``history``: the 1,000,000 bindings of ``bench/test_mediation_bench.py`` (30 days of CGNAT IPv4 /32 history and
  IPv6 /56 delegations; 80 % IPv4 and 20 % IPv6 flows, 90 % with a subscriber on one side).
* ``history`` with ``delta``: the same and 20,000 RADIUS sessions opened on pool addresses in the last hour, in the
  delta index (the bindings opened since the last rebuild of the base index; up to ``DELTA_REBUILD_ROWS`` of them).

Every round checks the answers against the expected subscribers, so a broken lookup cannot look fast.

With ``--benchmark-disable`` (the suite's default) each benchmark runs once on a few thousand bindings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bench.test_mediation_bench import NOW, build_bindings, build_flows
from decoders.schema import ipv4_mapped
from mediation.subscribers.bindings import BindingIndex, Bindings, index_from_arrays, split_addresses
from mediation.tables import OPEN_END_MS

BATCH = 61_440
SESSIONS = 20_000


def _disabled(request) -> bool:
    opt = request.config.getoption
    return opt("benchmark_disable", True) and not opt("benchmark_enable", False)


def harness_bindings(blocks: int = 65_536, split: int = 34_464) -> tuple[Bindings, np.ndarray]:
    """The harness's static bindings (``bindings_csv``): ``blocks`` /24s of 10.0.0.0/8, the first ``split`` of them
    as two /25s; returns them and, per /25 of the covered space, the subscriber index holding it."""
    first = np.arange(split, dtype=np.uint32)
    nets = np.concatenate([0x0A00_0000 + (first << 8), 0x0A00_0080 + (first << 8),
                           0x0A00_0000 + (np.arange(split, blocks, dtype=np.uint32) << 8)])
    plen = np.concatenate([np.full(2 * split, 121), np.full(blocks - split, 120)])
    order = np.argsort(nets, kind="stable")  # subscriber numbers in address order, as in the CSV
    sub = np.empty(len(nets), dtype=np.int32)
    sub[order] = np.arange(len(nets), dtype=np.int32)
    n = len(nets)
    index = index_from_arrays(sub, ipv4_mapped(nets), plen, np.zeros(n, np.int64), np.full(n, OPEN_END_MS))
    half = (nets - 0x0A00_0000) >> 7  # the /25 slot each network starts at
    holder = np.full(2 * blocks, -1, dtype=np.int32)
    holder[half] = sub
    whole = plen == 120
    holder[half[whole] + 1] = sub[whole]  # a /24 covers both of its /25 slots
    return Bindings.from_index(index, [f"s{i:06d}" for i in range(n)]), holder


@pytest.fixture(scope="module")
def harness(request):
    disabled = _disabled(request)
    blocks, split = (512, 200) if disabled else (65_536, 34_464)
    n = 2_000 if disabled else BATCH
    bindings, holder = harness_bindings(blocks, split)
    rng = np.random.default_rng(3)
    src = (0x0A00_0000 + rng.integers(0, blocks << 8, n)).astype(np.uint32)
    dst = (0xC000_0000 + rng.integers(0, 1 << 24, n)).astype(np.uint32)
    t = NOW - rng.integers(2_000, 60_000, n)
    expected = holder[(src - 0x0A00_0000) >> 7]
    return bindings, split_addresses(ipv4_mapped(src)), split_addresses(ipv4_mapped(dst)), t, expected


@pytest.fixture(scope="module")
def history(request):
    disabled = _disabled(request)
    subscribers, n_bindings = (1_000, 10_000) if disabled else (100_000, 1_000_000)
    n = 2_000 if disabled else BATCH
    bindings, pool4, pool6 = build_bindings(subscribers, n_bindings)
    batch = build_flows(n, pool4, pool6)
    src = split_addresses(batch.column("src_addr").to_numpy(zero_copy_only=False).astype("S16"))
    dst = split_addresses(batch.column("dst_addr").to_numpy(zero_copy_only=False).astype("S16"))
    t = batch.column("flow_start").view(pa.int64()).to_numpy()
    want = [_open_holder(bindings, *side) for side in (src, dst)]
    # the same history with recent sessions in the delta index: built on a second copy
    with_delta, _, _ = build_bindings(subscribers, n_bindings)
    sessions = np.random.default_rng(4).choice(pool4, SESSIONS // (10 if disabled else 1), replace=False)
    k = len(sessions)
    _, lo = split_addresses(ipv4_mapped(sessions.astype(np.uint32)))
    delta_sub = np.arange(k, dtype=np.int32) % subscribers
    with_delta._delta = BindingIndex(np.arange(k) + 2 * n_bindings, delta_sub, np.zeros(k, np.uint64), lo,
                                     np.full(k, 128), np.full(k, NOW - 3_600_000), np.full(k, OPEN_END_MS))
    # as Bindings.open does: the base's bindings of those addresses that hold at the new start end there
    base = with_delta._base
    held = np.flatnonzero((base.plen == 128) & (base.hi == 0) & np.isin(base.lo, lo) &
                          (base.valid_from <= NOW - 3_600_000) & (base.valid_to > NOW - 3_600_000))
    base.set_valid_to(held, NOW - 3_600_000)
    order = np.argsort(lo)
    want_delta = []
    for (_, qlo), w in zip((src, dst), want, strict=True):
        pos = np.minimum(np.searchsorted(lo[order], qlo), k - 1)
        hit = (lo[order][pos] == qlo) & (t >= NOW - 3_600_000)
        want_delta.append(np.where(hit, delta_sub[order][pos], w))
    return {False: (bindings, want), True: (with_delta, want_delta)}, src, dst, t


def _open_holder(bindings: Bindings, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Reference answer for the history's flows (all from the last minutes, when each address's newest, open binding
    holds it): the subscriber of the open IPv4 /32 equal to the address or of the open IPv6 /56 holding it."""
    index = bindings._base
    is_open = index.valid_to == index.valid_to.max()
    answer = np.full(len(hi), -1, dtype=np.int32)
    for plen, keys, query in ((128, index.lo, lo), (56, index.hi, hi & np.uint64(0xFFFF_FFFF_FFFF_FF00))):
        rows = np.flatnonzero(is_open & (index.plen == plen))
        order = np.argsort(keys[rows])
        k = keys[rows][order]
        pos = np.minimum(np.searchsorted(k, query), len(k) - 1)
        hit = (k[pos] == query) & ((hi == 0) if plen == 128 else (hi != 0))
        answer[hit] = index.sub[rows[order][pos[hit]]]
    return answer


def _both_sides(bindings: Bindings, src, dst, t: np.ndarray, ids: bool):
    return bindings.lookup_split(*src, t, ids=ids), bindings.lookup_split(*dst, t, ids=ids)


def test_lookup_harness_bindings(benchmark, harness):
    """Source and destination of a batch against the pipeline harness's 100,000 static bindings."""
    bindings, src, dst, t, expected = harness

    def run() -> None:
        (ssub, _), (dsub, _) = _both_sides(bindings, src, dst, t, False)
        assert np.array_equal(ssub, expected) and (dsub == -1).all()

    benchmark(run)
    benchmark.extra_info["records"] = len(t)


@pytest.mark.parametrize("delta", [False, True], ids=["base", "delta"])
@pytest.mark.parametrize("ids", [False, True], ids=["subscribers", "with-ids"])
def test_lookup_history(benchmark, history, ids, delta):
    """Source and destination of a batch against 1,000,000 bindings over 30 days (IPv4 /32s and IPv6 /56s), and
    with 20,000 recent sessions in the delta index."""
    variants, src, dst, t = history
    bindings, want = variants[delta]
    index, recent = bindings._base, bindings._delta
    sub_of_id = np.full(int(max(index.ids.max(), recent.ids.max(initial=0))) + 1, -1, dtype=np.int32)
    sub_of_id[index.ids], sub_of_id[recent.ids] = index.sub, recent.sub  # binding ids -> subscribers

    def run() -> None:
        (ssub, sbid), (dsub, dbid) = _both_sides(bindings, src, dst, t, ids)
        assert np.array_equal(ssub, want[0]) and np.array_equal(dsub, want[1])
        if ids:  # the binding found is the subscriber's
            assert np.array_equal(np.where(sbid >= 0, sub_of_id[np.maximum(sbid, 0)], -1), want[0])
            assert ((dbid >= 0) == (dsub >= 0)).all()

    benchmark(run)
    attributed = (want[0] >= 0) | (want[1] >= 0)
    assert 0.8 < attributed.mean() < 0.97  # the data are what the docstring says (90 % with a subscriber)
    benchmark.extra_info["records"] = len(t)
