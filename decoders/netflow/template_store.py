"""The templates an exporter sent, as the decoder keeps them, and the memory budget they are held within.

A :class:`TemplateEntry` keeps a template's wire field specifiers and compiles them at its first data set (a
template that never gets data costs no compiling, and loading saved state compiles nothing). The
:class:`TemplateBudget` decides whether a new or changed template fits: every exporter has a reserved share, and
what it holds beyond comes out of a pool shared by all (:class:`decoders.netflow.state.DecoderLimits` sets the
sizes). The cost of a template is :func:`decoders.netflow.templates.template_cost`.
"""

from __future__ import annotations

from decoders.netflow import saved_state as saved
from decoders.netflow.templated import RawTemplate
from decoders.netflow.templates import Compiled, compile_spec

TemplateKey = tuple[int, int, int]
"""(version, domain, template id): a template of one exporter."""


class TemplateEntry:
    """A template an exporter sent: its wire field specifiers, compiled at its first data set.

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
        """The compiled template (compiled at the first use, then kept)."""
        c = self._compiled
        if c is None:
            c = self._compiled = compile_spec(self.spec, ipfix=self.ipfix, options=self.options,
                                              v9_scope=self.scope if self.options and not self.ipfix else 0)
        return c

    def same(self, raw: RawTemplate) -> bool:
        """Whether ``raw`` is a refresh of this template (same fields, scope and kind)."""
        return raw.spec == self.spec and raw.scope == self.scope and raw.options == self.options

    def record(self, exporter: str, key: TemplateKey) -> bytes:
        """This template as a state record (see :mod:`decoders.netflow.saved_state`)."""
        return saved.template_record(exporter, *key, options=self.options, ipfix=self.ipfix, scope=self.scope,
                                     count=self.count, last_seen_ms=self.last_seen_ms, spec=self.spec)


class TemplateBudget:
    """What the templates of all exporters cost, and whether one more fits.

    Each exporter's first ``reserve`` bytes of templates come out of a share set aside for every possible exporter
    (half the total budget); only what it holds beyond comes out of the shared pool (the other half). Exporters
    flooding templates can fill the pool, never a newcomer's share: the total stays within ``total_bytes`` either
    way.
    """

    __slots__ = ("per_exporter_bytes", "max_templates", "reserve", "pool", "pooled", "template_bytes")

    def __init__(self, total_bytes: int, per_exporter_bytes: int, max_templates: int, max_exporters: int) -> None:
        self.per_exporter_bytes = per_exporter_bytes
        self.max_templates = max_templates
        self.reserve = total_bytes // (2 * max(1, max_exporters))
        self.pool = total_bytes - self.reserve * max_exporters
        self.pooled = 0
        """Bytes taken from the shared pool."""
        self.template_bytes = 0
        """What the templates of all exporters cost together."""

    def refusal(self, held: int, held_bytes: int, replaced: TemplateEntry | None, cost: int) -> str | None:
        """The limit a template costing ``cost`` (replacing ``replaced``) would break for an exporter holding
        ``held`` templates of ``held_bytes``, or None (it fits)."""
        if replaced is None and held >= self.max_templates:
            return "max_templates_per_exporter"
        after = held_bytes - (replaced.cost if replaced is not None else 0) + cost
        if after > self.per_exporter_bytes:
            return "template_max_bytes_per_exporter"
        reserve = self.reserve
        if self.pooled - max(0, held_bytes - reserve) + max(0, after - reserve) > self.pool:
            return "template_max_bytes"
        return None

    def charge(self, held_bytes: int, delta: int) -> int:
        """Account ``delta`` bytes to an exporter holding ``held_bytes``; returns what it holds after."""
        reserve = self.reserve
        after = held_bytes + delta
        self.template_bytes += delta
        self.pooled += max(0, after - reserve) - max(0, held_bytes - reserve)
        return after
