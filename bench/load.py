"""Load generator: NetFlow v5, v9, IPFIX or sFlow v5 at a fixed offered datagram rate (or flat out) to a collector.

    python -m bench.load --version 9 --rate 50000 --duration 10 --target 127.0.0.1:2055 --records 30
    python -m bench.load --version sflow --rate 20000 --duration 10 --target 127.0.0.1:6343 --records 7

Datagrams are encoded before the clock starts (a pool of distinct datagrams, cycled); only the sequence number is
patched in place per send, so the collector sees a correct, gap-free sequence and can count real losses. v9/IPFIX
templates go first and are refreshed every ``--template-every`` datagrams. Sending is a tight loop on a connected
UDP socket; pacing works in batches: each tick sends the datagrams due by then and sleeps until the next tick, so
the achieved rate stays exact without a system call per datagram for timing.

``--vary`` makes every pass over the pool carry new flows (other source ports and destination addresses, changed
for the whole pool at once with numpy when the pool wraps), so a collector that de-duplicates records does not see
the cycled pool as resent records: its whole pipeline works on every record, as with real traffic.

sFlow (``--version sflow``): ``--records`` flow samples per datagram (raw Ethernet header of 128 bytes and extended
switch, :func:`bench.sflow.bulk_datagrams`; 7 fill a 1400-byte MTU) from one agent; the datagram sequence number
is patched per send as above, and at each pass over the pool every sample's sequence number and sample pool move on
by one pass with numpy, so the collector sees gap-free samples (with one exporter: ``--exporters`` N hands each
exporter every N-th datagram, and so gaps in the sample sequences). ``--vary`` is for NetFlow/IPFIX only.

``--exporters N`` simulates N exporters round-robin, each with its own domain, sequence and (towards a 127.x target)
source address 127.0.1.x, so that a collector's workers sharing the port with SO_REUSEPORT all get traffic.

The report (text, or one JSON object with ``--json``) gives datagrams and records sent, the elapsed time, the
achieved rate and send errors (e.g. ENOBUFS).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench import sflow
from bench.exporter import SEQUENCE_OFFSET, bulk_datagrams
from decoders.sflow import SFLOW_VERSION

_U32 = struct.Struct("!I")
SFLOW = SFLOW_VERSION
"""``version`` of an sFlow v5 load (flowmed's version label of sFlow rows)."""
_SFLOW_SEQUENCE_AT, _SFLOW_SUB_AGENT_AT = 16, 12
"""Datagram sequence number and sub-agent id in an sFlow datagram of an IPv4 agent."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What one run sent."""

    version: int
    target: str
    offered_rate: int
    """Datagrams per second asked for (0 = flat out)."""
    duration_s: float
    datagrams: int
    """Datagrams sent (template datagrams included)."""
    records: int
    """Flow records sent (in data datagrams)."""
    elapsed_s: float
    send_errors: int

    @property
    def achieved_rate(self) -> float:
        return self.datagrams / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "achieved_rate": round(self.achieved_rate, 1),
                "records_per_s": round(self.records / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0}


def parse_target(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as an address tuple."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


_DOMAIN_FIELD = {5: (struct.Struct("!B"), 21), 9: (struct.Struct("!I"), 16), 10: (struct.Struct("!I"), 12),
                 SFLOW: (struct.Struct("!I"), _SFLOW_SUB_AGENT_AT)}
"""Where each version's header names the domain: v5 engine id, v9 source id, IPFIX observation domain, sFlow
sub-agent id."""


class _SflowPool:
    """A pool of sFlow datagrams in one buffer, and where their samples keep per-source counters: at each pass over
    the pool, :meth:`next_pass` moves every sample's sequence number on by its data source's samples per pass and
    every flow sample's sample pool by its source's packets per pass, so the cycled pool reads as one agent's
    gap-free stream."""

    def __init__(self, data: list[bytes]) -> None:
        self.flat = bytearray(b"".join(data))  # XDR: every datagram, sample and field is 4-byte aligned
        view = memoryview(self.flat)
        self.buffers: list[memoryview] = []
        seq_at, pool_at, seq_key, rates = [], [], [], []
        start = 0
        for d in data:
            self.buffers.append(view[start:start + len(d)])
            at = start + 28  # version, address type, IPv4 agent, sub-agent, sequence, uptime, samples
            for _ in range(_U32.unpack_from(d, 24)[0]):
                fmt, length = struct.unpack_from("!II", self.flat, at)
                if fmt in (sflow.FLOW_SAMPLE, sflow.COUNTERS_SAMPLE):
                    source = _U32.unpack_from(self.flat, at + 12)[0]
                    seq_at.append((at + 8) // 4)
                    seq_key.append((fmt, source))
                    if fmt == sflow.FLOW_SAMPLE:
                        pool_at.append((at + 20) // 4)
                        rates.append((source, _U32.unpack_from(self.flat, at + 16)[0]))
                at += 8 + length
            start += len(d)
        per_source = {key: seq_key.count(key) for key in set(seq_key)}
        packets: dict[int, int] = {}
        for source, rate in rates:
            packets[source] = packets.get(source, 0) + rate
        self.words = np.frombuffer(self.flat, dtype=">u4")
        self.seq_at = np.array(seq_at, dtype=np.int64)
        self.seq_step = np.array([per_source[k] for k in seq_key], dtype=np.uint32)
        self.pool_at = np.array(pool_at, dtype=np.int64)
        self.pool_step = np.array([packets[source] for source, _ in rates], dtype=np.uint32)

    def next_pass(self) -> None:
        """Every sample one pass on (32-bit counters wrap as an agent's do)."""
        self.words[self.seq_at] += self.seq_step
        self.words[self.pool_at] += self.pool_step


class _Source:
    """One simulated exporter: its socket (own loopback address for IPv4 targets), domain and sequence number."""

    __slots__ = ("send", "sock", "domain", "sequence")

    def __init__(self, target: tuple[str, int], index: int, domain: int, several: bool) -> None:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if several and family == socket.AF_INET and target[0].startswith("127."):
            self.sock.bind((f"127.0.1.{index + 1}", 0))  # all of 127/8 is loopback: one address per exporter
        self.sock.connect(target)
        self.send = self.sock.send
        self.domain = domain
        self.sequence = 0


def run_load(*, version: int, target: tuple[str, int], rate: int, duration_s: float, records: int = 30,
             pool: int = 2000, template_every: int = 10_000, tick_s: float = 0.001, ipv6_flows: bool = False,
             domain: int = 0, exporters: int = 1, seed: int = 0, vary: bool = False) -> LoadReport:
    """Send for ``duration_s`` at ``rate`` datagrams/s in all (0 = as fast as possible); see the module docstring.

    ``exporters`` > 1 round-robins the datagrams over that many simulated exporters, each with its own domain
    (``domain + i``; v5: engine id), sequence numbers and, towards a 127.x target, its own source address
    127.0.1.(i+1), so a collector with several workers (SO_REUSEPORT) sees several flows of traffic.

    ``vary``: each pass over the pool changes the low byte of every record's source port and, every 256 passes, the
    last byte of its IPv4 destination address (65,536 distinct passes), so no record repeats within a run.
    """
    if not 1 <= exporters <= 250:
        raise ValueError("exporters must be 1 to 250")
    now_ms = int(time.time()) * 1000
    sflow_pool = None
    data: list[bytes] = []
    template: bytes | None = None
    if version == SFLOW:
        if vary:
            raise ValueError("vary is for NetFlow/IPFIX (sFlow samples are timed at arrival)")
        sflow_pool = _SflowPool(sflow.bulk_datagrams(pool, records, seed=seed, ipv6=ipv6_flows))
    else:
        data, template = bulk_datagrams(version, pool, records, export_ms=now_ms, ipv6=ipv6_flows, domain=domain,
                                        seed=seed)
    if sflow_pool is not None:
        buffers: list[Any] = list(sflow_pool.buffers)
    elif vary:
        if ipv6_flows or len({len(d) for d in data}) != 1:
            raise ValueError("vary needs IPv4 flows and datagrams of one length")
        pool_array = np.frombuffer(b"".join(data), np.uint8).reshape(len(data), -1).copy()
        sport, dst = _vary_columns(version, records)
        base_sport, base_dst = pool_array[:, sport].copy(), pool_array[:, dst].copy()
        buffers = list(pool_array)  # row views: the in-place changes below show through
    else:
        buffers = [bytearray(d) for d in data]
    seq_at = _SFLOW_SEQUENCE_AT if version == SFLOW else SEQUENCE_OFFSET[version]
    dom_struct, dom_at = _DOMAIN_FIELD[version]
    # what one datagram advances the sequence by: v9 and sFlow count datagrams, v5 and IPFIX count records
    seq_step = 1 if version in (9, SFLOW) else records
    sources = [_Source(target, i, (domain + i) & (0xFF if version == 5 else 0xFFFFFFFF), exporters > 1)
               for i in range(exporters)]
    sent = records_sent = errors = 0

    def send_templates() -> None:
        nonlocal sent, errors
        if template is None:
            return
        buf = bytearray(template)
        for src in sources:
            _U32.pack_into(buf, seq_at, src.sequence & 0xFFFFFFFF)
            dom_struct.pack_into(buf, dom_at, src.domain)
            try:
                src.send(buf)
            except OSError:
                errors += 1
            sent += 1
            if version == 9:  # v9 counts every export packet; IPFIX templates carry no data records
                src.sequence += 1

    start = time.perf_counter()
    deadline = start + duration_s
    send_templates()
    i = 0
    n_pool, n_src = len(buffers), len(sources)
    total = int(rate * duration_s)  # paced: exactly this many data datagrams, the last one due at the deadline
    while True:
        now = time.perf_counter()
        if (rate <= 0 and now >= deadline) or (rate > 0 and (i >= total or now >= deadline + 5.0)):
            break  # (a paced run more than 5 s late stops: the host cannot offer that rate)
        # flat out: a batch of 64 between clock reads; paced: every data datagram due by now
        batch = 64 if rate <= 0 else min(int((now - start) * rate) + 1, total) - i
        for _ in range(batch):
            if vary and i and i % n_pool == 0:
                passes = i // n_pool
                pool_array[:, sport] = base_sport + np.uint8(passes & 0xFF)
                pool_array[:, dst] = base_dst + np.uint8((passes >> 8) & 0xFF)
            elif sflow_pool is not None and i and i % n_pool == 0:
                sflow_pool.next_pass()
            buf = buffers[i % n_pool]
            src = sources[i % n_src]
            _U32.pack_into(buf, seq_at, src.sequence & 0xFFFFFFFF)
            dom_struct.pack_into(buf, dom_at, src.domain)
            try:
                src.send(buf)
                records_sent += records
            except OSError:  # ENOBUFS / EAGAIN: the offered load is above what the host takes
                errors += 1
            sent += 1
            src.sequence += seq_step
            i += 1
            if template_every and i % template_every == 0:
                send_templates()
        if rate > 0:
            pause = now + tick_s - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    elapsed = time.perf_counter() - start
    for src in sources:
        src.sock.close()
    return LoadReport(version, f"{target[0]}:{target[1]}", rate, duration_s, sent, records_sent, elapsed, errors)


def _vary_columns(version: int, records: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets in a pool datagram of each record's source port low byte and IPv4 destination's last byte.

    v5: 24-byte header, 48-byte records (dstaddr at 4, srcport at 32); v9 and IPFIX: the data set of
    :func:`bench.exporter.flow_template` right after the header and set header (src 4, dst 4, ports 2 + 2, ...).
    """
    if version == 5:
        start, size, dst_at, sport_at = 24, 48, 4, 32
    else:
        start = 20 + 4 if version == 9 else 16 + 4
        size = 47 if version == 9 else 55  # times: v9 sysUptime (4 bytes each), IPFIX milliseconds (8 bytes each)
        dst_at, sport_at = 4, 8
    at = start + size * np.arange(records)
    return at + sport_at + 1, at + dst_at + 3


def _version(text: str) -> int:
    """``--version``: 5, 9, 10, or ``sflow`` (:data:`SFLOW`)."""
    if text.lower() == "sflow":
        return SFLOW
    if text not in ("5", "9", "10"):
        raise argparse.ArgumentTypeError("5, 9, 10 or sflow")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m bench.load``)."""
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", type=_version, default=9, help="5, 9, 10 (IPFIX) or sflow")
    p.add_argument("--rate", type=int, default=0, help="offered datagrams per second (0 = flat out)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to send")
    p.add_argument("--target", default="127.0.0.1:2055", help="collector host:port (loopback)")
    p.add_argument("--records", type=int, default=0,
                   help="flow records (sFlow: flow samples) per datagram; default 30, sFlow 7 (v5: at most 30)")
    p.add_argument("--pool", type=int, default=2000, help="distinct pre-encoded datagrams, cycled")
    p.add_argument("--template-every", type=int, default=10_000, help="re-send templates every N datagrams")
    p.add_argument("--ipv6-flows", action="store_true", help="IPv6 flow records (v9/IPFIX)")
    p.add_argument("--domain", type=int, default=0, help="v9 source id / IPFIX observation domain (v5: engine id)")
    p.add_argument("--exporters", type=int, default=1,
                   help="simulated exporters, round-robin (own domain, sequence and 127.0.1.x source address)")
    p.add_argument("--vary", action="store_true",
                   help="new source ports / destination addresses on every pass over the pool (no repeated records)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    args.records = args.records or (7 if args.version == SFLOW else 30)
    if args.version == 5 and not 1 <= args.records <= 30:
        p.error("v5 datagrams hold 1 to 30 records")
    report = run_load(version=args.version, target=parse_target(args.target), rate=args.rate,
                      duration_s=args.duration, records=args.records, pool=args.pool,
                      template_every=args.template_every, ipv6_flows=args.ipv6_flows, domain=args.domain,
                      exporters=args.exporters, vary=args.vary)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        d = report.as_dict()
        print(f"sent {d['datagrams']} datagrams, {d['records']} records in {d['elapsed_s']:.2f} s to {d['target']}: "
              f"{d['achieved_rate']:.0f} datagrams/s ({d['records_per_s']:.0f} records/s), offered "
              f"{'flat out' if args.rate <= 0 else args.rate}, send errors {d['send_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
