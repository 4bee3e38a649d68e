"""The immutable, compiled lookup index of subscriber bindings (see :mod:`mediation.subscribers.bindings` for
the rules it answers by).

Lookup
------
:class:`BindingIndex` keeps, per prefix length, the bindings sorted by ``(network, valid_from)`` and a table with one
24-byte record per network: its newest binding's start, end, subscriber and position. A query reads its network's
record (a direct array indexed by network number for IPv4 pools and other compact key ranges, else a hash table)
and is answered by it unless its time is before that binding's start (then it steps back through the network's
earlier bindings). Prefix lengths are probed longest first, only for the queries still unanswered; lengths keyed
alike whose networks do not nest (IPv4 /25s and /24s) share one table, and a batch of IPv4 addresses only visits
the tables that hold IPv4 networks. Each table is probed by one compiled loop over the queries (:func:`_probe`,
numba): key, slot, step back, validity and the answer per query in one pass, where numpy made a dozen passes over
the batch per prefix length. Changes since the last full build live in a small delta
index; closing (or extending) a binding updates ``valid_to`` in place. A lookup asks both and takes the longer
prefix: as the bindings of a network never overlap, at most one of them holds a binding of the query's network
valid at its time, so the answer does not depend on which rows the last rebuild put where.

Just over 500 lines: the index and its compiled lookup kernels are one data structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
from numba import njit

from mediation.hashing import CACHE, mix64, mix_word
from mediation.prefetch import prefetch
from mediation.subscribers.addresses import ALL_ONES, prefix_masks, split_addresses

_U64 = np.uint64
_NO_WORDS = np.zeros(0, dtype=_U64)
_NO_PLENS = np.zeros(0, dtype=np.int16)
_NO_ROWS = np.zeros(0, dtype=np.int64)


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
MERGE_MAX_BITS = 4
MERGE_MAX_GROWTH = 4
"""Prefix lengths keyed alike are merged into one table when the longest is at most MERGE_MAX_BITS longer than the
others and the table needs at most MERGE_MAX_GROWTH slots per network (see BindingIndex._merge)."""
FULL_PASS_SHARE = 0.5
"""In :meth:`BindingIndex.lookup`, a prefix length's kernel walks every query (skipping the answered ones), rather
than the unanswered ones gathered out, while at least this share of the queries is unanswered."""
_MODES = {"hi": 0, "lo": 1, "hash": 2}


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
    (two). The key words of a hashed table are arrays beside the slots (``ka``, ``kb``), read by the probe first.
    The numbers the kernel needs are uint64 (those of the other kind are 0).
    """

    def __init__(self, keys: tuple[np.ndarray, ...], records: np.ndarray) -> None:
        n = len(records)
        ka = keys[0]
        self.dense = False
        self.base = _U64(ka.min())
        self.span = self.shift = self.mask = self.low = self.width = self.size = self.empty_key = _U64(0)
        self.ka = self.kb = _NO_WORDS
        self.two_keys = len(keys) > 1
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
        self.slots = np.repeat(np.array([_EMPTY_SLOT], dtype=_SLOT), (1 << bits) + 1)
        np.put(self.slots, self.slot_of, records)
        self.ka = np.full((1 << bits) + 1, self.empty_key, dtype=_U64)
        self.ka[self.slot_of] = ka
        if self.two_keys:
            self.kb = np.zeros((1 << bits) + 1, dtype=_U64)
            self.kb[self.slot_of] = keys[1]

    def _home(self, keys: tuple[np.ndarray, ...]) -> np.ndarray:
        with np.errstate(over="ignore"):
            mixed = keys[0] if len(keys) == 1 else keys[0] ^ mix64(keys[1])
            return cast(np.ndarray, (mixed * _FIB) >> self.shift)


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
    # set by BindingIndex._build_group or _merge once the group is made:
    rows: np.ndarray = field(init=False)  # rows of the index, sorted by (network key, valid_from); the arrays below
    # in that order
    ids: np.ndarray = field(init=False)
    valid_from: np.ndarray = field(init=False)
    valid_to: np.ndarray = field(init=False)
    sub: np.ndarray = field(init=False)
    has_prev: np.ndarray = field(init=False)  # the position before holds an earlier-started binding of its network
    table_slot: np.ndarray = field(init=False)  # slot of the network in ``table`` where this is its newest binding,
    # else -1
    table: _NetworkTable = field(init=False)
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

    def probe(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, sub: np.ndarray, found: np.ndarray) -> int:
        """Answer, in place, the queries that ``sub`` leaves unanswered (-1) and this group's networks answer (see
        :func:`_probe`; ``found``: the position of each answer in this group, else -1); returns how many queries
        are left unanswered."""
        tb = self.table
        return int(_probe(hi, lo, t, _MODES[self.mode], self.mode == "hi" and not self.prefix_len, self.shift,
                          self.mask_hi, self.mask_lo, self.const_hi, tb.dense, tb.two_keys, tb.base, tb.span,
                          tb.shift, tb.mask, tb.low, tb.width, tb.size, tb.empty_key, tb.ka, tb.kb, tb.slots,
                          self.has_prev, self.valid_from, self.valid_to, self.sub, sub, found))

    def attach(self, found: np.ndarray, row: np.ndarray, plen: np.ndarray, ids: bool) -> None:
        """Where :meth:`probe` answered (``found``), the binding's row and prefix length, or (``ids``) its id."""
        _attach(found, self.ids if ids else self.rows, _NO_PLENS if self.plens is None else self.plens,
                self.prefix_len, row, plen, not ids)


_AHEAD = 32
"""The lookup kernel prefetches the table slot of the query this many places ahead (see :mod:`mediation.prefetch`;
in the Mediator the tables are out of the caches: 32 took the lookups from 63 to 45 ns per record, 8 to 64 tried):
a data-dependent branch per query (found or not, stepped back or not) would otherwise stall each cache miss behind
the last."""


@njit(nogil=True, cache=CACHE)
def _key(h: np.uint64, lo: np.uint64, mode: int, zero_key: bool, shift: np.uint64, mask_hi: np.uint64,
         mask_lo: np.uint64) -> tuple[np.uint64, np.uint64]:
    """A query's network key words (see :meth:`_Group.keys`; the second is 0 unless ``mode`` 2 keys both halves)."""
    if mode == 0:
        return (np.uint64(0) if zero_key else h >> shift), np.uint64(0)
    if mode == 1:
        return lo >> shift, np.uint64(0)
    return h & mask_hi, lo & mask_lo


@njit(nogil=True, cache=CACHE)
def _home(k0: np.uint64, k1: np.uint64, dense: bool, two_keys: bool, base: np.uint64, span: np.uint64,
          shift: np.uint64, low: np.uint64, width: np.uint64, size: np.uint64) -> np.uint64:
    """Where a key's probe starts in a :class:`_NetworkTable`: dense, its slot ``key - base`` (the last, empty slot
    when out of range; below base wraps around, so out of range too); hashed, its home (keys outside the networks'
    range of first words: the extra empty slot at the end, where the probe stops at once)."""
    if dense:
        off = k0 - base
        return min(off, span)
    home = ((k0 ^ mix_word(k1) if two_keys else k0) * np.uint64(0x9E3779B97F4A7C15)) >> shift
    return size if k0 - low > width else home  # (a select, no branch: half the queries are out of range)


@njit(nogil=True, cache=CACHE)
def _slot(pos: np.uint64, k0: np.uint64, k1: np.uint64, dense: bool, two_keys: bool, mask: np.uint64,
          empty_key: np.uint64, ka: np.ndarray, kb: np.ndarray) -> np.uint64:
    """The slot of a key from its :func:`_home`: dense, that one; hashed, linear probing until the key's words or an
    empty slot (an absent key: its record matches nothing)."""
    if dense:
        return pos
    while True:  # load <= 0.5: an empty slot ends every probe
        w = ka[pos]
        if (w == k0 and (not two_keys or kb[pos] == k1)) or w == empty_key:
            return pos
        pos = (pos + np.uint64(1)) & mask


@njit(nogil=True, cache=CACHE)
def _prefetch_slot(slots: np.ndarray, ka: np.ndarray, dense: bool, pos: np.uint64) -> None:
    """Prefetch a slot's record and, hashed, its first key word (read first by the probe)."""
    prefetch(slots, np.int64(pos))  # type: ignore[call-arg]
    if not dense:
        prefetch(ka, np.int64(pos))


@njit(nogil=True, cache=CACHE)
def _probe(hi: np.ndarray, lo: np.ndarray, t: np.ndarray, mode: int, zero_key: bool, shift: np.uint64,
           mask_hi: np.uint64, mask_lo: np.uint64, const_hi: np.uint64, dense: bool, two_keys: bool, base: np.uint64,
           span: np.uint64, tshift: np.uint64, tmask: np.uint64, low: np.uint64, width: np.uint64, size: np.uint64,
           empty_key: np.uint64, ka: np.ndarray, kb: np.ndarray, slots: np.ndarray, has_prev: np.ndarray,
           valid_from: np.ndarray, valid_to: np.ndarray, subs: np.ndarray, sub: np.ndarray,
           found: np.ndarray) -> int:
    """One group's lookup of the queries still unanswered in ``sub``: the network key (``mode`` 0: high half >>
    shift, or 0 with ``zero_key``; 1: low half >> shift, the high half compared with ``const_hi``; 2: both halves
    masked), its table slot, holding the network's newest binding; if that started after the query's time, the
    network's earlier bindings back to the one that started last at or before it; the answer if the time is before
    that binding's end. Writes ``sub`` and ``found`` (the binding's position in the group, else -1); returns the
    number of queries left unanswered.

    Every query is probed, answered or not, and the answer taken by selects, not branches: whether a query is
    answered is data (half the addresses of a batch are the remote side, unknown), and a mispredicted branch per
    query costs more than the probe. Rows and ids are attached by :func:`_attach` afterwards: stores that may or
    may not happen in the loop kept it several times slower."""
    never = np.int64(-9223372036854775808)
    n = len(hi)
    for i in range(min(_AHEAD, n)):
        k0, k1 = _key(hi[i], lo[i], mode, zero_key, shift, mask_hi, mask_lo)
        pos = _home(k0, k1, dense, two_keys, base, span, tshift, low, width, size)
        _prefetch_slot(slots, ka, dense, pos)
    left = 0
    for i in range(n):
        if i + _AHEAD < n:
            k0, k1 = _key(hi[i + _AHEAD], lo[i + _AHEAD], mode, zero_key, shift, mask_hi, mask_lo)
            pos = _home(k0, k1, dense, two_keys, base, span, tshift, low, width, size)
            _prefetch_slot(slots, ka, dense, pos)
        h = hi[i]
        k0, k1 = _key(h, lo[i], mode, zero_key, shift, mask_hi, mask_lo)
        pos = _home(k0, k1, dense, two_keys, base, span, tshift, low, width, size)
        rec = slots[_slot(pos, k0, k1, dense, two_keys, tmask, empty_key, ka, kb)]
        ti = t[i]
        end, s, at = rec.valid_to, rec.sub, np.int64(rec.pos)
        if rec.valid_from > ti:  # the newest binding started after t: an earlier one of the network may decide
            end = never
            q = at
            while has_prev[q]:
                q -= 1
                if valid_from[q] <= ti:
                    end, s, at = valid_to[q], subs[q], q
                    break
        before = sub[i]
        ok = (ti < end) & ((mode != 1) | (h == const_hi)) & (before < 0)  # (& and |: no short-circuit branches)
        answer = s if ok else before
        sub[i] = answer
        found[i] = at if ok else -1
        left += answer < 0
    return left


@njit(nogil=True, cache=CACHE)
def _attach(found: np.ndarray, attached: np.ndarray, plens: np.ndarray, prefix_len: int, row: np.ndarray,
            plen: np.ndarray, with_plen: bool) -> None:
    """``row`` = ``attached`` (rows or ids) at the positions ``found`` (where >= 0) and, ``with_plen``, ``plen``
    their prefix length (``plens`` of a merged group, else ``prefix_len``)."""
    for i in range(len(found)):
        at = found[i]
        if at >= 0:
            row[i] = attached[at]
            if with_plen:
                plen[i] = plens[at] if len(plens) else prefix_len


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
        mhi, mlo = (_U64(m) for m in prefix_masks(plen))
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
        m.rows = np.concatenate([g.rows for g in run])
        m.ids = np.concatenate([g.ids for g in run])
        m.valid_from = np.concatenate([g.valid_from for g in run])
        m.valid_to = np.concatenate([g.valid_to for g in run])
        m.sub = np.concatenate([g.sub for g in run])
        m.has_prev = np.concatenate([g.has_prev for g in run])
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
        sub: np.ndarray = np.full(n, -1, dtype=np.int32)
        row: np.ndarray = np.full(n, -1, dtype=np.int64)
        plen: np.ndarray = np.full(n, -1, dtype=np.int16)
        if not n:
            return sub, row, plen
        # one compiled signature: contiguous, aligned, writable uint64 halves and int64 times (copies only where they
        # are not; a read-only Arrow buffer would otherwise compile a second signature at the first batch)
        hi = np.require(hi, dtype=_U64, requirements=["C", "A", "W"])
        lo = np.require(lo, dtype=_U64, requirements=["C", "A", "W"])
        t = np.require(t, dtype=np.int64, requirements=["C", "A", "W"])
        found = np.empty(n, dtype=np.int64)
        v4 = not hi.any()  # all IPv4-mapped: groups only IPv6 can match are left out
        left = n
        for g in self._v4_groups if v4 else self.groups:
            if left < FULL_PASS_SHARE * n:  # the unanswered queries gathered out, answered, scattered back
                todo = np.flatnonzero(sub < 0)
                part = sub[todo]
                left -= len(todo) - g.probe(hi[todo], lo[todo], t[todo], part, found[:len(todo)])
                sub[todo] = part
                if attach is not None:
                    prow, pplen = row[todo], plen[todo]
                    g.attach(found[:len(todo)], prow, pplen, attach == "ids")
                    row[todo], plen[todo] = prow, pplen
            else:
                left = g.probe(hi, lo, t, sub, found)
                if attach is not None:
                    g.attach(found, row, plen, attach == "ids")
            if not left:
                break
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


def index_from_arrays(sub: np.ndarray, addresses: np.ndarray, prefix_len: np.ndarray, valid_from: np.ndarray,
                      valid_to: np.ndarray) -> BindingIndex:
    """A :class:`BindingIndex` straight from arrays (benchmarks and bulk loads); ids are row numbers."""
    hi, lo = split_addresses(addresses)
    plen = np.asarray(prefix_len, dtype=np.int16)
    mask_hi = np.where(plen >= 64, _U64(ALL_ONES), (_U64(ALL_ONES) << (64 - np.minimum(plen, 64)).astype(_U64)))
    mask_lo = np.where(plen >= 128, _U64(ALL_ONES),
                       np.where(plen <= 64, _U64(0), _U64(ALL_ONES) << (128 - np.maximum(plen, 64)).astype(_U64)))
    return BindingIndex(np.arange(len(sub)), sub, hi & mask_hi, lo & mask_lo, plen, valid_from, valid_to)


def warm_up() -> None:
    """Compile the lookup kernel now (or load it from numba's disk cache), so the first batch does not wait for
    it (one signature: every table kind and answer kind is an argument)."""
    one = np.ones(1, dtype=_U64)
    index = BindingIndex(np.zeros(1), np.zeros(1), np.zeros(1, dtype=_U64), one, np.full(1, 128), np.zeros(1),
                         np.ones(1))
    index.lookup(np.zeros(1, dtype=_U64), one, np.zeros(1, dtype=np.int64))
