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
from typing import Any, Literal

from collector.configtree import ConfigError, apply_overrides, build
from decoders.settings import check_endpoint, check_positive
from mediation.compliance.settings import DOT_IPDR_FIELDS, ComplianceConfig, DeterministicNatRule
from mediation.ipdr.settings import IpdrConfig, IpdrExporter
from mediation.settings import ClassRule, ExporterRole, MediationConfig
from mediation.subscribers.settings import RADIUS_ID_ATTRIBUTES, RadiusClient, RadiusConfig, SubscribersConfig
from rating.settings import RatingConfig
from storage.settings import OutputConfig, SpoolConfig, StoreConfig

__all__ = [  # the sections other layers own, assembled here (and importable from here, as before)
    "DOT_IPDR_FIELDS", "RADIUS_ID_ATTRIBUTES", "ClassRule", "ComplianceConfig", "Config", "ConfigError",
    "DeterministicNatRule", "ExporterRole", "IpdrConfig", "IpdrExporter", "MediationConfig", "RadiusClient",
    "RadiusConfig", "RatingConfig", "SubscribersConfig", "load", "split_endpoint",
]

DEFAULT_CONFIG_FILE = "collector.toml"


def split_endpoint(value: str) -> tuple[str, int]:
    """``"[::1]:2055"`` -> ``("::1", 2055)``."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


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
            check_endpoint(f"{key}.udp[{i}]", ep)
        for i, ep in enumerate(self.sflow):
            check_endpoint(f"{key}.sflow[{i}]", ep)
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
        check_positive(key, rcvbuf_bytes=self.rcvbuf_bytes, batch_datagrams=self.batch_datagrams,
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
        check_positive(key, max_exporters=self.max_exporters,
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
        check_endpoint(f"{key}.listen", self.listen)
        check_positive(key, max_exporter_labels=self.max_exporter_labels)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""
    format: Literal["logfmt", "json"] = "logfmt"
    """Log line format (to stderr)."""

    def validate(self, key: str) -> None:
        """Nothing beyond the types to check: both keys are Literals, checked as they are read."""


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
        check_endpoint(f"{key}.listen", self.listen)
        check_positive(key, max_window_h=self.max_window_h, max_rows=self.max_rows, top_n=self.top_n)
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

    def validate(self, key: str) -> None:
        """Nothing across sections to check: every section checked itself as it was built."""

    def data_path(self, relative: str) -> Path:
        """A path from the config, resolved against store.path when relative."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.store.path) / p


def load(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or defaults when None and no collector.toml is present), apply ``--set`` overrides, validate."""
    tree: dict[str, Any] = {}
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
