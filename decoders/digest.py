"""The datagram identity: a 64-bit digest of an exporter and the bytes of one datagram it sent (numba).

Every ``flows`` record carries the digest of the datagram it came in (``datagram``) and where it starts in it
(``datagram_offset``). An identical resend of a datagram (the same exporter, the same bytes) has the same digest;
any other datagram, a partly repeated one included, a different one (with the probability of a 64-bit collision).
De-duplication keys ``primary`` exporters by it, one key per datagram (:mod:`mediation.dedup`).

The digest is xxHash64's structure (four lanes of 8-byte words, multiply-rotate-multiply rounds, then a final
avalanche), seeded with a digest of the exporter's address string (:func:`exporter_seed`). It is deterministic
(stored, and equal in every worker and after a restart), never 0 (0 means "no identity": records built elsewhere),
and returned as the int64 of its bits (the decoders' context tables are int64). Not a cryptographic hash: an
exporter that crafts two datagrams of one digest only makes its own second datagram a duplicate.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from numba import njit

from decoders.jit import cache_possible

CACHE = cache_possible(__file__)

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


@njit(nogil=True, cache=CACHE, inline="always")
def _word(b: np.ndarray, p: np.uint64) -> np.uint64:
    """8 bytes at ``p``, little-endian. ``p`` is unsigned: numba then adds no negative-index wraparound check, and
    LLVM merges the eight loads into one."""
    return (np.uint64(b[p]) | (np.uint64(b[p + np.uint64(1)]) << np.uint64(8))
            | (np.uint64(b[p + np.uint64(2)]) << np.uint64(16)) | (np.uint64(b[p + np.uint64(3)]) << np.uint64(24))
            | (np.uint64(b[p + np.uint64(4)]) << np.uint64(32)) | (np.uint64(b[p + np.uint64(5)]) << np.uint64(40))
            | (np.uint64(b[p + np.uint64(6)]) << np.uint64(48)) | (np.uint64(b[p + np.uint64(7)]) << np.uint64(56)))


@njit(nogil=True, cache=CACHE, inline="always")
def _rotl(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(nogil=True, cache=CACHE, inline="always")
def _round(acc: np.uint64, w: np.uint64) -> np.uint64:
    acc += w * _P2
    return _rotl(acc, 31) * _P1


@njit(nogil=True, cache=CACHE)
def digest(b: np.ndarray, start: int, n: int, seed: np.uint64) -> np.int64:
    """The digest of ``b[start:start + n]`` (uint8) under ``seed``, as int64 bits; never 0."""
    p = np.uint64(start)
    end = np.uint64(start + n)
    a0 = seed + _P1 + _P2
    a1 = seed + _P2
    a2 = seed + np.uint64(0)
    a3 = seed - _P1
    while end - p >= np.uint64(32):  # four independent lanes: the multiplies of consecutive words overlap
        a0 = _round(a0, _word(b, p))
        a1 = _round(a1, _word(b, p + np.uint64(8)))
        a2 = _round(a2, _word(b, p + np.uint64(16)))
        a3 = _round(a3, _word(b, p + np.uint64(24)))
        p += np.uint64(32)
    h = _rotl(a0, 1) + _rotl(a1, 7) + _rotl(a2, 12) + _rotl(a3, 18)
    for a in (a0, a1, a2, a3):
        h = (h ^ _round(np.uint64(0), a)) * _P1 + _P4
    h += np.uint64(n)
    while end - p >= np.uint64(8):
        h ^= _round(np.uint64(0), _word(b, p))
        h = _rotl(h, 27) * _P1 + _P4
        p += np.uint64(8)
    while p < end:
        h ^= np.uint64(b[p]) * _P5
        h = _rotl(h, 11) * _P1
        p += np.uint64(1)
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    out = np.int64(h)
    return out if out != 0 else np.int64(1)


@njit(nogil=True, cache=CACHE)
def digests(b: np.ndarray, starts: np.ndarray, lens: np.ndarray, seeds: np.ndarray, out: np.ndarray) -> None:
    """``out[d]`` = :func:`digest` of datagram ``d`` (``b[starts[d]:starts[d] + lens[d]]``) under ``seeds[d]``."""
    for d in range(starts.shape[0]):
        out[d] = digest(b, starts[d], lens[d], seeds[d])


@lru_cache(maxsize=65536)
def exporter_seed(exporter: str) -> np.uint64:
    """The seed of an exporter's digests: a digest of its address as given to ``decode`` (cached)."""
    return np.uint64(int.from_bytes(hashlib.blake2b(exporter.encode(), digest_size=8).digest(), "little"))


def digest_bytes(payload: bytes | memoryview, exporter: str, salt: int = 0) -> int:
    """:func:`digest` of one payload from ``exporter`` (``salt``: a different identity for a part of a datagram
    decoded on its own, e.g. a data set held for its template)."""
    seed = exporter_seed(exporter) ^ np.uint64(salt)
    b = np.frombuffer(payload, dtype=np.uint8)
    b.flags.writeable = False  # one compiled signature (the decoders' buffers are read-only arrays)
    return int(digest(b, 0, len(b), seed))


@njit(nogil=True, cache=CACHE)
def record_context(slot: np.ndarray, received: np.ndarray, digest: np.ndarray, where: np.ndarray, counts: np.ndarray,
                   reclen: int, starts: np.ndarray, addr: np.ndarray, domain: np.ndarray, version: np.ndarray,
                   lo: int, time_received: np.ndarray, exporter: np.ndarray, observation_domain: np.ndarray,
                   versions: np.ndarray, ident: np.ndarray, offset: np.ndarray) -> None:
    """The datagram values of the records of consecutive sets, written from index ``lo`` of each column, in one
    pass: receive time, exporter (``addr[slot]``: 16 bytes as two words), observation domain, version, the datagram's
    digest (``ident``, uint64) and where the record starts in its datagram (``offset``, uint16).

    Per set ``s``: ``slot[s]`` (its (exporter, version, domain) row of ``addr``, ``domain`` and ``version``),
    ``received[s]``, ``digest[s]`` (int64 bits), ``counts[s]`` records. Fixed-length records: record ``j`` of set
    ``s`` starts at ``where[s] + j * reclen`` and ``starts`` is empty; variable-length ones: record ``i`` at
    ``where[s] + starts[i]``."""
    variable = starts.shape[0] > 0
    i = 0
    for s in range(counts.shape[0]):
        k = slot[s]
        t = received[s]
        a0 = addr[k, 0]
        a1 = addr[k, 1]
        dom = domain[k]
        ver = version[k]
        d = np.uint64(digest[s])
        w = where[s]
        for j in range(counts[s]):
            r = lo + i
            time_received[r] = t
            exporter[r, 0] = a0
            exporter[r, 1] = a1
            observation_domain[r] = dom
            versions[r] = ver
            ident[r] = d
            offset[r] = np.uint16((w + starts[i]) if variable else (w + j * reclen))
            i += 1


def warm_up() -> None:
    """Compile the kernels now (or load them from the disk cache)."""
    digest_bytes(b"0123456789" * 5, "192.0.2.1")
    b = np.zeros(40, dtype=np.uint8)
    b.flags.writeable = False
    one = np.zeros(1, dtype=np.int64)
    digests(b, one, one + 40, np.zeros(1, dtype=np.uint64), one)
    two = np.zeros((1, 2), dtype=np.uint64)
    record_context(one, one, one, one, one, 48, np.zeros(0, dtype=np.int64), two, np.zeros(1, dtype=np.uint32),
                   np.zeros(1, dtype=np.uint8), 0, one, two, np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=np.uint8),
                   np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.uint16))
