"""``SflowDecoder``: sFlow v5 datagrams in, ``flows`` and ``interface_counters`` columns and counters out (sans-I/O).

Theory of operation. :meth:`SflowDecoder.decode` takes a batch of ``(payload, exporter, received_ms)`` like
:meth:`decoders.netflow.decoder.FlowDecoder.decode`:

1. The payloads are joined into one buffer and walked by the compiled kernels (:mod:`decoders.sflow.kernel`):
   datagram headers and sample boundaries, then all flow samples, then all counter samples, each into preallocated
   columns (a flow sample is one row of ``flows``; a counter sample with interface counters one row of
   ``interface_counters``).
2. With numpy, per batch: exporter addresses, times, the sampling rate (announced in every flow sample; a configured
   override or default applies as for NetFlow, :mod:`decoders.sampling`), upscaled counters (a flow sample stands for
   ``sampling_rate`` packets of its frame length), errors and skipped structures per exporter.
3. Loss accounting, a Python step per *key* (never per sample): datagram sequence numbers per (agent, sub-agent),
   sample sequence numbers per data source, and the growth of each flow data source's sample pool and drop counter.

Errors are counted per (exporter, reason) and cost only the structure they are in (:data:`wire.REASONS`); ``decode``
never raises for bad input. Every state an exporter can grow is bounded by :class:`SflowLimits`.

A little over 500 lines on purpose: one decoder and the three numpy passes above (columns, counters, loss
accounting) over the same per-batch arrays of the kernels; the accounting is the only part that could stand alone,
and it is one method that reads the decoder's per-exporter state.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from decoders.digest import digests, exporter_seed
from decoders.netflow.templated import Joiner
from decoders.result import DecodeResult, ExporterReason
from decoders.sampling import SamplingPolicy, resolve
from decoders.schema import FLOWS
from decoders.sequence import SequenceTracker
from decoders.sflow import kernel as k
from decoders.sflow import wire as w
from decoders.sflow.tables import INTERFACE_COUNTERS

__all__ = ["SflowDecoder", "SflowLimits", "SflowResult"]

MOD = 1 << 32
SCRATCH_KEEP = 1 << 17
"""Flow samples per batch whose working columns are kept between batches (about 36 MiB); larger batches get their
own."""
_PADDING = bytes(256)
_FLOW_COLUMNS = [c for c in FLOWS.columns if c.name != "batch_id"]
_COUNTER_COLUMNS = [c for c in INTERFACE_COUNTERS.columns if c.name != "batch_id"]


@dataclass(frozen=True)
class SflowLimits:
    """Bounds on what exporters (or an attacker spoofing them) can make the sFlow decoder hold or walk."""

    max_exporters: int = 4096
    """Exporters (datagram source addresses) tracked at once; datagrams from further ones are counted and dropped."""
    max_agents_per_exporter: int = 64
    """(agent address, sub-agent) pairs tracked per exporter for datagram sequence numbers; further ones are
    decoded but not tracked (``limit_hits``)."""
    max_sources_per_exporter: int = 4096
    """Data sources (per agent, sub-agent, flow or counter) tracked per exporter for sample sequence numbers, sample
    pools and drops; further ones are decoded but not tracked (``limit_hits``)."""
    max_samples_per_datagram: int = 1024
    """Samples walked per datagram (a 64 KiB datagram holds at most 8191 empty ones); the rest are counted."""
    max_records_per_sample: int = 64
    """Records walked per sample; the rest are counted."""
    exporter_idle_ms: int = 7 * 86_400_000
    """An exporter silent for this long is forgotten by :meth:`SflowDecoder.expire`, with its agents and sources."""


@dataclass
class SflowResult(DecodeResult):
    """A :class:`decoders.netflow.decoder.DecodeResult` (``flows`` columns and the same per-exporter counters, version
    ``SFLOW_VERSION``; ``sequence_lost`` counts datagrams) plus what only sFlow has."""

    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Per ``flows`` row, values the ``flows`` table has no column for: ``agent`` (S16), ``sample_sequence``,
    ``source_id_type``, ``source_id_index``, ``vlan`` (outer 802.1Q tag of the sampled header), ``src_vlan`` and
    ``dst_vlan`` (extended switch), ``src_peer_as``, ``next_hop_as``, ``local_pref``, ``communities`` (how many;
    extended gateway), ``stripped`` and ``ip_version``."""
    interface_counters: dict[str, np.ndarray] = field(default_factory=dict)
    """Columns of the ``interface_counters`` table (every column but ``batch_id``)."""
    n_counters: int = 0
    samples: Counter[ExporterReason] = field(default_factory=Counter)
    """(exporter, "flow" | "counter") -> samples decoded."""
    samples_lost: Counter[str] = field(default_factory=Counter)
    """exporter -> samples missing by the sample sequence numbers of their data sources (flow and counter)."""
    sample_pool: Counter[str] = field(default_factory=Counter)
    """exporter -> growth of the flow data sources' sample pools: packets the sampled interfaces saw."""
    agent_drops: Counter[str] = field(default_factory=Counter)
    """exporter -> growth of the flow data sources' drop counters: samples the agent itself could not send."""
    skipped: Counter[ExporterReason] = field(default_factory=Counter)
    """(exporter, "sample" | "flow_record" | "counter_record") -> structures of formats not decoded, skipped."""


AgentKey = tuple[str, bytes, int]
"""(exporter, agent address as 16 bytes, sub-agent id): a datagram sequence."""
SourceKey = tuple[bytes, int, str, int, int]
"""(agent, sub-agent, "flow" | "counter", source id type, source id index): a sample sequence of an exporter."""


class _Exporter:
    __slots__ = ("name", "addr16", "policy", "agents", "sources", "last_seen_ms")

    def __init__(self, name: str, policy: tuple[int, bool]) -> None:
        self.name = name
        self.addr16 = _addr16(name)
        self.policy = policy
        self.agents: set[tuple[bytes, int]] = set()
        self.sources: dict[SourceKey, list[int]] = {}  # -> [last sample pool, last drops] (-1: not yet seen)
        self.last_seen_ms = 0


def _addr16(name: str) -> bytes:
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return bytes(16)
    return b"\0" * 10 + b"\xff\xff" + addr.packed if addr.version == 4 else addr.packed


class SflowDecoder:
    """Decodes sFlow v5 datagrams of many exporters; holds their sequence and sample-pool state (bounded)."""

    def __init__(self, limits: SflowLimits | None = None, sampling: SamplingPolicy | None = None) -> None:
        self.limits = limits or SflowLimits()
        self.sampling = sampling or SamplingPolicy()
        self.exporters: dict[str, _Exporter] = {}
        self.datagram_sequences = SequenceTracker(window=65536, max_jump=1 << 22)
        self.sample_sequences = SequenceTracker(window=65536, max_jump=1 << 22)
        # Reused from batch to batch: fresh multi-megabyte buffers cost a page fault per 4 KiB (templated.Joiner).
        self._joiner = Joiner()
        self._flat_f = np.zeros(0, dtype=np.int64)
        self._flat_a = np.zeros(0, dtype=np.uint8)

    # ----------------------------------------------------------------------------------------------- public API
    def decode(self, datagrams: Iterable[tuple[bytes, str, int]]) -> SflowResult:
        """Decode a batch of ``(payload, exporter, received_ms)``; never raises for bad input."""
        items = datagrams if isinstance(datagrams, list | tuple) else list(datagrams)
        try:
            return self._decode(items)
        except Exception:  # a bug must not take the listener down; counted, and tests assert it never occurs
            result = _empty_result()
            for item in items:
                exporter = item[1] if isinstance(item, tuple) and len(item) == 3 else "?"
                result.errors[(str(exporter), "internal_error")] += 1
            return result

    def set_sampling(self, sampling: SamplingPolicy) -> None:
        """Replace the configured sampling policy (SIGHUP); applies to the next decoded samples."""
        self.sampling = sampling
        for name, st in self.exporters.items():
            st.policy = sampling.for_exporter(name)

    def expire(self, now_ms: int) -> Counter[ExporterReason]:
        """Forget exporters idle for ``exporter_idle_ms``; returns ``Counter[(exporter, "exporter_expired")]``."""
        out: Counter[ExporterReason] = Counter()
        for name, st in list(self.exporters.items()):
            if st.last_seen_ms < now_ms - self.limits.exporter_idle_ms:
                self._forget(name)
                out[(name, "exporter_expired")] += 1
        return out

    def templates_known(self) -> dict[str, int]:
        """sFlow has no templates (the same interface as FlowDecoder's, for the daemon's gauges)."""
        return {}

    def pending_bytes(self) -> int:
        """sFlow holds no data back (the same interface as FlowDecoder's)."""
        return 0

    def agents_known(self) -> dict[str, int]:
        """(agent, sub-agent) pairs tracked, per exporter."""
        return {name: len(st.agents) for name, st in self.exporters.items() if st.agents}

    # ------------------------------------------------------------------------------------------------- decoding
    def _decode(self, items: Sequence[tuple[bytes, str, int]]) -> SflowResult:
        result = _empty_result()
        n = len(items)
        if n == 0:
            return result
        payloads = [i[0] for i in items]
        names = [i[1] for i in items]
        received = np.array([i[2] for i in items], dtype=np.int64)
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        buf = np.frombuffer(self._joiner.join([*payloads, _PADDING[:k.PAD]], int(ends[-1]) + k.PAD), dtype=np.uint8)

        # exporters: an index per datagram; those over max_exporters are counted and not decoded
        index: dict[str, int] = {}
        if names.count(names[0]) == n:  # one exporter: the usual batch of a busy socket
            index[names[0]] = 0
            codes = np.zeros(n, dtype=np.int64)
        else:
            codes = np.fromiter((index.setdefault(e, len(index)) for e in names), dtype=np.int64, count=n)
        states: list[_Exporter | None] = [self._exporter(name, result) for name in index]
        admitted = np.array([st is not None for st in states], dtype=bool)[codes]
        if not admitted.all():
            starts = np.where(admitted, starts, 0)
            ends = np.where(admitted, ends, 0)  # an empty datagram: walked as nothing, counted apart below
        lim = self.limits
        D = np.zeros((n, k.ND), dtype=np.int64)
        AG = np.zeros((1, n, 16), dtype=np.uint8)
        E = np.zeros((n, len(w.ERROR_REASONS)), dtype=np.int64)
        L = np.zeros((n, len(w.LIMITS)), dtype=np.int64)
        K = np.zeros((n, len(w.SKIPPED)), dtype=np.int64)
        S = k.walk(buf, starts, ends, lim.max_samples_per_datagram, D, AG, E, L)
        fmt = S[:, k.S_FORMAT]
        is_flow = (fmt == w.FLOW_SAMPLE) | (fmt == w.FLOW_SAMPLE_EXPANDED)
        is_counter = (fmt == w.COUNTERS_SAMPLE) | (fmt == w.COUNTERS_SAMPLE_EXPANDED)
        other = ~(is_flow | is_counter)
        if other.any():
            np.add.at(K[:, w.K_SAMPLE], S[other, k.S_DG], 1)
        flow_rows = np.flatnonzero(is_flow)
        F, FA = self._scratch(len(flow_rows))
        k.flow_samples(buf, S, flow_rows, lim.max_records_per_sample, E, L, K, F, FA)
        C = k.counter_samples(buf, S, np.flatnonzero(is_counter), lim.max_records_per_sample, E, L, K)
        E[~admitted] = 0  # not decoded: neither errors nor anything else of theirs is counted

        # per-exporter counters
        exporter_names = list(index)
        version = np.where((lengths >= 4) & (E[:, w.E_VERSION] == 0) & admitted, w.SFLOW_VERSION, 0)
        for (code, v), count in _count_pairs(codes, version).items():
            result.datagrams[(exporter_names[code], v)] += count
        _add_matrix(result.errors, exporter_names, codes, E, w.ERROR_REASONS)
        _add_matrix(result.limit_hits, exporter_names, codes, L, w.LIMITS)
        _add_matrix(result.skipped, exporter_names, codes, K, w.SKIPPED)
        for code, st in enumerate(states):
            if st is not None:
                st.last_seen_ms = int(received[codes == code].max())

        # the identity of each datagram and where each flow sample starts in it (its 8-byte sample header)
        seeds = np.array([exporter_seed(name) for name in index], dtype=np.uint64)[codes]
        digest = np.empty(n, dtype=np.int64)
        digests(_read_only(buf), starts, ends - starts, seeds, digest)
        where = S[flow_rows, k.S_OFF] - 8 - starts[S[flow_rows, k.S_DG]]
        fvalid = F[k.F_VALID] == 1
        if not fvalid.all():
            F, FA, where = F[:, fvalid], FA[:, fvalid], where[fvalid]
        cvalid = C[k.C_VALID] != 0
        if not cvalid.all():
            C = C[:, cvalid]  # decoded counter samples: their sequence numbers are accounted, ...
        fdg, cdg = F[k.F_DG], C[k.C_DG].astype(np.int64)
        fcode, ccode = codes[fdg], codes[cdg]
        for code, count in _count(fcode).items():
            result.records[(exporter_names[code], w.SFLOW_VERSION)] += count
            result.samples[(exporter_names[code], "flow")] += count
        for code, count in _count(ccode).items():
            result.samples[(exporter_names[code], "counter")] += count

        agent16 = AG[0].view("S16").reshape(n)
        self._account(result, states, exporter_names, codes, D, agent16, F, C)
        result.flows, result.extras = self._flow_columns(F, FA, D, agent16, received, codes, states)
        result.flows["datagram"] = digest[F[k.F_DG]].view(np.uint64)
        result.flows["datagram_offset"] = where.astype(np.uint16)
        result.n_flows = int(F.shape[1])
        with_rows = C[k.C_VALID] == 1  # ... those with interface counters make rows
        if not with_rows.all():
            C = C[:, with_rows]
        result.interface_counters = self._counter_columns(C, D, agent16, received, codes, states)
        result.n_counters = int(C.shape[1])
        return result

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed flow columns for ``n`` samples, in memory kept between batches (up to SCRATCH_KEEP samples)."""
        if n > SCRATCH_KEEP:
            return np.zeros((k.NF, n), dtype=np.int64), np.zeros((k.NA, n, 16), dtype=np.uint8)
        if len(self._flat_f) < k.NF * n:
            self._flat_f = np.zeros(k.NF * max(n, 1024), dtype=np.int64)
            self._flat_a = np.zeros(k.NA * 16 * max(n, 1024), dtype=np.uint8)
        F = self._flat_f[:k.NF * n].reshape(k.NF, n)
        FA = self._flat_a[:k.NA * 16 * n].reshape(k.NA, n, 16)
        F.fill(0)
        FA.fill(0)
        return F, FA

    def _exporter(self, name: str, result: SflowResult) -> _Exporter | None:
        st = self.exporters.get(name)
        if st is None:
            if len(self.exporters) >= self.limits.max_exporters:
                result.limit_hits[(name, "max_exporters")] += 1
                return None
            st = self.exporters[name] = _Exporter(name, self.sampling.for_exporter(name))
        return st

    def _flow_columns(self, F: np.ndarray, FA: np.ndarray, D: np.ndarray, agent16: np.ndarray,
                      received: np.ndarray, codes: np.ndarray,
                      states: list[_Exporter | None]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        m = F.shape[1]
        dg = F[k.F_DG]
        addr = np.array([st.addr16 if st is not None else bytes(16) for st in states], dtype="S16")
        policy_rate = np.array([st.policy[0] if st is not None else 1 for st in states], dtype=np.uint64)
        override = np.array([st.policy[1] if st is not None else False for st in states], dtype=bool)
        code = codes[dg]
        rate = resolve(F[k.F_RATE].astype(np.uint64), policy_rate[code], override[code])
        rate = np.broadcast_to(rate, (m,)).astype(np.uint32)
        raw_bytes = F[k.F_BYTES].astype(np.uint64)
        times = received[dg]
        has_router = (F[k.F_HAS] & k.HAS_ROUTER) != 0
        next_hop = np.where(has_router[:, None], FA[k.A_NEXT_HOP], FA[k.A_GW_NEXT_HOP])
        cols: dict[str, np.ndarray] = {
            "time_received": times, "flow_start": times.copy(), "flow_end": times.copy(),
            "exporter": addr[code], "observation_domain": D[dg, k.D_SUB].astype(np.uint32),
            "version": np.full(m, w.SFLOW_VERSION, dtype=np.uint8),
            "src_addr": _s16(FA[k.A_SRC]), "dst_addr": _s16(FA[k.A_DST]), "next_hop": _s16(next_hop),
            "raw_bytes": raw_bytes, "raw_packets": np.ones(m, dtype=np.uint64), "sampling_rate": rate,
            "bytes": raw_bytes * rate, "packets": rate.astype(np.uint64),
        }
        for name, col in (("src_port", k.F_SPORT), ("dst_port", k.F_DPORT), ("protocol", k.F_PROTO),
                          ("tcp_flags", k.F_FLAGS), ("tos", k.F_TOS), ("in_if", k.F_IN), ("out_if", k.F_OUT),
                          ("src_as", k.F_SAS), ("dst_as", k.F_DAS), ("src_mask", k.F_SMASK),
                          ("dst_mask", k.F_DMASK)):
            cols[name] = F[col]
        flows = {}
        for c in _FLOW_COLUMNS:
            v = cols.get(c.name)
            flows[c.name] = np.zeros(m, dtype=c.numpy_dtype) if v is None else \
                np.array(v, dtype=c.numpy_dtype)  # a copy: F and FA are reused by the next batch
        extras = {"agent": agent16[dg].copy()}
        for name, col, dtype in (("sample_sequence", k.F_SEQ, np.uint32), ("source_id_type", k.F_SRC_TYPE, np.uint32),
                                 ("source_id_index", k.F_SRC_INDEX, np.uint32), ("vlan", k.F_VLAN, np.uint16),
                                 ("src_vlan", k.F_SVLAN, np.uint32), ("dst_vlan", k.F_DVLAN, np.uint32),
                                 ("src_peer_as", k.F_PEER_AS, np.uint32), ("next_hop_as", k.F_NH_AS, np.uint32),
                                 ("local_pref", k.F_LOCAL_PREF, np.uint32), ("communities", k.F_COMMUNITIES, np.uint32),
                                 ("stripped", k.F_STRIPPED, np.uint32), ("ip_version", k.F_IPVER, np.uint8)):
            extras[name] = F[col].astype(dtype)
        return flows, extras

    def _counter_columns(self, C: np.ndarray, D: np.ndarray, agent16: np.ndarray, received: np.ndarray,
                         codes: np.ndarray, states: list[_Exporter | None]) -> dict[str, np.ndarray]:
        m = C.shape[1]
        dg = C[k.C_DG].astype(np.int64)
        addr = np.array([st.addr16 if st is not None else bytes(16) for st in states], dtype="S16")
        cols: dict[str, np.ndarray] = {
            "time_received": received[dg], "exporter": addr[codes[dg]], "agent": agent16[dg],
            "sub_agent_id": D[dg, k.D_SUB], "agent_uptime_ms": D[dg, k.D_UPTIME], "sequence": C[k.C_SEQ],
            "source_id_type": C[k.C_SRC_TYPE], "source_id_index": C[k.C_SRC_INDEX],
            "counter_records": C[k.C_RECORDS],
        }
        for j, (name, _) in enumerate(w.GENERIC_FIELDS):
            cols[name] = C[k.C_GENERIC + j]
        for j, name in enumerate(w.ETHERNET_FIELDS):
            cols[name] = C[k.C_ETHERNET + j]
        no_generic = (C[k.C_RECORDS] & 1) == 0
        if no_generic.any():
            cols["if_index"] = np.where(no_generic, C[k.C_SRC_INDEX], C[k.C_GENERIC])
        return {c.name: np.ascontiguousarray(cols[c.name], dtype=c.numpy_dtype) if c.name in cols
                else np.zeros(m, dtype=c.numpy_dtype) for c in _COUNTER_COLUMNS}

    # ------------------------------------------------------------------------------------------ loss accounting
    def _account(self, result: SflowResult, states: list[_Exporter | None], names: list[str], codes: np.ndarray,
                 D: np.ndarray,
                 agent16: np.ndarray, F: np.ndarray, C: np.ndarray) -> None:
        """Sequence numbers (datagrams per agent, samples per data source), sample pools and drops, per key."""
        ok = np.flatnonzero(D[:, k.D_OK] == 1)
        if len(ok) == 0:
            return
        # datagrams, per (exporter, agent, sub-agent)
        words = _agent_words(agent16[ok])
        order, bounds = _groups(codes[ok], words[:, 0], words[:, 1], D[ok, k.D_SUB])
        agent_of = np.full(len(codes), -1, dtype=np.int64)
        agent_keys: list[AgentKey | None] = []
        for j in range(len(bounds) - 1):
            rows = ok[order[bounds[j]:bounds[j + 1]]]
            agent_of[rows] = j
            i = int(rows[0])
            st = states[codes[i]]
            if st is None:  # not admitted (max_exporters): never walked, so never here
                agent_keys.append(None)
                continue
            key = (st.name, bytes(agent16[i]).ljust(16, b"\0"), int(D[i, k.D_SUB]))
            if key[1:] not in st.agents:
                if len(st.agents) >= self.limits.max_agents_per_exporter:
                    result.limit_hits[(st.name, "max_agents_per_exporter")] += 1
                    agent_keys.append(None)
                    continue
                st.agents.add(key[1:])
            agent_keys.append(key)
            lost, resets = self.datagram_sequences.observe_many(
                key, D[rows, k.D_SEQ], np.ones(len(rows), dtype=np.int64), np.ones(len(rows), dtype=bool))
            if lost:
                result.sequence_lost[st.name] += lost
            if resets:
                result.sequence_resets[st.name] += resets
        # samples, per data source (flow and counter sources are separate sequences)
        for kind, seq, stype, sindex, dg, pools, drops in (
                ("flow", F[k.F_SEQ], F[k.F_SRC_TYPE], F[k.F_SRC_INDEX], F[k.F_DG], F[k.F_POOL], F[k.F_DROPS]),
                ("counter", C[k.C_SEQ].astype(np.int64), C[k.C_SRC_TYPE].astype(np.int64),
                 C[k.C_SRC_INDEX].astype(np.int64), C[k.C_DG].astype(np.int64), None, None)):
            if len(seq) == 0:
                continue
            a = agent_of[dg]
            order, bounds = _groups(a, stype, sindex)
            starts, ends = bounds[:-1], bounds[1:]
            firsts = order[starts]
            if pools is not None and drops is not None:  # growth of the cumulative counters of each group at once
                pool_sums = np.add.reduceat(_steps(pools[order], starts), starts).tolist()
                drop_sums = np.add.reduceat(_steps(drops[order], starts), starts).tolist()
            ordered = seq[order]
            breaks = np.zeros(len(order), dtype=np.int64)
            breaks[1:] = ordered[1:] != (ordered[:-1] + 1) % MOD
            breaks[starts] = 0
            in_order = (np.add.reduceat(breaks, starts) == 0).tolist()
            seq_first, seq_last = ordered[starts].tolist(), ordered[ends - 1].tolist()
            ones = np.ones(len(order), dtype=np.int64)
            trues = np.ones(len(order), dtype=bool)
            tracker = self.sample_sequences
            for j, first in enumerate(firsts.tolist()):
                agent_key = agent_keys[int(a[first])]
                if agent_key is None:
                    continue
                st = states[codes[int(dg[first])]]
                if st is None:
                    continue
                source_key = (*agent_key, kind, int(stype[first]), int(sindex[first]))
                source = st.sources.get(source_key[1:])
                if source is None:
                    if len(st.sources) >= self.limits.max_sources_per_exporter:
                        result.limit_hits[(st.name, "max_sources_per_exporter")] += 1
                        continue
                    source = st.sources[source_key[1:]] = [-1, -1]
                lo, hi = int(starts[j]), int(ends[j])
                if not (in_order[j] and tracker.continue_run(source_key, seq_first[j], seq_last[j] + 1)):
                    lost, _ = tracker.observe_many(source_key, ordered[lo:hi], ones[lo:hi], trues[lo:hi])
                    if lost:
                        result.samples_lost[st.name] += lost
                if pools is not None and drops is not None:
                    last = int(order[hi - 1])
                    result.sample_pool[st.name] += _step(source, 0, int(pools[first]), int(pools[last])) + \
                        pool_sums[j]
                    result.agent_drops[st.name] += _step(source, 1, int(drops[first]), int(drops[last])) + \
                        drop_sums[j]

    def _forget(self, name: str) -> None:
        self.exporters.pop(name, None)
        self.datagram_sequences.forget(name)
        self.sample_sequences.forget(name)


def _steps(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per row (grouped), how much a cumulative 32-bit counter grew since the row before in its group (0 for a
    group's first row); a step backwards of more than half the range is a restart, counted as 0."""
    step = np.zeros(len(values), dtype=np.int64)
    step[1:] = (values[1:] - values[:-1]) % MOD
    step[starts] = 0
    step[step >= MOD // 2] = 0
    return step


def _step(source: list[int], slot: int, first: int, last: int) -> int:
    """Growth from the last value seen in an earlier batch (``source[slot]``, -1: none) to ``first``; remembers
    ``last``."""
    prev = source[slot]
    source[slot] = last
    if prev < 0:
        return 0
    step = (first - prev) % MOD
    return step if step < MOD // 2 else 0


def _empty_result() -> SflowResult:
    return SflowResult(flows={c.name: np.zeros(0, dtype=c.numpy_dtype) for c in _FLOW_COLUMNS},
                       interface_counters={c.name: np.zeros(0, dtype=c.numpy_dtype) for c in _COUNTER_COLUMNS})


def _read_only(buf: np.ndarray) -> np.ndarray:
    """A read-only view (the digest kernel compiles once, for the read-only buffers of both decoders)."""
    view = buf.view()
    view.flags.writeable = False
    return view


def _s16(a: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 addresses as an ``S16`` column (a copy)."""
    return np.array(a, dtype=np.uint8).view("S16").reshape(len(a))


def _agent_words(agent16: np.ndarray) -> np.ndarray:
    """16-byte addresses as two uint64 words each (an opaque key, for grouping)."""
    return np.frombuffer(np.ascontiguousarray(agent16).tobytes(), dtype=np.uint64).reshape(len(agent16), 2)


def _groups(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by equal values of ``cols``: (row order, group bounds in it); rows keep their order inside a
    group (the sequence accounting needs arrival order)."""
    n = len(cols[0])
    if all((c == c[0]).all() for c in cols):  # one group: the common case of one agent, or one data source
        return np.arange(n), np.array([0, n])
    order = np.lexsort(cols[::-1])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for c in cols:
        sc = c[order]
        change[1:] |= sc[1:] != sc[:-1]
    return order, np.append(np.flatnonzero(change), n)


def _count(values: np.ndarray) -> dict[int, int]:
    if len(values) == 0:
        return {}
    counts = np.bincount(values)
    nz = np.flatnonzero(counts)
    return dict(zip(nz.tolist(), counts[nz].tolist(), strict=True))


def _count_pairs(codes: np.ndarray, version: np.ndarray) -> Counter[tuple[int, int]]:
    """(exporter code, version) -> datagrams; version is 0 or SFLOW_VERSION."""
    known = version != 0
    counts = np.bincount(codes * 2 + known, minlength=2)
    out: Counter[tuple[int, int]] = Counter()
    for key in np.flatnonzero(counts).tolist():
        out[(key >> 1, w.SFLOW_VERSION if key & 1 else 0)] += int(counts[key])
    return out


def _add_matrix(counter: Counter[ExporterReason], names: list[str], codes: np.ndarray, M: np.ndarray,
                labels: tuple[str, ...]) -> None:
    """Per-datagram counts (n, len(labels)) summed per exporter into ``counter[(exporter, label)]``."""
    if not M.any():
        return
    if len(names) == 1:
        per = M.sum(axis=0, keepdims=True)
    else:
        per = np.zeros((len(names), M.shape[1]), dtype=np.int64)
        np.add.at(per, codes, M)
    for code, j in zip(*np.nonzero(per), strict=True):
        counter[(names[int(code)], labels[int(j)])] += int(per[code, j])


def warm_up_datagram() -> bytes:
    """A small valid datagram with a flow sample (raw header) and a counter sample: compiles every kernel path."""
    eth = bytes(12) + b"\x08\x00" + bytes([0x45, 0]) + struct.pack(">H", 40) + bytes(5) + b"\x06" + bytes(2) + \
        bytes(8) + struct.pack(">HH", 1, 2) + bytes(16)
    raw = struct.pack(">IIII", 1, 64, 0, len(eth)) + eth
    flow = struct.pack(">8I", 1, 1, 100, 100, 0, 1, 2, 1) + struct.pack(">II", w.RAW_HEADER, len(raw)) + raw
    generic = bytes(k.GENERIC_LEN)
    counter = struct.pack(">3I", 1, 1, 1) + struct.pack(">II", w.GENERIC_INTERFACE, len(generic)) + generic
    samples = struct.pack(">II", w.FLOW_SAMPLE, len(flow)) + flow + struct.pack(">II", w.COUNTERS_SAMPLE,
                                                                                 len(counter)) + counter
    return struct.pack(">II4sIIII", 5, 1, b"\x7f\0\0\1", 0, 1, 1000, 2) + samples


def warm_up() -> None:
    """Compile every kernel now (on a tiny valid batch), so the first real batch does not wait for it. (Here, not in
    :mod:`decoders.sflow.kernel`: the kernels know nothing of the decoder that drives them.)"""
    SflowDecoder().decode([(warm_up_datagram(), "127.0.0.1", 0)])
