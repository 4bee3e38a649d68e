"""The ``[rating]`` section of collector.toml, and what the rating job reads of the whole configuration.

As on the floors below (:mod:`storage.settings`, :mod:`mediation.settings`), the section is a frozen dataclass whose
field docstrings are its documentation (``collector.configdoc`` renders them into collector.toml);
:mod:`collector.config` reads the TOML and assembles it into its ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from decoders.settings import ConfigError, check_endpoint, check_positive
from mediation.settings import MediationConfig
from storage.settings import StorageSettings


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
        check_positive(key, schedule_interval_s=self.schedule_interval_s, lease_ttl_s=self.lease_ttl_s,
                        slice_subscribers=self.slice_subscribers)
        if self.extra_lateness_s < 0:
            raise ConfigError(f"{key}.extra_lateness_s", self.extra_lateness_s, "a number >= 0")
        if self.lookback_cycles < 0:
            raise ConfigError(f"{key}.lookback_cycles", self.lookback_cycles, "an integer >= 0")
        if self.source not in ("flow", "radius", "ipdr"):
            raise ConfigError(f"{key}.source", self.source, "flow, radius or ipdr")
        if self.metrics_listen:
            check_endpoint(f"{key}.metrics_listen", self.metrics_listen)


class HostIdentity(Protocol):
    """The ``[service]`` setting the rating job reads: this host's number among the hosts of a cluster."""

    @property
    def host_index(self) -> int: ...


class RatingSettings(StorageSettings, Protocol):
    """What the rating job reads of the whole configuration (``collector.config.Config`` has it)."""

    @property
    def rating(self) -> RatingConfig: ...

    @property
    def mediation(self) -> MediationConfig: ...

    @property
    def service(self) -> HostIdentity: ...
