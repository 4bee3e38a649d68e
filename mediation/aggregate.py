"""Interval splitting and usage aggregation with watermark closing and correction rows.

* :func:`split_intervals` cuts each record's ``[start, end)`` at interval boundaries (intervals aligned to the UTC
  epoch) and :func:`allocate` shares a counter among the parts by time overlap with integer largest-remainder
  allocation: every part gets ``floor(value * overlap / duration)`` and the few units left over go to the parts
  with the largest remainders (ties: the earlier part), so the parts add up exactly to the record's value.
* :class:`UsageAggregator` sums parts per key (interval, subscriber, direction, class, exporter). An interval stays
  open until ``now >= interval_end + watermark``; then its rows are emitted with ``correction = 0``. Parts for an
  interval that was already emitted are summed per call and emitted as correction rows (``correction = 1, 2, ...``),
  never dropped: readers sum all rows of a key. An open interval's sums live in dense arrays indexed by the key
  (one compiled pass per batch, :func:`_add_dense`, no sort) while the key ranges take at most
  :data:`DENSE_MAX_SLOTS` slots (the usual case: subscriber indexes are dense, exporters and classes few); beyond
  that, as rows summed per batch.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from numba import njit

from mediation.hashing import CACHE
from mediation.prefetch import prefetch

KEY_COLUMNS = ("interval_start", "sub", "direction", "cls", "exporter")
VALUE_COLUMNS = ("bytes", "packets", "flows")


def split_intervals(start: np.ndarray, end: np.ndarray, interval_ms: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parts of records ``[start, end)`` (int64 ms) per interval.

    Returns ``(record, interval_start, part_start, overlap, duration)``: the record index of each part, the start of
    the part's interval, when the part begins (the record's start or the interval's start: the time at which
    bindings are looked up), the part's time overlap and the record's duration (a zero-length record is one part of
    overlap 1 and duration 1). Parts of a record are contiguous and in time order.
    """
    start = np.asarray(start, dtype=np.int64)
    end = np.maximum(np.asarray(end, dtype=np.int64), start)
    if len(start) and isinstance(interval_ms, int | np.integer):
        lo = int(start.min()) // interval_ms
        if lo == (max(int(end.max()) - 1, int(start.max()))) // interval_ms:  # all in one interval: no division
            duration = np.maximum(end - start, 1)
            return np.arange(len(start)), np.full(len(start), lo * interval_ms, dtype=np.int64), start, duration, \
                duration
    first = start // interval_ms
    last = np.maximum(end - 1, start) // interval_ms
    nparts = last - first + 1
    if np.all(nparts == 1):  # the common case: no copies
        record = np.arange(len(start))
        duration = np.maximum(end - start, 1)
        return record, first * interval_ms, start, duration, duration
    record = np.repeat(np.arange(len(start)), nparts)
    offsets = np.arange(len(record)) - np.repeat(np.cumsum(nparts) - nparts, nparts)
    istart = (first[record] + offsets) * interval_ms
    s, e = start[record], end[record]
    part_start = np.maximum(s, istart)
    overlap = np.minimum(e, istart + interval_ms) - part_start
    duration = e - s
    zero = duration == 0
    overlap[zero], duration[zero] = 1, 1
    return record, istart, part_start, overlap, duration


class Allocation:
    """The split of records into parts, prepared once and applied to several counters (bytes, packets, flows).

    Largest remainder: each part gets ``floor(value * overlap / duration)``, and the units left over (fewer than
    the record's parts) go one each to the parts with the largest remainders, the earlier part first on a tie.
    Exact in uint64 arithmetic as long as ``duration**2 < 2**64`` (durations are bounded by validation).
    """

    def __init__(self, record: np.ndarray, overlap: np.ndarray, duration: np.ndarray, n_records: int) -> None:
        self.record = record
        self.trivial = len(record) == n_records  # one part per record: nothing to share
        if self.trivial:
            return
        starts = np.flatnonzero(np.concatenate(([True], record[1:] != record[:-1])))
        nparts = np.diff(np.append(starts, len(record)))
        multi = np.flatnonzero(nparts > 1)
        counts = nparts[multi]
        self.first = np.cumsum(counts) - counts  # of each split record, its first part's position in idx
        self.idx = np.repeat(starts[multi], counts) + (np.arange(counts.sum()) - np.repeat(self.first, counts))
        self.counts = counts
        self.split_record = record[starts[multi]]
        self.d = duration[starts[multi]].astype(np.uint64)
        self.d_p = np.repeat(self.d, counts)
        self.w = overlap[self.idx].astype(np.uint64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """The parts of ``values`` (one per record), uint64; they add up exactly per record."""
        values = np.asarray(values, dtype=np.uint64)
        if self.trivial:  # record is arange(n): a plain copy, no gather
            return values.copy()
        out = values[self.record]
        counts, first = self.counts, self.first
        v = values[self.split_record]
        q, r = np.divmod(v, self.d)  # per record: value = q * d + r
        whole, frac = np.divmod(np.repeat(r, counts) * self.w, self.d_p)  # r * w < d**2
        part = np.repeat(q, counts) * self.w + whole
        left = (v - np.add.reduceat(part, first)).astype(np.int64)
        two = (counts == 2) & (left > 0)
        if two.any():  # the common case: two parts and one unit left
            f = first[two]
            part[f + (frac[f + 1] > frac[f]).astype(np.int64)] += np.uint64(1)
            left[two] = 0
        more = np.flatnonzero(left > 0)
        if len(more):
            c = counts[more]
            sub = np.repeat(first[more], c) + (np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c))
            owner = np.repeat(np.arange(len(more)), c)
            order = np.lexsort((sub, -frac[sub].astype(np.int64), owner))  # largest fraction first, then earliest
            ranked = sub[order]
            rank = np.arange(len(ranked)) - np.repeat(np.cumsum(c) - c, c)
            part[ranked[rank < np.repeat(left[more], c)]] += np.uint64(1)
        out[self.idx] = part
        return cast(np.ndarray, out)


def allocate(values: np.ndarray, record: np.ndarray, overlap: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Share ``values[record]`` among parts by ``overlap / duration`` (see :class:`Allocation`)."""
    return Allocation(record, overlap, duration, len(values))(values)


def group_sum(keys: list[np.ndarray], values: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sum ``values`` (uint64 columns) per distinct combination of integer ``keys`` columns (exact)."""
    n = len(keys[0])
    if n == 0:
        return [k[:0] for k in keys], [v[:0] for v in values]
    shifted, bits = [], []
    for k in keys:
        k = k.astype(np.int64)
        lo = int(k.min())
        shifted.append(k - lo)
        bits.append(max(int(k.max() - lo).bit_length(), 1))
    if sum(bits) <= 63:
        packed = np.zeros(n, dtype=np.int64)
        shift = 0
        for k, b in zip(shifted, bits, strict=True):
            packed |= k << shift
            shift += b
        order = np.argsort(packed)
        ps = packed[order]
        starts = np.flatnonzero(np.concatenate(([True], ps[1:] != ps[:-1])))
    else:  # too wide to pack: sort lexicographically
        order = np.lexsort(tuple(reversed(shifted)))
        change = np.zeros(n, dtype=bool)
        change[0] = True
        for k in shifted:
            ks = k[order]
            change[1:] |= ks[1:] != ks[:-1]
        starts = np.flatnonzero(change)
    firsts = order[starts]
    return [k[firsts] for k in keys], [np.add.reduceat(v[order], starts) for v in values]


_DIMS = ("exporter", "cls", "direction", "sub")
"""The key columns of one interval's dense sums, major to minor: the order :func:`group_sum` emits rows in (it packs
``KEY_COLUMNS`` with the first one in the lowest bits), so the dense sums come out already in that order."""
DENSE_MAX_SLOTS = 1 << 22
"""Slots of one interval's dense sums at most (25 bytes each: about 100 MB); beyond, the interval keeps its rows."""


_AHEAD = 16
""":func:`_add_dense` prefetches the slot of the part this many places ahead: an interval's sums of 100,000
subscribers take tens of MB, and each part lands on a random slot."""


@njit(nogil=True, cache=CACHE)
def _bounds(exporter: np.ndarray, cls: np.ndarray, direction: np.ndarray, sub: np.ndarray,
            istart: np.ndarray) -> tuple[np.int64, ...]:
    """(min, max) of each key column in :data:`_DIMS` order, then of ``istart``, in one pass (not empty)."""
    e0 = e1 = np.int64(exporter[0])
    c0 = c1 = np.int64(cls[0])
    d0 = d1 = np.int64(direction[0])
    s0 = s1 = np.int64(sub[0])
    i0 = i1 = np.int64(istart[0])
    for i in range(len(exporter)):
        e, c, d, u, t = np.int64(exporter[i]), np.int64(cls[i]), np.int64(direction[i]), np.int64(sub[i]), \
            np.int64(istart[i])
        e0, e1, c0, c1, d0, d1 = min(e0, e), max(e1, e), min(c0, c), max(c1, c), min(d0, d), max(d1, d)
        s0, s1, i0, i1 = min(s0, u), max(s1, u), min(i0, t), max(i1, t)
    return e0, e1, c0, c1, d0, d1, s0, s1, i0, i1


@njit(nogil=True, cache=CACHE)
def _add_dense(sums: np.ndarray, flat: np.ndarray, present: np.ndarray, lo: np.ndarray, size: np.ndarray,
               exporter: np.ndarray, cls: np.ndarray, direction: np.ndarray, sub: np.ndarray, nbytes: np.ndarray,
               packets: np.ndarray, flows: np.ndarray) -> None:
    """``sums[slot] += (bytes, packets, flows)[i]`` and ``present[slot] = True`` for every part, its slot the
    mixed-radix number of its key (:meth:`_DenseSums.index`: ``lo`` and ``size`` per dimension of :data:`_DIMS`):
    the slots in a first loop (it vectorises), the sums in a second that prefetches (``np.add.at`` made one
    unbuffered pass per value column and a fourth for ``present``, the slots several numpy passes). uint64 sums wrap
    modulo 2**64 as numpy's do. A slot's three sums are one row of ``sums``: one cache line per part, not three
    (``flat``: the same memory, one dimension, for the prefetch)."""
    n = len(exporter)
    lo0, lo1, lo2, lo3 = lo[0], lo[1], lo[2], lo[3]
    n1, n2, n3 = size[1], size[2], size[3]
    idx = np.empty(n, dtype=np.int64)
    for i in range(n):
        j = ((np.int64(exporter[i]) - lo0) * n1 + np.int64(cls[i]) - lo1) * n2 + np.int64(direction[i]) - lo2
        idx[i] = j * n3 + np.int64(sub[i]) - lo3
    for i in range(min(_AHEAD, n)):
        prefetch(flat, idx[i] * 3)  # type: ignore[call-arg]
    for i in range(n):
        if i + _AHEAD < n:
            prefetch(flat, idx[i + _AHEAD] * 3)  # type: ignore[call-arg]
        j = idx[i]
        sums[j, 0] += nbytes[i]
        sums[j, 1] += packets[i]
        sums[j, 2] += flows[i]
        present[j] = True


def _u64(values: np.ndarray) -> np.ndarray:
    """A value column as the kernel's one signature takes it: contiguous, aligned, writable uint64 (a copy only
    where it is not)."""
    return np.require(values.view(np.uint64), requirements=["C", "A", "W"])  # (read-only: another signature)


class _DenseSums:
    """One interval's sums in flat arrays indexed by a mixed-radix number over :data:`_DIMS` (a slot per possible
    key in the ranges seen so far): adding a batch is one compiled pass (:func:`_add_dense`), with no sort.

    Sums are uint64 modulo 2**64 like ``np.add.reduceat`` (exact below 2**64: addition is associative)."""

    def __init__(self, lo: list[int], size: list[int], dtypes: dict[str, np.dtype]) -> None:
        self.lo, self.size, self.dtypes = lo, size, dtypes
        slots = int(np.prod(size))
        self.sums = np.zeros((slots, len(VALUE_COLUMNS)), dtype=np.uint64)  # a slot's sums side by side
        self.present = np.zeros(slots, dtype=bool)

    @staticmethod
    def usable(parts: dict[str, np.ndarray]) -> bool:
        """Whether ``parts`` can go into dense sums: integer keys that fit int64 and uint64 values."""
        return (all(parts[c].dtype.kind in "iu" and parts[c].dtype != np.uint64 for c in KEY_COLUMNS)
                and all(parts[c].dtype == np.uint64 for c in VALUE_COLUMNS))

    @staticmethod
    def layout(current: _DenseSums | None, bounds: list[tuple[int, int]]) -> tuple[list[int], list[int]] | None:
        """``(lo, size)`` per dimension covering ``current``'s ranges and ``bounds`` (min, max per dimension) with
        some room to grow; None when that takes more than :data:`DENSE_MAX_SLOTS` slots."""
        lo, size = [], []
        for i, (dim, (bmin, bmax)) in enumerate(zip(_DIMS, bounds, strict=True)):
            if current is not None and current.lo[i] <= bmin and bmax < current.lo[i] + current.size[i]:
                lo.append(current.lo[i])
                size.append(current.size[i])
                continue
            low = min(bmin, -1 if dim == "sub" else 0)  # -1: unattributed; other dimensions are indexes from 0
            high = bmax
            if current is not None:
                low, high = min(low, current.lo[i]), max(high, current.lo[i] + current.size[i] - 1)
            n = high - low + 1
            lo.append(low)
            size.append(n + n // 8)  # room for new subscribers / exporters: few re-layouts
        slots = 1
        for n in size:
            slots *= n
        return (lo, size) if slots <= DENSE_MAX_SLOTS else None

    def index(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The slot of each part (int64)."""
        idx: np.ndarray | None = None
        for dim, lo, size in zip(_DIMS, self.lo, self.size, strict=True):
            k = parts[dim]
            if idx is None:
                idx = k.astype(np.int64)
            else:
                if size > 1:
                    idx *= size
                idx += k
            if lo:
                idx -= lo
        return cast(np.ndarray, idx)  # _DIMS is not empty

    def keys(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The key columns (as int64) of ``slots``."""
        out = {}
        rest = slots
        for dim, lo, size in reversed(list(zip(_DIMS, self.lo, self.size, strict=True))):
            rest, digit = np.divmod(rest, size)
            out[dim] = digit + lo
        return out

    def add(self, parts: dict[str, np.ndarray]) -> None:
        _add_dense(self.sums, self.sums.reshape(-1), self.present, np.array(self.lo, dtype=np.int64),
                   np.array(self.size, dtype=np.int64), *(parts[c] for c in _DIMS),
                   *(_u64(parts[c]) for c in VALUE_COLUMNS))
        for c in KEY_COLUMNS:
            if parts[c].dtype != self.dtypes[c]:  # what np.concatenate of the parts would give
                self.dtypes[c] = np.result_type(self.dtypes[c], parts[c].dtype)

    def relayout(self, lo: list[int], size: list[int]) -> _DenseSums:
        """These sums in a new (larger) layout."""
        new = _DenseSums(lo, size, self.dtypes)
        slots = np.flatnonzero(self.present)
        target = new.index(self.keys(slots))
        new.sums[target] = self.sums[slots]
        new.present[target] = True
        return new

    def rows(self, interval_start: int) -> dict[str, np.ndarray]:
        """The rows (KEY_COLUMNS + VALUE_COLUMNS), in :func:`group_sum`'s order."""
        slots = np.flatnonzero(self.present)
        keys = self.keys(slots)
        keys["interval_start"] = np.full(len(slots), interval_start)
        out = {c: keys[c].astype(self.dtypes[c]) for c in KEY_COLUMNS}
        for i, c in enumerate(VALUE_COLUMNS):
            out[c] = self.sums[slots, i]
        return out


class _Interval:
    """An open interval: dense sums (the usual case) and/or rows summed per batch (keys too spread out for dense
    sums, or rows remapped after a rules reload)."""

    __slots__ = ("dense", "chunks", "sparse")

    def __init__(self) -> None:
        self.dense: _DenseSums | None = None
        self.chunks: list[dict[str, np.ndarray]] = []
        self.sparse = False  # the dense sums outgrew DENSE_MAX_SLOTS: rows from now on


class UsageAggregator:
    """Open intervals and their partial sums; see the module docstring.

    Each open interval sums its parts in dense arrays over the key ranges seen (:class:`_DenseSums`) while those
    take at most :data:`DENSE_MAX_SLOTS` slots, else as rows summed per batch (:func:`group_sum`) and re-summed
    every 64 batches; either way the rows emitted are the same, in the same order."""

    def __init__(self, interval_ms: int, watermark_ms: int, correction_memory_ms: int = 8 * 86400_000) -> None:
        self.interval_ms = interval_ms
        self.watermark_ms = watermark_ms
        self.correction_memory_ms = correction_memory_ms
        self._open: dict[int, _Interval] = {}
        self._late: list[dict[str, np.ndarray]] = []
        self._corrections: dict[int, int] = {}
        self._closed_before: int | None = None
        self.late_parts = 0

    def remap(self, column: str, mapping: np.ndarray) -> None:
        """Replace ``column`` values v by ``mapping[v]`` in every held row (class indexes after a rules reload)."""
        for start, iv in self._open.items():
            if iv.dense is not None:  # dense sums are laid out by the old values: back to rows
                iv.chunks.append(iv.dense.rows(start))
                iv.dense = None
        for chunks in [*(iv.chunks for iv in self._open.values()), self._late]:
            for ch in chunks:
                ch[column] = mapping[ch[column]]

    def open_intervals(self) -> list[int]:
        return sorted(self._open)

    def _is_closed(self, interval_start: Any, now_ms: int) -> Any:
        """Whether intervals starting at ``interval_start`` (an int or an array) are closed at ``now_ms``."""
        return interval_start + self.interval_ms + self.watermark_ms <= now_ms

    def add(self, parts: dict[str, np.ndarray], now_ms: int) -> None:
        """Add parts (columns KEY_COLUMNS + VALUE_COLUMNS)."""
        if not len(parts["bytes"]):
            return
        istart = parts["interval_start"]
        bounds = None
        if _DenseSums.usable(parts):  # every key's range in one pass
            b = _bounds(parts["exporter"], parts["cls"], parts["direction"], parts["sub"], istart)
            bounds = [(int(b[2 * k]), int(b[2 * k + 1])) for k in range(len(_DIMS))]
            first, last = int(b[-2]), int(b[-1])
        else:
            first, last = int(istart.min()), int(istart.max())
        if first == last:  # the usual case: one interval per batch
            groups = [(first, parts)]
        else:  # one sort (np.unique and a mask per interval cost several times more), then a slice per interval
            order = np.argsort(istart)
            cuts = np.flatnonzero(np.diff(istart[order])) + 1
            groups = [(int(istart[rows[0]]), {c: v.take(rows) for c, v in parts.items()})
                      for rows in np.split(order, cuts)]
        late = []
        for start, rows in groups:
            iv = self._open.get(start)
            if iv is None and self._is_closed(start, now_ms):
                late.append(rows)
                continue
            if iv is None:
                iv = self._open[start] = _Interval()
            self._add_open(iv, rows, bounds if first == last else None)
        if late:  # summed per call: late_parts counts distinct keys per call, as always
            rows = late[0] if len(late) == 1 else {c: np.concatenate([r[c] for r in late]) for c in late[0]}
            keys, values = group_sum([rows[c] for c in KEY_COLUMNS], [rows[c] for c in VALUE_COLUMNS])
            self._late.append(dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True)))
            self.late_parts += len(values[0])

    def _add_open(self, iv: _Interval, rows: dict[str, np.ndarray], bounds: list[tuple[int, int]] | None = None
                  ) -> None:
        """Add ``rows`` (of one interval) to ``iv``; ``bounds``: (min, max) of each of :data:`_DIMS` when known."""
        if not iv.sparse and _DenseSums.usable(rows):
            if bounds is None:
                b = _bounds(rows["exporter"], rows["cls"], rows["direction"], rows["sub"], rows["interval_start"])
                bounds = [(int(b[2 * k]), int(b[2 * k + 1])) for k in range(len(_DIMS))]
            layout = _DenseSums.layout(iv.dense, bounds)
            if layout is not None:
                if iv.dense is None:
                    iv.dense = _DenseSums(*layout, {c: rows[c].dtype for c in KEY_COLUMNS})
                elif layout != (iv.dense.lo, iv.dense.size):
                    iv.dense = iv.dense.relayout(*layout)
                iv.dense.add(rows)
                return
        if iv.dense is not None:  # too spread out (or not integers): rows from now on
            iv.chunks.append(iv.dense.rows(int(rows["interval_start"][0])))
            iv.dense = None
        iv.sparse = True
        keys, values = group_sum([rows[c] for c in KEY_COLUMNS], [rows[c] for c in VALUE_COLUMNS])
        iv.chunks.append(dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True)))
        if len(iv.chunks) > 64:  # keep memory proportional to distinct keys, not to batches
            iv.chunks = [self._reduce(iv.chunks)]

    @staticmethod
    def _reduce(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        cat = {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
        keys, values = group_sum([cat[c] for c in KEY_COLUMNS], [cat[c] for c in VALUE_COLUMNS])
        return dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True))

    def _rows(self, start: int, iv: _Interval) -> dict[str, np.ndarray]:
        if iv.dense is not None and not iv.chunks:
            return iv.dense.rows(start)  # unique keys, already in group_sum's order
        chunks = iv.chunks + ([iv.dense.rows(start)] if iv.dense is not None else [])
        return self._reduce(chunks)

    def emit(self, now_ms: int, force: bool = False) -> dict[str, np.ndarray] | None:
        """Rows of the intervals that close now (all with ``force``) and the corrections gathered since the last
        call; columns KEY_COLUMNS + VALUE_COLUMNS + ``correction``. None when there is nothing."""
        out: list[dict[str, np.ndarray]] = []
        for start in sorted(self._open):
            if force or self._is_closed(np.int64(start), now_ms):
                rows = self._rows(start, self._open.pop(start))
                n = self._corrections.get(start)
                self._corrections[start] = 0 if n is None else n + 1
                rows["correction"] = np.full(len(rows["bytes"]), self._corrections[start], dtype=np.uint32)
                out.append(rows)
        if self._late:
            rows = self._reduce(self._late)
            self._late = []
            corr = np.zeros(len(rows["bytes"]), dtype=np.uint32)
            for start in np.unique(rows["interval_start"]).tolist():
                n = self._corrections.get(start, 0) + 1
                self._corrections[start] = n
                corr[rows["interval_start"] == start] = n
            rows["correction"] = corr
            out.append(rows)
        horizon = now_ms - self.correction_memory_ms
        for start in [s for s in self._corrections if s < horizon]:
            del self._corrections[start]
        if not out:
            return None
        return {c: np.concatenate([o[c] for o in out]) for c in out[0]}


def warm_up() -> None:
    """Compile the dense sums kernel now (or load it from numba's disk cache), so the first batch does not wait."""
    agg = UsageAggregator(300_000, 60_000)
    one = np.ones(1, dtype=np.uint64)
    agg.add({"interval_start": np.zeros(1, dtype=np.int64), "sub": np.zeros(1, dtype=np.int32),
             "direction": np.zeros(1, dtype=np.uint8), "cls": np.zeros(1, dtype=np.uint8),
             "exporter": np.zeros(1, dtype=np.int32), "bytes": one, "packets": one, "flows": one}, 0)
