"""The daemon's mediation and compliance stages together, as ``collector.pipeline.Pipeline`` runs them with
``[compliance] enabled``: a ``flows`` batch of 60,000 records (2,000 datagrams x 30) whose sources are among
100,000 static subscribers (bindings in SQLite, as the daemon loads a static file), each batch new records.

    python -m pytest bench/test_compliance_bench.py --benchmark-enable -s
    (on a shared machine add --benchmark-timer=time.thread_time: CPU time of the calling thread, where the stage's
    compiled passes also run)

``shared``: the Mediator keeps its lookups (``keep_attribution``) and the compliance stage takes them, as the
Pipeline does; ``separate``: the compliance stage looks every record up again (the stage alone, as before).
records/s = rows / mean of Mediator.process + ComplianceStage.process.
"""

from __future__ import annotations

import itertools

import pytest

from bench.flowgen import T0_MS, flows_batch
from collector.config import load
from mediation.compliance.stage import ComplianceStage
from mediation.mediator import Mediator
from mediation.subscribers.bindings import Bindings, parse_network

SUBSCRIBERS = 100_000


def _enabled(request: pytest.FixtureRequest) -> bool:
    """False under --benchmark-disable (the suite's default): run once, on little data."""
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


@pytest.fixture(scope="module")
def static_bindings(tmp_path_factory, request) -> Bindings:
    n = SUBSCRIBERS if _enabled(request) else 5_000
    b = Bindings(str(tmp_path_factory.mktemp("bindings") / "bindings.db"))
    entries = [(f"sub{i:06d}", parse_network(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"), T0_MS - 86400_000,
                2**62) for i in range(n)]
    b.open_many(entries, session_ids=[f"static:{i}" for i in range(n)])
    b.commit()
    b.refresh()
    return b


@pytest.mark.parametrize("mode", ["shared", "separate"])
def test_mediation_and_compliance_rate(benchmark, request, static_bindings, mode) -> None:
    rows = 60_000 if _enabled(request) else 3_000
    rounds = 8 if _enabled(request) else 1
    cfg = load(None, ["compliance.enabled=true"])
    mediator = Mediator(cfg, static_bindings, refresh_interval_s=3600)
    stage = ComplianceStage(cfg, static_bindings)
    shared = mode == "shared"
    mediator.keep_attribution = shared
    # a warm-up batch fills the binding string cache as a running daemon has it
    subscribers = len(static_bindings.subscriber_names)
    batches = [flows_batch(rows, t0_ms=T0_MS + i * 60_000, seed=i, sources=subscribers) for i in range(rounds + 1)]
    counter = itertools.count()

    def one() -> int:
        i = next(counter)
        flows, now = batches[i], T0_MS + (i + 1) * 60_000
        out = mediator.process(flows, now)
        out.update(stage.process(flows, now, mediator.take_attribution() if shared else None))
        return out["ip_detail_records"].num_rows

    one()
    assert benchmark.pedantic(one, rounds=rounds, iterations=1) == rows
    skipped = mediator.counters["records_rejected"] + mediator.counters["records_duplicate"]  # not mediated
    assert stage.counters["records_looked_up"] == (skipped if shared else (rounds + 1) * rows)
    if benchmark.stats:
        benchmark.extra_info["records_per_s"] = round(rows / benchmark.stats.stats.mean)
        print(f"\nmediation + compliance ({mode}): {benchmark.extra_info['records_per_s']:,} records/s")


def test_compliance_stage_rate(benchmark, request, static_bindings) -> None:
    """ComplianceStage.process alone, with the Mediator's attribution of each batch (as the daemon hands it over):
    the ``nat_events`` scan and the ``ip_detail_records`` batch. records/s = rows / mean of the stage's call."""
    rows = 60_000 if _enabled(request) else 3_000
    rounds = 20 if _enabled(request) else 1
    cfg = load(None, ["compliance.enabled=true"])
    mediator = Mediator(cfg, static_bindings, refresh_interval_s=3600)
    mediator.keep_attribution = True
    stage = ComplianceStage(cfg, static_bindings)
    subscribers = len(static_bindings.subscriber_names)
    work = []
    for i in range(rounds + 1):
        flows = flows_batch(rows, t0_ms=T0_MS + i * 60_000, seed=i, sources=subscribers)
        mediator.process(flows, T0_MS + (i + 1) * 60_000)
        work.append((flows, mediator.take_attribution()))
    counter = itertools.count()

    def one() -> int:
        flows, attribution = work[next(counter)]
        return stage.process(flows, T0_MS, attribution)["ip_detail_records"].num_rows

    one()  # fills the binding string cache as a running daemon has it
    assert benchmark.pedantic(one, rounds=rounds, iterations=1) == rows
    if benchmark.stats:
        benchmark.extra_info["ns_per_record"] = round(benchmark.stats.stats.mean * 1e9 / rows, 1)
        print(f"\ncompliance stage alone: {benchmark.extra_info['ns_per_record']} ns/record")
