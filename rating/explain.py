"""``flowmed explain``: how each amount of a subscriber's cycle was reached.

The records are recomputed from the usage in the store (rating is a pure function, so this is what the job wrote,
unless usage or plans changed since), and each one is taken apart with decimal arithmetic written independently of
the vectorised engine: usage, band, quantity rounding, cycle-to-date position, allowance, each tier part with its
price, the exact amount and its rounding, then the caps. The stored current version is shown beside it, and any
difference is flagged (a re-rate is due).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from rating.engine import idle_minimum_records, rate, sum_usage
from rating.job import RatingJob
from rating.plans import Plan
from rating.tables import current_sql
from rating.timebase import cycle_bounds

ROUNDING = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN, "down": ROUND_DOWN, "up": ROUND_CEILING}


def _n(v: int) -> str:
    return f"{v:,}".replace(",", " ")


def _money(micros: int | Decimal, currency: str) -> str:
    return f"{Decimal(micros).scaleb(-6).quantize(Decimal('0.000001'))} {currency}"


def _local(ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M %Z")


def _hours(ms: int) -> str:
    return f"{ms / 3_600_000:g} h"


def _share(plan: Plan, seg: tuple[int, int], cyc: tuple[int, int]) -> tuple[int, int]:
    return (seg[1] - seg[0], cyc[1] - cyc[0]) if plan.prorate else (1, 1)


def explain_record(plan: Plan, rec: dict[str, Any], seg: tuple[int, int],
                   cyc: tuple[int, int]) -> tuple[list[str], int]:
    """Lines explaining one usage record, and the amount before caps (micro-units), in decimal arithmetic."""
    part, whole = _share(plan, seg, cyc)
    lines = [f"{_local(rec['interval_start'], plan.timezone)}  {rec['direction']} {rec['traffic_class']}  "
             f"band {rec['band']}: {_n(rec['bytes'])} bytes"]
    if rec["rate_card"] == "zero_rated":
        lines.append(f"    zero-rated class {rec['traffic_class']}: reported, not charged, not counted")
        return lines, 0
    card = next(r for r in plan.rates if r.name == rec["rate_card"])
    inc = plan.quantity_increment_bytes
    q = rec["billable_quantity"]
    after = rec["cycle_to_date"]
    before = after - q
    how = "per record" if plan.quantity_rounding == "interval" else "on the cycle-to-date total"
    rounding = "no quantity rounding" if inc == 1 else f"rounded up to {_n(inc)} bytes {how}"
    lines.append(f"    billable {_n(q)} bytes ({rounding}); rate card {card.name}, "
                 f"cycle-to-date {_n(before)} -> {_n(after)}")
    allowance = card.allowance_bytes * part // whole
    in_allow = max(0, min(after, allowance) - before)
    if allowance:
        lines.append(f"    allowance {_n(allowance)} bytes" + (f" (prorated: {_hours(part)} of the cycle's "
                                                                 f"{_hours(whole)})" if part != whole else "")
                     + f": {_n(in_allow)} bytes of this record inside it")
    unit = Decimal(plan.unit_bytes)
    exact = Decimal(0)
    with localcontext() as ctx:
        ctx.prec = 60
        bounds = [t.up_to_bytes * part // whole if t.up_to_bytes is not None else None for t in card.tiers]
        lo_charged = max(before, allowance)
        if card.tier_mode == "graduated":
            lo = 0
            for i, (t, hi) in enumerate(zip(card.tiers, bounds, strict=True)):
                top = after if hi is None else min(after, hi)
                overlap = max(0, top - max(lo, lo_charged))
                if overlap:
                    price = t.prices[rec["band"]]
                    amount = Decimal(overlap) * price / unit
                    exact += amount
                    lines.append(f"    tier {i + 1}" + (f" (up to {_n(hi)})" if hi is not None else "") +
                                 f": {_n(overlap)} bytes at {price} {plan.currency}/{plan.unit} = {amount.normalize()}"
                                 f" {plan.currency}")
                lo = hi if hi is not None else lo
        else:
            total = rec["_card_total"]
            reached = sum(1 for hi in bounds[:-1] if max(total, 1) - 1 >= hi)
            price = card.tiers[reached].prices[rec["band"]]
            overlap = max(0, after - lo_charged)
            exact = Decimal(overlap) * price / unit
            lines.append(f"    volume tiers: the cycle-to-date total {_n(total)} reaches tier {reached + 1}; "
                         f"{_n(overlap)} bytes at {price} {plan.currency}/{plan.unit} = {exact.normalize()} "
                         f"{plan.currency}")
        micros = (exact * 1_000_000).quantize(Decimal(1), rounding=ROUNDING[plan.money_rounding])
    lines.append(f"    exact {exact.normalize()} {plan.currency} -> rounded once ({plan.money_rounding}) to "
                 f"{_n(int(micros))} micro-{plan.currency}")
    return lines, int(micros)


def explain_burstable(plan: Plan, rec: dict[str, Any], seg: tuple[int, int],
                      cyc: tuple[int, int]) -> tuple[list[str], int]:
    """Lines explaining a burstable record (percentile, excess, price, commit charge as charged: prorated by the
    segment's share of the cycle) and its amount in micro-units, in decimal arithmetic."""
    burst = plan.burst
    assert burst is not None
    part, whole = _share(plan, seg, cyc)
    mode = ROUNDING[plan.money_rounding]
    excess = rec["billable_quantity"]
    # price per Mbit/s times excess bit/s / 10^6, in micro-units: excess * price
    excess_micros = int((Decimal(excess) * burst.price_per_mbps).quantize(Decimal(1), rounding=mode))
    commit_full = int((burst.commit_charge * 1_000_000).quantize(Decimal(1), rounding=mode))
    commit = commit_full * part // whole
    lines = [f"burstable: {rec['direction']} {burst.percentile}th percentile {_n(rec['cycle_to_date'])} bit/s, "
             f"commit {_n(burst.commit_bps)} bit/s, billed excess {_n(excess)} bit/s (rounded up to "
             f"{_n(burst.increment_bps)} bit/s) at {burst.price_per_mbps} {plan.currency} per Mbit/s = "
             f"{_money(excess_micros, plan.currency)}"]
    if part != whole:
        lines.append(f"    commit charge {_money(commit, plan.currency)} (prorated: {_hours(part)} of the cycle's "
                     f"{_hours(whole)}, full {_money(commit_full, plan.currency)})")
    else:
        lines.append(f"    commit charge {_money(commit, plan.currency)}")
    lines.append(f"    amount {_money(excess_micros + commit, plan.currency)} ({_n(excess_micros + commit)} "
                 f"micro-{plan.currency})")
    return lines, excess_micros + commit


def explain(job: RatingJob, subscriber: str, cycle: str) -> list[str]:
    """The explanation of ``subscriber``'s ``cycle`` (uses the job's engine, plans, assignments and calendar)."""
    plans, asg = job.plans, job.assignments
    mine = [a for a in asg.items if a.subscriber_id == subscriber]
    if not mine:
        return [f"subscriber {subscriber}: no plan assignment"]
    closed = job.closed_until(int(job.clock() * 1000))
    spans = []
    for a in mine:
        versions = plans.plans.get(a.plan_id)
        if versions:
            spans.append(cycle_bounds(versions[0].timezone, versions[0].cycle_day, cycle))
    if not spans:
        return [f"subscriber {subscriber}: plans {[a.plan_id for a in mine]} are not in the plans file"]
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    usage = sum_usage(job.read_usage((lo, min(hi, closed)), subscriber))
    result = rate(usage, plans, asg, closed_until_ms=min(hi, closed), presummed=True)
    recs = [r for r in result.records.to_pylist() if r["cycle"] == cycle]
    idle = idle_minimum_records(plans, asg, (lo, min(hi, closed)), min(hi, closed), result.segments, subscriber)
    recs += [r for r in idle.to_pylist() if r["cycle"] == cycle]
    stored = {r["record_id"]: r for r in job.engine.query(current_sql(
        f"subscriber_id = '{subscriber.replace(chr(39), '')}' AND interval_start >= toDateTime({lo // 1000}, 'UTC') "
        f"AND interval_start < toDateTime({hi // 1000}, 'UTC')")).to_pylist() if r["cycle"] == cycle}
    out = [f"subscriber {subscriber}, cycle {cycle}" + ("" if hi <= closed else " (cycle not closed yet)")]
    recs.sort(key=lambda r: (r["interval_start"], r["direction"], r["traffic_class"], r["band"]))
    totals: dict[str, int] = {}
    card_totals: dict[tuple[str, int, str, str], int] = {}
    for r in recs:
        key = (r["plan_id"], r["plan_version"], r["rate_card"], r["cycle"])
        card_totals[key] = max(card_totals.get(key, 0), r["cycle_to_date"])
    current_plan = None
    for r in recs:
        plan = plans.get(r["plan_id"], r["plan_version"])
        if (plan.id, plan.version) != current_plan:
            current_plan = (plan.id, plan.version)
            out.append(f"plan {plan.id} version {plan.version} ({plan.currency}, {plan.timezone}, "
                       f"cycle day {plan.cycle_day})")
        cyc = cycle_bounds(plan.timezone, plan.cycle_day, cycle)
        a = next(a for a in mine if a.from_ms <= r["interval_start"] < a.to_ms)
        seg = (max(cyc[0], a.from_ms), min(cyc[1], a.to_ms))
        if r["rate_card"] == "minimum_charge":
            out.append(f"minimum charge {plan.minimum_charge} {plan.currency} for {_local(seg[0], plan.timezone)} .. "
                       f"{_local(seg[1], plan.timezone)}: adds {_money(r['amount_micros'], plan.currency)}")
            pre = r["amount_micros"]
        elif r["rate_card"] == "burstable":
            lines, pre = explain_burstable(plan, r, seg, cyc)
            out.extend(lines)
            if pre != r["amount_micros"]:
                out.append(f"    charged {_n(r['amount_micros'])} micro-{plan.currency} instead")
        else:
            r["_card_total"] = card_totals[(r["plan_id"], r["plan_version"], r["rate_card"], r["cycle"])]
            lines, pre = explain_record(plan, r, seg, cyc)
            out.extend(lines)
            if pre != r["amount_micros"]:
                why = "maximum charge reached" if plan.max_charge is not None else "fair-usage threshold passed"
                out.append(f"    {why}: charged {_n(r['amount_micros'])} micro-{plan.currency} instead")
        s = stored.get(r["record_id"])
        if s is None:
            out.append("    stored: not rated yet")
        elif s["amount_micros"] != r["amount_micros"] or s["bytes"] != r["bytes"]:
            out.append(f"    stored: version {s['version']} {_n(s['amount_micros'])} micro, {_n(s['bytes'])} bytes "
                       "DIFFERS (usage or plans changed since; run flowmed rate / rerate)")
        else:
            out.append(f"    stored: version {s['version']}, same amount")
        totals[r["currency"]] = totals.get(r["currency"], 0) + r["amount_micros"]
    for cur, amount in sorted(totals.items()):
        out.append(f"total {cycle}: {_money(amount, cur)} ({_n(amount)} micro-{cur}) over {len(recs)} records")
    # Events of two kinds: fair_usage marks the crossing of a threshold (its bytes were rated), unrated are not.
    for event in result.events.to_pylist():
        if event["kind"] == "fair_usage":
            out.append(f"fair-usage threshold reached at {_n(event['bytes'])} bytes: later usage in the cycle is "
                       "charged 0")
    kinds = result.events.column("kind").to_numpy(zero_copy_only=False) if result.events.num_rows else []
    unrated = int(np.sum(result.events.column("bytes").to_numpy()[kinds == "unrated"])) if len(kinds) else 0
    if unrated:
        out.append(f"unrated usage: {_n(unrated)} bytes (see rating_events)")
    return out
