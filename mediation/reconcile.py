"""Reconciliation: every received byte is attributed, unattributed, rejected or duplicate, exactly once.

Per receive interval (by ``time_received``) and exporter the mediator adds what came in and where it went;
:meth:`Reconciler.add` checks the balance of each batch in code (a mismatch is a bug: it is logged and counted, and
the row is written with ``balanced = 0``). Rows are emitted when the receive interval has ended; they are additive
parts, so a reader sums them per interval and exporter (``flowmed reconcile``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from mediation.aggregate import group_sum
from mediation.correlate import readonly
from mediation.hashing import CACHE

log = logging.getLogger(__name__)

Columns = dict[str, np.ndarray]
"""Arrays by field name."""

FIELDS = ("records_in", "bytes_in", "bytes_attributed", "bytes_unattributed", "bytes_rejected", "bytes_duplicate",
          "records_rejected", "records_duplicate", "bytes_usage")


def balance_holds(row: Mapping[str, Any]) -> bool:
    """bytes_in == attributed + unattributed + rejected + duplicate (plain ints, e.g. summed rows)."""
    return int(row["bytes_in"]) == (int(row["bytes_attributed"]) + int(row["bytes_unattributed"])
                                    + int(row["bytes_rejected"]) + int(row["bytes_duplicate"]))


def net_totals(received: Mapping[str, Any], reprocessed: Mapping[str, Any]) -> dict[str, int]:
    """Where the received records and bytes are after re-processing: ``received`` (first-pass sums) with the
    re-processed rejects (``reprocessed``, sums of the 'reprocess' rows) moved out of rejected into where they went
    the second time. Records in stay those received: a re-processed reject was received once. Balances when both
    inputs do; a negative figure means rows were re-processed that were not rejected in the range."""
    net = {f: int(received[f]) + int(reprocessed[f]) for f in FIELDS}
    net["records_in"], net["bytes_in"] = int(received["records_in"]), int(received["bytes_in"])
    net["records_rejected"] = (int(received["records_rejected"])
                               - (int(reprocessed["records_in"]) - int(reprocessed["records_rejected"])))
    net["bytes_rejected"] = (int(received["bytes_rejected"])
                             - (int(reprocessed["bytes_in"]) - int(reprocessed["bytes_rejected"])))
    return net


def exact_bincount(key: np.ndarray, values: np.ndarray, nkeys: int) -> np.ndarray:
    """Exact per-key sums of uint64 ``values`` (object array of Python ints): float64 bincounts are exact while
    every sum stays below 2**53, so large values are summed in 22-bit slices."""
    if not len(values):
        return np.zeros(nkeys, dtype=object)
    if int(values.max()) * len(values) < 1 << 53:
        return np.bincount(key, weights=values, minlength=nkeys).astype(np.int64).astype(object)
    total = np.zeros(nkeys, dtype=object)
    for shift in (0, 22, 44):
        part = (values >> np.uint64(shift)) & np.uint64((1 << 22) - 1)
        total += np.bincount(key, weights=part, minlength=nkeys).astype(np.int64).astype(object) * (1 << shift)
    return total


@njit(nogil=True, cache=CACHE)
def _keys(interval: np.ndarray, exporter: np.ndarray, i0: int, interval_ms: int, n_exp: int, key: np.ndarray,
          count: np.ndarray) -> None:
    """``key[i]``: record i's dense key (receive interval after ``i0``, then exporter); ``count``: records per key."""
    for i in range(len(interval)):
        k = (interval[i] - i0) // interval_ms * n_exp + exporter[i]
        key[i] = k
        count[k] += 1


@njit(nogil=True, cache=CACHE)
def _add_column(key: np.ndarray, through: np.ndarray, values: np.ndarray, sums: np.ndarray, col: int) -> bool:
    """``sums[key[through[i]], col] += values[i]`` (``through`` empty: ``key[i]``; ``key`` empty: the last key) in
    one pass, exact in uint64; returns whether a sum went beyond 2**64 (then ``sums`` is not to be used)."""
    last = sums.shape[0] - 1
    carry = False
    for i in range(len(values)):
        k = last if len(key) == 0 else key[through[i]] if len(through) else key[i]
        before = sums[k, col]
        after = before + values[i]
        carry |= after < before
        sums[k, col] = after
    return carry


class Reconciler:
    """Accumulates the balance per (receive interval, exporter index)."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._acc: dict[tuple[int, int], np.ndarray] = {}
        self._unbalanced: set[tuple[int, int]] = set()
        self.unbalanced_batches = 0

    def add(self, time_received: np.ndarray, exporter: np.ndarray, per_record: dict[str, np.ndarray],
            per_part: dict[str, np.ndarray], part_record: np.ndarray) -> bool:
        """Add a batch: ``per_record`` holds records_in, bytes_in, bytes_rejected, bytes_duplicate,
        records_rejected, records_duplicate (one value per record); ``per_part`` holds bytes_attributed,
        bytes_unattributed, bytes_usage per usage part, ``part_record`` the record of each part. Returns whether
        the batch balanced."""
        received = readonly(time_received, np.int64)
        first = int(received.min()) // self.interval_ms if len(received) else 0
        if len(received) and int(received.max()) // self.interval_ms == first:  # the usual case: no division
            interval = np.broadcast_to(np.int64(first * self.interval_ms), received.shape)
        else:
            interval = (received // self.interval_ms) * self.interval_ms
        exporter = readonly(exporter, np.int64)
        ok = True
        batch = self._dense(interval, exporter, per_record, per_part, part_record)
        if batch is None:
            batch = self._sorted(interval, exporter, per_record, per_part, part_record)
        for key, row in batch.items():
            if not balance_holds(dict(zip(FIELDS, row, strict=True))):
                ok = False
                self._unbalanced.add(key)
                log.error("reconciliation does not balance", extra={"interval": key[0], "exporter_index": key[1],
                                                                    **dict(zip(FIELDS, row.tolist(), strict=True))})
            acc = self._acc.get(key)
            self._acc[key] = row if acc is None else acc + row
        if not ok:
            self.unbalanced_batches += 1
        return ok

    def _dense(self, interval: np.ndarray, exporter: np.ndarray, per_record: Columns, per_part: Columns,
               part_record: np.ndarray) -> dict[tuple[int, int], np.ndarray] | None:
        """Sums over a small dense key (the usual case: a few intervals and exporters per batch, often one), one
        compiled pass per field: exact in uint64, and a sum that does not fit uint64 raises OverflowError (it
        cannot be stored; it never wraps)."""
        if not len(interval):
            return {}
        i0, i1 = int(interval.min()), int(interval.max())
        e0, e1 = int(exporter.min()), int(exporter.max())
        n_exp = e1 + 1
        one = i0 == i1 and e0 == e1
        nkeys = e1 + 1 if one else (i1 - i0) // self.interval_ms * n_exp + e1 + 1
        if nkeys > 4096:
            return None
        key = np.zeros(0, dtype=np.int64)  # one key: every record is key nkeys - 1
        count = np.zeros(nkeys, dtype=np.int64)
        if one:
            count[nkeys - 1] = len(interval)
        else:
            key = np.empty(len(interval), dtype=np.int64)
            _keys(readonly(interval, np.int64), exporter, i0, self.interval_ms, n_exp, key, count)
        sums = np.zeros((nkeys, len(FIELDS)), dtype=np.uint64)
        nothing = readonly(np.zeros(0, dtype=np.int64), np.int64)
        for values, through in ((per_record, nothing), (per_part, readonly(part_record, np.int64))):
            for name, v in values.items():
                if len(v) and _add_column(key, through, readonly(v, np.uint64), sums, FIELDS.index(name)):
                    raise OverflowError(f"reconciliation: a sum of {name} beyond 2**64")
        return {(i0 + k // n_exp * self.interval_ms, k % n_exp): sums[k].copy() for k in np.flatnonzero(count).tolist()}

    def _sorted(self, interval: np.ndarray, exporter: np.ndarray, per_record: Columns, per_part: Columns,
                part_record: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        keys_r, vals_r = group_sum([interval, exporter], [per_record[f].astype(np.uint64) for f in FIELDS
                                                          if f in per_record])
        names_r = [f for f in FIELDS if f in per_record]
        keys_p, vals_p = group_sum([interval[part_record], exporter[part_record]],
                                   [per_part[f].astype(np.uint64) for f in FIELDS if f in per_part])
        names_p = [f for f in FIELDS if f in per_part]
        batch: dict[tuple[int, int], np.ndarray] = {}
        for i, key in enumerate(zip(keys_r[0].tolist(), keys_r[1].tolist(), strict=True)):
            row = batch.setdefault(key, np.zeros(len(FIELDS), dtype=np.uint64))
            for name, v in zip(names_r, vals_r, strict=True):
                row[FIELDS.index(name)] += v[i]
        for i, key in enumerate(zip(keys_p[0].tolist(), keys_p[1].tolist(), strict=True)):
            row = batch.setdefault(key, np.zeros(len(FIELDS), dtype=np.uint64))
            for name, v in zip(names_p, vals_p, strict=True):
                row[FIELDS.index(name)] += v[i]
        return batch

    def emit(self, now_ms: int, force: bool = False) -> list[tuple[int, int, np.ndarray, bool]]:
        """(interval_start, exporter index, counters in FIELDS order, balanced) for every receive interval that
        has ended (all with ``force``)."""
        out = []
        for key in sorted(self._acc):
            if force or key[0] + self.interval_ms <= now_ms:
                out.append((key[0], key[1], self._acc.pop(key), key not in self._unbalanced))
                self._unbalanced.discard(key)
        return out
