"""The batch fast path: runs of plain data datagrams (v5, and v9/IPFIX data sets of known fixed-length templates)
with no Python step each.

Most datagrams are a header and data sets of known fixed-length templates (one set, or several: IPv4 and IPv6
flows side by side), or v5 records. The compiled :func:`decoders.netflow.kernel.scan` walks the headers and set
headers of the whole batch and marks the datagrams that are plain data. Consecutive ones are taken as a block:
one template lookup per (exporter, domain, set id), one array of contexts, one sequence check per key, and their
records stay in the batch buffer until their group is gathered (:mod:`decoders.netflow.groups`). Every
other datagram (templates, options, unknown or variable-length templates, anything malformed) goes through
:func:`decoders.netflow.datagram.decode_one` at its place in the batch, so templates learned mid-batch and the
order of everything are as if each datagram had been decoded on its own (tests/decoders/test_fast_path.py
compares both ways).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from decoders.digest import digests, exporter_seed
from decoders.netflow import kernel
from decoders.netflow import v5 as netflow5
from decoders.netflow.batch import CTX_DIGEST, NCTX, Batch, Block, DomainKey
from decoders.netflow.datagram import decode_one
from decoders.netflow.kernel import (
    D_COUNT,
    D_DOMAIN,
    D_EXPORT_MS,
    D_KIND,
    D_NSETS,
    D_RATE,
    D_SEQ,
    D_SET0,
    D_UPTIME,
    S_ID,
    S_LEN,
    S_START,
)
from decoders.netflow.state import DecoderState
from decoders.netflow.templates import Compiled
from decoders.received import Datagram, Received

FAST_MIN_RUN = 4
"""Consecutive plain data datagrams taken as a block; fewer go one by one."""

_VERSIONS = (5, 9, 10)
"""Version by its code in keys (0, 1, 2)."""
_U = np.uint64


@dataclass(slots=True)
class Scanned:
    """A batch whose headers and set headers were walked at once (:func:`decoders.netflow.kernel.scan`)."""

    buf: bytes | memoryview
    """The batch's buffer (:attr:`decoders.received.Received.buf`; offsets in ``D`` and ``S`` are into it)."""
    D: np.ndarray
    """Datagram table (``kernel.D_*`` columns)."""
    S: np.ndarray
    """Set table (``kernel.S_*`` columns) of the plain data datagrams."""
    received: list[int]
    """received_ms per datagram, as given."""
    received_ms: np.ndarray
    codes: np.ndarray
    """Exporter per datagram, an index into ``names``."""
    names: list[str]
    starts: np.ndarray
    """Where each datagram starts in ``buf``."""
    lens: np.ndarray
    """Its length."""


def scan(rec: Received) -> Scanned | None:
    """Headers of the whole batch, read where the datagrams are (no copy); None when no datagram is plain data (or
    the batch has too many exporters for the template key)."""
    try:
        n = len(rec)
        b = kernel.as_bytes(rec.buf)
        D = np.empty((n, kernel.ND), dtype=np.int64)
        S = np.empty((2 * n + 16, kernel.NS), dtype=np.int64)  # most datagrams have one or two sets
        need = int(kernel.scan(b, rec.starts, rec.lens, D, S))
        if need > len(S):
            S = np.empty((need, kernel.NS), dtype=np.int64)
            kernel.scan(b, rec.starts, rec.lens, D, S)
        del b  # (a joined buffer is reused when no view of it is left)
        if not D[:, D_KIND].any():
            return None
        if len(rec.names) >= 1 << 13:
            return None  # the exporter index would not fit the template key; per datagram instead
        return Scanned(rec.buf, D, S[:need], rec.received_ms.tolist(), rec.received_ms, rec.codes, rec.names,
                       rec.starts, rec.lens)
    except Exception:  # a bug: the per-datagram path decodes them (and counts what is wrong)
        return None


def decode_scanned(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned) -> None:
    """Decode a scanned batch: runs of plain data datagrams as blocks, every other datagram on its own."""
    batch.buf = sc.buf
    n, pos = len(items), 0
    for s in [*np.flatnonzero(sc.D[:, D_KIND] == 0).tolist(), n]:
        if s > pos:
            _run(state, batch, items, sc, pos, s)
        if s < n:
            decode_one(state, batch, *items[s])
        pos = s + 1


@dataclass(slots=True)
class _Plan:
    """Plain data datagrams ``a:b`` as the current templates and exporters decode them."""

    a: int
    lo: int
    """First set row of the run in the set table."""
    fast: np.ndarray
    """Per datagram: every set has a known fixed-length flow template (v5: its exporter is known)."""
    records: np.ndarray
    """Per datagram: records in its sets."""
    dkeys: np.ndarray
    """Per datagram: exporter << 50 | version code << 48 | domain (uint64)."""
    set_dg: np.ndarray
    """Per set: its datagram (relative to ``a``)."""
    inv: np.ndarray
    """Per set: index into ``entries``."""
    nrec: np.ndarray
    """Per set: records in it."""
    entries: list[Compiled | None]
    """Per distinct (exporter, version, domain, set id): its fast template; None for v5 (or no fast template)."""


def _plan(state: DecoderState, sc: Scanned, a: int, b: int) -> _Plan:
    """One template lookup per distinct set key of datagrams ``a:b`` (no template changes among them)."""
    D = sc.D[a:b]
    kind = D[:, D_KIND]
    nsets = D[:, D_NSETS]
    lo = int(D[0, D_SET0])
    S = sc.S[lo:int(D[-1, D_SET0] + D[-1, D_NSETS])]
    vcode = (kind == 9).astype(np.uint64) + 2 * (kind == 10).astype(np.uint64)
    dkeys = (sc.codes[a:b].astype(_U) << _U(50)) | (vcode << _U(48)) | D[:, D_DOMAIN].astype(_U)
    set_dg = np.repeat(np.arange(b - a, dtype=np.int64), nsets)
    # set key: the datagram's key with the domain moved up by 16 bits and the set id below (v5: the exporter)
    set_keys = (((dkeys >> _U(48)) << _U(48)) | ((dkeys & _U(0xFFFFFFFF)) << _U(16)))[set_dg] | S[:, S_ID].astype(_U)
    if (set_keys == set_keys[0]).all():
        uniq, inv = set_keys[:1], np.zeros(len(set_keys), dtype=np.int64)
    else:
        uniq, inv = np.unique(set_keys, return_inverse=True)
    entries: list[Compiled | None] = []
    reclen = np.zeros(len(uniq), dtype=np.int64)
    for u, key in enumerate(uniq.tolist()):
        st = state.exporters.get(sc.names[key >> 50])
        code = key >> 48 & 3
        compiled = None
        if st is not None and code == 0:
            reclen[u] = netflow5.RECORD_LEN
        elif st is not None:
            entry = st.templates.get((_VERSIONS[code], key >> 16 & 0xFFFFFFFF, key & 0xFFFF))
            if entry is not None and entry.compiled.fast:
                compiled = entry.compiled
                reclen[u] = compiled.reclen
        entries.append(compiled)
    r = reclen[inv]
    nrec = S[:, S_LEN] // np.maximum(r, 1) * (r > 0)
    first_set = np.cumsum(nsets) - nsets  # every plain data datagram has a set
    fast = np.minimum.reduceat(nrec, first_set) > 0
    records = np.add.reduceat(nrec, first_set)
    return _Plan(a, lo, fast, records, dkeys, set_dg, inv, nrec, entries)


def _run(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned, a: int, b: int) -> None:
    """Plain data datagrams ``a:b``: blocks of the fast ones, the others one by one at their place."""
    while True:
        if b - a < FAST_MIN_RUN:
            for i in range(a, b):
                decode_one(state, batch, *items[i])
            return
        plan = _plan(state, sc, a, b)
        known = len(state.exporters)
        pos = a
        for j in [*(np.flatnonzero(~plan.fast) + a).tolist(), b]:
            if j - pos >= FAST_MIN_RUN:
                _block(state, batch, items, sc, plan, pos, j)
            else:
                for i in range(pos, j):
                    decode_one(state, batch, *items[i])
            if j < b:
                decode_one(state, batch, *items[j])  # held for its template, an unknown exporter, ...
                if len(state.exporters) != known:
                    break  # a new exporter: its next datagrams may be fast now
            pos = j + 1
        else:
            return
        a = j + 1


def _first_order(inv: np.ndarray, k: int) -> list[int]:
    """The values ``0..k-1`` of ``inv`` in the order of their first appearance."""
    if k == 1:
        return [0]
    present, first = np.unique(inv, return_index=True)
    out: list[int] = present[np.argsort(first)].tolist()
    return out


def _block(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned, plan: _Plan, a: int,
           b: int) -> None:
    """Plain data datagrams ``a:b``, every set of a fast template (or v5 records)."""
    try:
        parts = _block_parts(state, batch, sc, plan, a, b)
    except Exception:  # a bug: decode these datagrams one by one instead (only unused domain slots were added)
        for i in range(a, b):
            decode_one(state, batch, *items[i])
        return
    _apply(state, batch, sc, plan, a, b, parts)


@dataclass(slots=True)
class _Parts:
    """What a block adds to the batch and the state, worked out before anything is changed."""

    dinv: np.ndarray
    slots: np.ndarray
    kid: np.ndarray
    seq_keys: list[DomainKey]
    groups: dict[Compiled | None, int]
    sels: list[slice | np.ndarray]
    counted: Counter[tuple[int, int]]
    last: dict[int, int]
    miscounted: np.ndarray


def _block_parts(state: DecoderState, batch: Batch, sc: Scanned, plan: _Plan, a: int, b: int) -> _Parts:
    k = b - a
    i0, i1 = a - plan.a, b - plan.a
    D = sc.D[a:b]
    kind = D[:, D_KIND]
    records = plan.records[i0:i1]
    dkeys = plan.dkeys[i0:i1]
    s0 = int(D[0, D_SET0]) - plan.lo
    s1 = int(D[-1, D_SET0] + D[-1, D_NSETS]) - plan.lo
    # (exporter, version, domain) of each datagram: its slot and sequence key
    if (dkeys == dkeys[0]).all():
        duniq, dinv = dkeys[:1], np.zeros(k, dtype=np.int64)
    else:
        duniq, dinv = np.unique(dkeys, return_inverse=True)
    slots = np.zeros(len(duniq), dtype=np.int64)
    kid = np.zeros(len(duniq), dtype=np.int64)
    seq_keys: list[DomainKey] = []
    for u in _first_order(dinv, len(duniq)):
        key = int(duniq[u])
        st = state.exporters[sc.names[key >> 50]]
        version, domain = _VERSIONS[key >> 48 & 3], key & 0xFFFFFFFF
        slots[u] = batch.slot(st, version, domain)
        kid[u] = len(seq_keys)
        seq_keys.append((st.name, version, domain))
    # the sets, grouped by compiled template in order of first appearance (v5 records: None)
    inv = plan.inv[s0:s1]
    groups: dict[Compiled | None, int] = {}
    ugroup = np.zeros(len(plan.entries), dtype=np.int64)
    for u in _first_order(inv, len(plan.entries)):
        ugroup[u] = groups.setdefault(plan.entries[u], len(groups))
    sels: list[slice | np.ndarray]
    if len(groups) == 1:
        sels = [slice(None)]
    else:  # the sets of each group, in order
        gidx = ugroup[inv]
        by_group = np.argsort(gidx, kind="stable")
        bounds = np.searchsorted(gidx[by_group], np.arange(len(groups) + 1)).tolist()
        sels = [by_group[bounds[i]:bounds[i + 1]] for i in range(len(groups))]
    codes = sc.codes[a:b]
    counted = Counter(zip(codes.tolist(), kind.tolist(), strict=True)) if len(sc.names) > 1 else \
        Counter({(0, int(v)): int(c) for v, c in zip(*np.unique(kind, return_counts=True), strict=True)})
    if len(sc.names) == 1:
        last = {0: b - 1}
    else:
        present_codes, from_end = np.unique(codes[::-1], return_index=True)
        last = dict(zip(present_codes.tolist(), (b - 1 - from_end).tolist(), strict=True))
    # v9 header record counts that disagree with the data sets (IPFIX has no such count; v5's was checked)
    miscounted = (kind == 9) & (D[:, D_COUNT] != records)
    return _Parts(dinv, slots, kid, seq_keys, groups, sels, counted, last, miscounted)


def _apply(state: DecoderState, batch: Batch, sc: Scanned, plan: _Plan, a: int, b: int, p: _Parts) -> None:
    """The block's state changes: counters, contexts, group blocks, sequence observations."""
    i0, i1 = a - plan.a, b - plan.a
    D = sc.D[a:b]
    kind = D[:, D_KIND]
    codes = sc.codes[a:b]
    s0 = int(D[0, D_SET0]) - plan.lo
    s1 = int(D[-1, D_SET0] + D[-1, D_NSETS]) - plan.lo
    result = batch.result
    if p.miscounted.any():
        for code, n in Counter(codes[p.miscounted].tolist()).items():
            result.errors[(sc.names[code], "record_count_mismatch")] += n
    for (code, version), n in p.counted.items():
        result.datagrams[(sc.names[code], version)] += n
    for code, i in p.last.items():
        state.exporters[sc.names[code]].last_seen_ms = sc.received[i]
    rows = np.empty((b - a, NCTX), dtype=np.int64)
    rows[:, 0] = p.slots[p.dinv]
    rows[:, 1] = sc.received_ms[a:b]
    rows[:, 2] = D[:, D_EXPORT_MS]
    rows[:, 3] = D[:, D_UPTIME]
    rows[:, 4] = D[:, D_RATE]
    seeds = np.array([exporter_seed(name) for name in sc.names], dtype=np.uint64)[codes]
    buf = kernel.as_bytes(sc.buf)
    digest = np.empty(b - a, dtype=np.int64)
    digests(buf, sc.starts[a:b], sc.lens[a:b], seeds, digest)
    rows[:, CTX_DIGEST] = digest
    del buf  # (the joiner reuses its buffer when no view of it is left)
    first_ctx = batch.context_block(rows)
    set_dg = plan.set_dg[s0:s1]
    set_ctx = first_ctx + set_dg - i0
    offsets = sc.S[plan.lo + s0:plan.lo + s1, S_START]
    where = offsets - sc.starts[plan.a + set_dg]
    nrec = plan.nrec[s0:s1]
    for c, sel in zip(p.groups, p.sels, strict=True):
        g = batch.v5 if c is None else batch.group(c)
        piece = Block(offsets[sel], nrec[sel], set_ctx[sel], where[sel])
        g.chunks.append(piece)
        g.counts.append(int(piece.counts.sum()))
        g.ctx.append(int(piece.ctx[0]))
        g.where.append(0)
        g.blocks = True
    records = plan.records[i0:i1]
    batch.sequence.append((None, p.seq_keys, p.kid[p.dinv], D[:, D_SEQ], np.where(kind == 9, 1, records)))
