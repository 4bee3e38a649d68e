"""The decoder's template state across restarts (:class:`TemplateState`): which files a process loads at start, and
saving what changed once in a while and at stop, on the :class:`collector.statefile.StateWriter` thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from collector import metrics as metrics_mod
from collector.components import DecoderPort
from collector.config import Config
from collector.logging import log
from collector.statefile import StateWriter

LEGACY_STATE_MAX_BYTES = 64 * 1024 * 1024
"""A JSON state file of the format before the log is loaded only up to this size: one written under a template
flood could hold hundreds of MB (a minute to load), more than any budget keeps."""


def state_path(config: Config, worker: int | None) -> Path:
    """Where this process keeps its template state: one file per worker, so workers never overwrite each other."""
    p = config.data_path(config.decoder.state_file)
    return p if worker is None else p.with_name(f"{p.name}.worker{worker}")


class TemplateState:
    """The template state files of one process (``worker`` None: the single process), saves counted in
    ``metrics.state_saves``."""

    def __init__(self, config: Config, worker: int | None, metrics: metrics_mod.Metrics) -> None:
        self.config = config
        self.worker = worker
        self.metrics = metrics
        self.writer: StateWriter | None = None
        """Set by :meth:`load`."""
        self.last_save = time.monotonic()

    def due(self, interval_s: float) -> bool:
        """Whether ``interval_s`` passed since the last save began."""
        return time.monotonic() - self.last_save >= interval_s

    def load(self, decoder: DecoderPort) -> None:
        """Load saved templates: every other state file first (a changed worker count loses nothing), own last.

        Loading is bounded whatever the files hold: every record is checked against the decoder's limits and
        template budgets, nothing is compiled, and the own log is at most about twice the live state (the writer
        compacts it). Files of the JSON format before the log are loaded too and saved again in the log.
        """
        own = state_path(self.config, self.worker)
        main = state_path(self.config, None)
        legacy_main = main.with_suffix(".json") if main.suffix != ".json" else None
        legacy_own = None
        if legacy_main is not None:
            legacy_own = legacy_main if self.worker is None else \
                legacy_main.with_name(f"{legacy_main.name}.worker{self.worker}")
        writer = self.writer = StateWriter(own, legacy_own)
        others = [p for p in sorted(main.parent.glob(main.name + "*"))
                  if p != own and not p.name.endswith((".tmp", ".held"))]
        legacy = []
        if legacy_main is not None:
            legacy = [p for p in sorted(main.parent.glob(legacy_main.name + "*"))
                      if p != legacy_own and not p.name.endswith(".tmp")]
            if legacy_own is not None and legacy_own.is_file():
                legacy.append(legacy_own)  # last: its own templates win
        for path in [*others, *legacy]:
            if path in legacy and path.stat().st_size > LEGACY_STATE_MAX_BYTES:
                log("warning", "old template state too large to load; templates will be learned again",
                    path=str(path), bytes=path.stat().st_size)
                continue
            self._load_file(decoder, path, path.read_bytes, mark=True)
        try:
            own_log, held = writer.load()
        except OSError as exc:
            own_log = held = None
            log("warning", "template state not loaded; templates will be learned again", path=str(own),
                error=repr(exc))
        if own_log is not None:
            self._load_file(decoder, own, lambda: own_log, mark=False)
        if held is not None:
            self._load_file(decoder, writer.held_path, lambda: held, mark=False)

    @staticmethod
    def _load_file(decoder: DecoderPort, path: Path, read: Callable[[], bytes], *, mark: bool) -> None:
        try:
            refused = decoder.load_state(read(), mark=mark)
            log("info" if not mark else "debug", "template state loaded", path=str(path), refused=refused)
        except Exception as exc:  # a damaged state file costs the templates, never the start
            log("warning", "template state not loaded; templates will be learned again", path=str(path),
                error=repr(exc))

    def save(self, decoder: DecoderPort) -> None:
        """Start saving what changed in the template state (written on the state writer's thread); while the
        previous save is still being written, nothing (the changes wait for the next tick's try)."""
        writer = self.writer
        if writer is None or writer.busy:
            return  # tried again at the next tick
        self.last_save = time.monotonic()
        try:
            changes = decoder.state_changes()
        except Exception as exc:  # a bug; state saving is housekeeping
            log("error", "template state not saved", error=repr(exc))
            return
        writer.submit(changes).add_done_callback(self._saved)

    def _saved(self, fut: concurrent.futures.Future[int]) -> None:
        """(The writer's thread.) Count the save."""
        exc = fut.exception()
        if exc is None:
            self.metrics.state_saves.labels("ok").inc()
        else:
            self.metrics.state_saves.labels("failed").inc()
            assert self.writer is not None
            log("error", "template state not saved", path=str(self.writer.path), error=repr(exc))

    async def save_final(self, decoder: DecoderPort) -> None:
        """At stop: wait for the save being written, then save what changed since (bounded by the changes)."""
        writer = self.writer
        if writer is None:
            return
        if writer._future is not None:
            with contextlib.suppress(Exception):  # counted by _saved
                await asyncio.wrap_future(writer._future)
        self.save(decoder)
        if writer._future is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(writer._future)
        writer.close()
