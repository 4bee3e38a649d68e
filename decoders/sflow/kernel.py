"""The compiled part of the sFlow decoder: walks of a whole batch of datagrams, samples and records (numba).

sFlow is a tree of length-prefixed structures, so finding the samples, records and packet-header fields is a walk,
not a fixed-offset read as for NetFlow templates. The walks run compiled over the batch buffer (all datagrams
joined), one pass per level, and write into preallocated columns: no Python step per datagram, sample or field.

Every read is checked against the end of the structure it belongs to before it is made (numba does not check
bounds), and the joined buffer carries zero padding behind the last datagram as a second guard.

Over 500 lines on purpose: the kernels are one compiled walk, level by level, calling each other's compiled
helpers (address, header and record readers) and writing the column layout declared at the top; split over
modules they would only scatter that layout and numba's per-module disk cache without making a part reusable.

The functions compile on first use, which takes about 10 s of CPU (:func:`decoders.sflow.decoder.warm_up` does it
ahead of traffic). The compiled code is cached on disk (numba's cache, checked against the source) in
``NUMBA_CACHE_DIR`` when that is set, else beside this module when its folder is writable; a read-only install without
``NUMBA_CACHE_DIR`` (a hardened service) compiles at every start instead (numba would refuse to import a cached
function with nowhere to write).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from decoders.jit import cache_possible
from decoders.sflow import wire as w
from decoders.sflow.wire import ETHERNET_FIELDS, GENERIC_FIELDS

CACHE = cache_possible(__file__)


# Datagram columns (D).
D_OK, D_ATYPE, D_SUB, D_SEQ, D_UPTIME, D_NSAMPLES, D_WALKED = range(7)
ND = 7
# Sample table columns (S).
S_DG, S_FORMAT, S_OFF, S_LEN = range(4)
# Flow row columns (F, int64).
(F_DG, F_VALID, F_SEQ, F_SRC_TYPE, F_SRC_INDEX, F_RATE, F_POOL, F_DROPS, F_IN, F_OUT, F_BYTES, F_PROTO, F_TOS,
 F_FLAGS, F_SPORT, F_DPORT, F_VLAN, F_SVLAN, F_DVLAN, F_SMASK, F_DMASK, F_SAS, F_DAS, F_PEER_AS, F_LOCAL_PREF,
 F_NH_AS, F_IPVER, F_STRIPPED, F_COMMUNITIES, F_HAS) = range(30)
NF = 30
# F_HAS bits: which records the sample carried (first of each format is used).
HAS_HEADER, HAS_ETHERNET, HAS_IPV4, HAS_IPV6, HAS_SWITCH, HAS_ROUTER, HAS_GATEWAY = (1, 2, 4, 8, 16, 32, 64)
# Flow address columns (FA, 16 bytes each, IPv4 mapped).
A_SRC, A_DST, A_NEXT_HOP, A_GW_NEXT_HOP = range(4)
NA = 4
# Counter row columns (C, uint64): sample fields, then generic (19) and Ethernet (13) interface counters.
C_DG, C_VALID, C_SEQ, C_SRC_TYPE, C_SRC_INDEX, C_RECORDS = range(6)
C_GENERIC = 6
C_ETHERNET = C_GENERIC + len(GENERIC_FIELDS)
NC = C_ETHERNET + len(ETHERNET_FIELDS)
GENERIC_LEN = sum(n for _, n in GENERIC_FIELDS)  # 88
N_ETHERNET = len(ETHERNET_FIELDS)
ETHERNET_LEN = 4 * N_ETHERNET  # 52
_G_SIZES = np.array([n for _, n in GENERIC_FIELDS], dtype=np.int64)

PAD = 64
"""Zero bytes behind the joined datagrams (a guard; every read is checked against its structure first)."""

Int = int | np.int64
"""Integers in the kernels: numba compiles Python ints and np.int64 alike (int64), mypy tells them apart."""

_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


@njit(cache=CACHE)
def _u32(b: np.ndarray, p: Int) -> Int:
    return (np.int64(b[p]) << 24) | (np.int64(b[p + 1]) << 16) | (np.int64(b[p + 2]) << 8) | np.int64(b[p + 3])


@njit(cache=CACHE)
def _u16(b: np.ndarray, p: Int) -> Int:
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@njit(cache=CACHE)
def _u64(b: np.ndarray, p: Int) -> np.uint64:
    return (np.uint64(_u32(b, p)) << np.uint64(32)) | np.uint64(_u32(b, p + 4))


# Addresses are written as out[a, i, 0:16] of a 3-D array, not into a view out[a, i]: a view made per sample
# costs two atomic reference count updates, which were most of the time of the flow walk.
@njit(cache=CACHE)
def _put_v4(out: np.ndarray, a: Int, i: Int, b: np.ndarray, p: Int) -> None:
    for k in range(10):
        out[a, i, k] = 0
    out[a, i, 10] = 0xFF
    out[a, i, 11] = 0xFF
    for k in range(4):
        out[a, i, 12 + k] = b[p + k]


@njit(cache=CACHE)
def _put_v6(out: np.ndarray, a: Int, i: Int, b: np.ndarray, p: Int) -> None:
    for k in range(16):
        out[a, i, k] = b[p + k]


@njit(cache=CACHE)
def _address(b: np.ndarray, p: Int, end: Int, out: np.ndarray, a: Int, i: Int) -> Int:
    """An XDR ``address`` at ``p`` into ``out[a, i]`` (16 bytes); returns the position after it, or -1 when it is
    cut short or of an unknown type (nothing written)."""
    if p + 4 > end:
        return -1
    t = _u32(b, p)
    if t == 0:
        return p + 4
    if t == 1:
        if p + 8 > end:
            return -1
        _put_v4(out, a, i, b, p + 4)
        return p + 8
    if t == 2:
        if p + 20 > end:
            return -1
        _put_v6(out, a, i, b, p + 4)
        return p + 20
    return -1


@njit(cache=CACHE)
def walk(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_samples: int, D: np.ndarray, AG: np.ndarray,
         E: np.ndarray, L: np.ndarray) -> np.ndarray:
    # (AG: (1, n, 16), the agent addresses)
    """Datagram headers and sample boundaries of a batch; returns the sample table (m, 4): datagram, format,
    data offset, data length. ``D``/``AG``/``E``/``L`` (per datagram) are filled in."""
    n = len(starts)
    total = 0
    firsts = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        s, e = starts[i], ends[i]
        if e - s < 4:
            E[i, w.E_TRUNCATED] += 1
            continue
        if _u32(b, s) != 5:
            E[i, w.E_VERSION] += 1
            continue
        if e - s < 8:
            E[i, w.E_TRUNCATED] += 1
            continue
        atype = _u32(b, s + 4)
        if atype == 0:
            alen = 0
        elif atype == 1:
            alen = 4
            if s + 12 <= e:
                _put_v4(AG, 0, i, b, s + 8)
        elif atype == 2:
            alen = 16
            if s + 24 <= e:
                _put_v6(AG, 0, i, b, s + 8)
        else:
            E[i, w.E_ADDRESS] += 1
            continue
        p = s + 8 + alen
        if p + 16 > e:
            E[i, w.E_TRUNCATED] += 1
            continue
        D[i, D_OK] = 1
        D[i, D_ATYPE] = atype
        D[i, D_SUB] = _u32(b, p)
        D[i, D_SEQ] = _u32(b, p + 4)
        D[i, D_UPTIME] = _u32(b, p + 8)
        ns = _u32(b, p + 12)
        D[i, D_NSAMPLES] = ns
        if ns > max_samples:
            L[i, w.L_SAMPLES] += 1
            ns = max_samples
        pos = p + 16
        firsts[i] = pos
        k = 0
        while k < ns:
            if pos + 8 > e:
                E[i, w.E_TRUNCATED] += 1
                break
            ln = _u32(b, pos + 4)
            if pos + 8 + ln > e:
                E[i, w.E_TRUNCATED] += 1
                break
            pos += 8 + ln
            k += 1
        D[i, D_WALKED] = k
        total += k
        if k == ns and pos < e and D[i, D_NSAMPLES] <= max_samples:
            E[i, w.E_TRAILING] += 1
    S = np.empty((total, 4), dtype=np.int64)
    j = 0
    for i in range(n):
        pos = firsts[i]
        for _ in range(D[i, D_WALKED]):
            ln = _u32(b, pos + 4)
            S[j, S_DG] = i
            S[j, S_FORMAT] = _u32(b, pos)
            S[j, S_OFF] = pos + 8
            S[j, S_LEN] = ln
            j += 1
            pos += 8 + ln
    return S


@njit(cache=CACHE)
def _raw_header(b: np.ndarray, h: Int, hend: Int, F: np.ndarray, FA: np.ndarray, i: Int) -> None:
    """Fields of a sampled packet header ``b[h:hend]`` (Ethernet, 802.1Q/QinQ, MPLS, IPv4, IPv6 + extension headers,
    TCP, UDP, SCTP, ICMP/ICMPv6). A header cut short anywhere leaves the fields it no longer holds at zero."""
    proto = F[F_PROTO, i]  # header_protocol, passed in
    F[F_PROTO, i] = 0
    if proto == w.HEADER_ETHERNET:
        if h + 14 > hend:
            return
        et = _u16(b, h + 12)
        p = h + 14
        tags = 0
        while (et == 0x8100 or et == 0x88A8 or et == 0x9100) and tags < 8:
            if p + 4 > hend:
                return
            if tags == 0:
                F[F_VLAN, i] = _u16(b, p) & 0xFFF
            et = _u16(b, p + 2)
            p += 4
            tags += 1
        if et == 0x8847 or et == 0x8848:
            labels = 0
            while labels < 16:
                if p + 4 > hend:
                    return
                bottom = b[p + 2] & 1
                p += 4
                labels += 1
                if bottom:
                    break
            if p >= hend:
                return
            nib = b[p] >> 4
            et = 0x0800 if nib == 4 else 0x86DD if nib == 6 else 0
    elif proto == w.HEADER_IPV4:
        et, p = 0x0800, h
    elif proto == w.HEADER_IPV6:
        et, p = 0x86DD, h
    else:
        return
    if et == 0x0800:
        if p + 1 > hend or (b[p] >> 4) != 4:
            return
        F[F_IPVER, i] = 4
        ihl = (np.int64(b[p]) & 0xF) * 4
        if p + 2 <= hend:
            F[F_TOS, i] = b[p + 1]
        if p + 10 > hend:
            return
        nh = np.int64(b[p + 9])
        F[F_PROTO, i] = nh
        frag = _u16(b, p + 6) & 0x1FFF
        if p + 16 <= hend:
            _put_v4(FA, A_SRC, i, b, p + 12)
        if p + 20 <= hend:
            _put_v4(FA, A_DST, i, b, p + 16)
        if ihl < 20 or frag != 0:
            return
        l4: Int = p + ihl
    elif et == 0x86DD:
        if p + 1 > hend or (b[p] >> 4) != 6:
            return
        F[F_IPVER, i] = 6
        if p + 2 <= hend:
            F[F_TOS, i] = (_u16(b, p) >> 4) & 0xFF
        if p + 7 > hend:
            return
        nh = np.int64(b[p + 6])
        F[F_PROTO, i] = nh
        if p + 24 <= hend:
            _put_v6(FA, A_SRC, i, b, p + 8)
        if p + 40 <= hend:
            _put_v6(FA, A_DST, i, b, p + 24)
        l4 = p + 40
        hops = 0
        while hops < 16:
            if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140 or nh == 253 or nh == 254:
                if l4 + 2 > hend:
                    return
                nxt = np.int64(b[l4])
                l4 += (np.int64(b[l4 + 1]) + 1) * 8
            elif nh == 51:  # AH: length in 4-byte units, minus 2
                if l4 + 2 > hend:
                    return
                nxt = np.int64(b[l4])
                l4 += (np.int64(b[l4 + 1]) + 2) * 4
            elif nh == 44:  # fragment: only the first fragment holds the upper-layer header
                if l4 + 4 > hend:
                    return
                nxt = np.int64(b[l4])
                if (_u16(b, l4 + 2) >> 3) != 0:
                    F[F_PROTO, i] = nxt
                    return
                l4 += 8
            else:
                break
            nh = nxt
            F[F_PROTO, i] = nh
            hops += 1
        if hops >= 16:
            return
    else:
        return
    nh = F[F_PROTO, i]
    if nh == 6 or nh == 17 or nh == 132 or nh == 136:  # TCP, UDP, SCTP, UDP-Lite: ports first
        if l4 + 4 <= hend:
            F[F_SPORT, i] = _u16(b, l4)
            F[F_DPORT, i] = _u16(b, l4 + 2)
        if nh == 6 and l4 + 14 <= hend:
            F[F_FLAGS, i] = b[l4 + 13]
    elif nh == 1 or nh == 58:  # ICMP, ICMPv6: type and code as NetFlow exporters put them, type << 8 | code
        if l4 + 2 <= hend:
            F[F_DPORT, i] = (np.int64(b[l4]) << 8) | np.int64(b[l4 + 1])


@njit(cache=CACHE)
def flow_samples(b: np.ndarray, S: np.ndarray, rows: np.ndarray, max_records: int, E: np.ndarray, L: np.ndarray,
                 K: np.ndarray, F: np.ndarray, FA: np.ndarray) -> None:
    """Flow samples ``S[rows]`` (compact or expanded) into flow columns ``F`` (int64 (NF, n)) and addresses ``FA``
    (uint8 (NA, n, 16)), both zero on entry."""
    n = len(rows)
    for i in range(n):
        r = rows[i]
        dg, fmt, off, ln = S[r, S_DG], S[r, S_FORMAT], S[r, S_OFF], S[r, S_LEN]
        end = off + ln
        F[F_DG, i] = dg
        if fmt == w.FLOW_SAMPLE:
            if ln < 32:
                E[dg, w.E_SAMPLE] += 1
                continue
            F[F_SEQ, i] = _u32(b, off)
            src = _u32(b, off + 4)
            F[F_SRC_TYPE, i] = src >> 24
            F[F_SRC_INDEX, i] = src & 0xFFFFFF
            F[F_RATE, i] = _u32(b, off + 8)
            F[F_POOL, i] = _u32(b, off + 12)
            F[F_DROPS, i] = _u32(b, off + 16)
            inp, outp = _u32(b, off + 20), _u32(b, off + 24)
            F[F_IN, i] = inp if (inp >> 30) == 0 and inp != w.INTERFACE_UNKNOWN else 0
            F[F_OUT, i] = outp if (outp >> 30) == 0 and outp != w.INTERFACE_UNKNOWN else 0
            nrec = _u32(b, off + 28)
            p = off + 32
        else:
            if ln < 44:
                E[dg, w.E_SAMPLE] += 1
                continue
            F[F_SEQ, i] = _u32(b, off)
            F[F_SRC_TYPE, i] = _u32(b, off + 4)
            F[F_SRC_INDEX, i] = _u32(b, off + 8)
            F[F_RATE, i] = _u32(b, off + 12)
            F[F_POOL, i] = _u32(b, off + 16)
            F[F_DROPS, i] = _u32(b, off + 20)
            if _u32(b, off + 24) == 0:
                v = _u32(b, off + 28)
                F[F_IN, i] = v if v != w.INTERFACE_UNKNOWN else 0
            if _u32(b, off + 32) == 0:
                v = _u32(b, off + 36)
                F[F_OUT, i] = v if v != w.INTERFACE_UNKNOWN else 0
            nrec = _u32(b, off + 40)
            p = off + 44
        if nrec > max_records:
            L[dg, w.L_RECORDS] += 1
            nrec = max_records
        bad = False
        has = 0
        for _ in range(nrec):
            if p + 8 > end:
                bad = True
                break
            rf = _u32(b, p)
            rl = _u32(b, p + 4)
            q = p + 8
            rend = q + rl
            if rend > end:
                bad = True
                break
            p = rend
            if rf == w.RAW_HEADER and not has & HAS_HEADER:
                if rl < 16 or q + 16 + _u32(b, q + 12) > rend:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_HEADER
                F[F_PROTO, i] = _u32(b, q)
                F[F_BYTES, i] = _u32(b, q + 4)
                F[F_STRIPPED, i] = _u32(b, q + 8)
                _raw_header(b, q + 16, q + 16 + _u32(b, q + 12), F, FA, i)
            elif rf == w.SAMPLED_ETHERNET and not has & HAS_ETHERNET:
                if rl < 24:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_ETHERNET
            elif rf == w.SAMPLED_IPV4 and not has & HAS_IPV4:
                if rl < 32:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_IPV4
            elif rf == w.SAMPLED_IPV6 and not has & HAS_IPV6:
                if rl < 56:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_IPV6
            elif rf == w.EXTENDED_SWITCH and not has & HAS_SWITCH:
                if rl < 16:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_SWITCH
                F[F_SVLAN, i] = _u32(b, q)
                F[F_DVLAN, i] = _u32(b, q + 8)
            elif rf == w.EXTENDED_ROUTER and not has & HAS_ROUTER:
                a = _address(b, q, rend, FA, A_NEXT_HOP, i)
                if a < 0 or a + 8 > rend:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= HAS_ROUTER
                F[F_SMASK, i] = _u32(b, a)
                F[F_DMASK, i] = _u32(b, a + 4)
            elif rf == w.EXTENDED_GATEWAY and not has & HAS_GATEWAY:
                if _gateway(b, q, rend, F, FA, i):
                    has |= HAS_GATEWAY
                else:
                    E[dg, w.E_RECORD] += 1
            else:
                K[dg, w.K_FLOW_RECORD] += 1
        if bad:
            E[dg, w.E_SAMPLE] += 1
            continue
        F[F_HAS, i] = has
        F[F_VALID, i] = 1
        # What the raw header did not give, the sampled IPv4/IPv6 and Ethernet records do.
        _sampled_records(b, S, r, off, end, nrec, F, FA, i, fmt)



@njit(cache=CACHE)
def _gateway(b: np.ndarray, q: Int, rend: Int, F: np.ndarray, FA: np.ndarray, i: Int) -> bool:
    """extended_gateway: next hop, own AS, source AS, source peer AS, destination AS path, communities, local pref."""
    a = _address(b, q, rend, FA, A_GW_NEXT_HOP, i)
    if a < 0 or a + 16 > rend:
        return False
    own_as = _u32(b, a)
    F[F_SAS, i] = _u32(b, a + 4)
    F[F_PEER_AS, i] = _u32(b, a + 8)
    nseg = _u32(b, a + 12)
    p = a + 16
    first: Int = np.int64(-1)
    last: Int = np.int64(-1)
    for _ in range(nseg):
        if p + 8 > rend:
            return False
        k = _u32(b, p + 4)
        p += 8
        if p + 4 * k > rend:
            return False
        if k > 0:
            if first < 0:
                first = _u32(b, p)
            last = _u32(b, p + 4 * (k - 1))
        p += 4 * k
    if p + 4 > rend:
        return False
    nc = _u32(b, p)
    p += 4
    if p + 4 * nc + 4 > rend:
        return False
    F[F_COMMUNITIES, i] = nc
    F[F_LOCAL_PREF, i] = _u32(b, p + 4 * nc)
    # The path leads to the destination: its last AS is the destination's (none: the router's own AS).
    F[F_DAS, i] = last if last >= 0 else own_as
    F[F_NH_AS, i] = first if first >= 0 else 0
    return True


@njit(cache=CACHE)
def _sampled_records(b: np.ndarray, S: np.ndarray, r: Int, off: Int, end: Int, nrec: Int, F: np.ndarray,
                     FA: np.ndarray, i: Int, fmt: Int) -> None:
    """Second look at a valid sample's records: sampled IPv4/IPv6 fill the L3/L4 fields when the raw header gave no
    IP packet, and the frame length comes from the sampled IP or Ethernet record when there is no raw header."""
    has = F[F_HAS, i]
    if not has & (HAS_IPV4 | HAS_IPV6 | HAS_ETHERNET):
        return
    use_ip = F[F_IPVER, i] == 0
    use_len = not has & HAS_HEADER
    p = off + (32 if fmt == w.FLOW_SAMPLE else 44)
    seen = 0
    eth_len: Int = np.int64(-1)
    for _ in range(nrec):
        rf = _u32(b, p)
        rl = _u32(b, p + 4)
        q = p + 8
        p = q + rl
        if rf == w.SAMPLED_IPV4 and not seen & HAS_IPV4 and rl >= 32:
            seen |= HAS_IPV4
            if use_len:
                F[F_BYTES, i] = _u32(b, q)
                use_len = False
            if use_ip:
                use_ip = False
                F[F_IPVER, i] = 4
                F[F_PROTO, i] = _u32(b, q + 4) & 0xFF
                _put_v4(FA, A_SRC, i, b, q + 8)
                _put_v4(FA, A_DST, i, b, q + 12)
                F[F_SPORT, i] = _u32(b, q + 16) & 0xFFFF
                F[F_DPORT, i] = _u32(b, q + 20) & 0xFFFF
                F[F_FLAGS, i] = _u32(b, q + 24) & 0xFF
                F[F_TOS, i] = _u32(b, q + 28) & 0xFF
        elif rf == w.SAMPLED_IPV6 and not seen & HAS_IPV6 and rl >= 56:
            seen |= HAS_IPV6
            if use_len:
                F[F_BYTES, i] = _u32(b, q)
                use_len = False
            if use_ip:
                use_ip = False
                F[F_IPVER, i] = 6
                F[F_PROTO, i] = _u32(b, q + 4) & 0xFF
                _put_v6(FA, A_SRC, i, b, q + 8)
                _put_v6(FA, A_DST, i, b, q + 24)
                F[F_SPORT, i] = _u32(b, q + 40) & 0xFFFF
                F[F_DPORT, i] = _u32(b, q + 44) & 0xFFFF
                F[F_FLAGS, i] = _u32(b, q + 48) & 0xFF
                F[F_TOS, i] = _u32(b, q + 52) & 0xFF
        elif rf == w.SAMPLED_ETHERNET and eth_len < 0 and rl >= 24:
            eth_len = _u32(b, q)
    if use_len and eth_len >= 0:
        F[F_BYTES, i] = eth_len


@njit(cache=CACHE)
def counter_samples(b: np.ndarray, S: np.ndarray, rows: np.ndarray, max_records: int, E: np.ndarray, L: np.ndarray,
                    K: np.ndarray) -> np.ndarray:
    """Counter samples ``S[rows]`` (compact or expanded) into counter columns (C: uint64 (NC, n)); ``C_VALID`` is 1
    for a sample with interface counters, 2 for a well-formed one without, 0 for a broken one."""
    n = len(rows)
    C = np.zeros((NC, n), dtype=np.uint64)
    for i in range(n):
        r = rows[i]
        dg, fmt, off, ln = S[r, S_DG], S[r, S_FORMAT], S[r, S_OFF], S[r, S_LEN]
        end = off + ln
        C[C_DG, i] = dg
        if fmt == w.COUNTERS_SAMPLE:
            if ln < 12:
                E[dg, w.E_SAMPLE] += 1
                continue
            C[C_SEQ, i] = _u32(b, off)
            src = _u32(b, off + 4)
            C[C_SRC_TYPE, i] = src >> 24
            C[C_SRC_INDEX, i] = src & 0xFFFFFF
            nrec = _u32(b, off + 8)
            p = off + 12
        else:
            if ln < 16:
                E[dg, w.E_SAMPLE] += 1
                continue
            C[C_SEQ, i] = _u32(b, off)
            C[C_SRC_TYPE, i] = _u32(b, off + 4)
            C[C_SRC_INDEX, i] = _u32(b, off + 8)
            nrec = _u32(b, off + 12)
            p = off + 16
        if nrec > max_records:
            L[dg, w.L_RECORDS] += 1
            nrec = max_records
        bad = False
        has = 0
        for _ in range(nrec):
            if p + 8 > end:
                bad = True
                break
            rf = _u32(b, p)
            rl = _u32(b, p + 4)
            q = p + 8
            if q + rl > end:
                bad = True
                break
            p = q + rl
            if rf == w.GENERIC_INTERFACE and not has & 1:
                if rl < GENERIC_LEN:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= 1
                for k in range(len(_G_SIZES)):
                    if _G_SIZES[k] == 8:
                        C[C_GENERIC + k, i] = _u64(b, q)
                    else:
                        C[C_GENERIC + k, i] = np.uint64(_u32(b, q))
                    q += _G_SIZES[k]
            elif rf == w.ETHERNET_INTERFACE and not has & 2:
                if rl < ETHERNET_LEN:
                    E[dg, w.E_RECORD] += 1
                    continue
                has |= 2
                for k in range(N_ETHERNET):
                    C[C_ETHERNET + k, i] = np.uint64(_u32(b, q + 4 * k))
            else:
                K[dg, w.K_COUNTER_RECORD] += 1
        if bad:
            E[dg, w.E_SAMPLE] += 1
            continue
        C[C_RECORDS, i] = has
        C[C_VALID, i] = 1 if has else 2  # 2: decoded, but no interface counters (host, processor, ...): no row
    return C
