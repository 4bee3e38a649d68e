"""Static subscriber bindings from a CSV or TOML file, reloaded when the file changes (or on SIGHUP).

The file format is documented in docs/mediation.md ("The static bindings file"; its examples are parsed by
tests/mediation/subscribers/test_bindings_docs.py). Each entry (subscriber, network, validity) is one binding with
``source='static'``. On reload, new entries are opened and entries that disappeared from the file are ended at the
reload time (history is kept, so late flows of the past are still attributed). A file that fails to parse is refused
as a whole and the bindings stay as they were.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mediation.subscribers.bindings import Bindings, parse_network
from mediation.tables import OPEN_END_MS

log = logging.getLogger(__name__)


class StaticFileError(ValueError):
    """The static bindings file is malformed (the message names the line or entry)."""


@dataclass(frozen=True)
class StaticEntry:
    subscriber_id: str
    network: str
    valid_from: int
    valid_to: int
    parsed: tuple[int, int, int]
    """(hi, lo, prefix length) of ``network``."""

    @property
    def key(self) -> str:
        """Stable identity of the entry, stored as the binding's session_id."""
        hi, lo, plen = self.parsed
        return f"static:{self.subscriber_id}|{hi:x}:{lo:x}/{plen}|{self.valid_from}|{self.valid_to}"


def _time(value: object, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        t = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            t = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise StaticFileError(f"{where}: bad time {value!r} (expected ISO 8601 UTC)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _entry(sub: object, network: object, vf: object, vt: object, where: str) -> StaticEntry:
    if not isinstance(sub, str) or not sub.strip():
        raise StaticFileError(f"{where}: empty subscriber_id")
    try:
        parsed = parse_network(str(network))
    except ValueError:
        raise StaticFileError(f"{where}: bad address or prefix {network!r}") from None
    start = _time(vf, where) or 0
    end = _time(vt, where) or OPEN_END_MS
    if end <= start:
        raise StaticFileError(f"{where}: valid_to is not after valid_from")
    return StaticEntry(sub.strip(), str(network).strip(), start, end, parsed)


def parse_static_file(path: str | os.PathLike[str]) -> list[StaticEntry]:
    """Entries of a CSV (``.csv``) or TOML (``.toml``) bindings file; raises :class:`StaticFileError`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise StaticFileError(f"{p}: {exc.strerror}") from None
    entries: list[StaticEntry] = []
    if p.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise StaticFileError(f"{p}: {exc}") from None
        for i, item in enumerate(doc.get("binding", [])):
            where = f"{p.name}: binding[{i}]"
            if not isinstance(item, dict):
                raise StaticFileError(f"{where}: not a table")
            unknown = set(item) - {"subscriber_id", "networks", "network", "valid_from", "valid_to"}
            if unknown:
                raise StaticFileError(f"{where}: unknown keys {sorted(unknown)}")
            networks = item.get("networks", []) + ([item["network"]] if "network" in item else [])
            if not networks:
                raise StaticFileError(f"{where}: no networks")
            for n in networks:
                entries.append(_entry(item.get("subscriber_id"), n, item.get("valid_from"), item.get("valid_to"),
                                      where))
        return entries
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"subscriber_id", "network"} <= set(reader.fieldnames):
        raise StaticFileError(f"{p.name}: the header must name subscriber_id and network")
    for row in reader:
        where = f"{p.name}:{reader.line_num}"
        if not any((v or "").strip() for v in row.values()):
            continue
        entries.append(_entry(row.get("subscriber_id"), row.get("network"), row.get("valid_from"),
                              row.get("valid_to"), where))
    return entries


class StaticBindings:
    """Keeps the ``static`` bindings in :class:`Bindings` in line with a file."""

    def __init__(self, path: str | os.PathLike[str], bindings: Bindings) -> None:
        self.path = Path(path)
        self.bindings = bindings
        self._mtime: float | None = None
        self._applied: str | None = None  # sha256 of the content last applied
        self.reloads = 0
        self.errors = 0

    def reload(self, now_ms: int) -> tuple[int, int]:
        """Apply the file now: returns (bindings opened, bindings ended). Raises :class:`StaticFileError`.

        A file whose content has not changed since it was last applied costs only reading and hashing it."""
        try:
            self._mtime = self.path.stat().st_mtime
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            self._mtime, digest = None, None
        if digest is not None and digest == self._applied:
            return 0, 0
        try:
            entries = parse_static_file(self.path)
        except StaticFileError:
            self.errors += 1
            raise
        wanted = {e.key: e for e in entries}
        current = {sid: bid for bid, sid in self.bindings.conn.execute(
            "SELECT id, session_id FROM bindings WHERE source='static' AND valid_to>?", (now_ms,)).fetchall()}
        known = {sid for (sid,) in self.bindings.conn.execute(
            "SELECT DISTINCT session_id FROM bindings WHERE source='static'").fetchall()}
        todo, keys = [], []
        for key, e in wanted.items():
            if key in current:
                continue
            if key not in known:
                start = e.valid_from
            elif e.valid_to > now_ms:  # removed earlier and now back: valid again from now on
                start = max(e.valid_from, now_ms)
            else:
                continue
            todo.append((e.subscriber_id, e.parsed, start, e.valid_to))
            keys.append(key)
        try:
            opened = self.bindings.open_many(todo, source="static", session_ids=keys)
            gone = [bid for sid, bid in current.items() if sid not in wanted]
            ended = self.bindings.close_ids(gone, now_ms) if gone else 0
        except Exception:  # (a full disk): nothing half-applied is left for the next writer to commit
            self.bindings.rollback()
            raise
        self.bindings.commit()
        self._applied = digest
        self.reloads += 1
        log.info("static bindings reloaded", extra={"file": str(self.path), "opened": opened, "ended": ended})
        return opened, ended

    def maybe_reload(self, now_ms: int) -> bool:
        """Reload when the file's modification time changed; a bad file is logged and the old bindings kept."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        try:
            self.reload(now_ms)
        except StaticFileError as exc:
            self._mtime = mtime  # do not retry the same broken file every check
            log.error("static bindings file refused, keeping the previous bindings: %s", exc)
            return False
        return True
