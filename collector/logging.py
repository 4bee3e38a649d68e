"""Structured logging to stderr: logfmt or JSON lines, and a rate limiter for repeated per-exporter errors.

Every log call passes its fields as ``extra={"fields": {...}}`` (or through :func:`log`), so a line is
``ts=... level=info msg="listening" listener=0.0.0.0:2055`` in logfmt or one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, TextIO

LOGGER_NAME = "flowmed"
logger = logging.getLogger(LOGGER_NAME)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _logfmt_value(value: Any) -> str:
    if isinstance(value, list | tuple | set):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, default=str)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "" if value is None else str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        items: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "msg": record.getMessage()}
        if record.name != LOGGER_NAME:
            items["logger"] = record.name
        items.update(vars(record).get("fields") or {})  # extra= fields: in the record's __dict__ only when given
        for key, value in record.__dict__.items():  # logging's own extra={...} from library modules
            if key not in _STANDARD and key != "fields" and not key.startswith("_"):
                items.setdefault(key, value)
        if record.exc_info:
            items["error"] = self.formatException(record.exc_info)
        if self.fmt == "json":
            return json.dumps(items, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in items.items())


class _Handler(logging.StreamHandler[Any]):
    """flowmed's own handler: told apart from the root's foreign handlers when setup() runs again."""


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Send every log record (flowmed's and its libraries') to stderr in ``fmt``; idempotent (SIGHUP calls it)."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):  # a handler of ours (set below), among the root's foreign ones
            root.removeHandler(old)
    from collector.logflood import FloodFilter

    handler.addFilter(FloodFilter())  # per-peer warnings bounded, however many peers (spoofed) there are
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """Change the log level (SIGHUP)."""
    logging.getLogger().setLevel(_LEVELS[level])
    logger.setLevel(_LEVELS[level])


def log(level: str, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields``."""
    logger.log(_LEVELS[level], msg, extra={"fields": fields})


class RateLimiter:
    """At most one log line per key every ``interval_s``; the lines held back are counted into the next one.

    Keys are (exporter, reason) pairs, so a noisy exporter cannot flood the log, and the number of keys is bounded
    (the least recently used key is forgotten) because exporters are attacker-controlled.
    """

    def __init__(self, interval_s: float = 60.0, max_keys: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        # key -> [last_logged, suppressed]
        self._keys: OrderedDict[tuple[Hashable, ...], list[float | int]] = OrderedDict()

    def allow(self, key: tuple[Hashable, ...], now: float | None = None) -> int | None:
        """None when the line must be held back, else the number of lines held back since the last one."""
        now = time.monotonic() if now is None else now
        entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = [now, 0]
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return 0
        self._keys.move_to_end(key)
        if now - entry[0] < self.interval_s:
            entry[1] += 1
            return None
        suppressed = int(entry[1])
        entry[0], entry[1] = now, 0
        return suppressed

    def log(self, level: str, msg: str, key: tuple[Hashable, ...], count: int = 1, **fields: Any) -> None:
        """Log unless rate-limited; ``count`` is how many events this call stands for."""
        held = self.allow(key)
        if held is None:
            entry = self._keys[key]
            entry[1] += count - 1
            return
        log(level, msg, **fields, count=count, suppressed=held)
