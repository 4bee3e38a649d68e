"""A writer process for the handoff SIGKILL test: the daemon's sink (``make_sink``: the Parquet store, the ClickHouse
output and the handoff journal between them), SIGKILLed at one step of handing a batch over.

Run: ``python -m tests.mediation.handoff_writer DATA PORT DATABASE KILL_AT``. ``KILL_AT`` is a handoff step
(``journaled``, ``wrote:store``, ``wrote:clickhouse``, ``done``: see ``Sink.step_hook``), ``store-mid`` (inside the
store's write, after the first of the batch's two hour files) or ``restart``. The first three modes write batch A
(1,000 rows, one hour) whole, then batch B (2,000 rows over two hours) and kill the process at ``KILL_AT`` of B;
``restart`` builds the sink again (which replays the journal), lets ClickHouse drain and stops cleanly, printing
the outputs' counters as JSON. The batch ids are appended to ``DATA/ids`` as the sink issues them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import pyarrow as pa
from prometheus_client import CollectorRegistry

from collector import config as config_mod
from collector.components import make_sink
from collector.metrics import Metrics
from tests.storage.clickhouse_helpers import flow_batch

HOUR_MS = 3_600_000


def batch_b() -> pa.RecordBatch:
    """2,000 rows: 1,000 in the hour of batch A, 1,000 an hour later (the store writes two files)."""
    later = flow_batch(2)
    i = later.schema.get_field_index("time_received")
    field = later.schema.field(i)
    shifted = pa.array(later.column(i).cast(pa.int64()).to_numpy() + HOUR_MS).cast(field.type)
    return pa.concat_batches([flow_batch(1), later.set_column(i, field, shifted)])


def kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(data: str, port: int, database: str, kill_at: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = config_mod.load(None, [f"store.path={data}", "output.clickhouse.enabled=true",
                                 f"output.clickhouse.port={port}", f"output.clickhouse.database={database}",
                                 "output.clickhouse.batch_interval_s=0.1", "store.flush_interval_s=3600"])
    sink = make_sink(cfg, Metrics(CollectorRegistry()))
    store, clickhouse = sink.outputs
    if kill_at == "restart":
        sink.flush()  # the replays were queued first
        drained = clickhouse.drain(120)
        sink.close()
        print(json.dumps({"drained": drained, "replays": sink.replays,
                          "replayed_rows": {n: st.replayed_rows for n, st in sink.stats.items()},
                          "already_stored": clickhouse.stats["already_stored"]}), flush=True)
        return 0 if drained else 1
    ids = open(os.path.join(data, "ids"), "a")
    armed = False  # set once batch A is written: the kill is for batch B

    def hook(step: str, batch_id: int) -> None:
        if step == "journaled":
            ids.write(f"{batch_id}\n")
            ids.flush()
            os.fsync(ids.fileno())
        if armed and step == kill_at:
            kill()

    sink.step_hook = hook
    sink.add("flows", flow_batch(0))
    sink.flush()
    armed = True
    if kill_at == "store-mid":
        write_file = store._write_file

        def write_then_kill(*args, **kwargs):
            write_file(*args, **kwargs)
            kill()

        store._write_file = write_then_kill
    sink.add("flows", batch_b())
    sink.flush()
    print("not killed", flush=True)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
