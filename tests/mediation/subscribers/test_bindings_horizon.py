"""Bindings memory horizon: the in-memory index drops long-closed bindings (they stay in SQLite), stays bounded over
months of RADIUS-like sessions, answers recent lookups from memory and older ones from the database, exactly as the
unpruned index does (which tests/mediation/subscribers/test_bindings.py checks against a brute-force reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import Config
from mediation.mediator import Mediator
from mediation.subscribers.bindings import Bindings, parse_network
from mediation.tables import OPEN_END_MS
from tests.mediation.mediation_helpers import T0, flows, s16
from tests.mediation.subscribers.test_bindings import binding_sets

DAY = 86_400_000
HOUR = 3_600_000
POOL = 4096  # addresses handed out again and again (a CGNAT-less IPv4 pool)


def _address(i: np.ndarray) -> list[str]:
    return [f"100.64.{k // 256}.{k % 256}" for k in (np.asarray(i) % POOL).tolist()]


def _settle(b: Bindings) -> None:
    """Wait for a background rebuild and install it."""
    thread = b._rebuilding
    if thread is not None:
        thread.join(60)
    b.refresh()


def _simulate(b: Bindings, days: int, per_day: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Sessions open and close (Start / Stop) day after day, pruning daily; returns session start, end, address
    number and the in-memory size after each day's prune."""
    rng = np.random.default_rng(seed)
    starts, ends, addrs, sizes = [], [], [], []
    open_sessions: list[tuple[str, int]] = []
    for day in range(days):
        t0 = T0 + day * DAY
        st_ = np.sort(t0 + rng.integers(0, DAY, per_day))
        ln = rng.integers(10 * 60_000, 20 * HOUR, per_day)
        ad = rng.integers(0, POOL, per_day)
        ids = [f"d{day}s{i}" for i in range(per_day)]
        b.open_many([(f"sub{a}", parse_network(n), int(s), OPEN_END_MS)
                     for a, n, s in zip(ad.tolist(), _address(ad), st_.tolist(), strict=True)],
                    source="radius", session_ids=ids)
        # Stops of the sessions that ended by the end of this day
        still = []
        for sid, end in open_sessions + list(zip(ids, (st_ + ln).tolist(), strict=True)):
            if end < t0 + DAY:
                b.close_session(sid, end)
            else:
                still.append((sid, end))
        open_sessions = still
        b.commit()
        starts.append(st_)
        ends.append(st_ + ln)
        addrs.append(ad)
        b.maybe_prune(t0 + DAY)
        _settle(b)
        sizes.append(len(b))
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(addrs), sizes


@pytest.mark.slow
def test_memory_stays_bounded_over_months_and_lookups_stay_exact(tmp_path):
    path = tmp_path / "bindings.sqlite"
    b = Bindings(path)
    b.set_memory_limits(7 * DAY, 0)
    days, per_day = 90, 1112  # 100,080 sessions over three months
    starts, ends, addrs, sizes = _simulate(b, days, per_day)
    total = b.conn.execute("SELECT count(*) FROM bindings").fetchone()[0]
    assert total == days * per_day  # the history stays on disk
    # in memory: about a week (plus the day in progress) of sessions, however long the history
    assert max(sizes[10:]) <= 9 * per_day
    assert sizes[-1] < total / 10
    now = T0 + days * DAY
    assert b.cutoff_ms == now - 7 * DAY

    # the reference: the unpruned index over the same database
    full = Bindings(path)
    assert len(full) == total
    rng = np.random.default_rng(7)
    q = rng.integers(0, len(starts), 3000)
    # inside each session, just before its start, just after its end; recent and months old
    t = np.concatenate([starts[q] + (ends[q] - starts[q]) // 2, starts[q] - 1, ends[q]])
    a = np.concatenate([addrs[q]] * 3)
    addresses = s16(_address(a))
    got_sub, got_id = b.lookup(addresses, t)
    want_sub, want_id = full.lookup(addresses, t)
    assert np.array_equal(got_id, want_id)
    assert _names(b, got_sub) == _names(full, want_sub)
    old = t < b.cutoff_ms
    assert 0 < old.sum() < len(t) and (got_id[old] >= 0).any() and (got_id[~old] >= 0).any()
    assert b.counters["fallback_lookups"] == old.sum()
    # a second batch of old lookups in the same days reuses the loaded range
    loads = b.counters["fallback_loads"]
    b.lookup(addresses[old][:10], t[old][:10])
    assert b.counters["fallback_loads"] == loads
    # a change of the old history (a static entry with an explicit past range) is seen by the next old lookup
    when = int(t[old][0])
    b.open("late-static", _address(a[old][:1])[0], when - 1, when + 1)
    b.commit()
    assert b.subscriber_names[b.lookup(addresses[old][:1], t[old][:1])[0]][0] == "late-static"
    full.close()
    b.close()


def test_max_memory_bindings_bounds_the_index_and_counts(tmp_path):
    b = Bindings(tmp_path / "bindings.sqlite")
    b.set_memory_limits(60 * DAY, 3000)
    _, _, _, sizes = _simulate(b, 20, 1000, seed=3)
    assert b.counters["memory_bound_hits"] > 0
    # measured right after each rebuild; a few closed bindings that still decide a lookup (an earlier-started
    # binding of their network is kept) stay beyond the bound
    assert max(sizes) <= 3000 + 30 and sizes[-1] < 20 * 1000 / 5
    assert b.cutoff_ms > T0  # the bound, not the 60-day horizon, moved the cutoff
    open_now = b.conn.execute("SELECT count(*) FROM bindings WHERE valid_to >= ?", (OPEN_END_MS,)).fetchone()[0]
    assert open_now > 0
    # open bindings are never dropped: every one is in memory, and lookups at their addresses now answer as the
    # unpruned index does
    rows = b.conn.execute("SELECT id, net_hi, net_lo FROM bindings WHERE valid_to >= ?", (OPEN_END_MS,)).fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    assert (b._base.rows_of_ids(ids) >= 0).all()
    words = np.array([[r[1] % (1 << 64), r[2] % (1 << 64)] for r in rows], dtype=">u8").view("S16").reshape(-1)
    t = np.full(len(rows), T0 + 20 * DAY, dtype=np.int64)
    full = Bindings(tmp_path / "bindings.sqlite")
    assert np.array_equal(b.lookup(words, t)[1], full.lookup(words, t)[1])
    full.close()
    b.close()


@settings(max_examples=150, deadline=None)
@given(binding_sets(), st.integers(-10, 210))
def test_pruned_index_answers_like_the_unpruned_one(data, cutoff):
    """Every cutoff, every binding pattern (including overlapping explicit ranges): the same answers."""
    ops, queries = data
    b, full = Bindings(), Bindings()
    for i, (net, start, length, closed) in enumerate(ops):
        for x in (b, full):
            x.open(f"sub{i}", net, start, start + length if closed else OPEN_END_MS)
    b.commit()
    full.commit()
    b.set_memory_limits(0, 0)
    b.prune(cutoff)
    assert b.cutoff_ms == cutoff
    addresses = s16([q[0] for q in queries])
    t = np.array([q[1] for q in queries], dtype=np.int64)
    got_sub, got_id = b.lookup(addresses, t)
    want_sub, want_id = full.lookup(addresses, t)
    assert np.array_equal(got_id, want_id)
    assert _names(b, got_sub) == _names(full, want_sub)


def _names(b: Bindings, sub: np.ndarray) -> list[str]:
    return [b.subscriber_names[i] if i >= 0 else "" for i in sub]


def test_a_binding_loaded_later_with_an_older_start_ends_where_the_newer_starts():
    """A static entry loaded later with an older start than an existing binding of its network ends at that
    binding's start (the newest start decides): the stored intervals are the answers, so dropping every binding
    that ended before the cutoff from memory changes no answer."""
    b, full = Bindings(), Bindings()
    for x in (b, full):
        x.open("x", "10.0.0.1", 50, 60)
        x.open("y", "10.0.0.1", 10)  # starts before x: ends where x starts
        x.commit()
    assert b.conn.execute("SELECT subscriber_id, valid_from, valid_to FROM bindings ORDER BY id").fetchall() == \
        [("x", 50, 60), ("y", 10, 50)]
    b.set_memory_limits(0, 0)
    b.prune(70)
    assert len(b) == 0  # both ended before the cutoff: on disk only
    t = np.array([100, 55, 20, 5], dtype=np.int64)
    a = s16(["10.0.0.1"] * 4)
    assert list(b.lookup(a, t)[1]) == list(full.lookup(a, t)[1]) == [-1, 1, 2, -1]


def test_mediator_prunes_on_tick_and_live_flows_still_correlate():
    """Through the Mediator: the tick prunes by the configured horizon; a flow inside the lateness limit is
    attributed from memory; one older than the limit is rejected as too_old (`flowmed reprocess` re-runs it, and
    its lookup then reads the database, as tested above)."""
    config = Config()
    b = Bindings()
    b.open("old-holder", "100.64.0.7", T0 - 60 * DAY, T0 - 50 * DAY)
    b.open("alice", "100.64.0.7", T0 - 2 * DAY)
    b.commit()
    m = Mediator(config, b)
    m.tick(T0)
    horizon = config.subscribers.memory_horizon_ms(config.mediation)
    assert horizon > config.mediation.max_lateness_s * 1000
    assert b.cutoff_ms == T0 - horizon and len(b) == 1  # the old holder is on disk only
    batch = flows([
        {"src": "100.64.0.7", "dst": "192.0.2.1", "start": T0 - 3600_000, "end": T0 - 3500_000, "bytes": 1000,
         "packets": 2, "received": T0},
        {"src": "100.64.0.7", "dst": "192.0.2.1", "start": T0 - 55 * DAY, "end": T0 - 55 * DAY + 1000,
         "bytes": 500, "packets": 1, "received": T0},
    ])
    m.process(batch, T0)
    assert m.counters["bytes_attributed"] == 1000
    assert m.counters["rejected_too_old"] == 1 and m.counters["bytes_rejected"] == 500
    # the reprocessing path (a widened lateness limit) correlates the old record from the database
    sub, _ = b.lookup(s16(["100.64.0.7"]), np.array([T0 - 55 * DAY], dtype=np.int64))
    assert b.subscriber_names[sub][0] == "old-holder"
