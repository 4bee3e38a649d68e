"""``FlowDecoder``: NetFlow v5, v9 and IPFIX datagrams in, ``flows`` columns and counters out (sans-I/O).

Theory of operation. :meth:`FlowDecoder.decode` takes a batch of datagrams and works in two passes:

0. **Per batch**, first: the headers and first set headers of all datagrams are parsed at once with numpy
   (:func:`decoders.netflow.templated.scan_single_sets`). Runs of datagrams that are exactly one data set of a known
   fixed-length flow template (almost all data datagrams) are taken as blocks, with no Python step per datagram:
   their records stay in the joined batch buffer and join their template's group, their sequence numbers are
   checked per key with numpy. Every other datagram takes pass 1 at its place in the batch, so the result is
   exactly that of decoding the datagrams one by one.
1. **Per datagram** (a Python loop over datagrams and their sets, never over records): parse the header, learn or
   withdraw templates, apply options data (sampling rates, system init time), hold data sets whose template is
   unknown (:mod:`decoders.netflow.pending`), note the sequence number, and append each data set's bytes to the *group*
   of its compiled template. Identical templates of different exporters share one compiled template, so they
   share a group.
2. **Per group**: variable-length groups first find their records, all sets at once
   (:func:`decoders.netflow.templates.walk_sets`); then sequence numbers are accounted in datagram order (record counts
   are now known). Each group's record bytes are joined and decoded with one ``np.frombuffer`` (fixed-length
   templates) or one gather per fixed segment (variable-length ones); times are computed, the sampling rate
   resolved, and the columns of all groups concatenated into the result.

Errors are counted per (exporter, reason) and cost only the set (or datagram header) they are in; ``decode``
never raises for bad input. All state an exporter can grow is bounded by :class:`DecoderLimits`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from decoders.errors import (
    BadRecord,
    BadSetLength,
    DecodeError,
    EmptySet,
    LengthMismatch,
    ReservedSetId,
    SavedStateError,
    Truncated,
    UnsupportedVersion,
)
from decoders.netflow import fields as ies
from decoders.netflow import saved_state as saved
from decoders.netflow import templated
from decoders.netflow import v5 as netflow5
from decoders.netflow.pending import HeldSet, PendingStore
from decoders.netflow.templated import RawTemplate, Withdrawal
from decoders.netflow.templates import (
    Compiled,
    FixedView,
    Template,
    compile_spec,
    spec_of,
    template_cost,
    walk_sets,
    walk_variable,
)
from decoders.sampling import SamplerTable, SamplingPolicy, rate_from_columns, rate_from_values, resolve
from decoders.schema import FLOWS
from decoders.sequence import SequenceTracker

__all__ = ["DecodeResult", "DecoderLimits", "FlowDecoder", "SamplingPolicy", "StateChanges"]

STATE_VERSION = 1
"""The JSON state format of flowmed before :mod:`decoders.netflow.saved_state` (still read)."""
DIRTY_MAX = 1 << 18
"""Changed state keys remembered between saves; beyond, the next save rewrites the whole state."""
FAST_MIN_RUN = 4
"""Consecutive single-set datagrams of known fixed-length templates taken as a block; fewer go one by one."""
_SET = struct.Struct(">HH")
_COLUMNS = [c for c in FLOWS.columns if c.name != "batch_id"]


@dataclass(frozen=True)
class DecoderLimits:
    """Bounds on everything an exporter (or an attacker spoofing exporters) can make the decoder hold."""

    max_exporters: int = 4096
    """Exporters tracked at once; datagrams from further ones are counted (``limit_hits``) and dropped."""
    max_templates_per_exporter: int = 1024
    """Templates per exporter, over all its domains; further templates are refused and counted."""
    template_max_bytes_per_exporter: int = 4 << 20
    """Memory the templates of one exporter may cost (:func:`decoders.netflow.templates.template_cost`, known from the
    template's header and field specifiers before anything is compiled); a template beyond it is refused."""
    template_max_bytes: int = 256 << 20
    """Memory the templates of all exporters together may cost; a template beyond it is refused."""
    max_template_fields: int = 512
    """A template with more fields is refused (``template_too_many_fields``)."""
    pending_max_bytes: int = 8 * 1024 * 1024
    """Data held for a missing template, in total; the oldest is dropped beyond."""
    pending_max_age_ms: int = 120_000
    """Held data older than this is dropped."""
    template_timeout_ms: int = 0
    """Templates not refreshed for this long are forgotten by :meth:`FlowDecoder.expire` (0 = never)."""
    max_samplers_per_exporter: int = 1024
    """Sampling rates (per domain and sampler id) remembered per exporter."""
    exporter_idle_ms: int = 7 * 86_400_000
    """An exporter silent for this long is forgotten by :meth:`FlowDecoder.expire`, with its templates."""


@dataclass
class DecodeResult:
    """What one :meth:`FlowDecoder.decode` call produced. Counters are per exporter (address as given)."""

    flows: dict[str, np.ndarray]
    n_flows: int = 0
    datagrams: Counter = field(default_factory=Counter)
    """(exporter, version) -> datagrams; version 5, 9, 10, or 0 when unknown."""
    records: Counter = field(default_factory=Counter)
    """(exporter, version) -> flow records decoded (options records are not flows)."""
    errors: Counter = field(default_factory=Counter)
    """(exporter, reason) -> count; see :mod:`decoders.errors` for reasons."""
    sequence_lost: Counter = field(default_factory=Counter)
    """exporter -> lost units (v9: datagrams; v5 and IPFIX: records)."""
    sequence_resets: Counter = field(default_factory=Counter)
    """exporter -> sequence restarts detected (exporter reboot or renumbering)."""
    limit_hits: Counter = field(default_factory=Counter)
    """(exporter, limit name) -> times a bound in :class:`DecoderLimits` refused something."""
    templates_learned: Counter = field(default_factory=Counter)
    """exporter -> templates added or changed (a refresh of an identical template is not counted)."""
    pending_held: Counter = field(default_factory=Counter)
    """exporter -> data sets held for a missing template."""
    pending_replayed: Counter = field(default_factory=Counter)
    """exporter -> held data sets decoded once their template arrived."""
    pending_dropped: Counter = field(default_factory=Counter)
    """exporter -> held data sets dropped (too old or over the byte bound); also in ``errors``."""


class _TemplateEntry:
    """A template an exporter sent: its wire field specifiers, compiled at its first data set (not before: a
    template that never gets data costs no compiling, and loading saved state compiles nothing).

    Never changed once made, but for ``last_seen_ms`` and the compiled form: the state writer reads entries from
    another thread.
    """

    __slots__ = ("spec", "count", "scope", "options", "ipfix", "zero", "cost", "last_seen_ms", "saved_seen_ms",
                 "_compiled")

    def __init__(self, raw: RawTemplate, cost: int, last_seen_ms: int) -> None:
        self.spec = raw.spec
        self.count = raw.count
        self.scope = raw.scope
        self.options = raw.options
        self.ipfix = raw.ipfix
        self.zero = raw.zero
        self.cost = cost
        self.last_seen_ms = last_seen_ms
        self.saved_seen_ms = last_seen_ms
        self._compiled: Compiled | None = None

    @property
    def compiled(self) -> Compiled:
        c = self._compiled
        if c is None:
            c = self._compiled = compile_spec(self.spec, ipfix=self.ipfix, options=self.options,
                                              v9_scope=self.scope if self.options and not self.ipfix else 0)
        return c

    def same(self, raw: RawTemplate) -> bool:
        """Whether ``raw`` is a refresh of this template (same fields, scope and kind)."""
        return raw.spec == self.spec and raw.scope == self.scope and raw.options == self.options

    def record(self, exporter: str, key: tuple[int, int, int]) -> bytes:
        """This template as a state record (see :mod:`decoders.netflow.saved_state`)."""
        return saved.template_record(exporter, *key, options=self.options, ipfix=self.ipfix, scope=self.scope,
                                     count=self.count, last_seen_ms=self.last_seen_ms, spec=self.spec)


class _Exporter:
    """Everything known about one exporter address."""

    __slots__ = ("name", "addr16", "templates", "samplers", "init_ms", "policy", "last_seen_ms", "template_bytes",
                 "saved_seen_ms")

    def __init__(self, name: str, policy: tuple[int, bool], max_samplers: int) -> None:
        self.name = name
        self.addr16 = _addr16(name)
        self.templates: dict[tuple[int, int, int], _TemplateEntry] = {}  # (version, domain, template id)
        self.samplers = SamplerTable(max_samplers)
        self.init_ms: dict[int, int] = {}  # IPFIX systemInitTimeMilliseconds per domain (from options data)
        self.policy = policy
        self.last_seen_ms = 0
        self.template_bytes = 0
        """What its templates cost (:func:`decoders.netflow.templates.template_cost`), within the template budgets."""
        self.saved_seen_ms = 0


def _exporter_meta(st: _Exporter) -> tuple[int, dict[int, int], dict]:
    """An exporter's saved values (copies: the writer's thread encodes them later)."""
    return st.last_seen_ms, dict(st.init_ms), dict(st.samplers.rates)


def _held_record(h: HeldSet) -> bytes:
    return saved.held_record(*h.key, h.received_ms, h.export_ms, h.uptime_ms, h.body)


@dataclass
class StateChanges:
    """What :meth:`FlowDecoder.state_changes` collected; :meth:`records` encodes it on any thread."""

    items: list[tuple[saved.Key, object]]
    """Changed keys: a template entry, an exporter's saved values, or None when the key is gone."""
    full: list | None
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
            elif isinstance(value, _TemplateEntry):
                out.append((key, value.record(key[1], key[2:])))
            else:
                out.append((key, saved.exporter_record(key[1], *value)))  # type: ignore[misc]
        return out

    def held_file(self) -> bytes | None:
        """The held data sets as a whole state file, when they changed."""
        if self.held is None:
            return None
        return saved.MAGIC + b"".join(_held_record(h) for h in self.held)


def _addr16(name: str) -> bytes:
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return bytes(16)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


@dataclass(slots=True)
class _Scanned:
    """A batch whose headers were parsed at once (:func:`decoders.netflow.templated.scan_single_sets`)."""

    sets: templated.SingleSets
    received: list
    """received_ms per datagram, as given."""
    received_ms: np.ndarray
    codes: np.ndarray
    """Exporter per datagram, an index into ``names``."""
    names: list[str]
    keys: np.ndarray
    """Template key per datagram: exporter index << 50 | IPFIX << 48 | domain << 16 | set id (uint64)."""


class _Block:
    """Data sets of single-set datagrams decoded without a Python step each: where their records are in the batch
    buffer (:attr:`decoders.netflow.templated.SingleSets.buf`), how many records each holds, and their contexts."""

    __slots__ = ("offsets", "counts", "ctx")

    def __init__(self, offsets: np.ndarray, counts: np.ndarray, ctx: np.ndarray) -> None:
        self.offsets = offsets
        self.counts = counts
        self.ctx = ctx


class _Group:
    """Data sets of one batch that share a compiled template."""

    __slots__ = ("compiled", "chunks", "counts", "ctx", "starts", "blocks")

    def __init__(self, compiled: Compiled | None) -> None:
        self.compiled = compiled
        self.chunks: list = []  # bytes-like sets, or a _Block of many (fixed-length templates only)
        self.counts: list[int] = []  # per chunk; variable-length templates: 0 until walk_sets() has run
        self.ctx: list[int] = []  # per chunk (a _Block: its first datagram's)
        self.starts: np.ndarray | None = None  # variable-length templates: segment offsets per record
        self.blocks = False


class _Batch:
    """Per-call accumulation: groups, datagram contexts, (exporter, version, domain) slots and counters."""

    def __init__(self) -> None:
        self.result = DecodeResult(flows={})
        self.groups: dict[Compiled, _Group] = {}  # compiled templates hash by identity
        self.v5 = _Group(None)
        # One context per datagram (or replayed held set): (domain slot, received_ms, export_ms, uptime_ms, v5 rate).
        # Contexts made one at a time are in ``contexts``; a block of datagrams adds an array to ``ctx_parts``
        # (after the contexts made before it), and ``ctx_base`` counts the contexts in ``ctx_parts``.
        self.contexts: list[tuple[int, int, int, int, int]] = []
        self.ctx_parts: list[np.ndarray] = []
        self.ctx_base = 0
        self.domains: dict[tuple[str, int, int], int] = {}  # (exporter, version, domain) -> slot
        self.domain_info: list[tuple[_Exporter, int, int]] = []
        # Sequence observations, in datagram order, made once variable-length sets are counted:
        # (tracker, key, seq, records known, exact, [(group, set index)] of variable-length sets or None),
        # or for a block of datagrams (None, keys, key index per datagram, seqs, counts).
        self.sequence: list[tuple] = []
        self.var_sets: list[tuple[_Group, int]] = []  # variable-length sets of the datagram being parsed
        self.other_records = 0  # template records in the v9 datagram being parsed (negative: not checkable)
        self.options_records = 0  # options data records in the v9 datagram being parsed
        # v9 datagrams whose header record count is checked once variable-length sets are counted: (exporter,
        # header count, every record known, flow records known, [(group, set index)] of variable-length sets)
        self.v9_counts: list[tuple[str, int, int, int, list[tuple[_Group, int]]]] = []
        self.buf = b""  # the batch's datagrams joined, when blocks refer to it

    def context(self, st: _Exporter, version: int, domain: int, received_ms: int, export_ms: int,
                uptime_ms: int, v5_rate: int = 0) -> int:
        self.contexts.append((self.slot(st, version, domain), received_ms, export_ms, uptime_ms, v5_rate))
        return self.ctx_base + len(self.contexts) - 1

    def slot(self, st: _Exporter, version: int, domain: int) -> int:
        key = (st.name, version, domain)
        slot = self.domains.get(key)
        if slot is None:
            slot = self.domains[key] = len(self.domain_info)
            self.domain_info.append((st, version, domain))
        return slot

    def context_row(self, ctx: int) -> tuple[int, int, int, int, int]:
        """A context made by :meth:`context` (the datagram being parsed)."""
        return self.contexts[ctx - self.ctx_base]

    def context_block(self, rows: np.ndarray) -> int:
        """Add the contexts of a block of datagrams, shape (k, 5); returns the index of the first."""
        if self.contexts:
            self.ctx_parts.append(np.asarray(self.contexts, dtype=np.int64).reshape(len(self.contexts), 5))
            self.ctx_base += len(self.contexts)
            self.contexts = []
        first = self.ctx_base
        self.ctx_parts.append(rows)
        self.ctx_base += len(rows)
        return first

    def context_array(self) -> np.ndarray:
        parts = [*self.ctx_parts, np.asarray(self.contexts, dtype=np.int64).reshape(len(self.contexts), 5)]
        return parts[-1] if len(parts) == 1 else np.concatenate(parts)

    def group(self, compiled: Compiled) -> _Group:
        g = self.groups.get(compiled)
        if g is None:
            g = self.groups[compiled] = _Group(compiled)
        return g


class FlowDecoder:
    """Decodes NetFlow v5, v9 and IPFIX datagrams of many exporters; holds their templates and sampling state."""

    def __init__(self, limits: DecoderLimits | None = None, sampling: SamplingPolicy | None = None) -> None:
        self.limits = limits or DecoderLimits()
        self.sampling = sampling or SamplingPolicy()
        self.exporters: dict[str, _Exporter] = {}
        self.pending = PendingStore(self.limits.pending_max_bytes, self.limits.pending_max_age_ms)
        self.sequences = SequenceTracker()
        self.records_sequences = SequenceTracker(window=65536, max_jump=1 << 22)
        self._joiner = templated.Joiner()
        self.template_bytes = 0
        """What the templates of all exporters cost together (:func:`decoders.netflow.templates.template_cost`)."""
        # Each exporter's first ``_reserve`` bytes of templates come out of a share set aside for every possible
        # exporter (half the total budget); only what it holds beyond comes out of the shared pool (the other
        # half). Exporters flooding templates can fill the pool, never a newcomer's share: the total stays within
        # template_max_bytes either way.
        lim = self.limits
        self._reserve = lim.template_max_bytes // (2 * max(1, lim.max_exporters))
        self._pool = lim.template_max_bytes - self._reserve * lim.max_exporters
        self._pooled = 0
        # State keys changed since state_changes() last ran (what the next incremental save writes).
        self._dirty: set[saved.Key] = set()
        self._resync = False
        self._held_version = 0

    # ----------------------------------------------------------------------------------------------- public API
    def decode(self, datagrams: Iterable[tuple[bytes, str, int]]) -> DecodeResult:
        """Decode a batch of ``(payload, exporter, received_ms)``; never raises for bad input."""
        items = datagrams if isinstance(datagrams, list | tuple) else list(datagrams)
        batch = _Batch()
        latest = None
        scanned = self._scan(items) if len(items) >= FAST_MIN_RUN else None
        if scanned is None:
            for payload, exporter, received_ms in items:
                if latest is None or received_ms > latest:
                    latest = received_ms
                self._one(batch, payload, exporter, received_ms)
        else:
            latest = max(scanned.received)
            self._decode_scanned(batch, items, scanned)
        if latest is not None:
            self._drop_held(batch.result, self.pending.expire(latest), "pending_expired")
        self._finish(batch)
        return batch.result

    def _one(self, batch: _Batch, payload: bytes, exporter: str, received_ms: int) -> None:
        """Decode one datagram on its own (every shape: the reference path); errors are counted, never raised."""
        try:
            self._datagram(batch, payload, exporter, received_ms)
        except DecodeError as e:
            batch.result.errors[(exporter, e.reason)] += 1
        except Exception:  # a bug must not take the listener down; counted, and tests assert it never occurs
            batch.result.errors[(exporter, "internal_error")] += 1

    def templates_known(self) -> dict[str, int]:
        """Templates (incl. options templates) currently known, per exporter."""
        return {name: len(st.templates) for name, st in self.exporters.items() if st.templates}

    def pending_bytes(self) -> int:
        """Bytes held for missing templates (payload plus bookkeeping)."""
        return self.pending.bytes

    def template_memory(self) -> int:
        """What the templates of all exporters cost (within ``template_max_bytes``)."""
        return self.template_bytes

    def expire(self, now_ms: int) -> Counter:
        """Drop stale held data, templates (``template_timeout_ms``) and idle exporters.

        Returns ``Counter[(exporter, reason)]`` with reasons ``pending_expired``, ``template_expired`` and
        ``exporter_expired``.
        """
        out: Counter = Counter()
        for held in self.pending.expire(now_ms):
            out[(held.key[0], "pending_expired")] += 1
        timeout = self.limits.template_timeout_ms
        for name, st in list(self.exporters.items()):
            if timeout > 0:
                for key in [k for k, e in st.templates.items() if e.last_seen_ms < now_ms - timeout]:
                    self._drop_template(st, key)
                    out[(name, "template_expired")] += 1
            if st.last_seen_ms < now_ms - self.limits.exporter_idle_ms:
                self._forget(name)
                out[(name, "exporter_expired")] += 1
        return out

    def set_sampling(self, sampling: SamplingPolicy) -> None:
        """Replace the configured sampling policy (SIGHUP); applies to the next decoded records."""
        self.sampling = sampling
        for name, st in self.exporters.items():
            st.policy = sampling.for_exporter(name)

    # ------------------------------------------------------------------------------------------- saved state
    def save_state(self) -> bytes:
        """Everything worth keeping over a restart, as one state file (:mod:`decoders.netflow.saved_state`): templates,
        sampling rates, system init times and data held for a template. For tools and tests; the daemon saves
        incrementally (:meth:`state_changes`)."""
        parts = [saved.MAGIC]
        for name, st in self.exporters.items():
            parts.append(saved.exporter_record(name, st.last_seen_ms, st.init_ms, st.samplers.rates))
            parts += [e.record(name, key) for key, e in st.templates.items()]
        parts += [_held_record(h) for h in self.pending.held()]
        return b"".join(parts)

    def state_changes(self) -> StateChanges:
        """What changed since the last call, for an incremental save; cheap enough for the event loop.

        Costs one step per changed key (plus one per exporter): it collects references to the changed templates
        (entries are never modified in place, so another thread may encode them) and copies of the small
        per-exporter tables. :meth:`StateChanges.records` makes the records, on the writer's thread.
        """
        exporters = self.exporters
        slack = self.limits.exporter_idle_ms // 8  # last seen is saved coarsely: it only matters for idle expiry
        for name, st in exporters.items():
            if st.last_seen_ms - st.saved_seen_ms > slack:
                self._mark(("e", name))
        full: list | None = None
        items: list[tuple[saved.Key, object]] = []
        if self._resync:
            full = [(name, _exporter_meta(st), dict(st.templates)) for name, st in exporters.items()]
            for st in exporters.values():
                st.saved_seen_ms = st.last_seen_ms
                for e in st.templates.values():
                    e.saved_seen_ms = e.last_seen_ms
        else:
            for key in self._dirty:
                st = exporters.get(key[1])
                if key[0] == "t":
                    e = None if st is None else st.templates.get(key[2:])
                    if e is not None:
                        e.saved_seen_ms = e.last_seen_ms
                    items.append((key, e))
                else:
                    if st is not None:
                        st.saved_seen_ms = st.last_seen_ms
                    items.append((key, None if st is None else _exporter_meta(st)))
        self._dirty = set()
        self._resync = False
        held = None
        if self.pending.version != self._held_version:
            self._held_version = self.pending.version
            held = self.pending.held()
        return StateChanges(items, full, held)

    def load_state(self, data: bytes, *, mark: bool = False) -> int:
        """Restore a state file (:meth:`save_state`, or a log of :meth:`state_changes`; the JSON of flowmed
        before it is read too). Every limit and budget applies, as to templates received.

        Loading compiles nothing (templates are compiled at their first data) and parses no field, so it costs
        a few microseconds per record. ``mark``: the loaded state is to be saved again by the next incremental
        save (it came from another file); templates refused are always marked, so the saved state forgets them.
        Returns the templates refused; raises :class:`SavedStateError` when ``data`` is not decoder state.
        """
        if data[:1] == b"{":
            return self._load_json(data)
        refused = 0
        for kind, payload, _ in saved.records(data)[0]:
            item = saved.decode(kind, payload)
            if isinstance(item, saved.TemplateRecord):
                refused += not self._load_template(item, mark)
            elif isinstance(item, saved.ExporterRecord):
                st = self._exporter_state(item.exporter, None)
                if st is None:
                    continue
                st.last_seen_ms = max(st.last_seen_ms, item.last_seen_ms)
                if not mark:
                    st.saved_seen_ms = st.last_seen_ms
                for (d, k), rate in item.rates.items():
                    st.samplers.set(d, k, rate)
                for d, ms in item.init_ms.items():
                    if d in st.init_ms or len(st.init_ms) < self.limits.max_samplers_per_exporter:
                        st.init_ms[d] = ms
                if mark:
                    self._mark(("e", item.exporter))
            elif isinstance(item, saved.HeldRecord):
                if item.exporter in self.exporters:
                    self.pending.add(HeldSet((item.exporter, item.version, item.domain, item.template_id),
                                             item.body, item.received_ms, item.export_ms, item.uptime_ms))
            elif item[0] == "t":
                st = self.exporters.get(item[1])
                if st is not None:
                    self._drop_template(st, item[2:])
            elif item[1] in self.exporters:
                self._forget(item[1])
        return refused

    def _load_template(self, rec: saved.TemplateRecord, mark: bool) -> bool:
        key = ("t", rec.exporter, rec.version, rec.domain, rec.template_id)
        st = self._exporter_state(rec.exporter, None)
        scanned = None
        if rec.count <= self.limits.max_template_fields and rec.template_id >= 256 and rec.version in (9, 10):
            scanned = templated._scan_specs(rec.spec, 0, len(rec.spec), rec.count, rec.ipfix)
        if st is None or scanned != len(rec.spec):
            self._mark(key)
            return False
        raw = RawTemplate(rec.template_id, rec.spec, rec.count, rec.scope, rec.options, rec.ipfix)
        ok = raw.problem() is None and self._admit(st, key[2:], raw, rec.last_seen_ms, None)
        if mark or not ok:
            self._mark(key)
        return ok

    def _load_json(self, data: bytes) -> int:
        """The JSON state of flowmed before the binary format (everything loaded is saved again, in the new one)."""
        try:
            state = json.loads(data)
            if state.get("version") != STATE_VERSION:
                raise SavedStateError(f"unsupported decoder state version {state.get('version')!r}")
            buf = [saved.MAGIC]
            for name, s in state["exporters"].items():
                rates = {}
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
            for exporter, v, d, tid, received, export, uptime, body in state.get("pending", []):
                buf.append(saved.held_record(str(exporter), int(v), int(d), int(tid), int(received), int(export),
                                             int(uptime), base64.b64decode(body)))
        except SavedStateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, struct.error) as e:
            raise SavedStateError(f"unreadable decoder state: {e}") from e
        return self.load_state(b"".join(buf), mark=True)

    def _mark(self, key: saved.Key) -> None:
        """``key`` changed: the next incremental save writes it. Bounded: past ``DIRTY_MAX`` keys (templates
        churned over many ids and domains), the next save rewrites the whole state instead."""
        if not self._resync:
            self._dirty.add(key)
            if len(self._dirty) > DIRTY_MAX:
                self._resync = True
                self._dirty = set()

    # ----------------------------------------------------------------------------------- template budget
    def _refusal(self, st: _Exporter, entry: _TemplateEntry | None, cost: int) -> str | None:
        """The limit a template costing ``cost`` (replacing ``entry``) would break, or None."""
        lim = self.limits
        if entry is None and len(st.templates) >= lim.max_templates_per_exporter:
            return "max_templates_per_exporter"
        after = st.template_bytes - (entry.cost if entry is not None else 0) + cost
        if after > lim.template_max_bytes_per_exporter:
            return "template_max_bytes_per_exporter"
        if self._pooled - max(0, st.template_bytes - self._reserve) + max(0, after - self._reserve) > self._pool:
            return "template_max_bytes"
        return None

    def _admit(self, st: _Exporter, key: tuple[int, int, int], raw: RawTemplate, now_ms: int,
               result: DecodeResult | None) -> bool:
        """Keep a new or changed template if the count limit and the memory budgets allow; else refuse it (and
        forget the template it would have replaced: data must not be decoded with fields its exporter dropped).

        First against a lower bound of its cost known from its header (every field fixed-length): a template
        that cannot fit is refused with nothing looked at but its header. Nothing is compiled here.
        """
        entry = st.templates.get(key)
        refused = self._refusal(st, entry, template_cost(raw.count, 0, len(raw.spec)))
        if refused is None:
            variable = raw.variable
            cost = template_cost(raw.count, variable, len(raw.spec))
            if variable:
                refused = self._refusal(st, entry, cost)
        if refused is not None:
            if result is not None:
                result.limit_hits[(st.name, refused)] += 1
            if entry is not None and refused != "max_templates_per_exporter":
                self._drop_template(st, key)
            return False
        if entry is not None:
            self._charge(st, -entry.cost)
        st.templates[key] = _TemplateEntry(raw, cost, now_ms)
        self._charge(st, cost)
        self._mark(("t", st.name, *key))
        return True

    def _charge(self, st: _Exporter, delta: int) -> None:
        before = max(0, st.template_bytes - self._reserve)
        st.template_bytes += delta
        self.template_bytes += delta
        self._pooled += max(0, st.template_bytes - self._reserve) - before

    def _drop_template(self, st: _Exporter, key: tuple[int, int, int]) -> None:
        entry = st.templates.pop(key, None)
        if entry is not None:
            self._charge(st, -entry.cost)
            self._mark(("t", st.name, *key))

    # ------------------------------------------------------------------------------ per batch: single-set datagrams
    # Most data datagrams are a header and one data set of a known fixed-length template. Their headers are parsed
    # for the whole batch at once (templated.scan_single_sets); consecutive ones are then taken as a block: one
    # template lookup per (exporter, domain, template), one array of contexts, one sequence check per key, and
    # their records stay in the joined batch buffer until their group is decoded. Every other datagram goes through
    # _one() at its place in the batch, so templates learned mid-batch and the order of everything are as if each
    # datagram had been decoded on its own (tests/decoders/test_fast_path.py compares both ways).
    def _scan(self, items: Sequence[tuple[bytes, str, int]]) -> _Scanned | None:
        """Headers of the whole batch; None when no datagram is a single data set (or the input is odd)."""
        try:
            if not any(len(p) > 1 and p[0] == 0 and p[1] in (9, 10) for p in
                       (items[0][0], items[len(items) // 2][0], items[-1][0])):
                return None  # no v9/IPFIX in sight (a v5 batch, say): not worth joining the datagrams
            # (three lists, not zip(*items): that makes an iterator object per datagram for the GC to count)
            payloads, exporters, received = [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]
            sets = templated.scan_single_sets(payloads, self._joiner)
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
            return _Scanned(sets, received, np.array(received, dtype=np.int64), codes, names, keys)
        except Exception:  # e.g. items that are not (bytes, str, int): the per-datagram path counts what is wrong
            return None

    def _decode_scanned(self, batch: _Batch, items: Sequence[tuple[bytes, str, int]], sc: _Scanned) -> None:
        batch.buf = sc.sets.buf
        n, pos = len(items), 0
        for s in [*np.flatnonzero(~sc.sets.single).tolist(), n]:
            if s > pos:
                self._run(batch, items, sc, pos, s)
            if s < n:
                self._one(batch, *items[s])
            pos = s + 1

    def _run(self, batch: _Batch, items: Sequence[tuple[bytes, str, int]], sc: _Scanned, a: int, b: int) -> None:
        """Single-set datagrams ``a:b``: no template changes among them, so one lookup per template key holds."""
        if b - a < FAST_MIN_RUN:
            for i in range(a, b):
                self._one(batch, *items[i])
            return
        keys = sc.keys[a:b]
        if (keys == keys[0]).all():
            uniq, inv = keys[:1], np.zeros(b - a, dtype=np.int64)
        else:
            uniq, inv = np.unique(keys, return_inverse=True)
        compiled: list[Compiled | None] = []
        for key in uniq.tolist():
            st = self.exporters.get(sc.names[key >> 50])
            entry = None if st is None else \
                st.templates.get((10 if key >> 48 & 1 else 9, key >> 16 & 0xFFFFFFFF, key & 0xFFFF))
            compiled.append(entry.compiled if entry is not None and entry.compiled.fast else None)
        reclen = np.array([c.reclen if c is not None else 0 for c in compiled], dtype=np.int64)[inv]
        nrec = sc.sets.body_len[a:b] // np.maximum(reclen, 1) * (reclen > 0)
        pos = a
        for j in [*(np.flatnonzero(nrec == 0) + a).tolist(), b]:
            if j - pos >= FAST_MIN_RUN:
                self._block(batch, items, sc, pos, j, inv[pos - a:j - a], compiled, nrec[pos - a:j - a])
            else:
                for i in range(pos, j):
                    self._one(batch, *items[i])
            if j < b:
                self._one(batch, *items[j])  # no fast template: held, or an options or variable-length template
            pos = j + 1

    def _block(self, batch: _Batch, items: Sequence[tuple[bytes, str, int]], sc: _Scanned, a: int, b: int,
               inv: np.ndarray, compiled: list[Compiled | None], nrec: np.ndarray) -> None:
        """Datagrams ``a:b``, each one data set of a fixed-length flow template (``compiled[inv]``)."""
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
            groups: dict[Compiled, int] = {}  # in order of first appearance -> index
            seq_keys: dict[tuple[str, int, int], int] = {}
            counted: list[tuple[tuple[str, int], int]] = []
            states: dict[int, _Exporter] = {}
            for u, i in first_of.items():
                key = int(sc.keys[a + i])
                code, version, domain = key >> 50, 10 if key >> 48 & 1 else 9, key >> 16 & 0xFFFFFFFF
                st = states[code] = self.exporters[sc.names[code]]
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
            version = sets.version[a:b]
            seq_counts = np.where(version == 9, 1, nrec)
            offsets = sets.body_start[a:b]
            if len(states) == 1:
                last = {next(iter(states)): b - 1}
            else:
                codes = sc.codes[a:b]
                present_codes, from_end = np.unique(codes[::-1], return_index=True)
                last = dict(zip(present_codes.tolist(), (b - 1 - from_end).tolist(), strict=True))
            if len(groups) == 1:
                sels: list = [slice(None)]
            else:  # the datagrams of each group, in order
                gidx = ukey_group[inv]
                by_group = np.argsort(gidx, kind="stable")
                bounds = np.searchsorted(gidx[by_group], np.arange(len(groups) + 1)).tolist()
                sels = [by_group[bounds[i]:bounds[i + 1]] for i in range(len(groups))]
            # v9 header record counts that disagree with the one data set (IPFIX has no such count)
            miscounted = (version == 9) & (sets.count[a:b] != nrec)
            miscounts = Counter(sc.codes[a:b][miscounted].tolist()) if miscounted.any() else None
        except Exception:  # a bug: decode these datagrams one by one instead (only unused domain slots were added)
            for i in range(a, b):
                self._one(batch, *items[i])
            return
        # From here on: state changes only.
        if miscounts:
            for code, n in miscounts.items():
                batch.result.errors[(sc.names[code], "record_count_mismatch")] += n
        datagrams = batch.result.datagrams
        for key, count in counted:
            datagrams[key] += count
        for code, i in last.items():
            states[code].last_seen_ms = sc.received[i]
        first_ctx = batch.context_block(rows)
        ctx = np.arange(first_ctx, first_ctx + k, dtype=np.int64)
        for c, sel in zip(groups, sels, strict=True):
            g = batch.group(c)
            piece = _Block(offsets[sel], nrec[sel], ctx[sel])
            g.chunks.append(piece)
            g.counts.append(int(piece.counts.sum()))
            g.ctx.append(int(piece.ctx[0]))
            g.blocks = True
        batch.sequence.append((None, list(seq_keys), ukey_seq[inv], sets.seq[a:b], seq_counts))

    # ------------------------------------------------------------------------------------------ per datagram
    def _exporter_state(self, name: str, result: DecodeResult | None) -> _Exporter | None:
        st = self.exporters.get(name)
        if st is None:
            if len(self.exporters) >= self.limits.max_exporters:
                if result is not None:
                    result.limit_hits[(name, "max_exporters")] += 1
                return None
            st = self.exporters[name] = _Exporter(name, self.sampling.for_exporter(name),
                                                  self.limits.max_samplers_per_exporter)
        return st

    def _datagram(self, batch: _Batch, payload: bytes, exporter: str, received_ms: int) -> None:
        result = batch.result
        if len(payload) < 2:
            result.datagrams[(exporter, 0)] += 1
            raise Truncated("datagram shorter than a version field", offset=0)
        version = (payload[0] << 8) | payload[1]
        if version not in (5, 9, 10):
            result.datagrams[(exporter, 0)] += 1
            raise UnsupportedVersion(version)
        result.datagrams[(exporter, version)] += 1
        st = self.exporters.get(exporter) or self._exporter_state(exporter, result)
        if st is None:
            return
        st.last_seen_ms = received_ms
        if version == 5:
            self._v5(batch, st, payload, received_ms)
        else:
            self._templated(batch, st, payload, version, received_ms)

    def _v5(self, batch: _Batch, st: _Exporter, payload: bytes, received_ms: int) -> None:
        h = netflow5.V5Header(payload)
        if h.problem is not None:
            batch.result.errors[(st.name, h.problem.reason)] += 1
        if h.count == 0:
            return
        ctx = batch.context(st, 5, h.domain, received_ms, h.export_ms, h.uptime_ms, h.sampling_rate)
        g = batch.v5
        g.chunks.append(memoryview(payload)[netflow5.HEADER_LEN:netflow5.HEADER_LEN + h.count * netflow5.RECORD_LEN])
        g.counts.append(h.count)
        g.ctx.append(ctx)
        batch.sequence.append((self.records_sequences, (st.name, 5, h.domain), h.sequence, h.count, True, None))

    def _observe_sequences(self, batch: _Batch) -> None:
        """Sequence accounting of the batch, in datagram order, now that every set's record count is known."""
        result = batch.result
        if not any(entry[0] is None for entry in batch.sequence):
            for tracker, key, seq, count, exact, var_sets in batch.sequence:
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
        index: dict[tuple, int] = {}
        parts: list[tuple[np.ndarray, ...]] = []  # (key id, seq, count, exact) arrays: a block, or a run of singles
        singles: list[tuple[int, int, int, bool]] = []
        for entry in batch.sequence:
            if entry[0] is None:
                if singles:
                    parts.append(_columns_of(singles))
                    singles = []
                _, keys, kid, seq, count = entry
                local = np.array([index.setdefault(key, len(index)) for key in keys], dtype=np.int64)
                parts.append((local[kid], seq, count, np.ones(len(kid), dtype=bool)))
            else:
                _, key, seq, count, exact, var_sets = entry
                if var_sets:
                    count += sum(g.counts[i] for g, i in var_sets)
                singles.append((index.setdefault(key, len(index)), seq, count, exact))
        if singles:
            parts.append(_columns_of(singles))
        keys = list(index)
        trackers = [self.sequences if key[1] == 9 else self.records_sequences for key in keys]
        kid, seq, count, exact = parts[0] if len(parts) == 1 else (np.concatenate(x) for x in zip(*parts, strict=True))
        for tracker in {id(t): t for t in trackers}.values():
            new = sum(1 for key, t in zip(keys, trackers, strict=True) if t is tracker and key not in tracker.states)
            if new and len(tracker.states) + new > tracker.max_keys:
                runs = [(i, i + 1) for i in range(len(kid))]  # evictions depend on the order: keep it
                break
        else:
            order = np.argsort(kid, kind="stable")
            kid, seq, count, exact = kid[order], seq[order], count[order], exact[order]
            bounds = np.flatnonzero(np.diff(kid)) + 1
            runs = list(zip([0, *bounds.tolist()], [*bounds.tolist(), len(kid)], strict=True))
        for lo, hi in runs:
            key = keys[int(kid[lo])]
            lost, resets = trackers[int(kid[lo])].observe_many(key, seq[lo:hi], count[lo:hi], exact[lo:hi])
            if lost:
                result.sequence_lost[key[0]] += lost
            if resets:
                result.sequence_resets[key[0]] += resets

    def _templated(self, batch: _Batch, st: _Exporter, payload: bytes, version: int, received_ms: int) -> None:
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
        ctx = batch.context(st, version, domain, received_ms, secs * 1000, uptime)
        view = memoryview(payload)
        records, exact = 0, True
        templates, groups = st.templates, batch.groups
        batch.var_sets = var_sets = []
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
                        g = groups[compiled] = _Group(compiled)
                    g.chunks.append(view[pos + 4:pos + 4 + n * compiled.reclen])
                    g.counts.append(n)
                    g.ctx.append(ctx)
                    records += n
                    pos += set_len
                    continue
            try:
                n = self._set(batch, st, ctx, version, domain, set_id, payload, view, pos + 4, pos + set_len)
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
            batch.sequence.append((self.sequences, (st.name, 9, domain), seq, 1, True, None))
        else:
            batch.sequence.append((self.records_sequences, (st.name, 10, domain), seq, records, exact,
                                   var_sets or None))

    def _set(self, batch: _Batch, st: _Exporter, ctx: int, version: int, domain: int, set_id: int,
             payload: bytes, view: memoryview, start: int, end: int) -> int:
        """Handle one set; returns the data records it held (-1: unknown, data held for its template)."""
        if set_id >= 256:
            entry = st.templates.get((version, domain, set_id))
            if entry is None:
                self._hold(batch, st, ctx, version, domain, set_id, payload[start:end])
                return -1
            return self._data(batch, st, entry.compiled, ctx, version, domain, payload, view, start, end)
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
                                                 max_fields=self.limits.max_template_fields):
            if isinstance(item, DecodeError):
                batch.result.errors[(st.name, item.reason)] += 1
                batch.other_records = -1 << 30  # no record count check for this datagram
            elif isinstance(item, Withdrawal):
                batch.other_records += 1
                self._withdraw(st, version, domain, item)
            else:
                batch.other_records += 1
                self._learn(batch, st, version, domain, item, batch.context_row(ctx)[1])
        return 0

    def _data(self, batch: _Batch, st: _Exporter, compiled: Compiled, ctx: int, version: int, domain: int,
              payload: bytes, view: memoryview, start: int, end: int) -> int:
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
            self._options(batch, st, compiled, domain, chunk, n, starts)
            batch.options_records += n
            return n
        g = batch.group(compiled)
        g.chunks.append(chunk)
        g.counts.append(n)
        g.ctx.append(ctx)
        return n

    def _options(self, batch: _Batch, st: _Exporter, compiled: Compiled, domain: int, chunk, n: int,
                 starts: np.ndarray | None) -> None:
        """Options data: remember sampling rates (per sampler/selector id) and system init time."""
        view = templated.make_view(compiled, bytes(chunk), n, starts)
        for values in templated.options_values(compiled, view):
            rate = rate_from_values(values.get)
            if rate:
                if ies.SAMPLER_ID in values:
                    key = (ies.SAMPLER_ID, values[ies.SAMPLER_ID])
                elif ies.SELECTOR_ID in values:
                    key = (ies.SELECTOR_ID, values[ies.SELECTOR_ID])
                else:
                    key = None
                if st.samplers.rates.get((domain, key)) != rate:
                    self._mark(("e", st.name))
                if not st.samplers.set(domain, key, rate):
                    batch.result.limit_hits[(st.name, "max_samplers_per_exporter")] += 1
            init = values.get(ies.SYSTEM_INIT_TIME)
            if init and (domain in st.init_ms or len(st.init_ms) < self.limits.max_samplers_per_exporter):
                if st.init_ms.get(domain) != init:
                    self._mark(("e", st.name))
                st.init_ms[domain] = init

    def _hold(self, batch: _Batch, st: _Exporter, ctx: int, version: int, domain: int, template_id: int,
              body: bytes) -> None:
        if not body:
            raise EmptySet("data set with no record", offset=None)
        _, received_ms, export_ms, uptime_ms, _ = batch.context_row(ctx)
        held = HeldSet((st.name, version, domain, template_id), bytes(body), received_ms, export_ms, uptime_ms)
        batch.result.pending_held[st.name] += 1
        dropped = self.pending.add(held)
        if dropped:
            for h in dropped:
                batch.result.limit_hits[(h.key[0], "pending_max_bytes")] += 1
            self._drop_held(batch.result, dropped, "pending_overflow")

    @staticmethod
    def _drop_held(result: DecodeResult, dropped: Sequence[HeldSet], reason: str) -> None:
        for h in dropped:
            result.errors[(h.key[0], reason)] += 1
            result.pending_dropped[h.key[0]] += 1

    def _learn(self, batch: _Batch, st: _Exporter, version: int, domain: int, raw: RawTemplate,
               now_ms: int) -> None:
        key = (version, domain, raw.template_id)
        entry = st.templates.get(key)
        errors = batch.result.errors
        if entry is not None and entry.same(raw):
            if entry.zero:
                errors[(st.name, "zero_length_field")] += 1
            entry.last_seen_ms = now_ms
            timeout = self.limits.template_timeout_ms
            if timeout and now_ms - entry.saved_seen_ms > timeout // 4:  # saved again before it could time out
                self._mark(("t", st.name, *key))
        elif self._admit(st, key, raw, now_ms, batch.result):
            problem = raw.problem()
            if problem is not None:  # checked once admitted: a refused template costs no more than its header
                self._drop_template(st, key)
                errors[(st.name, problem.reason)] += 1
                return
            if raw.zero:
                errors[(st.name, "zero_length_field")] += 1
            batch.result.templates_learned[st.name] += 1
        else:
            return
        held_key = (st.name, version, domain, raw.template_id)
        if self.pending.has(held_key):
            compiled = st.templates[key].compiled
            current, batch.var_sets = batch.var_sets, []  # replayed sets are not the current datagram's records
            for held in self.pending.take(held_key):
                ctx = batch.context(st, version, domain, held.received_ms, held.export_ms, held.uptime_ms)
                batch.result.pending_replayed[st.name] += 1
                try:
                    self._data(batch, st, compiled, ctx, version, domain, held.body, memoryview(held.body), 0,
                               len(held.body))
                except DecodeError as e:
                    batch.result.errors[(st.name, e.reason)] += 1
            batch.var_sets = current

    def _withdraw(self, st: _Exporter, version: int, domain: int, w: Withdrawal) -> None:
        if w.all:
            for key in [k for k, e in st.templates.items()
                        if k[0] == version and k[1] == domain and e.options == w.options]:
                self._drop_template(st, key)
        else:
            self._drop_template(st, (version, domain, w.template_id))

    def _forget(self, name: str) -> None:
        st = self.exporters.get(name)
        if st is not None:
            for key in list(st.templates):
                self._drop_template(st, key)
            self._mark(("e", name))
        self.exporters.pop(name, None)
        self.pending.forget(name)
        self.sequences.forget(name)
        self.records_sequences.forget(name)

    # ------------------------------------------------------------------------------------------ per group
    def _finish(self, batch: _Batch) -> None:
        result = batch.result
        ctx = batch.context_array()
        for g in batch.groups.values():
            if not g.compiled.fixed:
                try:
                    self._walk_group(g, ctx, batch)
                except Exception:  # a bug: count it and lose this group only; tests assert it never happens
                    result.errors[(batch.domain_info[int(ctx[g.ctx[0], 0])][0].name, "internal_error")] += 1
                    g.counts = [0] * len(g.counts)
        for name, count, every, flows, var_sets in batch.v9_counts:
            var = sum(g.counts[i] for g, i in var_sets)
            if count not in (every + var, flows + var):  # RFC 3954 counts every record; softflowd only flows
                result.errors[(name, "record_count_mismatch")] += 1
        self._observe_sequences(batch)
        groups = [g for g in batch.groups.values() if sum(g.counts)]
        if batch.v5.counts:
            groups.append(batch.v5)
        parts: list[tuple[int, dict[str, np.ndarray]]] = []
        if groups:
            dom = _DomainTables(self, batch)
            for g in groups:
                n = sum(g.counts)
                try:
                    parts.append((n, self._decode_group(g, ctx, dom, n, result, batch.buf)))
                except Exception:  # a bug: count it and lose this group only; tests assert it never happens
                    result.errors[(batch.domain_info[int(ctx[g.ctx[0], 0])][0].name, "internal_error")] += 1
        result.n_flows = total = sum(n for n, _ in parts)
        out: dict[str, np.ndarray] = {}
        owners: set[int] = set()
        for c in _COLUMNS:
            dtype = c.numpy_dtype
            arrays = [_column(cols.get(c.name), n, dtype) for n, cols in parts]
            column = arrays[0] if len(arrays) == 1 else np.concatenate(arrays) if arrays else \
                np.zeros(total, dtype=dtype)
            if id(column) in owners:  # one decoded array for two columns (e.g. no end time): each its own
                column = column.copy()
            owners.add(id(column))
            out[c.name] = column
        result.flows = out

    @staticmethod
    def _walk_group(g: _Group, ctx: np.ndarray, batch: _Batch) -> None:
        """Find the records of every variable-length set of a group at once; count broken sets."""
        lengths = np.fromiter((len(c) for c in g.chunks), dtype=np.int64, count=len(g.chunks))
        ends = np.cumsum(lengths)
        buf = b"".join(g.chunks)
        counts, g.starts, broken = walk_sets(g.compiled, buf, ends - lengths, ends)
        g.chunks = [buf]
        g.counts = counts.tolist()
        for i in np.nonzero(broken | (counts == 0))[0]:
            name = batch.domain_info[int(ctx[g.ctx[i], 0])][0].name
            batch.result.errors[(name, BadRecord.reason if broken[i] else EmptySet.reason)] += 1

    def _decode_group(self, g: _Group, ctx: np.ndarray, dom: _DomainTables, n: int, result: DecodeResult,
                      batch_buf: bytes) -> dict[str, np.ndarray]:
        """The ``flows`` columns of one group (arrays, or 0-d scalars for values shared by every record)."""
        if g.blocks:
            counts, set_ctx, block_view = _block_records(g, batch_buf)
        else:
            counts, set_ctx, block_view = np.asarray(g.counts, dtype=np.int64), np.asarray(g.ctx, dtype=np.int64), None
        per_set = ctx[set_ctx]  # datagram values, one row per data set

        def expand(values: np.ndarray) -> np.ndarray:
            """Per-set values to per-record values: a 0-d scalar when they are all equal (the common case)."""
            return values[0] if (values == values[0]).all() else np.repeat(values, counts)

        set_slot = per_set[:, 0]
        slot = expand(set_slot)
        received, export_ms, uptime = expand(per_set[:, 1]), expand(per_set[:, 2]), expand(per_set[:, 3])
        if g.compiled is None:  # NetFlow v5
            cols = netflow5.decode_records(b"".join(g.chunks), n, export_ms, uptime)
            announced = expand(per_set[:, 4].astype(np.uint64))
        else:
            compiled = g.compiled
            view = block_view if block_view is not None else \
                templated.make_view(compiled, b"".join(g.chunks), n, g.starts)
            cols = templated.flow_columns(compiled, view)
            init = dom.init_ms[slot]
            cols["flow_start"] = templated.time_column(view, compiled, compiled.start_ie, export_ms, uptime, init)
            if compiled.end_ie is None:
                cols["flow_end"] = cols["flow_start"]
            else:
                cols["flow_end"] = templated.time_column(view, compiled, compiled.end_ie, export_ms, uptime, init)
                if compiled.start_ie is None:
                    cols["flow_start"] = cols["flow_end"]
            announced = self._announced_rates(compiled, view, slot, dom, n)
            if {compiled.start_ie, compiled.end_ie} & {21, 22} and ies.SYSTEM_INIT_TIME not in compiled.refs:
                self._count_missing_init_time(set_slot, counts, dom, result)
        rate = resolve(announced, dom.policy_rate[slot], dom.override[slot])
        raw_bytes = _column(cols.get("raw_bytes"), n, np.dtype(np.uint64))
        raw_packets = _column(cols.get("raw_packets"), n, np.dtype(np.uint64))
        cols.update(raw_bytes=raw_bytes, raw_packets=raw_packets, sampling_rate=rate, time_received=received,
                    exporter=dom.addr[slot], observation_domain=dom.domain[slot], version=dom.version[slot])
        if np.ndim(rate) == 0 and rate == 1:
            cols.update(bytes=raw_bytes.copy(), packets=raw_packets.copy())  # unsampled: no multiply
        else:
            cols.update(bytes=raw_bytes * rate, packets=raw_packets * rate)
        per_slot = np.bincount(set_slot, weights=counts, minlength=len(dom.version))
        for s in np.nonzero(per_slot)[0]:
            st, version, _ = dom.info[s]
            result.records[(st.name, version)] += int(per_slot[s])
        return cols

    @staticmethod
    def _count_missing_init_time(set_slot: np.ndarray, counts: np.ndarray, dom: _DomainTables,
                                 result: DecodeResult) -> None:
        """IPFIX records with sysUptime times but no systemInitTimeMilliseconds known: their times are the export
        time (the best guess left); counted per record so the operator can enable the exporter's options export."""
        missing = (dom.version[set_slot] == 10) & (dom.init_ms[set_slot] < 0)
        if missing.any():
            per_slot = np.bincount(set_slot[missing], weights=counts[missing], minlength=len(dom.version))
            for s in np.nonzero(per_slot)[0]:
                result.errors[(dom.info[s][0].name, "missing_init_time")] += int(per_slot[s])

    @staticmethod
    def _announced_rates(compiled: Compiled, view, slot: np.ndarray, dom: _DomainTables, n: int) -> np.ndarray:
        """Per record: rate in the record, else its sampler's options rate, else the domain's; 0 = none.

        ``slot`` is per record, or a 0-d scalar when every record comes from one (exporter, domain).
        """
        refs = compiled.refs
        in_record = rate_from_columns(lambda ie: view.uint(refs[ie]) if ie in refs else None, n)
        announced = dom.domain_rate[slot]
        key_ie = ies.SAMPLER_ID if ies.SAMPLER_ID in refs else ies.SELECTOR_ID if ies.SELECTOR_ID in refs else None
        if key_ie is not None:
            ids = view.uint(refs[key_ie]).astype(np.uint64)
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


def _columns_of(observations: list[tuple[int, int, int, bool]]) -> tuple[np.ndarray, ...]:
    """Sequence observations (key id, seq, count, exact) as four arrays."""
    kid, seq, count, exact = zip(*observations, strict=True)
    return (np.array(kid, dtype=np.int64), np.array(seq, dtype=np.int64), np.array(count, dtype=np.int64),
            np.array(exact, dtype=bool))


def _block_records(g: _Group, buf: bytes) -> tuple[np.ndarray, np.ndarray, FixedView]:
    """Records per set, context per set and a view of the records of a fixed-length group with blocks.

    The records of blocks are still in the batch buffer, behind their datagram's headers. When every set has
    the same number of records and the sets are evenly spaced (datagrams of one length: the usual case), the
    records are a strided 2-D view of the buffer (no copy); otherwise they are gathered as they are decoded.
    Sets parsed one by one (``g.chunks`` that are not blocks) are appended to the buffer first.
    """
    offsets, counts, ctxs, extra = [], [], [], []
    end = len(buf)
    for chunk, count, c in zip(g.chunks, g.counts, g.ctx, strict=True):
        if isinstance(chunk, _Block):
            offsets.append(chunk.offsets)
            counts.append(chunk.counts)
            ctxs.append(chunk.ctx)
        else:
            offsets.append(np.array([end], dtype=np.int64))
            counts.append(np.array([count], dtype=np.int64))
            ctxs.append(np.array([c], dtype=np.int64))
            extra.append(chunk)
            end += len(chunk)
    offset, count, ctx = (x[0] if len(x) == 1 else np.concatenate(x) for x in (offsets, counts, ctxs))
    source = b"".join([buf, *extra]) if extra else buf
    compiled = g.compiled
    reclen = compiled.reclen
    first = int(count[0])
    step = int(offset[1] - offset[0]) if len(offset) > 1 else first * reclen
    if step >= first * reclen and (count == first).all() and (np.diff(offset) == step).all():
        records = np.ndarray((len(offset), first), dtype=compiled.dtype, buffer=source, offset=int(offset[0]),
                             strides=(step, reclen))
    else:
        before = np.cumsum(count) - count
        at = np.repeat(offset - before * reclen, count) + np.arange(int(count.sum()), dtype=np.int64) * reclen
        # gathered as opaque bytes (a structured dtype would be copied field by field), chunk by chunk as read
        windows = np.ndarray((len(source) - reclen + 1,), dtype=f"V{reclen}", buffer=source, strides=(1,))
        return count, ctx, FixedView(windows, at, compiled.dtype)
    return count, ctx, FixedView(records)


def _column(values: np.ndarray | None, n: int, dtype: np.dtype) -> np.ndarray:
    """A native, contiguous column of ``n`` rows from decoded values, a 0-d scalar (broadcast) or None (zeros)."""
    if values is None:
        return np.zeros(n, dtype=dtype)
    if np.ndim(values) == 0:
        return np.full(n, values, dtype=dtype)
    # Views of the datagram bytes are read-only: copy them, so callers own writable columns.
    return values.astype(dtype, copy=values.dtype != dtype or not values.flags.c_contiguous
                         or not values.flags.writeable)


class _DomainTables:
    """Per (exporter, version, domain) slot of a batch: values that are looked up per record by slot."""

    def __init__(self, dec: FlowDecoder, batch: _Batch) -> None:
        info = batch.domain_info
        self.info = info
        k = len(info)
        self.addr = np.array([st.addr16 for st, _, _ in info], dtype="S16").reshape(k)
        self.version = np.array([v for _, v, _ in info], dtype=np.uint8)
        self.domain = np.array([d for _, _, d in info], dtype=np.uint32)
        self.policy_rate = np.array([st.policy[0] for st, _, _ in info], dtype=np.uint64)
        self.override = np.array([st.policy[1] for st, _, _ in info], dtype=bool)
        self.domain_rate = np.array([st.samplers.domain_rate(d) if v != 5 else 0 for st, v, d in info],
                                    dtype=np.uint64)
        self.init_ms = np.array([st.init_ms.get(d, -1) if v == 10 else -1 for st, v, d in info], dtype=np.int64)
