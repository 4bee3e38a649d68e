"""Group decoding: the end of a ``decode`` call, from the groups of a :class:`Batch` to ``flows`` columns.

Variable-length groups first find their records, all sets at once (:func:`decoders.netflow.templates.walk_sets`);
then v9 header record counts are checked and sequence numbers accounted in datagram order (record counts are now
known). The ``flows`` columns of the whole batch are allocated once (:class:`decoders.netflow.columns.Output`) and
each group fills its range of rows: one pass of the compiled gather (:mod:`decoders.netflow.kernel`: by set offsets
and record counts for fixed-length templates and v5, whether the sets are still in the batch buffer or were parsed
one by one; by segment starts for variable-length ones) writes the columns its template maps, one compiled pass the
datagram values (:func:`decoders.digest.record_context`), one the times, sampling rate and sampled counters
(:func:`decoders.netflow.kernel.fill_records`); only the rarer time forms and per-record rates take numpy passes.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from decoders.digest import record_context
from decoders.errors import BadRecord, EmptySet
from decoders.netflow import fields as ies
from decoders.netflow import kernel, templated
from decoders.netflow import v5 as netflow5
from decoders.netflow.batch import CTX_DIGEST, Batch, Block, DomainKey, Group, SingleObservation
from decoders.netflow.columns import A_ROWS, FusedPlan, Output
from decoders.netflow.state import DecoderState
from decoders.netflow.templates import Compiled, walk_sets
from decoders.result import DecodeResult
from decoders.sampling import rate_from_columns, resolve

_NO_STARTS = np.zeros(0, dtype=np.int64)
_NO_SEGMENTS = np.zeros((0, 1), dtype=np.int64)
_ZERO = np.zeros(1, dtype=np.int64)


class DomainTables:
    """Per (exporter, version, domain) slot of a batch: values that are looked up per record by slot."""

    def __init__(self, batch: Batch) -> None:
        info = batch.domain_info
        self.info = info
        k = len(info)
        self.addr = np.array([st.addr16 for st, _, _ in info], dtype="S16").reshape(k)
        self.addr_words = self.addr.view(np.uint64).reshape(k, 2)
        self.version = np.array([v for _, v, _ in info], dtype=np.uint8)
        self.domain = np.array([d for _, _, d in info], dtype=np.uint32)
        self.policy_rate = np.array([st.policy[0] for st, _, _ in info], dtype=np.uint64)
        self.override = np.array([st.policy[1] for st, _, _ in info], dtype=bool)
        self.domain_rate = np.array([st.samplers.domain_rate(d) if v != 5 else 0 for st, v, d in info],
                                    dtype=np.uint64)
        self.init_ms = np.array([st.init_ms.get(d, -1) if v == 10 else -1 for st, v, d in info], dtype=np.int64)


def finish(state: DecoderState, batch: Batch) -> None:
    """Decode every group of the batch into ``batch.result.flows``; account record counts and sequences."""
    result = batch.result
    ctx = batch.context_array()
    for g in batch.groups.values():
        if not cast(Compiled, g.compiled).fixed:
            try:
                _walk_group(g, ctx, batch)
            except Exception:  # a bug: count it and lose this group only; tests assert it never happens
                result.errors[(batch.domain_info[int(ctx[g.ctx[0], 0])][0].name, "internal_error")] += 1
                g.counts = [0] * len(g.counts)
    for name, count, every, flows, var_sets in batch.v9_counts:
        var = sum(g.counts[i] for g, i in var_sets)
        if count not in (every + var, flows + var):  # RFC 3954 counts every record; softflowd only flows
            result.errors[(name, "record_count_mismatch")] += 1
    observe_sequences(state, batch)
    groups = [g for g in batch.groups.values() if sum(g.counts)]
    if batch.v5.counts:
        groups.append(batch.v5)
    plans = [_fused(g) for g in groups]
    sizes = [sum(g.counts) for g in groups]
    total = sum(sizes)
    out = Output(total, tuple(max((p.scratch[w] for p in plans), default=0) for w in range(len(kernel.WIDTHS))))
    lost: list[tuple[int, int]] = []
    if groups:
        dom = DomainTables(batch)
        lo = 0
        for g, fused, n in zip(groups, plans, sizes, strict=True):
            try:
                _decode_group(g, ctx, dom, n, result, batch.buf, out, fused, lo)
            except Exception:  # a bug: count it and lose this group only; tests assert it never happens
                result.errors[(batch.domain_info[int(ctx[g.ctx[0], 0])][0].name, "internal_error")] += 1
                lost.append((lo, lo + n))  # (its rows may be partly written: they are dropped)
            lo += n
    columns = out.flows()
    if lost:
        keep = np.ones(total, dtype=bool)
        for a, b in lost:
            keep[a:b] = False
        columns = {name: column[keep] for name, column in columns.items()}
        total = int(keep.sum())
    result.n_flows = total
    result.flows = columns


def _walk_group(g: Group, ctx: np.ndarray, batch: Batch) -> None:
    """Find the records of every variable-length set of a group at once; count broken sets."""
    chunks = cast(list[bytes], g.chunks)  # variable-length sets are copied out of their datagrams
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    ends = np.cumsum(lengths)
    buf = b"".join(chunks)
    counts, g.starts, broken = walk_sets(cast(Compiled, g.compiled), buf, ends - lengths, ends)
    g.chunks = [buf]
    g.where = (np.asarray(g.where, dtype=np.int64) - (ends - lengths)).tolist()  # relative to the joined sets
    g.counts = counts.tolist()
    for i in np.nonzero(broken | (counts == 0))[0]:
        name = batch.domain_info[int(ctx[g.ctx[i], 0])][0].name
        batch.result.errors[(name, BadRecord.reason if broken[i] else EmptySet.reason)] += 1


def _columns_of(observations: list[tuple[int, int, int, bool]]) -> tuple[np.ndarray, ...]:
    """Sequence observations (key id, seq, count, exact) as four arrays."""
    kid, seq, count, exact = zip(*observations, strict=True)
    return (np.array(kid, dtype=np.int64), np.array(seq, dtype=np.int64), np.array(count, dtype=np.int64),
            np.array(exact, dtype=bool))


def observe_sequences(state: DecoderState, batch: Batch) -> None:
    """Sequence accounting of the batch, in datagram order, now that every set's record count is known."""
    result = batch.result
    if not any(entry[0] is None for entry in batch.sequence):
        for tracker, key, seq, count, exact, var_sets in cast(list[SingleObservation], batch.sequence):
            if var_sets:
                count += sum(g.counts[i] for g, i in var_sets)
            resets = tracker.resets
            lost = tracker.observe(key, seq, count, exact=exact)
            if lost:
                result.sequence_lost[key[0]] += lost
            if tracker.resets != resets:
                result.sequence_resets[key[0]] += tracker.resets - resets
        return
    # With blocks: one stream of observations per key, each in datagram order (keys are independent of each
    # other, unless a tracker would evict keys: then everything goes in datagram order, one at a time).
    index: dict[DomainKey, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []  # (key id, seq, count, exact) arrays: a block, or a run of singles
    singles: list[tuple[int, int, int, bool]] = []
    for entry in batch.sequence:
        if entry[0] is None:
            if singles:
                parts.append(_columns_of(singles))
                singles = []
            _, keys, kid, seqs, counts = entry
            local = np.array([index.setdefault(key, len(index)) for key in keys], dtype=np.int64)
            parts.append((local[kid], seqs, counts, np.ones(len(kid), dtype=bool)))
        else:
            _, key, seq, count, exact, var_sets = entry
            if var_sets:
                count += sum(g.counts[i] for g, i in var_sets)
            singles.append((index.setdefault(key, len(index)), seq, count, exact))
    if singles:
        parts.append(_columns_of(singles))
    all_keys = list(index)
    trackers = [state.sequences if key[1] == 9 else state.records_sequences for key in all_keys]
    kid, seqs, counts, exacts = parts[0] if len(parts) == 1 else \
        (np.concatenate(x) for x in zip(*parts, strict=True))
    for tracker in {id(t): t for t in trackers}.values():
        new = sum(1 for key, t in zip(all_keys, trackers, strict=True) if t is tracker and key not in tracker.states)
        if new and len(tracker.states) + new > tracker.max_keys:
            runs = [(i, i + 1) for i in range(len(kid))]  # evictions depend on the order: keep it
            break
    else:
        order = np.argsort(kid, kind="stable")
        kid, seqs, counts, exacts = kid[order], seqs[order], counts[order], exacts[order]
        bounds = np.flatnonzero(np.diff(kid)) + 1
        runs = list(zip([0, *bounds.tolist()], [*bounds.tolist(), len(kid)], strict=True))
    for lo, hi in runs:
        key = all_keys[int(kid[lo])]
        lost, resets = trackers[int(kid[lo])].observe_many(key, seqs[lo:hi], counts[lo:hi], exacts[lo:hi])
        if lost:
            result.sequence_lost[key[0]] += lost
        if resets:
            result.sequence_resets[key[0]] += resets


def _fused(g: Group) -> FusedPlan:
    """The group's plan remapped into the batch's columns (made once per compiled template)."""
    compiled = g.compiled
    if compiled is None:
        return _V5
    plan = cast(kernel.Plan, compiled.plan)
    if plan.fused is None:
        columns = [(ref.name, column) for column, (ref, kind) in compiled.columns.items()
                   if kind not in ("ipv4", "ipv6")]
        fused = plan.fused = FusedPlan(plan, columns)
        fused.times = _time_spec(fused, compiled)
        fused.rate_in_record = bool(_RATE_IES & compiled.refs.keys())
    return cast(FusedPlan, plan.fused)


def _decode_group(g: Group, ctx: np.ndarray, dom: DomainTables, n: int, result: DecodeResult,
                  batch_buf: bytes | memoryview, out: Output, fused: FusedPlan, lo: int) -> None:
    """Write the ``flows`` columns of one group's ``n`` records into rows ``lo:lo + n`` of ``out``."""
    hi = lo + n
    out.zero_absent(fused, lo, hi)
    if g.compiled is not None and not g.compiled.fixed:
        counts, set_ctx = np.asarray(g.counts, dtype=np.int64), np.asarray(g.ctx, dtype=np.int64)
        where, reclen = np.asarray(g.where, dtype=np.int64), 0
        starts = cast(np.ndarray, g.starts)
        kernel.gather_into(fused.plan, out.U, out.A, lo, cast(bytes, g.chunks[0]), _ZERO, np.array([n]), 0, starts)
        first = np.ascontiguousarray(starts[:, 0])
    else:
        source, offsets, counts, set_ctx, where = _sets(g, batch_buf)
        reclen = netflow5.RECORD_LEN if g.compiled is None else g.compiled.reclen
        kernel.gather_into(fused.plan, out.U, out.A, lo, source, offsets, counts, reclen, _NO_SEGMENTS)
        first = _NO_STARTS
    view = out.view(fused, lo, hi)
    per_set = ctx[set_ctx]  # datagram values, one row per data set
    set_slot = np.ascontiguousarray(per_set[:, 0])
    record_context(set_slot, np.ascontiguousarray(per_set[:, 1]), np.ascontiguousarray(per_set[:, CTX_DIGEST]),
                   where, counts, reclen, first, dom.addr_words, dom.domain, dom.version, lo,
                   out.column("time_received"), out.A[A_ROWS["exporter"]], out.column("observation_domain"),
                   out.column("version"), out.column("datagram"), out.column("datagram_offset"))

    export_set, uptime_set = np.ascontiguousarray(per_set[:, 2]), np.ascontiguousarray(per_set[:, 3])
    compiled = g.compiled
    times = fused.times
    # IPFIX sets of a template shared with v9: their sysUptime times count from systemInitTime (numpy)
    if times is not None and kernel.T_UPTIME in (times[0, 0], times[1, 0]) and (uptime_set < 0).any():
        times = None
    per_set_rate = compiled is None or not fused.rate_in_record
    if per_set_rate:  # the announced rate is one per set: resolved per set, applied in the compiled pass
        announced_set = per_set[:, 4].astype(np.uint64) if compiled is None else dom.domain_rate[set_slot]
        rate = resolve(announced_set, dom.policy_rate[set_slot], dom.override[set_slot])
    kernel.fill_records(counts, export_set, uptime_set, rate if per_set_rate else _NO_RATE,
                        _NO_TIMES if times is None else times, out.U[4], out.U[8], lo, out.column("flow_start"),
                        out.column("flow_end"), out.column("sampling_rate"), out.column("raw_bytes"),
                        out.column("raw_packets"), out.column("bytes"), out.column("packets"))
    if compiled is not None and (times is None or not per_set_rate):
        _per_record(compiled, view, out, lo, hi, counts, set_slot, export_set, uptime_set, dom, times is None,
                    not per_set_rate)
    if compiled is not None and {compiled.start_ie, compiled.end_ie} & {21, 22} \
            and ies.SYSTEM_INIT_TIME not in compiled.refs:
        _count_missing_init_time(set_slot, counts, dom, result)
    per_slot = np.bincount(set_slot, weights=counts, minlength=len(dom.version))
    for s in np.nonzero(per_slot)[0]:
        st, version, _ = dom.info[s]
        result.records[(st.name, version)] += int(per_slot[s])


def _per_record(compiled: Compiled, view: kernel.Gathered, out: Output, lo: int, hi: int, counts: np.ndarray,
                set_slot: np.ndarray, export_set: np.ndarray, uptime_set: np.ndarray, dom: DomainTables,
                times: bool, rates: bool) -> None:
    """The times (NTP, delta and IPFIX sysUptime forms) and rates (in the records, or keyed by sampler) that the
    compiled pass does not make, with numpy over the group's records."""

    def expand(values: np.ndarray) -> np.ndarray:
        """Per-set values to per-record values: a 0-d scalar when they are all equal (the common case)."""
        return cast(np.ndarray, values[0]) if (values == values[0]).all() else np.repeat(values, counts)

    slot = expand(set_slot)
    if times:
        export_ms, uptime = expand(export_set), expand(uptime_set)
        flow_start, flow_end = out.column("flow_start"), out.column("flow_end")
        init = dom.init_ms[slot]
        if compiled.start_ie is not None or compiled.end_ie is None:
            flow_start[lo:hi] = templated.time_column(view, compiled, compiled.start_ie, export_ms, uptime, init)
        if compiled.end_ie is None:
            flow_end[lo:hi] = flow_start[lo:hi]
        else:
            flow_end[lo:hi] = templated.time_column(view, compiled, compiled.end_ie, export_ms, uptime, init)
            if compiled.start_ie is None:
                flow_start[lo:hi] = flow_end[lo:hi]
    if rates:
        rate = resolve(_announced_rates(compiled, view, slot, dom, hi - lo), dom.policy_rate[slot],
                       dom.override[slot])
        out.column("sampling_rate")[lo:hi] = rate
        raw_bytes, raw_packets = out.column("raw_bytes")[lo:hi], out.column("raw_packets")[lo:hi]
        if np.ndim(rate) == 0 and rate == 1:  # unsampled: no multiply
            out.column("bytes")[lo:hi] = raw_bytes
            out.column("packets")[lo:hi] = raw_packets
        else:
            np.multiply(raw_bytes, rate, out=out.column("bytes")[lo:hi])
            np.multiply(raw_packets, rate, out=out.column("packets")[lo:hi])


_TIME_MODES = {None: kernel.T_NONE, 21: kernel.T_UPTIME, 22: kernel.T_UPTIME, 152: kernel.T_MS, 153: kernel.T_MS,
               323: kernel.T_MS, 150: kernel.T_S, 151: kernel.T_S}
"""Time elements the compiled pass converts (others: :func:`decoders.netflow.templated.time_column`)."""
_RATE_IES = frozenset({*ies.RATE_IES, ies.SAMPLER_ID, ies.SELECTOR_ID})
_NO_RATE = np.zeros(0, dtype=np.uint32)
_NO_TIMES = np.zeros((0, 3), dtype=np.int64)


def _time_spec(fused: FusedPlan, compiled: Compiled) -> np.ndarray | None:
    """(mode, width, row) of the start and end times for :func:`decoders.netflow.kernel.fill_records`, or None."""
    start, end = compiled.start_ie, compiled.end_ie
    if start not in _TIME_MODES or end not in _TIME_MODES:
        return None
    start, end = (end, end) if start is None else (start, start) if end is None else (start, end)
    rows = []
    for ie in (start, end):
        width, row = fused.plan.u_rows[compiled.refs[ie].name] if ie is not None else (8, 0)
        rows.append((_TIME_MODES[ie], width, row))
    return np.array(rows, dtype=np.int64)


_V5 = FusedPlan(netflow5.PLAN, netflow5.COLUMNS)
_V5.times = np.array([(kernel.T_UPTIME, *_V5.plan.u_rows[name]) for name in ("first", "last")], dtype=np.int64)


def _count_missing_init_time(set_slot: np.ndarray, counts: np.ndarray, dom: DomainTables,
                             result: DecodeResult) -> None:
    """IPFIX records with sysUptime times but no systemInitTimeMilliseconds known: their times are the export
    time (the best guess left); counted per record so the operator can enable the exporter's options export."""
    missing = (dom.version[set_slot] == 10) & (dom.init_ms[set_slot] < 0)
    if missing.any():
        per_slot = np.bincount(set_slot[missing], weights=counts[missing], minlength=len(dom.version))
        for s in np.nonzero(per_slot)[0]:
            result.errors[(dom.info[s][0].name, "missing_init_time")] += int(per_slot[s])


def _announced_rates(compiled: Compiled, view: kernel.Gathered, slot: np.ndarray, dom: DomainTables,
                     n: int) -> np.ndarray:
    """Per record: rate in the record, else its sampler's options rate, else the domain's; 0 = none.

    ``slot`` is per record, or a 0-d scalar when every record comes from one (exporter, domain).
    """
    refs = compiled.refs
    in_record = rate_from_columns(lambda ie: view.uint(refs[ie].name) if ie in refs else None, n)
    announced: np.ndarray = dom.domain_rate[slot]
    key_ie = ies.SAMPLER_ID if ies.SAMPLER_ID in refs else ies.SELECTOR_ID if ies.SELECTOR_ID in refs else None
    if key_ie is not None:
        ids = view.uint(refs[key_ie].name)
        if np.ndim(slot) == 0:
            st, _, domain = dom.info[int(slot)]
            keyed = st.samplers.keyed_rates(domain, key_ie, ids)
        else:
            keyed = np.zeros(n, dtype=np.uint64)
            for s in np.unique(slot):
                rows = slot == s
                st, _, domain = dom.info[s]
                keyed[rows] = st.samplers.keyed_rates(domain, key_ie, ids[rows])
        announced = np.where(keyed > 0, keyed, announced)
    if in_record is not None:
        announced = np.where(in_record > 0, in_record, announced)
    return announced


def _sets(g: Group, buf: bytes | memoryview
          ) -> tuple[bytes | memoryview, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where the records of a fixed-length group (or v5) are: (buffer, offset, records, context and where its
    records start in its datagram, per set).

    The records of blocks are still in the batch buffer, behind their datagram's headers; sets parsed one by one
    (``g.chunks`` that are not blocks: record bytes only) are appended to the buffer first.
    """
    offsets: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    ctxs: list[np.ndarray] = []
    wheres: list[np.ndarray] = []
    extra: list[bytes | memoryview] = []
    base = buf if g.blocks else b""
    end = len(base)
    for chunk, n, c, w in zip(g.chunks, g.counts, g.ctx, g.where, strict=True):
        if isinstance(chunk, Block):
            offsets.append(chunk.offsets)
            counts.append(chunk.counts)
            ctxs.append(chunk.ctx)
            wheres.append(chunk.where)
        else:
            extra.append(chunk)
            offsets.append(np.array([end], dtype=np.int64))
            counts.append(np.array([n], dtype=np.int64))
            ctxs.append(np.array([c], dtype=np.int64))
            wheres.append(np.array([w], dtype=np.int64))
            end += len(chunk)
    offset, count, ctx, where = (x[0] if len(x) == 1 else np.concatenate(x) for x in (offsets, counts, ctxs, wheres))
    source = b"".join([base, *extra]) if extra else base
    return source, offset, count, ctx, where
