"""The ``[subscribers]`` and ``[radius]`` sections of collector.toml (see :mod:`mediation.settings`)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from decoders.settings import ConfigError, check_endpoint, check_positive
from mediation.settings import MediationConfig


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
        check_positive(key, refresh_interval_s=self.refresh_interval_s,
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
            check_endpoint(f"{key}.listen[{i}]", ep)
        if self.subscriber_attribute not in RADIUS_ID_ATTRIBUTES:
            raise ConfigError(f"{key}.subscriber_attribute", self.subscriber_attribute,
                              "one of " + ", ".join(RADIUS_ID_ATTRIBUTES))
        check_positive(key, max_queue=self.max_queue, max_sessions=self.max_sessions)
        if self.max_event_age_s < 0:
            raise ConfigError(f"{key}.max_event_age_s", self.max_event_age_s, "0 (any age) or a number of seconds")
