"""A logging filter against log floods caused by peers: per-peer repeats and new peers are both bounded.

Library modules (RADIUS, IPDR) log a warning per refused request or connection with the peer in ``extra``
(``client=...``), and the pipeline's per-exporter error lines carry ``exporter``. A peer, or an attacker spoofing
source addresses, could otherwise fill the disk with log lines. :class:`FloodFilter` sits on flowmed's stderr
handler and, for WARNING and above records that name a peer:

* lets one line per (logger, message, peer) through every ``interval_s``; the lines held back are counted into the
  next one that passes (``suppressed=N``);
* lets at most ``max_new_keys`` never-seen (logger, message, peer) keys through per ``interval_s``, so rotating
  source addresses cannot turn "one line per peer" into one line per datagram (the keys held back are counted in
  :attr:`held_new`, and reported in the next line that passes);
* remembers at most ``max_keys`` keys (least recently used forgotten).

Records without a peer, and INFO/DEBUG records, pass untouched.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

PEER_FIELDS = ("client", "exporter", "peer")


class FloodFilter(logging.Filter):
    # 50 s: a little under the pipeline's own one-minute RateLimiter, so the lines it lets through pass here too
    def __init__(self, interval_s: float = 50.0, max_new_keys: int = 100, max_keys: int = 8192,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.max_new_keys = max_new_keys
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[tuple[str, object, str], list[float]] = OrderedDict()  # key -> [last passed, held back]
        self._window = -1.0
        self._new_in_window = 0
        self.held_new = 0
        """Lines of never-seen keys held back by the new-key budget (since the last line that passed)."""

    @staticmethod
    def _peer(record: logging.LogRecord) -> object:
        extra = vars(record)  # extra= fields are entries of the record's __dict__, present when a caller gave them
        for name in PEER_FIELDS:
            value = extra.get(name)
            if value is not None:
                return value
        fields = extra.get("fields")
        if isinstance(fields, dict):
            for name in PEER_FIELDS:
                if fields.get(name) is not None:
                    return fields[name]
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        peer = self._peer(record)
        if peer is None:
            return True
        now = self.clock()
        key = (record.name, record.msg, str(peer))
        entry = self._keys.get(key)
        if entry is None:
            if now - self._window >= self.interval_s:
                self._window, self._new_in_window = now, 0
            self._new_in_window += 1
            if self._new_in_window > self.max_new_keys:
                self.held_new += 1
                return False
            self._keys[key] = [now, 0]
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            self._annotate(record, 0)
            return True
        self._keys.move_to_end(key)
        if now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        held = int(entry[1])
        entry[0], entry[1] = now, 0
        self._annotate(record, held)
        return True

    def _annotate(self, record: logging.LogRecord, held: int) -> None:
        if held:
            record.suppressed_repeats = held
        if self.held_new:
            record.suppressed_other_peers = self.held_new
            self.held_new = 0
