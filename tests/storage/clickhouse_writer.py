"""A writer process for the SIGKILL test: batches ``start..count-1`` through the spool and the ClickHouse output.

After each ``write()`` returns (the batch is durable in the spool) its number is appended to the ack file and
fsynced. On start, the batches still in the spool are replayed by the output; the writer resumes after the highest
batch that is acknowledged or spooled, so a batch is never sent under its id twice (as in the daemon, where new data
gets new ids). Run: ``python -m tests.storage.clickhouse_writer PORT DATABASE SPOOL_DIR ACK_FILE COUNT``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from decoders.schema import FLOWS
from storage.clickhouse.output import ClickHouseOutput
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.storage.clickhouse_helpers import flow_batch

BATCH_ID_BASE = 50_000


def main(port: int, database: str, spool_dir: str, ack_file: str, count: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Small groups and a short wait, so inserts happen while the stream is still being written.
    cfg = ClickHouseConfig(enabled=True, port=port, database=database, batch_rows=6000, batch_interval_s=0.2)
    out = ClickHouseOutput(cfg, SpoolConfig(), spool_dir, max_backoff_s=1.0)
    acked = [int(x) for x in open(ack_file).read().split()] if os.path.exists(ack_file) else []
    spooled = [e.batch_id - BATCH_ID_BASE for e in out.spool.entries()]
    start = max([-1, *acked, *spooled]) + 1
    print(f"resuming at batch {start} (acked {len(acked)}, spooled {spooled})", flush=True)
    with open(ack_file, "a") as ack:
        for k in range(start, count):
            out.write(FLOWS, flow_batch(k, rows=2000), BATCH_ID_BASE + k)
            ack.write(f"{k}\n")
            ack.flush()
            os.fsync(ack.fileno())
            time.sleep(0.02)  # a steady stream, not a burst: the test kills it in the middle
    ok = out.drain(120)
    out.close()
    print("drained" if ok else "NOT drained", out.status(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
