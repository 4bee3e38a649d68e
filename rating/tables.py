"""Tables of the rating layer: ``rated_usage``, ``rating_events``, ``rating_runs`` and ``rating_lease``.

Importing this module registers them in :data:`decoders.schema.TABLES`.

Reading the current state
-------------------------
``rated_usage`` keeps every version of a record (a late correction or a re-rate writes the same ``record_id`` with
a higher ``version``); ClickHouse's ReplacingMergeTree collapses old versions only eventually, and the embedded store
never does. Readers take the newest version of each record and skip voided ones, with the one query that works on
the embedded store (chDB over Parquet, where FINAL does not exist) and on every ClickHouse server (18.16 included)::

    SELECT * FROM (
        SELECT * FROM rated_usage
        WHERE subscriber_id = 'alice'            -- optional: only columns fixed by the record_id
        ORDER BY record_id, version DESC
        LIMIT 1 BY record_id
    ) WHERE void = 0 AND cycle = '2026-11'    -- optional: any column

(:func:`current_sql` builds it.) On a server ``SELECT ... FROM rated_usage FINAL WHERE void = 0`` gives the same rows
(the ``<database>_read.rated_usage`` view reads FINAL).
"""

from __future__ import annotations

from decoders.schema import Column, table

RATED_USAGE = table(
    "rated_usage",
    "Rated usage records: one per subscriber, interval, direction, traffic class and band (plus minimum-charge and "
    "burstable records), with the amount in integer micro-units of the currency. Versioned: read the newest version "
    "of each record_id and skip void ones (docs/rating.md).",
    (
        Column("record_id", "string", "Deterministic id: subscriber/interval_start_ms/direction/traffic_class/band."),
        Column("version", "u64", "1 for the first rating, +1 for every change (late usage, re-rating)."),
        Column("void", "u8", "1 when this version withdraws the record (its usage or band went away)."),
        Column("subscriber_id", "string", "Subscriber."),
        Column("plan_id", "string", "Tariff plan.", low_cardinality=True),
        Column("plan_version", "u32", "Version of the plan used."),
        Column("rate_card", "string", "Rate card of the plan that priced it (zero_rated, minimum_charge, burstable).",
               low_cardinality=True),
        Column("interval_start", "timestamp_ms", "Usage interval start (UTC, inclusive); segment start for minimum and "
               "burstable records."),
        Column("interval_end", "timestamp_ms", "Usage interval end (UTC, exclusive)."),
        Column("direction", "string", "up or down (minimum records: -; burstable: max, up, down or sum).",
               low_cardinality=True),
        Column("traffic_class", "string", "Traffic class.", low_cardinality=True),
        Column("band", "string", "Time band (peak, offpeak, ...) in the plan's timezone.", low_cardinality=True),
        Column("bytes", "u64", "Usage bytes of the record (sum over every collector and worker)."),
        Column("billable_quantity", "u64", "Bytes billed after the quantity rounding (bit/s for burstable)."),
        Column("quantity_unit", "string", "bytes or bit/s.", low_cardinality=True),
        Column("allowance_quantity", "u64", "Part of billable_quantity inside the included allowance."),
        Column("cycle_to_date", "u64", "Rate card's cycle-to-date billable quantity after this record (burstable: "
               "the billed percentile)."),
        Column("amount_micros", "i64", "Amount in micro-units of the currency, rounded once per record."),
        Column("currency", "string", "ISO 4217 currency.", low_cardinality=True),
        Column("cycle", "string", "Billing cycle YYYY-MM (the month the cycle starts in, plan timezone).",
               low_cardinality=True),
        Column("rating_run_id", "string", "Rating run that wrote this version."),
        Column("rated_at", "timestamp_ms", "When this version was written (UTC)."),
    ),
    time_column="interval_start",
    order_by=("subscriber_id", "interval_start", "record_id"),
    partition="month",
    engine="ReplacingMergeTree",
    version_column="version",
)

RATING_EVENTS = table(
    "rating_events",
    "Rating events: fair-usage thresholds reached and usage that could not be rated (no plan, no rate card), "
    "versioned like rated_usage (newest version per event_id).",
    (
        Column("event_id", "string", "Deterministic id of the event."),
        Column("version", "u64", "Version (+1 when a later run changes it)."),
        Column("kind", "string", "fair_usage or unrated.", low_cardinality=True),
        Column("reason", "string", "threshold_reached, no_plan_assignment, unknown_plan, no_plan_version, "
               "no_rate_card, bad_direction.", low_cardinality=True),
        Column("subscriber_id", "string", "Subscriber."),
        Column("plan_id", "string", "Plan (empty when unknown).", low_cardinality=True),
        Column("cycle", "string", "Billing cycle (empty when unknown)."),
        Column("period_start", "timestamp_ms", "Segment start (fair usage) or UTC day (unrated usage)."),
        Column("event_time", "timestamp_ms", "Interval at which the event happened."),
        Column("bytes", "u64", "Cycle-to-date bytes at the event, or unrated bytes."),
        Column("detail", "string", "Human-readable detail."),
        Column("rating_run_id", "string", "Run that wrote this version."),
    ),
    time_column="period_start",
    order_by=("event_id",),
    partition="month",
    engine="ReplacingMergeTree",
    version_column="version",
)

RATING_RUNS = table(
    "rating_runs",
    "One row per rating job run (rate, rerate): what it read, what it wrote and the amount it changed.",
    (
        Column("run_id", "string", "Run id."),
        Column("kind", "string", "rate or rerate.", low_cardinality=True),
        Column("owner", "string", "Host:pid that ran it (the lease holder)."),
        Column("started", "timestamp_ms", "Start (UTC)."),
        Column("finished", "timestamp_ms", "End (UTC)."),
        Column("period_from", "timestamp_ms", "Start of the period recomputed (whole cycles)."),
        Column("period_to", "timestamp_ms", "End of the period recomputed."),
        Column("closed_until", "timestamp_ms", "Intervals ending at or before this were closed and rated."),
        Column("subscriber_filter", "string", "Only this subscriber (rerate --subscriber), else empty."),
        Column("usage_rows", "u64", "Usage keys read (after summing parts)."),
        Column("records_new", "u64", "Records written for the first time."),
        Column("records_changed", "u64", "Records written as a new version."),
        Column("records_voided", "u64", "Records withdrawn."),
        Column("records_unchanged", "u64", "Records recomputed identical (not written)."),
        Column("events_written", "u64", "Events written."),
        Column("unrated_bytes", "u64", "Bytes that could not be rated (see rating_events)."),
        Column("amount_delta_micros", "i64", "Change of the total amount (sum over currencies, micro-units)."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="started",
    order_by=("started", "run_id"),
    partition="month",
)

RATING_LEASE = table(
    "rating_lease",
    "The rating job's lease: claims, renewals and releases (append only). The holder is the owner whose newest row "
    "is unexpired and whose claim is the oldest (docs/rating.md).",
    (
        Column("name", "string", "Lease name (rating)."),
        Column("owner", "string", "Claimant (host:pid:nonce)."),
        Column("seq", "u64", "Increasing per owner: orders its rows (times are seconds on old servers)."),
        Column("since", "timestamp_ms", "When this owner's claim started."),
        Column("expires", "timestamp_ms", "Claim valid until (a release writes an expiry in the past)."),
        Column("written", "timestamp_ms", "When the row was written."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="written",
    order_by=("name", "written", "owner"),
    partition="month",
)


def current_sql(where: str = "", columns: str = "*", outer: str = "", include_void: bool = False) -> str:
    """The documented current-state query of ``rated_usage`` (newest version per record, void ones skipped).

    ``where`` filters the inner scan and may only use columns fixed by the record_id (subscriber_id,
    interval_start, direction, traffic_class, band, record_id): filtering there on a column that can change between
    versions (amount, plan, cycle) would resurrect an older version. ``outer`` filters the current rows.
    """
    cond = f" WHERE {where}" if where else ""
    post = [] if include_void else ["void = 0"]
    if outer:
        post.append(f"({outer})")
    tail = f" WHERE {' AND '.join(post)}" if post else ""
    return (f"SELECT {columns} FROM (SELECT * FROM rated_usage{cond} ORDER BY record_id, version DESC "
            f"LIMIT 1 BY record_id){tail}")


__all__ = ["RATED_USAGE", "RATING_EVENTS", "RATING_LEASE", "RATING_RUNS", "current_sql"]
