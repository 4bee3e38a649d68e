"""Deterministic NAT (RFC 7422): the outside address and port block of an inside host follow from configuration,
so a NAT device that uses it logs nothing and flowmed computes the mapping the same way.

A rule maps the inside IPv4 prefix onto the outside prefix: with ``n = (65536 - first_port) // ports_per_host``
blocks per outside address, inside host ``i`` (its offset in the inside prefix) uses outside address ``i // n`` of
the outside prefix and ports ``first_port + (i % n) * ports_per_host`` to that plus ``ports_per_host - 1``. That is
the sequential assignment RFC 7422 section 2 describes; devices that interleave differently need their own rule form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mediation.compliance.settings import DeterministicNatRule


@dataclass(frozen=True)
class Mapping:
    """The deterministic mapping of one inside host: its outside address and port block."""

    inside: str
    outside: str
    first_port: int
    last_port: int


class DeterministicNat:
    """The configured rules (``compliance.deterministic``), looked up both ways."""

    def __init__(self, rules: Iterable[DeterministicNatRule]) -> None:
        self.rules = []
        for r in rules:
            inside = ipaddress.ip_network(r.inside, strict=False)
            outside = ipaddress.ip_network(r.outside, strict=False)
            per_address = (65536 - r.first_port) // r.ports_per_host
            self.rules.append((inside, outside, r.first_port, r.ports_per_host, per_address))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def inside_of(self, outside: str, port: int) -> Mapping | None:
        """Which inside host a deterministic NAT gives ``outside``:``port``; None when no rule covers them."""
        try:
            addr = ipaddress.ip_address(outside)
        except ValueError:
            return None
        for inside, out, first, per_host, per_address in self.rules:
            if addr.version != 4 or addr not in out or port < first:
                continue
            block = (port - first) // per_host
            if block >= per_address:
                continue
            i = (int(addr) - int(out.network_address)) * per_address + block
            if i >= inside.num_addresses:
                continue
            start = first + block * per_host
            return Mapping(str(inside.network_address + i), str(addr), start, start + per_host - 1)
        return None

    def outside_of(self, inside: str) -> Mapping | None:
        """The outside address and port block of an inside host; None when no rule covers it."""
        try:
            addr = ipaddress.ip_address(inside)
        except ValueError:
            return None
        for net, out, first, per_host, per_address in self.rules:
            if addr.version != 4 or addr not in net:
                continue
            i = int(addr) - int(net.network_address)
            start = first + (i % per_address) * per_host
            return Mapping(str(addr), str(out.network_address + i // per_address), start, start + per_host - 1)
        return None
