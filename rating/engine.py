"""The rating engine: usage rows in, rated records out, vectorised over subscribers.

:func:`rate` is a pure function of (usage, plans, assignments, closed_until): it holds no state between calls, so
rating the same usage twice gives identical records, and a late usage row changes exactly the records whose figures
depend on it (its own interval, and later intervals of the same cycle whose tier position moved). The job
(:mod:`rating.job`) compares the result with what is stored and writes only what changed, as new versions.

Usage must cover every cycle it touches from the cycle start (the job reads whole cycles), because allowances, tiers,
caps and fair-usage thresholds are on the cycle-to-date volume. How one record's amount is reached:

1. The row is summed per (subscriber, interval, direction, traffic class); its plan comes from the assignment in force
   at ``interval_start``; the cycle from the plan's calendar; the *segment* is the part of the cycle under that
   assignment (a mid-cycle plan change splits the cycle); the plan version is the one in force at the segment start.
2. Band: from ``interval_start`` in the plan's timezone (first listed band whose weekdays and ``[from, to)`` local
   time match, else the default band).
3. Zero-rated classes get amount 0 and billable quantity 0 and count towards nothing. Other rows go to the first rate
   card matching their direction (or ``total``) and class.
4. Billable quantity: bytes rounded up to the plan's increment, per record (``interval``) or on the card's
   cycle-to-date total (``cycle``: each record gets the increase of the rounded total, so the sum is the rounded
   total).
5. The record covers ``[C_before, C_after)`` of its card's cycle-to-date billable quantity (records in order of
   interval, direction, class, band). ``[0, allowance)`` is free; each tier ``[lo, hi)`` has a price per band.
   Graduated: every part of the record is priced at its tier. Volume: the whole record at the tier reached by the
   card's cycle-to-date total (so earlier records of the cycle get new versions when a later one crosses a tier).
6. The exact amount (an integer over one denominator per plan version, :mod:`rating.money`) is rounded ONCE to
   micro-units with the plan's ``money_rounding``.
7. Fair usage: records starting at or beyond ``fair_usage_bytes`` of the segment's billable volume are charged 0,
   and one ``fair_usage`` event is emitted at the crossing record. Maximum charge: the segment's cumulative amount is
   clipped at ``max_charge`` (records beyond pay the remainder, then 0). A closed segment below ``minimum_charge``
   gets one ``minimum`` record with the difference. Allowance, tier bounds, fair-usage threshold, minimum and
   maximum are prorated by the segment's share of the cycle (floor), unless the plan says ``prorate = false``.

Over 500 lines because the tariff steps (allowance, tiers, bands, proration, caps) share the
vectorised per-subscriber state of one pass; split, each would re-derive it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from decoders.schema import ColumnValues
from rating.assignments import Assignments
from rating.money import decimal_micros, price_fractions, products, prorate, round_div
from rating.plans import Plan, PlanBook
from rating.timebase import cycle_bounds, cycles, local_fields

USAGE_KEY = ("subscriber_id", "interval_start", "interval_end", "direction", "traffic_class")
DIRECTION_NAMES = ("up", "down")
INT64_MAX = np.iinfo(np.int64).max
EVENT_BUCKET_MS = 900_000

RECORD_FIELDS = (
    ("record_id", pa.string()), ("subscriber_id", pa.string()), ("plan_id", pa.string()),
    ("plan_version", pa.uint32()), ("rate_card", pa.string()), ("interval_start", pa.int64()),
    ("interval_end", pa.int64()), ("direction", pa.string()), ("traffic_class", pa.string()),
    ("band", pa.string()), ("bytes", pa.uint64()), ("billable_quantity", pa.uint64()),
    ("quantity_unit", pa.string()), ("allowance_quantity", pa.uint64()), ("cycle_to_date", pa.uint64()),
    ("amount_micros", pa.int64()), ("currency", pa.string()), ("cycle", pa.string()),
)
RECORD_SCHEMA = pa.schema(RECORD_FIELDS)
EVENT_FIELDS = (
    ("event_id", pa.string()), ("kind", pa.string()), ("reason", pa.string()), ("subscriber_id", pa.string()),
    ("plan_id", pa.string()), ("cycle", pa.string()), ("event_time", pa.int64()), ("bytes", pa.uint64()),
    ("detail", pa.string()),
)
EVENT_SCHEMA = pa.schema(EVENT_FIELDS)


@dataclass
class RatingResult:
    records: pa.Table
    """Rated records (``RECORD_SCHEMA``: times as int64 ms); run id and version are added by the job."""
    events: pa.Table
    """Fair-usage events and unrated usage (``EVENT_SCHEMA``)."""
    usage_rows: int = 0
    unrated_bytes: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    segments: set[tuple[str, int]] = field(default_factory=set)
    """(subscriber, segment start) of every segment with usage under a plan with a minimum charge: minimum charges
    of the segments without usage come from :func:`idle_minimum_records`."""


@dataclass
class _Rows:
    """Columns of the usage rows being rated (numpy), plus the distinct names their codes refer to."""

    sub: np.ndarray
    start: np.ndarray
    end: np.ndarray
    dir: np.ndarray
    cls: np.ndarray
    bytes: np.ndarray
    sub_names: np.ndarray
    cls_names: np.ndarray


def prepare_usage(usage: pa.Table) -> pa.Table:
    """The usage key columns and bytes with the engine's types (times and bytes as int64, strings as strings)."""
    usage = usage.select(list(USAGE_KEY) + ["bytes"])
    cols = {}
    for name in usage.column_names:
        arr = usage[name]
        if name in ("interval_start", "interval_end", "bytes"):
            arr = pc.cast(arr, pa.int64())
        elif not pa.types.is_string(arr.type):
            arr = pc.cast(arr, pa.string())
        cols[name] = arr
    return pa.table(cols)


def sum_usage(usage: pa.Table) -> pa.Table:
    """Usage summed per (subscriber, interval, direction, class): rows from several collectors become one."""
    usage = prepare_usage(usage)
    out = usage.group_by(list(USAGE_KEY)).aggregate([("bytes", "sum")]).rename_columns([*USAGE_KEY, "bytes"])
    return out.sort_by([("subscriber_id", "ascending"), ("interval_start", "ascending")])


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a string column and the distinct values, codes in SORTED order of the values.

    Sorted, not in order of first appearance: records of one interval are ordered by their codes (direction,
    class) when cycle-to-date positions are assigned, and that order must not depend on the order of the input
    rows, or rating the same usage twice could split a tier boundary differently.
    """
    enc = pc.dictionary_encode(column).combine_chunks()
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    codes = rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return codes, np.array(enc.dictionary.take(pa.array(order)).to_pylist(), dtype=object)


def rate(usage: pa.Table, plans: PlanBook, assignments: Assignments, closed_until_ms: int = INT64_MAX,
         presummed: bool = False) -> RatingResult:
    """Rate usage rows (columns subscriber_id, interval_start, interval_end, direction, traffic_class, bytes).

    ``closed_until_ms``: intervals ending at or before it are closed; a segment ending at or before it is complete
    (minimum charges apply only then; burstable samples count only up to it).
    """
    if not presummed:
        usage = sum_usage(usage)
    n = usage.num_rows
    records: list[pa.Table] = []
    events: list[pa.Table] = []
    segments: set[tuple[str, int]] = set()
    counters = {"usage_rows": n, "unrated_rows": 0}
    if n == 0:
        return RatingResult(RECORD_SCHEMA.empty_table(), EVENT_SCHEMA.empty_table(), 0, 0, counters)
    sub, sub_names = _codes(usage["subscriber_id"])
    cls, cls_names = _codes(usage["traffic_class"])
    dcode, dnames = _codes(usage["direction"])
    dmap = np.array([DIRECTION_NAMES.index(d) if d in DIRECTION_NAMES else -1 for d in dnames], dtype=np.int64)
    rows = _Rows(sub, usage["interval_start"].to_numpy().astype(np.int64),
                 usage["interval_end"].to_numpy().astype(np.int64), dmap[dcode], cls,
                 usage["bytes"].to_numpy().astype(np.int64), sub_names, cls_names)
    unrated = np.zeros(n, dtype=np.int8)  # 0 rated, else index into REASONS
    reasons = ["", "bad_direction", "no_plan_assignment", "unknown_plan", "no_plan_version", "no_rate_card"]
    unrated[rows.dir < 0] = 1
    asg = assignments.lookup(sub_names, sub, rows.start)
    unrated[(asg < 0) & (unrated == 0)] = 2
    asg_plan = np.array(assignments.plan_ids, dtype=object)
    plan_of_row_code, plan_ids = (np.full(n, -1, dtype=np.int64), [])
    if len(assignments):
        plan_ids = sorted(set(assignments.plan_ids))
        pindex = {p: i for i, p in enumerate(plan_ids)}
        asg_pcode = np.array([pindex[p] for p in asg_plan], dtype=np.int64)
        ok = asg >= 0
        plan_of_row_code[ok] = asg_pcode[asg[ok]]
    for pc_i, plan_id in enumerate(plan_ids):
        m = np.flatnonzero((plan_of_row_code == pc_i) & (unrated == 0))
        if len(m) == 0:
            continue
        versions = plans.plans.get(plan_id)
        if not versions:
            unrated[m] = 3
            continue
        tz, cday = versions[0].timezone, versions[0].cycle_day
        cstart, cend, cidx, labels = cycles(tz, cday, rows.start[m])
        a = asg[m]
        seg_start = np.maximum(cstart, assignments.from_ms[a])
        seg_end = np.minimum(cend, assignments.to_ms[a])
        froms = np.array([v.active_from_ms for v in versions], dtype=np.int64)
        vidx = np.searchsorted(froms, seg_start, side="right") - 1
        unrated[m[vidx < 0]] = 4
        for vi, plan in enumerate(versions):
            sel = np.flatnonzero(vidx == vi)
            if len(sel) == 0:
                continue
            ctx = _Ctx(plan, m[sel], cstart[sel], cend[sel], seg_start[sel], seg_end[sel],
                       labels, cidx[sel], closed_until_ms)
            if plan.kind == "burstable":
                rec, ev = _rate_burstable(rows, ctx)
            else:
                rec, ev, no_card = _rate_usage_plan(rows, ctx)
                unrated[no_card] = 5
            if plan.minimum_charge > 0:  # only minimum charges need to know which segments had usage
                sub_i = rows.sub[ctx.idx]
                o = _order(sub_i, ctx.seg_start)
                first = o[_group_starts(sub_i[o], ctx.seg_start[o])]
                segments.update(zip(rows.sub_names[sub_i[first]].tolist(), ctx.seg_start[first].tolist(),
                                    strict=True))
            records.append(rec)
            events.extend(ev)
    bad = np.flatnonzero(unrated > 0)
    counters["unrated_rows"] = len(bad)
    if len(bad):
        events.append(_unrated_events(rows, bad, np.array(reasons, dtype=object)[unrated[bad]]))
    rec_table = pa.concat_tables(records) if records else RECORD_SCHEMA.empty_table()
    ev_table = pa.concat_tables(events) if events else EVENT_SCHEMA.empty_table()
    return RatingResult(rec_table, ev_table, n, int(rows.bytes[bad].sum()), counters, segments)


@dataclass
class _Ctx:
    plan: Plan
    idx: np.ndarray
    """Row indices (into _Rows) rated under this plan version."""
    cstart: np.ndarray
    cend: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    labels: list[str]
    cidx: np.ndarray
    closed_until: int

    def prorated(self, value: int) -> np.ndarray:
        if not self.plan.prorate:
            return np.full(len(self.idx), value, dtype=np.int64)
        return prorate(value, self.seg_end - self.seg_start, self.cend - self.cstart)

    def prorated_at(self, value: int, *index: np.ndarray) -> np.ndarray | int:
        """``prorated(value)`` at rows picked by successive ``index`` arrays; a plain int when no row is prorated
        (the usual case: whole cycles), so no array is built at all."""
        if not self.plan.prorate or self.whole_cycles:
            return value
        out = self.prorated(value)
        for i in index:
            out = out[i]
        return out

    @cached_property
    def whole_cycles(self) -> bool:
        """Every row's segment is its whole cycle (nothing to prorate); worked out once per context."""
        return bool(np.array_equal(self.seg_end - self.seg_start, self.cend - self.cstart))


def _order(*keys: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``keys`` (most significant first).

    One stable argsort of a packed int64 key when the keys' ranges fit in 63 bits (the usual case: a subscriber
    code, a card, a time, a direction, a class, a band), else ``np.lexsort``.
    """
    n = len(keys[0])
    packed = np.zeros(n, dtype=np.int64)
    bits = 0
    for k in keys:
        if n == 0:
            break
        lo = int(k.min())
        width = (int(k.max()) - lo).bit_length()
        bits += width
        if bits > 63:
            return np.lexsort(tuple(reversed(keys)))
        if width:
            packed = (packed << width) | (k.astype(np.int64) - lo)
    return np.argsort(packed, kind="stable")


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Boolean: row starts a new group (keys already sorted)."""
    n = len(keys[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
    return new


def _grouped_cumsum(values: np.ndarray, new: np.ndarray) -> np.ndarray:
    cs = np.cumsum(values)
    starts = np.flatnonzero(new)
    before = np.concatenate([[0], cs[starts[1:] - 1]]) if len(starts) else np.zeros(0, dtype=cs.dtype)
    group = np.cumsum(new) - 1
    cum: np.ndarray = cs - before[group]
    return cum


def _group_totals(cum: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Per row: the last cumulative value of its group (the group total)."""
    group = np.cumsum(new) - 1
    ends = np.concatenate([np.flatnonzero(new)[1:] - 1, [len(cum) - 1]])
    totals: np.ndarray = cum[ends][group]
    return totals


def _bands(plan: Plan, start: np.ndarray) -> np.ndarray:
    band = np.full(len(start), len(plan.bands), dtype=np.int64)  # default band
    if not plan.bands:
        return band
    weekday, minute = local_fields(plan.timezone, start)
    for bi in range(len(plan.bands) - 1, -1, -1):  # reversed: the first listed band wins
        b = plan.bands[bi]
        in_time = ((minute >= b.start_minute) & (minute < b.end_minute) if b.start_minute < b.end_minute
                   else (minute >= b.start_minute) | (minute < b.end_minute))
        band[np.isin(weekday, b.days) & in_time] = bi
    return band


def _rate_usage_plan(rows: _Rows, ctx: _Ctx) -> tuple[pa.Table, list[pa.Table], np.ndarray]:
    plan = ctx.plan
    idx = ctx.idx
    start, dirc, clsc, nbytes, subc = rows.start[idx], rows.dir[idx], rows.cls[idx], rows.bytes[idx], rows.sub[idx]
    band = _bands(plan, start)
    cls_list = list(rows.cls_names)
    zero: np.ndarray = np.isin(clsc, [cls_list.index(c) for c in plan.zero_rated_classes if c in cls_list])
    card: np.ndarray = np.full(len(idx), -1, dtype=np.int64)
    for ci in range(len(plan.rates) - 1, -1, -1):
        rc = plan.rates[ci]
        dir_ok = np.ones(len(idx), dtype=bool) if rc.direction == "total" else dirc == DIRECTION_NAMES.index(
            rc.direction)
        cls_ok = (np.ones(len(idx), dtype=bool) if "*" in rc.classes
                  else np.isin(clsc, [cls_list.index(c) for c in rc.classes if c in cls_list]))
        card[dir_ok & cls_ok & ~zero] = ci
    no_card = idx[(card < 0) & ~zero]
    keep = np.flatnonzero((card >= 0) | zero)
    if len(keep) < len(idx):
        idx, start, dirc, clsc, nbytes, subc, band, zero, card = (
            a[keep] for a in (idx, start, dirc, clsc, nbytes, subc, band, zero, card))
        ctx = _Ctx(plan, idx, ctx.cstart[keep], ctx.cend[keep], ctx.seg_start[keep], ctx.seg_end[keep], ctx.labels,
                   ctx.cidx[keep], ctx.closed_until)
    n = len(idx)
    # Per (segment, card) cumulative quantities, records in (interval, direction, class, band) order.
    # Segments of one subscriber follow each other in time, so (subscriber, card, time, ...) groups them too.
    order = _order(subc, card, start, dirc, clsc, band)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    s = order
    new = _group_starts(subc[s], ctx.seg_start[s], card[s])
    inc = plan.quantity_increment_bytes
    b_sorted = np.where(zero[s], 0, nbytes[s])
    if plan.quantity_rounding == "interval" or inc == 1:
        q = -(-b_sorted // inc) * inc
        c_after = _grouped_cumsum(q, new)
    else:
        raw_cum = _grouped_cumsum(b_sorted, new)
        c_after = -(-raw_cum // inc) * inc
        q = c_after - np.where(new, 0, np.concatenate([[0], c_after[:-1]]))
    c_before = c_after - q
    total = _group_totals(c_after, new)
    x = np.zeros(n, dtype=np.int64)
    allowance_q = np.zeros(n, dtype=np.int64)
    all_prices = [p for rc in plan.rates for t in rc.tiers for p in (t.prices[b] for b in plan.band_names)]
    nums, den = price_fractions(all_prices, plan.unit_bytes)
    k = 0
    band_s = band[s]
    card_s = card[s]
    for ci, rc in enumerate(plan.rates):
        mm = np.flatnonzero(card_s == ci)
        if len(mm) == 0:
            k += len(rc.tiers) * len(plan.band_names)
            continue
        cb, ca, tot, bnd = c_before[mm], c_after[mm], total[mm], band_s[mm]
        allow = ctx.prorated_at(rc.allowance_bytes, s, mm)
        allowance_q[mm] = np.clip(np.minimum(ca, allow) - cb, 0, None)
        los: list[np.ndarray | int] = [0]
        his: list[np.ndarray | int] = []
        for t in rc.tiers:
            hi = ctx.prorated_at(t.up_to_bytes, s, mm) if t.up_to_bytes is not None else INT64_MAX
            his.append(hi)
            los.append(hi)
        charged_lo = np.maximum(cb, allow)
        xs = []
        if rc.tier_mode == "graduated":
            for ti in range(len(rc.tiers)):
                lo = np.maximum(los[ti], charged_lo)
                overlap = np.clip(np.minimum(ca, his[ti]) - lo, 0, None)
                n_band = np.array(nums[k + ti * len(plan.band_names): k + (ti + 1) * len(plan.band_names)],
                                  dtype=object)
                xs.append(products(overlap, _as_int(n_band)[bnd]))
        else:
            reached = np.zeros(len(mm), dtype=np.int64)
            for ti in range(len(rc.tiers) - 1):
                reached += (np.maximum(tot, 1) - 1 >= his[ti]).astype(np.int64)
            overlap = np.clip(ca - charged_lo, 0, None)
            table = np.array([[nums[k + ti * len(plan.band_names) + bi] for bi in range(len(plan.band_names))]
                              for ti in range(len(rc.tiers))], dtype=object)
            xs.append(products(overlap, _as_int(table[reached, bnd])))
        k += len(rc.tiers) * len(plan.band_names)
        part = xs[0]
        for extra in xs[1:]:
            part = part + extra if (part.dtype != object and extra.dtype != object and
                                    int(part.max(initial=0)) + int(extra.max(initial=0)) < 2**62) \
                else part.astype(object) + extra.astype(object)
        x_mm = round_div(part, den, plan.money_rounding)
        x[mm] = x_mm
    amount_s = x  # already rounded per record (micro-units)
    amount = amount_s[inv]
    qty = q[inv]
    ctd = c_after[inv]
    allowance_q = allowance_q[inv]
    events: list[pa.Table] = []
    # Segment-wide: fair usage and maximum charge, records in time order.
    if plan.fair_usage_bytes is not None or plan.max_charge is not None or plan.minimum_charge > 0:
        o2 = _order(subc, start, dirc, clsc, band)
        new2 = _group_starts(subc[o2], ctx.seg_start[o2])
        amt2 = amount[o2].copy()
        if plan.fair_usage_bytes is not None:
            fu = ctx.prorated_at(plan.fair_usage_bytes, o2)
            seg_cum = _grouped_cumsum(qty[o2], new2)
            seg_before = seg_cum - qty[o2]
            amt2[seg_before >= fu] = 0
            crossing = np.flatnonzero((seg_before < fu) & (seg_cum >= fu) & (qty[o2] > 0))
            if len(crossing):
                r = o2[crossing]
                ids = [f"fair_usage/{rows.sub_names[subc[i]]}/{ctx.seg_start[i]}" for i in r]
                events.append(pa.table({
                    "event_id": ids, "kind": ["fair_usage"] * len(r), "reason": ["threshold_reached"] * len(r),
                    "subscriber_id": rows.sub_names[subc[r]].tolist(), "plan_id": [plan.id] * len(r),
                    "cycle": [ctx.labels[c] for c in ctx.cidx[r]], "event_time": start[r].astype(np.int64),
                    "bytes": seg_cum[crossing].astype(np.uint64),
                    "detail": [f"fair usage threshold {int(np.broadcast_to(fu, len(o2))[c])} bytes reached; "
                               "further usage not charged" for c in crossing]}, schema=EVENT_SCHEMA))
        if plan.max_charge is not None:
            cap = ctx.prorated_at(decimal_micros(plan.max_charge, plan.money_rounding), o2)
            cum = _grouped_cumsum(amt2, new2)
            capped = np.minimum(cum, cap)
            prev = np.where(new2, 0, np.concatenate([[0], capped[:-1]]))
            amt2 = capped - prev
        amount = np.empty_like(amount)
        amount[o2] = amt2
    rec = _records(rows, ctx, idx, band, card, amount, qty, allowance_q, ctd, zero)
    out = [rec]
    if plan.minimum_charge > 0:
        out.append(_minimum_records(rows, ctx, subc, amount))
    return pa.concat_tables(out), events, no_card


def _as_int(a: np.ndarray) -> np.ndarray:
    """Object array of Python ints -> int64 when every value fits, else kept as object (exact)."""
    try:
        if all(abs(int(v)) < 2**62 for v in a.flat):
            return a.astype(np.int64)
    except OverflowError:
        pass
    return a


def _minimum_records(rows: _Rows, ctx: _Ctx, subc: np.ndarray, amount: np.ndarray) -> pa.Table:
    """One ``minimum`` record per complete segment whose total is below the (prorated) minimum charge."""
    plan = ctx.plan
    o = np.lexsort((ctx.seg_start, subc))
    new = _group_starts(subc[o], ctx.seg_start[o])
    totals = _group_totals(_grouped_cumsum(amount[o], new), new)
    minimum = ctx.prorated(decimal_micros(plan.minimum_charge, plan.money_rounding))[o]
    first = np.flatnonzero(new)
    closed = ctx.seg_end[o][first] <= ctx.closed_until
    short = totals[first] < minimum[first]
    pick = first[closed & short]
    r = o[pick]
    m = len(r)
    subs = rows.sub_names[subc[r]]
    starts = ctx.seg_start[r]
    return _table({
        "record_id": [f"{s}/{t}/-/-/minimum" for s, t in zip(subs, starts, strict=True)],
        "subscriber_id": subs.tolist(), "plan_id": [plan.id] * m, "plan_version": np.full(m, plan.version),
        "rate_card": ["minimum_charge"] * m, "interval_start": starts, "interval_end": ctx.seg_end[r],
        "direction": ["-"] * m, "traffic_class": ["-"] * m, "band": ["minimum"] * m,
        "bytes": np.zeros(m), "billable_quantity": np.zeros(m), "quantity_unit": [""] * m,
        "allowance_quantity": np.zeros(m), "cycle_to_date": np.zeros(m),
        "amount_micros": (minimum[pick] - totals[pick]).astype(np.int64), "currency": [plan.currency] * m,
        "cycle": [ctx.labels[c] for c in ctx.cidx[r]]})


def _table(cols: Mapping[str, ColumnValues]) -> pa.Table:
    return pa.table({name: pa.array(cols[name], type=tp) for name, tp in RECORD_FIELDS}, schema=RECORD_SCHEMA)


def _dict_strings(codes: np.ndarray, names: Sequence[str] | np.ndarray) -> pa.Array:
    """Strings from codes into a small list of names, built by Arrow (no per-row Python)."""
    return pa.array(list(names), type=pa.string()).take(pa.array(np.asarray(codes, dtype=np.int64)))


def _records(rows: _Rows, ctx: _Ctx, idx: np.ndarray, band: np.ndarray, card: np.ndarray, amount: np.ndarray,
             qty: np.ndarray, allowance_q: np.ndarray, ctd: np.ndarray, zero: np.ndarray) -> pa.Table:
    plan = ctx.plan
    n = len(idx)
    sub = _dict_strings(rows.sub[idx], rows.sub_names)
    cls = _dict_strings(rows.cls[idx], rows.cls_names)
    direction = _dict_strings(rows.dir[idx], DIRECTION_NAMES)
    band_s = _dict_strings(band, plan.band_names)
    card_names = [rc.name for rc in plan.rates] + ["zero_rated"]
    card_s = _dict_strings(np.where(zero, len(plan.rates), card), card_names)
    start = rows.start[idx]
    record_id = pc.binary_join_element_wise(sub, pc.cast(pa.array(start), pa.string()), direction, cls, band_s, "/")
    return pa.table({
        "record_id": record_id, "subscriber_id": sub, "plan_id": pa.repeat(pa.scalar(plan.id, pa.string()), n),
        "plan_version": pa.array(np.full(n, plan.version, dtype=np.uint32)), "rate_card": card_s,
        "interval_start": pa.array(start), "interval_end": pa.array(rows.end[idx]), "direction": direction,
        "traffic_class": cls, "band": band_s, "bytes": pa.array(rows.bytes[idx].view(np.uint64)),
        "billable_quantity": pa.array(qty.view(np.uint64)),
        "quantity_unit": pa.repeat(pa.scalar("bytes", pa.string()), n),
        "allowance_quantity": pa.array(allowance_q.view(np.uint64)),
        "cycle_to_date": pa.array(ctd.view(np.uint64)), "amount_micros": pa.array(amount.astype(np.int64, copy=False)),
        "currency": pa.repeat(pa.scalar(plan.currency, pa.string()), n), "cycle": _dict_strings(ctx.cidx, ctx.labels),
    }, schema=RECORD_SCHEMA)


def _rate_burstable(rows: _Rows, ctx: _Ctx) -> tuple[pa.Table, list[pa.Table]]:
    """95th percentile: one record per segment, priced on the excess of the billed percentile over the commit.

    Samples are the 5-minute intervals of the segment up to ``closed_until`` (intervals without usage are samples
    of 0 bit/s); per direction the rate is ``ceil(bytes * 8 / 300)`` bit/s; samples are sorted and the value at
    rank ``ceil(n * percentile / 100)`` is kept (the top 5 % are discarded).
    """
    plan = ctx.plan
    burst = plan.burst
    assert burst is not None
    idx = ctx.idx
    subc, start = rows.sub[idx], rows.start[idx]
    o = np.lexsort((start, ctx.seg_start, subc))
    new = _group_starts(subc[o], ctx.seg_start[o])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(o)]])
    out: dict[str, list[object]] = {name: [] for name, _ in RECORD_FIELDS}
    price_num, price_den = price_fractions([burst.price_per_mbps], 10**6)  # micros per bit/s
    commit_micros = ctx.prorated(decimal_micros(burst.commit_charge, plan.money_rounding))
    for g0, g1 in zip(starts, ends, strict=True):  # per segment: business customers are few
        rr = idx[o[g0:g1]]
        first = o[g0]
        seg0, seg1 = int(ctx.seg_start[first]), int(ctx.seg_end[first])
        upto = min(seg1, ctx.closed_until)
        nsamples = max(0, (upto - seg0) // 300_000)
        rates = {}
        for d, name in enumerate(DIRECTION_NAMES):
            sel = rr[(rows.dir[rr] == d) & (rows.start[rr] < upto)]
            per = np.zeros(max(nsamples, 1), dtype=np.int64)
            slot = (rows.start[sel] - seg0) // 300_000
            np.add.at(per, slot[slot < len(per)], rows.bytes[sel][slot < len(per)])
            rates[name] = -(-(per * 8) // 300)
        rates["sum"] = rates["up"] + rates["down"]
        pct = {k: _percentile(v[:nsamples], burst.percentile) for k, v in rates.items()}
        billed = max(pct["up"], pct["down"]) if burst.direction == "max" else pct[burst.direction]
        excess = max(0, billed - burst.commit_bps)
        excess = -(-excess // burst.increment_bps) * burst.increment_bps
        amount = int(round_div(np.array([excess * price_num[0]], dtype=object), price_den, plan.money_rounding)[0])
        amount += int(commit_micros[first])
        sub = rows.sub_names[rows.sub[rr[0]]]
        vals = {"record_id": f"{sub}/{seg0}/{burst.direction}/*/p{burst.percentile}", "subscriber_id": sub,
                "plan_id": plan.id, "plan_version": plan.version, "rate_card": "burstable",
                "interval_start": seg0, "interval_end": seg1, "direction": burst.direction, "traffic_class": "*",
                "band": f"p{burst.percentile}", "bytes": int(rows.bytes[rr].sum()), "billable_quantity": excess,
                "quantity_unit": "bit/s", "allowance_quantity": min(billed, burst.commit_bps),
                "cycle_to_date": billed, "amount_micros": amount, "currency": plan.currency,
                "cycle": ctx.labels[ctx.cidx[first]]}
        for k2, v in vals.items():
            out[k2].append(v)
    return _table(out), []


def _percentile(samples: np.ndarray, pct: int) -> int:
    if len(samples) == 0:
        return 0
    ordered = np.sort(samples)
    rank = -(-len(ordered) * pct // 100)  # ceil(n * pct / 100), 1-based
    return int(ordered[max(rank, 1) - 1])


def _unrated_events(rows: _Rows, bad: np.ndarray, reasons: np.ndarray) -> pa.Table:
    """Unrated usage, summed per (subscriber, 15-minute bucket, reason): never dropped silently.

    15 minutes: every billing cycle starts on a quarter hour of UTC (all timezone offsets are multiples of 15
    minutes), so a bucket never straddles the start of a rating period.
    """
    day = rows.start[bad] // EVENT_BUCKET_MS * EVENT_BUCKET_MS
    t = pa.table({"subscriber_id": _dict_strings(rows.sub[bad], rows.sub_names), "day": day,
                  "reason": pa.array(reasons.tolist(), type=pa.string()), "bytes": rows.bytes[bad]})
    g = t.group_by(["subscriber_id", "day", "reason"]).aggregate([("bytes", "sum")])
    n = g.num_rows
    ids = pc.binary_join_element_wise("unrated", g["subscriber_id"], pc.cast(g["day"], pa.string()), g["reason"], "/")
    return pa.table({"event_id": ids, "kind": pa.array(["unrated"] * n), "reason": g["reason"],
                     "subscriber_id": g["subscriber_id"], "plan_id": pa.array([""] * n), "cycle": pa.array([""] * n),
                     "event_time": g["day"], "bytes": pc.cast(g["bytes_sum"], pa.uint64()),
                     "detail": pc.binary_join_element_wise("usage not rated: ", g["reason"], "")},
                    schema=EVENT_SCHEMA)


def idle_minimum_records(plans: PlanBook, assignments: Assignments, period: tuple[int, int], closed_until_ms: int,
                         seen: set[tuple[str, int]], subscriber: str | None = None) -> pa.Table:
    """``minimum`` records of closed segments starting in ``period`` that have no usage at all (not in ``seen``).

    A subscriber who used nothing in a cycle still owes the plan's minimum charge (prorated like the others). One
    Python step per assignment and cycle: assignments are few compared with usage rows.
    """
    cols: dict[str, list[object]] = {name: [] for name, _ in RECORD_FIELDS}
    for a in assignments.items:
        if subscriber is not None and a.subscriber_id != subscriber:
            continue
        versions = plans.plans.get(a.plan_id)
        if not versions or not any(v.minimum_charge > 0 for v in versions):
            continue
        tz, day = versions[0].timezone, versions[0].cycle_day
        lo, hi = max(a.from_ms, period[0]), min(a.to_ms, period[1], closed_until_ms)
        if hi <= lo:
            continue
        _, _, idx, labels = cycles(tz, day, np.array([lo, hi - 1], dtype=np.int64))
        for label in labels[int(idx[0]): int(idx[1]) + 1]:
            c0, c1 = cycle_bounds(tz, day, label)
            s0, s1 = max(c0, a.from_ms), min(c1, a.to_ms)
            if s0 < period[0] or s1 > closed_until_ms or s1 <= s0 or (a.subscriber_id, s0) in seen:
                continue
            plan = plans.version_at(a.plan_id, s0)
            if plan is None or plan.minimum_charge <= 0:
                continue
            full = decimal_micros(plan.minimum_charge, plan.money_rounding)
            amount = full * (s1 - s0) // (c1 - c0) if plan.prorate else full
            values = {"record_id": f"{a.subscriber_id}/{s0}/-/-/minimum", "subscriber_id": a.subscriber_id,
                      "plan_id": plan.id, "plan_version": plan.version, "rate_card": "minimum_charge",
                      "interval_start": s0, "interval_end": s1, "direction": "-", "traffic_class": "-",
                      "band": "minimum", "bytes": 0, "billable_quantity": 0, "quantity_unit": "",
                      "allowance_quantity": 0, "cycle_to_date": 0, "amount_micros": amount,
                      "currency": plan.currency, "cycle": label}
            for k, v in values.items():
                cols[k].append(v)
    return _table(cols)
