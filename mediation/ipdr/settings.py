"""The ``[ipdr]`` section of collector.toml (see :mod:`mediation.settings`): the CMTSs that ``collector.ipdr``
connects to or accepts, the IPDR/SP protocol limits, and how :mod:`mediation.ipdr.usage` attributes and keeps usage.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from decoders.settings import ConfigError, check_endpoint, check_positive


@dataclass(frozen=True)
class IpdrExporter:
    address: str
    """CMTS IPDR/SP endpoint to connect to, e.g. 192.0.2.1:4737 or [2001:db8::1]:4737."""
    name: str = ""
    """Label for logs, metrics and state (default: the address)."""
    ipv6_bare: bool = False
    """This CMTS encodes ipV6Addr as a bare 16 bytes (2005 reference code) instead of length + bytes."""

    def validate(self, key: str) -> None:
        check_endpoint(f"{key}.address", self.address)


@dataclass(frozen=True)
class IpdrConfig:
    enabled: bool = False
    """Collect IPDR/SP (DOCSIS SAMIS) from CMTSs."""
    exporters: list[IpdrExporter] = field(default_factory=list)
    """CMTSs to connect to (the usual DOCSIS arrangement: the collector dials out)."""
    listen: str = ""
    """Accept exporter-initiated connections on this endpoint, e.g. 0.0.0.0:4737 (empty: do not listen)."""
    allowlist: bool = True
    """Only accept connections from the configured exporters' addresses and the allow prefixes."""
    allow: list[str] = field(default_factory=list)
    """Further addresses or prefixes allowed to connect (with allowlist = true)."""
    sessions: list[str] = field(default_factory=lambda: ["SAMIS"])
    """Sessions to start: those whose GET_SESSIONS name contains one of these (case-insensitive); empty = all."""
    cm_subscribers_file: str = ""
    """CSV file ``cm_mac,subscriber_id`` mapping cable modems to subscribers (reloaded when it changes)."""
    address_bindings: bool = True
    """Records whose CM MAC is not in cm_subscribers_file: attribute them by CmIpv4Addr through the subscriber
    bindings (static file, RADIUS) valid at the record's time."""
    state_dir: str = "state/ipdr"
    """Service-flow counter baselines and DSN watermarks (relative to store.path): what makes restarts exactly-once."""
    preexisting: Literal["baseline", "count"] = "baseline"
    """Flows created before flowmed's first session with a CMTS (its first FLOW_START, remembered in state_dir across
    restarts): baseline (their first record only sets the baseline) or count (bill their whole counter once)."""
    keepalive_s: int = 60
    """keepAliveInterval we advertise: the longest silence accepted from a CMTS (dropped after 2x this without a
    complete message)."""
    ack_time_fraction: float = 0.5
    """DATA_ACK is sent at this fraction of the session's ackTimeInterval (or at ackSequenceInterval records)."""
    idle_ack_s: float = 1.0
    """Acknowledge everything received once a session has been quiet this long (lets ad-hoc sessions finish)."""
    max_connections: int = 64
    """CMTS connections at once (dialled plus accepted); further accepted connections are closed and counted."""
    max_connections_per_address: int = 4
    """Accepted connections at once from one source address (a CMTS opens one), so one host cannot take every
    slot; further ones are closed and counted."""
    max_sessions: int = 32
    """Sessions per connection."""
    max_message_size: int = 4 * 1024 * 1024
    """Largest IPDR/SP message accepted; a longer one closes the connection (counted). Before the CONNECT handshake
    completes the limit is 64 KiB."""
    max_templates: int = 64
    """Templates per session."""
    max_template_fields: int = 512
    """Fields per template."""
    reconnect_min_s: float = 1.0
    """First reconnect delay; it doubles per failure..."""
    reconnect_max_s: float = 60.0
    """...up to this."""
    connect_timeout_s: float = 10.0
    """TCP connect plus the CONNECT handshake must complete within this, counted from the connect or accept (bytes
    trickling in do not extend it)."""
    vendor_id: str = "flowmed"
    """vendorId sent in CONNECT."""

    def validate(self, key: str) -> None:
        if self.listen:
            check_endpoint(f"{key}.listen", self.listen)
        for i, p in enumerate(self.allow):
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.allow[{i}]", p, "an IP address or prefix") from None
        check_positive(key, keepalive_s=self.keepalive_s, ack_time_fraction=self.ack_time_fraction,
                        idle_ack_s=self.idle_ack_s, max_connections=self.max_connections,
                        max_connections_per_address=self.max_connections_per_address,
                        max_sessions=self.max_sessions, max_message_size=self.max_message_size,
                        max_templates=self.max_templates, max_template_fields=self.max_template_fields,
                        reconnect_min_s=self.reconnect_min_s, reconnect_max_s=self.reconnect_max_s,
                        connect_timeout_s=self.connect_timeout_s)
        if self.max_sessions > 255:
            raise ConfigError(f"{key}.max_sessions", self.max_sessions, "at most 255 (session ids are one byte)")
        if self.ack_time_fraction > 1:
            raise ConfigError(f"{key}.ack_time_fraction", self.ack_time_fraction, "a fraction in (0, 1]")
        if self.max_message_size < 64:
            raise ConfigError(f"{key}.max_message_size", self.max_message_size, "at least 64 bytes")
