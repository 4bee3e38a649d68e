"""The collector with the daemon's real Sink and Parquet store, read back with the query engine (chDB): usage and
the raw IPDR records it came from are queryable side by side, and equal what the simulated CMTS advanced."""

from __future__ import annotations

import asyncio

from bench.cmts import CmtsSimulator
from collector import metrics as metrics_mod
from collector.components import make_sink
from collector.config import load
from collector.ipdr import start_ipdr
from storage.query import QueryEngine


def test_store_and_query_usage_next_to_raw_records(tmp_path):
    sim = CmtsSimulator(16, ack_sequence_interval=8)
    cm_file = tmp_path / "cm.csv"
    cm_file.write_text("cm_mac,subscriber_id\n" + "".join(
        f"{modem.mac_text},sub{i}\n" for i, modem in enumerate(sim.modems)))

    async def scenario():
        port = await sim.listen("127.0.0.1", 0)
        config = load(None, [f"store.path={tmp_path / 'data'}", "ipdr.enabled=true",
                             f'ipdr.exporters=[{{address="127.0.0.1:{port}", name="cmts1"}}]',
                             f"ipdr.cm_subscribers_file={cm_file}", "ipdr.idle_ack_s=0.1",
                             "output.clickhouse.enabled=false"])
        sink = make_sink(config, metrics_mod.current())
        collector = await start_ipdr(asyncio.get_running_loop(), config, sink)
        sim.generate_interval()
        await sim.wait_acked(timeout=30)
        sim.reset_advanced()
        for _ in range(2):
            sim.generate_interval()
            await sim.wait_acked(timeout=30)
        await collector.stop()
        sink.close()
        await sim.close()
        return config

    config = asyncio.run(asyncio.wait_for(scenario(), 90))
    engine = QueryEngine.for_store(config.store.path)
    usage = engine.query("SELECT subscriber_id, direction, sum(bytes) AS b FROM usage WHERE source = 'ipdr' "
                         "GROUP BY subscriber_id, direction").to_pylist()
    got = {(r["subscriber_id"], r["direction"]): r["b"] for r in usage}
    assert got == sim.expected_usage({modem.mac: f"sub{i}" for i, modem in enumerate(sim.modems)})
    joined = engine.query(
        "SELECT r.cm_mac AS mac, sum(r.delta_octets) AS d, any(r.subscriber_id) AS s FROM ipdr_records AS r "
        "WHERE r.usage_row_id IN (SELECT row_id FROM usage) GROUP BY r.cm_mac ORDER BY mac").to_pylist()
    assert len(joined) == 16 and sum(r["d"] for r in joined) == sum(got.values())
    assert joined[0]["mac"] == sim.modems[0].mac_text and joined[0]["s"] == "sub0"
