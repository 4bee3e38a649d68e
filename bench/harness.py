"""Side-by-side harness: flowmed's whole pipeline against nfcapd and nfacctd on the same offered-rate ladder.

    python -m bench.harness --versions 9,10 --rates 25000,50000,65000,80000 --duration 10 --repeat 3 \\
        --out bench/results/ladder.md
    python -m bench.harness --collectors flowmed --soak 600 --soak-rate 5000 --out bench/results/soak.md

Collectors (``--collectors``, default all that are installed):

* ``flowmed``: ``flowmed run`` (``python -m collector.cli run``) with a temporary store and the whole pipeline:
  decode, correlation against 100,000 subscribers of a static bindings file that covers every source address the
  load generator uses (10.0.0.0/8: 68,928 /25s and 31,072 /24s), de-duplication, aggregation into usage and the
  embedded Parquet store (``compliance.enabled=false``: the issue's pipeline); the load tool's ``vary`` makes every
  record distinct, so nothing is skipped as a duplicate;
* ``flowmed-compliance``: the same with flowmed's default compliance stage on as well (an ``ip_detail_records`` row
  per flow, attributed to its subscriber, and ``nat_events``), one more table written per flow;
* ``flowmed-w2``: the same as ``flowmed`` with ``service.workers=2`` (the load comes from 8 simulated exporters, so
  the kernel's SO_REUSEPORT hash spreads it over both workers);
* ``flowmed-ch``: the same pipeline writing to a local clickhouse-server (Debian's 18.16, started by the harness on
  free ports in a temporary directory) instead of the embedded store;
* ``nfcapd`` (nfdump): ``nfcapd -w DIR -p PORT -b 127.0.0.1 -B 32MiB``; stored records are the ``Flows:`` of
  ``nfdump -R DIR -I`` (the files' own statistics record: exact, and costs nothing to read);
* ``nfacctd`` (pmacct): the print plugin aggregating by protocol and destination port (a handful of rows: with the
  5-tuple every distinct flow of the load is a cache entry, its cache overflows and it loses most records) into a
  CSV file every 2 s; it aggregates, so what it stored is measured as packets (the sum of its PACKETS column against
  the packets the generator sent).

``--versions sflow`` offers sFlow v5 instead (:mod:`bench.load`'s sFlow mode: 7 flow samples per datagram, one
agent; flowmed only): the samples' sources (100.64.0.0/18) are outside the bindings, so mediation looks every one up
and finds nothing, and the load does not ``vary`` (sFlow samples are timed at arrival, so none repeats).

Every run starts the collector fresh, offers ``--duration`` seconds of one version at one datagram rate with
:func:`bench.load.run_load` (30 records per datagram, from this process, loopback only), waits until the socket's
receive queue is empty, reads the kernel's drop counter of the collector's sockets (``/proc/net/udp``, ``drops``)
and the CPU the collector's process tree used (``/proc/PID/stat`` utime + stime), stops the collector (SIGTERM:
each flushes what it holds) and counts what it stored. Each point is repeated ``--repeat`` times; the table shows
medians, and the loss-free rate (the highest rate with less than 0.1 % of records lost in the median) per collector.

``--soak S`` instead runs flowmed for S seconds at ``--soak-rate`` and samples the RSS of its process tree every
second (memory flat: the last third's mean against the first third's, after a warm-up of a quarter of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RECORDS = 30
SFLOW_SAMPLES = 7
"""Flow samples per sFlow datagram (``--versions sflow``): what a 1400-byte MTU holds, as agents send them."""
LOSS_FREE = 0.001
"""Loss-free: less than 0.1 % of the records sent are missing from what the collector stored."""
SUBSCRIBERS = 100_000
ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIPELINE = ["compliance.enabled=false"]
"""The issue's whole pipeline (decode, correlation, aggregation, storage); ``flowmed-compliance`` adds the
compliance stage (ip_detail_records and nat_events per flow, on by default in flowmed)."""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc readings ---------------------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (seconds; a process that is gone counts 0)."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after the comm field
    return total / CLK_TCK


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of VmRSS of ``pids``."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def udp_sockets(port: int) -> list[tuple[int, int]]:
    """``(rx_queue bytes, drops)`` of every IPv4/IPv6 UDP socket bound to local ``port``."""
    out = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) >= 13 and int(f[1].rpartition(":")[2], 16) == port:
                out.append((int(f[4].partition(":")[2], 16), int(f[12])))
    return out


def wait_drained(port: int, timeout: float = 60.0) -> None:
    """Until the receive queues of ``port``'s sockets stay empty for half a second (the collector caught up)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 5:
        queued = sum(q for q, _ in udp_sockets(port))
        quiet = quiet + 1 if queued == 0 else 0
        time.sleep(0.1)


# --- collectors --------------------------------------------------------------------------------------------------

def bindings_csv(path: Path, subscribers: int = SUBSCRIBERS) -> None:
    """A static bindings CSV of ``subscribers`` (at most 2**17) covering all of 10.0.0.0/8 (the generator's sources).

    The first ``k`` /24s are split into two /25s (two subscribers each), the other ``65536 - k`` /24s are one
    subscriber each, with ``k = subscribers - 65536``.
    """
    split = subscribers - 65536
    if not 0 <= split <= 65536:
        raise ValueError("subscribers must be 65,536 to 131,072 to cover 10.0.0.0/8 exactly")
    lines = ["subscriber_id,network,valid_from,valid_to"]
    n = 0
    for block in range(65536):
        net = f"10.{block >> 8}.{block & 255}"
        if block < split:
            lines.append(f"s{n:06d},{net}.0/25,,")
            lines.append(f"s{n + 1:06d},{net}.128/25,,")
            n += 2
        else:
            lines.append(f"s{n:06d},{net}.0/24,,")
            n += 1
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Collector:
    """A started collector: its process, UDP port and how to count what it stored once stopped."""

    name: str
    proc: subprocess.Popen
    port: int
    workdir: Path
    count: Callable[[], int]
    """Records stored (called after stop)."""
    stop_timeout: float = 120.0
    stop_signal: int = signal.SIGTERM
    group: bool = False
    """Signal the process group (nfacctd: the core and its plugin processes)."""

    def stop(self) -> int:
        if self.proc.poll() is None:
            if self.group:
                os.killpg(self.proc.pid, self.stop_signal)
            else:
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _wait_udp_bound(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not udp_sockets(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"collector did not bind port {port} (exit {proc.poll()})")
        time.sleep(0.1)


def _wait_ready(notify: socket.socket, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``proc`` sends ``READY=1`` to ``notify`` (sd_notify protocol); the socket is closed afterwards."""
    deadline = time.monotonic() + timeout
    notify.settimeout(0.5)
    try:
        while True:
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return
            except TimeoutError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flowmed did not report READY=1 (exit {proc.poll()})")
    finally:
        notify.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flowmed did not start (exit {proc.poll()})") from None
            time.sleep(0.2)


class ClickHouse:
    """A throwaway clickhouse-server (Debian 18.16) on free ports in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port(socket.SOCK_STREAM)
        d = path
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        args = [shutil.which("clickhouse-server") or "clickhouse-server",
                "--config-file=/etc/clickhouse-server/config.xml", "--", f"--path={d}/", f"--tmp_path={d}/tmp/",
                f"--format_schema_path={d}/fs/", f"--user_files_path={d}/uf/", f"--tcp_port={self.port}",
                f"--http_port={free_port(socket.SOCK_STREAM)}",
                f"--interserver_http_port={free_port(socket.SOCK_STREAM)}", f"--logger.log={d}/server.log",
                f"--logger.errorlog={d}/server.err", "--logger.level=warning", "--listen_host=127.0.0.1"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "ab"),
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.query("SELECT 1")
                return
            except RuntimeError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.3)

    def query(self, sql: str) -> str:
        r = subprocess.run(["clickhouse-client", "--host=127.0.0.1", f"--port={self.port}", "-q", sql],
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"clickhouse-client: {r.stderr.strip()[:300]}")
        return r.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Harness:
    """Starts collectors of each kind in fresh temporary directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bindings = root / "bindings.csv"
        bindings_csv(self.bindings)
        self.clickhouse: ClickHouse | None = None
        self.runs = 0

    def close(self) -> None:
        if self.clickhouse is not None:
            self.clickhouse.stop()

    def _dir(self, name: str) -> Path:
        self.runs += 1
        d = self.root / f"{self.runs:03d}-{name}"
        d.mkdir()
        return d

    def start(self, name: str) -> Collector:
        return getattr(self, "_start_" + name.replace("-", "_"))(self._dir(name))

    def _flowmed(self, d: Path, name: str, extra: Sequence[str], count: Callable[[Path], int]) -> Collector:
        udp, metrics = free_port(), free_port(socket.SOCK_STREAM)
        store = d / "data"
        sets = [f'listen.udp=["127.0.0.1:{udp}"]', "listen.sflow=[]", f"store.path={store}",
                f"metrics.listen=127.0.0.1:{metrics}",
                f"subscribers.static_file={self.bindings}", "service.shutdown_timeout_s=110", *extra]
        # READY=1 on our own notify socket: flowmed (the supervisor, with workers) says it once every worker reads
        # (a short path: a Unix socket's path is limited to 107 bytes)
        notify_path = Path(tempfile.gettempdir()) / f"flowmed-harness-{os.getpid()}-{self.runs}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(notify_path)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(d / "flowmed.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "run"] + [a for s in sets
                                for a in ("--set", s)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                _wait_ready(notify, proc)
            finally:
                notify_path.unlink(missing_ok=True)
            _wait_http(f"http://127.0.0.1:{metrics}/metrics", proc)
            _wait_udp_bound(udp, proc)
        except RuntimeError:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name}: {(d / 'flowmed.log').read_text()[-1500:]}") from None
        return Collector(name, proc, udp, d, lambda: count(store))

    def _start_flowmed(self, d: Path) -> Collector:
        return self._flowmed(d, "flowmed", PIPELINE, store_flows)

    def _start_flowmed_w2(self, d: Path) -> Collector:
        return self._flowmed(d, "flowmed-w2", [*PIPELINE, "service.workers=2"], store_flows)

    def _start_flowmed_compliance(self, d: Path) -> Collector:
        return self._flowmed(d, "flowmed-compliance", [], store_flows)

    def _start_flowmed_ch(self, d: Path) -> Collector:
        if self.clickhouse is None:
            self.clickhouse = ClickHouse(self.root / "clickhouse")
        ch = self.clickhouse
        db = f"bench{self.runs}"
        extra = [*PIPELINE, "store.enabled=false", "output.clickhouse.enabled=true",
                 f"output.clickhouse.port={ch.port}", f"output.clickhouse.database={db}"]
        return self._flowmed(d, "flowmed-ch", extra, lambda _s: int(ch.query(f"SELECT count() FROM {db}.flows")))

    def _start_nfcapd(self, d: Path) -> Collector:
        port = free_port()
        (d / "flows").mkdir()
        log = open(d / "nfcapd.log", "wb")
        proc = subprocess.Popen(["nfcapd", "-w", str(d / "flows"), "-p", str(port), "-b", "127.0.0.1",
                                 "-B", str(32 << 20)], stdout=log, stderr=subprocess.STDOUT)
        _wait_udp_bound(port, proc)

        def count() -> int:
            out = subprocess.run(["nfdump", "-R", str(d / "flows"), "-I"], capture_output=True, text=True).stdout
            return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("Flows:"))
        return Collector("nfcapd", proc, port, d, count)

    def _start_nfacctd(self, d: Path) -> Collector:
        port = free_port()
        out = d / "out.csv"
        conf = d / "nfacctd.conf"
        conf.write_text(f"""daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
nfacctd_pipe_size: {32 << 20}
plugin_buffer_size: 1048576
plugin_pipe_size: 67108864
plugins: print[p]
aggregate[p]: proto, dst_port
print_output[p]: csv
print_output_file[p]: {out}
print_output_file_append[p]: true
print_refresh_time[p]: 2
print_cache_entries[p]: 16411
""")
        log = open(d / "nfacctd.log", "wb")
        proc = subprocess.Popen(["nfacctd", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _wait_udp_bound(port, proc)
        time.sleep(0.5)  # the plugin process comes up after the core binds
        # SIGINT to the core (it passes it to its plugins, which write their caches out before exiting)
        return Collector("nfacctd", proc, port, d, lambda: nfacctd_packets(out), stop_signal=signal.SIGINT)


def store_flows(store: Path) -> int:
    """Rows of the ``flows`` table in an embedded store (Parquet footers only)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in (store / "flows").rglob("*.parquet"))


def nfacctd_packets(path: Path) -> int:
    """Sum of the PACKETS column of nfacctd's print plugin CSV (0 when it wrote nothing)."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    if not lines:
        return 0
    col = lines[0].split(",").index("PACKETS")
    return sum(int(line.split(",")[col]) for line in lines[1:] if line and not line.startswith("SRC"))


# --- one run ----------------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    collector: str
    version: int
    rate: int
    sent: int
    """Records sent (nfacctd: packets sent)."""
    stored: int
    """Records stored (nfacctd: packets stored)."""
    kernel_drops: int
    """Datagrams the kernel dropped on the collector's sockets."""
    cpu: float
    """Collector CPU seconds per second of load (1.0 = one core)."""
    achieved_rate: float
    send_errors: int
    rss_mib: float
    exit_status: int

    @property
    def loss(self) -> float:
        return (self.sent - self.stored) / self.sent if self.sent else 0.0


def packets_per_pool_datagram(version: int, pool: int, seed: int = 0) -> np.ndarray:
    """Packets in each of the load tool's pool datagrams (the same random columns as :func:`bulk_datagrams`)."""
    from bench.exporter import flow_template, random_columns

    form = "sysuptime" if version == 9 else "milliseconds"
    now = int(time.time()) * 1000
    cols = random_columns(flow_template(256, time_form=form), pool * RECORDS, export_ms=now, boot_ms=now - 3_600_000,
                          seed=seed)
    return cols["packetDeltaCount"].astype(np.int64).reshape(pool, RECORDS).sum(axis=1)


def records_per_datagram(version: int) -> int:
    """Flow records (sFlow: flow samples) in each datagram the load sends."""
    from bench.load import SFLOW

    return SFLOW_SAMPLES if version == SFLOW else RECORDS


def version_name(version: int) -> str:
    """``v9``, ``IPFIX``, ``sFlow``."""
    from bench.load import SFLOW

    return {10: "IPFIX", SFLOW: "sFlow"}.get(version, f"v{version}")


def run_once(h: Harness, name: str, version: int, rate: int, duration: float, pool: int = 2000) -> RunResult:
    """One collector, one version, one rate (see the module docstring)."""
    from bench.load import SFLOW, run_load

    c = h.start(name)
    exporters = 8 if name.endswith("w2") else 1
    try:
        pids = process_tree(c.proc.pid)
        drops0 = sum(dr for _, dr in udp_sockets(c.port))
        cpu0 = cpu_seconds(pids)
        report = run_load(version=version, target=("127.0.0.1", c.port), rate=rate, duration_s=duration,
                          records=records_per_datagram(version), pool=pool, exporters=exporters,
                          vary=version != SFLOW)
        wait_drained(c.port)
        time.sleep(0.5)
        pids = process_tree(c.proc.pid)
        cpu = (cpu_seconds(pids) - cpu0) / report.elapsed_s
        rss = rss_bytes(pids)
        drops = sum(dr for _, dr in udp_sockets(c.port)) - drops0
    finally:
        rc = c.stop()
    sent = report.records
    if name == "nfacctd":  # it aggregates: compare packets
        per = packets_per_pool_datagram(version, pool)
        n_data = report.records // RECORDS
        sent = int(per.sum() * (n_data // pool) + per[: n_data % pool].sum())
    stored = c.count()
    result = RunResult(name, version, rate, sent, stored, drops, round(cpu, 3), round(report.achieved_rate, 1),
                       report.send_errors, round(rss / 2**20, 1), rc)
    shutil.rmtree(c.workdir, ignore_errors=True)
    return result


# --- the ladder and the table ------------------------------------------------------------------------------------

def median_row(runs: list[RunResult]) -> dict[str, float]:
    med = statistics.median
    return {"sent": med(r.sent for r in runs), "stored": med(r.stored for r in runs),
            "loss": med(r.loss for r in runs), "kernel_drops": med(r.kernel_drops for r in runs),
            "cpu": med(r.cpu for r in runs), "achieved": med(r.achieved_rate for r in runs),
            "rss_mib": med(r.rss_mib for r in runs), "send_errors": max(r.send_errors for r in runs),
            "bad_exit": sum(1 for r in runs if r.exit_status != 0), "n": len(runs)}


def markdown(results: list[RunResult], header: str) -> str:
    """The ladder table (medians) and the loss-free rates."""
    groups: dict[tuple[str, int, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.collector, r.version, r.rate), []).append(r)
    lines = [header, "",
             "| collector | version | offered datagrams/s | achieved | records sent | stored | lost | kernel drops "
             "(datagrams) | CPU (cores) | RSS MiB | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    best: dict[tuple[str, int], int] = {}
    for (name, version, rate), runs in sorted(groups.items()):
        m = median_row(runs)
        unit = " pkts" if name == "nfacctd" else ""
        note = f" ({m['bad_exit']} bad exits)" if m["bad_exit"] else ""
        lines.append(f"| {name} | {version_name(version)} | {rate:,} | {m['achieved']:,.0f} | "
                     f"{m['sent']:,.0f}{unit} | {m['stored']:,.0f} | {100 * m['loss']:.2f} % | "
                     f"{m['kernel_drops']:,.0f} | {m['cpu']:.2f} | {m['rss_mib']:.0f} | {m['n']}{note} |")
        if m["loss"] < LOSS_FREE:
            best[(name, version)] = max(best.get((name, version), 0), rate)
    lines += ["", "Loss-free offered rate (median loss < 0.1 % of records), highest rung of the ladder:", ""]
    names = sorted({k[0] for k in groups})
    versions = sorted({k[1] for k in groups})
    for v in versions:
        cells = []
        for n in names:
            rate = best.get((n, v), 0)
            cells.append(f"{n} {rate:,}/s ({rate * records_per_datagram(v) / 1e6:.2f} M records/s)" if rate
                         else f"{n} none")
        lines.append(f"- {version_name(v)}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, Linux {os.uname().release}"


def soak(h: Harness, name: str, version: int, rate: int, duration: float) -> dict[str, float]:
    """flowmed at ``rate`` for ``duration`` s, RSS of its process tree sampled every second."""
    import threading

    from bench.load import run_load

    c = h.start(name)
    samples: list[tuple[float, int]] = []
    out: dict = {}
    try:
        t = threading.Thread(target=lambda: out.setdefault("r", run_load(
            version=version, target=("127.0.0.1", c.port), rate=rate, duration_s=duration, records=RECORDS, vary=True)))
        t0 = time.monotonic()
        t.start()
        while t.is_alive():
            samples.append((time.monotonic() - t0, rss_bytes(process_tree(c.proc.pid))))
            time.sleep(1.0)
        wait_drained(c.port)
        drops = sum(dr for _, dr in udp_sockets(c.port))
    finally:
        rc = c.stop()
    stored = c.count()
    warm = [v for s, v in samples if s >= duration / 4]
    third = max(1, len(warm) // 3)
    first, last = sum(warm[:third]) / third, sum(warm[-third:]) / third
    sent = out["r"].records
    return {"duration_s": duration, "rate": rate, "sent": sent, "stored": stored, "kernel_drops": drops,
            "exit_status": rc, "rss_first_third_mib": round(first / 2**20, 1),
            "rss_last_third_mib": round(last / 2**20, 1), "rss_max_mib": round(max(v for _, v in samples) / 2**20, 1),
            "rss_growth_mib": round((last - first) / 2**20, 1), "samples": len(samples),
            "rss_mib_each_tenth": [round(samples[min(len(samples) - 1, len(samples) * k // 10)][1] / 2**20, 1)
                                   for k in range(1, 11)]}


def available(names: Sequence[str]) -> list[str]:
    need = {"nfcapd": "nfcapd", "nfacctd": "nfacctd", "flowmed-ch": "clickhouse-server"}
    return [n for n in names if n not in need or shutil.which(need[n])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("--collectors", default="flowmed,flowmed-w2,flowmed-ch,flowmed-compliance,nfcapd,nfacctd",
                   help="comma-separated: flowmed, flowmed-w2, flowmed-ch, flowmed-compliance, nfcapd, nfacctd "
                        "(missing tools are skipped)")
    p.add_argument("--versions", default="9,10",
                   help="9, 10 (IPFIX) and/or sflow (7 flow samples per datagram; flowmed and its variants only)")
    p.add_argument("--rates", default="25000,50000,65000,80000", help="offered datagrams/s (30 records each)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per point (medians reported)")
    p.add_argument("--soak", type=float, default=0.0, help="instead: one flowmed run of this many seconds, RSS sampled")
    p.add_argument("--soak-rate", type=int, default=25000, help="datagrams/s of the soak")
    p.add_argument("--out", default="", help="Markdown file to write (default: print)")
    p.add_argument("--json", default="", help="also write every run as JSON here")
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="flowmed-harness-"))
    h = Harness(root)
    try:
        names = available(a.collectors.split(","))
        from bench.load import SFLOW

        versions = [SFLOW if v.strip().lower() == "sflow" else int(v) for v in a.versions.split(",")]
        cmdline = "python -m bench.harness " + " ".join(argv if argv is not None else sys.argv[1:])
        if a.soak:
            rows = [soak(h, names[0], versions[0], a.soak_rate, a.soak)]
            text = (f"Soak: `{cmdline}`\n\nMachine: {machine()}\n\n```\n" + json.dumps(rows[0], indent=1)
                    + "\n```\n")
        else:
            results: list[RunResult] = []
            for version in versions:
                for rate in (int(r) for r in a.rates.split(",")):
                    for name in names:
                        for _ in range(a.repeat):
                            r = run_once(h, name, version, rate, a.duration)
                            results.append(r)
                            print(json.dumps({**asdict(r), "loss": round(r.loss, 5),
                                              "load": os.getloadavg()[0]}), file=sys.stderr, flush=True)
            rows = [asdict(r) for r in results]
            text = markdown(results, f"Command: `{cmdline}`\n\nMachine: {machine()}; load average at the end "
                            f"{os.getloadavg()[0]:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(text)
        print(text)
    finally:
        h.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
