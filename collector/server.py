"""The daemon's lifecycle (:class:`Server`): listeners → batches of datagrams → :class:`collector.pipeline.Pipeline`
(DispatchDecoder, mediation stages, Sink), with the parts from :class:`collector.components.Components`, the template
state from :mod:`collector.template_state` and the gauges from :mod:`collector.gauges`.

Shape (after uvicorn's ``Server``): :meth:`Server.startup` binds the listeners, loads template state, opens the
outputs and only then says ``READY=1``; :meth:`Server.main_loop` ticks once a second (template expiry, state save,
flush deadlines, kernel drop counters, metrics, status, watchdog); :meth:`Server.shutdown` stops receiving, drains
the sockets, decodes what is left, flushes every output and saves state, within ``service.shutdown_timeout_s``.

The event loop stays free of per-record work: the read callback only receives into the listener's buffer (see
:mod:`collector.listener`); a batch is cut at ``listen.batch_datagrams`` datagrams or after
``listen.batch_interval_ms``, taken from the listeners as one :class:`decoders.received.Received` and decoded
column-wise in one call; writes happen on the Sink's writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from collector import config as config_mod
from collector import metrics as metrics_mod
from collector import status as status_mod
from collector.admission import make_admission
from collector.components import Components, DecoderPort, MediatorArg, SinkPort, now_ms, sampling_policy
from collector.config import Config
from collector.configtree import ConfigError
from collector.exporter_stats import ExporterStatsRecorder
from collector.gauges import (
    STATUS_LINE_INTERVAL_S,
    SinkGauges,
    count_listeners,
    output_entries,
    rows_flushed,
    spool_summary,
    status_line,
)
from collector.listener import ListenError, UdpListener
from collector.logging import log, set_level
from collector.logging import setup as setup_logging
from collector.pipeline import Pipeline
from collector.storelock import StoreLock
from collector.systemd import Notifier, watchdog_interval_s
from collector.template_state import TemplateState
from decoders.received import Received

if TYPE_CHECKING:
    from collector.ipdr import IpdrCollector
    from collector.radius_listener import RadiusServer

TICK_S = 1.0


class Server:
    """One receiving process: its listeners, pipeline, HTTP endpoint (unless a supervisor serves it) and lifecycle.

    ``worker`` is None for a single-process daemon, else this worker's index under the supervisor, which passes the
    already-bound sockets in ``listen_fds`` (one per endpoint of ``listen.udp`` then ``listen.sflow``, in order).
    """

    def __init__(self, config: Config, config_path: str | None = None, overrides: tuple[str, ...] = (),
                 worker: int | None = None, listen_fds: list[int] | None = None,
                 registry: CollectorRegistry | None = None, sink: SinkPort | None = None,
                 decoder: DecoderPort | None = None, mediator: MediatorArg = "auto") -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.worker = worker
        self.listen_fds = listen_fds
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        role = "single" if worker is None else "worker"
        self.metrics = metrics_mod.install(metrics_mod.Metrics(self.registry, config.metrics.max_exporter_labels, role))
        self._sink_arg, self._decoder_arg, self._mediator_arg = sink, decoder, mediator
        self.notifier = Notifier()
        self.listeners: list[UdpListener] = []
        self.pipeline: Pipeline | None = None
        self.http: status_mod.HttpServer | None = None
        self.snapshot: dict[str, Any] = {}
        self.started = time.time()
        self.stop_event: asyncio.Event | None = None
        self.reload_requested = False
        self._batch_timer: asyncio.TimerHandle | None = None
        self._batch_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = TemplateState(config, worker, self.metrics)
        self.rows_flushed = 0
        self.radius: RadiusServer | None = None
        self.gauges = SinkGauges(self.metrics)
        self._last_status_line = time.monotonic()
        self.ipdr: IpdrCollector | None = None
        self.store_lock = StoreLock(config.store.path)
        self.exporter_stats = ExporterStatsRecorder(worker)  # per-minute exporter history (exporter_stats table)

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        self._loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        # Handlers first: a SIGTERM right after READY=1 (or during start) must flush, not kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            self.startup()
            await self.start_side_listeners()
        except (OSError, ValueError) as exc:  # address in use, store in use or unwritable, broken static bindings file
            log("error", "cannot start", error=str(exc))
            self.close_listeners()
            await self.stop_side_listeners()
            if self.http is not None:
                self.http.close()
            self.store_lock.release()
            return 1
        self.log_started()
        self.notifier.notify("READY=1", f"STATUS=receiving on {', '.join(lst.address for lst in self.listeners)}",
                             *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None else []))
        await self.main_loop()
        return await self.shutdown()

    def startup(self) -> None:
        """Lock the store, bind, load state, open outputs, start reading (READY=1 follows once RADIUS/IPDR are up)."""
        cfg = self.config
        if self.worker is None:  # a worker runs under its supervisor, which holds the lock
            self.store_lock.acquire()
        for i, endpoint in enumerate(cfg.listen.endpoints()):
            lst = UdpListener(endpoint, self._on_data, cfg.listen.rcvbuf_bytes,
                              max_per_event=cfg.listen.batch_datagrams, purpose=cfg.listen.purpose(endpoint))
            if self.listen_fds is not None:
                lst.adopt(self.listen_fds[i])
            else:
                lst.bind()
            self.listeners.append(lst)
            self.metrics.socket_rcvbuf.labels(lst.address).set(lst.rcvbuf_granted)
            if lst.rcvbuf_granted < cfg.listen.rcvbuf_bytes and self.worker in (None, 0):
                log("warning", "receive buffer smaller than requested; raise net.core.rmem_max",
                    listener=lst.address, requested=cfg.listen.rcvbuf_bytes, granted=lst.rcvbuf_granted)
        parts = Components.build(cfg, self.worker, self.metrics, sink=self._sink_arg, decoder=self._decoder_arg,
                                 mediator=self._mediator_arg)
        self.state.load(parts.decoder)
        self.pipeline = Pipeline.of(cfg, self.metrics, parts)
        if self.worker is None and cfg.metrics.enabled:
            self.http = status_mod.HttpServer(cfg.metrics.listen, self.registry, self.fresh_status)
            self.http.start()
        assert self._loop is not None
        for lst in self.listeners:
            lst.start(self._loop)
        self.publish_status()

    def log_started(self) -> None:
        """The one 'started' line, written once everything is bound (RADIUS and IPDR included): a start that fails
        later must not have claimed to be up."""
        cfg = self.config
        assert self.pipeline is not None
        outputs = [o.name for o in self.pipeline.sink.outputs]
        if self.worker is None:
            log("info", "flowmed started", version=metrics_mod.version(), pid=os.getpid(),
                listeners=[lst.address for lst in self.listeners], outputs=outputs, workers=1,
                rcvbuf_granted=min((lst.rcvbuf_granted for lst in self.listeners), default=0),
                mediation=self.pipeline.mediator is not None, metrics=self.http.address if self.http else "off",
                store=cfg.store.path)
        else:
            log("info", "worker started", worker=self.worker, pid=os.getpid(),
                listeners=[lst.address for lst in self.listeners])

    async def start_side_listeners(self) -> None:
        """RADIUS accounting and IPDR/SP, when enabled: in the single process or worker 0 only (their state is
        one per host, and they feed the same Sink as the flows)."""
        if self.worker not in (None, 0) or self.pipeline is None:
            return
        sink = self.pipeline.sink
        if self.config.radius.enabled:
            from collector.radius_listener import start_radius

            self.radius = await start_radius(asyncio.get_running_loop(), self.config, None, sink.add, self.metrics,
                                             flush=sink.flush)
        if self.config.ipdr.enabled:
            from collector.ipdr import start_ipdr

            try:
                self.ipdr = await start_ipdr(asyncio.get_running_loop(), self.config, sink)
            except OSError as exc:
                if self.config.ipdr.listen and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    raise ListenError("IPDR/SP", self.config.ipdr.listen, exc) from None
                raise
            log("info", "ipdr collector started", exporters=len(self.config.ipdr.exporters),
                listen=self.config.ipdr.listen or "off")

    async def stop_side_listeners(self) -> None:
        """Stop RADIUS and IPDR before the final flush (they answer, acknowledge and hand over what they hold)."""
        radius, ipdr = self.radius, self.ipdr
        self.radius = self.ipdr = None
        for name, side in (("radius", radius), ("ipdr", ipdr)):
            if side is not None:
                try:
                    await side.stop()
                except Exception as exc:
                    log("error", f"{name} stop failed", error=repr(exc))

    async def main_loop(self) -> None:
        assert self.stop_event is not None
        watchdog = watchdog_interval_s()
        tick = min(TICK_S, watchdog) if watchdog else TICK_S
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), tick)
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self.on_tick()
            if watchdog or self.worker is not None:
                self.notifier.notify("WATCHDOG=1", *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None
                                                     else []))

    def on_tick(self) -> None:
        """Once a second: expiry, flush deadlines, state save, kernel drops, metrics, status."""
        assert self.pipeline is not None
        supervisor = os.environ.get("FLOWMED_SUPERVISOR_PID")
        if self.worker is not None and supervisor and os.getppid() != int(supervisor):
            log("error", "supervisor is gone; stopping", worker=self.worker)
            self.request_stop()
        p, m = self.pipeline, self.metrics
        now = now_ms()
        p.refresh_gauges(now)
        for stage_name, stage in p.stages:  # closes usage intervals when no flows arrive, picks up bindings
            try:
                for name, batch in stage.tick(now).items():
                    if batch.num_rows:
                        p.sink.add(name, batch)
            except Exception as exc:
                m.pipeline_errors.labels(stage_name).inc()
                log("error", f"{stage_name} tick failed", error=repr(exc))
        for name, batch in self.exporter_stats.tick(now, p.board, m.decode_errors).items():
            p.sink.add(name, batch)
        try:
            p.sink.maybe_flush()
        except Exception as exc:
            m.pipeline_errors.labels("sink").inc()
            log("error", "sink flush failed", error=repr(exc))
        if self.state.due(self.config.decoder.state_save_interval_s):
            self.state.save(p.decoder)
        count_listeners(self.listeners, m)
        self.gauges.update(p.sink)
        self.publish_status()
        if time.monotonic() - self._last_status_line >= STATUS_LINE_INTERVAL_S:
            self._last_status_line = time.monotonic()
            self.notifier.notify(f"STATUS={status_line(self.snapshot)}",
                                 *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None else []))

    def request_stop(self, sig: int | None = None) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log("info", "stopping", signal=signal.Signals(sig).name if sig else "",
                **({} if self.worker is None else {"worker": self.worker}))
            self.notifier.notify("STOPPING=1", "STATUS=flushing")
            self.stop_event.set()

    def request_reload(self) -> None:
        self.reload_requested = True  # handled by the main loop at its next tick (within a second)

    def reload(self) -> bool:
        """SIGHUP: reload the config; an invalid one is refused and the old one stays."""
        try:
            new = config_mod.load(self.config_path, self.overrides)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            log("error", "configuration reload refused; keeping the running configuration", error=str(exc),
                key=exc.key)
            return False
        old = self.config
        self.config = new
        setup_logging(new.log.level, new.log.format)
        set_level(new.log.level)
        assert self.pipeline is not None
        p = self.pipeline
        p.config = new
        p.decoder.set_sampling(sampling_policy(new))
        if (new.listen.allow, new.listen.exporter_rate_limit, new.listen.exporter_rate_burst) != \
                (old.listen.allow, old.listen.exporter_rate_limit, old.listen.exporter_rate_burst):
            p.admission = make_admission(new)  # exporter allowlist and rate limit take effect at once
            log("info", "exporter allowlist and rate limit reloaded", allow=new.listen.allow,
                exporter_rate_limit=new.listen.exporter_rate_limit)
        now = now_ms()
        for _, stage in p.stages:
            stage.reload(new, now)
        if new.listen.endpoints() != old.listen.endpoints() or new.metrics.listen != old.metrics.listen:
            log("warning", "listen addresses changed: they take effect at the next restart")
        self.metrics.config_reloads.labels("ok").inc()
        log("info", "configuration reloaded", config=self.config_path or "(defaults)")
        return True

    async def shutdown(self) -> int:
        """Stop receiving, drain, decode, flush, save state; bounded by ``service.shutdown_timeout_s``."""
        assert self.pipeline is not None and self._loop is not None
        t0 = time.monotonic()
        for lst in self.listeners:
            lst.stop()
        drained = sum(lst.drain() for lst in self.listeners)
        self.close_listeners()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self.process_pending()
        p = self.pipeline
        timeout = self.config.service.shutdown_timeout_s
        try:  # first: templates are worth keeping even if the flush below gets stuck; but a third of the time at most
            await asyncio.wait_for(self.state.save_final(p.decoder), max(0.1, timeout / 3 - (time.monotonic() - t0)))
        except TimeoutError:
            log("error", "template state not saved at stop: its writer is stuck", timeout_s=round(timeout / 3, 1))
        try:
            await asyncio.wait_for(self.stop_side_listeners(), max(0.1, timeout - (time.monotonic() - t0)))
            await asyncio.wait_for(self._loop.run_in_executor(None, self._final_flush),
                                   max(0.1, timeout - (time.monotonic() - t0)))
        except TimeoutError:
            log("error", "shutdown timed out: data still in memory is lost", timeout_s=timeout)
            self.notifier.notify("STATUS=shutdown timed out")
            # The flush thread is stuck (a hung disk or server); waiting for it at interpreter exit would overrun
            # the limit we promise, so leave now.
            logging.shutdown()
            os._exit(1)
        self.on_tick_metrics_final()
        if self.http is not None:
            self.http.close()
        written = {name: st.rows for name, st in p.sink.stats.items()}
        log("info", "flowmed stopped" if self.worker is None else "worker stopped",
            **({} if self.worker is None else {"worker": self.worker}), datagrams=p.datagrams, flows=p.flows,
            drained_at_stop=drained, flushed_at_stop_rows=self.rows_flushed,
            **{f"rows_written_{name}": rows for name, rows in written.items()},
            **{f"flows_written_{name}": st.rows_by_table.get("flows", 0)
               for name, st in p.sink.stats.items()},
            seconds=round(time.monotonic() - t0, 3))
        self.notifier.close()
        self.store_lock.release()
        return 0

    def _final_flush(self) -> None:
        p = self.pipeline
        assert p is not None
        for stage_name, stage in p.stages:
            try:
                for name, batch in stage.close(now_ms()).items():
                    if batch.num_rows:
                        p.sink.add(name, batch)
            except Exception as exc:
                log("error", f"{stage_name} close failed", error=repr(exc))
        before = p.sink.pending_rows
        p.sink.flush()
        p.sink.close()
        self.rows_flushed = before

    def on_tick_metrics_final(self) -> None:
        self.publish_status()

    def close_listeners(self) -> None:
        for lst in self.listeners:
            lst.close()

    # --- batching --------------------------------------------------------------------------------------------------

    def held(self) -> int:
        """Datagrams the listeners hold for the next batch."""
        return sum(lst.held for lst in self.listeners)

    def _on_data(self) -> None:
        """After a read: cut a batch when full, else make sure one is cut within batch_interval_ms."""
        held = self.held()
        if held >= self.config.listen.batch_datagrams:
            if not self._batch_scheduled:
                self._batch_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self.process_pending)
        elif self._batch_timer is None and held:
            assert self._loop is not None
            self._batch_timer = self._loop.call_later(self.config.listen.batch_interval_ms / 1000,
                                                      self.process_pending)

    def process_pending(self) -> None:
        """Decode everything received so far as one batch (before any listener reads again: the batch is in their
        buffers)."""
        self._batch_scheduled = False
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if self.pipeline is None:
            return
        blocks = [block for lst in self.listeners if (block := lst.take()) is not None]
        if blocks:
            self.pipeline.process(Received.concat(blocks))

    # --- state and status ------------------------------------------------------------------------------------------


    def fresh_status(self) -> dict[str, Any]:
        """For the HTTP thread: a snapshot built on the event loop now (the last published one if the loop is busy)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return self.snapshot
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def build() -> None:
            self.publish_status()
            fut.set_result(self.snapshot)

        try:
            loop.call_soon_threadsafe(build)
            return fut.result(timeout=2.0)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return self.snapshot

    def publish_status(self) -> None:
        """Build the status snapshot (served by the HTTP thread, or written for the supervisor)."""
        p = self.pipeline
        sink = p.sink if p else None
        if p is not None:
            p.sync_templates()
        outputs = output_entries(sink)
        spool = spool_summary(sink)
        self.snapshot = {
            "version": metrics_mod.version(), "pid": os.getpid(), "worker": self.worker,
            "worker_count": self.config.service.workers, "uptime_s": time.time() - self.started,
            "datagrams": p.datagrams if p else 0, "flows": p.flows if p else 0, "rows_flushed": rows_flushed(sink),
            "listeners": [{"address": lst.address, "worker": self.worker, "rcvbuf_bytes": lst.rcvbuf_granted,
                           "datagrams": lst.datagrams,
                           "kernel_drops": lst.kernel_drops() or 0} for lst in self.listeners],
            "exporters": p.board.to_list() if p else [],
            "outputs": outputs,
            "spool": spool,
            "rejects": p.rejects() if p else {},
        }
        if self.worker is not None:
            run_dir = os.environ.get("FLOWMED_RUN_DIR")
            if run_dir:
                with contextlib.suppress(OSError):
                    status_mod.write_snapshot(Path(run_dir) / f"status-{self.worker}.json", self.snapshot)


def run(config: Config, config_path: str | None, overrides: tuple[str, ...], worker: int | None = None,
        listen_fds: list[int] | None = None) -> int:
    """Run one receiving process on uvloop until stopped; returns the exit status."""
    import uvloop

    setup_logging(config.log.level, config.log.format)
    server = Server(config, config_path, overrides, worker=worker, listen_fds=listen_fds)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(server.serve())

