"""Soak test: a steady mix of NetFlow v5, v9, IPFIX, IPDR/SP and RADIUS on loopback into a running ``flowmed run``.

    python -m bench.soak --duration 120            # minutes in CI (tests/hardening/test_soak.py runs ~60 s)
    python -m bench.soak --duration 14400 --rate 3000 --json   # hours, by hand (docs/hardening.md)

What runs: ``flowmed run`` (``python -m collector.cli run``) with a temporary store (or ``--store``), RADIUS and
IPDR enabled; ``python -m bench.cmts`` (the simulated CMTS the collector dials); one :func:`bench.load.run_load`
thread per flow version (two exporters each, their own loopback addresses, correct sequence numbers); a RADIUS
client thread that opens, updates and closes sessions and retransmits until answered. The daemon's RSS is sampled
from ``/proc/<pid>/status`` every second.

At the end the senders stop, every RADIUS session is closed, the CMTS finishes its last interval, the daemon is
stopped with SIGTERM (exit 0 expected) and the totals are checked exactly:

* flows: records sent = records decoded + 30 x datagrams the kernel dropped (``flowmed_socket_drops_total``);
  records stored (``flowmed query``'s engine over the store) = records decoded - rows the Sink refused
  (``flowmed_sink_dropped_rows_total{table="flows"}``), decode errors = 0;
* RADIUS: every request answered; usage with source 'radius' = the sum of the sessions' final counters;
* IPDR: per cable modem and direction, the octets in ``ipdr_records`` = what the CMTS counters advanced;
* memory: after the warm-up, the mean RSS of the last third of the samples is within ``--rss-slack-mib`` (or 10%)
  of the mean of the first third.

Exit status 0 when every check holds; the report (text or ``--json``) lists each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDS = 30
"""Flow records per data datagram (every version)."""
RADIUS_SECRET = b"soak-secret"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS from /proc), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The daemon's metrics as ``{(sample name, sorted label items): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(metrics: dict[tuple[str, tuple], float], name: str, **labels: str) -> int:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return int(sum(v for (n, lab), v in metrics.items() if n == name and want <= set(lab)))


# --- RADIUS client --------------------------------------------------------------------------------------------

@dataclass
class RadiusClient:
    """Sessions Start -> Interim ... -> Stop against the daemon, each request retransmitted until answered."""

    port: int
    rate: float
    sent: int = 0
    answered: int = 0
    retransmits: int = 0
    unanswered: int = 0
    final_octets: int = 0
    """Sum over closed sessions of their last input + output octets (what usage must hold)."""
    open: dict[str, list[int]] = field(default_factory=dict)
    stop_flag: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.ident = 0
        self.rng = random.Random(7)
        self.counter = 0

    def request(self, status: int, session: str, octets_in: int = 0, octets_out: int = 0) -> None:
        from mediation.subscribers.radius import ATTRIBUTES, accounting_request

        a = ATTRIBUTES
        n = int(session.rsplit("-", 1)[1])
        attrs = [(a["Acct-Status-Type"], struct.pack("!I", status)), (a["User-Name"], f"user{n % 500}".encode()),
                 (a["Acct-Session-Id"], session.encode()),
                 (a["Framed-IP-Address"], bytes([100, 64, (n // 250) % 250, n % 250 + 1])),
                 (a["Event-Timestamp"], struct.pack("!I", int(time.time()))),
                 (a["Acct-Input-Octets"], struct.pack("!I", octets_in)),
                 (a["Acct-Output-Octets"], struct.pack("!I", octets_out))]
        self.ident = (self.ident + 1) % 256
        packet = accounting_request(self.ident, attrs, RADIUS_SECRET)
        self.sent += 1
        for _attempt in range(10):
            self.sock.sendto(packet, ("127.0.0.1", self.port))
            try:
                while True:
                    data, _ = self.sock.recvfrom(4096)
                    if len(data) >= 20 and data[0] == 5 and data[1] == packet[1]:
                        self.answered += 1
                        return
            except TimeoutError:
                self.retransmits += 1
        self.unanswered += 1

    def run(self) -> None:
        """Until stopped: at ``rate`` requests/s, start a session, update or stop an open one."""
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            if len(self.open) < 50 or self.rng.random() < 0.3:
                self.counter += 1
                name = f"soak-{self.counter}"
                self.request(1, name)
                self.open[name] = [0, 0]
            else:
                name = self.rng.choice(list(self.open))
                c = self.open[name]
                c[0] += self.rng.randrange(1000, 100_000)
                c[1] += self.rng.randrange(10_000, 5_000_000)
                if self.rng.random() < 0.3:
                    self.request(2, name, c[0], c[1])
                    self.final_octets += c[0] + c[1]
                    del self.open[name]
                else:
                    self.request(3, name, c[0], c[1])
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close_all(self) -> None:
        for name, c in list(self.open.items()):
            self.request(2, name, c[0], c[1])
            self.final_octets += c[0] + c[1]
            del self.open[name]


# --- the soak -------------------------------------------------------------------------------------------------

def soak(duration_s: float, rate: int, store: Path, *, modems: int = 40, cmts_interval_s: float = 5.0,
         radius_rate: float = 20.0, warmup_s: float | None = None, rss_slack_mib: float = 24.0,
         log_path: Path | None = None) -> dict[str, Any]:
    """Run the soak (see the module docstring); returns the report with ``ok`` and every figure."""
    from bench.load import run_load

    udp, radius_port, metrics_port = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    cmts_port = free_port(socket.SOCK_STREAM)
    intervals = max(1, int(duration_s // cmts_interval_s))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmts = subprocess.Popen([sys.executable, "-m", "bench.cmts", "--listen", f"127.0.0.1:{cmts_port}", "--modems",
                             str(modems), "--interval", str(cmts_interval_s), "--intervals", str(intervals)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    sets = [f'listen.udp=["127.0.0.1:{udp}"]', "listen.sflow=[]", f"store.path={store}",
            f"metrics.listen=127.0.0.1:{metrics_port}",
            "store.flush_interval_s=1", "mediation.dedup_window_s=10", "mediation.watermark_s=5",
            "radius.enabled=true", f'radius.listen=["127.0.0.1:{radius_port}"]',
            f'radius.clients=[{{address="127.0.0.1", secret="{RADIUS_SECRET.decode()}", name="soak"}}]',
            "ipdr.enabled=true", "ipdr.preexisting=count",
            f'ipdr.exporters=[{{address="127.0.0.1:{cmts_port}", name="cmts"}}]', "service.shutdown_timeout_s=60"]
    args = [sys.executable, "-m", "collector.cli", "run"] + [a for s in sets for a in ("--set", s)]
    log = open(log_path or (store.parent / "flowmed-soak.log"), "wb")
    time.sleep(0.5)  # the CMTS listens before the collector dials
    daemon = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    report: dict[str, Any] = {"duration_s": duration_s, "rate": rate, "store": str(store)}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(metrics_port)
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"flowmed did not start (exit {daemon.poll()})") from None
                time.sleep(0.2)
        radius = RadiusClient(radius_port, radius_rate)
        loads: dict[int, Any] = {}
        threads = [threading.Thread(target=radius.run, daemon=True)]
        for i, version in enumerate((5, 9, 10)):
            def send(version: int = version, i: int = i) -> None:
                loads[version] = run_load(version=version, target=("127.0.0.1", udp), rate=max(1, rate // 3),
                                          duration_s=duration_s, records=RECORDS, pool=500, template_every=200,
                                          tick_s=0.01, domain=10 * i, exporters=2, seed=i)
            threads.append(threading.Thread(target=send, daemon=True))
        rss: list[tuple[float, int]] = []
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads[1:]):
            rss.append((time.monotonic() - t0, rss_bytes(daemon.pid)))
            time.sleep(1.0)
        radius.stop_flag.set()
        threads[0].join(30)
        radius.close_all()
        cmts_out, _ = cmts.communicate(timeout=cmts_interval_s * 6 + 60)
        # wait until the daemon has decoded everything the kernel still held
        last = None
        for _ in range(60):
            m = scrape(metrics_port)
            now = total(m, "flowmed_records_received_total")
            if now == last:
                break
            last = now
            time.sleep(1.0)
        rss.append((time.monotonic() - t0, rss_bytes(daemon.pid)))
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(120)
    finally:
        for p in (daemon, cmts):
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    report.update(_check(store, m, rc, loads, radius, cmts_out, rss, warmup_s, rss_slack_mib, duration_s))
    return report


def _check(store: Path, m: dict, rc: int, loads: dict, radius: RadiusClient, cmts_out: str,
           rss: list[tuple[float, int]], warmup_s: float | None, slack_mib: float, duration_s: float) -> dict:
    from storage.query import QueryEngine

    checks: dict[str, bool] = {"exit_status_0": rc == 0}
    sent = sum(r.records for r in loads.values())
    decoded = total(m, "flowmed_records_received_total")
    kernel = total(m, "flowmed_socket_drops_total")
    refused = total(m, "flowmed_sink_dropped_rows_total", table="flows")
    errors = total(m, "flowmed_decode_errors_total")
    with QueryEngine.for_store(store) as engine:
        stored = int(engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py())
        radius_bytes = engine.query("SELECT sum(bytes) AS b FROM usage WHERE source = 'radius'").column("b")[0]
        ipdr = engine.query("SELECT cm_mac, service_direction AS d, sum(delta_octets) AS o FROM ipdr_records "
                            "GROUP BY cm_mac, d").to_pylist()
    radius_bytes = int(radius_bytes.as_py() or 0)
    checks["flows_received_equals_sent_minus_kernel_drops"] = decoded + RECORDS * kernel == sent
    checks["flows_stored_equals_received_minus_counted_drops"] = stored == decoded - refused
    checks["no_decode_errors"] = errors == 0
    checks["radius_every_request_answered"] = radius.unanswered == 0 and radius.answered == radius.sent
    checks["radius_usage_equals_counters"] = radius_bytes == radius.final_octets
    advanced = json.loads(cmts_out.strip().splitlines()[-1])["advanced"] if cmts_out.strip() else {}
    expected = {(k.split("/")[0], int(k.split("/")[1])): v[0] for k, v in advanced.items()}
    got = {(r["cm_mac"].replace(":", ""), r["d"]): r["o"] for r in ipdr}
    checks["ipdr_octets_equal_cmts_counters"] = bool(expected) and got == expected
    warm = warmup_s if warmup_s is not None else max(10.0, duration_s / 4)
    samples = [v for t, v in rss if t >= warm and v > 0]
    third = max(1, len(samples) // 3)
    first, last = (sum(samples[:third]) / third, sum(samples[-third:]) / third) if samples else (0.0, 0.0)
    growth = last - first
    checks["memory_flat"] = bool(samples) and growth <= max(slack_mib * 2**20, 0.10 * first)
    return {
        "ok": all(checks.values()), "checks": checks,
        "flows": {"sent": sent, "decoded": decoded, "kernel_dropped_datagrams": kernel, "sink_refused": refused,
                  "stored": stored, "decode_errors": errors,
                  "by_version": {v: r.as_dict() for v, r in sorted(loads.items())}},
        "radius": {"sent": radius.sent, "answered": radius.answered, "retransmits": radius.retransmits,
                   "unanswered": radius.unanswered, "usage_bytes": radius_bytes, "expected": radius.final_octets},
        "ipdr": {"flows": len(expected), "octets": sum(expected.values()), "stored_octets": sum(got.values())},
        "rss": {"first_third_mib": round(first / 2**20, 1), "last_third_mib": round(last / 2**20, 1),
                "growth_mib": round(growth / 2**20, 1),
                "max_mib": round(max((v for _, v in rss), default=0) / 2**20, 1),
                "samples": len(samples), "warmup_s": warm},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of traffic")
    p.add_argument("--rate", type=int, default=300, help="flow datagrams per second in all (30 records each)")
    p.add_argument("--radius-rate", type=float, default=20.0, help="RADIUS requests per second")
    p.add_argument("--modems", type=int, default=40, help="cable modems of the simulated CMTS")
    p.add_argument("--cmts-interval", type=float, default=5.0, help="seconds between the CMTS's SAMIS intervals")
    p.add_argument("--rss-slack-mib", type=float, default=24.0, help="RSS growth tolerated after the warm-up")
    p.add_argument("--warmup", type=float, default=None, help="seconds before RSS counts (default: a quarter)")
    p.add_argument("--store", default="", help="store directory (default: a temporary one, removed afterwards)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    a = p.parse_args(argv)
    tmp = None
    if a.store:
        store = Path(a.store)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="flowmed-soak-"))
        store = tmp / "data"
    try:
        report = soak(a.duration, a.rate, store, modems=a.modems, cmts_interval_s=a.cmts_interval,
                      radius_rate=a.radius_rate, warmup_s=a.warmup, rss_slack_mib=a.rss_slack_mib)
    finally:
        if tmp is not None and not os.environ.get("FLOWMED_SOAK_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(report, default=str))
    else:
        for name, ok in report["checks"].items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
        for key in ("flows", "radius", "ipdr", "rss"):
            print(f"{key}: {json.dumps(report[key], default=str)}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
