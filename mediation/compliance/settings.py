"""The ``[compliance]`` section of collector.toml (see :mod:`mediation.settings`).

``DeterministicNatRule`` is one ``[[compliance.deterministic]]`` entry;
:class:`mediation.compliance.deterministic.DeterministicNat` computes the holder of an outside address and port from
a list of them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from decoders.settings import ConfigError, check_positive

DOT_IPDR_FIELDS = ("user_id", "user_name", "source_ip", "source_port", "public_ip", "public_port", "destination_ip",
                   "destination_port", "start_date", "start_time", "end_date", "end_time", "protocol", "bytes",
                   "exporter", "allocation_start_date", "allocation_start_time", "allocation_end_date",
                   "allocation_end_time", "customer_name", "customer_address", "customer_phone", "customer_email")
"""The DoT IPDR and NAT log parameters in the mandated order (``flowmed ipdr-report --format`` default)."""


@dataclass(frozen=True)
class DeterministicNatRule:
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
        for name, prefix in (("inside", self.inside), ("outside", self.outside)):
            try:
                net = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.{name}", prefix, "an IPv4 prefix") from None
            if net.version != 4:
                raise ConfigError(f"{key}.{name}", prefix, "an IPv4 prefix")
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
    deterministic: list[DeterministicNatRule] = field(default_factory=list)
    """Deterministic NAT (RFC 7422) rules: inside host i of a rule uses outside address i // n, ports first_port +
    (i % n) * ports_per_host onwards (n = (65536 - first_port) // ports_per_host); the trace computes the holder of
    an outside address and port from them, as the NAT device does, without a log."""

    def validate(self, key: str) -> None:
        if self.retention_days < 0:
            raise ConfigError(f"{key}.retention_days", self.retention_days, "days >= 0 (0 keeps forever)")
        check_positive(key, nat_lookback_s=self.nat_lookback_s)
        if not self.report_fields:
            raise ConfigError(f"{key}.report_fields", self.report_fields, "at least one field")
