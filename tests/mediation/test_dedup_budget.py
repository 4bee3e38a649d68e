"""``worst_case_bytes``: the most memory the de-duplication tables hold for a ``max_keys`` (the service's memory
budget, collector/systemd.py, counts it), checked against the slots a Deduplicator actually allocates: filled by a
steady stream, and driven into the largest tables its growth rules allow."""

from __future__ import annotations

import numpy as np
import pytest

from mediation.dedup import INITIAL_KEYS, Deduplicator, worst_case_bytes

WINDOW_MS = 1000
ROLE = np.zeros(1, dtype=np.int8)


def allocated(d: Deduplicator) -> int:
    """Bytes of every slot array the two generations hold (the aligned allocations, not only the views)."""
    generations = [d._current] + ([d._previous] if d._previous is not None else [])
    return sum(t.slots.base.nbytes for g in generations for t in g.tables)


def _repeat(d: Deduplicator, key: int, n: int, now_ms: int) -> None:
    """A batch of ``n`` copies of ``key``: it asks for room for ``n`` keys and inserts one."""
    d.duplicates(np.full(n, key, dtype=np.uint64), np.zeros(n, dtype=np.int8), now_ms)


def test_a_steady_stream_up_to_the_bound_stays_within_it() -> None:
    max_keys = 1_200_000
    d = Deduplicator(WINDOW_MS, max_keys)
    peak, key, now = 0, 1, 0
    for _ in range(3 * max_keys // 4096):  # about three generations of distinct keys, 4,096 a batch, no time passing
        keys = np.arange(key, key + 4096, dtype=np.uint64)
        key += 4096
        d.duplicates(keys, np.zeros(len(keys), dtype=np.int8), now)
        peak = max(peak, allocated(d))
    assert len(d._current.tables) == 1  # later generations start at the size the first one needed
    assert d.evictions > 0  # the bound was reached: generations were retired full
    full = ((1 << 21) + 8) * 8  # a table of 600,000 keys: 2**21 slots (load 1/2, rounded up), one bucket of slack
    assert peak == 2 * full  # two full generations (the first one's growth tables took less: 2**17 + 2**19 + 2**20)
    assert peak <= worst_case_bytes(max_keys)


def test_the_largest_tables_the_growth_rules_allow_reach_the_bound_exactly() -> None:
    """Each batch repeats one key, so it asks for room without filling it: every table added is as large as the
    whole generation may be, less the keys it holds (``m`` = 600,000: tables of 149,998, 599,995 and 599,998 keys)."""
    max_keys = 1_200_000
    m = max_keys // 2
    d = Deduplicator(WINDOW_MS, max_keys)
    _repeat(d, 1, 1, 0)  # the first generation (it starts at INITIAL_KEYS): the clock starts
    key = 2
    for generation in range(1, 4):
        now = generation * 2 * WINDOW_MS  # the window is over: the first batch starts a new generation
        first = 149_998  # twice the first batch, as the next generation is sized
        for n in (first // 2, first, m - 2):
            _repeat(d, key, n, now)
            key += 1
        assert [t.capacity for t in d._current.tables] == [first, 4 * (first + 1) - 1, m - 2]
    assert d._previous is not None and len(d._previous.tables) == 3
    assert allocated(d) == worst_case_bytes(max_keys)


@pytest.mark.parametrize("max_keys", [1, 2048, 2 * INITIAL_KEYS, 2 * INITIAL_KEYS + 2, 1_000_000, 7_200_000])
def test_the_bound_covers_two_generations_of_at_least_one_full_table(max_keys: int) -> None:
    m = max(max_keys // 2, 1024)
    one_full = (1 << max((2 * m - 1).bit_length(), 10)) * 8
    assert 2 * one_full <= worst_case_bytes(max_keys) <= 2 * (7 * one_full // 3 + 64 * 8)


def test_the_default_bound() -> None:
    assert worst_case_bytes(7_200_000) == 2 * (2 * 2**23 + 2**21 + 2**19 + 4 * 8) * 8  # about 296 MiB
