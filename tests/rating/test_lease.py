"""The rating lease's rules, over an in-memory table and an injected clock: contenders never both win, a lapsed lease
is taken back on renew only when nobody else claimed it meanwhile."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rating.lease import LeaseHeld, StoreLease


class Table:
    """The rating_lease rows; ``visible`` limits what reads see (a replica that has not caught up)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.stale_reads: list[int] = []  # the next reads see only this many rows each (then everything)

    def write(self, table, batch: pa.RecordBatch) -> None:
        self.rows += batch.to_pylist()

    def query(self, sql: str) -> pa.Table:
        rows = self.rows[:self.stale_reads.pop(0)] if self.stale_reads else self.rows
        newest: dict[str, dict] = {}
        for r in rows:
            if r["owner"] not in newest or r["seq"] > newest[r["owner"]]["seq"]:
                newest[r["owner"]] = r
        return pa.table({"owner": pa.array(list(newest), pa.string()),
                         "since": pa.array([r["since"] for r in newest.values()], pa.timestamp("ms", tz="UTC")),
                         "expires": pa.array([r["expires"] for r in newest.values()], pa.timestamp("ms", tz="UTC"))})


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def lease(table: Table, clock: Clock, owner: str, ttl_s: float = 4.0, **kw) -> StoreLease:
    return StoreLease(table.query, table.write, owner=owner, ttl_s=ttl_s, clock=clock,
                      sleep=kw.pop("sleep", clock.sleep), **kw)


def test_renew_after_the_lease_lapsed_takes_it_back_when_nobody_claimed():
    """A holder paused longer than the ttl (a busy machine): renew re-claims instead of failing with 'held by ?'."""
    table, clock = Table(), Clock()
    a = lease(table, clock, "host-a:1:x")
    a.acquire()
    clock.t += 4.5  # the 4 s ttl lapsed between two renewals
    assert a.holder() is None
    a.renew()
    assert a.holder()[0] == "host-a:1:x"
    clock.t += 2
    a.renew()  # and renewing goes on as usual
    b = lease(table, clock, "host-b:2:y")
    with pytest.raises(LeaseHeld) as held:
        b.acquire()
    assert held.value.holder == "host-a:1:x"


def test_renew_after_the_lease_lapsed_refuses_when_another_host_claimed_since():
    table, clock = Table(), Clock()
    a, b = lease(table, clock, "host-a:1:x"), lease(table, clock, "host-b:2:y")
    a.acquire()
    clock.t += 5
    b.acquire()  # a's lease lapsed: b takes it, rates, releases
    clock.t += 1
    b.release()
    clock.t += 1
    with pytest.raises(LeaseHeld) as held:
        a.renew()
    assert held.value.holder == "host-b:2:y"


def test_a_contender_that_sees_an_earlier_claim_only_after_its_own_withdraws():
    """b read before a's claim existed, a won without seeing b's claim (b's was acknowledged later), b then sees
    both. b must lose even though it would win the tie (same second, smaller owner): both holding is the bug."""
    table, clock = Table(), Clock()
    a, b = lease(table, clock, "host-b:1:late"), lease(table, clock, "host-a:2:tie")
    a.acquire()  # a's claim, read back alone: a holds the lease
    # b's first read happened before a's claim was written (it saw nothing); its read after its own claim sees both.
    table.stale_reads = [0]
    with pytest.raises(LeaseHeld) as held:
        b.acquire()
    assert held.value.holder == "host-b:1:late"
    assert a.holder()[0] == "host-b:1:late"
    assert [s[0] for s in b.states() if s[2] > b._now()] == ["host-b:1:late"]  # b's claim was withdrawn


def test_contenders_that_see_each_other_both_withdraw_and_one_wins_on_retry():
    table, clock = Table(), Clock()
    b = lease(table, clock, "host-b:2:y")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # while a waits, b gives up its claim too (it saw a's)
        sleeps.append(seconds)
        b._row(b_since, b._now() - 1000)
        clock.t += seconds

    a = lease(table, clock, "host-a:1:x", sleep=sleep)
    b_since = b._now()
    real_write = a.write

    def write_then_b_claims(t, batch) -> None:
        real_write(t, batch)
        if len(table.rows) == 1:  # b's claim lands right after a's first claim, before a reads back
            b._row(b_since, b._now() + 4000)

    a.write = write_then_b_claims
    a.acquire()
    assert len(sleeps) == 1  # withdrew once, then won alone
    assert a.holder()[0] == "host-a:1:x"
    with pytest.raises(LeaseHeld):
        b.acquire()
