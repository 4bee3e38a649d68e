"""Admission of flow datagrams before decoding: the exporter allowlist and a per-exporter rate limit.

Both are off by default (``listen.allow = []``, ``listen.exporter_rate_limit = 0``), and then :func:`make_admission`
returns None and the receive path pays nothing. When on, :meth:`Admission.filter` runs once per batch with a loop
per datagram (no per-record work): a dictionary lookup of the exporter's verdict (an address is parsed and matched
against the prefixes once, the first time it is seen) and, with a rate limit, a token bucket per exporter. A bucket
refills at ``exporter_rate_limit`` datagrams per second up to ``exporter_rate_burst``, so an exporter flooding the
collector loses its own excess datagrams before decoding and cannot starve the others of decoder time, memory or
sink capacity.

Refused datagrams are counted per exporter and reason (``not_allowed``, ``rate_limited``) in :attr:`refused`; the
pipeline moves them to ``flowmed_datagrams_refused_total`` and logs them rate-limited.

Bounds: verdicts and buckets are kept for at most ``max_exporters`` addresses (``decoder.max_exporters``); past
that the oldest are forgotten (a forgotten exporter starts again with a full bucket, which is the same as being
new; an allowlist verdict is just recomputed).
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Sequence

from collector.config import Config
from collector.logging import RateLimiter
from collector.metrics import Metrics

Datagram = tuple[bytes, str, int]

NOT_ALLOWED = "not_allowed"
RATE_LIMITED = "rate_limited"


def parse_prefixes(prefixes: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Addresses or prefixes (``192.0.2.1``, ``10.0.0.0/8``, ``2001:db8::/32``) as networks."""
    return [ipaddress.ip_network(p, strict=False) for p in prefixes]


def address_allowed(host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``host`` is inside one of ``networks`` (IPv4-mapped IPv6 addresses match IPv4 prefixes)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


class Admission:
    """Allowlist plus per-exporter token buckets for one receiving process (see the module docstring).

    Args:
        allow: addresses or prefixes allowed to send; empty allows every exporter.
        rate: datagrams per second per exporter; 0 disables the rate limit.
        burst: bucket size in datagrams (what an exporter may send at once after a quiet spell); 0 means
            ``max(2 * rate, 1)``.
        max_exporters: addresses whose verdict and bucket are remembered.
    """

    def __init__(self, allow: Sequence[str] = (), rate: float = 0.0, burst: float = 0.0,
                 max_exporters: int = 4096) -> None:
        self.networks = parse_prefixes(allow)
        self.rate = float(rate)
        self.burst = float(burst) if burst > 0 else max(2.0 * self.rate, 1.0)
        self.max_exporters = max_exporters
        self._verdict: OrderedDict[str, bool] = OrderedDict()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # exporter -> [tokens, last refill (s)]
        self.refused: Counter[tuple[str, str]] = Counter()
        """(exporter, reason) -> datagrams refused since the last :meth:`take_refused`."""
        self.admitted = 0
        self.refused_total = 0

    def allowed(self, exporter: str) -> bool:
        """The allowlist verdict for ``exporter`` (cached)."""
        if not self.networks:
            return True
        verdict = self._verdict.get(exporter)
        if verdict is None:
            verdict = address_allowed(exporter, self.networks)
            self._verdict[exporter] = verdict
            if len(self._verdict) > self.max_exporters:
                self._verdict.popitem(last=False)
        return verdict

    def filter(self, batch: list[Datagram], now_s: float) -> list[Datagram]:
        """The datagrams of ``batch`` that are admitted at ``now_s`` (seconds, any monotonic clock)."""
        out: list[Datagram] = []
        keep = out.append
        refused = self.refused
        rate, burst, buckets = self.rate, self.burst, self._buckets
        for item in batch:
            exporter = item[1]
            if self.networks and not self.allowed(exporter):
                refused[(exporter, NOT_ALLOWED)] += 1
                continue
            if rate > 0:
                bucket = buckets.get(exporter)
                if bucket is None:
                    bucket = buckets[exporter] = [burst, now_s]
                    if len(buckets) > self.max_exporters:
                        buckets.popitem(last=False)
                else:
                    tokens = bucket[0] + (now_s - bucket[1]) * rate
                    bucket[0] = tokens if tokens < burst else burst
                    bucket[1] = now_s
                if bucket[0] < 1.0:
                    refused[(exporter, RATE_LIMITED)] += 1
                    continue
                bucket[0] -= 1.0
            keep(item)
        self.admitted += len(out)
        self.refused_total += len(batch) - len(out)
        return out

    def take_refused(self) -> Counter[tuple[str, str]]:
        """The refusals counted since the previous call (for metrics and the log)."""
        taken, self.refused = self.refused, Counter()
        return taken


def make_admission(config: Config) -> Admission | None:
    """The admission stage for ``config.listen`` (None when neither an allowlist nor a rate limit is set)."""
    listen = config.listen
    allow = list(listen.allow)
    rate = float(listen.exporter_rate_limit)
    if not allow and rate <= 0:
        return None
    return Admission(allow, rate, float(listen.exporter_rate_burst), config.decoder.max_exporters)


def admit(admission: Admission, batch: list[Datagram], metrics: Metrics, errors_log: RateLimiter) -> list[Datagram]:
    """Filter ``batch`` through ``admission`` and account the refusals: metrics per exporter (label-capped) and
    reason, and a rate-limited log line per (exporter, reason). Used by :class:`collector.pipeline.Pipeline`."""
    import time

    kept = admission.filter(batch, time.monotonic())
    if len(kept) != len(batch):
        label = metrics.exporter_label
        for (exporter, reason), count in admission.take_refused().items():
            metrics.datagrams_refused.labels(label(exporter), reason).inc(count)
            errors_log.log("warning", "datagrams refused before decoding", key=("refused", exporter, reason),
                           count=count, exporter=exporter, reason=reason)
    return kept
