"""The decoder's state: exporters, their templates and sampling rates, held data, sequence trackers (sans-I/O).

Rules, as in h11's ``_state.py``: everything the decoder remembers between two ``decode`` calls lives in a
:class:`DecoderState`, and every change a saved state must follow goes through :meth:`DecoderState.mark` (the
incremental save of :mod:`decoders.netflow.persistence` writes the keys marked). Everything an exporter can make the
decoder hold is bounded by :class:`DecoderLimits`: exporters, templates (count and memory, see
:mod:`decoders.netflow.template_store`), sampling rates, held data.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from decoders.netflow import saved_state as saved
from decoders.netflow.pending import HeldSet, PendingStore
from decoders.netflow.template_store import TemplateBudget, TemplateEntry, TemplateKey
from decoders.netflow.templated import RawTemplate, Withdrawal
from decoders.netflow.templates import template_cost
from decoders.result import DecodeResult, ExporterReason
from decoders.sampling import SamplerTable, SamplingPolicy
from decoders.sequence import SequenceTracker

DIRTY_MAX = 1 << 18
"""Changed state keys remembered between saves; beyond, the next save rewrites the whole state."""


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


def _addr16(name: str) -> bytes:
    """An exporter address as the 16 bytes of the ``exporter`` column (IPv4 mapped; zeros when not an address)."""
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return bytes(16)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


class ExporterState:
    """Everything known about one exporter address."""

    __slots__ = ("name", "addr16", "templates", "samplers", "init_ms", "policy", "last_seen_ms", "template_bytes",
                 "saved_seen_ms")

    def __init__(self, name: str, policy: tuple[int, bool], max_samplers: int) -> None:
        self.name = name
        self.addr16 = _addr16(name)
        self.templates: dict[TemplateKey, TemplateEntry] = {}
        self.samplers = SamplerTable(max_samplers)
        self.init_ms: dict[int, int] = {}  # IPFIX systemInitTimeMilliseconds per domain (from options data)
        self.policy = policy
        self.last_seen_ms = 0
        self.template_bytes = 0
        """What its templates cost (:func:`decoders.netflow.templates.template_cost`), within the template budgets."""
        self.saved_seen_ms = 0


def count_dropped_held(result: DecodeResult, dropped: Sequence[HeldSet], reason: str) -> None:
    """Count held data sets dropped (too old, or over the byte bound) as errors of their exporters."""
    for h in dropped:
        result.errors[(h.key[0], reason)] += 1
        result.pending_dropped[h.key[0]] += 1


class DecoderState:
    """What the decoder holds between batches, within :class:`DecoderLimits`."""

    def __init__(self, limits: DecoderLimits, sampling: SamplingPolicy) -> None:
        self.limits = limits
        self.sampling = sampling
        self.exporters: dict[str, ExporterState] = {}
        self.pending = PendingStore(limits.pending_max_bytes, limits.pending_max_age_ms)
        self.sequences = SequenceTracker()
        """v9 sequence numbers (datagrams)."""
        self.records_sequences = SequenceTracker(window=65536, max_jump=1 << 22)
        """v5 and IPFIX sequence numbers (records)."""
        self.budget = TemplateBudget(limits.template_max_bytes, limits.template_max_bytes_per_exporter,
                                     limits.max_templates_per_exporter, limits.max_exporters)
        # State keys changed since the last incremental save (decoders.netflow.persistence.state_changes).
        self.dirty: set[saved.Key] = set()
        self.resync = False
        """Too many keys changed: the next save rewrites the whole state."""
        self.held_version = 0
        """``pending.version`` when the held data was last saved."""

    def exporter_state(self, name: str, result: DecodeResult | None) -> ExporterState | None:
        """The state of exporter ``name``, made when new; None (counted in ``result``) beyond ``max_exporters``."""
        st = self.exporters.get(name)
        if st is None:
            if len(self.exporters) >= self.limits.max_exporters:
                if result is not None:
                    result.limit_hits[(name, "max_exporters")] += 1
                return None
            st = self.exporters[name] = ExporterState(name, self.sampling.for_exporter(name),
                                                      self.limits.max_samplers_per_exporter)
        return st

    def mark(self, key: saved.Key) -> None:
        """``key`` changed: the next incremental save writes it. Bounded: past ``DIRTY_MAX`` keys (templates
        churned over many ids and domains), the next save rewrites the whole state instead."""
        if not self.resync:
            self.dirty.add(key)
            if len(self.dirty) > DIRTY_MAX:
                self.resync = True
                self.dirty = set()

    # ------------------------------------------------------------------------------------------------ templates
    def learn(self, st: ExporterState, key: TemplateKey, raw: RawTemplate, now_ms: int,
              result: DecodeResult) -> bool:
        """A template received: refresh it, or keep it if it is new or changed and fits. Returns whether it is
        known now (data held for it can be replayed)."""
        entry = st.templates.get(key)
        errors = result.errors
        if entry is not None and entry.same(raw):
            if entry.zero:
                errors[(st.name, "zero_length_field")] += 1
            entry.last_seen_ms = now_ms
            timeout = self.limits.template_timeout_ms
            if timeout and now_ms - entry.saved_seen_ms > timeout // 4:  # saved again before it could time out
                self.mark(("t", st.name, *key))
            return True
        if not self.admit(st, key, raw, now_ms, result):
            return False
        problem = raw.problem()
        if problem is not None:  # checked once admitted: a refused template costs no more than its header
            self.drop_template(st, key)
            errors[(st.name, problem.reason)] += 1
            return False
        if raw.zero:
            errors[(st.name, "zero_length_field")] += 1
        result.templates_learned[st.name] += 1
        return True

    def admit(self, st: ExporterState, key: TemplateKey, raw: RawTemplate, now_ms: int,
              result: DecodeResult | None) -> bool:
        """Keep a new or changed template if the count limit and the memory budgets allow; else refuse it (and
        forget the template it would have replaced: data must not be decoded with fields its exporter dropped).

        First against a lower bound of its cost known from its header (every field fixed-length): a template
        that cannot fit is refused with nothing looked at but its header. Nothing is compiled here.
        """
        entry = st.templates.get(key)
        budget = self.budget
        held = len(st.templates)
        refused = budget.refusal(held, st.template_bytes, entry, template_cost(raw.count, 0, len(raw.spec)))
        if refused is None:
            variable = raw.variable
            cost = template_cost(raw.count, variable, len(raw.spec))
            if variable:
                refused = budget.refusal(held, st.template_bytes, entry, cost)
        if refused is not None:
            if result is not None:
                result.limit_hits[(st.name, refused)] += 1
            if entry is not None and refused != "max_templates_per_exporter":
                self.drop_template(st, key)
            return False
        if entry is not None:
            st.template_bytes = budget.charge(st.template_bytes, -entry.cost)
        st.templates[key] = TemplateEntry(raw, cost, now_ms)
        st.template_bytes = budget.charge(st.template_bytes, cost)
        self.mark(("t", st.name, *key))
        return True

    def drop_template(self, st: ExporterState, key: TemplateKey) -> None:
        """Forget a template of ``st`` (withdrawn, expired, replaced by one refused), if it is known."""
        entry = st.templates.pop(key, None)
        if entry is not None:
            st.template_bytes = self.budget.charge(st.template_bytes, -entry.cost)
            self.mark(("t", st.name, *key))

    def withdraw(self, st: ExporterState, version: int, domain: int, w: Withdrawal) -> None:
        """Apply a template withdrawal (RFC 7011 section 8.1): one template, or all of a kind in a domain."""
        if w.all:
            for key in [k for k, e in st.templates.items()
                        if k[0] == version and k[1] == domain and e.options == w.options]:
                self.drop_template(st, key)
        else:
            self.drop_template(st, (version, domain, w.template_id))

    # ------------------------------------------------------------------------------------------------ expiry
    def forget(self, name: str) -> None:
        """Forget an exporter: its templates, held data and sequence numbers."""
        st = self.exporters.get(name)
        if st is not None:
            for key in list(st.templates):
                self.drop_template(st, key)
            self.mark(("e", name))
        self.exporters.pop(name, None)
        self.pending.forget(name)
        self.sequences.forget(name)
        self.records_sequences.forget(name)

    def expire(self, now_ms: int) -> Counter[ExporterReason]:
        """Drop stale held data, templates (``template_timeout_ms``) and idle exporters; returns what went, as
        ``Counter[(exporter, reason)]`` (``pending_expired``, ``template_expired``, ``exporter_expired``)."""
        out: Counter[ExporterReason] = Counter()
        for held in self.pending.expire(now_ms):
            out[(held.key[0], "pending_expired")] += 1
        timeout = self.limits.template_timeout_ms
        for name, st in list(self.exporters.items()):
            if timeout > 0:
                for key in [k for k, e in st.templates.items() if e.last_seen_ms < now_ms - timeout]:
                    self.drop_template(st, key)
                    out[(name, "template_expired")] += 1
            if st.last_seen_ms < now_ms - self.limits.exporter_idle_ms:
                self.forget(name)
                out[(name, "exporter_expired")] += 1
        return out

    def set_sampling(self, sampling: SamplingPolicy) -> None:
        """Replace the configured sampling policy; applies to the next decoded records."""
        self.sampling = sampling
        for name, st in self.exporters.items():
            st.policy = sampling.for_exporter(name)
