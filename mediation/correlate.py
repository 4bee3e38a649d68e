"""The Mediator's compiled per-record passes: records into parts, parts into usage rows.

:func:`count_parts` counts each record's parts (its ``[flow_start, flow_end)`` cut at interval boundaries) for the
Mediator's chunks; :func:`split_parts` makes the parts of a chunk in one pass: interval, start (the lookup time),
bytes, packets and flows shared by time overlap with exact largest-remainder allocation (as
:class:`mediation.aggregate.Allocation` defines it) and both addresses as the (high, low) uint64 halves the
bindings are looked up with. After the two subscriber lookups, :func:`attribute` makes each part's usage rows in one
pass: an ``up`` row for a subscriber on the source side, a ``down`` row for one on the destination side, an
``unattributed`` row when neither; the remote side of each row classified (:func:`mediation.classify.class_of`);
and each record's attributed, unattributed and usage bytes. These replace a dozen whole-batch numpy passes per step
(gathers, concatenations, masks, ``np.add.reduceat``).

Inputs are given as the Arrow columns are (read-only), writable arrays are made read-only views, so each kernel has
one compiled signature, made by :func:`warm_up` before the first batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mediation.classify import ClassTable, class_of, compile_rules
from mediation.hashing import CACHE

UP, DOWN, UNATTRIBUTED = 0, 1, 2


def readonly(values: np.ndarray, dtype: type | np.dtype) -> np.ndarray:
    """``values`` as a contiguous, aligned, read-only array of ``dtype`` (a view where it is one already; read-only
    is what Arrow's buffers are: one compiled signature for both)."""
    out = np.require(values, dtype=dtype, requirements=["C", "A"])
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


def address_bytes(addresses: np.ndarray) -> np.ndarray:
    """``S16`` addresses as a read-only (n, 16) uint8 matrix (a view)."""
    return readonly(np.ascontiguousarray(addresses, dtype="S16").view(np.uint8).reshape(-1, 16), np.uint8)


@njit(nogil=True, cache=CACHE)
def count_parts(ok: np.ndarray, start: np.ndarray, end: np.ndarray, interval_ms: int, total: np.ndarray) -> None:
    """``total[j]``: the parts of records ``ok[:j + 1]`` (a record ``[start, max(end, start))`` has one part per
    interval it touches; a zero-length one, one)."""
    acc = 0
    for j in range(len(ok)):
        s = start[ok[j]]
        e = max(end[ok[j]], s)
        acc += max(e - 1, s) // interval_ms - s // interval_ms + 1
        total[j] = acc


@njit(nogil=True, cache=CACHE)
def _words(addresses: np.ndarray, i: int) -> tuple[np.uint64, np.uint64]:
    """Address ``i`` of an (n, 16) byte matrix as big-endian (high, low) uint64 halves."""
    hi = np.uint64(0)
    lo = np.uint64(0)
    for b in range(8):
        hi = (hi << np.uint64(8)) | np.uint64(addresses[i, b])
        lo = (lo << np.uint64(8)) | np.uint64(addresses[i, 8 + b])
    return hi, lo


@njit(nogil=True, cache=CACHE)
def _share(out: np.ndarray, p: int, k: int, value: np.uint64, d: np.uint64, weights: np.ndarray,
           frac: np.ndarray) -> None:
    """``out[p:p + k]``: ``value`` shared among ``k`` parts by ``weights[:k] / d``, largest remainder (the units
    left after the floors go one each to the largest remainders, the earlier part on a tie); exact while
    ``d**2 < 2**64``."""
    q = value // d
    r = value % d
    left = value
    for m in range(k):
        w = weights[m]
        rw = r * w
        part = q * w + rw // d
        frac[m] = np.int64(rw % d)
        out[p + m] = part
        left -= part
    if left == 0:
        return
    if k == 2:  # the usual case: one unit left
        out[p + (1 if frac[1] > frac[0] else 0)] += np.uint64(1)
        return
    order = np.argsort(-frac[:k], kind="mergesort")  # largest remainder first; stable: the earlier on a tie
    for m in range(np.int64(left)):
        out[p + order[m]] += np.uint64(1)


@njit(nogil=True, cache=CACHE)
def split_parts(ok: np.ndarray, start: np.ndarray, end: np.ndarray, interval_ms: int, nbytes: np.ndarray,
                packets: np.ndarray, src: np.ndarray, dst: np.ndarray, record: np.ndarray, istart: np.ndarray,
                pstart: np.ndarray, pbytes: np.ndarray, ppackets: np.ndarray, pflows: np.ndarray,
                src_hi: np.ndarray, src_lo: np.ndarray, dst_hi: np.ndarray, dst_lo: np.ndarray,
                first: np.ndarray) -> None:
    """The parts of records ``ok`` (all of them: the output arrays are sized by :func:`count_parts`), contiguous
    per record and in time order: the record (index into the batch), the start of its interval, the part's start
    (the record's start or the interval's), its bytes, packets and flows (see :func:`_share`; a record of one part
    keeps its values) and both addresses split; ``first[j]``: the position of record ``ok[j]``'s first part."""
    iv = np.int64(interval_ms)
    weights = np.empty(2, dtype=np.uint64)
    frac = np.empty(2, dtype=np.int64)
    p = 0
    for j in range(len(ok)):
        i = ok[j]
        s = start[i]
        e = max(end[i], s)
        f = s // iv
        k = max(e - 1, s) // iv - f + 1
        shi, slo = _words(src, i)
        dhi, dlo = _words(dst, i)
        first[j] = p
        if k == 1:
            record[p], istart[p], pstart[p] = i, f * iv, s
            pbytes[p], ppackets[p], pflows[p] = nbytes[i], packets[i], np.uint64(1)
            src_hi[p], src_lo[p], dst_hi[p], dst_lo[p] = shi, slo, dhi, dlo
            p += 1
            continue
        if k > len(weights):
            weights = np.empty(k, dtype=np.uint64)
            frac = np.empty(k, dtype=np.int64)
        for m in range(k):
            ist = (f + m) * iv
            ps = max(s, ist)
            weights[m] = np.uint64(min(e, ist + iv) - ps)
            q = p + m
            record[q], istart[q], pstart[q] = i, ist, ps
            src_hi[q], src_lo[q], dst_hi[q], dst_lo[q] = shi, slo, dhi, dlo
        d = np.uint64(e - s)
        _share(pbytes, p, k, np.uint64(nbytes[i]), d, weights, frac)
        _share(ppackets, p, k, np.uint64(packets[i]), d, weights, frac)
        _share(pflows, p, k, np.uint64(1), d, weights, frac)
        p += k


@njit(nogil=True, cache=CACHE)
def attribute(table: ClassTable, record: np.ndarray, istart: np.ndarray, pbytes: np.ndarray, ppackets: np.ndarray,
              pflows: np.ndarray, src_hi: np.ndarray, src_lo: np.ndarray, dst_hi: np.ndarray, dst_lo: np.ndarray,
              src_sub: np.ndarray, dst_sub: np.ndarray, src_port: np.ndarray, dst_port: np.ndarray,
              protocol: np.ndarray, exporter: np.ndarray, r_istart: np.ndarray, r_sub: np.ndarray,
              r_direction: np.ndarray, r_cls: np.ndarray, r_exporter: np.ndarray, r_bytes: np.ndarray,
              r_packets: np.ndarray, r_flows: np.ndarray, attributed_b: np.ndarray, unattributed_b: np.ndarray,
              usage_b: np.ndarray) -> int:
    """The usage rows of the parts (``r_*``, sized twice the parts; returns how many): per part an ``up`` row when
    the source has a subscriber, a ``down`` row when the destination has one (both: two rows), else an
    ``unattributed`` row (subscriber -1); each classified by its remote side (the destination for up and
    unattributed rows, the source for down rows). Adds each part's bytes into its record's ``attributed_b`` (a
    subscriber on either side) or ``unattributed_b``, and into ``usage_b`` once per row (uint64, wrapping as
    numpy's sums do)."""
    n = 0
    for p in range(len(record)):
        i = record[p]
        s, d = src_sub[p], dst_sub[p]
        b, pk, fl, ist, ex, proto = pbytes[p], ppackets[p], pflows[p], istart[p], exporter[i], protocol[i]
        rows = 0
        if s >= 0:
            r_istart[n], r_sub[n], r_direction[n], r_exporter[n] = ist, s, UP, ex
            r_cls[n] = class_of(table, dst_hi[p], dst_lo[p], dst_port[i], proto)
            r_bytes[n], r_packets[n], r_flows[n] = b, pk, fl
            n += 1
            rows += 1
        if d >= 0:
            r_istart[n], r_sub[n], r_direction[n], r_exporter[n] = ist, d, DOWN, ex
            r_cls[n] = class_of(table, src_hi[p], src_lo[p], src_port[i], proto)
            r_bytes[n], r_packets[n], r_flows[n] = b, pk, fl
            n += 1
            rows += 1
        if rows == 0:
            r_istart[n], r_sub[n], r_direction[n], r_exporter[n] = ist, -1, UNATTRIBUTED, ex
            r_cls[n] = class_of(table, dst_hi[p], dst_lo[p], dst_port[i], proto)
            r_bytes[n], r_packets[n], r_flows[n] = b, pk, fl
            n += 1
            unattributed_b[i] += b
            usage_b[i] += b
        else:
            attributed_b[i] += b
            usage_b[i] += b * np.uint64(rows)
    return n


def warm_up() -> None:
    """Compile the kernels now (or load them from numba's disk cache), so the first batch does not wait for them;
    the signatures are those the Mediator uses (read-only inputs, see :func:`readonly`)."""
    one = 1
    i64, u64 = np.zeros(one, dtype=np.int64), np.ones(one, dtype=np.uint64)
    ok = readonly(np.zeros(one, dtype=np.int64), np.int64)
    times = readonly(i64, np.int64)
    total = np.zeros(one, dtype=np.int64)
    count_parts(ok, times, times, 300_000, total)
    addr = address_bytes(np.zeros(one, dtype="S16"))
    record, istart, pstart = (np.zeros(one, dtype=np.int64) for _ in range(3))
    pbytes, ppackets, pflows, shi, slo, dhi, dlo = (np.zeros(one, dtype=np.uint64) for _ in range(7))
    first = np.zeros(one, dtype=np.int64)
    split_parts(ok, times, times, 300_000, readonly(u64, np.uint64), readonly(u64, np.uint64), addr, addr, record,
                istart, pstart, pbytes, ppackets, pflows, shi, slo, dhi, dlo, first)
    sub = np.zeros(one, dtype=np.int32)
    rows = [np.zeros(2, dtype=t) for t in (np.int64, np.int32, np.uint8, np.uint8, np.int32, np.uint64, np.uint64,
                                            np.uint64)]
    sums = [np.zeros(one, dtype=np.uint64) for _ in range(3)]
    attribute(compile_rules([]), record, istart, pbytes, ppackets, pflows, shi, slo, dhi, dlo, sub, sub,
              readonly(np.zeros(one, np.uint16), np.uint16), readonly(np.zeros(one, np.uint16), np.uint16),
              readonly(np.zeros(one, np.uint8), np.uint8), readonly(np.zeros(one, np.int32), np.int32), *rows, *sums)
