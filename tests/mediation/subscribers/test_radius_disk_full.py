"""RADIUS on a full disk (issue 13 item 6): when a COMMIT fails with SQLITE_FULL, SQLite rolls the transaction
back by itself; the bindings store used to keep its own "in a transaction" flag set (and ``rollback()`` raised before
clearing it), so every later statement autocommitted, every COMMIT failed and no request was answered until a
restart, while bindings were still being written. Now nothing is written or answered while the disk is full, and
accounting resumes, answered and journaled consistently, once space returns.

The full disk is a real one when the test may mount (root): a 2 MiB tmpfs under the bindings store, filled with a
file and freed by deleting it. Without that privilege SQLite's own limit stands in for it (``PRAGMA
max_page_count``), which makes SQLite fail with a real SQLITE_FULL as well.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from collector.radius_listener import start_radius
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import RadiusAccounting, accounting_request
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.mediation_helpers import INTERVAL, T0, usage_totals
from tests.mediation.subscribers.test_radius import NAS, SECRET, FakeSink, attrs, config, radclient

MANY = 150  # prefixes in one Start (radclient sends each in 20 bytes): a transaction of many new pages


class FullDisk:
    """The directory of the bindings store, which :meth:`fill` makes full and :meth:`free` frees again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
        self.mounted = proc.returncode == 0
        self.conn: sqlite3.Connection | None = None

    def fill(self, conn: sqlite3.Connection, db: Path) -> None:
        """No space left for ``conn``'s database (``db``)."""
        if self.mounted:
            with sqlite3.connect(db) as other:  # an empty WAL: the next commit must grow it
                other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError:
                pass
            finally:
                os.close(fd)
            fd = os.open(self.path / "filler", os.O_WRONLY | os.O_APPEND)  # the last bytes of the last block
            try:
                while True:
                    os.write(fd, b"\0")
            except OSError:
                pass
            finally:
                os.close(fd)
        else:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={pages}")
        self.conn = conn

    def free(self) -> None:
        if self.mounted:
            (self.path / "filler").unlink()
        else:
            assert self.conn is not None
            self.conn.execute("PRAGMA max_page_count=1073741823")

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path: Path):
    disk = FullDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.unmount()


def many_prefixes(user: str, t: int) -> list:
    out = attrs(1, session=user, user=user, t=t)
    return out + [(97, bytes([0, 64]) + bytes.fromhex(f"20010db8{i:08x}")) for i in range(MANY)]


def test_accounting_resumes_after_sqlite_full(full_disk: FullDisk):
    """``handle`` fails while the disk is full; the listener's rollback then works, nothing was written, and the
    same requests are applied and answered once space returns."""
    db = full_disk.path / "bindings.sqlite"
    b = Bindings(db)
    acct = RadiusAccounting(config().radius, b, INTERVAL)
    assert len(acct.handle([(accounting_request(1, attrs(1, session="a", t=T0, Framed_IP_Address="100.64.0.1"),
                                                SECRET), NAS)], T0 + 1000).responses) == 1
    full_disk.fill(b.conn, db)
    big = accounting_request(2, many_prefixes("bob", T0), SECRET)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        acct.handle([(big, NAS)], T0 + 2000)
    b.rollback()  # what the listener does (it raised here, and the store stayed stuck)
    assert not b.in_transaction
    full_disk.free()
    small = accounting_request(3, attrs(1, session="c", user="carol", t=T0, Framed_IP_Address="100.64.0.3"), SECRET)
    result = acct.handle([(big, NAS), (small, NAS)], T0 + 3000)
    assert len(result.responses) == 2
    count = sqlite3.connect(db).execute("SELECT count(*) FROM bindings").fetchone()[0]
    assert count == 1 + MANY + 1


@pytest.mark.external
@pytest.mark.slow
def test_radclient_answers_again_once_space_returns(full_disk: FullDisk):
    """radclient through the listener: answered before, not answered (and nothing written: no binding, no counters
    advanced) while the disk is full, answered again and the usage counted exactly once when space returns."""
    require_tool("radclient")
    port = free_port()
    db = full_disk.path / "bindings.sqlite"
    cfg = config(port, "radius.max_event_age_s=0")  # (time-stamps of a fixed day; the age counts from the clock)
    sink = FakeSink()
    t = T0 // 1000
    start = (f"Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = a, Framed-IP-Address = 100.64.0.1, "
             f"Event-Timestamp = {t}")

    def interim(octets: int, after: int) -> str:
        return (f"Acct-Status-Type = Interim-Update, User-Name = alice, Acct-Session-Id = a, "
                f"Framed-IP-Address = 100.64.0.1, Event-Timestamp = {t + after}, Acct-Input-Octets = {octets}")

    bob = (f"Acct-Status-Type = Start, User-Name = bob, Acct-Session-Id = b, Event-Timestamp = {t + 400}\n"
           + "\n".join(f"Framed-IPv6-Prefix = 2001:db8:0:{i:x}::/64" for i in range(MANY)))  # (one per line)

    async def main() -> tuple[list, list, list, dict]:
        server = await start_radius(asyncio.get_running_loop(), cfg, Bindings(db), sink.add, flush=sink.flush)
        try:
            before = [await radclient(port, "testing123", text + "\n") for text in (start, interim(1000, 300))]
            full_disk.fill(server.bindings.conn, db)
            # (SQLite's page limit refuses only what needs new pages: there, the small Interim would pass)
            refused = (bob, interim(3000, 600)) if full_disk.mounted else (bob,)
            during = [await radclient(port, "testing123", text + "\n", timeout=1) for text in refused]
            on_disk = sqlite3.connect(db)
            held = (on_disk.execute("SELECT count(*) FROM bindings").fetchone()[0],
                    on_disk.execute("SELECT in_total FROM radius_sessions").fetchall())
            full_disk.free()
            after = [await radclient(port, "testing123", text + "\n") for text in (interim(3000, 600), bob)]
            assert held == (1, [(1000,)]), held  # nothing written while the disk was full
            return before, during, after, dict(server.accounting.counters)
        finally:
            await server.stop()

    before, during, after, counters = asyncio.run(main())
    for code, out in before + after:
        assert code == 0 and "Received Accounting-Response" in out, out
    for code, out in during:
        assert code != 0 and "Received Accounting-Response" not in out, out
    assert usage_totals([b for name, b in sink.durable if name == "usage"]) == {
        ("alice", T0, "up"): 1000, ("alice", T0 + INTERVAL, "up"): 2000}  # each byte once
    bound = sqlite3.connect(db)
    assert bound.execute("SELECT count(*) FROM bindings WHERE subscriber_id='bob'").fetchone()[0] == MANY
    assert bound.execute("SELECT count(*) FROM radius_usage_journal").fetchone()[0] == 0  # confirmed at stop
    assert counters[("nas1", "ok")] == 4
