"""The compiled ``hash_columns`` against a frozen copy of the numpy formula it replaced (the values are stored:
dedup keys, reject ids, usage row ids, so every dtype must hash to the same bits as before)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mediation.hashing import hash_columns

# --- the numpy implementation of hash_columns before the compiled kernel, frozen here ------------------------------

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _frozen_string_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _frozen_as_u64_columns(values: np.ndarray) -> list[np.ndarray]:
    values = np.asarray(values)
    if values.dtype.kind == "S":
        width = values.dtype.itemsize
        padded = np.ascontiguousarray(values, dtype=f"S{(width + 7) // 8 * 8}")
        words = padded.view("<u8").reshape(len(values), -1)
        return [words[:, i].astype(np.uint64) for i in range(words.shape[1])]
    if values.dtype.kind in "iub":
        return [values.astype(np.int64).view(np.uint64) if values.dtype.kind == "i" else values.astype(np.uint64)]
    if values.dtype.kind == "O":
        uniq, inverse = np.unique(values.astype(str), return_inverse=True)
        table = np.array([_frozen_string_hash(s) for s in uniq], dtype=np.uint64)
        return [table[inverse]]
    raise TypeError(f"cannot hash dtype {values.dtype}")


def _frozen_mix_inplace(h: np.ndarray, tmp: np.ndarray) -> None:
    np.right_shift(h, _S30, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, _C1, out=h)
    np.right_shift(h, _S27, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, _C2, out=h)
    np.right_shift(h, _S31, out=tmp)
    np.bitwise_xor(h, tmp, out=h)


def _frozen_words(values: np.ndarray) -> list[np.ndarray]:
    values = np.asarray(values)
    if values.dtype.kind in "iub" and values.dtype.itemsize <= 8:
        return [values]
    if values.dtype.kind == "S" and values.dtype.itemsize % 8 == 0 and values.flags.c_contiguous:
        words = values.view("<u8").reshape(len(values), -1)
        return [words[:, i] for i in range(words.shape[1])]
    return _frozen_as_u64_columns(values)


def _frozen_xor_into(h: np.ndarray, word: np.ndarray) -> None:
    if word.dtype == np.uint64:
        np.bitwise_xor(h, word, out=h)
    else:
        np.bitwise_xor(h, word, out=h, dtype=np.uint64, casting="unsafe")


def frozen_hash_columns(*columns: np.ndarray, seed: int = 0) -> np.ndarray:
    n = len(columns[0]) if columns else 0
    h = np.full(n, np.uint64(seed) ^ _GOLDEN, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            for word in _frozen_words(col):
                _frozen_xor_into(h, word)
                _frozen_mix_inplace(h, tmp)
                np.add(h, _GOLDEN, out=h)
        _frozen_mix_inplace(h, tmp)
    return h

# --------------------------------------------------------------------------------------------------------------------


_INTEGERS = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                                   np.bool_)]
_LAYOUTS = ("contiguous", "strided", "unaligned", "read-only")


@st.composite
def _column(draw: st.DrawFn, n: int) -> np.ndarray:
    kind = draw(st.sampled_from(["int", "bytes", "str"]))
    if kind == "str":
        return np.array(draw(st.lists(st.text(max_size=6), min_size=n, max_size=n)), dtype=object)
    widths = st.sampled_from([3, 8, 9, 16, 24])
    dtype = draw(st.sampled_from(_INTEGERS)) if kind == "int" else np.dtype(f"S{draw(widths)}")
    values = draw(hnp.arrays(dtype, 2 * n))
    layout = draw(st.sampled_from(_LAYOUTS))
    if layout == "strided":
        return values[::2]
    if layout == "unaligned":  # e.g. addresses at an odd offset of a received buffer
        raw = b"\0" + values[:n].tobytes()
        return np.frombuffer(raw, dtype=dtype, count=n, offset=1)
    out = values[:n]
    if layout == "read-only":  # Arrow buffers reach the hash as read-only numpy arrays
        out = np.frombuffer(out.tobytes(), dtype=dtype)
    return out


@st.composite
def _columns(draw: st.DrawFn) -> list[np.ndarray]:
    n = draw(st.integers(0, 40) | st.sampled_from([255, 256, 257]))
    return [draw(_column(n)) for _ in range(draw(st.integers(1, 14)))]


@settings(max_examples=80, deadline=None)
@given(columns=_columns(), seed=st.integers(0, 2**64 - 1))
def test_hash_columns_matches_the_frozen_numpy_formula(columns, seed):
    got = hash_columns(*columns, seed=seed)
    assert got.dtype == np.uint64 and len(got) == len(columns[0])
    if not len(got):
        return  # (the numpy formula failed on empty ``S`` columns: it could not reshape their words)
    assert got.tolist() == frozen_hash_columns(*columns, seed=seed).tolist()


def test_large_batches_cross_the_copy_chunks():
    """More rows than the kernel's word matrix holds at once (several chunks and a short last one)."""
    rng = np.random.default_rng(5)
    n = 40_000
    columns = [np.frombuffer(rng.bytes(16 * n), dtype="S16"), rng.integers(0, 65536, n).astype(np.uint16),
               rng.integers(-(1 << 62), 1 << 62, n), rng.integers(-128, 128, n).astype(np.int8)]
    assert (hash_columns(*columns, seed=0xF10) == frozen_hash_columns(*columns, seed=0xF10)).all()
