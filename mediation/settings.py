"""The ``[mediation]`` section of collector.toml as frozen dataclasses, and the checks the mediation settings share.

Each layer owns the dataclasses of its sections (each field's docstring is its documentation, which
``collector.configdoc`` turns into the commented ``collector.toml``); ``collector.config`` reads the TOML and
assembles them. A bad value raises :class:`decoders.settings.ConfigError` naming the dotted key. The wings own
their sections: :mod:`mediation.subscribers.settings` (``[subscribers]``, ``[radius]``),
:mod:`mediation.compliance.settings` (``[compliance]``) and :mod:`mediation.ipdr.settings` (``[ipdr]``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from decoders.settings import ConfigError, check_positive


@dataclass(frozen=True)
class ExporterRole:
    prefix: str
    """Exporter address or prefix."""
    role: Literal["primary", "shared", "secondary"] = "primary"
    """primary: only its own resends are duplicates; shared: a flow exported by several routers of this role
    counts once; secondary: every record is a duplicate of what a primary exporter reports (kept, not billed)."""

    def validate(self, key: str) -> None:
        try:
            ipaddress.ip_network(self.prefix, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.prefix", self.prefix, "an IP address or prefix") from None


@dataclass(frozen=True)
class ClassRule:
    name: str
    """Traffic class name, e.g. zero-rated-cdn."""
    prefixes: list[str] = field(default_factory=list)
    """Remote (non-subscriber) side prefixes; empty matches any."""
    ports: list[int] = field(default_factory=list)
    """Remote side transport ports; empty matches any."""
    protocols: list[int] = field(default_factory=list)
    """IP protocol numbers; empty matches any."""

    def validate(self, key: str) -> None:
        if not self.name:
            raise ConfigError(f"{key}.name", self.name, "a non-empty class name")
        for i, p in enumerate(self.prefixes):
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.prefixes[{i}]", p, "an IP prefix") from None
        for i, port in enumerate(self.ports):
            if not 0 <= port < 65536:
                raise ConfigError(f"{key}.ports[{i}]", port, "a port number")
        for i, protocol in enumerate(self.protocols):
            if not 0 <= protocol < 256:
                raise ConfigError(f"{key}.protocols[{i}]", protocol, "an IP protocol number")


@dataclass(frozen=True)
class MediationConfig:
    enabled: bool = True
    """Turn flows into subscriber usage (usage, rejects and reconciliation tables)."""
    interval_s: int = 300
    """Usage interval length; intervals are aligned to the UTC epoch, half-open [start, end)."""
    watermark_s: float = 120.0
    """An interval is closed (its rows written) this long after its end; later records become correction rows."""
    max_lateness_s: float = 7 * 86400.0
    """Records ending longer ago than this (by receive time) are rejected as too_old (reprocessable)."""
    max_future_s: float = 300.0
    """Records ending further than this after their receive time are rejected as future."""
    max_flow_duration_s: float = 86400.0
    """Records lasting longer than this are rejected as too_long."""
    max_bytes_per_packet: int = 65535
    """Records with more bytes per packet than this (or fewer than 1) are rejected as absurd_counters."""
    dedup_window_s: float = 120.0
    """De-duplication keys are remembered at least this long (and at most twice that) of processing time, to drop
    resent datagrams and doubly exported records: one key per datagram of a primary exporter, one per record of a
    shared one."""
    dedup_max_keys: int = 7_200_000
    """Keys kept at most, over two generations (128 MiB of tables at the default in steady state, 296 MiB at the
    worst: mediation.dedup.worst_case_bytes); when the rate is so high that a generation fills before
    dedup_window_s, it is retired early and the window is shorter (counted). The default holds 30,000 datagrams/s of
    primary exporters for the whole window; no traffic makes it hold more."""
    exporter_roles: list[ExporterRole] = field(default_factory=list)
    """Exporter roles for de-duplication (longest prefix wins; default primary)."""
    classes: list[ClassRule] = field(default_factory=list)
    """Traffic class rules, first match wins."""
    default_class: str = "default"
    """Class of traffic no rule matches."""

    def validate(self, key: str) -> None:
        check_positive(key, interval_s=self.interval_s, max_lateness_s=self.max_lateness_s,
                        max_flow_duration_s=self.max_flow_duration_s, max_bytes_per_packet=self.max_bytes_per_packet,
                        dedup_max_keys=self.dedup_max_keys)
        if self.max_flow_duration_s > 30 * 86400:
            raise ConfigError(f"{key}.max_flow_duration_s", self.max_flow_duration_s, "at most 30 days")
        if self.watermark_s < 0 or self.max_future_s < 0 or self.dedup_window_s < 0:
            raise ConfigError(key, "watermark_s/max_future_s/dedup_window_s", "non-negative numbers")
        if 86400 % self.interval_s:
            raise ConfigError(f"{key}.interval_s", self.interval_s, "a divisor of 86400 (intervals align to days)")
        if len(self.classes) > 200:
            raise ConfigError(f"{key}.classes", len(self.classes), "at most 200 class rules")
