"""Plan assignments: which subscriber is on which plan, from when.

The assignments file is CSV (``subscriber_id,plan_id,from[,to]``, header line required) or TOML
(``[[assignment]]`` tables with the same keys). ``from``/``to`` are RFC 3339 times with an offset; an assignment holds
over the half-open interval ``[from, to)``, and without ``to`` until the subscriber's next assignment. A plan change
in the middle of a billing cycle therefore splits the cycle at the change: each part is rated under its own plan,
with allowances, tier bounds, minimum and maximum charges prorated by the part's share of the cycle (see
``docs/rating.md``).

The file is re-read when its modification time or size changes (:meth:`AssignmentFile.current`), like the bindings
file; a file that fails validation keeps the previous assignments in force and the error is reported.
"""

from __future__ import annotations

import csv
import io
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decoders.settings import ConfigError
from rating.plans import parse_instant

FOREVER_MS = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Assignment:
    subscriber_id: str
    plan_id: str
    from_ms: int
    to_ms: int = FOREVER_MS


class Assignments:
    """Assignments indexed for vectorised lookup: per subscriber, intervals sorted by start."""

    def __init__(self, items: list[Assignment]) -> None:
        items = sorted(items, key=lambda a: (a.subscriber_id, a.from_ms))
        fixed: list[Assignment] = []
        for i, a in enumerate(items):
            nxt = items[i + 1] if i + 1 < len(items) and items[i + 1].subscriber_id == a.subscriber_id else None
            end = a.to_ms
            if nxt is not None:
                if nxt.from_ms == a.from_ms:
                    raise ConfigError(f"assignment {a.subscriber_id}", a.from_ms,
                                      "one assignment per subscriber and start time")
                end = min(end, nxt.from_ms)
            fixed.append(Assignment(a.subscriber_id, a.plan_id, a.from_ms, end))
        self.items = fixed
        self.subscribers = np.array([a.subscriber_id for a in fixed], dtype=object)
        self.plan_ids = np.array([a.plan_id for a in fixed], dtype=object)
        self.from_ms = np.array([a.from_ms for a in fixed], dtype=np.int64)
        self.to_ms = np.array([a.to_ms for a in fixed], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def lookup(self, names: np.ndarray, codes: np.ndarray, at_ms: np.ndarray) -> np.ndarray:
        """Index into ``items`` of the assignment in force for each row, or -1 where there is none.

        Rows are given as subscriber ``codes`` into the distinct ``names`` (a dictionary-encoded column) and times.
        Vectorised: (subscriber code, time) is folded into one sortable int64 key and found with one
        ``searchsorted``; only the distinct names are touched in Python.
        """
        n = len(codes)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or not self.items:
            return out
        at_ms = np.asarray(at_ms, dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        position = {name: i for i, name in enumerate(names)}
        a_code = np.array([position.get(s, -1) for s in self.subscribers], dtype=np.int64)
        keep = np.flatnonzero(a_code >= 0)
        if len(keep) == 0:
            return out
        lo = min(int(at_ms.min()), int(self.from_ms[keep].min()))
        span = int(at_ms.max()) - lo + 2
        if span * (len(names) + 1) >= 2**62:
            raise ValueError("time range too wide for one lookup; rate in smaller periods")
        a_key = a_code[keep] * span + (np.clip(self.from_ms[keep], lo, lo + span - 1) - lo)
        order = np.argsort(a_key, kind="stable")
        a_key, item = a_key[order], keep[order]
        pos = np.searchsorted(a_key, codes * span + (at_ms - lo), side="right") - 1
        valid = pos >= 0
        found = item[np.where(valid, pos, 0)]
        valid &= (a_code[found] == codes) & (at_ms >= self.from_ms[found]) & (at_ms < self.to_ms[found])
        out[valid] = found[valid]
        return out


def parse_assignments(text: str, name: str = "assignments") -> Assignments:
    """Parse CSV or TOML text (TOML when ``name`` ends in .toml)."""
    items: list[Assignment] = []
    if name.endswith(".toml"):
        try:
            tree = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, name, f"valid TOML ({exc})") from None
        rows = tree.get("assignment", [])
        if set(tree) - {"assignment"} or not isinstance(rows, list):
            raise ConfigError(name, sorted(tree), "only [[assignment]] tables")
        for i, row in enumerate(rows):
            items.append(_row(row, f"assignment[{i}]"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"subscriber_id", "plan_id", "from"} <= set(reader.fieldnames):
            raise ConfigError(f"{name}: header", reader.fieldnames, "columns subscriber_id,plan_id,from[,to]")
        for i, row in enumerate(reader, start=2):
            items.append(_row({k: v for k, v in row.items() if v not in (None, "")}, f"{name}: line {i}"))
    return Assignments(items)


def _row(row: object, key: str) -> Assignment:
    if not isinstance(row, dict):
        raise ConfigError(key, row, "a table")
    extra = set(row) - {"subscriber_id", "plan_id", "from", "to"}
    if extra:
        raise ConfigError(f"{key}.{sorted(extra)[0]}", row[sorted(extra)[0]], "subscriber_id, plan_id, from, to")
    for k in ("subscriber_id", "plan_id", "from"):
        if not row.get(k):
            raise ConfigError(f"{key}.{k}", row.get(k), "a value (required)")
    start = parse_instant(row["from"], f"{key}.from")
    end = parse_instant(row["to"], f"{key}.to") if row.get("to") else FOREVER_MS
    if end <= start:
        raise ConfigError(f"{key}.to", row.get("to"), "a time after 'from'")
    return Assignment(str(row["subscriber_id"]), str(row["plan_id"]), start, end)


class AssignmentFile:
    """An assignments file, re-read when it changes on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._current: Assignments | None = None
        self.last_error: str | None = None

    def current(self) -> Assignments:
        """The assignments now in force (re-read if the file changed; a bad new file keeps the old ones)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._current is None:
                raise ConfigError("rating.assignments_file", str(self.path), "an existing assignments file") from None
            return self._current
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._current = parse_assignments(self.path.read_text(), self.path.name)
                self.last_error = None
            except ConfigError as exc:
                if self._current is None:
                    raise
                self.last_error = str(exc)
            self._stamp = stamp
        assert self._current is not None
        return self._current
