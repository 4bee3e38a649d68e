"""A store built from known flows, the way the daemon builds it, for the console's tests and README screenshots.

Three exporters (IPFIX, NetFlow v9, v5) send two days of traffic of five subscribers (static bindings), a CDN class,
some unattributed traffic, records that mediation rejects, re-sent duplicates, a sequence gap, malformed datagrams
and CGNAT translations; everything goes through ``collector.pipeline.Pipeline`` (decoder -> Mediator -> compliance ->
Sink -> Parquet store) with the receive clock set to the simulated time, the exporter history is recorded by
``collector.exporter_stats`` once a simulated minute, and the rating job rates the usage against ``PLANS``. One
reconciliation part that does not balance (:data:`UNBALANCED`, as a buggy writer would leave it) is added, so the
console has something to flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from prometheus_client import CollectorRegistry

from bench.exporter import Flow, IpfixExporter, V5Exporter, V9Exporter, template
from collector import metrics as metrics_mod
from collector.components import make_mediator, make_sink, make_static
from collector.config import Config, load
from collector.exporter_stats import ExporterStatsRecorder
from collector.pipeline import Pipeline
from mediation.compliance.stage import make_compliance

T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z, a Monday
HOURS = 48
STEP_MS = 300_000
MIN_MS = 60_000
MB = 1_000_000
CYCLE = "2026-11"
EXPORTERS = {"ipfix": "192.0.2.1", "v9": "192.0.2.2", "v5": "192.0.2.3"}
SUBSCRIBERS = {"alice": "100.64.0.1", "bob": "100.64.0.2", "carol": "100.64.0.3", "dave": "100.64.0.4",
               "eve": "100.64.0.5"}
WEB, CDN, DNS, SSH = "203.0.113.10", "198.51.100.20", "8.8.8.8", "203.0.113.11"
UNBALANCED = (T0 + 36 * 3_600_000, "192.0.2.99", 10_000, 9_000)
"""(interval start, exporter, bytes in, bytes attributed) of the reconciliation part that does not balance."""
PUBLIC = "203.0.113.7"
"""alice's CGNAT public address: her upload flows carry it (and port 40000 + step % 1000) as the post-NAT source."""

PLANS = """
[[plan]]
id = "home"
version = 1
active_from = "2026-01-01T00:00:00+01:00"
currency = "EUR"
timezone = "Europe/Berlin"
cycle_day = 1
unit = "GB"
quantity_increment_bytes = 1000000
zero_rated_classes = ["cdn"]
default_band = "offpeak"
fair_usage_bytes = 40000000000

[[plan.band]]
name = "peak"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "08:00"
to = "20:00"

[[plan.rate]]
name = "download"
direction = "down"
allowance_bytes = 5000000000
tier_mode = "graduated"
[[plan.rate.tier]]
up_to_bytes = 20000000000
price = { peak = "1.20", offpeak = "0.60" }
[[plan.rate.tier]]
price = { peak = "0.80", offpeak = "0.40" }

[[plan.rate]]
name = "upload"
direction = "up"
price = "0.3333"
"""

ASSIGNMENTS = "subscriber_id,plan_id,from\n" + "".join(
    f"{name},home,2026-01-01T00:00:00+01:00\n" for name in SUBSCRIBERS)

STATIC = "subscriber_id,network,valid_from,valid_to\n" + "".join(
    f"{name},{addr},,\n" for name, addr in SUBSCRIBERS.items())

IPFIX_T = template(256, "flowStartMilliseconds", "flowEndMilliseconds", "sourceIPv4Address", "destinationIPv4Address",
                   "sourceTransportPort", "destinationTransportPort", "protocolIdentifier", "octetDeltaCount",
                   "packetDeltaCount", "bgpSourceAsNumber", "bgpDestinationAsNumber", "postNATSourceIPv4Address",
                   "postNAPTSourceTransportPort")
V9_T = template(257, "flowStartSysUpTime", "flowEndSysUpTime", "sourceIPv4Address", "destinationIPv4Address",
                "sourceTransportPort", "destinationTransportPort", "protocolIdentifier", "octetDeltaCount",
                "packetDeltaCount", "bgpSourceAsNumber", "bgpDestinationAsNumber")


@dataclass
class Dataset:
    config: Config
    root: Path
    start_ms: int
    end_ms: int
    alice_port_at: tuple[int, int]
    """(public port, instant ms) of one of alice's CGNAT flows, for the trace."""


def diurnal(ms: int) -> float:
    """Traffic level by the hour of the day (UTC): low at night, highest in the evening."""
    hour = (ms // 3_600_000) % 24 + (ms % 3_600_000) / 3_600_000
    return 0.25 + 0.75 * max(0.0, math.sin((hour - 6) / 24 * 2 * math.pi)) ** 1.5 + 0.1 * (hour >= 18)


def _flow(src: str, dst: str, sport: int, dport: int, proto: int, nbytes: int, t: int, *, src_as: int = 0,
          dst_as: int = 0, nat: tuple[str, int] | None = None) -> Flow:
    return Flow(src_addr=src, dst_addr=dst, src_port=sport, dst_port=dport, protocol=proto, bytes=nbytes,
                packets=max(1, nbytes // 1200), start_ms=t - 200_000, end_ms=t - 20_000, src_as=src_as, dst_as=dst_as,
                post_nat_src_addr=nat[0] if nat else "", post_nat_src_port=nat[1] if nat else 0)


def step_flows(i: int, t: int) -> dict[str, list[Flow]]:
    """The flows each exporter reports at step ``i`` (export time ``t``)."""
    level = diurnal(t)
    a, b, c, d, e = (SUBSCRIBERS[n] for n in ("alice", "bob", "carol", "dave", "eve"))
    port = 40000 + i % 1000
    ipfix = [
        _flow(WEB, a, 443, 51000, 6, int(90 * MB * level), t, src_as=64500),
        _flow(a, WEB, 51000, 443, 6, int(6 * MB * level), t, dst_as=64500, nat=(PUBLIC, port)),
        _flow(CDN, a, 443, 52000, 6, int(70 * MB * level), t, src_as=13335),
        _flow(WEB, b, 443, 53000, 6, int(140 * MB * level), t, src_as=64500),
        _flow(b, WEB, 53000, 443, 6, int(11 * MB * level), t, dst_as=64500),
        _flow(DNS, b, 53, 54000, 17, 40_000 + i % 7 * 1000, t, src_as=15169),
        _flow(c, SSH, 55000, 22, 6, int(25 * MB * level) + 1, t, dst_as=64501),
        _flow("100.64.9.9", DNS, 56000, 53, 17, 12_000, t, dst_as=15169),  # nobody's address: unattributed
    ]
    if i % 12 == 5:  # once an hour, two records mediation rejects (zero packets; end before start)
        ipfix.append(Flow(src_addr=b, dst_addr=WEB, src_port=1, dst_port=443, protocol=6, bytes=500, packets=0,
                          start_ms=t - 100_000, end_ms=t - 50_000))
        ipfix.append(Flow(src_addr=a, dst_addr=WEB, src_port=2, dst_port=443, protocol=6, bytes=700, packets=3,
                          start_ms=t - 50_000, end_ms=t - 100_000))
    v9 = [
        _flow(WEB, d, 443, 57000, 6, int(200 * MB * level), t, src_as=64500),
        _flow(d, WEB, 57000, 443, 6, int(30 * MB * level), t, dst_as=64500),
        _flow(CDN, d, 443, 57001, 6, int(50 * MB * level), t, src_as=13335),
    ]
    v5 = [
        _flow(WEB, e, 80, 58000, 6, int(35 * MB * level), t, src_as=64500),
        _flow(e, WEB, 58000, 80, 6, int(3 * MB * level), t, dst_as=64500),
    ]
    return {"ipfix": ipfix, "v9": v9, "v5": v5}


def config_for(root: Path, *extra: str) -> Config:
    """The configuration of a console over ``root`` (store, plans, assignments, bindings, classes)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "plans.toml").write_text(PLANS)
    (data / "assignments.csv").write_text(ASSIGNMENTS)
    (root / "static.csv").write_text(STATIC)
    return load(None, [f"store.path={data}", "mediation.enabled=true", f"subscribers.static_file={root / 'static.csv'}",
                       'mediation.classes=[{name="cdn", prefixes=["198.51.100.0/24"]}]', "mediation.watermark_s=60",
                       "store.flush_rows=10000000", "store.flush_interval_s=100000", *extra])


def build(root: Path, hours: int = HOURS, *extra: str) -> Dataset:
    """Write the dataset under ``root`` (store in ``root/data``; ``extra`` settings may add a ClickHouse output);
    returns its configuration and facts."""
    cfg = config_for(root, *extra)
    end = T0 + hours * 3_600_000
    metrics = metrics_mod.Metrics(CollectorRegistry())
    sink = make_sink(cfg, metrics)
    mediator = make_mediator(cfg)
    pipeline = Pipeline(cfg, metrics, sink, mediator, compliance=make_compliance(cfg, mediator),
                        static=make_static(cfg, mediator))
    mediator.bindings.refresh()
    for name, batch in pipeline.compliance.tick(T0 - 3_600_000).items():  # the static file's bindings
        sink.add(name, batch)
    recorder = ExporterStatsRecorder(None, start_ms=T0)
    ipfix, v9, v5 = IpfixExporter(1), V9Exporter(2, boot_ms=T0 - 86_400_000), V5Exporter(boot_ms=T0 - 86_400_000)
    clock = {"now": T0}
    previous: list[Flow] = []
    with mock.patch("collector.pipeline.now_ms", lambda: clock["now"]):
        steps = hours * 3_600_000 // STEP_MS
        for i in range(steps):
            t = T0 + (i + 1) * STEP_MS
            flows = step_flows(i, t)
            if i % 6 == 3 and previous:  # an exporter re-sends a record it sent before: a duplicate
                flows["ipfix"].append(previous[0])
            previous = flows["ipfix"]
            sets = [ipfix.flows(IPFIX_T, flows["ipfix"], t)]
            if i % 12 == 0:
                sets.insert(0, ipfix.templates(IPFIX_T))
            v9_sets = [v9.flows(V9_T, flows["v9"], t)]
            if i % 12 == 0:
                v9_sets.insert(0, v9.templates(V9_T))
            if i % 48 == 20:
                v9.sequence += 3  # three export packets lost on the way
            batch = [(ipfix.datagram(*sets, export_ms=t), EXPORTERS["ipfix"], t + 500),
                     (v9.datagram(*v9_sets, export_ms=t), EXPORTERS["v9"], t + 700),
                     (v5.datagram(flows["v5"], export_ms=t), EXPORTERS["v5"], t + 900)]
            if i % 24 == 7:  # a truncated datagram: a decode error of that exporter
                batch.append((b"\x00\x05\x00\x09" + bytes(8), EXPORTERS["v5"], t + 950))
            clock["now"] = t + 1000
            pipeline.process(batch)
            pipeline.sync_templates()  # as the daemon's tick does before the recorder reads the board
            for minute in range(t - STEP_MS + MIN_MS, t + MIN_MS, MIN_MS):
                for name, stats in recorder.tick(minute + 1000, pipeline.board, metrics.decode_errors).items():
                    sink.add(name, stats)
            for name, closed in mediator.tick(clock["now"]).items():
                if closed is not None and closed.num_rows:
                    sink.add(name, closed)
        for name, closed in mediator.close_all(end + 3_600_000).items():
            if closed is not None and closed.num_rows:
                sink.add(name, closed)
    sink.add("reconciliation", _unbalanced())
    sink.flush()
    for output in sink.outputs:  # the ClickHouse output delivers from its spool: wait until the server has it all
        drain = getattr(output, "drain", None)
        if drain is not None:
            assert drain(120), output.status()
    sink.close()
    _rate(cfg, end)
    alice_i = 100
    return Dataset(cfg, root, T0, end, (40000 + alice_i % 1000, T0 + (alice_i + 1) * STEP_MS - 100_000))


def _unbalanced():
    import numpy as np

    from mediation.exporter_stats import address_bytes
    from mediation.tables import RECONCILIATION

    start, exporter, bytes_in, attributed = UNBALANCED
    cols = {"interval_start": [start], "interval_end": [start + STEP_MS], "exporter": [address_bytes(exporter)],
            "source": ["flow"], "records_in": [1], "bytes_in": [bytes_in], "bytes_attributed": [attributed],
            "bytes_usage": [attributed], "balanced": [0], "created": [start + 2 * STEP_MS]}
    return RECONCILIATION.to_arrow({k: np.array(v, dtype=object if k == "source" else
                                                ("S16" if k == "exporter" else RECONCILIATION.column(k).numpy_dtype))
                                    for k, v in cols.items()})


def _rate(cfg: Config, end_ms: int) -> None:
    from rating.job import RatingJob

    job = RatingJob(cfg, clock=lambda: (end_ms + 3 * 3_600_000) / 1000)
    try:
        job.run(now_ms=end_ms + 3 * 3_600_000)
    finally:
        job.close()
