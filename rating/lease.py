"""A lease held in the store (a ``rating_lease`` table), so only one rating job runs at a time across hosts.

No file lock: the store (the Parquet dataset on shared storage, or the ClickHouse server every host writes to) is
the one place all rating hosts see. The table is append-only; each row is one owner's claim, renewal or release
(``since``, ``expires``, ordered per owner by ``seq``). An owner's *state* is its newest row. The **holder** is,
among owners whose state is unexpired, the one with the oldest ``since`` (ties: the smaller owner string).

Acquire: read the states; if another owner holds the lease, give up. Otherwise write a claim, make it durable and
visible (outputs flushed, ClickHouse spool drained), then read again: two contenders that both wrote claims see the
same rows and agree on one winner; the loser releases its claim. A holder renews by writing a row with the same
``since`` and a later ``expires``; a crashed holder's lease lapses after ``ttl``. Hosts' clocks are assumed to agree
to well within the ttl (NTP).
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable

import pyarrow as pa

from rating.tables import RATING_LEASE


class LeaseHeld(RuntimeError):
    """Another rating job holds the lease."""

    def __init__(self, holder: str, expires_ms: int) -> None:
        self.holder, self.expires_ms = holder, expires_ms
        super().__init__(f"the rating lease is held by {holder} until {expires_ms} ms UTC; only one rating job runs "
                         "at a time")


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class StoreLease:
    """The lease named ``name`` for ``owner``.

    ``query(sql) -> pa.Table`` reads the store; ``write(table, pa.RecordBatch)`` appends and returns once the row is
    visible to ``query`` (the job flushes and drains its outputs).
    """

    def __init__(self, query: Callable[[str], pa.Table], write: Callable, *, name: str = "rating",
                 owner: str | None = None, ttl_s: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.query, self.write = query, write
        self.name = name
        self.owner = owner or default_owner()
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock
        self._since: int | None = None
        self._seq = itertools.count(int(clock() * 1000) * 1000)

    def _now(self) -> int:
        # Whole seconds: ClickHouse 18.16 stores DateTime in seconds, so both stores compare the same values.
        return int(self.clock()) * 1000

    def states(self) -> list[tuple[str, int, int]]:
        """(owner, since_ms, expires_ms) of every owner's newest row."""
        name = self.name.replace("'", "")
        try:
            t = self.query(
                "SELECT owner, argMax(since, seq) AS since, argMax(expires, seq) AS expires FROM rating_lease "
                f"WHERE name = '{name}' GROUP BY owner")
        except Exception as exc:
            # A server whose flowmed database has not been created yet has no lease rows: the first claim's write
            # creates the tables (the output creates its schema before inserting).
            if "doesn't exist" in str(exc) or "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
                return []
            raise
        if t.num_rows == 0:
            return []
        since = t.column("since").cast(pa.int64()).to_pylist()
        expires = t.column("expires").cast(pa.int64()).to_pylist()
        return list(zip(t.column("owner").to_pylist(), since, expires, strict=True))

    def holder(self) -> tuple[str, int, int] | None:
        now = self._now()
        live = [s for s in self.states() if s[2] > now]
        return min(live, key=lambda s: (s[1], s[0])) if live else None

    def _row(self, since: int, expires: int) -> None:
        self.write(RATING_LEASE, RATING_LEASE.to_arrow({
            "name": [self.name], "owner": [self.owner], "seq": [next(self._seq)],
            "since": [since], "expires": [expires], "written": [self._now()]}))

    def acquire(self) -> None:
        """Take the lease or raise :class:`LeaseHeld`."""
        h = self.holder()
        if h is not None and h[0] != self.owner:
            raise LeaseHeld(h[0], h[2])
        now = self._now()
        since = h[1] if h is not None else now
        self._row(since, now + self.ttl_ms)
        h = self.holder()
        if h is None or h[0] != self.owner:
            self._row(since, now - 1000)  # withdraw our claim: someone claimed first
            raise LeaseHeld(h[0] if h else "?", h[2] if h else 0)
        self._since = since

    def renew(self) -> None:
        """Extend the lease held (call well within the ttl during long runs)."""
        if self._since is None:
            raise RuntimeError("renew() without acquire()")
        h = self.holder()
        if h is None or h[0] != self.owner:
            raise LeaseHeld(h[0] if h else "?", h[2] if h else 0)
        self._row(self._since, self._now() + self.ttl_ms)

    def release(self) -> None:
        if self._since is not None:
            self._row(self._since, self._now() - 1000)
            self._since = None

