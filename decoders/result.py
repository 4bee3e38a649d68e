"""``DecodeResult``: what one decode call of a flow decoder (NetFlow/IPFIX or sFlow) produced.

Counters are keyed per exporter (its address as given to ``decode``); the decoders fill them, the collector turns
them into metrics. :class:`decoders.sflow.decoder.SflowResult` extends it with sFlow's own counters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

ExporterVersion = tuple[str, int]
"""(exporter, version): version 5, 9, 10 (sFlow: 5), or 0 when unknown."""
ExporterReason = tuple[str, str]
"""(exporter, reason or limit name)."""


@dataclass
class DecodeResult:
    """What one :meth:`decoders.netflow.decoder.FlowDecoder.decode` call produced. Counters are per exporter
    (address as given)."""

    flows: dict[str, np.ndarray]
    n_flows: int = 0
    datagrams: Counter[ExporterVersion] = field(default_factory=Counter)
    """(exporter, version) -> datagrams; version 5, 9, 10, or 0 when unknown."""
    records: Counter[ExporterVersion] = field(default_factory=Counter)
    """(exporter, version) -> flow records decoded (options records are not flows)."""
    errors: Counter[ExporterReason] = field(default_factory=Counter)
    """(exporter, reason) -> count; see :mod:`decoders.errors` for reasons."""
    sequence_lost: Counter[str] = field(default_factory=Counter)
    """exporter -> lost units (v9: datagrams; v5 and IPFIX: records)."""
    sequence_resets: Counter[str] = field(default_factory=Counter)
    """exporter -> sequence restarts detected (exporter reboot or renumbering)."""
    limit_hits: Counter[ExporterReason] = field(default_factory=Counter)
    """(exporter, limit name) -> times a bound in :class:`decoders.netflow.state.DecoderLimits` refused something."""
    templates_learned: Counter[str] = field(default_factory=Counter)
    """exporter -> templates added or changed (a refresh of an identical template is not counted)."""
    pending_held: Counter[str] = field(default_factory=Counter)
    """exporter -> data sets held for a missing template."""
    pending_replayed: Counter[str] = field(default_factory=Counter)
    """exporter -> held data sets decoded once their template arrived."""
    pending_dropped: Counter[str] = field(default_factory=Counter)
    """exporter -> held data sets dropped (too old or over the byte bound); also in ``errors``."""
