"""Vectorised 64-bit hashing of numpy columns (deterministic across processes and runs).

Used for record keys (de-duplication), usage row ids and binding lookup keys. The mixer is splitmix64's finaliser,
applied column after column; all arithmetic is modulo 2**64 on uint64 arrays.
"""

from __future__ import annotations

import hashlib

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of a uint64 array (a new array)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> _S30)
        x = x * _C1
        x ^= x >> _S27
        x *= _C2
        x ^= x >> _S31
    return x


def as_u64_columns(values: np.ndarray) -> list[np.ndarray]:
    """A column as uint64 words: integers widen, ``S16`` addresses give two words, strings are hashed per value."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        width = values.dtype.itemsize
        padded = np.ascontiguousarray(values, dtype=f"S{(width + 7) // 8 * 8}")
        words = padded.view("<u8").reshape(len(values), -1)
        return [words[:, i].astype(np.uint64) for i in range(words.shape[1])]
    if values.dtype.kind in "iub":
        return [values.astype(np.int64).view(np.uint64) if values.dtype.kind == "i" else values.astype(np.uint64)]
    if values.dtype.kind == "O":  # strings: few distinct values per batch (exporter names, classes, subscriber ids)
        uniq, inverse = np.unique(values.astype(str), return_inverse=True)
        table = np.array([string_hash(s) for s in uniq], dtype=np.uint64)
        return [table[inverse]]
    raise TypeError(f"cannot hash dtype {values.dtype}")


def string_hash(text: str) -> int:
    """Deterministic 64-bit hash of a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _mix_inplace(h: np.ndarray, tmp: np.ndarray) -> None:
    """:func:`mix64` in place, with a scratch array (no allocation per step)."""
    np.right_shift(h, _S30, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, _C1, out=h)
    np.right_shift(h, _S27, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, _C2, out=h)
    np.right_shift(h, _S31, out=tmp)
    np.bitwise_xor(h, tmp, out=h)


def _words(values: np.ndarray) -> list[np.ndarray]:
    """The uint64 words of :func:`as_u64_columns` without copies where numpy can cast on the fly: integer columns
    as they are (``_xor_into`` casts them like ``astype(int64).view(uint64)``: sign-extended) and ``S16``
    addresses as strided views of their two words."""
    values = np.asarray(values)
    if values.dtype.kind in "iub" and values.dtype.itemsize <= 8:
        return [values]
    if values.dtype.kind == "S" and values.dtype.itemsize % 8 == 0 and values.flags.c_contiguous:
        words = values.view("<u8").reshape(len(values), -1)
        return [words[:, i] for i in range(words.shape[1])]
    return as_u64_columns(values)


def _xor_into(h: np.ndarray, word: np.ndarray) -> None:
    """``h ^= word`` with ``word`` cast to uint64 as C casts (a signed value sign-extends: the same bits as
    ``word.astype(np.int64).view(np.uint64)``; bool is 0 or 1)."""
    if word.dtype == np.uint64:
        np.bitwise_xor(h, word, out=h)
    else:
        np.bitwise_xor(h, word, out=h, dtype=np.uint64, casting="unsafe")


def hash_columns(*columns: np.ndarray, seed: int = 0) -> np.ndarray:
    """One uint64 hash per row over the given columns (each a numpy array of equal length)."""
    n = len(columns[0]) if columns else 0
    h = np.full(n, np.uint64(seed) ^ _GOLDEN, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            for word in _words(col):
                _xor_into(h, word)
                _mix_inplace(h, tmp)
                np.add(h, _GOLDEN, out=h)
        _mix_inplace(h, tmp)
    return h
