"""The Mediator's compiled per-record passes: records into parts, parts into usage rows.

:func:`count_parts` counts each record's parts (its ``[flow_start, flow_end)`` cut at interval boundaries) for the
Mediator's chunks; :func:`split_parts` makes the parts of a chunk in one pass: interval, start (the lookup time),
bytes, packets and flows shared by time overlap with exact largest-remainder allocation (as
:class:`mediation.aggregate.Allocation` defines it) and both addresses as the (high, low) uint64 halves the bindings
are looked up with. After the two subscriber lookups, :func:`attribute` makes each part's usage rows in one pass: an
``up`` row for a subscriber on the source side, a ``down`` row for one on the destination side, an ``unattributed``
row when neither, each with its remote side for the class rules (one more compiled pass,
:class:`mediation.classify.Classifier`); and each record's attributed, unattributed and usage bytes. These replace a
dozen whole-batch numpy passes per step (gathers, concatenations, masks, ``np.add.reduceat``).

Inputs are given as the Arrow columns are (read-only), writable arrays are made read-only views, so each kernel has
one compiled signature, made by :func:`warm_up` before the first batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mediation.hashing import CACHE

UP, DOWN, UNATTRIBUTED = 0, 1, 2
ROW_DTYPES = {"interval_start": np.int64, "sub": np.int32, "direction": np.uint8, "exporter": np.int32,
              "bytes": np.uint64, "packets": np.uint64, "flows": np.uint64, "remote_hi": np.uint64,
              "remote_lo": np.uint64, "remote_port": np.uint16, "protocol": np.uint8}
"""The columns :func:`attribute` writes, in its order: the usage rows' keys and values but the class, and what the
class is found from."""


def readonly(values: np.ndarray, dtype: type | np.dtype) -> np.ndarray:
    """``values`` as a contiguous, aligned, read-only array of ``dtype`` (a view where it is one already; read-only
    is what Arrow's buffers are: one compiled signature for both). (Checks the flags itself: ``np.require`` costs
    microseconds per call, a dozen calls per batch.)"""
    if not (isinstance(values, np.ndarray) and values.dtype == dtype and values.flags.c_contiguous
            and values.flags.aligned):
        values = np.require(values, dtype=dtype, requirements=["C", "A"])
    if values.flags.writeable:
        values = values.view()
        values.flags.writeable = False
    return values


def address_words(addresses: np.ndarray) -> np.ndarray:
    """``S16`` addresses as a read-only (n, 2) matrix of their two 8-byte words in memory order (a view unless the
    buffer is not 8-byte aligned; :func:`_bswap` makes them the big-endian halves)."""
    words = np.ascontiguousarray(addresses, dtype="S16").view(np.uint64).reshape(-1, 2)
    return readonly(words, np.uint64)


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
def _bswap(x: np.uint64) -> np.uint64:
    """The bytes of ``x`` reversed: a word of an address as loaded on this (little-endian) machine into the big-endian
    half the bindings keep (LLVM makes this one instruction)."""
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8)) | ((x >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF))
    x = ((x & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16)) | ((x >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF))
    return (x << np.uint64(32)) | (x >> np.uint64(32))


@njit(nogil=True, cache=CACHE)
def split_parts(ok: np.ndarray, start: np.ndarray, end: np.ndarray, interval_ms: int, nbytes: np.ndarray,
                packets: np.ndarray, src: np.ndarray, dst: np.ndarray, record: np.ndarray, istart: np.ndarray,
                pstart: np.ndarray, values: np.ndarray, src_hi: np.ndarray, src_lo: np.ndarray, dst_hi: np.ndarray,
                dst_lo: np.ndarray, first: np.ndarray) -> None:
    """The parts of records ``ok`` (all of them: the output arrays are sized by :func:`count_parts`), contiguous
    per record and in time order: the record (index into the batch), the start of its interval, the part's start
    (the record's start or the interval's), its bytes, packets and flows (``values[:, 0:3]``) and both addresses
    (:func:`address_words`) split into big-endian halves; ``first[j]``: the position of record ``ok[j]``'s first
    part.

    A record of one part keeps its values. A record of k parts shares each value by time overlap, largest
    remainder: each part gets ``floor(value * overlap / duration)`` (exact while ``duration**2 < 2**64``; durations
    are bounded by validation) and the units left over (fewer than k) go one each to the parts with the largest
    remainders, the earlier part on a tie; so the parts add up exactly to the record's value. (Written out in the
    loop: a compiled call taking arrays pays their reference counts on every call.)"""
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
        shi, slo, dhi, dlo = _bswap(src[i, 0]), _bswap(src[i, 1]), _bswap(dst[i, 0]), _bswap(dst[i, 1])
        first[j] = p
        if k == 1:
            record[p], istart[p], pstart[p] = i, f * iv, s
            values[p, 0], values[p, 1], values[p, 2] = nbytes[i], packets[i], np.uint64(1)
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
        for c in range(3):
            value = np.uint64(nbytes[i]) if c == 0 else np.uint64(packets[i]) if c == 1 else np.uint64(1)
            quotient, rest = value // d, value % d
            left = value
            for m in range(k):
                rw = rest * weights[m]
                part = quotient * weights[m] + rw // d
                frac[m] = np.int64(rw % d)
                values[p + m, c] = part
                left -= part
            if left == 0:
                continue
            if k == 2:  # the usual case: one unit left
                values[p + (1 if frac[1] > frac[0] else 0), c] += np.uint64(1)
                continue
            order = np.argsort(-frac[:k], kind="mergesort")  # largest remainder first; stable: earlier on a tie
            for m in range(np.int64(left)):
                values[p + order[m], c] += np.uint64(1)
        p += k


@njit(nogil=True, cache=CACHE)
def count_rows(src_sub: np.ndarray, dst_sub: np.ndarray) -> int:
    """The usage rows :func:`attribute` makes of these parts: one per part, two where both sides have a subscriber."""
    n = len(src_sub)
    for p in range(len(src_sub)):
        n += (src_sub[p] >= 0) & (dst_sub[p] >= 0)
    return n


@njit(nogil=True, cache=CACHE)
def attribute(record: np.ndarray, istart: np.ndarray, values: np.ndarray,
              src_hi: np.ndarray, src_lo: np.ndarray, dst_hi: np.ndarray, dst_lo: np.ndarray, src_sub: np.ndarray,
              dst_sub: np.ndarray, src_port: np.ndarray, dst_port: np.ndarray, protocol: np.ndarray,
              exporter: np.ndarray, r_istart: np.ndarray, r_sub: np.ndarray, r_direction: np.ndarray,
              r_exporter: np.ndarray, r_bytes: np.ndarray, r_packets: np.ndarray, r_flows: np.ndarray,
              r_remote_hi: np.ndarray, r_remote_lo: np.ndarray, r_remote_port: np.ndarray, r_protocol: np.ndarray,
              attributed_b: np.ndarray, unattributed_b: np.ndarray, usage_b: np.ndarray) -> int:
    """The usage rows of the parts (``r_*``, sized by :func:`count_rows`; returns how many): per part an ``up`` row when
    the source has a subscriber, a ``down`` row when the destination has one (both: two rows), else an
    ``unattributed`` row (subscriber -1); with each row its remote side (the destination for up and unattributed
    rows, the source for down rows) and protocol, for the classes. Adds each part's bytes into its record's
    ``attributed_b`` (a subscriber on either side) or ``unattributed_b``, and into ``usage_b`` once per row (uint64,
    wrapping as numpy's sums do)."""
    n = 0
    for p in range(len(record)):
        i = record[p]
        s, d = src_sub[p], dst_sub[p]
        b = values[p, 0]
        rows = 0
        for side in range(3):
            if side == 0 and s >= 0:
                r_sub[n], r_direction[n] = s, UP
                r_remote_hi[n], r_remote_lo[n], r_remote_port[n] = dst_hi[p], dst_lo[p], dst_port[i]
            elif side == 1 and d >= 0:
                r_sub[n], r_direction[n] = d, DOWN
                r_remote_hi[n], r_remote_lo[n], r_remote_port[n] = src_hi[p], src_lo[p], src_port[i]
            elif side == 2 and rows == 0:
                r_sub[n], r_direction[n] = -1, UNATTRIBUTED
                r_remote_hi[n], r_remote_lo[n], r_remote_port[n] = dst_hi[p], dst_lo[p], dst_port[i]
            else:
                continue
            r_istart[n], r_exporter[n], r_protocol[n] = istart[p], exporter[i], protocol[i]
            r_bytes[n], r_packets[n], r_flows[n] = b, values[p, 1], values[p, 2]
            n += 1
            rows += 1
        if s >= 0 or d >= 0:
            attributed_b[i] += b
            usage_b[i] += b * np.uint64(rows)
        else:
            unattributed_b[i] += b
            usage_b[i] += b
    return n


@njit(nogil=True, cache=CACHE)
def distinct_addresses(words: np.ndarray, ids: np.ndarray, first: np.ndarray, keys: np.ndarray,
                       slots: np.ndarray) -> int:
    """Number the distinct addresses (:func:`address_words`) in order of first appearance: ``ids[i]`` is record
    i's, ``first[k]`` the record where the k-th appears first; returns how many there are, or -1 when that is more
    than half of ``slots`` (an open-addressing table, all -1, with ``keys`` (slots x 2) beside it: then call again
    with a larger one). A record with the address of the record before (a datagram's records come together) is not
    looked up."""
    size = len(slots)
    mask = np.uint64(size - 1)
    found = 0
    for i in range(len(words)):
        a, b = words[i, 0], words[i, 1]
        if i and a == words[i - 1, 0] and b == words[i - 1, 1]:
            ids[i] = ids[i - 1]
            continue
        h = ((a * np.uint64(0x9E3779B97F4A7C15)) ^ b) * np.uint64(0xBF58476D1CE4E5B9)
        pos = (h >> np.uint64(32)) & mask
        while True:
            k = slots[pos]
            if k < 0:
                if 2 * (found + 1) > size:
                    return -1
                slots[pos] = found
                keys[pos, 0], keys[pos, 1] = a, b
                first[found] = i
                ids[i] = found
                found += 1
                break
            if keys[pos, 0] == a and keys[pos, 1] == b:
                ids[i] = k
                break
            pos = (pos + np.uint64(1)) & mask
    return found


def warm_up() -> None:
    """Compile the kernels now (or load them from numba's disk cache), so the first batch does not wait for them;
    the signatures are those the Mediator uses (read-only inputs, see :func:`readonly`)."""
    ok, times = readonly(np.zeros(1, dtype=np.int64), np.int64), readonly(np.zeros(1, dtype=np.int64), np.int64)
    counters = readonly(np.ones(1, dtype=np.uint64), np.uint64)
    total = np.zeros(1, dtype=np.int64)
    count_parts(ok, times, times, 300_000, total)
    addr = address_words(np.zeros(1, dtype="S16"))
    record, istart, pstart, first = (np.zeros(1, dtype=np.int64) for _ in range(4))
    values = np.zeros((1, 3), dtype=np.uint64)
    shi, slo, dhi, dlo = (np.zeros(1, dtype=np.uint64) for _ in range(4))
    split_parts(ok, times, times, 300_000, counters, counters, addr, addr, record, istart, pstart, values, shi, slo,
                dhi, dlo, first)
    sub = np.zeros(1, dtype=np.int32)
    count_rows(sub, sub)
    rows = [np.zeros(2, dtype=t) for t in ROW_DTYPES.values()]
    sums = [np.zeros(1, dtype=np.uint64) for _ in range(3)]
    distinct_addresses(addr, sub, first, np.zeros((2, 2), dtype=np.uint64), np.full(2, -1, dtype=np.int32))
    attribute(record, istart, values, shi, slo, dhi, dlo, sub, sub, readonly(np.zeros(1, np.uint16), np.uint16),
              readonly(np.zeros(1, np.uint16), np.uint16), readonly(np.zeros(1, np.uint8), np.uint8),
              readonly(np.zeros(1, np.int32), np.int32), *rows, *sums)
