"""Saving and loading the decoder's state over a restart (the records are :mod:`decoders.netflow.saved_state`).

Three ways out and one way in: :func:`save_state` (the whole state, for tools and tests), :func:`state_changes`
(what changed since the last call: the daemon's incremental save, cheap enough for the event loop; the records are
made on the writer's thread by :meth:`StateChanges.records`) and :func:`load_state` (a state file or a log of
changes, or the JSON of flowmed before the binary format). Every limit and budget applies to what is loaded, as to
templates received.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

from decoders.errors import SavedStateError
from decoders.netflow import saved_state as saved
from decoders.netflow import templated
from decoders.netflow.pending import HeldSet
from decoders.netflow.state import DecoderState, ExporterState
from decoders.netflow.template_store import TemplateEntry, TemplateKey
from decoders.netflow.templated import RawTemplate
from decoders.netflow.templates import Template, spec_of
from decoders.sampling import SamplerKey

STATE_VERSION = 1
"""The JSON state format of flowmed before :mod:`decoders.netflow.saved_state` (still read)."""

ExporterMeta = tuple[int, dict[int, int], dict[tuple[int, SamplerKey], int]]
"""An exporter's saved values: last seen (ms), system init times per domain, sampling rates."""


def _exporter_meta(st: ExporterState) -> ExporterMeta:
    """An exporter's saved values (copies: the writer's thread encodes them later)."""
    return st.last_seen_ms, dict(st.init_ms), dict(st.samplers.rates)


def _held_record(h: HeldSet) -> bytes:
    return saved.held_record(*h.key, h.received_ms, h.export_ms, h.uptime_ms, h.body)


@dataclass
class StateChanges:
    """What :func:`state_changes` collected; :meth:`records` encodes it on any thread."""

    items: list[tuple[saved.Key, TemplateEntry | ExporterMeta | None]]
    """Changed keys: a template entry, an exporter's saved values, or None when the key is gone."""
    full: list[tuple[str, ExporterMeta, dict[TemplateKey, TemplateEntry]]] | None
    """Instead of ``items``, the whole state (exporter, saved values, templates): the save rewrites everything."""
    held: list[HeldSet] | None
    """Every data set held for a template, when they changed since the last save (else None)."""

    def records(self) -> list[tuple[saved.Key, bytes | None]]:
        """(key, record), or (key, None) for a key deleted; see :mod:`decoders.netflow.saved_state`."""
        out: list[tuple[saved.Key, bytes | None]] = []
        if self.full is not None:
            for name, meta, templates in self.full:
                out.append((("e", name), saved.exporter_record(name, *meta)))
                out += [(("t", name, *k), e.record(name, k)) for k, e in templates.items()]
            return out
        for key, value in self.items:
            if value is None:
                out.append((key, None))
            elif isinstance(value, TemplateEntry):
                out.append((key, value.record(key[1], saved.template_key(key))))
            else:
                out.append((key, saved.exporter_record(key[1], *value)))
        return out

    def held_file(self) -> bytes | None:
        """The held data sets as a whole state file, when they changed."""
        if self.held is None:
            return None
        return saved.MAGIC + b"".join(_held_record(h) for h in self.held)


def save_state(state: DecoderState) -> bytes:
    """Everything worth keeping over a restart, as one state file: templates, sampling rates, system init times
    and data held for a template."""
    parts = [saved.MAGIC]
    for name, st in state.exporters.items():
        parts.append(saved.exporter_record(name, st.last_seen_ms, st.init_ms, st.samplers.rates))
        parts += [e.record(name, key) for key, e in st.templates.items()]
    parts += [_held_record(h) for h in state.pending.held()]
    return b"".join(parts)


def state_changes(state: DecoderState) -> StateChanges:
    """What changed since the last call, for an incremental save.

    Costs one step per changed key (plus one per exporter): it collects references to the changed templates
    (entries are never modified in place, so another thread may encode them) and copies of the small per-exporter
    tables.
    """
    exporters = state.exporters
    slack = state.limits.exporter_idle_ms // 8  # last seen is saved coarsely: it only matters for idle expiry
    for name, st in exporters.items():
        if st.last_seen_ms - st.saved_seen_ms > slack:
            state.mark(("e", name))
    full: list[tuple[str, ExporterMeta, dict[TemplateKey, TemplateEntry]]] | None = None
    items: list[tuple[saved.Key, TemplateEntry | ExporterMeta | None]] = []
    if state.resync:
        full = [(name, _exporter_meta(st), dict(st.templates)) for name, st in exporters.items()]
        for st in exporters.values():
            st.saved_seen_ms = st.last_seen_ms
            for e in st.templates.values():
                e.saved_seen_ms = e.last_seen_ms
    else:
        for key in state.dirty:
            found = exporters.get(key[1])
            if key[0] == "t":
                entry = None if found is None else found.templates.get(saved.template_key(key))
                if entry is not None:
                    entry.saved_seen_ms = entry.last_seen_ms
                items.append((key, entry))
            else:
                if found is not None:
                    found.saved_seen_ms = found.last_seen_ms
                items.append((key, None if found is None else _exporter_meta(found)))
    state.dirty = set()
    state.resync = False
    held = None
    if state.pending.version != state.held_version:
        state.held_version = state.pending.version
        held = state.pending.held()
    return StateChanges(items, full, held)


def load_state(state: DecoderState, data: bytes, *, mark: bool = False) -> int:
    """Restore a state file (:func:`save_state`, or a log of :func:`state_changes`; the JSON of flowmed before
    it is read too). Every limit and budget applies, as to templates received.

    Loading compiles nothing (templates are compiled at their first data) and parses no field, so it costs a few
    microseconds per record. ``mark``: the loaded state is to be saved again by the next incremental save (it came
    from another file); templates refused are always marked, so the saved state forgets them. Returns the
    templates refused; raises :class:`decoders.errors.SavedStateError` when ``data`` is not decoder state.
    """
    if data[:1] == b"{":
        return _load_json(state, data)
    refused = 0
    for kind, payload, _ in saved.records(data)[0]:
        item = saved.decode(kind, payload)
        if isinstance(item, saved.TemplateRecord):
            refused += not _load_template(state, item, mark)
        elif isinstance(item, saved.ExporterRecord):
            st = state.exporter_state(item.exporter, None)
            if st is None:
                continue
            st.last_seen_ms = max(st.last_seen_ms, item.last_seen_ms)
            if not mark:
                st.saved_seen_ms = st.last_seen_ms
            for (d, k), rate in item.rates.items():
                st.samplers.set(d, k, rate)
            for d, ms in item.init_ms.items():
                if d in st.init_ms or len(st.init_ms) < state.limits.max_samplers_per_exporter:
                    st.init_ms[d] = ms
            if mark:
                state.mark(("e", item.exporter))
        elif isinstance(item, saved.HeldRecord):
            if item.exporter in state.exporters:
                state.pending.add(HeldSet((item.exporter, item.version, item.domain, item.template_id),
                                          item.body, item.received_ms, item.export_ms, item.uptime_ms))
        elif item[0] == "t":
            found = state.exporters.get(item[1])
            if found is not None:
                state.drop_template(found, saved.template_key(item))
        elif item[1] in state.exporters:
            state.forget(item[1])
    return refused


def _load_template(state: DecoderState, rec: saved.TemplateRecord, mark: bool) -> bool:
    key: saved.Key = ("t", rec.exporter, rec.version, rec.domain, rec.template_id)
    st = state.exporter_state(rec.exporter, None)
    scanned = None
    if rec.count <= state.limits.max_template_fields and rec.template_id >= 256 and rec.version in (9, 10):
        scanned = templated.scan_specs(rec.spec, 0, len(rec.spec), rec.count, rec.ipfix)
    if st is None or scanned != len(rec.spec):
        state.mark(key)
        return False
    raw = RawTemplate(rec.template_id, rec.spec, rec.count, rec.scope, rec.options, rec.ipfix)
    ok = raw.problem() is None and state.admit(st, (rec.version, rec.domain, rec.template_id), raw,
                                               rec.last_seen_ms, None)
    if mark or not ok:
        state.mark(key)
    return ok


def _load_json(state: DecoderState, data: bytes) -> int:
    """The JSON state of flowmed before the binary format (everything loaded is saved again, in the new one)."""
    try:
        doc = json.loads(data)
        if doc.get("version") != STATE_VERSION:
            raise SavedStateError(f"unsupported decoder state version {doc.get('version')!r}")
        buf = [saved.MAGIC]
        for name, s in doc["exporters"].items():
            rates: dict[tuple[int, SamplerKey], int] = {}
            for d, k, r in s["samplers"]:
                rates[(int(d), (int(k[0]), int(k[1])) if k else None)] = int(r)
            buf.append(saved.exporter_record(str(name), int(s.get("last_seen_ms", 0)),
                                             {int(d): int(ms) for d, ms in s["init_ms"]}, rates))
            for v, d, seen, tj in s["templates"]:
                t = Template.from_json(tj)
                v9_scope = sum(1 for f in t.fields if f.enterprise < 0)
                ipfix = int(v) == 10
                if v9_scope and ipfix:
                    raise SavedStateError("v9 scope fields in an IPFIX template")
                buf.append(saved.template_record(
                    str(name), int(v), int(d), t.template_id, options=t.options, ipfix=ipfix,
                    scope=t.scope_count if ipfix else v9_scope, count=len(t.fields), last_seen_ms=int(seen),
                    spec=spec_of(t.fields, ipfix=ipfix)))
        for exporter, v, d, tid, received, export, uptime, body in doc.get("pending", []):
            buf.append(saved.held_record(str(exporter), int(v), int(d), int(tid), int(received), int(export),
                                         int(uptime), base64.b64decode(body)))
    except SavedStateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, struct.error) as e:
        raise SavedStateError(f"unreadable decoder state: {e}") from e
    return load_state(state, b"".join(buf), mark=True)
