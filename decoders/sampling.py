"""Sampling rates: announced by the exporter (options data or the record itself) or configured.

Where a rate comes from, per record, most specific first:

1. a configured **override** for the exporter's address or subnet (``SamplingPolicy.rules`` with override=True);
2. a rate in the data record itself (samplingInterval 34, samplerRandomInterval 50, samplingPacketInterval/Space
   305/306, samplingSize/Population 309/310; Huawei NetStream and others do this);
3. options data for the record's sampler: (exporter, domain, samplerId 48 or selectorId 302) -> rate, so two
   samplers in one observation domain keep their own rates (RFC 7270, RFC 5477, RFC 3954 section 8);
4. options data for the whole domain (no sampler id in the options record; or, when the domain announced exactly
   one keyed sampler, that one);
5. a configured default for the exporter/subnet, else ``SamplingPolicy.default_rate``.

A rate is a 1-in-N integer >= 1; 0 means "not announced" inside this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import numpy as np

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SamplerKey = tuple[int, int] | None
"""(48 or 302, id) for a keyed sampler, None for the domain-wide rate."""


@dataclass(frozen=True)
class SamplingPolicy:
    """Configured sampling: a default and per exporter/subnet rules ``(network, rate, override)``.

    The longest matching prefix wins. ``override=True`` applies the rate even when the exporter announces one;
    ``override=False`` applies it only when the exporter announces none.
    """

    default_rate: int = 1
    rules: Iterable[tuple[Network | str, int, bool]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        rules = tuple((ipaddress.ip_network(net, strict=False), int(rate), bool(override))
                      for net, rate, override in self.rules)
        if self.default_rate < 1 or any(rate < 1 for _, rate, _ in rules):
            raise ValueError("sampling rates must be integers >= 1")
        object.__setattr__(self, "rules", tuple(sorted(rules, key=lambda r: -r[0].prefixlen)))

    def for_exporter(self, exporter: str) -> tuple[int, bool]:
        """(rate, override) for an exporter address; (default_rate, False) when no rule matches."""
        try:
            addr = ipaddress.ip_address(exporter)
        except ValueError:
            return self.default_rate, False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        rules = cast(tuple[tuple[Network, int, bool], ...], self.rules)  # parsed by __post_init__
        for net, rate, override in rules:
            if addr.version == net.version and addr in net:
                return rate, override
        return self.default_rate, False


def rate_from_values(get: Callable[[int], int | None]) -> int:
    """The rate announced by one options or data record (``get(ie)`` -> value or None); 0 if none."""
    for ie_id in (34, 50):
        value = get(ie_id)
        if value:
            return int(value)
    interval, space = get(305), get(306)
    if interval:
        return max(1, round((interval + (space or 0)) / interval))
    size, population = get(309), get(310)
    if size and population:
        return max(1, round(population / size))
    return 0


def rate_from_columns(get: Callable[[int], np.ndarray | None], n: int) -> np.ndarray | None:
    """Vectorised :func:`rate_from_values` over data records (uint64, 0 = none); None if no rate element."""
    out: np.ndarray | None = None

    def fill(values: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.zeros(n, dtype=np.uint64)
        np.copyto(out, values.astype(np.uint64), where=(out == 0))

    for ie_id in (34, 50):
        v = get(ie_id)
        if v is not None:
            fill(v)
    interval, space = get(305), get(306)
    if interval is not None:
        iv = interval.astype(np.float64)
        sp = space.astype(np.float64) if space is not None else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(iv > 0, np.maximum(1.0, np.round((iv + sp) / np.where(iv > 0, iv, 1.0))), 0.0)
        fill(np.minimum(r, 2.0**32 - 1).astype(np.uint64))
    size, population = get(309), get(310)
    if size is not None and population is not None:
        sz = size.astype(np.float64)
        r = np.where(sz > 0, np.maximum(1.0, np.round(population / np.where(sz > 0, sz, 1.0))), 0.0)
        fill(np.minimum(r, 2.0**32 - 1).astype(np.uint64))
    return out


class SamplerTable:
    """Rates announced in options data by one exporter: (domain, sampler key) -> rate, bounded."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self.rates: dict[tuple[int, SamplerKey], int] = {}

    def set(self, domain: int, key: SamplerKey, rate: int) -> bool:
        """Record a rate; False (and nothing stored) when the table is full."""
        k = (domain, key)
        if k not in self.rates and len(self.rates) >= self.max_entries:
            return False
        self.rates[k] = min(int(rate), 2**32 - 1)
        return True

    def domain_rate(self, domain: int) -> int:
        """Domain-wide rate, or the only keyed sampler's rate when the domain announced exactly one; 0 if none."""
        rate = self.rates.get((domain, None))
        if rate:
            return rate
        keyed = [r for (d, k), r in self.rates.items() if d == domain and k is not None]
        return keyed[0] if len(keyed) == 1 else 0

    def keyed_rates(self, domain: int, key_ie: int, ids: np.ndarray) -> np.ndarray:
        """Per record rate for sampler/selector ids (0 where unknown), looked up once per distinct id."""
        uniq, inverse = np.unique(ids, return_inverse=True)
        table = np.array([self.rates.get((domain, (key_ie, int(u))), 0) for u in uniq], dtype=np.uint64)
        return table[inverse]


def resolve(announced: np.ndarray, policy_rate: np.ndarray, override: np.ndarray) -> np.ndarray:
    """Final uint32 rate per record from announced (0 = none), configured rate and override flag."""
    rate = np.where(override | (announced == 0), policy_rate, announced)
    if np.ndim(rate) == 0:  # one rate for every record: a 0-d array, broadcast where it is used
        return np.asarray(min(max(int(rate), 1), 2**32 - 1), dtype=np.uint32)
    return np.clip(rate, 1, 2**32 - 1).astype(np.uint32)
