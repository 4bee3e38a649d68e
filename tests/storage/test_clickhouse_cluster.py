"""flowmed on a replicated ClickHouse cluster: one ZooKeeper, two shards x two replicas of clickhouse-server 18.16
(tests/fixtures/clickhouse_cluster.py), every scenario checked against what was sent, per batch id, on every replica.

A steady stream (and re-sent batches, also through a lagging replica); a replica SIGKILLed mid-stream and started
again; a node down while the schema is created; a whole shard down; ZooKeeper down; two collector hosts (``flowmed
run``) writing into the cluster and ``flowmed rate`` over it, equal to one host; two concurrent ``flowmed rate`` runs,
of which exactly one rates.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bench.exporter import Flow, IpfixExporter, flow_template
from collector import config
from decoders.schema import FLOWS
from mediation.tables import USAGE
from rating.job import RatingJob
from storage.clickhouse.client import connect
from storage.clickhouse.columns import arrow_to_columns
from storage.clickhouse.output import ClickHouseOutput
from storage.clickhouse.spool import Spool
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.collector.daemon import Daemon
from tests.fixtures.clickhouse_cluster import ReplicatedCluster
from tests.rating.helpers import HOME_PLAN
from tests.storage.clickhouse_helpers import BASE_MS, flow_batch, totals

pytestmark = [pytest.mark.external, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ID0 = 1 << 40  # batch ids of these tests


def wait_until(predicate, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def db(replicated_cluster: ReplicatedCluster, request) -> str:
    """A database of the test's own (replicated tables keep their ZooKeeper paths per database); afterwards every
    process of the topology is up again for the next scenario."""
    yield "c_" + re.sub(r"\W", "_", request.node.name)[-40:]
    replicated_cluster.reset()


def hosts(cluster: ReplicatedCluster, first_shard: int = 0, first_replica: int = 0) -> list[str]:
    """Every node as ``127.0.0.1:port``, starting with the given one (the output connects to the first it reaches)."""
    nodes = cluster.all_nodes
    start = nodes.index(cluster.nodes[first_shard][first_replica])
    return [f"127.0.0.1:{n.port}" for n in nodes[start:] + nodes[:start]]


def output(cluster: ReplicatedCluster, db: str, spool_dir: Path, *, first_shard: int = 0, first_replica: int = 0,
           tables=(FLOWS, USAGE), **kw) -> ClickHouseOutput:
    cfg = ClickHouseConfig(enabled=True, hosts=hosts(cluster, first_shard, first_replica), database=db,
                           cluster=cluster.name, replicated=True, batch_interval_s=0.2, insert_timeout_s=10, **kw)
    return ClickHouseOutput(cfg, SpoolConfig(), spool_dir, tables=list(tables), retention_interval_s=10**9,
                            max_backoff_s=0.5)


def usage_batch(k: int, rows: int = 200) -> pa.RecordBatch:
    """Usage rows of batch ``k`` (a ReplacingMergeTree table: no batch_id; distinct row ids)."""
    i = np.arange(rows, dtype=np.int64)
    return USAGE.to_arrow({
        "interval_start": np.full(rows, BASE_MS + k * 300_000, dtype=np.int64),
        "interval_end": np.full(rows, BASE_MS + (k + 1) * 300_000, dtype=np.int64),
        "subscriber_id": np.array([f"sub{j % 50}" for j in range(rows)], dtype=object),
        "direction": np.array(["down"] * rows, dtype=object),
        "bytes": (i + 1).astype(np.uint64) * (k + 1),
        "row_id": (k * 1_000_000 + i).astype(np.uint64),
        "created": np.full(rows, BASE_MS + 3_600_000, dtype=np.int64),
    })


def shard_of(cluster: ReplicatedCluster, batch_id: int) -> int:
    """The shard (0-based) the Distributed tables send a batch to (weights 1:1)."""
    return int(cluster.nodes[0][0].query(f"SELECT intHash64(toUInt64({batch_id})) % 2"))


def sync(cluster: ReplicatedCluster, db: str, tables=("flows_local",)) -> None:
    """Every replica fetches what the others have (the catch-up this test waits for)."""
    for node in cluster.all_nodes:
        for t in tables:
            node.query(f"SYSTEM SYNC REPLICA {db}.{t}", timeout=120)


def check_exact(cluster: ReplicatedCluster, db: str, ks: list[int], ids: list[int]) -> None:
    """Flows batches ``ks`` (ids ``ids``): each exactly once, on one shard, on both of its replicas."""
    sync(cluster, db)
    for node in cluster.all_nodes:
        n, b, p = node.query(f"SELECT count(), sum(bytes), sum(packets) FROM {db}.flows").split()
        assert (int(n), int(b), int(p)) == totals(ks), node.port
    seen: dict[int, int] = {}
    for s, shard in enumerate(cluster.nodes):
        per_replica = [node.query(f"SELECT batch_id, count() FROM {db}.flows_local GROUP BY batch_id "
                                  "ORDER BY batch_id") for node in shard]
        assert all(r == per_replica[0] for r in per_replica), f"the replicas of shard {s + 1} differ"
        for line in per_replica[0].splitlines():
            batch_id, count = map(int, line.split())
            assert count == 1000 and batch_id not in seen, (batch_id, count, s)
            seen[batch_id] = s
    assert sorted(seen) == sorted(ids)
    assert {seen[i] for i in ids} == {0, 1}  # both shards hold batches


# ---- a steady stream, re-sent batches ------------------------------------------------------------------------------
def test_steady_stream_and_resent_batches(replicated_cluster, db, tmp_path):
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool")
    for k in range(12):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    for k in range(4):
        out.write(USAGE, usage_batch(k), ID0 + 100 + k)
    assert out.drain(120), out.status()
    check_exact(c, db, list(range(12)), [ID0 + k for k in range(12)])
    for node in c.all_nodes:  # replicated tables and the read views on every node
        assert node.query(f"SELECT engine FROM system.tables WHERE database = '{db}' AND name IN ('flows_local', "
                          "'usage_local') ORDER BY name") == "ReplicatedMergeTree\nReplicatedReplacingMergeTree\n"
        assert node.query(f"SELECT count() FROM {db}_read.flows") == "12000\n"
    sync(c, db, ("usage_local",))
    usage_rows = [node.query(f"SELECT count(), sum(bytes) FROM {db}.usage_local") for node in c.all_nodes]

    # Batches of shard 1 acknowledged by its second replica while the first (where reads go first) lags behind:
    # as when flowmed inserted them through the second while the first was unreachable, and crashed before it
    # removed them from its spool.
    lagging, holder = c.nodes[0]
    lagging.query(f"SYSTEM STOP FETCHES {db}.flows_local")
    ks = [k for k in range(12, 40) if shard_of(c, ID0 + k) == 0][:4]
    direct = connect(out.config, host="127.0.0.1", port=holder.port)
    for k in ks:  # the block the Distributed table hands to shard 1 is the batch itself
        columns = arrow_to_columns(FLOWS, flow_batch(k), out.caps, ID0 + k)
        direct.execute(f"INSERT INTO {db}.flows_local VALUES", columns, columnar=True)
    direct.disconnect()
    out.close()
    assert lagging.query(f"SELECT count() FROM {db}.flows_local WHERE batch_id >= {ID0 + 12}") == "0\n"
    # The next start finds them in its spool (outcome unknown); counted through the Distributed table, shard 1
    # answers from the lagging replica: not there, so they are sent again, and the replica drops every one of them
    # as a duplicate (identical blocks, known to ZooKeeper).
    spool = Spool(tmp_path / "spool2", 10**9)
    for k in ks:
        spool.append("flows", ID0 + k, flow_batch(k))
    out2 = output(c, db, tmp_path / "spool2")
    assert out2.drain(120), out2.status()
    assert (out2.stats["inserted"], out2.stats["already_stored"]) == (4, 0)
    # Usage batches sent again with their ids: every replica drops them (not only FINAL would hide them).
    for k in range(4):
        out2.write(USAGE, usage_batch(k), ID0 + 100 + k)
    assert out2.drain(120), out2.status()
    out2.close()
    lagging.query(f"SYSTEM START FETCHES {db}.flows_local")
    check_exact(c, db, list(range(12)) + ks, [ID0 + k for k in list(range(12)) + ks])
    sync(c, db, ("usage_local",))
    assert [node.query(f"SELECT count(), sum(bytes) FROM {db}.usage_local") for node in c.all_nodes] == usage_rows
    assert c.nodes[1][0].query(f"SELECT count() FROM {db}.usage FINAL") == "800\n"


def test_retention_drops_expired_partitions_on_every_shard(replicated_cluster, db, tmp_path):
    """18.16 has no TTL: flowmed drops whole expired day partitions, listed over the cluster, ON CLUSTER."""
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool", tables=(FLOWS,))
    for k in range(6):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(120), out.status()
    out.close()
    sync(c, db)
    assert {n.query(f"SELECT count() > 0 FROM {db}.flows_local") for n in c.all_nodes} == {"1\n"}
    cfg = ClickHouseConfig(enabled=True, hosts=hosts(c), database=db, cluster=c.name, replicated=True,
                           flows_retention_days=30)  # the batches are of 2025-11-24: long expired
    keeper = ClickHouseOutput(cfg, SpoolConfig(), tmp_path / "spool2", tables=[FLOWS], retention_interval_s=3600)
    try:
        wait_until(lambda: all(n.query(f"SELECT count() FROM {db}.flows_local") == "0\n" for n in c.all_nodes),
                   what="the expired partitions to be dropped on every replica")
    finally:
        keeper.close()


# ---- a replica lost mid-stream -------------------------------------------------------------------------------------
def test_replica_killed_mid_stream_and_restarted(replicated_cluster, db, tmp_path):
    c = replicated_cluster
    victim = c.nodes[0][0]  # the node the output is connected to
    out = output(c, db, tmp_path / "spool")
    for k in range(30):
        out.write(FLOWS, flow_batch(k), ID0 + k)
        if k == 8:
            assert out.drain(120), out.status()
            victim.kill()  # SIGKILL: the output fails over to the next node, shard 1 goes on with its other replica
        elif k == 20:
            assert out.drain(120), out.status()  # batches 9..20 went in while the replica was down
            # A flowmed starting now checks the schema on the node it reaches, not on the node that is down.
            late = output(c, db, tmp_path / "spool-late", tables=(FLOWS,))
            late.write(FLOWS, flow_batch(100), ID0 + 100)
            assert late.drain(120), late.status()
            late.close()
            victim.start()
        time.sleep(0.05)
    assert out.drain(120), out.status()
    out.close()
    assert sum(out.spool.dropped_rows.values()) == 0
    c.wait_zookeeper(victim)
    ks = [*range(30), 100]
    check_exact(c, db, ks, [ID0 + k for k in ks])  # the restarted replica caught up


def test_insert_quorum_holds_batches_until_both_replicas_have_them(replicated_cluster, db, tmp_path):
    """insert_quorum = 2: a batch leaves the spool only once both replicas of its shard hold it; with a replica down
    its shard's batches wait (in the spool) until it is back."""
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool", tables=(FLOWS,), insert_quorum=2)
    for k in range(6):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(120), out.status()
    for shard in c.nodes:  # acknowledged: already on both replicas, no catching up needed
        counts = [n.query(f"SELECT count() FROM {db}.flows_local") for n in shard]
        assert counts[0] == counts[1], counts
    c.nodes[0][1].kill()
    ks = [k for k in range(6, 40) if shard_of(c, ID0 + k) == 0][:3]
    for k in ks:
        out.write(FLOWS, flow_batch(k), ID0 + k)
    wait_until(lambda: out.stats["insert_errors"] >= 2, what="inserts to fail (no quorum)")
    assert out.status()["spool_batches"] >= 1 and "quorum" in out.last_error.lower(), out.last_error
    c.nodes[0][1].start()
    c.wait_zookeeper(c.nodes[0][1])
    assert out.drain(180), out.status()
    out.close()
    check_exact(c, db, [*range(6), *ks], [ID0 + k for k in [*range(6), *ks]])


def test_node_down_while_the_schema_is_created(replicated_cluster, db, tmp_path):
    """ON CLUSTER DDL with a node down: the output waits insert_timeout_s once, queues the rest, and inserts; the
    node creates the tables and fetches the data when it is back."""
    c = replicated_cluster
    absent = c.nodes[1][1]
    absent.kill()
    out = output(c, db, tmp_path / "spool", tables=(FLOWS,))
    for k in range(8):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(180), out.status()
    out.close()
    absent.start()
    c.wait_zookeeper(absent)
    wait_until(lambda: absent.query(f"EXISTS TABLE {db}_read.flows").strip() == "1", what="the queued DDL")
    check_exact(c, db, list(range(8)), [ID0 + k for k in range(8)])


# ---- a whole shard down, ZooKeeper down ----------------------------------------------------------------------------
def test_whole_shard_down_the_spool_holds_then_drains(replicated_cluster, db, tmp_path):
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool")
    for k in range(6):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(120), out.status()
    for node in c.nodes[1]:
        node.kill()
    for k in range(6, 16):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    wait_until(lambda: out.stats["insert_errors"] >= 2, what="inserts to fail")
    assert out.status()["spool_batches"] >= 1  # shard 2's batches (and those after them) wait in the spool
    for node in c.nodes[1]:
        node.start()
    for node in c.nodes[1]:
        c.wait_zookeeper(node)
    assert out.drain(180), out.status()
    out.close()
    assert sum(out.spool.dropped_rows.values()) == 0
    check_exact(c, db, list(range(16)), [ID0 + k for k in range(16)])


def test_zookeeper_down_inserts_wait_then_resume(replicated_cluster, db, tmp_path):
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool")
    for k in range(4):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(120), out.status()
    c.zookeeper.kill()
    for k in range(4, 12):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    wait_until(lambda: out.stats["insert_errors"] >= 2, what="inserts to fail (tables read-only without ZooKeeper)")
    assert out.status()["spool_batches"] >= 1
    assert "readonly" in out.last_error.lower() or "zookeeper" in out.last_error.lower(), out.last_error
    c.zookeeper.start()
    assert out.drain(180), out.status()
    out.close()
    assert sum(out.spool.dropped_rows.values()) == 0
    check_exact(c, db, list(range(12)), [ID0 + k for k in range(12)])


# ---- two collector hosts, one rating run ---------------------------------------------------------------------------
SUBSCRIBERS = 20
INTERVAL = 300_000


def flowmed() -> str:
    return str(Path(sys.executable).with_name("flowmed"))


def cluster_sets(c: ReplicatedCluster, db: str, host_index: int, first_shard: int) -> list[str]:
    return ["output.clickhouse.enabled=true", f"output.clickhouse.hosts={json.dumps(hosts(c, first_shard))}",
            f"output.clickhouse.database={db}", f"output.clickhouse.cluster={c.name}",
            "output.clickhouse.replicated=true", "output.clickhouse.batch_interval_s=0.2",
            f"service.host_index={host_index}", "mediation.watermark_s=1"]


def exporter_flows(e: int, start: int) -> list[Flow]:
    """Exporter ``e``'s flows: an upload and a download per subscriber, in the interval from ``start``."""
    out = []
    for s in range(1, SUBSCRIBERS + 1):
        up, down = 1_000_000 * s + 10_000 * e, 3_000_000 * s + 7_000 * e
        out.append(Flow(f"100.64.0.{s}", "8.8.8.8", 40000 + e, 443, 6, up, up // 1000, start + 10_000 + s * 1000,
                        start + 20_000 + s * 1000))
        out.append(Flow("8.8.8.8", f"100.64.0.{s}", 443, 40000 + e, 6, down, down // 1000, start + 30_000 + s * 1000,
                        start + 40_000 + s * 1000))
    return out


def spooled(store: Path) -> int:
    return len([p for p in (store / "spool").rglob("*.arrow") if p.parent.name != "corrupt"])


def rate(c: ReplicatedCluster, db: str, site: Path, host_index: int, *extra: str) -> subprocess.Popen:
    sets = [*cluster_sets(c, db, host_index, host_index % 2), "store.enabled=false", f"store.path={site}",
            "rating.target=clickhouse", "rating.extra_lateness_s=0", *extra]
    args = [flowmed(), "rate"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=site, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rated(c: ReplicatedCluster, db: str) -> list[str]:
    """The current rated records (newest version of each, void ones left out), read on a node of shard 2."""
    out = c.nodes[1][1].query(f"SELECT record_id, version, bytes, amount_micros FROM {db}_read.rated_usage "
                              "WHERE void = 0 ORDER BY record_id")
    return out.splitlines()


def test_two_collector_hosts_rated_once_as_one_host(replicated_cluster, tmp_path):
    """Hosts A and B each receive their own exporters and write into the cluster; a third flowmed receives every
    exporter alone (what one host would do). ``flowmed rate`` over each gives the same records; two rating runs
    started together on two hosts: exactly one rates, the lease keeps the other out."""
    c = replicated_cluster
    subs = tmp_path / "subscribers.csv"
    subs.write_text("subscriber_id,network\n" + "".join(f"sub{s:02d},100.64.0.{s}\n"
                                                       for s in range(1, SUBSCRIBERS + 1)))
    common = ["mediation.enabled=true", f"subscribers.static_file={subs}"]
    a = Daemon(tmp_path / "a", *common, *cluster_sets(c, "two_hosts", 1, 0), flush_interval_s=1.0)
    b = Daemon(tmp_path / "b", *common, *cluster_sets(c, "two_hosts", 2, 1), flush_interval_s=1.0)
    one = Daemon(tmp_path / "one", *common, *cluster_sets(c, "one_host", 3, 0), flush_interval_s=1.0)
    daemons = (a, b, one)
    sent: dict[tuple[str, str], int] = {}
    try:
        for d in daemons:
            d.wait_message("READY=1", timeout=60)
        now = int(time.time() * 1000)
        start = now // INTERVAL * INTERVAL - 2 * INTERVAL  # a closed interval
        tmpl = flow_template(256, time_form="milliseconds")
        n_flows = 0
        for e in range(8):  # exporters 0-3 report to host A, 4-7 to host B; all of them to the one host
            exporter, flows = IpfixExporter(e), exporter_flows(e, start)
            datagram = exporter.datagram(exporter.templates(tmpl), exporter.flows(tmpl, flows, now), export_ms=now)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(datagram, ("127.0.0.1", (a if e < 4 else b).port))
                sock.sendto(datagram, ("127.0.0.1", one.port))
            n_flows += len(flows)
            for f in flows:
                up = f.src_addr.startswith("100.64.")
                sub = f"sub{int((f.src_addr if up else f.dst_addr).rsplit('.', 1)[1]):02d}"
                direction = "up" if up else "down"
                sent[(sub, direction)] = sent.get((sub, direction), 0) + f.bytes
        node = c.nodes[0][1]
        for db in ("two_hosts", "one_host"):
            wait_until(lambda db=db: node.query(f"EXISTS TABLE {db}.flows").strip() == "1"
                       and node.query(f"SELECT count() FROM {db}.flows").strip() == str(n_flows),
                       timeout=180, what=f"the flows in {db}")
        for d in daemons:
            assert d.stop() == 0, d.log_text()
    finally:
        for d in daemons:
            d.kill()
    assert [spooled(d.store) for d in daemons] == [0, 0, 0]
    def usage(db: str) -> dict[tuple[str, str], int]:
        rows = node.query(f"SELECT subscriber_id, direction, sum(bytes) FROM {db}.usage FINAL "
                          "WHERE subscriber_id != '' GROUP BY subscriber_id, direction")
        return {(s, d): int(n) for s, d, n in (line.split("\t") for line in rows.splitlines())}

    # the usage in the cluster is what was sent, per subscriber (once every replica read has fetched the parts:
    # a Distributed read picks one replica of each shard, which may not have the newest part yet)
    for db in ("two_hosts", "one_host"):
        try:
            wait_until(lambda db=db: usage(db) == sent, timeout=60, what=f"the usage in {db}")
        except AssertionError:
            assert usage(db) == sent, db
    a_ids = node.query("SELECT count() FROM two_hosts.flows WHERE bitAnd(bitShiftRight(batch_id, 8), 63) = 1")
    b_ids = node.query("SELECT count() FROM two_hosts.flows WHERE bitAnd(bitShiftRight(batch_id, 8), 63) = 2")
    assert int(a_ids) == int(b_ids) == n_flows // 2  # each host's batch ids carry its host_index

    site = tmp_path / "rating"
    site.mkdir()
    (site / "plans.toml").write_text(HOME_PLAN)
    (site / "assignments.csv").write_text("subscriber_id,plan_id,from\n" + "".join(
        f"sub{s:02d},home,2026-01-01T00:00:00+01:00\n" for s in range(1, SUBSCRIBERS + 1)))
    for db in ("two_hosts", "one_host"):
        p = rate(c, db, site, 1)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    records = rated(c, "two_hosts")
    assert len(records) == 2 * SUBSCRIBERS and records == rated(c, "one_host")

    # Host 4 (a rating job in this process) holds the lease: host 5's run is refused, whatever the timing.
    runs = int(c.nodes[0][0].query("SELECT count() FROM two_hosts.rating_runs"))
    job = RatingJob(config.load(None, [*cluster_sets(c, "two_hosts", 4, 0), "store.enabled=false",
                                       f"store.path={site}", "rating.target=clickhouse"]))
    try:
        job.lease.acquire()
        refused = rate(c, "two_hosts", site, 5)
        out, err = refused.communicate(timeout=300)
        assert refused.returncode == 1, (out, err)
        assert "rating lease is held by" in err and job.lease.owner in err, err
    finally:
        job.lease.release()
        job.close()
    # Released: two hosts start a run at the same time; each run that rates has the lease to itself.
    procs = [rate(c, "two_hosts", site, i, "rating.slice_subscribers=1") for i in (5, 6)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _, _ in results) in ([0, 0], [0, 1]), results
    assert all("rating lease is held by" in err for rc, _, err in results if rc), results
    spans = c.nodes[1][0].query("SELECT toUInt64(started), toUInt64(finished) FROM two_hosts_read.rating_runs "
                                "ORDER BY started, finished")
    spans = [tuple(map(int, line.split("\t"))) for line in spans.splitlines()]
    assert len(spans) == runs + sum(1 for rc, _, _ in results if rc == 0)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)), spans
    assert rated(c, "two_hosts") == records


# ---- adding a replica ----------------------------------------------------------------------------------------------
def test_a_new_replica_is_added_with_migrate(replicated_cluster, db, tmp_path):
    """A third replica for shard 1: remote_servers on every node, its macros, then ``flowmed clickhouse migrate``
    (it checks every node and creates what the new one lacks, ON CLUSTER); the replica fetches the shard's data."""
    c = replicated_cluster
    out = output(c, db, tmp_path / "spool", tables=(FLOWS,))
    for k in range(8):
        out.write(FLOWS, flow_batch(k), ID0 + k)
    assert out.drain(120), out.status()
    out.close()
    new = c.add_replica(0)
    try:
        wait_until(lambda: all(n.query(f"SELECT count() FROM system.clusters WHERE cluster = '{c.name}'").strip()
                               == "5" for n in c.all_nodes if n is not new), what="remote_servers to be reloaded")
        new.start()
        c.wait_zookeeper(new)
        args = [flowmed(), "clickhouse", "migrate"]
        for setting in (f"output.clickhouse.hosts={json.dumps(hosts(c))}", f"output.clickhouse.database={db}",
                        f"output.clickhouse.cluster={c.name}", "output.clickhouse.replicated=true"):
            args += ["--set", setting]
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"created table {db}.flows_local" in done.stdout, done.stdout
        assert new.query(f"SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'flows_local'") \
            == "ReplicatedMergeTree\n"
        check_exact(c, db, list(range(8)), [ID0 + k for k in range(8)])  # the new replica holds shard 1's batches
        assert new.query(f"SELECT count() FROM {db}_read.flows") == "8000\n"
    finally:
        c.remove_replica(new)
