"""Usage and reconciliation in a real clickhouse-server 18.16: exact totals, and a re-sent usage batch does not count
twice when read with FINAL (the table is a ReplacingMergeTree over the row identity)."""

from __future__ import annotations

import re

import pytest

from collector.config import load
from mediation import Mediator
from mediation.tables import RECONCILIATION, USAGE
from storage.clickhouse.output import ClickHouseOutput
from storage.query import QueryEngine
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.mediation.test_mediator import EXPECTED, config, run_scenario, subscribers

pytestmark = pytest.mark.external


@pytest.fixture
def db(clickhouse_server, request) -> str:
    name = "med_" + re.sub(r"\W", "_", request.node.name)[-40:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {name}")
    return name


def test_usage_in_clickhouse_is_exact_and_resends_collapse(clickhouse_server, db, tmp_path):
    out = ClickHouseOutput(ClickHouseConfig(enabled=True, port=clickhouse_server.port, database=db), SpoolConfig(),
                           tmp_path / "spool", retention_interval_s=10**9, max_backoff_s=1.0)
    batch_id = 100
    m = Mediator(config(), subscribers())
    usage = []
    for outs in run_scenario(m):
        for name, batch in outs.items():
            table = {"usage": USAGE, "reconciliation": RECONCILIATION}.get(name)
            if table is None:
                continue
            batch_id += 1
            out.write(table, batch, batch_id)
            if name == "usage":
                usage.append(batch)
    # the first usage batch again, under another batch id (a sender that retried above the output)
    out.write(USAGE, usage[0], 999)
    assert out.drain(60), out.status()
    out.close()

    rows = clickhouse_server.query(
        f"SELECT subscriber_id, toUInt64(interval_start) * 1000, direction, sum(bytes) FROM {db}.usage FINAL "
        "GROUP BY subscriber_id, interval_start, direction")
    got = {}
    for line in rows.splitlines():
        sub, start, direction, nbytes = line.split("\t")
        got[(sub, int(start), direction)] = int(nbytes)
    assert got == EXPECTED
    recon = clickhouse_server.query(
        f"SELECT sum(bytes_in), sum(bytes_attributed), sum(bytes_unattributed), sum(bytes_rejected), "
        f"sum(bytes_duplicate), min(balanced) FROM {db}.reconciliation")
    assert recon.split() == ["15749", "12450", "300", "999", "2000", "1"]

    cfg = load(None, ["output.clickhouse.enabled=true", f"output.clickhouse.port={clickhouse_server.port}",
                      f"output.clickhouse.database={db}"])
    with QueryEngine.for_config(cfg, "clickhouse") as engine:
        table = engine.query("SELECT subscriber_id, sum(bytes) AS b FROM usage FINAL WHERE direction = 'down' "
                             "GROUP BY subscriber_id ORDER BY subscriber_id")
    assert table.to_pylist() == [{"subscriber_id": "alice", "b": 5000}, {"subscriber_id": "bob", "b": 700},
                                 {"subscriber_id": "erin", "b": 4500}]
