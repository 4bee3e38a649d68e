"""The vectorised engine against a plain per-record reference written with Decimal, on random usage (hypothesis).

The reference is deliberately naive: one subscriber and one record at a time, in Python, with the rules of
docs/rating.md (allowance first, graduated tiers on the card's cycle-to-date billable volume, per-record quantity
rounding, bands in Europe/Berlin, zero-rated class, half-up rounding once per record).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rating.engine import rate
from tests.rating.helpers import HOME_PLAN, assignments, ms, plans, usage

BERLIN = ZoneInfo("Europe/Berlin")
ASG = "subscriber_id,plan_id,from\n" + "".join(f"s{i},home,2026-01-01T00:00:00+01:00\n" for i in range(3))
START = ms("2026-10-20T00:00:00+02:00")  # around the end of summer time, October and November cycles


def reference(rows: list[tuple[str, int, str, str, int]], volume: bool = False) -> dict[str, int]:
    """record_id -> amount in micro-EUR, the HOME plan by hand (``volume``: its download card in volume mode)."""
    summed: dict[tuple, int] = {}
    for sub, t, d, c, b in rows:
        summed[(sub, t, d, c)] = summed.get((sub, t, d, c), 0) + b
    out: dict[str, int] = {}
    cumulative: dict[tuple, int] = {}

    def band(t: int) -> str:
        local = datetime.fromtimestamp(t / 1000, UTC).astimezone(BERLIN)
        return "peak" if local.weekday() < 5 and 8 <= local.hour < 20 else "offpeak"

    def cycle(t: int) -> str:
        local = datetime.fromtimestamp(t / 1000, UTC).astimezone(BERLIN)
        return f"{local.year}-{local.month:02d}"

    keyed = sorted(summed.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] == "down", kv[0][3], band(kv[0][1])))
    totals: dict[tuple, int] = {}  # volume mode: the card's cycle total decides the tier
    for (sub, t, d, c), b in keyed:
        if c != "cdn":
            card = (sub, cycle(t), d)
            totals[card] = totals.get(card, 0) + -(-b // 1_000_000) * 1_000_000
    for (sub, t, d, c), b in keyed:
        bd = band(t)
        rid = f"{sub}/{t}/{d}/{c}/{bd}"
        if c == "cdn":
            out[rid] = 0
            continue
        q = -(-b // 1_000_000) * 1_000_000
        card = (sub, cycle(t), d)
        before = cumulative.get(card, 0)
        after = before + q
        cumulative[card] = after
        if d == "up":
            exact = Decimal(q) * Decimal("0.3333") / Decimal(10**9)
        elif volume:
            total = totals[card]
            peak = bd == "peak"
            price = ((Decimal("1.20") if peak else Decimal("0.60")) if total <= 5_000_000_000
                     else (Decimal("0.80") if peak else Decimal("0.40")))
            exact = Decimal(max(0, after - max(before, 2_000_000_000))) * price / Decimal(10**9)
        else:
            exact = Decimal(0)
            prices = [(2_000_000_000, Decimal(0)),
                      (5_000_000_000, Decimal("1.20") if bd == "peak" else Decimal("0.60")),
                      (10**30, Decimal("0.80") if bd == "peak" else Decimal("0.40"))]
            lo = 0
            for hi, price in prices:
                overlap = max(0, min(after, hi) - max(before, lo))
                exact += Decimal(overlap) * price / Decimal(10**9)
                lo = hi
        out[rid] = int((exact * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return out


rows_strategy = st.lists(
    st.tuples(st.sampled_from(["s0", "s1", "s2"]), st.integers(0, 4 * 24 * 12 * 3),
              st.sampled_from(["up", "down"]), st.sampled_from(["default", "video", "cdn"]),
              st.integers(0, 3_000_000_000)),
    min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows_strategy)
def test_engine_matches_the_decimal_reference(raw):
    rows = [(s, START + k * 300_000, d, c, b) for s, k, d, c, b in raw]
    table = usage([(s, datetime.fromtimestamp(t / 1000, UTC).isoformat(), d, c, b) for s, t, d, c, b in rows])
    got = {r["record_id"]: r["amount_micros"] for r in rate(table, plans(HOME_PLAN), assignments(ASG))
           .records.to_pylist()}
    assert got == reference(rows)
    # The input order does not matter (classes first seen in another order give the same amounts).
    reordered = table.take(list(reversed(range(table.num_rows))))
    assert {r["record_id"]: r["amount_micros"] for r in rate(reordered, plans(HOME_PLAN), assignments(ASG))
            .records.to_pylist()} == got


@settings(max_examples=40, deadline=None)
@given(rows_strategy)
def test_volume_mode_matches_the_decimal_reference(raw):
    rows = [(s, START + k * 300_000, d, c, b) for s, k, d, c, b in raw]
    table = usage([(s, datetime.fromtimestamp(t / 1000, UTC).isoformat(), d, c, b) for s, t, d, c, b in rows])
    plan = plans(HOME_PLAN.replace('tier_mode = "graduated"', 'tier_mode = "volume"'))
    got = {r["record_id"]: r["amount_micros"] for r in rate(table, plan, assignments(ASG)).records.to_pylist()}
    assert got == reference(rows, volume=True)
