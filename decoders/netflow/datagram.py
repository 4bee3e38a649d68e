"""Per-datagram parsing: one NetFlow v5, v9 or IPFIX datagram into the groups of a :class:`Batch`.

A Python loop over datagrams and their sets, never over records: parse the header, learn or withdraw templates
(:meth:`decoders.netflow.state.DecoderState.learn`), apply options data (sampling rates, system init time), hold
data sets whose template is unknown (:mod:`decoders.netflow.pending`) and replay them when it comes, note the
sequence number, and append each data set's bytes to the group of its compiled template. This is the reference
path: every datagram shape goes through it, and the fast path (:mod:`decoders.netflow.fast_path`) must give the
same result. Errors are counted per (exporter, reason) and cost only the set (or datagram header) they are in.
"""

from __future__ import annotations

import struct
from typing import cast

import numpy as np

from decoders.digest import digest_bytes
from decoders.errors import (
    BadRecord,
    BadSetLength,
    DecodeError,
    EmptySet,
    LengthMismatch,
    ReservedSetId,
    Truncated,
    UnsupportedVersion,
)
from decoders.netflow import fields as ies
from decoders.netflow import kernel, templated
from decoders.netflow import v5 as netflow5
from decoders.netflow.batch import Batch, Group, VarSets
from decoders.netflow.pending import HeldSet
from decoders.netflow.state import DecoderState, ExporterState, count_dropped_held
from decoders.netflow.templated import RawTemplate, Withdrawal
from decoders.netflow.templates import Compiled, walk_variable
from decoders.sampling import SamplerKey, rate_from_values

_SET = struct.Struct(">HH")
_HELD_SALT = 0x48454C44 << 16
"""Salt of the identity of a held data set replayed on its own (see :func:`_held_salt`)."""


def _held_salt(template_id: int, export_ms: int, uptime_ms: int) -> int:
    """What a held set's identity covers besides its bytes and exporter: its template id and its datagram's header
    times, so that only the same set of an identical resend has the same identity."""
    return (_HELD_SALT ^ template_id ^ (export_ms << 24) ^ ((uptime_ms & 0xFFFFFFFF) << 29)) & 0xFFFFFFFFFFFFFFFF


def decode_one(state: DecoderState, batch: Batch, payload: bytes, exporter: str, received_ms: int) -> None:
    """Decode one datagram on its own (every shape: the reference path); errors are counted, never raised."""
    try:
        _datagram(state, batch, payload, exporter, received_ms)
    except DecodeError as e:
        batch.result.errors[(exporter, e.reason)] += 1
    except Exception:  # a bug must not take the listener down; counted, and tests assert it never occurs
        batch.result.errors[(exporter, "internal_error")] += 1


def _datagram(state: DecoderState, batch: Batch, payload: bytes, exporter: str, received_ms: int) -> None:
    result = batch.result
    if len(payload) < 2:
        result.datagrams[(exporter, 0)] += 1
        raise Truncated("datagram shorter than a version field", offset=0)
    version = (payload[0] << 8) | payload[1]
    if version not in (5, 9, 10):
        result.datagrams[(exporter, 0)] += 1
        raise UnsupportedVersion(version)
    result.datagrams[(exporter, version)] += 1
    st = state.exporters.get(exporter) or state.exporter_state(exporter, result)
    if st is None:
        return
    st.last_seen_ms = received_ms
    if version == 5:
        _v5(state, batch, st, payload, received_ms)
    else:
        _templated(state, batch, st, payload, version, received_ms)


def _v5(state: DecoderState, batch: Batch, st: ExporterState, payload: bytes, received_ms: int) -> None:
    h = netflow5.V5Header(payload)
    if h.problem is not None:
        batch.result.errors[(st.name, h.problem.reason)] += 1
    if h.count == 0:
        return
    ctx = batch.context(st, 5, h.domain, received_ms, h.export_ms, h.uptime_ms, h.sampling_rate,
                        digest_bytes(payload, st.name))
    g = batch.v5
    g.chunks.append(memoryview(payload)[netflow5.HEADER_LEN:netflow5.HEADER_LEN + h.count * netflow5.RECORD_LEN])
    g.counts.append(h.count)
    g.ctx.append(ctx)
    g.where.append(netflow5.HEADER_LEN)
    batch.sequence.append((state.records_sequences, (st.name, 5, h.domain), h.sequence, h.count, True, None))


def _templated(state: DecoderState, batch: Batch, st: ExporterState, payload: bytes, version: int,
               received_ms: int) -> None:
    """A v9 (RFC 3954 section 5) or IPFIX (RFC 7011 section 3) datagram: its header, then set by set."""
    result = batch.result
    end = len(payload)
    if version == 9:
        if end < 20:
            raise Truncated(f"v9 header needs 20 bytes, got {end}", offset=0)
        _, count, uptime, secs, seq, domain = templated.V9_HEADER.unpack_from(payload)
        pos = 20
    else:
        if end < 16:
            raise Truncated(f"IPFIX header needs 16 bytes, got {end}", offset=0)
        _, length, secs, seq, domain = templated.IPFIX_HEADER.unpack_from(payload)
        uptime = -1
        pos = 16
        if length != end:
            if length < 16:
                raise LengthMismatch(f"IPFIX message length {length} below its header", offset=2)
            result.errors[(st.name, "truncated" if length > end else "length_mismatch")] += 1
            end = min(end, length)
    ctx = batch.context(st, version, domain, received_ms, secs * 1000, uptime, 0, digest_bytes(payload, st.name))
    view = memoryview(payload)
    records, exact = 0, True
    templates, groups = st.templates, batch.groups
    var_sets: VarSets = []
    batch.var_sets = var_sets
    batch.other_records = 0  # template records and errors in sets, for the v9 record count
    batch.options_records = 0
    clean = True
    while end - pos >= 4:
        set_id, set_len = _SET.unpack_from(payload, pos)
        if set_len < 4 or pos + set_len > end:
            result.errors[(st.name, BadSetLength.reason)] += 1
            exact = clean = False
            pos = end  # the rest of the datagram is this one error, not also a "truncated" tail
            break
        entry = templates.get((version, domain, set_id))
        if entry is not None and entry.compiled.fast:
            # Fast path: a data set of a fixed-length flow template; everything else goes through _set.
            compiled = entry.compiled
            n = (set_len - 4) // compiled.reclen
            if n:
                g = groups.get(compiled)
                if g is None:
                    g = groups[compiled] = Group(compiled)
                g.chunks.append(view[pos + 4:pos + 4 + n * compiled.reclen])
                g.counts.append(n)
                g.ctx.append(ctx)
                g.where.append(pos + 4)
                records += n
                pos += set_len
                continue
        try:
            n = _set(state, batch, st, ctx, version, domain, set_id, payload, view, pos + 4, pos + set_len)
            if n < 0:
                exact = clean = False
            else:
                records += n
        except DecodeError as e:
            result.errors[(st.name, e.reason)] += 1
            clean = False
            if isinstance(e, BadRecord):
                exact = False
        pos += set_len
    if pos < end and any(view[pos:end]):
        result.errors[(st.name, Truncated.reason)] += 1
        clean = False
    if version == 9:
        if clean and batch.other_records >= 0:  # else the datagram already counts an error
            batch.v9_counts.append((st.name, count, records + batch.other_records,
                                    records - batch.options_records, var_sets))
        batch.sequence.append((state.sequences, (st.name, 9, domain), seq, 1, True, None))
    else:
        batch.sequence.append((state.records_sequences, (st.name, 10, domain), seq, records, exact,
                               var_sets or None))


def _set(state: DecoderState, batch: Batch, st: ExporterState, ctx: int, version: int, domain: int, set_id: int,
         payload: bytes, view: memoryview, start: int, end: int) -> int:
    """Handle one set; returns the data records it held (-1: unknown, data held for its template)."""
    if set_id >= 256:
        entry = st.templates.get((version, domain, set_id))
        if entry is None:
            _hold(state, batch, st, ctx, version, domain, set_id, payload[start:end])
            return -1
        return _data(state, batch, st, entry.compiled, ctx, domain, view, start, end)
    ipfix = version == 10
    if set_id == (templated.IPFIX_TEMPLATE_SET if ipfix else templated.V9_TEMPLATE_SET):
        options = False
    elif set_id == (templated.IPFIX_OPTIONS_SET if ipfix else templated.V9_OPTIONS_SET):
        options = True
    else:
        raise ReservedSetId(f"set id {set_id} is reserved", offset=start - 4)
    if start == end:
        raise EmptySet(f"empty template set {set_id}", offset=start - 4)
    for item in templated.parse_template_set(payload, start, end, ipfix=ipfix, options=options,
                                             max_fields=state.limits.max_template_fields):
        if isinstance(item, DecodeError):
            batch.result.errors[(st.name, item.reason)] += 1
            batch.other_records = -1 << 30  # no record count check for this datagram
        elif isinstance(item, Withdrawal):
            batch.other_records += 1
            state.withdraw(st, version, domain, item)
        else:
            batch.other_records += 1
            _learn(state, batch, st, version, domain, item, batch.context_row(ctx)[1])
    return 0


def _data(state: DecoderState, batch: Batch, st: ExporterState, compiled: Compiled, ctx: int, domain: int,
          view: memoryview, start: int, end: int) -> int:
    """A data set of a known template: appended to its group, or applied (options data); returns its records."""
    chunk: bytes | memoryview
    if start == end:
        raise EmptySet("data set with no record", offset=start - 4)
    if compiled.fixed:
        n = (end - start) // compiled.reclen
        if n == 0:
            raise EmptySet("data set shorter than one record (padding only)", offset=start - 4)
        chunk = view[start:start + n * compiled.reclen]
        starts = None
    elif not compiled.options:
        # Variable-length flow records: found later for all such sets of the batch at once (walk_sets).
        if end - start < compiled.reclen:
            raise EmptySet("data set shorter than one record (padding only)", offset=start - 4)
        g = batch.group(compiled)
        g.chunks.append(bytes(view[start:end]))
        g.counts.append(0)
        g.ctx.append(ctx)
        g.where.append(start)
        batch.var_sets.append((g, len(g.counts) - 1))
        return 0
    else:
        chunk = bytes(view[start:end])
        offsets: list[int] = []
        n, broken = walk_variable(compiled, chunk, 0, len(chunk), offsets)
        if broken:
            batch.result.errors[(st.name, BadRecord.reason)] += 1
        if n == 0:
            if broken:
                return 0
            raise EmptySet("data set shorter than one record (padding only)", offset=start - 4)
        starts = np.asarray(offsets, dtype=np.int64).reshape(n, len(compiled.segments))
    if compiled.options:
        _options(state, batch, st, compiled, domain, chunk, n, starts)
        batch.options_records += n
        return n
    g = batch.group(compiled)
    g.chunks.append(chunk)
    g.counts.append(n)
    g.ctx.append(ctx)
    g.where.append(start)
    return n


def _options(state: DecoderState, batch: Batch, st: ExporterState, compiled: Compiled, domain: int,
             chunk: bytes | memoryview, n: int, starts: np.ndarray | None) -> None:
    """Options data: remember sampling rates (per sampler/selector id) and system init time."""
    plan = cast(kernel.Plan, compiled.plan)
    if starts is None:
        view = kernel.read_sets(plan, chunk, np.zeros(1, dtype=np.int64), np.array([n], dtype=np.int64),
                                compiled.reclen)
    else:
        view = kernel.read_records(plan, chunk, starts)
    max_entries = state.limits.max_samplers_per_exporter
    for values in templated.options_values(compiled, view):
        rate = rate_from_values(values.get)
        if rate:
            key: SamplerKey
            if ies.SAMPLER_ID in values:
                key = (ies.SAMPLER_ID, values[ies.SAMPLER_ID])
            elif ies.SELECTOR_ID in values:
                key = (ies.SELECTOR_ID, values[ies.SELECTOR_ID])
            else:
                key = None
            if st.samplers.rates.get((domain, key)) != rate:
                state.mark(("e", st.name))
            if not st.samplers.set(domain, key, rate):
                batch.result.limit_hits[(st.name, "max_samplers_per_exporter")] += 1
        init = values.get(ies.SYSTEM_INIT_TIME)
        if init and (domain in st.init_ms or len(st.init_ms) < max_entries):
            if st.init_ms.get(domain) != init:
                state.mark(("e", st.name))
            st.init_ms[domain] = init


def _hold(state: DecoderState, batch: Batch, st: ExporterState, ctx: int, version: int, domain: int,
          template_id: int, body: bytes) -> None:
    """Hold a data set until its template comes (RFC 3954 section 9)."""
    if not body:
        raise EmptySet("data set with no record", offset=None)
    _, received_ms, export_ms, uptime_ms, _, _ = batch.context_row(ctx)
    held = HeldSet((st.name, version, domain, template_id), bytes(body), received_ms, export_ms, uptime_ms)
    batch.result.pending_held[st.name] += 1
    dropped = state.pending.add(held)
    if dropped:
        for h in dropped:
            batch.result.limit_hits[(h.key[0], "pending_max_bytes")] += 1
        count_dropped_held(batch.result, dropped, "pending_overflow")


def _learn(state: DecoderState, batch: Batch, st: ExporterState, version: int, domain: int, raw: RawTemplate,
           now_ms: int) -> None:
    """A template received: learn it, then decode the data held for it."""
    key = (version, domain, raw.template_id)
    if not state.learn(st, key, raw, now_ms, batch.result):
        return
    held_key = (st.name, version, domain, raw.template_id)
    if state.pending.has(held_key):
        compiled = st.templates[key].compiled
        current, batch.var_sets = batch.var_sets, []  # replayed sets are not the current datagram's records
        for held in state.pending.take(held_key):
            # its own identity: the rest of its datagram was decoded (and de-duplicated) when it came
            salt = _held_salt(raw.template_id, held.export_ms, held.uptime_ms)
            ctx = batch.context(st, version, domain, held.received_ms, held.export_ms, held.uptime_ms, 0,
                                digest_bytes(held.body, st.name, salt))
            batch.result.pending_replayed[st.name] += 1
            try:
                _data(state, batch, st, compiled, ctx, domain, memoryview(held.body), 0, len(held.body))
            except DecodeError as e:
                batch.result.errors[(st.name, e.reason)] += 1
        batch.var_sets = current
