"""The compiled part of the NetFlow/IPFIX decoder (numba): the batch's datagram walk and the field gather.

Two kernels do the per-datagram and per-record work of a ``decode`` call, over the batch buffer (all datagrams
joined), with no Python step per datagram, set, record or field:

* :func:`scan` walks every datagram's header and set headers (v5, v9, IPFIX) into a datagram table and a set
  table, and says which datagrams are plain data (a clean header and nothing but data sets, each of which fits):
  those are decoded in blocks (:mod:`decoders.netflow.fast_path`), every other one by the per-datagram parser;
* :func:`gather` reads every field a template's columns need, big-endian, from the
  records of many data sets in one pass (record by record, all fields of a record while it is in cache), into one
  ``uint64`` row per integer field and one 16-byte row per address column (IPv4 mapped into IPv6 as the schema
  stores it, with the IPv6 alternate of dual-stack templates where the IPv4 address is 0.0.0.0). The field plan
  is compiled once per template (:func:`decoders.netflow.templates.compile_spec`; v5: :data:`decoders.netflow.v5`).

Reads are not bounds-checked by numba: the set table only holds sets that lie inside their datagram, and plans only
read inside a record (fixed templates) or inside the fixed segments :func:`decoders.netflow.templates.walk_sets`
found (variable-length ones).

The kernels compile on first use, a few seconds of CPU (:func:`warm_up` does it before traffic). Compiled code is
cached on disk (numba's cache, checked against the source) in ``NUMBA_CACHE_DIR`` when that is set, else beside this
module when its folder is writable; a read-only install without ``NUMBA_CACHE_DIR`` compiles at every start.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numba import njit

from decoders.digest import warm_up as warm_up_digest
from decoders.jit import cache_possible

CACHE = cache_possible(__file__)

Int = int | np.int64
"""Integers in the kernels: numba compiles Python ints and np.int64 alike (int64), mypy tells them apart."""

# Datagram table columns (D, int64, one row per datagram).
D_KIND, D_COUNT, D_UPTIME, D_EXPORT_MS, D_SEQ, D_DOMAIN, D_RATE, D_SET0, D_NSETS = range(9)
ND = 9
"""D_KIND: 5, 9 or 10 for a plain data datagram of that version, 0 for any other (decoded on its own). D_COUNT: the
header's record count (v5, v9). D_UPTIME: sysUptime ms (-1 for IPFIX). D_RATE: v5 sampling interval. D_SET0 and
D_NSETS: its rows in the set table (a v5 datagram has one, its records)."""
# Set table columns (S, int64, one row per data set of a plain data datagram).
S_ID, S_START, S_LEN = range(3)
NS = 3
"""S_ID: set id (0 for v5 records); S_START: offset of the set's first record in the buffer; S_LEN: its bytes."""
V5_HEADER, V5_RECORD = 24, 48

# Field plans (uint64, one row per field read): integer fields (PU), IPv4 address columns (P4), IPv6 ones (P6).
PU_SEG, PU_OFF, PU_LEN, PU_WIDTH, PU_ROW = range(5)
P4_SEG, P4_OFF, P4_HAS_ALT, P4_ALT_SEG, P4_ALT_OFF = range(5)
P6_SEG, P6_OFF = range(2)
"""*_SEG and *_OFF: where the field is (fixed segment, offset in it; fixed-length templates: segment 0); P4_HAS_ALT:
1 when an IPv6 alternate (P4_ALT_SEG, P4_ALT_OFF) is read where the IPv4 address is 0.0.0.0. An integer field
fills row PU_ROW of the output of its column's width (PU_WIDTH: 1, 2, 4 or 8 bytes, cast as numpy casts: the
low bytes); address columns fill the address output in P4 then P6 order."""
_U8, _U16, _U24 = np.uint64(8), np.uint64(16), np.uint64(24)
_U32, _U40, _U48, _U56 = np.uint64(32), np.uint64(40), np.uint64(48), np.uint64(56)
_MAPPED = np.uint64(0xFFFF0000)
"""Bytes 10 and 11 of an IPv4-mapped address (ff ff), in the second little-endian word of its 16 bytes."""
if sys.byteorder != "little":  # addresses are written as two native 64-bit words (x86-64, aarch64)
    raise ImportError("decoders.netflow.kernel writes addresses as little-endian words")


@njit(nogil=True, cache=CACHE)
def _u16(b: np.ndarray, p: Int) -> Int:
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@njit(nogil=True, cache=CACHE)
def _u32(b: np.ndarray, p: Int) -> Int:
    return (np.int64(b[p]) << 24) | (np.int64(b[p + 1]) << 16) | (np.int64(b[p + 2]) << 8) | np.int64(b[p + 3])


@njit(nogil=True, cache=CACHE)
def _walk_sets(b: np.ndarray, pos: Int, end: Int, S: np.ndarray, ns: Int) -> Int:
    """Data sets from ``pos`` to ``end`` into ``S`` from row ``ns`` (rows past its size are counted, not written);
    returns the next free row, or -1 when the datagram is not plain data (a template or reserved set, a set length
    that does not fit, a tail that is not zero padding, no set at all)."""
    cap = S.shape[0]
    first = ns
    while end - pos >= 4:
        sid = _u16(b, pos)
        slen = _u16(b, pos + 2)
        if slen < 4 or pos + slen > end or sid < 256:
            return -1
        if ns < cap:
            S[ns, S_ID] = sid
            S[ns, S_START] = pos + 4
            S[ns, S_LEN] = slen - 4
        ns += 1
        pos += slen
    for q in range(pos, end):
        if b[q] != 0:
            return -1
    return -1 if ns == first else ns


@njit(nogil=True, cache=CACHE)
def scan(b: np.ndarray, starts: np.ndarray, lens: np.ndarray, D: np.ndarray, S: np.ndarray) -> Int:
    """Headers and set headers of every datagram (``b[starts[d]:starts[d] + lens[d]]``) into ``D`` and ``S``.

    Returns the set rows needed: when more than ``S`` holds, call again with a table that large.
    """
    ns: Int = 0
    for d in range(starts.shape[0]):
        p = starts[d]
        n = lens[d]
        D[d, D_KIND] = 0
        D[d, D_SET0] = ns
        D[d, D_NSETS] = 0
        if n < 2 or b[p] != 0:
            continue
        version = np.int64(b[p + 1])
        count: Int = 0
        uptime: Int = -1
        export_ms: Int = 0
        seq: Int = 0
        domain: Int = 0
        rate: Int = 0
        nxt: Int = -1
        if version == 5:
            if n < V5_HEADER:
                continue
            count = _u16(b, p + 2)
            if count == 0 or n != V5_HEADER + V5_RECORD * count:
                continue
            uptime = _u32(b, p + 4)
            export_ms = _u32(b, p + 8) * 1000 + _u32(b, p + 12) // 1_000_000
            seq = _u32(b, p + 16)
            domain = (np.int64(b[p + 20]) << 8) | np.int64(b[p + 21])
            rate = _u16(b, p + 22) & 0x3FFF
            if ns < S.shape[0]:
                S[ns, S_ID] = 0
                S[ns, S_START] = p + V5_HEADER
                S[ns, S_LEN] = n - V5_HEADER
            nxt = ns + 1
        elif version == 9:
            if n < 20:
                continue
            count = _u16(b, p + 2)
            uptime = _u32(b, p + 4)
            export_ms = _u32(b, p + 8) * 1000
            seq = _u32(b, p + 12)
            domain = _u32(b, p + 16)
            nxt = _walk_sets(b, p + 20, p + n, S, ns)
        elif version == 10:
            if n < 16 or _u16(b, p + 2) != n:
                continue
            export_ms = _u32(b, p + 4) * 1000
            seq = _u32(b, p + 8)
            domain = _u32(b, p + 12)
            nxt = _walk_sets(b, p + 16, p + n, S, ns)
        else:
            continue
        if nxt < 0:
            continue
        D[d, D_KIND] = version
        D[d, D_COUNT] = count
        D[d, D_UPTIME] = uptime
        D[d, D_EXPORT_MS] = export_ms
        D[d, D_SEQ] = seq
        D[d, D_DOMAIN] = domain
        D[d, D_RATE] = rate
        D[d, D_NSETS] = nxt - ns
        ns = nxt
    return ns


@njit(nogil=True, cache=CACHE, inline="always")
def _le64(b: np.ndarray, p: np.uint64) -> np.uint64:
    """8 bytes at ``p`` as a little-endian word: the bytes as they are, for a native 64-bit store."""
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(b[p + np.uint64(k)]) << np.uint64(8 * k)
    return v


CHUNK = 2048
"""Records gathered at a time: each field is read for a chunk of records in one tight loop (no dispatch on its
length or width per record), while the chunk's bytes stay in cache for the next field."""


@njit(nogil=True, cache=CACHE, inline="always")
def _be64(b: np.ndarray, p: np.uint64) -> np.uint64:
    """8 bytes at ``p`` as a big-endian integer."""
    v = np.uint64(0)
    for k in range(8):
        v = (v << _U8) | np.uint64(b[p + np.uint64(k)])
    return v


# One kernel for both kinds of records, the field loops written out in its body (a call to a compiled helper per
# field, with the arrays as arguments, costs reference count updates: it made the gather 6 times slower). Offsets
# are unsigned: numba then makes no negative-index wraparound check, and LLVM merges the byte loads of a field.
@njit(nogil=True, cache=CACHE)
def gather(b: np.ndarray, offsets: np.ndarray, counts: np.ndarray, reclen: Int, starts: np.ndarray,
           PU: np.ndarray, P4: np.ndarray, P6: np.ndarray, U1: np.ndarray, U2: np.ndarray, U4: np.ndarray,
           U8: np.ndarray, A: np.ndarray, lo: Int, arow: np.ndarray) -> None:
    """Every field of the plan (``PU``, ``P4``, ``P6``) into ``U1``..``U8`` (integers by width) and ``A``
    (addresses, 16 bytes each as two native little-endian words), a chunk of records at a time, record ``i`` at
    index ``lo + i`` of its output row. Address ``f`` of the plan (P4 then P6) goes to row ``arow[f]`` of ``A``.

    Fixed-length records: ``counts[s]`` records of ``reclen`` bytes from ``offsets[s]``, for every set ``s``, and
    ``starts`` empty. Variable-length records: ``starts[i, seg]`` is where fixed segment ``seg`` of record ``i``
    begins (``offsets`` [0] and ``counts`` [records]).
    """
    variable = starts.shape[0] > 0
    nseg = starts.shape[1]
    n = 0
    for s in range(counts.shape[0]):
        n += counts[s]
    n4 = P4.shape[0]
    step = np.uint64(reclen)
    R = np.empty(CHUNK * nseg, dtype=np.uint64)  # where each record (segment) of the chunk starts
    T = np.empty(CHUNK, dtype=np.uint64)  # a field's values in the chunk, before the cast to its width
    s, left = 0, 0  # the set being read, and its records still to read
    base = np.uint64(0)
    for i0 in range(0, n, CHUNK):
        m = min(CHUNK, n - i0)
        o = lo + i0
        if variable:
            for j in range(m):
                for g in range(nseg):
                    R[j * nseg + g] = np.uint64(starts[i0 + j, g])
        else:
            for j in range(m):
                while left == 0:
                    base = np.uint64(offsets[s])
                    left = counts[s]
                    s += 1
                R[j] = base
                base += step
                left -= 1
        for f in range(PU.shape[0]):
            seg = PU[f, PU_SEG]
            off = PU[f, PU_OFF]
            length = PU[f, PU_LEN]
            width = PU[f, PU_WIDTH]
            row = PU[f, PU_ROW]
            if length == width and length == 4:  # the usual cases: straight into the output, no cast pass
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    v = (np.uint64(b[p]) << _U24) | (np.uint64(b[p + np.uint64(1)]) << _U16) \
                        | (np.uint64(b[p + np.uint64(2)]) << _U8) | np.uint64(b[p + np.uint64(3)])
                    U4[row, o + j] = np.uint32(v)
                continue
            if length == width and length == 2:
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    U2[row, o + j] = np.uint16((np.uint64(b[p]) << _U8) | np.uint64(b[p + np.uint64(1)]))
                continue
            if length == width and length == 1:
                for j in range(m):
                    U1[row, o + j] = b[R[j * nseg + seg] + off]
                continue
            if length == width and length == 8:
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    U8[row, o + j] = _be64(b, p)
                continue
            if length == 2 and width == 4:  # v5 interfaces and AS numbers
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    U4[row, o + j] = np.uint32((np.uint64(b[p]) << _U8) | np.uint64(b[p + np.uint64(1)]))
                continue
            if length == 4 and width == 8:  # 4-byte counters (v5, many v9 exporters)
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    U8[row, o + j] = (np.uint64(b[p]) << _U24) | (np.uint64(b[p + np.uint64(1)]) << _U16) \
                        | (np.uint64(b[p + np.uint64(2)]) << _U8) | np.uint64(b[p + np.uint64(3)])
                continue
            if length == 4:
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    T[j] = (np.uint64(b[p]) << _U24) | (np.uint64(b[p + np.uint64(1)]) << _U16) \
                        | (np.uint64(b[p + np.uint64(2)]) << _U8) | np.uint64(b[p + np.uint64(3)])
            elif length == 2:
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    T[j] = (np.uint64(b[p]) << _U8) | np.uint64(b[p + np.uint64(1)])
            elif length == 1:
                for j in range(m):
                    T[j] = np.uint64(b[R[j * nseg + seg] + off])
            elif length == 8:
                for j in range(m):
                    T[j] = _be64(b, R[j * nseg + seg] + off)
            else:
                for j in range(m):
                    p = R[j * nseg + seg] + off
                    v = np.uint64(0)
                    for k in range(length):
                        v = (v << _U8) | np.uint64(b[p + np.uint64(k)])
                    T[j] = v
            if width == 8:
                for j in range(m):
                    U8[row, o + j] = T[j]
            elif width == 4:
                for j in range(m):
                    U4[row, o + j] = np.uint32(T[j] & np.uint64(0xFFFFFFFF))
            elif width == 2:
                for j in range(m):
                    U2[row, o + j] = np.uint16(T[j] & np.uint64(0xFFFF))
            else:
                for j in range(m):
                    U1[row, o + j] = np.uint8(T[j] & np.uint64(0xFF))
        for f in range(n4):
            seg = P4[f, P4_SEG]
            off = P4[f, P4_OFF]
            alt = P4[f, P4_HAS_ALT] != 0
            for j in range(m):
                p = R[j * nseg + seg] + off
                v4 = (np.uint64(b[p]) << _U32) | (np.uint64(b[p + np.uint64(1)]) << _U40) \
                    | (np.uint64(b[p + np.uint64(2)]) << _U48) | (np.uint64(b[p + np.uint64(3)]) << _U56)
                if alt and v4 == 0:
                    q = R[j * nseg + P4[f, P4_ALT_SEG]] + P4[f, P4_ALT_OFF]
                    A[arow[f], o + j, 0] = _le64(b, q)
                    A[arow[f], o + j, 1] = _le64(b, q + np.uint64(8))
                else:
                    A[arow[f], o + j, 0] = 0
                    A[arow[f], o + j, 1] = v4 | _MAPPED
        for f in range(P6.shape[0]):
            seg = P6[f, P6_SEG]
            off = P6[f, P6_OFF]
            for j in range(m):
                p = R[j * nseg + seg] + off
                A[arow[n4 + f], o + j, 0] = _le64(b, p)
                A[arow[n4 + f], o + j, 1] = _le64(b, p + np.uint64(8))


T_NONE, T_UPTIME, T_MS, T_S = range(4)
"""How :func:`fill_records` makes a time: the export time; sysUptime-relative ms against the header's sysUptime (v5,
v9); ms since the epoch (IPFIX 152/153/323); seconds (150/151)."""


@njit(nogil=True, cache=CACHE, inline="always")
def _time(mode: Int, v: Int, export_ms: Int, uptime: Int) -> Int:
    if mode == T_UPTIME:  # the age uptime - v modulo 2**32, read as signed (see decoders.netflow.v5.uptime_to_ms)
        age = (uptime - v) & 0xFFFFFFFF
        if age >= 0x80000000:
            age -= 0x100000000
        return export_ms - age
    if mode == T_MS:
        return v
    if mode == T_S:
        return v * 1000
    return export_ms


@njit(nogil=True, cache=CACHE)
def fill_records(counts: np.ndarray, export_ms: np.ndarray, uptime: np.ndarray, rate: np.ndarray, times: np.ndarray,
                 U4: np.ndarray, U8: np.ndarray, lo: Int, flow_start: np.ndarray, flow_end: np.ndarray,
                 sampling_rate: np.ndarray, raw_bytes: np.ndarray, raw_packets: np.ndarray, out_bytes: np.ndarray,
                 out_packets: np.ndarray) -> None:
    """Times, sampling rate and sampled counters of the records of consecutive sets (``counts[s]`` each), from
    index ``lo``, in one pass. Per set: ``export_ms``, ``uptime`` (header values), ``rate`` (the resolved rate; an
    empty ``rate``: rates and counters are written elsewhere). ``times``: (mode, width, row) of the start and then
    the end time (modes ``T_*``; the field's row of ``U4`` or ``U8`` by its width); an empty ``times``: written
    elsewhere."""
    # One loop per output column and per set, the mode and source row fixed in it: LLVM keeps branches out of the
    # inner loops (a branch per record on the mode cost more than the work).
    for t in range(times.shape[0]):
        mode, width, row = times[t, 0], times[t, 1], times[t, 2]
        dest = flow_start if t == 0 else flow_end
        i = lo
        for s in range(counts.shape[0]):
            e = export_ms[s]
            u = uptime[s]
            c = counts[s]
            if mode == T_NONE:
                for k in range(i, i + c):
                    dest[k] = e
            elif width == 4:
                for k in range(i, i + c):
                    dest[k] = _time(mode, np.int64(U4[row, k]), e, u)
            else:
                for k in range(i, i + c):
                    dest[k] = _time(mode, np.int64(U8[row, k]), e, u)
            i += c
    if rate.shape[0] > 0:
        i = lo
        for s in range(counts.shape[0]):
            r = np.uint64(rate[s])
            r32 = np.uint32(rate[s])
            c = counts[s]
            for k in range(i, i + c):
                sampling_rate[k] = r32
                out_bytes[k] = raw_bytes[k] * r
                out_packets[k] = raw_packets[k] * r
            i += c


class Plan:
    """What a template's records are read for: the field plans of the kernel and where each value lands."""

    __slots__ = ("PU", "P4", "P6", "u_rows", "a_rows", "rows_per_width", "fused")

    def __init__(self, PU: np.ndarray, P4: np.ndarray, P6: np.ndarray, u_rows: dict[str, tuple[int, int]],
                 a_rows: dict[str, int], rows_per_width: tuple[int, ...]) -> None:
        self.PU = PU
        self.P4 = P4
        self.P6 = P6
        self.u_rows = u_rows
        """Integer field (its name) -> (width, row of the output of that width)."""
        self.rows_per_width = rows_per_width
        """Output rows of each width of :data:`WIDTHS`."""
        self.a_rows = a_rows
        """Address column -> row of :attr:`Gathered.A`."""
        self.fused: object | None = None
        """The plan's columns.FusedPlan, made at its first batch (typed loosely: columns imports this module)."""
        """This plan remapped into a batch's columns (:class:`decoders.netflow.columns.FusedPlan`), made on use."""


def make_plan(uints: list[tuple[str, int, int, int, int]],
              addresses: list[tuple[str, int, int, str, tuple[int, int] | None]]) -> Plan:
    """A plan from integer fields ``(name, segment, offset, length, width of the output)`` and address columns
    ``(column, segment, offset, kind, IPv6 alternate (segment, offset) or None)``."""
    pu: list[list[int]] = []
    u_rows: dict[str, tuple[int, int]] = {}
    per_width = dict.fromkeys(WIDTHS, 0)
    for name, seg, off, length, width in uints:
        if name not in u_rows:
            u_rows[name] = (width, per_width[width])
            pu.append([seg, off, length, width, per_width[width]])
            per_width[width] += 1
    p4 = [[seg, off, alt is not None, *(alt or (0, 0))] for _, seg, off, kind, alt in addresses if kind == "ipv4"]
    p6 = [[seg, off] for _, seg, off, kind, _ in addresses if kind == "ipv6"]
    ordered = [a for a in addresses if a[3] == "ipv4"] + [a for a in addresses if a[3] == "ipv6"]
    a_rows = {column: row for row, (column, *_) in enumerate(ordered)}

    def table(rows: list[list[int]], width: int) -> np.ndarray:
        return np.array(rows, dtype=np.uint64).reshape(len(rows), width)

    return Plan(table(pu, 5), table(p4, 5), table(p6, 2), u_rows, a_rows, tuple(per_width.values()))


WIDTHS = (1, 2, 4, 8)
_WIDTH_DTYPES: dict[int, type[np.unsignedinteger[Any]]] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class Gathered:
    """The fields of ``n`` records as a plan read them."""

    __slots__ = ("plan", "U", "A", "n")

    def __init__(self, plan: Plan, n: int) -> None:
        self.plan = plan
        self.n = n
        # All outputs are views of one allocation: numpy asks for huge pages for an allocation of 4 MiB or more,
        # and first writes to fresh memory then cost a page fault per 2 MiB, not per 4 KiB (one 6 MiB block is
        # written in 0.07 ms, the same bytes as 19 arrays in 2.4 ms: the page faults were most of the gather).
        shapes: list[tuple[tuple[int, ...], type[np.unsignedinteger[Any]]]] = [
            ((k, n), _WIDTH_DTYPES[w]) for w, k in zip(WIDTHS, plan.rows_per_width, strict=True)]
        shapes.append(((len(plan.a_rows), n, 2), np.uint64))
        sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes]
        starts = np.cumsum([0] + [-(-size // 64) * 64 for size in sizes])
        block = np.empty(int(starts[-1]), dtype=np.uint8)
        views = [block[a:a + size].view(dtype).reshape(shape)
                 for a, size, (shape, dtype) in zip(starts[:-1].tolist(), sizes, shapes, strict=True)]
        self.U = dict(zip(WIDTHS, views[:-1], strict=True))
        self.A = views[-1]

    @classmethod
    def of(cls, plan: Plan, U: dict[int, np.ndarray], A: np.ndarray, n: int) -> Gathered:
        """Fields already gathered into ``U`` and ``A`` (e.g. a range of a batch's columns) by ``plan``."""
        out = cls.__new__(cls)
        out.plan, out.U, out.A, out.n = plan, U, A, n
        return out

    def uint(self, name: str) -> np.ndarray:
        """An integer field (by its plan name), native unsigned of its width, contiguous and writable."""
        width, row = self.plan.u_rows[name]
        out: np.ndarray = self.U[width][row]
        return out

    def address(self, column: str) -> np.ndarray:
        """An address column as ``S16`` (IPv4 mapped), contiguous and writable."""
        out: np.ndarray = self.A[self.plan.a_rows[column]].view("S16").reshape(self.n)
        return out


def as_bytes(buf: bytes | memoryview) -> np.ndarray:
    """A buffer as the kernels read it (no copy): always a read-only array, so that a batch joined into a reused
    (writable) buffer and one joined into ``bytes`` use the same compiled kernel, the one :func:`warm_up` made."""
    out = np.frombuffer(buf, dtype=np.uint8)
    out.flags.writeable = False
    return out


def read_sets(plan: Plan, buf: bytes | memoryview, offsets: np.ndarray, counts: np.ndarray, reclen: int) -> Gathered:
    """Every planned field of the fixed-length records of sets at ``offsets`` (``counts`` records each)."""
    out = Gathered(plan, int(counts.sum()))
    if out.n:
        _gather(out, buf, np.ascontiguousarray(offsets, dtype=np.int64), counts, reclen, _NO_STARTS)
    return out


def read_records(plan: Plan, buf: bytes | memoryview, starts: np.ndarray) -> Gathered:
    """Every planned field of variable-length records whose fixed segments start at ``starts`` (records x segments)."""
    out = Gathered(plan, len(starts))
    if out.n:
        _gather(out, buf, _ZERO, np.array([out.n], dtype=np.int64), 0, np.ascontiguousarray(starts, dtype=np.int64))
    return out


def gather_into(plan: Plan, U: dict[int, np.ndarray], A: np.ndarray, lo: int, buf: bytes | memoryview,
                offsets: np.ndarray, counts: np.ndarray, reclen: int, starts: np.ndarray) -> None:
    """Every field of ``plan`` from the records (as :func:`read_sets` or :func:`read_records` take them) into the
    rows ``plan`` names of ``U`` (per width) and ``A``, from index ``lo``."""
    arow = np.fromiter(plan.a_rows.values(), dtype=np.int64, count=len(plan.a_rows))
    gather(as_bytes(buf), np.ascontiguousarray(offsets, dtype=np.int64), np.ascontiguousarray(counts, dtype=np.int64),
           reclen, np.ascontiguousarray(starts, dtype=np.int64), plan.PU, plan.P4, plan.P6, U[1], U[2], U[4], U[8], A,
           lo, arow)


def _gather(out: Gathered, buf: bytes | memoryview, offsets: np.ndarray, counts: np.ndarray, reclen: int,
            starts: np.ndarray) -> None:
    p, u = out.plan, out.U
    gather(as_bytes(buf), offsets, np.ascontiguousarray(counts, dtype=np.int64), reclen, starts, p.PU, p.P4, p.P6,
           u[1], u[2], u[4], u[8], out.A, 0, np.arange(len(p.a_rows), dtype=np.int64))


_NO_STARTS = np.zeros((0, 1), dtype=np.int64)
_ZERO = np.zeros(1, dtype=np.int64)


def warm_up() -> None:
    """Compile every kernel now (on tiny inputs, with the argument types of real batches: one compiled version of
    each), so the first real batch does not wait for it; with a warm disk cache this only loads them."""
    D = np.zeros((1, ND), dtype=np.int64)
    S = np.zeros((1, NS), dtype=np.int64)
    one = np.zeros(1, dtype=np.int64)
    scan(as_bytes(bytes(32)), one, one, D, S)
    plan = make_plan([(f"u{w}", 0, 0, 2, w) for w in WIDTHS],
                     [("v4", 0, 0, "ipv4", (0, 0)), ("v6", 0, 0, "ipv6", None)])
    buf = bytes(16)
    read_sets(plan, buf, one, np.ones(1, dtype=np.int64), 16)
    read_records(plan, buf, np.zeros((1, 1), dtype=np.int64))
    u4, u8 = np.zeros((1, 1), dtype=np.uint32), np.zeros((1, 1), dtype=np.uint64)
    i64, u64 = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.uint64)
    fill_records(one, one, one, np.zeros(1, dtype=np.uint32), np.zeros((2, 3), dtype=np.int64), u4, u8, 0, i64, i64,
                 np.zeros(1, dtype=np.uint32), u64, u64, u64, u64)
    warm_up_digest()  # the datagram identity of every record (decoders.digest)
