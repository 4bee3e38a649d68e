"""The batch fast path: runs of single-set datagrams of known fixed-length templates, with no Python step each.

Most data datagrams are a header and one data set of a known fixed-length template. Their headers are parsed for
the whole batch at once (:func:`decoders.netflow.templated.scan_single_sets`); consecutive ones are then taken as
a block: one template lookup per (exporter, domain, template), one array of contexts, one sequence check per key,
and their records stay in the joined batch buffer until their group is decoded (:mod:`decoders.netflow.groups`).
Every other datagram goes through :func:`decoders.netflow.datagram.decode_one` at its place in the batch, so
templates learned mid-batch and the order of everything are as if each datagram had been decoded on its own
(tests/decoders/test_fast_path.py compares both ways).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from decoders.netflow import templated
from decoders.netflow.batch import Batch, Block, DomainKey
from decoders.netflow.datagram import decode_one
from decoders.netflow.state import DecoderState, ExporterState
from decoders.netflow.templates import Compiled

FAST_MIN_RUN = 4
"""Consecutive single-set datagrams of known fixed-length templates taken as a block; fewer go one by one."""

Datagram = tuple[bytes, str, int]
"""(payload, exporter, received_ms)."""


@dataclass(slots=True)
class Scanned:
    """A batch whose headers were parsed at once (:func:`decoders.netflow.templated.scan_single_sets`)."""

    sets: templated.SingleSets
    received: list[int]
    """received_ms per datagram, as given."""
    received_ms: np.ndarray
    codes: np.ndarray
    """Exporter per datagram, an index into ``names``."""
    names: list[str]
    keys: np.ndarray
    """Template key per datagram: exporter index << 50 | IPFIX << 48 | domain << 16 | set id (uint64)."""


def scan(items: Sequence[Datagram], joiner: templated.Joiner) -> Scanned | None:
    """Headers of the whole batch; None when no datagram is a single data set (or the input is odd)."""
    try:
        if not any(len(p) > 1 and p[0] == 0 and p[1] in (9, 10) for p in
                   (items[0][0], items[len(items) // 2][0], items[-1][0])):
            return None  # no v9/IPFIX in sight (a v5 batch, say): not worth joining the datagrams
        # (three lists, not zip(*items): that makes an iterator object per datagram for the GC to count)
        payloads, exporters, received = [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]
        sets = templated.scan_single_sets(payloads, joiner)
        if not sets.single.any():
            return None
        n = len(items)
        first = exporters[0]
        if exporters.count(first) == n:
            codes = np.zeros(n, dtype=np.int64)
            names = [first]
        else:
            index: dict[str, int] = {}
            codes = np.fromiter((index.setdefault(e, len(index)) for e in exporters), dtype=np.int64, count=n)
            names = list(index)
            if len(names) >= 1 << 13:
                return None  # the exporter index would not fit the template key; per datagram instead
        u64 = np.uint64
        keys = ((codes.astype(u64) << u64(50)) | ((sets.version == 10).astype(u64) << u64(48))
                | (sets.domain.astype(u64) << u64(16)) | sets.set_id.astype(u64))
        return Scanned(sets, received, np.array(received, dtype=np.int64), codes, names, keys)
    except Exception:  # e.g. items that are not (bytes, str, int): the per-datagram path counts what is wrong
        return None


def decode_scanned(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned) -> None:
    """Decode a scanned batch: runs of single-set datagrams as blocks, every other datagram on its own."""
    batch.buf = sc.sets.buf
    n, pos = len(items), 0
    for s in [*np.flatnonzero(~sc.sets.single).tolist(), n]:
        if s > pos:
            _run(state, batch, items, sc, pos, s)
        if s < n:
            decode_one(state, batch, *items[s])
        pos = s + 1


def _run(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned, a: int, b: int) -> None:
    """Single-set datagrams ``a:b``: no template changes among them, so one lookup per template key holds."""
    if b - a < FAST_MIN_RUN:
        for i in range(a, b):
            decode_one(state, batch, *items[i])
        return
    keys = sc.keys[a:b]
    if (keys == keys[0]).all():
        uniq, inv = keys[:1], np.zeros(b - a, dtype=np.int64)
    else:
        uniq, inv = np.unique(keys, return_inverse=True)
    compiled: list[Compiled | None] = []
    for key in uniq.tolist():
        st = state.exporters.get(sc.names[key >> 50])
        entry = None if st is None else \
            st.templates.get((10 if key >> 48 & 1 else 9, key >> 16 & 0xFFFFFFFF, key & 0xFFFF))
        compiled.append(entry.compiled if entry is not None and entry.compiled.fast else None)
    reclen = np.array([c.reclen if c is not None else 0 for c in compiled], dtype=np.int64)[inv]
    nrec = sc.sets.body_len[a:b] // np.maximum(reclen, 1) * (reclen > 0)
    pos = a
    for j in [*(np.flatnonzero(nrec == 0) + a).tolist(), b]:
        if j - pos >= FAST_MIN_RUN:
            _block(state, batch, items, sc, pos, j, inv[pos - a:j - a], compiled, nrec[pos - a:j - a])
        else:
            for i in range(pos, j):
                decode_one(state, batch, *items[i])
        if j < b:
            decode_one(state, batch, *items[j])  # no fast template: held, or an options or variable-length template
        pos = j + 1


def _block(state: DecoderState, batch: Batch, items: Sequence[Datagram], sc: Scanned, a: int, b: int,
           inv: np.ndarray, compiled: list[Compiled | None], nrec: np.ndarray) -> None:
    """Datagrams ``a:b``, each one data set of a fixed-length flow template (``compiled[inv]``, never None)."""
    try:
        k = b - a
        sets = sc.sets
        present, first = np.unique(inv, return_index=True)
        order = np.argsort(first)
        first_of = dict(zip(present[order].tolist(), first[order].tolist(), strict=True))  # in order of appearance
        ukey_slot = np.zeros(len(compiled), dtype=np.int64)
        ukey_group = np.zeros(len(compiled), dtype=np.int64)
        ukey_seq = np.zeros(len(compiled), dtype=np.int64)
        per_key = np.bincount(inv, minlength=len(compiled))
        groups: dict[Compiled | None, int] = {}  # in order of first appearance -> index
        seq_keys: dict[DomainKey, int] = {}
        counted: list[tuple[tuple[str, int], int]] = []
        states: dict[int, ExporterState] = {}
        for u, i in first_of.items():
            key = int(sc.keys[a + i])
            code, version, domain = key >> 50, 10 if key >> 48 & 1 else 9, key >> 16 & 0xFFFFFFFF
            st = states[code] = state.exporters[sc.names[code]]
            ukey_slot[u] = batch.slot(st, version, domain)
            ukey_group[u] = groups.setdefault(compiled[u], len(groups))
            ukey_seq[u] = seq_keys.setdefault((st.name, version, domain), len(seq_keys))
            counted.append(((st.name, version), int(per_key[u])))
        rows = np.empty((k, 5), dtype=np.int64)
        rows[:, 0] = ukey_slot[inv]
        rows[:, 1] = sc.received_ms[a:b]
        rows[:, 2] = sets.export_ms[a:b]
        rows[:, 3] = sets.uptime_ms[a:b]
        rows[:, 4] = 0
        versions = sets.version[a:b]
        seq_counts = np.where(versions == 9, 1, nrec)
        offsets = sets.body_start[a:b]
        if len(states) == 1:
            last = {next(iter(states)): b - 1}
        else:
            codes = sc.codes[a:b]
            present_codes, from_end = np.unique(codes[::-1], return_index=True)
            last = dict(zip(present_codes.tolist(), (b - 1 - from_end).tolist(), strict=True))
        sels: list[slice | np.ndarray]
        if len(groups) == 1:
            sels = [slice(None)]
        else:  # the datagrams of each group, in order
            gidx = ukey_group[inv]
            by_group = np.argsort(gidx, kind="stable")
            bounds = np.searchsorted(gidx[by_group], np.arange(len(groups) + 1)).tolist()
            sels = [by_group[bounds[i]:bounds[i + 1]] for i in range(len(groups))]
        # v9 header record counts that disagree with the one data set (IPFIX has no such count)
        miscounted = (versions == 9) & (sets.count[a:b] != nrec)
        miscounts = Counter(sc.codes[a:b][miscounted].tolist()) if miscounted.any() else None
    except Exception:  # a bug: decode these datagrams one by one instead (only unused domain slots were added)
        for i in range(a, b):
            decode_one(state, batch, *items[i])
        return
    # From here on: state changes only.
    if miscounts:
        for code, n in miscounts.items():
            batch.result.errors[(sc.names[code], "record_count_mismatch")] += n
    datagrams = batch.result.datagrams
    for exporter_version, count in counted:
        datagrams[exporter_version] += count
    for code, i in last.items():
        states[code].last_seen_ms = sc.received[i]
    first_ctx = batch.context_block(rows)
    ctx = np.arange(first_ctx, first_ctx + k, dtype=np.int64)
    for c, sel in zip(groups, sels, strict=True):
        assert c is not None  # _run passes only datagrams of a fast template
        g = batch.group(c)
        piece = Block(offsets[sel], nrec[sel], ctx[sel])
        g.chunks.append(piece)
        g.counts.append(int(piece.counts.sum()))
        g.ctx.append(int(piece.ctx[0]))
        g.blocks = True
    batch.sequence.append((None, list(seq_keys), ukey_seq[inv], sets.seq[a:b], seq_counts))
