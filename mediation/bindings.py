"""Subscriber bindings with time validity, persisted in SQLite, looked up vectorised.

A binding says that ``subscriber_id`` held an address or prefix over the half-open UTC interval
``[valid_from, valid_to)`` (int64 ms; ``valid_to`` is :data:`OPEN_END_MS` while open). Sources are the static file
(:mod:`mediation.static_bindings`) and RADIUS accounting (:mod:`mediation.radius`).

Rules
-----
* Longest prefix wins; among bindings of the same network, the one that started last (at or before the time).
* Opening a binding on a network closes, at the new start, every binding of that same network still open then (an
  address handed to a new subscriber ends the old holder's binding even when its Stop was lost).
* History is never deleted: a removed binding gets ``valid_to`` set, so flows are attributed to whoever held the
  address at the flow's time, also when they arrive late.

Durability and sharing
----------------------
Every change goes to SQLite (WAL, ``synchronous=FULL``) in a transaction; :meth:`Bindings.commit` returns only
once it is on disk (the RADIUS listener answers after that). Each change carries a sequence number, so other
processes (workers) pick up changes with :meth:`Bindings.refresh`.

Lookup
------
:class:`BindingIndex` keeps, per prefix length, the bindings sorted by ``(network, valid_from)``, packed in one
int64 per binding (dense network rank in the high bits, ``valid_from`` relative to the group's earliest start in the
low bits), so one ``searchsorted`` finds the candidate and a vectorised check of network and ``valid_to`` confirms
it. Changes since the last full build live in a small delta index; closing a binding updates ``valid_to`` in place.

Memory horizon
--------------
The database keeps the whole history; the in-memory index does not have to. With :meth:`Bindings.set_memory_limits`
(the Mediator sets it from ``subscribers.memory_horizon_s`` / ``subscribers.max_memory_bindings``) and
:meth:`Bindings.maybe_prune` (the Mediator's tick), the periodic background rebuild leaves out bindings that were
closed before the *cutoff* (now minus the horizon), so the index holds the open bindings and the recent history only.
Lookups at times at or after the cutoff are answered from memory, exactly as before; lookups at older times (late
records that passed a widened ``mediation.max_lateness_s``, ``flowmed reprocess``) are answered from the database:
the bindings relevant to the older queries' time range are loaded into a temporary index (cached while the history
does not change). A binding closed before the cutoff stays in memory when an earlier-started binding of the same
network is still in it, so that dropping it cannot change which binding decides (see :data:`_KEEP_SQL`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mediation.hashing import mix64, string_hash
from mediation.tables import BINDINGS, OPEN_END_MS

log = logging.getLogger(__name__)

_U64 = np.uint64
_ALL_ONES = 0xFFFFFFFFFFFFFFFF
DELTA_REBUILD_ROWS = 65_536
"""Bindings opened since the last full build at which the base index is rebuilt."""
PRUNE_INTERVAL_MS = 3_600_000
"""How often (by the ``now_ms`` given to :meth:`Bindings.maybe_prune`) the cutoff advances and the index is rebuilt."""
FALLBACK_BUCKET_MS = 86_400_000
"""Time ranges of database lookups are widened to whole UTC days so that one loaded range serves many batches."""
_NO_CUTOFF = -(1 << 62)

# Rows a lookup at times >= :since needs: those still valid after it, and those that decide instead of an
# earlier-started binding of the same network still valid after it (the newest start at or before t decides, see
# BindingIndex._lookup_group). Rows starting after :until are never needed for times <= :until.
_KEEP_SQL = (
    "b.valid_from <= :until AND (b.valid_to > :since OR EXISTS (SELECT 1 FROM bindings y WHERE "
    "y.net_hi = b.net_hi AND y.net_lo = b.net_lo AND y.prefix_len = b.prefix_len AND y.valid_to > :since "
    "AND y.valid_from <= b.valid_from AND y.id <> b.id))")
_ROW_SQL = ("SELECT b.id, b.subscriber_id, b.net_hi, b.net_lo, b.prefix_len, b.valid_from, b.valid_to, b.source, "
            "b.session_id, b.nas, b.seq FROM bindings b")


# --- addresses -----------------------------------------------------------------------------------------------------

def split_addresses(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S16`` addresses as (high, low) big-endian uint64 halves."""
    words = np.ascontiguousarray(addresses, dtype="S16").view(">u8").reshape(-1, 2)
    return words[:, 0].astype(_U64), words[:, 1].astype(_U64)


def join_addresses(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_addresses`."""
    words = np.empty((len(hi), 2), dtype=">u8")
    words[:, 0] = hi
    words[:, 1] = lo
    return words.view("S16").reshape(len(hi))


def _masks(prefix_len: int) -> tuple[int, int]:
    if prefix_len <= 0:
        return 0, 0
    if prefix_len <= 64:
        return (_ALL_ONES << (64 - prefix_len)) & _ALL_ONES, 0
    return _ALL_ONES, (_ALL_ONES << (128 - prefix_len)) & _ALL_ONES


def parse_network(text: str) -> tuple[int, int, int]:
    """``"192.0.2.7"``, ``"10.0.0.0/24"`` or ``"2001:db8::/56"`` -> (hi, lo, prefix length in IPv6 terms).

    IPv4 is IPv4-mapped (``/32`` becomes ``/128``); host bits are cleared.
    """
    addr, _, length = text.strip().partition("/")
    try:  # inet_pton is strict and an order of magnitude faster than ipaddress
        if ":" in addr:
            value, plen = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big"), 128
        else:
            value, plen = (0xFFFF << 32) | int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big"), 128
            if length:
                length = str(int(length) + 96) if length.isdigit() and int(length) <= 32 else "x"
        if length:
            if not length.isdigit() or int(length) > 128:
                raise ValueError
            plen = int(length)
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP address or prefix") from None
    hi, lo = value >> 64, value & _ALL_ONES
    mhi, mlo = _masks(plen)
    return hi & mhi, lo & mlo, plen


def format_network(hi: int, lo: int, plen: int) -> str:
    """Inverse of :func:`parse_network` (IPv4-mapped networks are shown as IPv4)."""
    value = (int(hi) << 64) | int(lo)
    addr = ipaddress.IPv6Address(value)
    if addr.ipv4_mapped is not None and plen >= 96:
        return f"{addr.ipv4_mapped}/{plen - 96}" if plen < 128 else str(addr.ipv4_mapped)
    return f"{addr}/{plen}" if plen < 128 else str(addr)


# --- the immutable index ---------------------------------------------------------------------------------------------

_FIB = _U64(0x9E3779B97F4A7C15)
_COUNT_BITS = 20
_COUNT_MASK = (1 << _COUNT_BITS) - 1
DENSE_MAX_SLOTS = 1 << 25
"""Key spans up to this many slots (and at most 8 per network) use a direct array instead of a hash table."""


class _KeyMap:
    """Map from uint64 network keys to (first position, count) of their bindings, probed vectorised.

    Dense when the keys span a small range (an ISP's IPv4 pools): one array indexed by ``key - base``. Otherwise an
    open-addressing hash table (Fibonacci hashing, linear probing, load <= 0.5) of 16-byte slots.
    """

    def __init__(self, keys: np.ndarray, first: np.ndarray, count: np.ndarray) -> None:
        values = (first.astype(np.int64) << _COUNT_BITS) | np.minimum(count, _COUNT_MASK)
        self.dense: np.ndarray | None = None
        self.base = _U64(keys.min()) if len(keys) else _U64(0)
        span = int(keys.max()) - int(keys.min()) + 1 if len(keys) else 0
        if 0 < span <= min(DENSE_MAX_SLOTS, max(8 * len(keys), 1 << 16)):
            self.dense = np.zeros(span + 1, dtype=np.int64)  # the last slot stays empty: out-of-range keys land there
            self.dense[(keys - self.base).astype(np.int64)] = values
            return
        bits = max(int(len(keys) * 2).bit_length(), 4)
        self.shift = _U64(64 - bits)
        self.mask = _U64((1 << bits) - 1)
        self.slots = np.zeros(1 << bits, dtype=[("k", "<u8"), ("v", "<i8")])  # v == 0: empty slot
        todo = np.arange(len(keys))
        pos = self._home(keys)
        while len(todo):
            p = pos[todo]
            empty = self.slots["v"][p] == 0
            # claim empty slots; when two keys race for one slot, exactly one write survives
            self.slots["v"][p[empty]] = -1 - todo[empty]
            won = np.zeros(len(todo), dtype=bool)
            won[empty] = self.slots["v"][p[empty]] == -1 - todo[empty]
            wp, wi = p[won], todo[won]
            self.slots["k"][wp], self.slots["v"][wp] = keys[wi], values[wi]
            todo = todo[~won]
            pos[todo] = (pos[todo] + _U64(1)) & self.mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (keys * _FIB) >> self.shift

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, count) per key; count 0 where absent."""
        if self.dense is not None:
            off = keys - self.base  # wraps around for keys below base: out of range either way
            np.minimum(off, _U64(len(self.dense) - 1), out=off)
            v = self.dense.take(off.view(np.int64))
        else:
            pos = self._home(keys)
            slot = self.slots[pos]
            v = np.where(slot["k"] == keys, slot["v"], 0)
            todo = np.flatnonzero((v == 0) & (slot["v"] != 0))  # collided with another key: probe on
            while len(todo):
                pos[todo] = (pos[todo] + _U64(1)) & self.mask
                slot = self.slots[pos[todo]]
                hit = slot["k"] == keys[todo]
                v[todo[hit]] = slot["v"][hit]
                todo = todo[~hit & (slot["v"] != 0)]
        return v >> _COUNT_BITS, v & _COUNT_MASK


@dataclass
class _Group:
    prefix_len: int
    mask_hi: np.uint64
    mask_lo: np.uint64
    mode: str  # "hi" (prefix <= 64), "lo" (all networks share the high half) or "hash"
    const_hi: np.uint64
    rows: np.ndarray  # rows of the index, sorted by (network key, valid_from); the arrays below in that order
    valid_from: np.ndarray
    valid_to: np.ndarray
    sub: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    keymap: _KeyMap | None = None
    v6_only: bool = False

    def key(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        if self.mode == "hi":
            return hi & self.mask_hi
        if self.mode == "lo":
            return lo & self.mask_lo
        with np.errstate(over="ignore"):
            # exactness does not depend on this hash: every candidate's network is compared in full
            return mix64((hi & self.mask_hi) ^ mix64(lo & self.mask_lo))


class BindingIndex:
    """Immutable lookup structure over binding rows (arrays of equal length); ``valid_to`` may be updated in place
    with :meth:`set_valid_to`."""

    def __init__(self, ids: np.ndarray, sub: np.ndarray, hi: np.ndarray, lo: np.ndarray, plen: np.ndarray,
                 valid_from: np.ndarray, valid_to: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.sub = np.asarray(sub, dtype=np.int32)
        self.hi = np.asarray(hi, dtype=_U64)
        self.lo = np.asarray(lo, dtype=_U64)
        self.plen = np.asarray(plen, dtype=np.int16)
        self.valid_from = np.asarray(valid_from, dtype=np.int64)
        self.valid_to = np.array(valid_to, dtype=np.int64)  # a copy: updated in place on close
        self.groups: list[_Group] = []
        self._row_group = np.zeros(len(self.ids), dtype=np.int16)
        self._row_gpos = np.zeros(len(self.ids), dtype=np.int64)
        for p in sorted(np.unique(self.plen).tolist(), reverse=True):
            self._row_group[self.plen == p] = len(self.groups)
            self.groups.append(self._build_group(int(p), np.flatnonzero(self.plen == p)))
        self._id_order = np.argsort(self.ids, kind="stable")

    def __len__(self) -> int:
        return len(self.ids)

    def _build_group(self, plen: int, rows: np.ndarray) -> _Group:
        mhi, mlo = (_U64(m) for m in _masks(plen))
        hi, lo = self.hi[rows], self.lo[rows]
        if plen <= 64:
            mode, const_hi = "hi", _U64(0)
        elif np.all(hi == hi[0]):
            mode, const_hi = "lo", hi[0]
        else:
            mode, const_hi = "hash", _U64(0)
        probe = _Group(plen, mhi, mlo, mode, const_hi, rows, *(np.empty(0),) * 5)
        keys = probe.key(hi, lo)
        order = np.lexsort((self.valid_from[rows], keys))
        keys, rows = keys[order], rows[order]
        self._row_gpos[rows] = np.arange(len(rows))
        group = _Group(plen, mhi, mlo, mode, const_hi, rows, self.valid_from[rows], self.valid_to[rows],
                       self.sub[rows], self.hi[rows], self.lo[rows])
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        counts = np.diff(np.append(starts, len(keys)))
        group.keymap = _KeyMap(keys[starts], starts, counts)
        group.v6_only = bool(np.all(group.hi != 0))
        return group

    def set_valid_to(self, rows: np.ndarray, valid_to: np.ndarray) -> None:
        """End bindings in place (closing never moves a binding in the index)."""
        self.valid_to[rows] = valid_to
        for gi, g in enumerate(self.groups):
            mine = self._row_group[rows] == gi
            g.valid_to[self._row_gpos[rows[mine]]] = np.asarray(valid_to)[mine] if np.ndim(valid_to) else valid_to

    def lookup(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, rows: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query address at time ``t``: subscriber index (or -1), binding row (or -1; all -1 unless ``rows``)
        and prefix length (or -1)."""
        n = len(hi)
        sub = np.full(n, -1, dtype=np.int32)
        row = np.full(n, -1, dtype=np.int64)
        plen = np.full(n, -1, dtype=np.int16)
        t = np.asarray(t, dtype=np.int64)
        for g in self.groups:
            if g.v6_only:  # no IPv4-mapped network in this group: IPv4 queries (high half 0) cannot match
                todo = np.flatnonzero((plen < 0) & (hi != 0))
            else:
                todo = None if g is self.groups[0] else np.flatnonzero(plen < 0)
            if todo is not None and len(todo) == 0:
                if g.v6_only and (plen < 0).any():
                    continue  # only IPv4 queries are left: the next (IPv4-holding) groups still apply
                break
            qhi, qlo, qt = (hi, lo, t) if todo is None else (hi[todo], lo[todo], t[todo])
            gpos = self._lookup_group(g, qhi, qlo, qt)
            hit = gpos >= 0
            where = hit if todo is None else todo[hit]
            found = gpos[hit]
            sub[where] = g.sub[found]
            if rows:
                row[where] = g.rows[found]
            plen[where] = g.prefix_len
        return sub, row, plen

    @staticmethod
    def _lookup_group(g: _Group, hi: np.ndarray, lo: np.ndarray, t: np.ndarray) -> np.ndarray:
        first, count = g.keymap.get(g.key(hi, lo))
        # the binding of this network that started last at or before t: step back from the newest
        pos = first + count - 1
        np.maximum(pos, 0, out=pos)
        vf = g.valid_from[pos]
        back = np.flatnonzero((vf > t) & (count > 1))
        while len(back):
            pos[back] -= 1
            vf[back] = g.valid_from[pos[back]]
            back = back[(pos[back] > first[back]) & (vf[back] > t[back])]
        ok = (count > 0) & (vf <= t) & (t < g.valid_to[pos])
        if g.mode == "lo":  # the key is the whole low half; the high half is the same for the whole group
            ok &= (hi & g.mask_hi) == g.const_hi
        elif g.mode == "hash":
            ok &= (g.hi[pos] == (hi & g.mask_hi)) & (g.lo[pos] == (lo & g.mask_lo))
        return np.where(ok, pos, -1)

    def rows_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """Rows holding binding ``ids`` (-1 where absent)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids, sorter=self._id_order)
        pos = np.minimum(pos, len(self.ids) - 1)
        rows = self._id_order[pos]
        return np.where(self.ids[rows] == ids, rows, -1)


# --- the durable, mutable store --------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    id INTEGER PRIMARY KEY,
    subscriber_id TEXT NOT NULL,
    net_hi INTEGER NOT NULL,
    net_lo INTEGER NOT NULL,
    prefix_len INTEGER NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_to INTEGER NOT NULL,
    source TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '',
    nas TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bindings_seq ON bindings(seq);
CREATE INDEX IF NOT EXISTS bindings_net ON bindings(net_hi, net_lo, prefix_len, valid_to);
CREATE INDEX IF NOT EXISTS bindings_session ON bindings(session_id, valid_to);
CREATE INDEX IF NOT EXISTS bindings_nas ON bindings(nas, valid_to);
CREATE INDEX IF NOT EXISTS bindings_from ON bindings(valid_from);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _s64(u: int) -> int:
    """uint64 as the signed int64 SQLite stores."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _u64(s: int) -> int:
    return s + (1 << 64) if s < 0 else s


_INIT_RETRY_S = 60.0


def _initialise(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL and create the schema, retrying while another process holds the lock.

    Workers start together on a fresh file. Two connections that both read the header and then both ask for
    the exclusive lock that the switch to WAL needs deadlock, and SQLite answers one of them "database is
    locked" at once, without waiting out the busy timeout; so the whole step is retried.
    """
    deadline = time.monotonic() + _INIT_RETRY_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + random.random() * 0.1)


class Bindings:
    """The binding history: durable in SQLite, indexed in memory for vectorised lookup.

    Writers (the RADIUS listener, the static file loader) call :meth:`open`, :meth:`close_session`,
    :meth:`close_nas`, :meth:`close_ids` and then :meth:`commit`; readers call :meth:`lookup` and, in other
    processes, :meth:`refresh`. Not thread-safe for writers; lookups may run while another thread commits.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        """Open (or create) the store at ``path``; ``None`` keeps it in memory (tests, benchmarks)."""
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path) if path is not None else ":memory:"
        # The busy timeout must cover the first statement too: another worker may be loading a large static file.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        _initialise(self.conn)
        self._lock = threading.Lock()
        self._names_lock = threading.Lock()
        self._rebuilding: threading.Thread | None = None
        self._rebuilt: tuple[BindingIndex, int, int] | None = None  # (index, complete up to seq, cutoff)
        self._names: list[str] = []
        self._name_hashes: list[int] = []
        self._name_index: dict[str, int] = {}
        self._in_tx = False
        self._tx_seqs: set[int] = set()  # sequence numbers allocated in the current transaction
        self._last_seq = 0
        self._base = BindingIndex(*(np.empty(0) for _ in range(7)))
        self._delta_rows: dict[int, tuple] = {}
        self._delta = self._base
        # memory horizon (see the module docstring): the index is complete for lookups at times >= _cutoff
        self._horizon_ms: int | None = None
        self._max_memory = 0
        self._cutoff = _NO_CUTOFF
        self._pending_cutoff = _NO_CUTOFF  # the cutoff the next rebuild applies
        self._next_prune_ms: int | None = None
        self._fallback_lock = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._fallback: tuple[int, int, int, BindingIndex] | None = None  # (since, until, seq, index)
        self.counters: dict[str, int] = {"pruned_rebuilds": 0, "memory_bound_hits": 0, "fallback_lookups": 0,
                                         "fallback_loads": 0}
        self._load_all()

    @classmethod
    def from_index(cls, index: BindingIndex, names: list[str]) -> Bindings:
        """An in-memory, read-only view over a prebuilt index (benchmarks; ``index.sub`` indexes ``names``)."""
        b = cls(None)
        for name in names:
            b.subscriber_index(name)
        with b._lock:
            b._base = index
        return b

    # subscriber names <-> dense per-process indexes
    def subscriber_index(self, name: str) -> int:
        """Dense index of a subscriber id (stable for this process's lifetime)."""
        idx = self._name_index.get(name)
        if idx is None:
            with self._names_lock:  # the rebuild thread registers names too
                idx = self._name_index.get(name)
                if idx is None:
                    self._names.append(name)
                    self._name_hashes.append(string_hash(name))
                    idx = self._name_index[name] = len(self._names) - 1
        return idx

    @property
    def subscriber_names(self) -> np.ndarray:
        """Object array of subscriber ids by dense index."""
        return np.array(self._names, dtype=object)

    def subscriber_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(names, 64-bit hashes of the names) by dense index, each with one extra last entry ("", 0) so that
        index -1 (no subscriber) maps to the empty id."""
        if getattr(self, "_arrays_n", -1) != len(self._names):
            with self._names_lock:  # a consistent snapshot while the rebuild thread may add names
                known, known_hashes = list(self._names), list(self._name_hashes)
            n = len(known)
            names = np.empty(n + 1, dtype=object)
            names[:n] = known
            names[n] = ""
            hashes = np.zeros(n + 1, dtype=_U64)
            hashes[:n] = known_hashes
            self._arrays, self._arrays_n = (names, hashes), n
        return self._arrays

    def __len__(self) -> int:
        """Bindings held in the in-memory index (not the history on disk)."""
        return len(self._base) + len(self._delta_rows)

    # --- memory horizon ---
    def set_memory_limits(self, horizon_ms: int | None, max_bindings: int = 0) -> None:
        """Keep in memory only bindings open or closed less than ``horizon_ms`` before the ``now_ms`` of
        :meth:`maybe_prune` (None: everything), and at most ``max_bindings`` (0: no bound; open bindings are never
        dropped, so the bound can be exceeded by them: counted in ``counters['memory_bound_hits']``)."""
        self._horizon_ms = None if horizon_ms is None else int(horizon_ms)
        self._max_memory = int(max_bindings)

    @property
    def cutoff_ms(self) -> int:
        """Lookups at times before this are answered from the database (very negative: none are)."""
        return self._cutoff

    def maybe_prune(self, now_ms: int) -> bool:
        """Advance the cutoff to ``now_ms`` minus the horizon and start a background rebuild without the bindings
        closed before it, at most every :data:`PRUNE_INTERVAL_MS` (call from a periodic tick, not per batch).
        Returns whether a rebuild was started."""
        if self._horizon_ms is None and not self._max_memory:
            return False
        if self._next_prune_ms is not None and now_ms < self._next_prune_ms:
            return False
        self._next_prune_ms = now_ms + PRUNE_INTERVAL_MS
        return self.prune(now_ms)

    def prune(self, now_ms: int) -> bool:
        """Rebuild the index now (in the background for a file database) leaving out what :meth:`maybe_prune`
        leaves out."""
        if self._in_tx and self.path == ":memory:":  # the rebuild would read the unfinished transaction: later
            self._next_prune_ms = None
            return False
        target = self._cutoff if self._horizon_ms is None else max(self._cutoff, int(now_ms) - self._horizon_ms)
        self._pending_cutoff = target
        self._fallback = None  # a loaded range of old history is not kept past the hour either
        self.counters["pruned_rebuilds"] += 1
        self._start_rebuild()
        return True

    # --- writing ---
    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _next_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = (row[0] if row else 0) + 1
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('seq', ?)", (seq,))
        self._tx_seqs.add(seq)
        return seq

    def open(self, subscriber_id: str, network: str | tuple[int, int, int], valid_from: int,
             valid_to: int = OPEN_END_MS, source: str = "static", session_id: str = "", nas: str = "") -> int:
        """Add a binding (in the current transaction) and close other open bindings of the same network at
        ``valid_from``. Returns the binding id."""
        hi, lo, plen = parse_network(network) if isinstance(network, str) else network
        self._begin()
        seq = self._next_seq()
        cur = self.conn.execute(
            "SELECT id FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? AND valid_to>? AND valid_from<=?",
            (_s64(hi), _s64(lo), plen, valid_from, valid_from))
        stale = [r[0] for r in cur.fetchall()]
        if stale:
            self.conn.executemany("UPDATE bindings SET valid_to=?, seq=? WHERE id=?",
                                  [(valid_from, seq, i) for i in stale])
        cur = self.conn.execute(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            "session_id, nas, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (subscriber_id, _s64(hi), _s64(lo), plen, valid_from, valid_to, source, session_id, nas, seq))
        return int(cur.lastrowid)

    def open_many(self, entries: list[tuple[str, tuple[int, int, int], int, int]], source: str = "static",
                  session_ids: list[str] | None = None) -> int:
        """:meth:`open` for many ``(subscriber_id, (hi, lo, prefix_len), valid_from, valid_to)`` at once (one
        sequence number, batched statements: a static file of 100,000 lines)."""
        if not entries:
            return 0
        self._begin()
        seq = self._next_seq()
        self.conn.executemany(
            "UPDATE bindings SET valid_to=?, seq=? WHERE net_hi=? AND net_lo=? AND prefix_len=? AND valid_to>? "
            "AND valid_from<=?",
            [(vf, seq, _s64(n[0]), _s64(n[1]), n[2], vf, vf) for _, n, vf, _ in entries])
        sessions = session_ids or [""] * len(entries)
        self.conn.executemany(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            "session_id, nas, seq) VALUES (?,?,?,?,?,?,?,?,'',?)",
            [(sub, _s64(n[0]), _s64(n[1]), n[2], vf, vt, source, sid, seq)
             for (sub, n, vf, vt), sid in zip(entries, sessions, strict=True)])
        return len(entries)

    def _close_where(self, where: str, args: tuple, valid_to: int) -> int:
        self._begin()
        ids = [r[0] for r in self.conn.execute(f"SELECT id FROM bindings WHERE {where} AND valid_to>?",
                                               (*args, valid_to)).fetchall()]
        if ids:
            seq = self._next_seq()
            # never end a binding before its start: such a binding becomes empty, not negative
            self.conn.executemany("UPDATE bindings SET valid_to=max(valid_from, ?), seq=? WHERE id=?",
                                  [(valid_to, seq, i) for i in ids])
        return len(ids)

    def close_session(self, session_id: str, valid_to: int) -> int:
        """End the open bindings of a RADIUS session at ``valid_to``; returns how many."""
        return self._close_where("session_id=?", (session_id,), valid_to)

    def close_nas(self, nas: str, valid_to: int) -> int:
        """End every open RADIUS binding reported by ``nas`` (Accounting-On/Off); returns how many."""
        return self._close_where("nas=? AND source='radius'", (nas,), valid_to)

    def close_ids(self, ids: list[int], valid_to: int) -> int:
        """End the given bindings at ``valid_to`` (static file entries that disappeared)."""
        n = 0
        for i in ids:
            n += self._close_where("id=?", (i,), valid_to)
        return n

    def session_bindings(self, session_id: str) -> list[tuple[int, str, int, int, int]]:
        """Open bindings of a session: (id, subscriber, hi, lo, prefix length)."""
        return [(r[0], r[1], _u64(r[2]), _u64(r[3]), r[4]) for r in self.conn.execute(
            "SELECT id, subscriber_id, net_hi, net_lo, prefix_len FROM bindings WHERE session_id=? AND valid_to>=?",
            (session_id, OPEN_END_MS)).fetchall()]

    def commit(self) -> pa.RecordBatch:
        """Make the current transaction durable (fsync), apply it to the index, return the changed bindings as a
        ``bindings`` table batch (for the outputs)."""
        if self._in_tx:
            self.conn.execute("COMMIT")
            self._in_tx = False
        mine, self._tx_seqs = self._tx_seqs, set()
        if self._rebuilt is not None:
            self._swap_rebuilt()
        # everything since our last look, ours and other processes' (sequence numbers are allocated in commit order)
        rows = self._fetch("seq>?", (self._last_seq,))
        self._apply(rows)
        return self._to_batch([r for r in rows if r[10] in mine])

    def rollback(self) -> None:
        """Drop the current transaction."""
        if self._in_tx:
            self.conn.execute("ROLLBACK")
            self._in_tx = False
        self._tx_seqs.clear()

    # --- reading ---
    def _fetch(self, where: str, args: tuple) -> list[tuple]:
        return self.conn.execute(
            "SELECT id, subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, session_id, nas, "
            f"seq FROM bindings WHERE {where} ORDER BY id", args).fetchall()

    def _load_all(self) -> None:
        self._last_seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
        rows, cutoff = self._kept_rows(self.conn, max(self._pending_cutoff, self._cutoff))
        self._rebuild(rows, cutoff)

    def _rebuild(self, rows: list[tuple], cutoff: int) -> None:
        index = self._index_of(rows)
        with self._lock:
            self._base = index
            self._cutoff = cutoff
            self._delta_rows = {}
            self._delta = BindingIndex(*(np.empty(0) for _ in range(7)))

    def _kept_rows(self, conn: sqlite3.Connection, cutoff: int) -> tuple[list[tuple], int]:
        """The rows the in-memory index needs for lookups at times >= ``cutoff`` (raised, when more than
        ``max_bindings`` would be kept, to drop the longest-closed bindings) and the cutoff used."""
        def fetch(since: int) -> list[tuple]:
            if since <= _NO_CUTOFF:
                return conn.execute(f"{_ROW_SQL} ORDER BY b.id").fetchall()
            return conn.execute(f"{_ROW_SQL} WHERE {_KEEP_SQL} ORDER BY b.id",
                                {"since": since, "until": OPEN_END_MS}).fetchall()

        rows = fetch(cutoff)
        if self._max_memory and len(rows) > self._max_memory:
            self.counters["memory_bound_hits"] += 1
            closed = np.sort(np.fromiter((r[6] for r in rows if r[6] < OPEN_END_MS), dtype=np.int64))
            excess = len(rows) - self._max_memory
            if len(closed):
                cutoff = max(cutoff, int(closed[min(excess, len(closed)) - 1]))
                rows = fetch(cutoff)
            log.warning("bindings: %d would be kept in memory, more than subscribers.max_memory_bindings = %d; "
                        "lookups before %d ms now read the database (%d kept)", excess + self._max_memory,
                        self._max_memory, cutoff, len(rows))
        return rows, cutoff

    def _index_of(self, rows: list[tuple]) -> BindingIndex:
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        sub = np.fromiter((self.subscriber_index(r[1]) for r in rows), dtype=np.int32, count=n)
        hi = np.fromiter((_u64(r[2]) for r in rows), dtype=_U64, count=n)
        lo = np.fromiter((_u64(r[3]) for r in rows), dtype=_U64, count=n)
        plen = np.fromiter((r[4] for r in rows), dtype=np.int16, count=n)
        vf = np.fromiter((r[5] for r in rows), dtype=np.int64, count=n)
        vt = np.fromiter((r[6] for r in rows), dtype=np.int64, count=n)
        return BindingIndex(ids, sub, hi, lo, plen, vf, vt)

    def _start_rebuild(self) -> None:
        """Rebuild the base index from a snapshot in a thread (a million bindings take a second or two: not on the
        event loop); :meth:`_swap_rebuilt` installs it and re-applies what changed since the snapshot."""
        if self.path == ":memory:":  # no second connection can see an in-memory database
            self._load_all()
            self._fallback = None
            return
        if self._rebuilding is not None:
            return
        target = max(self._pending_cutoff, self._cutoff)  # a cutoff raised by the bound does not go back

        def work() -> None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
                try:
                    conn.execute("BEGIN")  # one snapshot: the rows and the sequence they are complete up to
                    rows, cutoff = self._kept_rows(conn, target)
                    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
                    conn.execute("COMMIT")
                finally:
                    conn.close()
                self._rebuilt = (self._index_of(rows), seq, cutoff)
            except Exception:
                log.exception("rebuilding the binding index failed; the delta index stays in use")
            finally:
                self._rebuilding = None

        self._rebuilding = threading.Thread(target=work, name="bindings-rebuild", daemon=True)
        self._rebuilding.start()

    def _swap_rebuilt(self) -> None:
        rebuilt, self._rebuilt = self._rebuilt, None
        if rebuilt is None:
            return
        index, seq, cutoff = rebuilt
        with self._lock:
            self._base = index
            self._cutoff = cutoff
            self._delta_rows = {}
            self._delta = BindingIndex(*(np.empty(0) for _ in range(7)))
        # everything newer than the snapshot again, onto the new base (applying a change twice is harmless)
        self._apply(self._fetch("seq>?", (seq,)))

    def refresh(self) -> int:
        """Pick up changes committed by other processes since the last call; returns how many rows changed."""
        if self._rebuilt is not None:
            self._swap_rebuilt()
        rows = self._fetch("seq>?", (self._last_seq,))
        if rows:
            self._apply(rows)
        return len(rows)

    def _apply(self, rows: list[tuple]) -> None:
        if not rows:
            return
        self._last_seq = max(self._last_seq, max(r[10] for r in rows))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vt = np.array([r[6] for r in rows], dtype=np.int64)
        base_rows = self._base.rows_of_ids(ids)
        with self._lock:
            in_base = base_rows >= 0
            self._base.set_valid_to(base_rows[in_base], vt[in_base])  # closing: in place, no rebuild
            new = [r for r, b in zip(rows, in_base, strict=True) if not b]
            for r in new:
                self._delta_rows[r[0]] = r
        if len(self._delta_rows) > DELTA_REBUILD_ROWS:  # (the rebuild applies the cutoff and the bound too)
            self._start_rebuild()
        if new and self._delta_rows:
            d = sorted(self._delta_rows.values())
            delta = BindingIndex(
                np.array([r[0] for r in d], dtype=np.int64),
                np.array([self.subscriber_index(r[1]) for r in d], dtype=np.int32),
                np.array([_u64(r[2]) for r in d], dtype=_U64), np.array([_u64(r[3]) for r in d], dtype=_U64),
                np.array([r[4] for r in d], dtype=np.int16), np.array([r[5] for r in d], dtype=np.int64),
                np.array([r[6] for r in d], dtype=np.int64))
            with self._lock:
                self._delta = delta

    @staticmethod
    def _to_batch(rows: list[tuple]) -> pa.RecordBatch:
        if not rows:
            return BINDINGS.to_arrow({})
        hi = np.array([_u64(r[2]) for r in rows], dtype=_U64)
        lo = np.array([_u64(r[3]) for r in rows], dtype=_U64)
        nas = np.zeros(len(rows), dtype="S16")
        for i, r in enumerate(rows):
            if r[9]:
                try:
                    h, lw, _ = parse_network(r[9])
                    nas[i] = join_addresses(np.array([h], _U64), np.array([lw], _U64))[0]
                except ValueError:
                    pass
        return BINDINGS.to_arrow({
            "binding_id": np.array([r[0] for r in rows], dtype=np.uint64),
            "version": np.array([r[10] for r in rows], dtype=np.uint64),
            "subscriber_id": np.array([r[1] for r in rows], dtype=object),
            "network": join_addresses(hi, lo),
            "prefix_len": np.array([r[4] for r in rows], dtype=np.uint8),
            "valid_from": np.array([r[5] for r in rows], dtype=np.int64),
            "valid_to": np.array([r[6] for r in rows], dtype=np.int64),
            "source": np.array([r[7] for r in rows], dtype=object),
            "session_id": np.array([r[8] for r in rows], dtype=object),
            "nas": nas,
        })

    def all_bindings(self) -> pa.RecordBatch:
        """Every binding as a ``bindings`` table batch (for ``flowmed bindings export``)."""
        return self._to_batch(self._fetch("1", ()))

    def lookup(self, addresses: np.ndarray, times_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Subscriber index (or -1) and binding id (or -1) of each ``S16`` address at each time (int64 ms)."""
        hi, lo = split_addresses(addresses)
        sub, bid = self.lookup_split(hi, lo, np.asarray(times_ms, dtype=np.int64))
        return sub, bid

    def subscriber_ids(self, addresses: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
        """Subscriber id (object array; '' where none) of each ``S16`` address at each time: the
        ``address_lookup`` callable of :class:`mediation.ipdr_usage.IpdrUsage` and of compliance lookups."""
        sub, _ = self.lookup(addresses, times_ms) if len(addresses) else (np.zeros(0, np.int32), None)
        names, _ = self.subscriber_arrays()
        return names[np.where(sub < 0, len(names) - 1, sub)]

    def lookup_split(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, ids: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`lookup` on addresses already split into uint64 halves (binding ids only with ``ids``).

        Times before :attr:`cutoff_ms` are looked up in the database (see the module docstring)."""
        with self._lock:
            base, delta, cutoff = self._base, self._delta, self._cutoff
        if cutoff > _NO_CUTOFF and len(t):
            old = np.flatnonzero(t < cutoff)
            if len(old):
                return self._lookup_with_fallback(base, delta, hi, lo, t, old, ids)
        return self._lookup_memory(base, delta, hi, lo, t, ids)

    def _lookup_with_fallback(self, base: BindingIndex, delta: BindingIndex, hi: np.ndarray, lo: np.ndarray,
                              t: np.ndarray, old: np.ndarray, ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory (``base`` and ``delta``, complete for the recent times) for the recent times, the database for
        the ``old`` positions."""
        sub, bid = self._lookup_memory(base, delta, hi, lo, t, True)
        self.counters["fallback_lookups"] += len(old)
        index = self._fallback_index(int(t[old].min()), int(t[old].max()))
        osub, orow, _ = index.lookup(hi[old], lo[old], t[old])
        sub = sub.copy()
        sub[old] = osub
        bid = bid.copy()
        bid[old] = np.where(orow >= 0, index.ids[np.maximum(orow, 0)] if len(index) else -1, -1)
        return sub, (bid if ids else None)

    def _fallback_index(self, t0: int, t1: int) -> BindingIndex:
        """An index of the database rows needed for lookups in ``[t0, t1]`` (whole days), cached until a change
        could alter its answers."""
        since = t0 - t0 % FALLBACK_BUCKET_MS
        until = t1 - t1 % FALLBACK_BUCKET_MS + FALLBACK_BUCKET_MS - 1
        with self._fallback_lock:
            conn = self._reader()
            cached = self._fallback
            if cached is not None and cached[0] <= since and cached[1] >= until:
                c_since, c_until, c_seq, c_index = cached
                changed = conn.execute("SELECT id, valid_to FROM bindings WHERE seq > ? AND valid_from <= ?",
                                       (c_seq, c_until)).fetchall()
                if changed:  # a new binding in the range, or one closed within it: reload
                    rows = c_index.rows_of_ids(np.array([r[0] for r in changed], dtype=np.int64))
                    vt = np.array([r[1] for r in changed], dtype=np.int64)
                    if (rows < 0).any() or (vt <= c_until).any():
                        cached = None
                if cached is not None:
                    return c_index
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
            rows = conn.execute(f"{_ROW_SQL} WHERE {_KEEP_SQL} ORDER BY b.id",
                                {"since": since, "until": until}).fetchall()
            index = self._index_of(rows)
            self._fallback = (since, until, seq, index)
            self.counters["fallback_loads"] += 1
            return index

    def _reader(self) -> sqlite3.Connection:
        """A read connection of its own (the writer's connection may be inside a transaction of another thread)."""
        if self.path == ":memory:":
            return self.conn
        if self._read_conn is None:
            self._read_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            self._read_conn.execute("PRAGMA busy_timeout=10000")
        return self._read_conn

    @staticmethod
    def _lookup_memory(base: BindingIndex, delta: BindingIndex, hi: np.ndarray, lo: np.ndarray, t: np.ndarray,
                       ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if not len(delta) and not ids:  # the hot path: subscribers only
            return base.lookup(hi, lo, t, rows=False)[0], None
        sub, row, plen = base.lookup(hi, lo, t)
        bid = np.where(row >= 0, base.ids[np.maximum(row, 0)] if len(base) else -1, -1)
        if len(delta):
            dsub, drow, dplen = delta.lookup(hi, lo, t)
            dfrom = delta.valid_from[np.maximum(drow, 0)]
            bfrom = base.valid_from[np.maximum(row, 0)] if len(base) else dfrom
            better = (drow >= 0) & ((dplen > plen) | ((dplen == plen) & (dfrom >= bfrom)))
            sub = np.where(better, dsub, sub).astype(np.int32)
            bid = np.where(better, delta.ids[np.maximum(drow, 0)], bid)
        if not ids:
            return sub, None
        return sub, bid

    def close(self) -> None:
        """Close the database (rolls back an unfinished transaction)."""
        self.rollback()
        self.conn.close()
        if self._read_conn is not None:
            self._read_conn.close()


def index_from_arrays(sub: np.ndarray, addresses: np.ndarray, prefix_len: np.ndarray, valid_from: np.ndarray,
                      valid_to: np.ndarray) -> BindingIndex:
    """A :class:`BindingIndex` straight from arrays (benchmarks and bulk loads); ids are row numbers."""
    hi, lo = split_addresses(addresses)
    plen = np.asarray(prefix_len, dtype=np.int16)
    mask_hi = np.where(plen >= 64, _U64(_ALL_ONES), (_U64(_ALL_ONES) << (64 - np.minimum(plen, 64)).astype(_U64)))
    mask_lo = np.where(plen >= 128, _U64(_ALL_ONES),
                       np.where(plen <= 64, _U64(0), _U64(_ALL_ONES) << (128 - np.maximum(plen, 64)).astype(_U64)))
    return BindingIndex(np.arange(len(sub)), sub, hi & mask_hi, lo & mask_lo, plen, valid_from, valid_to)
