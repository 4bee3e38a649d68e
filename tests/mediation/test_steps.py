"""The mediation steps one by one: de-duplication window and table, classes, exact reconciliation sums, hashing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mediation.classify import Classifier
from mediation.dedup import Deduplicator, _Table
from mediation.hashing import hash_columns, string_hash
from mediation.reconcile import FIELDS, Reconciler, exact_bincount
from tests.mediation.mediation_helpers import s16


def test_hash_table_finds_what_it_holds_under_collisions():
    t = _Table(1000)
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(1, 1 << 63, 900, dtype=np.int64).astype(np.uint64))
    keys[:50] = (np.arange(50, dtype=np.uint64) << np.uint64(40)) | np.uint64(7)  # same home slot for all 50
    keys = np.unique(keys)
    assert not t.insert(keys).any()
    assert t.insert(keys).all() and t.count == len(keys)
    assert t.contains(keys).all()
    others = np.setdiff1d(keys + np.uint64(1), keys)
    assert not t.contains(others).any()


def test_dedup_window_rotates_and_forgets():
    d = Deduplicator(window_ms=1000, max_keys=10_000)
    role = np.zeros(3, dtype=np.int8)
    keys = np.array([11, 12, 11], dtype=np.uint64)
    assert d.duplicates(keys, role, 0).tolist() == [False, False, True]
    assert d.duplicates(keys[:1], role[:1], 500).tolist() == [True]
    assert d.duplicates(keys[:1], role[:1], 1500).tolist() == [True]  # in the previous generation now
    # remembered for at least the window after it was first seen, and at most twice that
    assert d.duplicates(keys[:1], role[:1], 2600).tolist() == [False]
    d2 = Deduplicator(window_ms=1000, max_keys=10_000)
    d2.duplicates(keys[:1], role[:1], 0)
    d2.duplicates(np.array([99], np.uint64), role[:1], 1000)  # rotation: 11 moves to the previous generation
    d2.duplicates(np.array([98], np.uint64), role[:1], 2000)  # second rotation: 11 is forgotten
    assert d2.duplicates(keys[:1], role[:1], 2001).tolist() == [False]


def test_dedup_bounded_by_max_keys():
    d = Deduplicator(window_ms=10**9, max_keys=4096)  # two generations of 2048
    role = np.zeros(1500, dtype=np.int8)
    d.duplicates(np.arange(1, 1501, dtype=np.uint64), role, 0)
    d.duplicates(np.arange(2001, 3501, dtype=np.uint64), role, 1)  # the current generation is full: retired
    assert d.evictions == 0  # nothing forgotten yet: the first keys are in the previous generation
    assert d.duplicates(np.array([5], np.uint64), role[:1], 2).tolist() == [True]
    d.duplicates(np.arange(4001, 5501, dtype=np.uint64), role, 3)  # full again: the first 1500 keys go early
    assert d.evictions == 1500
    assert len(d._current.slots) <= 8192


def test_record_keys_by_role():
    roles = [SimpleNamespace(prefix="192.0.2.0/24", role="shared")]
    d = Deduplicator(1000, 10_000, roles)
    assert d.role_of(s16(["192.0.2.7"])[0]) == 1 and d.role_of(s16(["198.51.100.1"])[0]) == 0
    cols = {"exporter": s16(["192.0.2.1", "192.0.2.2", "198.51.100.1", "198.51.100.2"]),
            "observation_domain": np.zeros(4, np.uint32), "src_addr": s16(["10.0.0.1"] * 4),
            "dst_addr": s16(["10.0.0.2"] * 4), "src_port": np.full(4, 1, np.uint16),
            "dst_port": np.full(4, 2, np.uint16), "protocol": np.full(4, 6, np.uint8),
            "flow_start": np.full(4, 5, np.int64), "flow_end": np.full(4, 6, np.int64),
            "bytes": np.full(4, 100, np.uint64), "packets": np.full(4, 1, np.uint64)}
    k = d.keys(cols, np.array([1, 1, 0, 0], dtype=np.int8))
    assert k[0] == k[1] and k[2] != k[3] and k[0] != k[2] and (k != 0).all()


def test_classifier_first_match_and_ipv6():
    rules = [SimpleNamespace(name="own", prefixes=["2001:db8:f::/48", "203.0.113.0/24"], ports=[], protocols=[]),
             SimpleNamespace(name="web", prefixes=[], ports=[80, 443], protocols=[6])]
    c = Classifier(rules, "other")
    from mediation.subscribers.bindings import split_addresses

    hi, lo = split_addresses(s16(["2001:db8:f:1::1", "203.0.113.9", "8.8.8.8", "8.8.8.8", "2001:db8:e::1"]))
    got = c.classify(hi, lo, np.array([1, 443, 443, 443, 80], np.uint16), np.array([6, 6, 6, 17, 6], np.uint8))
    assert c.names[got].tolist() == ["own", "own", "web", "other", "web"]


def test_exact_bincount_beyond_float_precision():
    key = np.array([0, 1, 0, 1, 2])
    v = np.array([2**63 + 1, 5, 2**62 + 3, 2**64 - 1, 0], dtype=np.uint64)
    got = exact_bincount(key, v, 3).tolist()
    assert got == [2**63 + 1 + 2**62 + 3, 5 + 2**64 - 1, 0]


@pytest.mark.parametrize("n_exporters", [3, 5000])  # the dense path and the sorting path
def test_reconciler_paths_agree(n_exporters):
    rng = np.random.default_rng(5)
    n = 3000
    recv = rng.integers(0, 4, n) * 300_000 + 17
    exporter = rng.integers(0, n_exporters, n)
    nbytes = rng.integers(1, 10**9, n).astype(np.uint64)
    rejected = rng.random(n) < 0.1
    per_record = {"records_in": np.ones(n, np.uint64), "bytes_in": nbytes,
                  "bytes_rejected": np.where(rejected, nbytes, 0).astype(np.uint64),
                  "records_rejected": rejected.astype(np.uint64)}
    ok = np.flatnonzero(~rejected)
    per_part = {"bytes_attributed": nbytes[ok], "bytes_unattributed": np.zeros(len(ok), np.uint64),
                "bytes_usage": nbytes[ok]}
    r = Reconciler(300_000)
    assert r.add(recv, exporter, per_record, per_part, ok)
    rows = r.emit(0, force=True)
    total = {f: sum(int(x[2][i]) for x in rows) for i, f in enumerate(FIELDS)}
    assert total["bytes_in"] == int(nbytes.sum()) and total["records_in"] == n
    assert all(x[3] for x in rows)
    # a batch that does not balance is caught
    r = Reconciler(300_000)
    broken = dict(per_part, bytes_attributed=per_part["bytes_attributed"] - np.uint64(1))
    assert not r.add(recv, exporter, per_record, broken, ok) and r.unbalanced_batches == 1
    assert not all(x[3] for x in r.emit(0, force=True))


def test_hashes_are_stable_across_processes():
    import hashlib

    assert string_hash("alice") == int.from_bytes(hashlib.blake2b(b"alice", digest_size=8).digest(), "little")
    a = hash_columns(np.array([1, 2], np.int64), s16(["10.0.0.1", "10.0.0.1"]))
    b = hash_columns(np.array([1, 2], np.int64), s16(["10.0.0.1", "10.0.0.1"]))
    assert (a == b).all() and a[0] != a[1]
    assert hash_columns(np.array([1]), seed=1)[0] != hash_columns(np.array([1]), seed=2)[0]


KNOWN_HASH = 18048613024197940672  # hash_columns([1] int64, [-1] int32, seed=0xF10) since it was written


def _reference_hash(*columns, seed=0):
    """hash_columns as first written: every column as uint64 words (copies), mixed word after word."""
    from mediation.hashing import _GOLDEN, as_u64_columns, mix64

    h = np.full(len(columns[0]), np.uint64(seed) ^ _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            for word in as_u64_columns(col):
                h = mix64(h ^ word) + _GOLDEN
        return mix64(h)


def test_hash_values_do_not_change_with_the_cast_free_path():
    """Dedup keys, reject ids and usage row ids are stored: every dtype hashes to what it always did (signed
    values sign-extend, addresses as their two words whether contiguous, strided or unaligned)."""
    rng = np.random.default_rng(3)
    n = 257
    columns = [rng.random(n) < 0.5]
    for dt in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        info = np.iinfo(dt)
        col = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
        col[:2] = info.min, info.max
        columns.append(col)
    raw = rng.bytes(16 * (2 * n) + 3)
    s16 = np.frombuffer(raw, dtype="S16", count=2 * n)
    columns += [s16[:n], s16[::2], np.frombuffer(raw, dtype="S16", count=n, offset=3),  # contiguous, strided, unaligned
                np.array([b"ab", b"abcdefghi", b""] * 86, dtype="S9")[:n], np.array(["x", "yy"] * 129, object)[:n]]
    for col in columns:
        assert (hash_columns(col, seed=7) == _reference_hash(col, seed=7)).all(), col.dtype
    assert (hash_columns(*columns) == _reference_hash(*columns)).all()
    # a known value, so a change of the mixing itself shows too
    assert int(hash_columns(np.array([1], np.int64), np.array([-1], np.int32), seed=0xF10)[0]) == KNOWN_HASH


def _reconcile(records, parts=None, part_record=None, recv=None, exporter=None):
    n = len(records["bytes_in"])
    r = Reconciler(300_000)
    ok = r.add(np.full(n, 17) if recv is None else recv, np.zeros(n, np.int64) if exporter is None else exporter,
               records, parts or {}, np.zeros(0, np.int64) if part_record is None else part_record)
    return ok, r.emit(0, force=True)


def test_reconciler_exact_beyond_float_precision_one_key_and_several():
    """Sums above 2**53 are exact on the one-key path and the several-key path; a sum beyond 2**64 raises as it
    always did (it cannot be stored), never wraps."""
    big = np.array([2**62 + 1, 2**62 + 3, 5], dtype=np.uint64)
    rec = {"records_in": np.ones(3, np.uint64), "bytes_in": big, "bytes_unattributed": big}
    ok, rows = _reconcile(rec)
    assert ok and len(rows) == 1 and int(rows[0][2][FIELDS.index("bytes_in")]) == 2**63 + 9
    recv = np.array([17, 300_017, 300_018])
    ok, rows = _reconcile(rec, recv=recv, exporter=np.array([2, 2, 2]))
    assert ok and [(x[0], x[1], int(x[2][FIELDS.index("bytes_in")])) for x in rows] == [
        (0, 2, 2**62 + 1), (300_000, 2, 2**62 + 8)]
    # one value per part on top of the per-record ones: both add into the same field
    ok, rows = _reconcile({"records_in": np.ones(2, np.uint64), "bytes_in": big[:2]},
                          {"bytes_attributed": big[:2]}, np.array([0, 1]))
    assert ok and int(rows[0][2][FIELDS.index("bytes_attributed")]) == 2**63 + 4
    huge = np.array([2**63, 2**63], dtype=np.uint64)
    with pytest.raises(OverflowError):
        _reconcile({"records_in": np.ones(2, np.uint64), "bytes_in": huge, "bytes_unattributed": huge})
    huge3 = np.array([2**63, 2**63, 1], dtype=np.uint64)
    with pytest.raises(OverflowError):  # several keys: the first key's sum does not fit
        _reconcile({"records_in": np.ones(3, np.uint64), "bytes_in": huge3, "bytes_unattributed": huge3},
                   recv=np.array([0, 0, 300_000]))


def test_reconciler_one_key_path_matches_the_general_one():
    """A batch with one receive interval and one exporter (column sums) gives what the bincount path gives for the
    same records in a batch that has two keys."""
    rng = np.random.default_rng(9)
    n = 500
    nbytes = rng.integers(0, 10**12, n).astype(np.uint64)
    rejected = rng.random(n) < 0.2
    rec = {"records_in": np.ones(n, np.uint64), "bytes_in": nbytes,
           "bytes_rejected": np.where(rejected, nbytes, 0).astype(np.uint64),
           "bytes_attributed": np.where(rejected, 0, nbytes).astype(np.uint64)}
    ok, one = _reconcile(rec, recv=np.full(n, 300_017), exporter=np.full(n, 3))
    assert ok and len(one) == 1 and one[0][:2] == (300_000, 3) and one[0][2].dtype == np.uint64
    other = {k: v[:1] for k, v in rec.items()}
    ok, two = _reconcile({k: np.concatenate([v, other[k]]) for k, v in rec.items()},
                         recv=np.concatenate([np.full(n, 300_017), [17]]), exporter=np.full(n + 1, 3))
    assert ok and [x[:2] for x in two] == [(0, 3), (300_000, 3)]
    assert two[1][2].tolist() == one[0][2].tolist()
    assert one[0][2].tolist() == [sum(int(x) for x in rec[f]) if f in rec else 0 for f in FIELDS]
