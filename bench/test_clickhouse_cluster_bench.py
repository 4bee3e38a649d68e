"""Insert throughput of the ClickHouse output into a replicated cluster: one ZooKeeper, two shards x two replicas of
Debian's clickhouse-server 18.16, all on this machine (tests/fixtures/clickhouse_cluster.py).

    python -m pytest bench/test_clickhouse_cluster_bench.py --benchmark-enable -s

* ``test_replicated_insert_throughput``: ``ClickHouseOutput`` (``replicated = true``) takes ``BATCHES`` flows batches
  of 200,000 rows (``write`` spools them), and the time until the last is acknowledged (``drain``) gives rows/s into
  the cluster, through the Distributed table (each batch to one shard, one replica writes, ZooKeeper records the
  block); ``extra_info`` also has the time until every replica holds every row (``SYSTEM SYNC REPLICA``).
* the same with ``insert_quorum = 2`` (a batch leaves the spool once both replicas of its shard have it).

The data is ``bench.flowgen.flows_batch``, as in bench/test_clickhouse_bench.py. With ``--benchmark-disable`` (the
suite default) each runs once on small batches, as a plain test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.flowgen import T0_MS, flows_batch
from decoders.schema import FLOWS
from storage.clickhouse.output import ClickHouseOutput
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.fixtures.clickhouse_cluster import replicated_cluster  # noqa: F401

pytestmark = [pytest.mark.external, pytest.mark.slow]

BATCHES = 10


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


@pytest.mark.parametrize("quorum", [0, 2])
def test_replicated_insert_throughput(benchmark, request, replicated_cluster, tmp_path: Path,  # noqa: F811
                                      quorum: int) -> None:
    c = replicated_cluster
    rows = 200_000 if _enabled(request) else 2_000
    batches = [flows_batch(rows, t0_ms=T0_MS + i * 60_000, seed=i + 1, sources=50_000) for i in range(BATCHES)]
    db = f"bench_repl_q{quorum}"
    cfg = ClickHouseConfig(enabled=True, hosts=[f"127.0.0.1:{n.port}" for n in c.all_nodes], database=db,
                           cluster=c.name, replicated=True, insert_quorum=quorum, batch_interval_s=0.2)
    out = ClickHouseOutput(cfg, SpoolConfig(fsync="always"), tmp_path / "spool", tables=[FLOWS])
    assert out.drain(120)  # connected, schema created: not part of the figure
    ids = iter(range(1, 10**6))
    acked_s: list[float] = []
    replicated_s: list[float] = []

    def insert_all() -> None:
        t = time.perf_counter()
        for batch in batches:
            out.write(FLOWS, batch, next(ids))
        assert out.drain(600), out.status()
        acked_s.append(time.perf_counter() - t)
        for node in c.all_nodes:
            node.query(f"SYSTEM SYNC REPLICA {db}.flows_local", timeout=600)
        replicated_s.append(time.perf_counter() - t)

    rounds = 3 if _enabled(request) else 1
    benchmark.pedantic(insert_all, rounds=rounds, iterations=1, warmup_rounds=0)
    out.close()
    total = rows * BATCHES
    acked, replicated = sum(acked_s) / len(acked_s), sum(replicated_s) / len(replicated_s)
    assert int(c.nodes[0][0].query(f"SELECT count() FROM {db}.flows")) == total * rounds
    benchmark.extra_info.update(rows=total, quorum=quorum, acked_s=round(acked, 3), replicated_s=round(replicated, 3),
                                rows_per_s_acked=round(total / acked), rows_per_s_replicated=round(total / replicated))
    print(f"\nreplicated cluster, insert_quorum={quorum}: {total} rows in {BATCHES} batches: acknowledged after "
          f"{acked:.2f} s ({total / acked:,.0f} rows/s), on every replica after {replicated:.2f} s "
          f"({total / replicated:,.0f} rows/s)")
