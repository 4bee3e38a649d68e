"""De-duplication cost per record key at steady state, in the daemon's batch size.

    taskset -c 0 python -m pytest bench/test_dedup_bench.py --benchmark-enable \\
        --benchmark-columns=median,mean,min,stddev,rounds

A batch is 61,440 keys (2,048 datagrams of 30 records, the daemon's batch); a generation holds up to 8,000,000 keys
(``dedup_max_keys`` = 16,000,000, the default while every record had a key), a 128 MiB table: the per-record path,
which shared exporters (and records without a datagram identity) still take. ``insert``: fresh keys into a
generation already half full (every round adds a batch, so the rounds cover the second half of its filling);
``contains``: a full generation asked for a batch of which 5 % are present (the previous generation's check);
``duplicates``: the whole ``Deduplicator.duplicates`` once a previous generation is full and the current one is at
its steady size, with 5 % of each batch resent from the batch before. ns per key = median round time / 61,440
(``extra_info``).
``mark_per_datagram``: what a batch of primary exporters costs now (issue 17 item 2): one key per datagram of 30
records (2,048 keys per batch, 3,600,000 per generation at the default ``dedup_max_keys``), found from the records'
``datagram`` and ``datagram_offset`` columns, in ns per record; ``datagram_digest``: the decoders' part of it (the
identity of each datagram).

With ``--benchmark-disable`` (the suite's default) each benchmark runs once on 2,048-key batches and tables of
32,768 keys, and still checks its answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from decoders.digest import digests
from mediation.dedup import Deduplicator, _Table


@pytest.fixture(scope="module")
def sizes(request):
    opt = request.config.getoption
    disabled = opt("benchmark_disable", True) and not opt("benchmark_enable", False)
    return (2048, 32_768) if disabled else (61_440, 8_000_000)  # batch, keys per generation


def _keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 1 << 63, n, dtype=np.int64).astype(np.uint64)


def _ns_per_key(benchmark, batch: int) -> None:
    if benchmark.stats is not None and not benchmark.disabled:
        benchmark.extra_info["ns_per_key"] = round(benchmark.stats.stats.median / batch * 1e9, 1)


def test_table_insert(benchmark, sizes):
    batch, keys = sizes
    rng = np.random.default_rng(1)
    table = _Table(keys)
    table.insert(_keys(rng, keys // 2))
    rounds = (keys - table.count) // batch - 1

    def setup():
        return (_keys(rng, batch),), {}

    def run(k: np.ndarray) -> None:
        before = table.count
        assert not table.insert(k).any() and table.count == before + len(k)

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else rounds)
    _ns_per_key(benchmark, batch)


def test_table_contains(benchmark, sizes):
    batch, keys = sizes
    rng = np.random.default_rng(2)
    table = _Table(keys)
    held = _keys(rng, keys)
    table.insert(held)
    present = batch // 20

    def setup():
        k = _keys(rng, batch)
        k[:present] = held[rng.integers(0, len(held), present)]
        return (k,), {}

    def run(k: np.ndarray) -> None:
        found = table.contains(k)
        assert found[:present].all() and found[present:].sum() <= 2  # random 63-bit keys: a repeat is unlikely

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 40)
    _ns_per_key(benchmark, batch)


def test_deduplicator_duplicates(benchmark, sizes):
    batch, keys = sizes
    rng = np.random.default_rng(3)
    d = Deduplicator(window_ms=10**12, max_keys=2 * keys)
    role = np.zeros(batch, dtype=np.int8)
    now = 0
    while d._previous is None or d._current.count < keys // 2:  # a full previous generation, the current half full
        d.duplicates(_keys(rng, batch), role, now)
        now += 1
    last = [_keys(rng, batch)]
    d.duplicates(last[0], role, now)

    def setup():
        k = _keys(rng, batch)
        k[: batch // 20] = last[0][: batch // 20]
        last[0] = k
        return (k,), {}

    def run(k: np.ndarray) -> None:
        dup = d.duplicates(k, role, now)
        assert dup[: batch // 20].all() and dup[batch // 20:].sum() <= 2

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 60)
    _ns_per_key(benchmark, batch)


def test_deduplicator_mark_per_datagram(benchmark, sizes):
    """What de-duplication costs a batch of a primary exporter now (issue 17 item 2): ``Deduplicator.mark`` on the
    ``datagram`` and ``datagram_offset`` columns of 61,440 records (2,048 datagrams of 30, each a run of rising
    offsets), 5 % of the datagrams resent from the batch before; the previous generation full and the current one
    half full at the default size (``dedup_max_keys`` = 7,200,000: 3,600,000 datagrams a generation, a 64 MiB
    table). ns per record = median round time / 61,440 (``extra_info``), comparable with ``ns_per_key`` of
    ``test_deduplicator_duplicates`` plus the record key (``test_record_keys_per_batch``: about 9 ns per record),
    which the per-record path paid per record."""
    per = 30
    batch = sizes[0] // per
    records = batch * per
    generation = 3_600_000 if not benchmark.disabled else 32_768 // 30
    rng = np.random.default_rng(4)
    d = Deduplicator(window_ms=10**12, max_keys=2 * generation)
    role = np.zeros(records, dtype=np.int8)
    offsets = np.tile(24 + 48 * np.arange(per, dtype=np.uint16), batch)

    def cols(ident: np.ndarray) -> dict[str, np.ndarray]:
        return {"datagram": np.repeat(ident, per), "datagram_offset": offsets}

    while d._previous is None or d._current.count < generation // 2:
        d.mark(cols(_keys(rng, batch)), role, 0)
    last = [_keys(rng, batch)]
    d.mark(cols(last[0]), role, 0)
    resent = max(batch // 20, 1)

    def setup():
        k = _keys(rng, batch)
        k[:resent] = last[0][:resent]
        last[0] = k
        return (cols(k),), {}

    def run(c: dict[str, np.ndarray]) -> None:
        dup = d.mark(c, role, 0)
        assert dup[:resent * per].all() and dup[resent * per:].sum() <= 2 * per

    benchmark.pedantic(run, setup=setup, rounds=1 if benchmark.disabled else 60)
    if benchmark.stats is not None and not benchmark.disabled:
        benchmark.extra_info["ns_per_record"] = round(benchmark.stats.stats.median / records * 1e9, 1)
        benchmark.extra_info["table_mib"] = round(sum(t.slots.nbytes for t in d._current.tables) / (1 << 20), 1)


def test_datagram_digest(benchmark, sizes):
    """The decoders' part of it: the identity of 2,048 datagrams of 1,464 bytes (30 v5 records), one compiled pass
    (``decoders.digest.digests``). ns per record = median / (2,048 x 30) (``extra_info``)."""
    n = 2048 if not benchmark.disabled else 64
    length = 24 + 30 * 48
    rng = np.random.default_rng(5)
    buf = rng.integers(0, 256, n * length, dtype=np.uint8)
    buf.flags.writeable = False
    starts = np.arange(n, dtype=np.int64) * length
    lens = np.full(n, length, dtype=np.int64)
    seeds = np.zeros(n, dtype=np.uint64)
    out = np.empty(n, dtype=np.int64)

    def run() -> None:
        digests(buf, starts, lens, seeds, out)

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 200)
    assert len(np.unique(out)) == n
    if benchmark.stats is not None and not benchmark.disabled:
        benchmark.extra_info["ns_per_record"] = round(benchmark.stats.stats.median / (n * 30) * 1e9, 2)
