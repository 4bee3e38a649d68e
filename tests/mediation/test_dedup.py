"""De-duplication against a plain Python model: the bucketed hash table and the two-generation window.

The tables' secret multiplier is set to 1 here, so that a key's home slot is its top bits. Keys are drawn from a
small pool whose values share their top bits, so in the small tables used here most keys have the same home slot or
bucket: races for one slot within a batch, full buckets and overflow chains (wrapping around the end of the table)
are the common case, not the exception.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mediation.dedup
from mediation.dedup import ROLES, Deduplicator, _Table

SECONDARY = ROLES.index("secondary")
HOME_SHIFT = 53
"""Home slot = key >> 53 in the 2,048-slot tables of ``_Table(700)`` (with the multiplier 1)."""


@pytest.fixture(autouse=True)
def _known_multiplier(monkeypatch):
    monkeypatch.setattr(mediation.dedup, "_SEED", np.uint64(1))


def _pool(low_bits: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct non-zero keys whose home slots take only ``2**low_bits`` values."""
    rng = np.random.default_rng(seed)
    rest = rng.choice(1 << 40, size, replace=False).astype(np.uint64) + np.uint64(1)
    home = rng.integers(0, 1 << low_bits, size).astype(np.uint64)
    return (home << np.uint64(HOME_SHIFT)) | rest


def _batch_of_distinct(data: st.DataObject, pool: np.ndarray, max_size: int) -> np.ndarray:
    picks = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=max_size, unique=True))
    return pool[np.array(picks, dtype=np.int64)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), low_bits=st.sampled_from([0, 3, 6, 11]), seed=st.integers(0, 2**32 - 1))
def test_table_is_a_set(data, low_bits, seed):
    """``insert`` reports exactly the keys already held, ``contains`` exactly the keys held, ``count`` the size."""
    pool = _pool(low_bits, 1400, seed)
    t = _Table(700)  # 2,048 slots in 256 buckets
    model: set[int] = set()
    for _ in range(data.draw(st.integers(1, 6))):
        batch = _batch_of_distinct(data, pool, 700 - len(model))
        assert t.insert(batch).tolist() == [int(k) in model for k in batch]
        model.update(int(k) for k in batch)
        assert t.count == len(model)
        probe = pool[data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=300))]
        assert t.contains(probe).tolist() == [int(k) in model for k in probe]
    assert sorted(int(k) for k in t.slots[t.slots != 0]) == sorted(model)


def test_table_full_buckets_overflow_and_wrap_around():
    """Every key in the last bucket: they fill it, overflow into bucket 0 and on, and are all found again."""
    t = _Table(700)
    last = len(t.slots) // 8 - 1
    assert int(t._shift) == HOME_SHIFT
    keys = np.arange(1, 301, dtype=np.uint64) | (np.uint64(last * 8 + 5) << np.uint64(HOME_SHIFT))
    assert not t.insert(keys[:150]).any()  # 150 keys racing for one home slot, then for the free slots of one bucket
    got = t.insert(keys)
    assert got[:150].all() and not got[150:].any() and t.count == 300
    assert t.slots[:8].all() and t.slots[-8:].all()  # the last bucket is full and the overflow wrapped to the first
    assert t.contains(keys).all()
    assert not t.contains(keys + np.uint64(1 << 30)).any()


class _Model:
    """The de-duplication rules with Python sets: two generations, rotated on the window or when one is full."""

    def __init__(self, window_ms: int, max_keys: int) -> None:
        self.window_ms, self.max_keys = window_ms, max(max_keys // 2, 1024)
        self.current: set[int] = set()
        self.previous: set[int] | None = None
        self.limit = self.max_keys
        self.started: int | None = None
        self.evictions = 0

    def duplicates(self, keys: list[int], roles: list[int], now_ms: int) -> list[bool]:
        if self.started is None:
            self.started = now_ms
        expired = now_ms - self.started >= self.window_ms
        full = len(self.current) + len(keys) > self.limit
        if expired or full:
            if full and not expired:
                self.evictions += len(self.previous) if self.previous is not None else 0
            self.previous, self.current, self.started = self.current, set(), now_ms
            self.limit = max(self.max_keys, len(keys))
        out, batch = [], set()
        for key, role in zip(keys, roles, strict=True):
            if role == SECONDARY:
                out.append(True)
            elif key in batch:
                out.append(True)
            else:
                batch.add(key)
                if self.previous is not None and key in self.previous:
                    out.append(True)  # remembered, but not refreshed into the current generation
                else:
                    out.append(key in self.current)
                    self.current.add(key)
        return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), low_bits=st.sampled_from([0, 4, 11]), seed=st.integers(0, 2**32 - 1),
       window_ms=st.sampled_from([50, 1000, 10**9]))
@pytest.mark.slow
def test_deduplicator_matches_the_model(data, low_bits, seed, window_ms):
    """Random batches with repeats within and across batches, secondary exporters, time steps; a generation holds
    1,024 keys, so both rotations (window and full, with evictions) happen."""
    pool = _pool(low_bits, 3000, seed)
    d = Deduplicator(window_ms, 2048)
    model = _Model(window_ms, 2048)
    now = 0
    for _ in range(data.draw(st.integers(1, 12))):
        n = data.draw(st.integers(0, 600))
        keys = pool[np.array(data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n)),
                             dtype=np.int64)]
        roles = np.array(data.draw(st.lists(st.sampled_from([0, 0, 0, 1, SECONDARY]), min_size=n, max_size=n)),
                         dtype=np.int8)
        now += data.draw(st.sampled_from([0, 1, 30, 400]))
        got = d.duplicates(keys, roles, now)
        assert got.dtype == bool and len(got) == n
        assert got.tolist() == model.duplicates([int(k) for k in keys], roles.tolist(), now)
        assert d.evictions == model.evictions


def test_first_occurrence_in_a_batch_is_the_one_kept():
    d = Deduplicator(1000, 10_000)
    keys = np.array([7, 9, 7, 7, 9, 3], dtype=np.uint64)
    roles = np.array([SECONDARY, 0, 0, 0, 0, 0], dtype=np.int8)
    # the secondary copy of 7 does not count as its first occurrence: the next one does
    assert d.duplicates(keys, roles, 0).tolist() == [True, False, False, True, True, False]
    assert d.duplicates(keys[::-1].copy(), roles, 1).tolist() == [True, True, True, True, True, True]


def test_steady_state_generations_do_not_regrow():
    """A new generation starts at the size the previous one needed (no re-hashing once the stream is steady), in
    the zeroed slots of the generation it retires."""
    d = Deduplicator(window_ms=100, max_keys=1 << 20)  # generations of up to 524,288 keys
    rng = np.random.default_rng(2)
    role = np.zeros(20_000, dtype=np.int8)
    for now in range(0, 410, 10):  # 10 batches of 20,000 keys per window: 200,000 keys a generation
        keys = rng.integers(1, 1 << 63, 20_000, dtype=np.int64).astype(np.uint64)
        assert not d.duplicates(keys, role, now).any()
        if now == 200:
            table = d._current
        if now == 300:
            assert d._current.capacity == table.capacity >= 200_000 and d._current.capacity <= d.max_keys
    # rotated at 400: the generation of 200 is retired and its slots hold the new one
    assert d._current.slots is table.slots and d._current.count == 20_000
    assert d._current.contains(keys).all() and not d._previous.contains(keys).any() and d.evictions == 0


def test_crafted_keys_do_not_share_a_home_under_the_secret_multiplier(monkeypatch):
    """Keys that agree in every low bit (or every top bit) would all have one home with a plain mask (or shift); the
    process's secret odd multiplier spreads them over the buckets, so crafted records cannot build long chains."""
    monkeypatch.undo()
    assert int(mediation.dedup._SEED) & 1 and int(mediation.dedup._SEED) != 1
    t = _Table(1 << 16)
    buckets = len(t.slots) // 8
    same_low = (np.arange(1, 4001, dtype=np.uint64) << np.uint64(32)) | np.uint64(0x1234)
    same_top = np.arange(1, 4001, dtype=np.uint64) | (np.uint64(0x1234) << np.uint64(48))
    assert buckets == 16_384
    for keys in (same_low, same_top):
        _, per_bucket = np.unique(t._home(keys) >> 3, return_counts=True)
        # a plain mask (or shift) puts all 4,000 in one bucket; 3,000 random multipliers tried: at most 39
        assert per_bucket.max() <= 100
        assert not t.insert(keys).any() and t.contains(keys).all()


def test_the_multiplier_differs_between_processes():
    code = "import mediation.dedup as d; print(int(d._SEED))"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
             for _ in range(2)}
    assert len(seeds) == 2


def test_a_growing_generation_keeps_its_tables_and_finds_every_key():
    """The first generation grows by adding a larger table, never by re-hashing (a long stall at high rates): the
    earlier tables stay as they are, and keys in any of them are still duplicates."""
    d = Deduplicator(window_ms=10_000, max_keys=1 << 22)
    rng = np.random.default_rng(4)
    role = np.zeros(30_000, dtype=np.int8)
    sent = []
    first_table = d._current.tables[0]
    for now in range(10):
        keys = rng.integers(1, 1 << 63, 30_000, dtype=np.int64).astype(np.uint64)
        assert not d.duplicates(keys, role, now).any()
        sent.append(keys)
    assert len(d._current.tables) >= 2 and d._current.tables[0] is first_table
    assert d._current.count == 300_000 and d._current.capacity >= 300_000
    old = np.concatenate([sent[0][:100], sent[4][:100], sent[9][:100]])
    new = rng.integers(1, 1 << 63, 300, dtype=np.int64).astype(np.uint64)
    got = d.duplicates(np.concatenate([old, new]), np.zeros(600, dtype=np.int8), 11)
    assert got[:300].all() and not got[300:].any()
