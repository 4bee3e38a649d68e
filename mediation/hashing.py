"""64-bit hashing of numpy columns (deterministic across processes and runs), compiled with numba.

Used for record keys (de-duplication), usage row ids and binding lookup keys. The mixer is splitmix64's finaliser,
applied word after word: ``h = mix(h ^ word) + GOLDEN`` from ``h = seed ^ GOLDEN``, then ``mix(h)`` once more; all
arithmetic is modulo 2**64. The values are stored (dedup keys, reject ids, usage row ids), so they never change.

:func:`hash_columns` runs one compiled kernel with a single signature (a matrix of uint64 words): each column is
first cast into its rows of the matrix (a copy, about 0.3 ns per word and record), so integer widths, signedness,
read-only Arrow buffers and strided views all reach the same compiled code, which compiles once (at
:func:`warm_up`) instead of once per combination of column types. The kernel mixes a block of rows word after
word (the block's hashes stay in L1 and the independent rows keep the multipliers busy), where a row at a time
would wait on one dependent chain of 13 mixes per record.

The compiled code is cached on disk in ``NUMBA_CACHE_DIR`` when that is set, else beside this module when its
folder is writable (see ``decoders.sflow.kernel``).
"""

from __future__ import annotations

import hashlib

import numpy as np
from numba import njit

from decoders.jit import cache_possible

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

_BLOCK = 256
"""Rows mixed together in the kernel (their hashes: 2 KiB, in L1)."""
_CHUNK = 16_384
"""Rows whose words are cast into the matrix at once (13 words: 1.7 MiB), so a large batch needs no large copy."""


CACHE = cache_possible(__file__)
"""Whether numba may cache compiled code on disk (also used by :mod:`mediation.dedup`)."""


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


@njit(nogil=True, cache=CACHE)
def _mix(x: np.uint64) -> np.uint64:
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


mix_word = _mix
"""splitmix64's finaliser of one uint64 word, compiled (for other kernels: :mod:`mediation.subscribers.index`)."""


@njit(nogil=True, cache=CACHE)
def _hash_words(words: np.ndarray, m: int, init: np.uint64, out: np.ndarray) -> None:
    """``out[i]`` = the hash of ``words[:, i]`` for the first ``m`` rows (``words``: uint64, one row per word)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    h = np.empty(_BLOCK, dtype=np.uint64)
    for lo in range(0, m, _BLOCK):
        b = min(_BLOCK, m - lo)
        for i in range(b):
            h[i] = init
        for w in range(words.shape[0]):
            row = words[w, lo:lo + b]  # a 1-D slice: the loop below vectorises (a 2-D index per row does not)
            for i in range(b):
                h[i] = _mix(h[i] ^ row[i]) + golden
        for i in range(b):
            out[lo + i] = _mix(h[i])


def _words(values: np.ndarray) -> list[np.ndarray]:
    """The uint64 words of :func:`as_u64_columns`, as views where the cast into the word matrix can read them as
    they are: integer columns (``np.copyto`` casts as C does: a signed value sign-extends, the same bits as
    ``astype(int64).view(uint64)``; bool is 0 or 1) and ``S`` columns of whole words, contiguous (the word views
    may be unaligned; the copy handles that)."""
    values = np.asarray(values)
    if values.dtype.kind in "iub" and values.dtype.itemsize <= 8:
        return [values]
    if values.dtype.kind == "S" and values.dtype.itemsize % 8 == 0 and values.flags.c_contiguous:
        words = values.view("<u8").reshape(len(values), -1)
        return [words[:, i] for i in range(words.shape[1])]
    return as_u64_columns(values)


def hash_columns(*columns: np.ndarray, seed: int = 0) -> np.ndarray:
    """One uint64 hash per row over the given columns (each a numpy array of equal length)."""
    n = len(columns[0]) if columns else 0
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    words = [w for col in columns for w in _words(col)]
    init = np.uint64(seed) ^ _GOLDEN
    matrix = np.empty((len(words), min(n, _CHUNK)), dtype=np.uint64)
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        for row, word in zip(matrix, words, strict=True):
            np.copyto(row[:m], word[lo:lo + m], casting="unsafe")
        _hash_words(matrix, m, init, out[lo:lo + m])
    return out


def warm_up() -> None:
    """Compile the kernel now (or load it from the disk cache), so the first batch does not wait for it."""
    hash_columns(np.zeros(1, dtype=np.int64), seed=1)
