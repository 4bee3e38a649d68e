"""De-duplication of flow records within a bounded window: per datagram where a resend is what repeats, per record
where the same flow comes from several routers.

Which key a record gets, by its exporter's role (``exporter_roles``, longest prefix wins):

* ``primary`` (the default): only that exporter's own resends are duplicates, and a resend repeats a whole datagram
  (same exporter, same bytes), so the key is the datagram's identity (the ``datagram`` column: a digest of the
  exporter and the datagram's bytes, made by the decoders, :mod:`decoders.digest`): one key per datagram, about 30
  records, instead of one per record. A resent datagram is a duplicate in full; a datagram that repeats only some
  records of an earlier one (or repeats them in another order, or with another header) is not a resend and counts
  in full. An identical copy in the same batch is found by the records' places in their datagram
  (``datagram_offset``): the first copy is kept, every later one is a duplicate (:func:`_datagram_runs`).
* ``shared``: a record key per record that leaves the exporter out (addresses, ports, protocol, start and end time,
  bytes and packets): the same flow exported by two routers of that role counts once.
* ``secondary``: duplicates by configuration (a router whose traffic a primary router already reports): all their
  records are counted as duplicate and kept out of usage.
* Records without a datagram identity (``datagram`` = 0: built by other tools, or stored before flowmed stored
  it) of a ``primary`` exporter get the record key with the exporter and observation domain in it, as before.

Record keys are also the ids of rejected records (:meth:`Deduplicator.keys`, ``rejects.reject_id``), whatever the
role: they do not change when de-duplication keys a record per datagram.

Keys (of both kinds) live in two generations of an open-addressing hash table (compiled insert-or-find, numba): a
key is remembered for at least ``window_ms`` and at most twice that of processing time, and at most ``max_keys``
keys are kept (a generation that fills up is retired early; that is counted as ``evictions``, since it shortens the
window). A batch is one compiled pass per table, in record order: the first occurrence of a key in a batch inserts
it, so its later occurrences find it (no sort of the batch).

Multi-worker: the kernel keeps an exporter on one worker (SO_REUSEPORT hashes the source address and port), so the
window of a ``primary`` exporter is complete in its worker. ``shared`` de-duplication across routers is exact only
when those routers' datagrams reach the same worker (always with ``workers = 1``).
"""
from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence

import numpy as np
from numba import njit

from mediation.aggregate import warm_up as warm_up_aggregate
from mediation.hashing import CACHE, hash_columns
from mediation.hashing import warm_up as warm_up_hashing
from mediation.prefetch import prefetch
from mediation.settings import ExporterRole
from mediation.subscribers.bindings import parse_network, split_addresses
from mediation.subscribers.index import warm_up as warm_up_index

ROLES = ("primary", "shared", "secondary")
RECORD_KEY = ("exporter", "observation_domain", "src_addr", "dst_addr", "src_port", "dst_port", "protocol",
               "flow_start", "flow_end", "bytes", "packets")
"""The columns of a record key (:meth:`Deduplicator.keys`)."""
INITIAL_KEYS = 1 << 16
"""The first generation starts this small and grows as it fills; later ones start at the size the previous one
needed (so a daemon in steady state never re-hashes a generation), bounded by ``max_keys``."""

_WAYS = 8
"""Slots per bucket: 8 uint64 keys, one 64-byte cache line (the slots are allocated 64-byte aligned)."""
_WAYS_SHIFT = 3
_AHEAD = 16
"""The probe prefetches the home slot of the key this many places ahead: a table of millions of keys is far larger
than the caches (and the TLB), and without it a probe's branches would serialise the cache misses (measured on
8 M keys: 18 ns per lookup with it, 41 without, 68 with the numpy gathers it replaced)."""
Int = int | np.int64
"""Integers in the kernels: numba compiles Python ints and np.int64 alike (int64), mypy tells them apart."""
_SEED = np.uint64(secrets.randbits(64) | 1)
"""Odd multiplier of the home slots (:meth:`_Table._home`), secret and random per process."""


@njit(nogil=True, cache=CACHE)
def _find(slots: np.ndarray, key: np.uint64, home: Int) -> bool:
    """Whether ``key`` is in the table, given its home slot (see :class:`_Table` for the two rules)."""
    cur = slots[home]
    if cur == key:
        return True
    if cur == 0:
        return False
    buckets = len(slots) // _WAYS
    b = home >> _WAYS_SHIFT
    for _ in range(buckets):
        base = b << _WAYS_SHIFT
        free = False
        for j in range(_WAYS):
            v = slots[base + j]
            if v == key:
                return True
            if v == 0:
                free = True
        if free:
            return False
        b = (b + 1) & (buckets - 1)
    return False


@njit(nogil=True, cache=CACHE)
def _put(slots: np.ndarray, key: np.uint64, home: Int) -> int:
    """Insert ``key`` unless it is there: 1 when inserted, 0 when it was present (-1: the table is full, which the
    generations' sizing rules out)."""
    cur = slots[home]
    if cur == key:
        return 0
    if cur == 0:
        slots[home] = key
        return 1
    buckets = len(slots) // _WAYS
    b = home >> _WAYS_SHIFT
    for _ in range(buckets):
        base = b << _WAYS_SHIFT
        free = -1
        for j in range(_WAYS):
            v = slots[base + j]
            if v == key:
                return 0
            if v == 0 and free < 0:
                free = j
        if free >= 0:
            slots[base + free] = key
            return 1
        b = (b + 1) & (buckets - 1)
    return -1


@njit(nogil=True, cache=CACHE)
def _probe(slots: np.ndarray, seed: np.uint64, shift: np.uint64, keys: np.ndarray, done: np.ndarray,
           insert: bool) -> int:
    """For every key not ``done`` yet, in order: ``done`` becomes whether the key was in the table; with ``insert``
    an absent key is inserted. Returns the number of keys inserted."""
    n = len(keys)
    inserted = 0
    for i in range(min(_AHEAD, n)):
        prefetch(slots, np.int64((keys[i] * seed) >> shift))  # type: ignore[call-arg]
    for i in range(n):
        ahead = i + _AHEAD
        if ahead < n and not done[ahead]:
            prefetch(slots, np.int64((keys[ahead] * seed) >> shift))  # type: ignore[call-arg]
        if done[i]:
            continue
        home = np.int64((keys[i] * seed) >> shift)
        if insert:
            r = _put(slots, keys[i], home)
            done[i] = r == 0
            inserted += r == 1
        else:
            done[i] = _find(slots, keys[i], home)
    return inserted


@njit(nogil=True, cache=CACHE, inline="always")
def _pair(x: np.uint64, off: Int, seed: np.uint64) -> np.uint64:
    """A key of (identity, offset) for the batch's set of record places."""
    return (x ^ (np.uint64(off + 1) * np.uint64(0x9E3779B97F4A7C15))) * seed


@njit(nogil=True, cache=CACHE)
def _datagram_runs(ident: np.ndarray, offset: np.ndarray, seed: np.uint64,
                   again: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of a batch's records and their datagram identities (``ident``, never 0): returns the distinct
    identities in order of first appearance, where each run starts (and the end, last) and the index of each run's
    identity among them; ``again[i]`` (False on entry) becomes True where the same place (identity, ``offset``) came
    earlier in the batch: the record is in a second copy of a datagram.

    The records of one datagram are split over template groups, but within a group they come in order: a *run* is a
    stretch of records of one identity with rising offsets. A run whose offsets lie outside every earlier run of its
    identity (their span, ``lo`` to ``hi``) cannot repeat a place: that settles nearly every run with two compares.
    Only an identity with overlapping runs (a copy, or a datagram whose sets alternate templates) has its records'
    places checked one by one, in a set of (identity, offset) keys made for the batch when first needed: the work
    stays linear in the records whatever the datagrams look like. ``seed``: the process's secret multiplier (see
    :class:`_Table`), so crafted identities cannot pile up in one slot."""
    n = ident.shape[0]
    first = np.empty(n + 1, dtype=np.int64)
    runs = 0
    for i in range(n):
        if i == 0 or ident[i] != ident[i - 1] or offset[i] <= offset[i - 1]:
            first[runs] = i
            runs += 1
    first[runs] = n
    size, bits = 16, 4
    while size < 2 * runs:
        size <<= 1
        bits += 1
    shift = np.uint64(64 - bits)
    keys = np.zeros(size, dtype=np.uint64)
    slot_uid = np.empty(size, dtype=np.int64)
    uniques = np.empty(runs, dtype=np.uint64)
    run_uid = np.empty(runs, dtype=np.int64)
    lo = np.empty(runs, dtype=np.int64)  # per identity: the span of its runs so far
    hi = np.empty(runs, dtype=np.int64)
    head = np.empty(runs, dtype=np.int64)  # per identity: its last run; per run: the one before it
    prev = np.empty(runs, dtype=np.int64)
    checked = np.zeros(runs, dtype=np.bool_)  # per identity: its places are in ``places``
    places = np.zeros(0, dtype=np.uint64)
    pmask = 0
    pshift = np.uint64(63)
    nu = 0
    for r in range(runs):
        f, e = first[r], first[r + 1]
        x = ident[f]
        h = np.int64((x * seed) >> shift)
        while keys[h] != 0 and keys[h] != x:
            h = (h + 1) & (size - 1)
        a, b = np.int64(offset[f]), np.int64(offset[e - 1])
        if keys[h] == 0:
            keys[h] = x
            slot_uid[h] = nu
            uniques[nu] = x
            run_uid[r] = nu
            lo[nu], hi[nu], head[nu] = a, b, r
            prev[r] = -1
            nu += 1
            continue
        u = slot_uid[h]
        run_uid[r] = u
        prev[r] = head[u]
        head[u] = r
        if not checked[u] and (b < lo[u] or a > hi[u]):
            lo[u], hi[u] = min(lo[u], a), max(hi[u], b)
            continue
        lo[u], hi[u] = min(lo[u], a), max(hi[u], b)
        if pmask == 0:  # the first identity to check in this batch: room for every record's place
            psize, pbits = 16, 4
            while psize < 2 * n:
                psize <<= 1
                pbits += 1
            places = np.zeros(psize, dtype=np.uint64)
            pmask = psize - 1
            pshift = np.uint64(64 - pbits)
        if not checked[u]:  # the places of its earlier runs first (each identity once)
            checked[u] = True
            q = prev[r]
            while q >= 0:
                for i in range(first[q], first[q + 1]):
                    k = _pair(x, offset[i], seed) | np.uint64(1)
                    p = np.int64(k >> pshift)
                    while places[p] != 0 and places[p] != k:
                        p = (p + 1) & pmask
                    places[p] = k
                q = prev[q]
        for i in range(f, e):
            k = _pair(x, offset[i], seed) | np.uint64(1)
            p = np.int64(k >> pshift)
            while places[p] != 0 and places[p] != k:
                p = (p + 1) & pmask
            if places[p] == k:
                again[i] = True
            else:
                places[p] = k
    return uniques[:nu], first[:runs + 1], run_uid


@njit(nogil=True, cache=CACHE)
def _spread(first: np.ndarray, run_uid: np.ndarray, present: np.ndarray, again: np.ndarray) -> None:
    """``again[i]`` |= whether the identity of record ``i``'s run was remembered before (``present`` per identity):
    ``again`` becomes the records' duplicate marks."""
    for r in range(run_uid.shape[0]):
        if present[run_uid[r]]:
            for i in range(first[r], first[r + 1]):
                again[i] = True

def _aligned_zeros(size: int) -> np.ndarray:
    """``size`` zeroed uint64 slots starting on a 64-byte boundary (a bucket is then exactly one cache line)."""
    raw = np.zeros(size + _WAYS, dtype=np.uint64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + size]


def _keys_arg(keys: np.ndarray) -> np.ndarray:
    # one compiled signature: C-contiguous, aligned, writable uint64 (a read-only array would be a second one)
    return np.require(keys, dtype=np.uint64, requirements=["C", "A", "W"])


class _Table:
    """A fixed-size open-addressing set of non-zero uint64 keys, in buckets of 8 slots (one 64-byte cache line).

    A key's home slot is the top bits of the key times a secret odd number of this process (:meth:`_home`). It goes
    there when that slot is free, else into the first free slot of the home's bucket, else (the bucket is full)
    into the next bucket, cyclically. Nothing is ever deleted, which gives two rules for finding a key: if its home
    slot is empty it is absent; if it is not in a bucket that still has a free slot, it is absent too. So one load
    of the home slot settles most keys (all but about the load factor, at most 1/2), and one look at its bucket's
    cache line nearly all of the rest (about 5 % of the buckets are full at a load of 1/2). Keys are probed in
    order by a compiled loop (:func:`_probe`), which prefetches the home slots a few keys ahead.
    """

    def __init__(self, capacity: int, recycle: np.ndarray | None = None) -> None:
        """``recycle``: the slots of a retired table, reused (zeroed) when they have the right size."""
        size = 1 << max(int(capacity * 2 - 1).bit_length(), 10)  # load factor <= 0.5
        if recycle is not None and len(recycle) == size:
            # one memset instead of faulting in fresh pages under the first batches (costly in VMs)
            recycle.fill(0)
            self.slots = recycle
        else:
            self.slots = _aligned_zeros(size)
        self.mask = size - 1
        self._seed = _SEED
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self.count = 0
        self.capacity = capacity

    def _home(self, keys: np.ndarray) -> np.ndarray:
        # The top bits of key * (secret odd number): record keys are an unseeded hash of what the exporter sends,
        # so homes taken from the key's own bits could be aimed at one bucket by crafted records. (The compiled
        # probe computes the same; this is the numpy form, for looking at the spread.)
        home = keys * self._seed
        home >>= self._shift
        return home.view(np.int64)

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert non-zero keys; returns True where a key was already present (or earlier in ``keys``)."""
        keys = _keys_arg(keys)
        present = np.zeros(len(keys), dtype=bool)
        self.insert_into(keys, present)
        return present

    def insert_into(self, keys: np.ndarray, done: np.ndarray) -> None:
        """Insert the keys not ``done`` (``keys``: see :func:`_keys_arg`); ``done`` becomes True where a key was
        present."""
        self.count += _probe(self.slots, self._seed, self._shift, keys, done, True)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is in the table."""
        keys = _keys_arg(keys)
        found = np.zeros(len(keys), dtype=bool)
        self.find_into(keys, found)
        return found

    def find_into(self, keys: np.ndarray, done: np.ndarray) -> None:
        """``done`` becomes True where a key not ``done`` yet is in the table."""
        _probe(self.slots, self._seed, self._shift, keys, done, False)


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
        """Insert non-zero keys; returns True where a key was already present (or earlier in ``keys``)."""
        keys = _keys_arg(keys)
        present = np.zeros(len(keys), dtype=bool)
        self.insert_into(keys, present)
        return present

    def insert_into(self, keys: np.ndarray, done: np.ndarray) -> None:
        """Insert the keys not ``done`` into the newest table, unless an older one holds them; ``done`` becomes
        True where a key was present."""
        for table in self.tables[:-1]:
            table.find_into(keys, done)
        self.tables[-1].insert_into(keys, done)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is in the generation."""
        keys = _keys_arg(keys)
        found = np.zeros(len(keys), dtype=bool)
        self.find_into(keys, found)
        return found

    def find_into(self, keys: np.ndarray, done: np.ndarray) -> None:
        """``done`` becomes True where a key not ``done`` yet is in the generation."""
        for table in reversed(self.tables):  # the largest table holds most keys: ask it first
            table.find_into(keys, done)


class Deduplicator:
    """Marks duplicate records; see the module docstring."""

    def __init__(self, window_ms: int, max_keys: int, roles: Sequence[ExporterRole] = ()) -> None:
        """``roles``: objects with ``prefix`` and ``role`` (e.g. ``ExporterRole``); longest prefix wins."""
        self.configure(window_ms, max_keys, roles)
        self._current = _Generation(min(self.max_keys, INITIAL_KEYS))
        self._previous: _Generation | None = None
        self._started_ms: int | None = None
        self.evictions = 0

    def configure(self, window_ms: int, max_keys: int, roles: Sequence[ExporterRole] = ()) -> None:
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
        if own.all():  # the usual batch (no shared-role exporter): the same words without two copies
            exporter, domain = cols["exporter"], cols["observation_domain"]
        else:
            exporter = np.where(own, cols["exporter"], np.zeros(len(own), dtype="S16"))
            domain = np.where(own, cols["observation_domain"], 0)
        k = hash_columns(exporter, domain, cols["src_addr"], cols["dst_addr"], cols["src_port"], cols["dst_port"],
                         cols["protocol"], cols["flow_start"], cols["flow_end"], cols["bytes"], cols["packets"])
        k[k == 0] = 1
        return k

    def mark(self, cols: dict[str, np.ndarray], exporter_role: np.ndarray, now_ms: int) -> np.ndarray:
        """True for the records (``cols``, ``flows`` columns) that are duplicates, keyed by role as the module
        docstring says: per datagram (``datagram``, ``datagram_offset``), per record, or by role."""
        role = np.asarray(exporter_role)
        ident = np.asarray(cols["datagram"], dtype=np.uint64)
        by_datagram = (role == 0) & (ident != 0)
        every = bool(by_datagram.all())
        rows = None if every else np.flatnonzero(by_datagram)
        uniques = np.zeros(0, dtype=np.uint64)
        if every or len(rows):  # type: ignore[arg-type]
            ident = ident if rows is None else ident[rows]
            offset = np.asarray(cols["datagram_offset"], dtype=np.uint16)
            offset = offset if rows is None else offset[rows]
            again = np.zeros(len(ident), dtype=bool)
            uniques, first, run_uid = _datagram_runs(_keys_arg(ident), np.ascontiguousarray(offset), _SEED, again)
        if every:  # the usual batch: primary exporters, decoded here
            self._rotate(now_ms, len(uniques))
            _spread(first, run_uid, self._remember(uniques), again)
            return again
        dup: np.ndarray = role == ROLES.index("secondary")
        per_record = np.flatnonzero(~by_datagram & ~dup)
        self._rotate(now_ms, len(uniques) + len(per_record))
        if len(uniques):
            _spread(first, run_uid, self._remember(uniques), again)
            dup[rows] = again
        if len(per_record):
            sub = {name: cols[name][per_record] for name in RECORD_KEY}
            dup[per_record] = self._remember(self.keys(sub, role[per_record]))
        return dup

    def _remember(self, keys: np.ndarray) -> np.ndarray:
        """True where a key is remembered (or earlier in ``keys``); the others are remembered from now on."""
        keys = _keys_arg(keys)
        found = np.zeros(len(keys), dtype=bool)
        if self._previous is not None:
            self._previous.find_into(keys, found)  # remembered, but not refreshed into the current generation
        self._current.insert_into(keys, found)
        return found

    def duplicates(self, keys: np.ndarray, exporter_role: np.ndarray, now_ms: int) -> np.ndarray:
        """True for records that are duplicates (of an earlier record, of one in the same batch, or by role)."""
        self._rotate(now_ms, len(keys))
        keys = _keys_arg(keys)
        # by role: neither looked up nor remembered
        dup: np.ndarray = np.asarray(exporter_role) == ROLES.index("secondary")
        if self._previous is not None:
            self._previous.find_into(keys, dup)  # remembered, but not refreshed into the current generation
        self._current.insert_into(keys, dup)  # in order: a key's first occurrence in the batch is the one kept
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


def worst_case_bytes(max_keys: int) -> int:
    """The most bytes the key tables of a :class:`Deduplicator` with ``max_keys`` ever hold, whatever the traffic
    (for the service's memory budget, ``collector.systemd.memory_budget``), provided no batch brings more than
    ``max_keys // 2`` keys (a batch is one receive batch of datagrams: thousands of keys, not millions).

    Both generations count, each at its worst: a generation holds at most ``m = max(max_keys // 2, 1024)`` keys
    but may be several tables (:class:`_Generation`), and a table of ``c`` keys has the power of two at or above
    ``2 * c`` slots (at least 1,024; load factor 1/2), of 8 bytes each, plus one bucket of alignment slack. The
    tables of a generation are largest when the rises that make it grow (:meth:`Deduplicator._rotate`) bring
    repeated keys or keys the previous generation holds, which are not inserted: each new table then has the
    capacity the whole generation gets. A generation's capacities grow at least fourfold per table (a table is
    added when more than the capacity is needed, with room for four times that) up to ``m``, so from the largest
    down they are at most ``m``, ``m - 1`` (the one before the last must have been too small for at most ``m``),
    then a quarter less one of the one after, down to the smallest a generation starts with
    (``min(m, INITIAL_KEYS)``). With the default 7,200,000 keys: 2 x (64 + 64 + 16 + 4) MiB, about 296 MiB; a steady
    stream of distinct keys peaks at 149 MiB (the first generation's 4 tables, 85 MiB, and a full later one).

    Tables being replaced do not add to this: a retired generation is dropped when its successor is made, whose
    fresh slots (``np.zeros``) take memory only as keys are written into them, by which time it is gone; the slots
    of the generation before the last are reused when they have the size needed.
    """
    m = max(max_keys // 2, 1024)
    floor = min(m, INITIAL_KEYS)
    capacities = [m]
    c = m - 1
    while c >= floor:
        capacities.append(c)
        c = c // 4 - 1
    # as _Table.__init__ sizes its slots, and _aligned_zeros allocates them (one bucket more, for the alignment)
    slots = sum((1 << max((2 * c - 1).bit_length(), 10)) + _WAYS for c in capacities)
    return 2 * slots * np.dtype(np.uint64).itemsize


def warm_up() -> None:
    """Compile mediation's kernels now (or load them from numba's disk cache), so the first batch of a mediating
    daemon does not wait for them: the record key, the de-duplication table, the subscriber lookup and the dense
    usage sums."""
    warm_up_hashing()
    warm_up_index()
    warm_up_aggregate()
    d = Deduplicator(1000, 2048)
    keys = np.array([1, 2, 1], dtype=np.uint64)
    d.duplicates(keys, np.zeros(len(keys), dtype=np.int8), 0)  # the one kernel, inserting and (previous) finding
    ident = np.array([5, 5, 6, 5], dtype=np.uint64)
    again = np.zeros(4, dtype=bool)
    _, first, run_uid = _datagram_runs(ident, np.array([0, 1, 0, 0], dtype=np.uint16), _SEED, again)
    _spread(first, run_uid, np.ones(2, dtype=bool), again)
