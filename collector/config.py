"""flowmed's configuration: ``collector.toml`` as a tree of frozen dataclasses.

Every section is one dataclass here; each field's docstring is its documentation. ``load()`` reads the file, applies
``--set`` overrides and validates strictly (see :mod:`collector.configtree`). Relative paths are resolved against
``store.path`` by the components that use them.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from collector.configtree import ConfigError, apply_overrides, build
from storage.settings import OutputConfig, SpoolConfig, StoreConfig

DEFAULT_CONFIG_FILE = "collector.toml"


def _check_endpoint(key: str, value: str) -> None:
    """``host:port`` or ``[v6]:port``; raises ConfigError naming the key."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(key, value, "an address and port such as 0.0.0.0:2055 or [::]:4739")


def split_endpoint(value: str) -> tuple[str, int]:
    """``"[::1]:2055"`` -> ``("::1", 2055)``."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _check_positive(key: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{key}.{name}" if key else name, value, "a number greater than 0")


@dataclass(frozen=True)
class ListenConfig:
    udp: list[str] = field(default_factory=lambda: ["0.0.0.0:2055", "0.0.0.0:4739"])
    """UDP endpoints for NetFlow v5/v9 and IPFIX; every endpoint accepts every version (and sFlow too)."""
    sflow: list[str] = field(default_factory=lambda: ["0.0.0.0:6343"])
    """UDP endpoints for sFlow v5 (6343 is its registered port); empty: none. Every endpoint, these and udp, accepts
    every protocol: a datagram is told sFlow or NetFlow/IPFIX by its first bytes."""
    rcvbuf_bytes: int = 32 * 1024 * 1024
    """Requested SO_RCVBUF; the kernel caps it at net.core.rmem_max (what was granted is logged)."""
    batch_datagrams: int = 2048
    """Datagrams handed to the decoder at once (at most); a batch is also cut every batch_interval_ms."""
    batch_interval_ms: int = 50
    """Longest time a received datagram waits before it is decoded."""
    allow: list[str] = field(default_factory=list)
    """Exporter addresses or prefixes allowed to send flows, e.g. ["192.0.2.0/24", "2001:db8::/32"]; datagrams from
    other sources are dropped before decoding and counted (flowmed_datagrams_refused_total). Empty: any exporter."""
    exporter_rate_limit: float = 0.0
    """Datagrams per second accepted from one exporter (a token bucket per source address, applied before
    decoding); the excess is dropped and counted, so a flood from one exporter cannot starve the others. 0: off."""
    exporter_rate_burst: float = 0.0
    """Bucket size of exporter_rate_limit in datagrams (0: twice the rate)."""

    def endpoints(self) -> list[str]:
        """Every UDP endpoint to receive flows on: ``udp`` then ``sflow``, in order."""
        return [*self.udp, *self.sflow]

    def purpose(self, endpoint: str) -> str:
        """What an endpoint of :meth:`endpoints` is for, as the error naming a taken address says it."""
        return "flows (sFlow)" if endpoint in self.sflow else "flows (NetFlow/IPFIX)"

    def validate(self, key: str) -> None:
        for i, ep in enumerate(self.udp):
            _check_endpoint(f"{key}.udp[{i}]", ep)
        for i, ep in enumerate(self.sflow):
            _check_endpoint(f"{key}.sflow[{i}]", ep)
        both = sorted(set(self.sflow) & set(self.udp))
        if both:  # two sockets on one endpoint: the second bind would fail at start
            raise ConfigError(f"{key}.sflow", both[0], "endpoints not also in listen.udp (each accepts every protocol)")
        for i, p in enumerate(self.allow):
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.allow[{i}]", p, "an IP address or prefix") from None
        if self.exporter_rate_limit < 0 or self.exporter_rate_burst < 0:
            raise ConfigError(f"{key}.exporter_rate_limit", self.exporter_rate_limit, "datagrams per second >= 0")
        _check_positive(key, rcvbuf_bytes=self.rcvbuf_bytes, batch_datagrams=self.batch_datagrams,
                        batch_interval_ms=self.batch_interval_ms)


@dataclass(frozen=True)
class DecoderConfig:
    max_exporters: int = 4096
    """Exporters (source addresses) tracked at once; datagrams from further exporters are counted and dropped."""
    max_templates_per_exporter: int = 1024
    """Templates kept per exporter (over all its domains); a further template is refused and counted."""
    max_template_fields: int = 512
    """A template with more fields than this is refused as malformed."""
    pending_max_bytes: int = 8 * 1024 * 1024
    """Data sets held while waiting for their template, in total; the oldest are dropped (and counted) beyond."""
    pending_max_age_s: float = 120.0
    """Data sets waiting longer than this for their template are dropped (and counted)."""
    template_timeout_s: float = 0.0
    """Forget templates not refreshed for this long (0 = keep until withdrawn or replaced)."""
    template_max_bytes_per_exporter: int = 4 * 1024 * 1024
    """Memory the templates of one exporter may cost, estimated from each template's header and field list before
    anything is compiled (a typical 20-field template about 13 KiB, the costliest 512-field one about 60 KiB);
    a template beyond it is refused and counted (limit template_max_bytes_per_exporter)."""
    template_max_bytes: int = 256 * 1024 * 1024
    """Memory the templates of all exporters may cost together. Half of it is set aside in equal shares for every
    possible exporter (template_max_bytes / 2 / max_exporters each; 32 KiB by default), so exporters flooding
    templates cannot starve one that starts later; beyond, a template is refused and counted."""
    state_file: str = "state/templates.bin"
    """Templates and sampling options saved here (relative to store.path) so a restart loses no data; data held
    for a template in the same name + ".held". A state file of the JSON format before (templates.json) is read."""
    state_save_interval_s: float = 60.0
    """Changed templates are saved this often (appended to the state file by a thread of its own)."""

    def validate(self, key: str) -> None:
        _check_positive(key, max_exporters=self.max_exporters,
                        max_templates_per_exporter=self.max_templates_per_exporter,
                        max_template_fields=self.max_template_fields, pending_max_bytes=self.pending_max_bytes,
                        pending_max_age_s=self.pending_max_age_s,
                        template_max_bytes_per_exporter=self.template_max_bytes_per_exporter,
                        template_max_bytes=self.template_max_bytes, state_save_interval_s=self.state_save_interval_s)


@dataclass(frozen=True)
class SamplingRule:
    prefix: str
    """Exporter address or prefix this rule applies to, e.g. 192.0.2.1 or 10.0.0.0/8."""
    rate: int
    """1-in-N sampling rate."""
    override: bool = False
    """true: use this rate even when the exporter announces one; false: only when it announces none."""

    def validate(self, key: str) -> None:
        try:
            ipaddress.ip_network(self.prefix, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.prefix", self.prefix, "an IP address or prefix") from None
        if self.rate < 1:
            raise ConfigError(f"{key}.rate", self.rate, "an integer >= 1")


@dataclass(frozen=True)
class SamplingConfig:
    default_rate: int = 1
    """Rate assumed when an exporter announces none and no rule matches (1 = unsampled)."""
    rules: list[SamplingRule] = field(default_factory=list)
    """Per exporter or subnet defaults and overrides; the longest matching prefix wins."""

    def validate(self, key: str) -> None:
        if self.default_rate < 1:
            raise ConfigError(f"{key}.default_rate", self.default_rate, "an integer >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9108"
    """Prometheus metrics and status endpoint (loopback by default)."""
    enabled: bool = True
    """Serve metrics."""
    max_exporter_labels: int = 256
    """Exporters with their own metric label; further exporters are counted under exporter="other"."""

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.listen", self.listen)
        _check_positive(key, max_exporter_labels=self.max_exporter_labels)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""
    format: Literal["logfmt", "json"] = "logfmt"
    """Log line format (to stderr)."""


@dataclass(frozen=True)
class ServiceConfig:
    workers: int = 1
    """Worker processes sharing each UDP port with SO_REUSEPORT."""
    shutdown_timeout_s: float = 30.0
    """Longest time SIGTERM may take to flush before exit."""
    host_index: int = 0
    """This host's number (0-63) among the collector and rating hosts writing into one ClickHouse cluster: it goes
    into every batch id, so batches of different hosts never share an id (give each host its own)."""

    def validate(self, key: str) -> None:
        if self.workers < 1:
            raise ConfigError(f"{key}.workers", self.workers, "an integer >= 1")
        if not 0 <= self.host_index < 64:
            raise ConfigError(f"{key}.host_index", self.host_index, "0 to 63")


@dataclass(frozen=True)
class SubscribersConfig:
    static_file: str = ""
    """CSV or TOML file of static bindings (subscriber id, address or prefix, optional valid_from/valid_to);
    reloaded when it changes and on SIGHUP. Empty: none."""
    bindings_db: str = "state/bindings.sqlite"
    """Durable binding history (SQLite, relative to store.path), shared by the workers and the RADIUS listener."""
    refresh_interval_s: float = 1.0
    """How often a worker picks up binding changes made by the RADIUS listener or a file reload."""
    static_check_interval_s: float = 5.0
    """How often the static file's modification time is checked."""
    memory_horizon_s: float = 0.0
    """Bindings closed longer ago than this are dropped from the in-memory lookup index (hourly; they stay in
    bindings_db, and lookups of older times, e.g. flowmed reprocess, read the database). 0: mediation.max_lateness_s
    + mediation.max_flow_duration_s + one day, so live flows are always looked up in memory."""
    max_memory_bindings: int = 5_000_000
    """About the most bindings kept in the in-memory index (about 100 bytes each): past it the longest-closed are
    dropped earlier than memory_horizon_s (logged, counted). Open bindings are always kept. 0: no bound."""

    def validate(self, key: str) -> None:
        _check_positive(key, refresh_interval_s=self.refresh_interval_s,
                        static_check_interval_s=self.static_check_interval_s)
        if self.memory_horizon_s < 0:
            raise ConfigError(f"{key}.memory_horizon_s", self.memory_horizon_s, "0 (automatic) or more")
        if self.max_memory_bindings < 0:
            raise ConfigError(f"{key}.max_memory_bindings", self.max_memory_bindings, "0 (no bound) or more")

    def memory_horizon_ms(self, mediation: MediationConfig) -> int:
        """The effective in-memory horizon of the bindings (see ``memory_horizon_s``)."""
        if self.memory_horizon_s > 0:
            return int(self.memory_horizon_s * 1000)
        return int((mediation.max_lateness_s + mediation.max_flow_duration_s + 86400) * 1000)


@dataclass(frozen=True)
class RadiusClient:
    address: str
    """NAS address or prefix allowed to send accounting, e.g. 192.0.2.10 or 10.1.0.0/16."""
    secret_env: str = ""
    """Environment variable holding the shared secret (preferred)."""
    secret_file: str = ""
    """File whose first line is the shared secret."""
    secret: str = ""
    """The shared secret itself (discouraged: collector.toml is often world-readable)."""
    name: str = ""
    """Label for metrics and logs (default: the address)."""

    def shared_secret(self) -> bytes:
        """The secret from the environment, the file or the config, in that order."""
        if self.secret_env and os.environ.get(self.secret_env):
            return os.environ[self.secret_env].encode()
        if self.secret_file and Path(self.secret_file).exists():
            return Path(self.secret_file).read_text().splitlines()[0].encode()
        return self.secret.encode()

    def validate(self, key: str) -> None:
        try:
            ipaddress.ip_network(self.address, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.address", self.address, "an IP address or prefix") from None
        if not (self.secret_env or self.secret_file or self.secret):
            raise ConfigError(f"{key}.secret_env", self.secret_env, "one of secret_env, secret_file or secret")


RADIUS_ID_ATTRIBUTES = ("User-Name", "Class", "Calling-Station-Id", "Called-Station-Id", "NAS-Port-Id",
                        "Acct-Session-Id", "Framed-IP-Address")


@dataclass(frozen=True)
class RadiusConfig:
    enabled: bool = False
    """Run the RADIUS accounting listener (bindings from Start/Interim/Stop, usage from the counters)."""
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:1813"])
    """UDP endpoints for Accounting-Request."""
    clients: list[RadiusClient] = field(default_factory=list)
    """Allowed NASes and their shared secrets; requests from other addresses are dropped and counted."""
    subscriber_attribute: str = "User-Name"
    """Attribute holding the subscriber id: User-Name, Class, Calling-Station-Id, Called-Station-Id, NAS-Port-Id,
    Acct-Session-Id or Framed-IP-Address."""
    usage: bool = True
    """Turn Acct-Input/Output-Octets (+ Gigawords) into per-interval usage rows with source 'radius'."""
    max_queue: int = 8192
    """Requests waiting to be made durable; further requests are dropped (the NAS retransmits) and counted."""
    max_sessions: int = 2_000_000
    """Open accounting sessions tracked; beyond this a Start is refused (not answered) and counted."""
    session_timeout_s: float = 172_800.0
    """A session with no Interim-Update or Stop for this long is closed (its bindings end then) and forgotten, so
    sessions whose Stop was lost do not pile up; 0 keeps them until Stop or Accounting-On/Off. Keep it well above
    the NASes' interim interval."""
    max_event_age_s: float = 172_800.0
    """A request whose time (Event-Timestamp, else the receive time minus Acct-Delay-Time) is older than this is
    acknowledged but not applied, and counted (result too_old): a captured request re-sent later cannot bind an
    address in the past. Raise it if a NAS sends an older backlog after an outage; 0 accepts any age."""

    def validate(self, key: str) -> None:
        for i, ep in enumerate(self.listen):
            _check_endpoint(f"{key}.listen[{i}]", ep)
        if self.subscriber_attribute not in RADIUS_ID_ATTRIBUTES:
            raise ConfigError(f"{key}.subscriber_attribute", self.subscriber_attribute,
                              "one of " + ", ".join(RADIUS_ID_ATTRIBUTES))
        _check_positive(key, max_queue=self.max_queue, max_sessions=self.max_sessions)
        if self.max_event_age_s < 0:
            raise ConfigError(f"{key}.max_event_age_s", self.max_event_age_s, "0 (any age) or a number of seconds")


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
        for i, p in enumerate(self.ports):
            if not 0 <= p < 65536:
                raise ConfigError(f"{key}.ports[{i}]", p, "a port number")
        for i, p in enumerate(self.protocols):
            if not 0 <= p < 256:
                raise ConfigError(f"{key}.protocols[{i}]", p, "an IP protocol number")


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
    dedup_window_s: float = 900.0
    """Record keys are remembered this long (by flow end time) to drop resent or doubly exported records."""
    dedup_max_keys: int = 16_000_000
    """Keys kept at most, over two generations (about 16 bytes of memory per key); when the rate is so high that
    a generation fills before dedup_window_s, it is retired early and the window is shorter (counted)."""
    exporter_roles: list[ExporterRole] = field(default_factory=list)
    """Exporter roles for de-duplication (longest prefix wins; default primary)."""
    classes: list[ClassRule] = field(default_factory=list)
    """Traffic class rules, first match wins."""
    default_class: str = "default"
    """Class of traffic no rule matches."""

    def validate(self, key: str) -> None:
        _check_positive(key, interval_s=self.interval_s, max_lateness_s=self.max_lateness_s,
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


@dataclass(frozen=True)
class RatingConfig:
    plans_file: str = "plans.toml"
    """Tariff plans (TOML, see docs/rating.md); relative to store.path."""
    assignments_file: str = "assignments.csv"
    """Which subscriber is on which plan from when (CSV or TOML); re-read when it changes."""
    source: str = "flow"
    """Usage source that is billed (flow, radius or ipdr): usage rows of other sources are not rated."""
    extra_lateness_s: float = 60.0
    """An interval is rated once mediation.watermark_s plus this has passed after its end (the interval is closed)."""
    lookback_cycles: int = 1
    """Billing cycles before the current one that each run re-examines for late corrections (0: current only)."""
    schedule_interval_s: float = 300.0
    """How often `flowmed rate --follow` runs the rating job."""
    lease_ttl_s: float = 900.0
    """The rating lease (a row in the store) expires this long after it was last renewed by its holder."""
    target: Literal["auto", "store", "clickhouse"] = "auto"
    """Where usage is read from and current rated records are compared against (auto: as flowmed query)."""
    slice_subscribers: int = 20_000
    """A run rates this many subscribers at a time (by hash), which bounds its memory."""
    metrics_listen: str = ""
    """Where `flowmed rate --follow` serves Prometheus /metrics and /status (host:port; empty: not served)."""

    def validate(self, key: str) -> None:
        _check_positive(key, schedule_interval_s=self.schedule_interval_s, lease_ttl_s=self.lease_ttl_s,
                        slice_subscribers=self.slice_subscribers)
        if self.extra_lateness_s < 0:
            raise ConfigError(f"{key}.extra_lateness_s", self.extra_lateness_s, "a number >= 0")
        if self.lookback_cycles < 0:
            raise ConfigError(f"{key}.lookback_cycles", self.lookback_cycles, "an integer >= 0")
        if self.source not in ("flow", "radius", "ipdr"):
            raise ConfigError(f"{key}.source", self.source, "flow, radius or ipdr")
        if self.metrics_listen:
            _check_endpoint(f"{key}.metrics_listen", self.metrics_listen)


@dataclass(frozen=True)
class IpdrExporter:
    address: str
    """CMTS IPDR/SP endpoint to connect to, e.g. 192.0.2.1:4737 or [2001:db8::1]:4737."""
    name: str = ""
    """Label for logs, metrics and state (default: the address)."""
    ipv6_bare: bool = False
    """This CMTS encodes ipV6Addr as a bare 16 bytes (2005 reference code) instead of length + bytes."""

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.address", self.address)


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
            _check_endpoint(f"{key}.listen", self.listen)
        for i, p in enumerate(self.allow):
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.allow[{i}]", p, "an IP address or prefix") from None
        _check_positive(key, keepalive_s=self.keepalive_s, ack_time_fraction=self.ack_time_fraction,
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


DOT_IPDR_FIELDS = ("user_id", "user_name", "source_ip", "source_port", "public_ip", "public_port", "destination_ip",
                   "destination_port", "start_date", "start_time", "end_date", "end_time", "protocol", "bytes",
                   "exporter", "allocation_start_date", "allocation_start_time", "allocation_end_date",
                   "allocation_end_time", "customer_name", "customer_address", "customer_phone", "customer_email")
"""The DoT IPDR and NAT log parameters in the mandated order (``flowmed ipdr-report --format`` default)."""


@dataclass(frozen=True)
class DeterministicNat:
    inside: str
    """Inside IPv4 prefix the rule maps, e.g. 100.64.0.0/22."""
    outside: str
    """Outside IPv4 prefix it maps to, e.g. 203.0.113.0/28."""
    ports_per_host: int
    """Ports of each inside host's block."""
    first_port: int = 1024
    """First port of the first block on each outside address."""

    def validate(self, key: str) -> None:
        nets = []
        for name in ("inside", "outside"):
            try:
                net = ipaddress.ip_network(getattr(self, name), strict=False)
            except ValueError:
                raise ConfigError(f"{key}.{name}", getattr(self, name), "an IPv4 prefix") from None
            if net.version != 4:
                raise ConfigError(f"{key}.{name}", getattr(self, name), "an IPv4 prefix")
            nets.append(net)
        if not 0 < self.first_port < 65536:
            raise ConfigError(f"{key}.first_port", self.first_port, "a port number")
        if not 0 < self.ports_per_host <= 65536 - self.first_port:
            raise ConfigError(f"{key}.ports_per_host", self.ports_per_host, "1 .. 65536 - first_port")
        per_address = (65536 - self.first_port) // self.ports_per_host
        if nets[0].num_addresses > nets[1].num_addresses * per_address:
            raise ConfigError(f"{key}.inside", self.inside,
                              f"at most {nets[1].num_addresses * per_address} hosts for {self.outside} with "
                              f"{self.ports_per_host} ports each")


@dataclass(frozen=True)
class ComplianceConfig:
    enabled: bool = True
    """Write ip_detail_records (one compliance record per flow) and nat_events (CGNAT logging) with mediation."""
    retention_days: int = 730
    """Keep ip_detail_records and nat_events this long (whole partitions are dropped; 0 keeps them forever)."""
    nat_event_codes: Literal["rfc8158", "draft"] = "rfc8158"
    """How natEvent (IE 230) codes 10-13 are read: RFC 8158 (10/11 NAT64 BIB create/delete, 12 ports exhausted) or
    the pre-RFC draft Juniper and older Cisco use (10 ports exhausted, 12/13 address binding create/delete). Codes
    1-9 and port-block records (14/16 allocate, 15/17 release, recognised by their port-range fields) read the same
    in both."""
    nat_from_flows: bool = True
    """Also log the translation seen in flow records that carry post-NAT fields (IEs 225/227) as nat_events."""
    nat_lookback_s: int = 86400
    """How far before the asked instant `flowmed trace` looks for the NAT session or port block that covers it (the
    NAT device must re-log longer-held blocks within this, as PBA interim logging does)."""
    directory_file: str = ""
    """Subscriber directory CSV (subscriber_id,name,address,phone,email) joined into reports at export time."""
    report_fields: list[str] = field(default_factory=lambda: list(DOT_IPDR_FIELDS))
    """Columns of `flowmed ipdr-report --layout dot` in order (any of the generic report's column names)."""
    deterministic: list[DeterministicNat] = field(default_factory=list)
    """Deterministic NAT (RFC 7422) rules: inside host i of a rule uses outside address i // n, ports first_port +
    (i % n) * ports_per_host onwards (n = (65536 - first_port) // ports_per_host); the trace computes the holder of
    an outside address and port from them, as the NAT device does, without a log."""

    def validate(self, key: str) -> None:
        if self.retention_days < 0:
            raise ConfigError(f"{key}.retention_days", self.retention_days, "days >= 0 (0 keeps forever)")
        _check_positive(key, nat_lookback_s=self.nat_lookback_s)
        if not self.report_fields:
            raise ConfigError(f"{key}.report_fields", self.report_fields, "at least one field")


CONSOLE_HASH_SCHEMES = ("scrypt", "pbkdf2_sha256")
"""Password hash schemes of ``console.users`` (``flowmed console --hash-password`` writes scrypt)."""


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    """User name for HTTP basic authentication."""
    password_hash: str
    """The password's hash as `flowmed console --hash-password` prints it (scrypt$... or pbkdf2_sha256$...), never
    the password itself."""

    def validate(self, key: str) -> None:
        if not self.name or ":" in self.name:
            raise ConfigError(f"{key}.name", self.name, "a non-empty user name without ':'")
        parts = self.password_hash.split("$")
        if parts[0] not in CONSOLE_HASH_SCHEMES or len(parts) != {"scrypt": 6, "pbkdf2_sha256": 4}[parts[0]]:
            raise ConfigError(f"{key}.password_hash", "<hidden>",
                              "a hash printed by `flowmed console --hash-password` (scrypt$N$r$p$salt$hash)")


@dataclass(frozen=True)
class ConsoleConfig:
    listen: str = "127.0.0.1:9109"
    """Where `flowmed console` (the read-only web console) serves; an address other than loopback needs auth."""
    target: Literal["auto", "store", "clickhouse"] = "auto"
    """What the console reads: the embedded store, the ClickHouse server, or auto (as flowmed query)."""
    auth: Literal["none", "basic", "proxy"] = "none"
    """none (loopback only), basic (HTTP basic against users) or proxy (a reverse proxy authenticates and names the
    user in proxy_header; only requests from trusted_proxies are accepted)."""
    users: list[ConsoleUser] = field(default_factory=list)
    """Users of auth = "basic"."""
    proxy_header: str = "X-Forwarded-User"
    """Header holding the authenticated user name (auth = "proxy")."""
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Addresses or prefixes of the reverse proxies (auth = "proxy"); requests from elsewhere are refused."""
    max_window_h: int = 168
    """Longest time window a page reads, in hours (a subscriber's page reads one billing cycle whatever this is)."""
    max_rows: int = 2_000_000
    """The traffic page refuses a window holding more rows of flows than this (counted first) and asks for a shorter
    one: a page reads about 2 million rows a second on 2 cores (docs/console.md)."""
    top_n: int = 10
    """Entries per top list on the traffic page (the rest is shown as "other")."""

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.listen", self.listen)
        _check_positive(key, max_window_h=self.max_window_h, max_rows=self.max_rows, top_n=self.top_n)
        if self.top_n > 100:
            raise ConfigError(f"{key}.top_n", self.top_n, "at most 100")
        host = split_endpoint(self.listen)[0]
        if self.auth == "none" and not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"{key}.auth", self.auth, f"basic or proxy: {self.listen} is not a loopback address, "
                              "and the console never serves other hosts without authentication")
        if self.auth == "basic" and not self.users:
            raise ConfigError(f"{key}.users", self.users, "at least one user with auth = \"basic\"")
        if self.auth == "proxy":
            if not self.trusted_proxies:
                raise ConfigError(f"{key}.trusted_proxies", self.trusted_proxies,
                                  "at least one proxy address with auth = \"proxy\"")
            if not self.proxy_header.strip():
                raise ConfigError(f"{key}.proxy_header", self.proxy_header, "a header name")
        for i, p in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.trusted_proxies[{i}]", p, "an IP address or prefix") from None


@dataclass(frozen=True)
class Config:
    """The whole of collector.toml."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    subscribers: SubscribersConfig = field(default_factory=SubscribersConfig)
    radius: RadiusConfig = field(default_factory=RadiusConfig)
    mediation: MediationConfig = field(default_factory=MediationConfig)
    rating: RatingConfig = field(default_factory=RatingConfig)
    ipdr: IpdrConfig = field(default_factory=IpdrConfig)
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)

    def data_path(self, relative: str) -> Path:
        """A path from the config, resolved against store.path when relative."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.store.path) / p


def load(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or defaults when None and no collector.toml is present), apply ``--set`` overrides, validate."""
    tree: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("--config", str(path), "an existing configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", str(path), f"valid TOML ({exc})") from None
    apply_overrides(tree, list(overrides))
    return build(Config, tree)
