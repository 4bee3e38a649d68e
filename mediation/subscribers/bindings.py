"""Subscriber bindings with time validity, persisted in SQLite, looked up vectorised.

A binding says that ``subscriber_id`` held an address or prefix over the half-open UTC interval
``[valid_from, valid_to)`` (int64 ms; ``valid_to`` is :data:`OPEN_END_MS` while open). Sources are the static file
(:mod:`mediation.subscribers.static`) and RADIUS accounting (:mod:`mediation.subscribers.radius`).

Rules
-----
* Longest prefix wins; among bindings of the same network, the one that started last (at or before the time).
* The bindings of one network never overlap: opening a binding ends, at its start, every binding of that network
  that holds then (an address handed to a new subscriber ends the old holder's binding even when its Stop was lost),
  and a binding never lasts past the start of a later-starting binding of its network (a late report of an older
  session cannot take the address back from a newer one). Of two bindings starting at the same instant the one
  opened last wins (the other is left empty). So the stored intervals *are* the answers: who held an address at an
  instant is the binding whose ``[valid_from, valid_to)`` holds the instant, whether asked of this index, of the
  SQLite table or of the ``bindings`` table in the outputs (``flowmed trace``), and the answer does not depend on
  when the index was rebuilt.
* History is never deleted: a removed binding gets ``valid_to`` set, so flows are attributed to whoever held the
  address at the flow's time, also when they arrive late.

Durability and sharing
----------------------
Every change goes to SQLite (WAL, ``synchronous=FULL``) in a transaction; :meth:`Bindings.commit` returns only
once it is on disk (the RADIUS listener answers after that). Each change carries a sequence number, so other
processes (workers) pick up changes with :meth:`Bindings.refresh`.

Lookup
------
:class:`BindingIndex` keeps, per prefix length, the bindings sorted by ``(network, valid_from)`` and a table with one
24-byte record per network: its newest binding's start, end, subscriber and position. A query reads its network's
record (a direct array indexed by network number for IPv4 pools and other compact key ranges, else a hash table)
and is answered by it unless its time is before that binding's start (then it steps back through the network's
earlier bindings). Prefix lengths are probed longest first, only for the queries still unanswered; lengths keyed
alike whose networks do not nest (IPv4 /25s and /24s) share one table, and a batch of IPv4 addresses only visits
the tables that hold IPv4 networks. No ``np.where`` on the hot path: a data-dependent choice per element costs
about ten times the branch-free arithmetic used instead. Changes since the last full build live in a small delta
index; closing (or extending) a binding updates ``valid_to`` in place. A lookup asks both and takes the longer
prefix: as the bindings of a network never overlap, at most one of them holds a binding of the query's network
valid at its time, so the answer does not depend on which rows the last rebuild put where.

Memory horizon
--------------
The database keeps the whole history; the in-memory index does not have to. With :meth:`Bindings.set_memory_limits`
(the Mediator sets it from ``subscribers.memory_horizon_s`` / ``subscribers.max_memory_bindings``) and
:meth:`Bindings.maybe_prune` (the Mediator's tick), the periodic background rebuild leaves out bindings that were
closed before the *cutoff* (now minus the horizon), so the index holds the open bindings and the recent history only.
Lookups at times at or after the cutoff are answered from memory, exactly as before; lookups at older times (late
records that passed a widened ``mediation.max_lateness_s``, ``flowmed reprocess``) are answered from the database:
the bindings relevant to the older queries' time range are loaded into a temporary index (cached while the history
does not change).
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

# Rows a lookup at times >= :since needs: those still valid after it (the bindings of a network never overlap, so
# the binding that decides at t is valid at t). Rows starting after :until are never needed for times <= :until.
_KEEP_SQL = "b.valid_from <= :until AND b.valid_to > :since"
_CAPPED_END = ("min(?, coalesce((SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? "
               "AND valid_from>?), 9223372036854775807))")
"""SQL for the end of a binding being inserted: its requested end, or the start of the next binding of its network
if that is earlier (parameters: valid_to, net_hi, net_lo, prefix_len, valid_from)."""
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
_NEVER = np.iinfo(np.int64).min
DENSE_MAX_SLOTS = 1 << 25
"""Key spans up to this many slots (and at most 3 per network, or DENSE_FLOOR_SLOTS) use a direct array instead of a
hash table."""
DENSE_FLOOR_SLOTS = 1 << 18
"""Spans up to this many slots (6 MB) are direct arrays however few the networks: an IPv4 pool of up to a /14 keyed
by address, e.g. the RADIUS sessions opened since the last rebuild in the delta index."""
_SLOT = np.dtype([("valid_from", "<i8"), ("valid_to", "<i8"), ("sub", "<i4"), ("pos", "<i4")])
_EMPTY_SLOT = (_NEVER, _NEVER, -1, -1)  # starts before any time (no stepping back), valid at none: no match
PROBE_WINDOW = 8
"""Hash table slots read at once per query in the last rounds of probing (when few queries are left)."""
MERGE_MAX_BITS = 4
MERGE_MAX_GROWTH = 4
"""Prefix lengths keyed alike are merged into one table when the longest is at most MERGE_MAX_BITS longer than the
others and the table needs at most MERGE_MAX_GROWTH slots per network (see BindingIndex._merge)."""
FULL_PASS_SHARE = 0.5
"""In :meth:`BindingIndex.lookup`, a prefix length is probed with every query, rather than with the unanswered ones
gathered out, while at least this share of the queries is unanswered (gathering and scattering cost about as much
as probing)."""


class _NetworkTable:
    """Per network of one prefix length, its newest binding: start, end, subscriber and position in the group, in
    one 24-byte slot, so that the common lookup (the newest binding decides) reads one slot per query.

    Dense when the keys span a small range (an ISP's IPv4 pools keyed by network number: consecutive /24s are
    consecutive keys): slot ``key - base``, the last slot empty for keys out of range. Otherwise an open-addressing
    hash table (Fibonacci hashing, linear probing, load <= 0.5) whose slots also hold the one or two uint64 key
    words, compared in full; empty slots hold a key word no network has, so a probe stops on a matching or an empty
    slot (whose record matches nothing) without a separate occupancy test; keys outside the range of the networks'
    first key words go to an extra empty slot at the end without probing (most misses: the remote side of flows).
    Memory per network: dense at most 72 bytes (or 6 MB per table), hashed 64 to 128 (one key word) or 80 to 160
    (two).
    """

    def __init__(self, keys: tuple[np.ndarray, ...], records: np.ndarray) -> None:
        n = len(records)
        ka = keys[0]
        self.dense = False
        self.base = _U64(ka.min())
        span = int(ka.max()) - int(ka.min()) + 1
        if len(keys) == 1 and span <= min(DENSE_MAX_SLOTS, max(3 * n, DENSE_FLOOR_SLOTS)):
            self.dense = True
            self.span = _U64(span)
            self.slots = np.repeat(np.array([_EMPTY_SLOT], dtype=_SLOT), span + 1)  # (10x faster than [:] = ...)
            self.slot_of = (ka - self.base).astype(np.int64)  # each network's slot
            np.put(self.slots, self.slot_of, records)  # (put and take: [] on records is slow)
            return
        bits = max((2 * n).bit_length(), 4)
        self.shift = _U64(64 - bits)
        self.mask = _U64((1 << bits) - 1)
        # an empty slot's first key word: one no network has (a gap in the sorted words, or above the largest)
        words = np.unique(ka)
        gap = np.flatnonzero(np.diff(words) > 1)
        self.empty_key = _U64(0) if words[0] > 0 else _U64(words[gap[0]] + _U64(1)) if len(gap) \
            else _U64(words[-1] + _U64(1))
        claim = np.full(1 << bits, -1, dtype=np.int64)
        pos = self._home(keys)
        todo = np.arange(n)
        while len(todo):
            p = pos[todo]
            free = claim[p] < 0
            claim[p[free]] = todo[free]  # when two keys race for one free slot, exactly one write survives
            won = np.zeros(len(todo), dtype=bool)
            won[free] = claim[p[free]] == todo[free]
            todo = todo[~won]
            pos[todo] = (pos[todo] + _U64(1)) & self.mask
        self.slot_of = pos.astype(np.int64)
        self.low, self.width, self.size = _U64(words[0]), _U64(words[-1] - words[0]), _U64(1 << bits)
        self._steps = np.arange(1, PROBE_WINDOW + 1, dtype=_U64)
        self.key_fields = ("ka", "kb")[:len(keys)]
        slot = np.dtype(_SLOT.descr + [(f, "<u8") for f in self.key_fields])
        self.slots = np.repeat(np.array([_EMPTY_SLOT + (self.empty_key,) * len(keys)], dtype=slot), (1 << bits) + 1)
        full = np.empty(n, dtype=slot)
        for name in _SLOT.names:
            full[name] = records[name]
        for name, k in zip(self.key_fields, keys, strict=True):
            full[name] = k
        np.put(self.slots, self.slot_of, full)
        self.key_words = [np.ascontiguousarray(self.slots[name]) for name in self.key_fields]  # to probe on

    def _home(self, keys: tuple[np.ndarray, ...]) -> np.ndarray:
        with np.errstate(over="ignore"):
            mixed = keys[0] if len(keys) == 1 else keys[0] ^ mix64(keys[1])
            return (mixed * _FIB) >> self.shift

    def get(self, keys: tuple[np.ndarray, ...]) -> np.ndarray:
        """The slot record of each key (an empty slot's where absent). Dense tables may overwrite ``keys``."""
        if self.dense:
            off = np.subtract(keys[0], self.base, out=keys[0])  # wraps around below base: out of range either way
            np.minimum(off, self.span, out=off)
            return self.slots.take(off.view(np.int64))
        out = (keys[0] - self.low) > self.width  # (below low wraps around: above width)
        pos = np.minimum(self._home(keys) + out * self.size, self.size)  # out of range: the last slot (branch-free)
        found = self.slots.take(pos.view(np.int64))
        other = found["ka"] != keys[0]
        if len(keys) > 1:
            other |= found["kb"] != keys[1]
        moved = np.flatnonzero(other)
        moved = moved[found["ka"][moved] != self.empty_key]  # another network's slot: probe on (an empty one: absent)
        if not len(moved):
            return found
        todo = moved
        while len(todo) > 16 * PROBE_WINDOW:  # one slot at a time while many queries are left
            pos[todo] = (pos[todo] + _U64(1)) & self.mask
            p = pos[todo].view(np.int64)
            first = self.key_words[0].take(p)
            on = first != keys[0][todo]
            if len(keys) > 1:
                on |= self.key_words[1].take(p) != keys[1][todo]
            todo = todo[on & (first != self.empty_key)]
        while len(todo):  # then the next PROBE_WINDOW slots at once: few rounds for the rare long probes
            window = ((pos[todo][:, None] + self._steps) & self.mask).view(np.int64)
            first = self.key_words[0].take(window)
            stop = first == keys[0][todo][:, None]
            if len(keys) > 1:
                stop &= self.key_words[1].take(window) == keys[1][todo][:, None]
            stop |= first == self.empty_key
            done = stop.any(axis=1)
            pos[todo] = np.where(done, window[np.arange(len(todo)), stop.argmax(axis=1)], window[:, -1])
            todo = todo[~done]
        np.put(found, moved, self.slots.take(pos[moved].view(np.int64)))  # (put and take: [] on records is slow)
        return found


@dataclass
class _Group:
    """The bindings of one prefix length, sorted by (network, valid_from), and a table of each network's newest."""

    prefix_len: int
    mode: str  # "hi" (prefix <= 64: key = high half), "lo" (all networks share the high half ``const_hi``: key =
    # low half) or "hash" (key = both halves); "hi" and "lo" keys are shifted right past the host bits
    shift: np.uint64
    mask_hi: np.uint64
    mask_lo: np.uint64
    const_hi: np.uint64
    rows: np.ndarray = None  # rows of the index, sorted by (network key, valid_from); the arrays below in that order
    ids: np.ndarray = None
    valid_from: np.ndarray = None
    valid_to: np.ndarray = None
    sub: np.ndarray = None
    has_prev: np.ndarray = None  # the position before holds an earlier-started binding of the same network
    table_slot: np.ndarray = None  # slot of the network in ``table`` where this is its newest binding, else -1
    table: _NetworkTable | None = None
    # a merged group (see BindingIndex._merge): the prefix length of each position, and how many consecutive slots
    # from ``table_slot`` hold each network (a shorter prefix fills the slots of every longer one inside it)
    plens: np.ndarray | None = None
    table_span: np.ndarray | None = None
    v6_only: bool = False  # no network with a zero high half: IPv4-mapped queries (high half 0) cannot match
    v4_only: bool = False  # "lo" mode with a zero high half: only IPv4-mapped queries can match

    def keys(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.mode == "hi":
            return (hi >> self.shift,) if self.prefix_len else (np.zeros(len(hi), dtype=_U64),)
        if self.mode == "lo":
            return (lo >> self.shift,)
        return hi & self.mask_hi, lo & self.mask_lo

    def find(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, check_hi: bool, positions: bool = False
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per query, the subscriber (or -1) and, with ``positions``, the position (or -1) of the binding of its
        network at ``t``: the one that started last at or before ``t``, if ``t`` is before its end. ``check_hi``:
        compare the high half too ("lo" mode keys leave it out)."""
        slot = self.table.get(self.keys(hi, lo))
        valid_to, sub, pos = slot["valid_to"], slot["sub"], slot["pos"]
        late = slot["valid_from"] > t
        if late.any():  # the newest binding started after t: an earlier one of the network may decide
            self._step_back(np.flatnonzero(late), t, valid_to, sub, pos)
        ok = t < valid_to
        if check_hi:
            ok &= hi == self.const_hi
        # -1 where not found, without np.where: a data-dependent choice per element costs ~4 ns (mispredicted
        # branches); OR with 0 / -1 costs a tenth of that
        miss = ok.view(np.int8) - np.int8(1)
        return sub | miss, (pos | miss if positions else None)

    def _step_back(self, late: np.ndarray, t: np.ndarray, valid_to: np.ndarray, sub: np.ndarray,
                   pos: np.ndarray) -> None:
        """Replace, in place, the slots of the ``late`` queries by the binding of the network that started last at
        or before their time (no match if none did)."""
        p = pos[late].astype(np.int64)
        valid_to[late] = _NEVER
        while len(late):
            earlier = self.has_prev[p]
            late, p = late[earlier], p[earlier] - 1
            done = self.valid_from[p] <= t[late]
            at, pd = late[done], p[done]
            valid_to[at], sub[at], pos[at] = self.valid_to[pd], self.sub[pd], pd
            late, p = late[~done], p[~done]


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
            self.groups.append(self._build_group(int(p), np.flatnonzero(self.plen == p)))
        self.groups = self._merge_groups(self.groups)
        for gi, g in enumerate(self.groups):
            self._row_group[g.rows] = gi
            self._row_gpos[g.rows] = np.arange(len(g.rows))
        # an all-IPv4 batch (every high half 0) never matches the groups that only IPv6 queries can match
        self._v4_groups = [g for g in self.groups if not g.v6_only and not (g.mode == "lo" and g.const_hi != 0)]
        self._id_order = np.argsort(self.ids, kind="stable")

    def __len__(self) -> int:
        return len(self.ids)

    def _build_group(self, plen: int, rows: np.ndarray) -> _Group:
        mhi, mlo = (_U64(m) for m in _masks(plen))
        hi, lo = self.hi[rows], self.lo[rows]
        if plen <= 64:
            mode, shift, const_hi = "hi", _U64(64 - plen if plen else 0), _U64(0)
        elif np.all(hi == hi[0]):
            mode, shift, const_hi = "lo", _U64(128 - plen), hi[0]
        else:
            mode, shift, const_hi = "hash", _U64(0), _U64(0)
        g = _Group(plen, mode, shift, mhi, mlo, const_hi)
        keys = g.keys(hi, lo)
        order = np.lexsort((self.valid_from[rows], *reversed(keys)))
        keys, rows = tuple(k[order] for k in keys), rows[order]
        g.rows, g.valid_from, g.valid_to, g.sub = rows, self.valid_from[rows], self.valid_to[rows], self.sub[rows]
        g.ids = self.ids[rows]  # binding ids straight from a position (one memory access less than via rows)
        same = np.ones(len(rows) - 1, dtype=bool)
        for k in keys:
            same &= k[1:] == k[:-1]
        g.has_prev = np.concatenate(([False], same))
        newest = np.flatnonzero(np.concatenate((~same, [True])))
        records = np.empty(len(newest), dtype=_SLOT)
        records["valid_from"], records["valid_to"] = g.valid_from[newest], g.valid_to[newest]
        records["sub"], records["pos"] = g.sub[newest], newest
        g.table = _NetworkTable(tuple(k[newest] for k in keys), records)
        g.table_slot = np.full(len(rows), -1, dtype=np.int32)
        g.table_slot[newest] = g.table.slot_of
        g.v6_only = bool(np.all(hi != 0))
        g.v4_only = mode == "lo" and const_hi == 0
        return g

    def set_valid_to(self, rows: np.ndarray, valid_to: np.ndarray) -> None:
        """End bindings in place (closing never moves a binding in the index)."""
        rows = np.asarray(rows, dtype=np.int64)
        valid_to = np.broadcast_to(np.asarray(valid_to, dtype=np.int64), rows.shape)
        self.valid_to[rows] = valid_to
        for gi, g in enumerate(self.groups):
            mine = self._row_group[rows] == gi
            if not mine.any():
                continue
            gpos, vt = self._row_gpos[rows[mine]], valid_to[mine]
            g.valid_to[gpos] = vt
            slot = g.table_slot[gpos]
            newest = slot >= 0
            slot, vt = slot[newest], vt[newest]
            if g.table_span is not None:  # a merged group: every slot of the network
                span = g.table_span[gpos[newest]]
                slot = np.repeat(slot, span) + np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
                vt = np.repeat(vt, span)
            g.table.slots["valid_to"][slot] = vt

    @staticmethod
    def _mergeable(a: _Group, b: _Group) -> bool:
        return (a.mode == b.mode and a.mode in ("hi", "lo") and a.const_hi == b.const_hi and a.v6_only == b.v6_only
                and b.prefix_len > 0 and a.prefix_len - b.prefix_len <= MERGE_MAX_BITS)

    def _merge_groups(self, groups: list[_Group]) -> list[_Group]:
        """Runs of prefix lengths keyed alike (e.g. IPv4 /25s and /24s) merged into one group where that is exact."""
        out: list[_Group] = []
        i = 0
        while i < len(groups):
            j = i + 1
            while j < len(groups) and self._mergeable(groups[i], groups[j]):
                j += 1
            merged = self._merge(groups[i:j]) if j - i > 1 else None
            out.append(merged or groups[i])
            i = j if merged else i + 1
        return out

    def _merge(self, run: list[_Group]) -> _Group | None:
        """One group, keyed at the longest prefix length of ``run``, whose table holds each network of a shorter
        length in the slots of every longer network inside it: one probe instead of one per length. Exact only when
        no network of the run lies inside a shorter one of the run (each slot then belongs to one network, the
        longest match among the run's); None otherwise, or when the table would be too large or not dense."""
        top = run[0]
        nets, offset = [], 0
        for g in run:
            newest = np.flatnonzero(g.table_slot >= 0)
            keys = g.keys(self.hi[g.rows[newest]], self.lo[g.rows[newest]])[0]
            nets.append((keys, newest + offset, top.prefix_len - g.prefix_len))
            offset += len(g.rows)
        for a, (ka, _, bits_a) in enumerate(nets):
            for kb, _, bits_b in nets[a + 1:]:
                if np.isin(ka >> _U64(bits_b - bits_a), kb).any():
                    return None  # a longer network inside a shorter one: lengths must be probed in turn
        count = sum(len(k) for k, _, _ in nets)
        slots = sum(len(k) << bits for k, _, bits in nets)
        if slots > MERGE_MAX_GROWTH * count:
            return None
        keys = np.concatenate([np.repeat(k << _U64(bits), 1 << bits) + np.tile(np.arange(1 << bits, dtype=_U64),
                                                                                  len(k)) for k, _, bits in nets])
        span = int(keys.max()) - int(keys.min()) + 1
        if span > min(DENSE_MAX_SLOTS, max(3 * len(keys), DENSE_FLOOR_SLOTS)):
            return None  # (dense: a network's slots are consecutive, for set_valid_to)
        pos = np.concatenate([np.repeat(p, 1 << bits) for _, p, bits in nets])
        m = _Group(top.prefix_len, top.mode, top.shift, top.mask_hi, top.mask_lo, top.const_hi)
        m.rows, m.ids, m.valid_from, m.valid_to, m.sub, m.has_prev = (
            np.concatenate([getattr(g, name) for g in run])
            for name in ("rows", "ids", "valid_from", "valid_to", "sub", "has_prev"))
        m.plens = np.concatenate([np.full(len(g.rows), g.prefix_len, dtype=np.int16) for g in run])
        records = np.empty(len(keys), dtype=_SLOT)
        records["valid_from"], records["valid_to"] = m.valid_from[pos], m.valid_to[pos]
        records["sub"], records["pos"] = m.sub[pos], pos
        m.table = _NetworkTable((keys,), records)
        m.table_slot = np.full(len(m.rows), -1, dtype=np.int32)
        m.table_span = np.ones(len(m.rows), dtype=np.int32)
        for k, p, bits in nets:
            m.table_slot[p] = (k << _U64(bits)) - m.table.base
            m.table_span[p] = 1 << bits
        m.v6_only, m.v4_only = top.v6_only, top.v4_only
        return m

    def lookup(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, rows: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query address at time ``t``: subscriber index (or -1), binding row (or -1) and prefix length (or -1);
        row and prefix length are all -1 unless ``rows``."""
        return self._lookup(hi, lo, t, "rows" if rows else None)

    def lookup_ids(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query address at time ``t``: subscriber index (or -1) and binding id (or -1)."""
        sub, bid, _ = self._lookup(hi, lo, t, "ids")
        return sub, bid

    def _lookup(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, attach: str | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Subscribers, ``attach`` ("rows", "ids" or None: all -1) and, with rows, prefix lengths (else all -1)."""
        n = len(hi)
        t = np.asarray(t, dtype=np.int64)
        sub = np.full(n, -1, dtype=np.int32)
        row = np.full(n, -1, dtype=np.int64)
        plen = np.full(n, -1, dtype=np.int16)
        if not n:
            return sub, row, plen
        rows = attach is not None  # (named so: row holds ids when attach == "ids")
        with_plen = attach == "rows"
        v4 = not hi.any()  # all IPv4-mapped: groups only IPv6 can match are left out, no high-half check
        for i, g in enumerate(self._v4_groups if v4 else self.groups):
            check_hi = g.mode == "lo" and not (v4 and g.v4_only)
            todo = None  # None: probe every query
            if i:
                left = sub < 0
                if not v4 and g.v6_only:
                    left &= hi != 0
                elif not v4 and g.v4_only:
                    left &= hi == 0
                unanswered = np.count_nonzero(left)
                if not unanswered:
                    continue
                if unanswered < FULL_PASS_SHARE * n:
                    todo = np.flatnonzero(left)
                    check_hi &= not g.v4_only  # the queries left have a zero high half, as the networks
            gsub, gpos = g.find(hi if todo is None else hi[todo], lo if todo is None else lo[todo],
                                t if todo is None else t[todo], check_hi, rows)
            grow = gplen = None
            if rows:
                none = gpos >> 31  # -1 where not found, else 0: position -1 takes the last value, then ORs in -1
                grow = (g.rows if with_plen else g.ids).take(gpos) | none
                if with_plen:
                    gplen = (g.plens.take(gpos) | none if g.plens is not None else
                             (gsub >= 0) * np.int16(g.prefix_len + 1) - np.int16(1)).astype(np.int16)
            if todo is not None:
                sub[todo] = gsub
                if rows:
                    row[todo] = grow
                if with_plen:
                    plen[todo] = gplen
            elif not i:
                sub = gsub
                if rows:
                    row = grow
                if with_plen:
                    plen = gplen
            else:  # keep what a longer prefix found, take this group's answer elsewhere (-1 + answer + 1; no branch)
                unanswered = sub < 0
                if rows:
                    row += (grow + 1) * unanswered
                if with_plen:
                    plen += (gplen + np.int16(1)) * unanswered
                sub += (gsub + 1) * unanswered
        return sub, row, plen

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
CREATE INDEX IF NOT EXISTS bindings_net_from ON bindings(net_hi, net_lo, prefix_len, valid_from);
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
        self._separate_overlaps()
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
        if self.in_transaction and self.path == ":memory:":  # the rebuild would read the unfinished transaction: later
            self._next_prune_ms = None
            return False
        target = self._cutoff if self._horizon_ms is None else max(self._cutoff, int(now_ms) - self._horizon_ms)
        self._pending_cutoff = target
        self._fallback = None  # a loaded range of old history is not kept past the hour either
        self.counters["pruned_rebuilds"] += 1
        self._start_rebuild()
        return True

    # --- writing ---
    @property
    def in_transaction(self) -> bool:
        """A write transaction is open. SQLite's own state, not a flag of ours: SQLite ends a transaction by itself
        when a statement or the COMMIT fails with SQLITE_FULL or an I/O error."""
        return self.conn.in_transaction

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            if self._tx_seqs:  # SQLite rolled back what these belonged to (a statement failed): they are void
                self._tx_seqs.clear()
            self.conn.execute("BEGIN IMMEDIATE")

    def _next_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = (row[0] if row else 0) + 1
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('seq', ?)", (seq,))
        self._tx_seqs.add(seq)
        return seq

    def open(self, subscriber_id: str, network: str | tuple[int, int, int], valid_from: int,
             valid_to: int = OPEN_END_MS, source: str = "static", session_id: str = "", nas: str = "") -> int:
        """Add a binding (in the current transaction): bindings of the same network that hold at ``valid_from``
        end there, and the new one ends at the latest at the start of the next binding of the network (see the
        module docstring). Returns the binding id. Raises ValueError when ``valid_to <= valid_from``."""
        hi, lo, plen = parse_network(network) if isinstance(network, str) else network
        if valid_to <= valid_from:
            raise ValueError(f"empty binding interval [{valid_from}, {valid_to})")
        self._begin()
        seq = self._next_seq()
        net = (_s64(hi), _s64(lo), plen)
        self.conn.execute("UPDATE bindings SET valid_to=?, seq=? WHERE net_hi=? AND net_lo=? AND prefix_len=? "
                          "AND valid_to>? AND valid_from<=?", (valid_from, seq, *net, valid_from, valid_from))
        cur = self.conn.execute(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            f"session_id, nas, seq) VALUES (?,?,?,?,?,{_CAPPED_END},?,?,?,?)",
            (subscriber_id, *net, valid_from, valid_to, *net, valid_from, source, session_id, nas, seq))
        return int(cur.lastrowid)

    def open_many(self, entries: list[tuple[str, tuple[int, int, int], int, int]], source: str = "static",
                  session_ids: list[str] | None = None) -> int:
        """:meth:`open` for many ``(subscriber_id, (hi, lo, prefix_len), valid_from, valid_to)`` at once (one
        sequence number, batched statements: a static file of 100,000 lines)."""
        if not entries:
            return 0
        if any(vt <= vf for _, _, vf, vt in entries):
            raise ValueError("an entry with an empty binding interval")
        self._begin()
        seq = self._next_seq()
        self.conn.executemany(
            "UPDATE bindings SET valid_to=?, seq=? WHERE net_hi=? AND net_lo=? AND prefix_len=? AND valid_to>? "
            "AND valid_from<=?",
            [(vf, seq, _s64(n[0]), _s64(n[1]), n[2], vf, vf) for _, n, vf, _ in entries])
        sessions = session_ids or [""] * len(entries)
        self.conn.executemany(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            f"session_id, nas, seq) VALUES (?,?,?,?,?,{_CAPPED_END},?,?,'',?)",
            [(sub, _s64(n[0]), _s64(n[1]), n[2], vf, vt, _s64(n[0]), _s64(n[1]), n[2], vf, source, sid, seq)
             for (sub, n, vf, vt), sid in zip(entries, sessions, strict=True)])
        # entries of one network in one call did not see each other above: separate them now
        seen: set[tuple[int, int, int]] = set()
        repeated = {n for _, n, _, _ in entries if n in seen or seen.add(n)}
        for hi, lo, plen in repeated:
            self._separate(f"net_hi={_s64(hi)} AND net_lo={_s64(lo)} AND prefix_len={int(plen)}", seq)
        return len(entries)

    def end(self, binding_id: int, valid_to: int) -> int:
        """Set a binding's end to ``valid_to``, earlier or later than now, but never before its start nor past the
        start of the next binding of its network (a late report may extend its session's interval, never into a
        newer session's). Returns the end now stored (-1: no such binding)."""
        self._begin()  # read and write in one transaction
        row = self.conn.execute("SELECT valid_from, valid_to, net_hi, net_lo, prefix_len FROM bindings WHERE id=?",
                                (binding_id,)).fetchone()
        if row is None:
            return -1
        vf, vt, hi, lo, plen = row
        nxt = self.conn.execute(
            "SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? AND "
            "(valid_from>? OR (valid_from=? AND id>?))", (hi, lo, plen, vf, vf, binding_id)).fetchone()[0]
        new = max(vf, min(valid_to, nxt if nxt is not None else OPEN_END_MS))
        if new != vt:
            self.conn.execute("UPDATE bindings SET valid_to=?, seq=? WHERE id=?", (new, self._next_seq(), binding_id))
        return new

    def next_start(self, network: tuple[int, int, int], after: int) -> int | None:
        """The earliest start of a binding of ``network`` (hi, lo, prefix length) after ``after``, or None."""
        hi, lo, plen = network
        return self.conn.execute("SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? "
                                 "AND valid_from>?", (_s64(hi), _s64(lo), plen, after)).fetchone()[0]

    def _separate(self, where: str, seq: int) -> int:
        """End every binding (of the networks selected by ``where``) at the start of the next binding of its
        network, where it lasted longer; returns how many changed."""
        changed = self.conn.execute(
            "SELECT id, nxt FROM (SELECT id, valid_to, lead(valid_from) OVER (PARTITION BY net_hi, net_lo, prefix_len "
            f"ORDER BY valid_from, id) AS nxt FROM bindings WHERE {where}) WHERE nxt < valid_to").fetchall()
        self.conn.executemany("UPDATE bindings SET valid_to=?, seq=? WHERE id=?", [(n, seq, i) for i, n in changed])
        return len(changed)

    def _separate_overlaps(self) -> None:
        """Once per database: end bindings written before the rule that bindings of a network never overlap at the
        next start of their network (lookups already answered so: the binding that started last decides), so that
        the stored table gives the answers the index gives."""
        if self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone() is not None:
            return
        self._begin()
        try:
            if self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone() is not None:
                n = 0  # another process did it meanwhile
            else:
                seq = self._next_seq()
                n = self._separate("1", seq)
                # the pass's sequence number (0: nothing changed), for separation_to_publish()
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('separated', ?)", (seq if n else 0,))
            self.conn.execute("COMMIT")
        finally:
            self.rollback()  # (after a failed COMMIT; a no-op after a good one)
        if n:
            log.warning("bindings: %d bindings lasted past the start of a later binding of their network and were "
                        "ended there (lookups already treated them so)", n)

    def separation_to_publish(self) -> pa.RecordBatch | None:
        """The bindings that the one-time separation of an older database changed and that no writer has handed to
        the outputs yet (None: nothing to hand over), as a ``bindings`` batch; marked as handed over (the RADIUS
        listener emits them at its start, so that the outputs' table, read by ``flowmed trace``, ends them too)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone()
        if row is None or not row[0]:
            return None
        self._begin()
        try:
            rows = self._fetch("seq=?", (row[0],))
            self.conn.execute("UPDATE meta SET value=0 WHERE key='separated'")
        except Exception:
            self.rollback()
            raise
        self.commit()
        return self._to_batch(rows) if rows else None

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
        """End every RADIUS binding reported by ``nas`` that started at or before ``valid_to`` and holds past it
        (Accounting-On/Off: the NAS's sessions of before its restart); returns how many."""
        return self._close_where("nas=? AND source='radius' AND valid_from<=?", (nas, valid_to), valid_to)

    def close_ids(self, ids: list[int], valid_to: int) -> int:
        """End the given bindings at ``valid_to`` (static file entries that disappeared)."""
        n = 0
        for i in ids:
            n += self._close_where("id=?", (i,), valid_to)
        return n

    def session_history(self, session_id: str) -> list[tuple[int, tuple[int, int, int], int, int]]:
        """Every binding of a session, open or ended: (id, (hi, lo, prefix length), valid_from, valid_to), in order
        of start."""
        return [(r[0], (_u64(r[1]), _u64(r[2]), r[3]), r[4], r[5]) for r in self.conn.execute(
            "SELECT id, net_hi, net_lo, prefix_len, valid_from, valid_to FROM bindings WHERE session_id=? "
            "ORDER BY valid_from, id", (session_id,)).fetchall()]

    def commit(self) -> pa.RecordBatch:
        """Make the current transaction durable (fsync), apply it to the index, return the changed bindings as a
        ``bindings`` table batch (for the outputs).

        A COMMIT that fails (disk full, I/O error) leaves no transaction open: what SQLite did not roll back by
        itself is rolled back here, then the error is raised; nothing of the transaction is applied or returned.
        """
        mine, self._tx_seqs = self._tx_seqs, set()
        if self.conn.in_transaction:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                self.rollback()
                raise
        elif mine:  # SQLite rolled the transaction back by itself (a statement failed with SQLITE_FULL)
            raise sqlite3.OperationalError("the bindings transaction was rolled back by SQLite")
        # the changes of this transaction, read by their sequence numbers (not from what the index picks up below:
        # installing a rebuilt index may already have applied them)
        batch = self._to_batch(self._fetch("seq BETWEEN ? AND ?", (min(mine), max(mine)))) if mine else \
            self._to_batch([])
        self.refresh()
        return batch

    def rollback(self) -> None:
        """Drop the current transaction (nothing to do when SQLite already rolled it back)."""
        self._tx_seqs.clear()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

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
        ``address_lookup`` callable of :class:`mediation.ipdr.usage.IpdrUsage` and of compliance lookups."""
        sub, _ = self.lookup(addresses, times_ms) if len(addresses) else (np.zeros(0, np.int32), None)
        names, _ = self.subscriber_arrays()
        return names[np.where(sub < 0, len(names) - 1, sub)]

    def lookup_split(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, ids: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`lookup` on addresses already split into uint64 halves (binding ids only with ``ids``).

        Times before :attr:`cutoff_ms` are looked up in the database (see the module docstring)."""
        with self._lock:
            base, delta, cutoff = self._base, self._delta, self._cutoff
        if cutoff > _NO_CUTOFF and len(t) and t.min() < cutoff:
            return self._lookup_with_fallback(base, delta, hi, lo, t, np.flatnonzero(t < cutoff), ids)
        return self._lookup_memory(base, delta, hi, lo, t, ids)

    def _lookup_with_fallback(self, base: BindingIndex, delta: BindingIndex, hi: np.ndarray, lo: np.ndarray,
                              t: np.ndarray, old: np.ndarray, ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory (``base`` and ``delta``, complete for the recent times) for the recent times, the database for
        the ``old`` positions."""
        sub, bid = self._lookup_memory(base, delta, hi, lo, t, True)
        self.counters["fallback_lookups"] += len(old)
        index = self._fallback_index(int(t[old].min()), int(t[old].max()))
        osub, obid = index.lookup_ids(hi[old], lo[old], t[old])
        sub = sub.copy()
        sub[old] = osub
        bid = bid.copy()
        bid[old] = obid
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
                if changed:  # a new binding in the range, or one whose end moved within it (closed, extended): reload
                    rows = c_index.rows_of_ids(np.array([r[0] for r in changed], dtype=np.int64))
                    vt = np.array([r[1] for r in changed], dtype=np.int64)
                    old = c_index.valid_to[np.maximum(rows, 0)] if len(c_index) else vt
                    if (rows < 0).any() or (np.minimum(old, c_until + 1) != np.minimum(vt, c_until + 1)).any():
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
        if not len(delta):
            if not ids:  # the hot path: subscribers only
                return base.lookup(hi, lo, t, rows=False)[0], None
            return base.lookup_ids(hi, lo, t)
        # the delta (bindings opened since the last rebuild) is small and few queries hit it: base rows and prefix
        # lengths are only needed for those
        dsub, drow, dplen = delta.lookup(hi, lo, t)
        hit = np.flatnonzero(drow >= 0)
        sub, bid = base.lookup_ids(hi, lo, t) if ids else (base.lookup(hi, lo, t, rows=False)[0], None)
        _, _, bplen = base.lookup(hi[hit], lo[hit], t[hit])
        if len(hit):
            # the longer prefix decides (equal lengths would be one network with a valid binding in both, which
            # cannot be: the bindings of a network never overlap, and a row lives in one of the two)
            win = hit[dplen[hit] > bplen]
            sub[win] = dsub[win]
            if ids:
                bid[win] = delta.ids[drow[win]]
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
