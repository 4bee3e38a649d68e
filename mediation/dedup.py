"""De-duplication of flow records by a deterministic record key within a bounded window.

The key hashes what identifies a flow: addresses, ports, protocol, start and end time, bytes and packets, plus, for
exporters with the ``primary`` role (the default), the exporter and observation domain, so only that exporter's own
resends are duplicates. Exporters with the ``shared`` role leave the exporter out of the key: the same flow exported
by two routers of that role counts once. ``secondary`` exporters are duplicates by configuration (a router whose
traffic a primary router already reports): all their records are counted as duplicate and kept out of usage.

Keys live in two generations of an open-addressing hash table (vectorised probing): a key is remembered for at least
``window_ms`` and at most twice that of processing time, and at most ``max_keys`` keys are kept (a generation that
fills up is retired early; that is counted as ``evictions``, since it shortens the window).

Multi-worker: the kernel keeps an exporter on one worker (SO_REUSEPORT hashes the source address and port), so the
window of a ``primary`` exporter is complete in its worker. ``shared`` de-duplication across routers is exact only
when those routers' datagrams reach the same worker (always with ``workers = 1``).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Sequence

import numpy as np

from mediation.hashing import hash_columns
from mediation.subscribers.bindings import parse_network, split_addresses

ROLES = ("primary", "shared", "secondary")
INITIAL_KEYS = 1 << 16
"""The first generation starts this small and grows as it fills; later ones start at the size the previous one
needed (so a daemon in steady state never re-hashes a generation), bounded by ``max_keys``."""

_WAYS = 8
"""Slots per bucket: 8 uint64 keys, one 64-byte cache line, probed with one row gather."""
_WAYS_SHIFT = 3
_BYTE_INDEX = np.uint64(0x0001020304050607)
_CHUNK = 8192
"""Keys per probe pass: the cache lines one pass touches (512 KiB) stay in L2 for its later rounds."""
_SEED = np.uint64(secrets.randbits(64) | 1)
"""Odd multiplier of the home slots (:meth:`_Table._home`), secret and random per process."""


def _by_chunk(keys: np.ndarray, step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``step`` over ``keys`` in chunks of :data:`_CHUNK`; its boolean answers joined."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    out = np.empty(len(keys), dtype=bool)
    for lo in range(0, len(keys), _CHUNK):
        out[lo:lo + _CHUNK] = step(keys[lo:lo + _CHUNK])
    return out


class _Table:
    """A fixed-size open-addressing set of non-zero uint64 keys, in buckets of 8 slots (one 64-byte cache line).

    A key's home slot is the top bits of the key times a secret odd number of this process (:meth:`_home`). It goes
    there when that slot is free, else into any free slot of the home's bucket, else (the bucket is full) into the
    next bucket, cyclically. Nothing is ever deleted, which gives two rules for finding a key: if its home slot is
    empty it is absent; if it is not in a bucket that still has a free slot, it is absent too. So one gather of the
    home slots settles most keys (all but about the load factor, at most 1/2), and one gather of their buckets' rows
    nearly all of the rest (about 5 % of the buckets are full at a load of 1/2). Each round is a fixed number of
    numpy passes over the keys still open; there is no Python loop per key.
    """

    def __init__(self, capacity: int, recycle: np.ndarray | None = None) -> None:
        """``recycle``: the slots of a retired table, reused (zeroed) when they have the right size."""
        size = 1 << max(int(capacity * 2 - 1).bit_length(), 10)  # load factor <= 0.5
        if recycle is not None and len(recycle) == size:
            # one memset instead of faulting in fresh pages under the first batches (costly in VMs)
            recycle.fill(0)
            self.slots = recycle
        else:
            self.slots = np.zeros(size, dtype=np.uint64)
        self._rows = self.slots.reshape(-1, _WAYS)
        self.mask = size - 1
        self._seed = _SEED
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._bmask = len(self._rows) - 1
        self.count = 0
        self.capacity = capacity

    def _home(self, keys: np.ndarray) -> np.ndarray:
        # The top bits of key * (secret odd number): record keys are an unseeded hash of what the exporter sends,
        # so homes taken from the key's own bits could be aimed at one bucket by crafted records.
        home = keys * self._seed
        home >>= self._shift
        return home.view(np.int64)  # int64 (intp): numpy gathers fastest with it

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct non-zero keys; returns True where a key was already present."""
        return _by_chunk(keys, self._insert_chunk)

    def _insert_chunk(self, keys: np.ndarray) -> np.ndarray:
        home = self._home(keys)
        cur = self.slots.take(home)
        present = cur == keys
        claim = np.flatnonzero(cur == 0)
        won = self._claim(home[claim], keys[claim])
        open_ = ~present
        open_[claim[won]] = False
        todo = np.flatnonzero(open_)
        if len(todo):  # home slot taken by another key (or by a key of this batch that won the race for it)
            self._insert_in_buckets(keys, todo, home[todo] >> _WAYS_SHIFT, present)
        return present

    def _claim(self, pos: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Write keys into free slots; when two keys race for one slot exactly one write survives (True there)."""
        self.slots[pos] = keys
        won = self.slots.take(pos) == keys
        self.count += int(np.count_nonzero(won))
        return won

    def _insert_in_buckets(self, keys: np.ndarray, todo: np.ndarray, bucket: np.ndarray, present: np.ndarray) -> None:
        k = keys[todo]
        while len(todo):
            rows = self._rows.take(bucket, axis=0)
            # a row of 8 bools is one uint64: non-zero when a slot matched; ``free`` has byte i = 1 when slot i is empty
            hit = (rows == k[:, None]).view(np.uint64).ravel() != 0
            free = (rows == 0).view(np.uint64).ravel()
            present[todo[hit]] = True
            claim = np.flatnonzero(~hit & (free != 0))
            f = free[claim]
            # lowest free slot: isolate the lowest set bit (byte j: 2**(8j)); the multiply moves byte j of 0x0001..07
            # (the value j) to the top byte
            first = (((f & (~f + np.uint64(1))) * _BYTE_INDEX) >> np.uint64(56)).view(np.int64)
            won = self._claim((bucket[claim] << _WAYS_SHIFT) + first, k[claim])
            open_ = ~hit
            open_[claim[won]] = False
            rest = np.flatnonzero(open_)
            # a loser retries its bucket (now with one more key in it); a key whose bucket is full moves on
            bucket = (bucket[rest] + (free[rest] == 0)) & self._bmask
            k = k[rest]
            todo = todo[rest]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is in the table."""
        return _by_chunk(keys, self._contains_chunk)

    def _contains_chunk(self, keys: np.ndarray) -> np.ndarray:
        home = self._home(keys)
        cur = self.slots.take(home)
        found = cur == keys
        todo = np.flatnonzero((cur != 0) & ~found)  # home slot held by another key: look in the bucket
        bucket = home[todo] >> _WAYS_SHIFT
        while len(todo):
            rows = self._rows.take(bucket, axis=0)
            hit = (rows == keys[todo][:, None]).view(np.uint64).ravel() != 0
            found[todo[hit]] = True
            full = (rows == 0).view(np.uint64).ravel() == 0
            go_on = np.flatnonzero(full & ~hit)  # no free slot: the key may have overflowed into the next bucket
            todo = todo[go_on]
            bucket = (bucket[go_on] + 1) & self._bmask
        return found


class _Generation:
    """The keys of one window generation: one table, or, while the first generation grows, several.

    Growing by re-hashing would stall the event loop (0.4 s for 2 M keys into a fresh 8 M-key table, longer than the
    socket buffer covers at high rates), so a generation that grows keeps its tables read-only and inserts into a
    new, larger one. Later generations start at the size the last one reached and stay one table.
    """

    def __init__(self, capacity: int, recycle: np.ndarray | None = None) -> None:
        self.tables = [_Table(capacity, recycle)]

    @property
    def count(self) -> int:
        return sum(t.count for t in self.tables)

    @property
    def capacity(self) -> int:
        """Keys it can hold: those of the full tables, plus what the newest one can take."""
        return sum(t.count for t in self.tables[:-1]) + self.tables[-1].capacity

    @property
    def slots(self) -> np.ndarray:
        """The largest table's slots (recycled by the generation after next)."""
        return self.tables[-1].slots

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` keys in all, without moving the keys held."""
        self.tables.append(_Table(max(capacity - self.count, 1024)))

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct non-zero keys; returns True where a key was already present."""
        if len(self.tables) == 1:
            return self.tables[0].insert(keys)
        present = self._in(self.tables[:-1], keys)
        fresh = np.flatnonzero(~present)
        present[fresh] = self.tables[-1].insert(keys[fresh])
        return present

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is in the generation."""
        return self._in(self.tables, keys)

    @staticmethod
    def _in(tables: list[_Table], keys: np.ndarray) -> np.ndarray:
        found = tables[-1].contains(keys)  # the largest table holds most keys: ask it first
        for table in reversed(tables[:-1]):
            rest = np.flatnonzero(~found)
            if not len(rest):
                break
            found[rest] = table.contains(keys[rest])
        return found


class Deduplicator:
    """Marks duplicate records (vectorised); see the module docstring."""

    def __init__(self, window_ms: int, max_keys: int, roles: Sequence = ()) -> None:
        """``roles``: objects with ``prefix`` and ``role`` (e.g. ``ExporterRole``); longest prefix wins."""
        self.configure(window_ms, max_keys, roles)
        self._current = _Generation(min(self.max_keys, INITIAL_KEYS))
        self._previous: _Generation | None = None
        self._started_ms: int | None = None
        self.evictions = 0

    def configure(self, window_ms: int, max_keys: int, roles: Sequence = ()) -> None:
        """(Re)configure window, size bound (from the next generation on) and exporter roles; keys are kept."""
        self.window_ms = window_ms
        self.max_keys = max(max_keys // 2, 1024)
        self._roles = sorted(((ipaddress.ip_network(r.prefix, strict=False), r.role) for r in roles),
                             key=lambda x: -x[0].prefixlen)
        self._role_cache: dict[bytes, int] = {}

    def role_of(self, exporter: bytes) -> int:
        """Role index (into ROLES) of an exporter address (16 bytes)."""
        role = self._role_cache.get(exporter)
        if role is None:
            role = 0
            if self._roles:
                hi, lo = split_addresses(np.array([exporter], dtype="S16"))
                value = (int(hi[0]) << 64) | int(lo[0])
                for net, r in self._roles:
                    h, lw, plen = parse_network(str(net))
                    shift = 128 - plen
                    if value >> shift == ((h << 64) | lw) >> shift:
                        role = ROLES.index(r)
                        break
            if len(self._role_cache) < 65536:
                self._role_cache[exporter] = role
        return role

    def keys(self, cols: dict[str, np.ndarray], exporter_role: np.ndarray) -> np.ndarray:
        """Record key per record (uint64, never 0)."""
        own = exporter_role == 0
        zero_exp = np.zeros(len(own), dtype="S16")
        exporter = np.where(own, cols["exporter"], zero_exp)
        domain = np.where(own, cols["observation_domain"], 0)
        k = hash_columns(exporter, domain, cols["src_addr"], cols["dst_addr"], cols["src_port"], cols["dst_port"],
                         cols["protocol"], cols["flow_start"], cols["flow_end"], cols["bytes"], cols["packets"])
        k[k == 0] = 1
        return k

    def duplicates(self, keys: np.ndarray, exporter_role: np.ndarray, now_ms: int) -> np.ndarray:
        """True for records that are duplicates (of an earlier record, of one in the same batch, or by role)."""
        self._rotate(now_ms, len(keys))
        dup = exporter_role == ROLES.index("secondary")
        idx = np.flatnonzero(~dup) if dup.any() else None  # None: every record (no secondary exporter in the batch)
        k = np.ascontiguousarray(keys if idx is None else keys[idx], dtype=np.uint64)
        seen = _later_occurrences(k)  # within the batch, the first occurrence of each key is not a duplicate
        first = None if seen is None else np.flatnonzero(~seen)
        if seen is None:
            seen = np.zeros(len(k), dtype=bool)
        kf = k if first is None else k[first]
        seen_f = self._previous.contains(kf) if self._previous is not None else np.zeros(len(kf), dtype=bool)
        fresh = np.flatnonzero(~seen_f)
        if len(fresh) == len(kf):
            seen_f = self._current.insert(kf)
        else:
            seen_f[fresh] = self._current.insert(kf[fresh])
        if first is None:
            seen = seen_f
        else:
            seen[first] = seen_f
        if idx is None:
            return seen
        dup[idx] = seen
        return dup

    def _rotate(self, now_ms: int, incoming: int) -> None:
        if self._started_ms is None:
            self._started_ms = now_ms
        needed = self._current.count + incoming
        if now_ms - self._started_ms < self.window_ms and self._current.capacity < needed <= self.max_keys:
            # small and cache-friendly first, growing fourfold (a few tables at most; see _Generation)
            self._current.grow(min(self.max_keys, 4 * needed))
            return
        full = needed > self._current.capacity
        if now_ms - self._started_ms >= self.window_ms or full:
            if full and now_ms - self._started_ms < self.window_ms:
                self.evictions += self._previous.count if self._previous is not None else 0
            # the next generation starts at the size this one needed, so a steady stream never re-hashes its keys
            # (the size only decides memory and when a generation grows: which keys it holds depends on max_keys)
            needed_before = self._current.count + self._current.count // 2
            retired, self._previous = self._previous, self._current
            self._current = _Generation(
                min(max(self.max_keys, incoming), max(INITIAL_KEYS, 2 * incoming, needed_before)),
                recycle=retired.slots if retired is not None else None)
            self._started_ms = now_ms


def _later_occurrences(keys: np.ndarray) -> np.ndarray | None:
    """True for every occurrence of a key but its first one in ``keys``; None when all keys are distinct."""
    if len(keys) < 2:
        return None
    ordered = np.sort(keys)  # values only: a fast SIMD sort; most batches have no repeat at all
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    later = np.ones(len(keys), dtype=bool)
    later[np.minimum.reduceat(order, starts)] = False  # the smallest index of each run of equal keys
    return later
