"""The RADIUS accounting listener (UDP 1813 by default): asyncio sockets around :mod:`mediation.subscribers.radius`.

Datagrams are queued (at most ``radius.max_queue``; beyond that they are dropped and counted, and the NAS
retransmits) and handled in batches by one writer thread, so the event loop never waits for SQLite's fsync: each
batch is one transaction, committed before any of its Accounting-Responses is sent. Usage rows (source 'radius') and
changed bindings are handed to ``emit(table_name, batch)`` on the event loop (normally ``Sink.add``). The usage is
also journaled in that transaction and dropped from the journal only after ``flush()`` (``Sink.flush``) returned, so
an acknowledged report is never lost to a crash; what is still journaled at start is emitted again.

Only one process runs the listener (the single process, or the supervisor's first worker); the other workers see
its bindings through the shared SQLite file (``Bindings.refresh``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import pyarrow as pa

from collector.bindings_db import open_bindings
from collector.config import Config, split_endpoint
from collector.listener import ListenError
from collector.metrics import Metrics
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import Address, RadiusAccounting, RadiusResult, RequestKey
from mediation.subscribers.static import StaticBindings

log = logging.getLogger(__name__)

MAX_BATCH = 512

_Queued = tuple[bytes, Address, "_Protocol"]
"""A request waiting for the writer thread: (datagram, source address, the socket's protocol that answers it)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: RadiusServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram endpoint's transport: asyncio's and uvloop's have sendto() without subclassing DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.server.received(data, addr, self)


class RadiusServer:
    """The listener; create with :func:`start_radius`."""

    def __init__(self, config: Config, bindings: Bindings, emit: Callable[[str, pa.RecordBatch], object],
                 metrics: Metrics | None = None, flush: Callable[[], None] | None = None) -> None:
        self.config = config
        self.accounting = RadiusAccounting(config.radius, bindings, int(config.mediation.interval_s * 1000))
        self.bindings = bindings
        # the listener's index drops long-closed bindings too (hourly)
        bindings.set_memory_limits(config.subscribers.memory_horizon_ms(config.mediation),
                                   config.subscribers.max_memory_bindings)
        self.emit = emit
        self.metrics = metrics
        self.queue: deque[_Queued] = deque()
        self.dropped = 0
        self.transports: list[asyncio.DatagramTransport] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="radius")
        self._reported: dict[tuple[str, str], int] = {}
        # usage handed to emit() but not yet known durable: confirmed after flush() returns
        self.flush = flush
        self.confirm_interval_s = max(float(config.store.flush_interval_s), 5.0)
        self._emitted_journal = 0
        self._confirmed_journal = 0
        self._confirm_task: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Bound (host, port) of each socket."""
        return [t.get_extra_info("sockname")[:2] for t in self.transports]

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for endpoint in self.config.radius.listen:
            host, port = split_endpoint(endpoint)
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
            except OSError as exc:
                raise ListenError("RADIUS accounting", endpoint, exc) from None
            self.transports.append(transport)
        # bindings an older database had overlapping, ended by the one-time separation: to the outputs' table too
        separated = await loop.run_in_executor(self._executor, self.bindings.separation_to_publish)
        if separated is not None:
            self.emit("bindings", separated)
        # usage journaled before a crash and never confirmed: hand it over again
        for jid, batch in await loop.run_in_executor(self._executor, self.accounting.journaled):
            self.emit("usage", batch)
            self._emitted_journal = max(self._emitted_journal, jid)
        self._task = loop.create_task(self._run())
        self._confirm_task = loop.create_task(self._confirm_loop())
        log.info("RADIUS accounting listening", extra={"listen": self.addresses,
                                                        "clients": len(self.config.radius.clients)})

    def received(self, data: bytes, addr: Address, proto: _Protocol) -> None:
        if len(self.queue) >= self.config.radius.max_queue:
            self.dropped += 1
            self._count("queue", "dropped_queue_full")
            # rate-limited per NAS by collector.logflood.FloodFilter
            log.warning("RADIUS request dropped: radius.max_queue requests already waiting", extra={"client": addr[0]})
            return
        self.queue.append((data, addr, proto))
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), MAX_BATCH))]
                now = int(time.time() * 1000)
                try:
                    result = await loop.run_in_executor(self._executor, self._handle_isolated, batch, now)
                except Exception:  # a failing disk: nothing was answered, the NASes will retransmit
                    log.exception("RADIUS batch failed; not answered")
                    continue
                protos = {id(a): p for _, a, p in batch}
                for payload, addr in result.responses:
                    proto = protos.get(id(addr))
                    if proto is not None and proto.transport is not None:
                        proto.transport.sendto(payload, addr)
                for table, rows in (("bindings", result.bindings), ("usage", result.usage)):
                    if rows is not None and rows.num_rows:
                        self.emit(table, rows)
                self._emitted_journal = max(self._emitted_journal, result.journal_id)
                if self.flush is None and result.journal_id:  # nobody can tell us when it is durable
                    await loop.run_in_executor(self._executor, self.accounting.confirm, result.journal_id)
                self._report()

    def _handle_isolated(self, batch: list[_Queued], now: int) -> RadiusResult:
        """``accounting.handle`` of the whole batch; if that raises, the batch is rolled back and each request is
        handled on its own, so one request that trips a bug costs only itself its answer (counted as
        ``internal_error``), not the other NASes' requests queued with it. Runs on the writer thread."""
        acct = self.accounting
        pairs = [(d, a) for d, a, _ in batch]
        keys = {(a[0], d[1], bytes(d[4:20])) for d, a in pairs if len(d) >= 20}
        fresh = {k for k in keys if k not in acct._recent}  # retransmission cache entries this call may add
        counters = dict(acct.counters)
        try:
            return acct.handle(pairs, now)
        except Exception:
            self._undo(fresh, counters)
            if len(pairs) == 1:
                raise
            log.exception("RADIUS batch failed; handling its %d requests one by one", len(pairs))
        merged: RadiusResult | None = None
        for pair in pairs:
            fresh = {k for k in keys if k not in acct._recent}
            counters = dict(acct.counters)
            try:
                one = acct.handle([pair], now)
            except Exception:
                self._undo(fresh, counters)
                self._count("internal", "internal_error")
                log.exception("RADIUS request failed; not answered", extra={"client": pair[1][0]})
                continue
            merged = one if merged is None else _merge_results(merged, one)
        if merged is None:
            raise RuntimeError("every request of the batch failed")
        return merged

    def _undo(self, fresh: set[RequestKey], counters: dict[tuple[str, str], int]) -> None:
        self.bindings.rollback()
        for k in fresh:
            self.accounting._recent.pop(k, None)
        self.accounting.counters.clear()
        self.accounting.counters.update(counters)

    async def _confirm_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_expiry = 0.0
        while True:
            await asyncio.sleep(self.confirm_interval_s)
            await self.confirm()
            if time.monotonic() - last_expiry >= 60:
                last_expiry = time.monotonic()
                try:
                    changed = await loop.run_in_executor(self._executor, self.accounting.expire,
                                                         int(time.time() * 1000))
                except Exception:
                    log.exception("closing stale RADIUS sessions failed")
                    continue
                if changed is not None:
                    self.emit("bindings", changed)
                try:  # on the writer thread: never inside its transaction
                    await loop.run_in_executor(self._executor, self.bindings.maybe_prune, int(time.time() * 1000))
                except Exception:
                    log.exception("rebuilding the RADIUS listener's binding index failed")

    async def confirm(self) -> None:
        """Flush the outputs (off the event loop), then drop the usage they now hold from the journal."""
        upto = self._emitted_journal
        if self.flush is None or upto <= self._confirmed_journal:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.flush)
        except Exception:
            log.exception("flush before confirming RADIUS usage failed; it stays journaled")
            return
        try:
            await loop.run_in_executor(self._executor, self.accounting.confirm, upto)
        except Exception:  # a full or failing disk: the usage stays journaled, confirmed next time
            log.exception("dropping confirmed RADIUS usage from the journal failed; retried later")
            return
        self._confirmed_journal = upto

    def _count(self, client: str, result: str) -> None:
        key = (client, result)
        self.accounting.counters[key] = self.accounting.counters.get(key, 0) + 1

    def _report(self) -> None:
        if self.metrics is None:
            return
        for key, value in list(self.accounting.counters.items()):
            delta = value - self._reported.get(key, 0)
            if delta:
                self.metrics.radius_requests.labels(*key).inc(delta)
                self._reported[key] = value

    def reload_static(self, static: StaticBindings, now_ms: int) -> concurrent.futures.Future[tuple[int, int]]:
        """Run ``static.reload(now_ms)`` on the writer thread (the one thread that writes the bindings)."""
        return self._executor.submit(static.reload, now_ms)

    async def stop(self) -> None:
        """Close the sockets, answer what is queued, stop the writer thread."""
        for t in self.transports:
            t.close()
        if self._task is not None:
            while self.queue:
                self._wake.set()
                await asyncio.sleep(0.01)
            self._task.cancel()
        if self._confirm_task is not None:
            self._confirm_task.cancel()
        await self.confirm()
        self._executor.shutdown(wait=True)


async def start_radius(loop: asyncio.AbstractEventLoop, config: Config, bindings: Bindings | None,
                       emit: Callable[[str, pa.RecordBatch], object], metrics: Metrics | None = None,
                       flush: Callable[[], None] | None = None) -> RadiusServer:
    """Start the RADIUS accounting listener of ``config.radius`` and return it (``await server.stop()``).

    ``bindings``: the writer's :class:`Bindings`; None opens ``subscribers.bindings_db`` (its own connection, used
    only by the listener's thread). ``emit(table, batch)`` receives usage and binding batches on the event loop.
    ``metrics``: a :class:`collector.metrics.Metrics` (``radius_requests`` per client and result), or None.
    ``flush``: blocks until everything emitted is durable in the outputs (``Sink.flush`` when ``emit`` is
    ``Sink.add``); called from a thread every ``max(store.flush_interval_s, 5)`` seconds, after which the RADIUS
    usage emitted before is dropped from the journal. Without it usage stays journaled (re-emitted at start).
    """
    if bindings is None:
        bindings = open_bindings(config)
    server = RadiusServer(config, bindings, emit, metrics, flush)
    await server.start(loop)
    return server


def _merge_results(a: RadiusResult, b: RadiusResult) -> RadiusResult:
    """Two RadiusResults of consecutive ``handle`` calls as one (answers, binding changes, usage, journal id)."""
    a.responses = list(a.responses) + list(b.responses)
    a.bindings = _concat(a.bindings, b.bindings)
    a.usage = _concat(a.usage, b.usage)
    a.journal_id = max(a.journal_id or 0, b.journal_id or 0)
    return a


def _concat(x: pa.RecordBatch | None, y: pa.RecordBatch | None) -> pa.RecordBatch | None:
    """``y`` after ``x`` as one batch (either may be None or empty)."""
    if y is None or not y.num_rows:
        return x
    if x is None or not x.num_rows:
        return y
    return pa.Table.from_batches([x, y]).combine_chunks().to_batches()[0]
