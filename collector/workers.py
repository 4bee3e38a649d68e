"""Several receiving processes: ``service.workers = N`` runs N workers sharing each UDP port with SO_REUSEPORT.

The supervisor (after uvicorn's ``supervisors/multiprocess.py``) binds every socket itself, N per endpoint in one
SO_REUSEPORT group, and hands worker i its sockets (inherited file descriptors). The kernel hashes each exporter's
address and port onto one socket of the group, so an exporter always reaches the same worker and its templates stay
local; because the sockets belong to the supervisor, a restarted worker gets the very same sockets back (the group
and the hashing do not change, datagrams that arrive meanwhile wait in that socket's buffer) and its own template
state file (``<state_file>.worker<i>``).

Workers report to the supervisor with the sd_notify protocol on a private socket (``READY=1``, ``WATCHDOG=1``); the
supervisor tells systemd ``READY=1`` once every worker is ready, restarts (and counts) a worker that dies or stops
pinging, forwards SIGHUP after validating the configuration itself, and on SIGTERM stops the workers (each flushes
its own batches) and waits for them within ``service.shutdown_timeout_s``. Metrics of all workers are merged on one
endpoint with prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, wiped at start); ``/status``
merges the snapshots each worker writes.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from collector import config as config_mod
from collector import metrics as metrics_mod
from collector import status as status_mod
from collector.config import Config
from collector.configtree import ConfigError
from collector.gauges import STATUS_LINE_INTERVAL_S, count_kernel_drops, status_line
from collector.listener import UdpListener
from collector.logging import log, set_level
from collector.logging import setup as setup_logging
from collector.storelock import StoreLock
from collector.systemd import Notifier, watchdog_interval_s

HANG_TIMEOUT_S = 30.0
"""A worker that has not pinged for this long is killed and restarted."""
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
QUICK_DEATH_S = 10.0
"""A worker that dies sooner than this after its start counts as a quick death (its restart delay doubles)."""


class Worker:
    """One worker process slot: its sockets survive the process."""

    def __init__(self, index: int, listeners: list[UdpListener]) -> None:
        self.index = index
        self.listeners = listeners
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.last_ping = 0.0
        self.started = 0.0
        self.restart_at = 0.0
        self.quick_deaths = 0

    @property
    def fds(self) -> list[int]:
        return [lst.sock.fileno() for lst in self.listeners if lst.sock is not None]


class Supervisor:
    """Runs ``config.service.workers`` worker processes; see the module docstring."""

    def __init__(self, config: Config, config_path: str | None, overrides: tuple[str, ...]) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.run_dir = config.data_path("run")
        self.workers: list[Worker] = []
        self.notifier = Notifier()
        self.signals: list[int] = []
        self.all_ready_sent = False
        self.start_failed = False
        self.store_lock = StoreLock(config.store.path)

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT; returns the exit status."""
        cfg = self.config
        setup_logging(cfg.log.level, cfg.log.format)
        try:  # before anything in the store is touched: a second daemon must not wipe the first one's run dir
            self.store_lock.acquire()
        except OSError as exc:
            log("error", "cannot start", error=str(exc))
            return 1
        try:
            return self._run()
        finally:
            self.store_lock.release()

    def _run(self) -> int:
        cfg = self.config
        prom_dir = self.run_dir / "prometheus"
        shutil.rmtree(self.run_dir, ignore_errors=True)  # stale metrics of earlier runs must not be merged in
        prom_dir.mkdir(parents=True)
        # Set before any worker starts: prometheus-client picks its multiprocess mode from the environment at import.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
        try:
            for i in range(cfg.service.workers):
                listeners = []
                for endpoint in cfg.listen.endpoints():
                    lst = UdpListener(endpoint, rcvbuf_bytes=cfg.listen.rcvbuf_bytes, reuse_port=True,
                                      purpose=cfg.listen.purpose(endpoint))
                    lst.bind()
                    listeners.append(lst)
                self.workers.append(Worker(i, listeners))
        except OSError as exc:
            log("error", "cannot start", error=str(exc))
            self._close_sockets()
            return 1
        granted = self.workers[0].listeners[0].rcvbuf_granted if cfg.listen.endpoints() else 0
        if cfg.listen.endpoints() and granted < cfg.listen.rcvbuf_bytes:
            log("warning", "receive buffer smaller than requested; raise net.core.rmem_max",
                requested=cfg.listen.rcvbuf_bytes, granted=granted)

        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(prom_dir))
        self.metrics = metrics_mod.Metrics(registry, cfg.metrics.max_exporter_labels, role="supervisor")
        http = None
        if cfg.metrics.enabled:
            try:
                http = status_mod.HttpServer(cfg.metrics.listen, registry, self.status)
            except OSError as exc:
                log("error", "cannot start", error=str(exc))
                self._close_sockets()
                return 1
            http.start()

        self.inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.inbox_name = f"@flowmed-{os.getpid()}-{os.urandom(4).hex()}"
        self.inbox.bind("\0" + self.inbox_name[1:])
        self.inbox.setblocking(False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        for w in self.workers:
            self._spawn(w)
        log("info", "flowmed started", version=metrics_mod.version(), pid=os.getpid(),
            listeners=[lst.address for lst in self.workers[0].listeners], workers=cfg.service.workers,
            rcvbuf_granted=granted,
            metrics=http.address if http else "off", store=cfg.store.path)
        code = self._loop()
        if http is not None:
            http.close()
        self._close_sockets()
        self.inbox.close()
        return code

    def _spawn(self, w: Worker) -> None:
        args = [sys.executable, "-m", "collector.cli", "run", "--worker", str(w.index)]
        if self.config_path:
            args += ["--config", str(self.config_path)]
        for o in self.overrides:
            args += ["--set", o]
        env = dict(os.environ, FLOWMED_LISTEN_FDS=",".join(str(fd) for fd in w.fds), NOTIFY_SOCKET=self.inbox_name,
                   FLOWMED_RUN_DIR=str(self.run_dir), FLOWMED_SUPERVISOR_PID=str(os.getpid()))
        env.pop("WATCHDOG_USEC", None)  # the workers ping the supervisor, which pings systemd
        env.pop("WATCHDOG_PID", None)
        # Own session: a Ctrl-C in a terminal reaches only the supervisor, which stops the workers in order.
        w.proc = subprocess.Popen(args, pass_fds=w.fds, env=env, start_new_session=True)
        w.ready = False
        w.started = w.last_ping = time.monotonic()
        self.metrics.workers.set(sum(1 for x in self.workers if x.proc and x.proc.poll() is None))

    def _loop(self) -> int:
        watchdog = watchdog_interval_s()
        last_watchdog = 0.0
        last_status = time.monotonic()
        while True:
            readable, _, _ = select.select([self.inbox], [], [], 0.5)
            if readable:
                self._read_inbox()
            while self.signals:
                sig = self.signals.pop(0)
                if sig == signal.SIGHUP:
                    self._reload()
                else:
                    return self._stop(sig)
            now = time.monotonic()
            for w in self.workers:
                self._check(w, now)
                for lst in w.listeners:  # the supervisor owns the sockets: it counts their drops
                    count_kernel_drops(lst, self.metrics)
            if self.start_failed:
                return self._stop(signal.SIGTERM)
            if not self.all_ready_sent and all(w.ready for w in self.workers):
                self.all_ready_sent = True
                self.notifier.notify("READY=1", f"STATUS={len(self.workers)} workers receiving")
            if self.all_ready_sent and now - last_status >= STATUS_LINE_INTERVAL_S:
                last_status = now
                self.notifier.notify(f"STATUS={len(self.workers)} workers: {status_line(self.status())}")
            if watchdog and now - last_watchdog >= watchdog and all(
                    w.proc is not None and w.proc.poll() is None for w in self.workers):
                self.notifier.notify("WATCHDOG=1")
                last_watchdog = now

    def _read_inbox(self) -> None:
        while True:
            try:
                msg = self.inbox.recv(4096).decode(errors="replace")
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
            try:
                w = self.workers[int(fields.get("FLOWMED_WORKER", "-1"))]
            except (ValueError, IndexError):
                continue
            w.last_ping = time.monotonic()
            if fields.get("READY") == "1":
                w.ready = True

    def _check(self, w: Worker, now: float) -> None:
        if w.proc is None:
            if now >= w.restart_at:
                self._spawn(w)
            return
        code = w.proc.poll()
        if code is None and now - w.last_ping > HANG_TIMEOUT_S:
            log("error", "worker stopped responding; killing it", worker=w.index, pid=w.proc.pid)
            w.proc.kill()
            code = w.proc.wait()
        if code is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(w.proc.pid, str(self.run_dir / "prometheus"))
        if not self.all_ready_sent:
            # Dying before the service was ever ready is a start failure (unwritable store, port taken by RADIUS,
            # broken static file...): restarting cannot fix it, so the supervisor gives up like a single process.
            log("error", "worker failed to start; stopping", worker=w.index, exit_status=code)
            w.proc = None
            self.start_failed = True
            return
        # A worker that keeps dying right after its start is restarted ever more slowly (1 s doubling up to 30 s).
        w.quick_deaths = w.quick_deaths + 1 if now - w.started < QUICK_DEATH_S else 0
        delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** w.quick_deaths)
        log("error", "worker died; restarting it", worker=w.index, pid=w.proc.pid, exit_status=code,
            restart_in_s=delay)
        self.metrics.worker_restarts.inc()
        w.proc = None
        w.restart_at = now + delay
        self.metrics.workers.set(sum(1 for x in self.workers if x.proc and x.proc.poll() is None))

    def _reload(self) -> None:
        try:
            new = config_mod.load(self.config_path, self.overrides)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            log("error", "configuration reload refused; keeping the running configuration", error=str(exc),
                key=exc.key)
            return
        if (new.service.workers, new.listen.endpoints()) != \
                (self.config.service.workers, self.config.listen.endpoints()):
            log("warning", "workers and listen addresses change at the next restart")
        self.config = new
        setup_logging(new.log.level, new.log.format)
        set_level(new.log.level)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGHUP)
        self.metrics.config_reloads.labels("ok").inc()
        log("info", "configuration reloaded", config=self.config_path or "(defaults)", workers=len(self.workers))

    def _await_starting(self, deadline: float) -> None:
        """Let workers that are still starting (a restart) report READY before they get SIGTERM, until ``deadline``.

        A worker signalled before it has installed its handlers dies at once, with the datagrams waiting in its socket
        unread; once ready it drains its socket, flushes and exits 0 like the others.
        """
        def starting() -> bool:
            return any(w.proc is not None and w.proc.poll() is None and not w.ready for w in self.workers)

        while starting() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.inbox], [], [], 0.1)
            if readable:
                self._read_inbox()

    def _stop(self, sig: int) -> int:
        log("info", "stopping", signal=signal.Signals(sig).name, workers=len(self.workers))
        self.notifier.notify("STOPPING=1", "STATUS=flushing")
        if not self.start_failed:
            self._await_starting(time.monotonic() + self.config.service.shutdown_timeout_s / 2)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.service.shutdown_timeout_s + 5.0
        code = 1 if self.start_failed else 0
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                rc = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log("error", "worker did not stop in time; killing it", worker=w.index)
                w.proc.kill()
                rc = w.proc.wait()
            code = code or (1 if rc else 0)
        final = status_mod.merge(status_mod.read_snapshots(self.run_dir))
        log("info", "flowmed stopped", workers=len(self.workers), datagrams=final.get("datagrams", 0),
            flows=final.get("flows", 0), flushed_rows=final.get("rows_flushed", 0), exit_status=code)
        return code

    def status(self) -> dict[str, Any]:
        merged = status_mod.merge(status_mod.read_snapshots(self.run_dir))
        merged.update(pid=os.getpid(), worker_count=len(self.workers), version=metrics_mod.version(),
                      worker_pids=[w.proc.pid if w.proc else None for w in self.workers])
        return merged

    def _close_sockets(self) -> None:
        for w in self.workers:
            for lst in w.listeners:
                lst.close()
