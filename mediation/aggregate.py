"""Interval splitting and usage aggregation with watermark closing and correction rows.

* :func:`split_intervals` cuts each record's ``[start, end)`` at interval boundaries (intervals aligned to the UTC
  epoch) and :func:`allocate` shares a counter among the parts by time overlap with integer largest-remainder
  allocation: every part gets ``floor(value * overlap / duration)`` and the few units left over go to the parts
  with the largest remainders (ties: the earlier part), so the parts add up exactly to the record's value.
* :class:`UsageAggregator` sums parts per key (interval, subscriber, direction, class, exporter). An interval stays
  open until ``now >= interval_end + watermark``; then its rows are emitted with ``correction = 0``. Parts for an
  interval that was already emitted are summed per call and emitted as correction rows (``correction = 1, 2, ...``),
  never dropped: readers sum all rows of a key.
"""

from __future__ import annotations

import numpy as np

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
        out = values[self.record]
        if self.trivial:
            return out
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
        return out


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


class UsageAggregator:
    """Open intervals and their partial sums; see the module docstring."""

    def __init__(self, interval_ms: int, watermark_ms: int, correction_memory_ms: int = 8 * 86400_000) -> None:
        self.interval_ms = interval_ms
        self.watermark_ms = watermark_ms
        self.correction_memory_ms = correction_memory_ms
        self._open: dict[int, list[dict[str, np.ndarray]]] = {}
        self._open_rows: dict[int, int] = {}
        self._late: list[dict[str, np.ndarray]] = []
        self._corrections: dict[int, int] = {}
        self._closed_before: int | None = None
        self.late_parts = 0

    def remap(self, column: str, mapping: np.ndarray) -> None:
        """Replace ``column`` values v by ``mapping[v]`` in every held row (class indexes after a rules reload)."""
        for chunks in [*self._open.values(), self._late]:
            for ch in chunks:
                ch[column] = mapping[ch[column]]

    def open_intervals(self) -> list[int]:
        return sorted(self._open)

    def _is_closed(self, interval_start: np.ndarray, now_ms: int) -> np.ndarray:
        return interval_start + self.interval_ms + self.watermark_ms <= now_ms

    def add(self, parts: dict[str, np.ndarray], now_ms: int) -> None:
        """Add parts (columns KEY_COLUMNS + VALUE_COLUMNS)."""
        if not len(parts["bytes"]):
            return
        keys, values = group_sum([parts[c] for c in KEY_COLUMNS], [parts[c] for c in VALUE_COLUMNS])
        rows = dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True))
        istart = rows["interval_start"]
        pending = np.isin(istart, np.fromiter(self._open, dtype=np.int64, count=len(self._open)))
        late = ~pending & self._is_closed(istart, now_ms)
        if late.any():
            self._late.append({c: v[late] for c, v in rows.items()})
            self.late_parts += int(late.sum())
        keep = ~late
        for start in np.unique(istart[keep]).tolist():
            sel = keep & (istart == start)
            self._open.setdefault(start, []).append({c: v[sel] for c, v in rows.items()})
            self._open_rows[start] = self._open_rows.get(start, 0) + int(sel.sum())
            if len(self._open[start]) > 64:  # keep memory proportional to distinct keys, not to batches
                self._open[start] = [self._reduce(self._open[start])]

    @staticmethod
    def _reduce(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        cat = {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}
        keys, values = group_sum([cat[c] for c in KEY_COLUMNS], [cat[c] for c in VALUE_COLUMNS])
        return dict(zip(KEY_COLUMNS + VALUE_COLUMNS, keys + values, strict=True))

    def emit(self, now_ms: int, force: bool = False) -> dict[str, np.ndarray] | None:
        """Rows of the intervals that close now (all with ``force``) and the corrections gathered since the last
        call; columns KEY_COLUMNS + VALUE_COLUMNS + ``correction``. None when there is nothing."""
        out: list[dict[str, np.ndarray]] = []
        for start in sorted(self._open):
            if force or self._is_closed(np.int64(start), now_ms):
                rows = self._reduce(self._open.pop(start))
                self._open_rows.pop(start, None)
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
