"""Tariff plans: the plans file (TOML), validated strictly and versioned by activation time.

A plans file holds ``[[plan]]`` tables. Each is one *version* of a plan: ``id`` + ``version`` identify it and
``active_from`` says from when it applies. For a subscriber's cycle segment the version used is the one with the
latest ``active_from`` at or before the segment start (ties: the highest ``version``, so a correction with the same
``active_from`` and a higher version replaces the old one when re-rated). Example::

    [[plan]]
    id = "home-100"
    version = 1
    active_from = "2026-01-01T00:00:00Z"
    currency = "EUR"
    timezone = "Europe/Berlin"
    cycle_day = 1
    unit = "GB"                       # GB = 10^9 bytes, GiB = 2^30 bytes
    quantity_increment_bytes = 1000000  # billed per started MB ...
    quantity_rounding = "interval"    # ... per interval record ("cycle": on the cycle-to-date total)
    money_rounding = "half_up"        # how the exact amount of a record is rounded to a micro-unit, once
    zero_rated_classes = ["cdn"]
    default_band = "offpeak"
    minimum_charge = "5.00"
    max_charge = "80.00"
    fair_usage_bytes = 500000000000

    [[plan.band]]
    name = "weekend"
    days = ["sat", "sun"]
    [[plan.band]]
    name = "peak"
    days = ["mon", "tue", "wed", "thu", "fri"]
    from = "08:00"
    to = "20:00"

    [[plan.rate]]
    name = "download"
    direction = "down"                # up, down or total
    classes = ["*"]
    allowance_bytes = 10000000000
    tier_mode = "graduated"           # or "volume"
    [[plan.rate.tier]]
    up_to_bytes = 100000000000        # cycle-to-date volume of this rate card; the last tier has none
    price = { peak = "0.50", offpeak = "0.25", weekend = "0.25" }
    [[plan.rate.tier]]
    price = "0.10"                    # one price for every band

Burstable (95th percentile) plans set ``kind = "burstable"`` and a ``[plan.burst]`` table instead of rates.

Every error names the key, the value given and what was expected (:class:`decoders.settings.ConfigError`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from decoders.settings import ConfigError

UNITS = {"GB": 10**9, "GiB": 2**30, "MB": 10**6, "MiB": 2**20, "TB": 10**12, "TiB": 2**40}
DIRECTIONS = ("up", "down", "total")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONEY_ROUNDING = ("half_up", "half_even", "down", "up")
MAX_PRICE_DECIMALS = 9


@dataclass(frozen=True)
class Band:
    """A time band: weekdays and a local time-of-day window ``[from, to)`` in the plan's timezone."""

    name: str
    days: tuple[int, ...]
    """Weekdays, Monday = 0."""
    start_minute: int
    end_minute: int
    """Minutes after local midnight; start > end wraps over midnight (e.g. 22:00-06:00)."""


@dataclass(frozen=True)
class Tier:
    up_to_bytes: int | None
    """Upper bound (exclusive) of the cycle-to-date volume of the rate card in this tier; None for the last."""
    prices: dict[str, Decimal]
    """Price per plan unit, by band name."""


@dataclass(frozen=True)
class RateCard:
    name: str
    direction: str
    classes: tuple[str, ...]
    """Traffic classes the card applies to; ``("*",)`` matches any class not zero-rated."""
    allowance_bytes: int
    tier_mode: str
    tiers: tuple[Tier, ...]

    def matches(self, direction: str, traffic_class: str) -> bool:
        return self.direction in (direction, "total") and ("*" in self.classes or traffic_class in self.classes)


@dataclass(frozen=True)
class Burst:
    """95th percentile billing: 5-minute rate samples per direction, top 5 % discarded."""

    commit_bps: int
    """Committed rate included in the plan (bits/s)."""
    price_per_mbps: Decimal
    """Price per Mbit/s (10^6 bits/s) of excess over the commit rate."""
    direction: str = "max"
    """Which sample series is billed: ``max`` (the larger of up and down percentiles), ``up``, ``down``, ``sum``."""
    increment_bps: int = 1
    """Excess is rounded up to a multiple of this (e.g. 1000000 = per started Mbit/s)."""
    percentile: int = 95
    commit_charge: Decimal = Decimal(0)
    """Fixed charge per cycle for the committed rate."""


@dataclass(frozen=True)
class Plan:
    id: str
    version: int
    active_from_ms: int
    currency: str
    timezone: str
    cycle_day: int
    kind: str = "usage"
    unit: str = "GB"
    quantity_increment_bytes: int = 1
    quantity_rounding: str = "interval"
    money_rounding: str = "half_up"
    prorate: bool = True
    zero_rated_classes: tuple[str, ...] = ()
    bands: tuple[Band, ...] = ()
    default_band: str = "any"
    rates: tuple[RateCard, ...] = ()
    minimum_charge: Decimal = Decimal(0)
    max_charge: Decimal | None = None
    fair_usage_bytes: int | None = None
    burst: Burst | None = None
    description: str = ""

    @property
    def unit_bytes(self) -> int:
        return UNITS[self.unit]

    @property
    def band_names(self) -> tuple[str, ...]:
        return (*(b.name for b in self.bands), self.default_band)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.version)


@dataclass
class PlanBook:
    """All versions of all plans, from one plans file."""

    plans: dict[str, list[Plan]] = field(default_factory=dict)
    """Plan versions by plan id, sorted by (active_from, version)."""

    def version_at(self, plan_id: str, at_ms: int) -> Plan | None:
        """The version of ``plan_id`` in force at ``at_ms`` (latest activation at or before it; ties: highest)."""
        chosen = None
        for p in self.plans.get(plan_id, ()):
            if p.active_from_ms <= at_ms:
                chosen = p
        return chosen

    def get(self, plan_id: str, version: int) -> Plan:
        for p in self.plans.get(plan_id, ()):
            if p.version == version:
                return p
        raise KeyError((plan_id, version))


def load_plans(path: str | Path) -> PlanBook:
    """Read and validate a plans file; raises :class:`ConfigError` naming the offending key."""
    try:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("rating.plans_file", str(path), "an existing plans file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("rating.plans_file", str(path), f"valid TOML ({exc})") from None
    return parse_plans(tree)


def parse_plans(tree: dict[str, Any]) -> PlanBook:
    """Validate a parsed plans tree (``{"plan": [...]}``) into a :class:`PlanBook`."""
    _known(tree, "", {"plan"})
    items = tree.get("plan", [])
    if not isinstance(items, list) or not items:
        raise ConfigError("plan", items, "one or more [[plan]] tables")
    book = PlanBook()
    seen: set[tuple[str, int]] = set()
    for i, raw in enumerate(items):
        plan = _plan(raw, f"plan[{i}]")
        if plan.key in seen:
            raise ConfigError(f"plan[{i}].version", plan.version, f"a version not already used by plan {plan.id!r}")
        seen.add(plan.key)
        book.plans.setdefault(plan.id, []).append(plan)
    for pid, versions in book.plans.items():
        versions.sort(key=lambda p: (p.active_from_ms, p.version))
        first = versions[0]
        for p in versions[1:]:
            # The cycle calendar must not depend on the version: the version is chosen at the cycle start.
            calendar: tuple[tuple[str, object, object], ...] = (
                ("timezone", p.timezone, first.timezone), ("cycle_day", p.cycle_day, first.cycle_day),
                ("kind", p.kind, first.kind))
            for attr, mine, firsts in calendar:
                if mine != firsts:
                    raise ConfigError(f"plan {pid!r} version {p.version}.{attr}", mine,
                                      f"the same {attr} as version {first.version} ({firsts!r}); "
                                      "use a new plan id to change it")
    return book


# ---------------------------------------------------------------------------------------------------------------
# validation helpers

_PLAN_KEYS = {"id", "version", "active_from", "currency", "timezone", "cycle_day", "kind", "unit",
              "quantity_increment_bytes", "quantity_rounding", "money_rounding", "prorate", "zero_rated_classes",
              "band", "default_band", "rate", "minimum_charge", "max_charge", "fair_usage_bytes", "burst",
              "description"}


def _known(raw: Any, key: str, allowed: set[str]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "a table")
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}" if key else k, raw[k],
                              f"one of the known keys: {', '.join(sorted(allowed))}")


def _get(raw: dict[str, Any], key: str, name: str, tp: type | tuple[type, ...], default: Any = ...,
         what: str = "") -> Any:
    if name not in raw:
        if default is ...:
            raise ConfigError(f"{key}.{name}", None, f"{what or tp} (required)")
        return default
    value = raw[name]
    if isinstance(value, bool) and tp is not bool and (not isinstance(tp, tuple) or bool not in tp):
        raise ConfigError(f"{key}.{name}", value, what or str(tp))
    if not isinstance(value, tp):
        raise ConfigError(f"{key}.{name}", value, what or str(tp))
    return value


def _int(raw: dict[str, Any], key: str, name: str, default: Any = ..., minimum: int = 0) -> Any:
    value = _get(raw, key, name, int, default, f"an integer >= {minimum}")
    if value is not None and value is not default and value < minimum:
        raise ConfigError(f"{key}.{name}", value, f"an integer >= {minimum}")
    return value


def money(value: Any, key: str) -> Decimal:
    """A non-negative decimal amount given as a string ("0.50") or an integer; floats are refused (inexact)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(key, value, 'a decimal amount written as a string, e.g. "0.50" (floats are inexact)')
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(key, value, 'a decimal amount such as "0.50"') from None
    if not d.is_finite() or d < 0:
        raise ConfigError(key, value, "a finite amount >= 0")
    exponent = d.as_tuple().exponent  # an int: d is finite
    if isinstance(exponent, int) and -exponent > MAX_PRICE_DECIMALS:
        raise ConfigError(key, value, f"at most {MAX_PRICE_DECIMALS} decimal places")
    return d


def _time_of_day(value: Any, key: str) -> int:
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        raise ConfigError(key, value, 'a local time "HH:MM" (00:00 to 24:00)')
    try:
        h, m = int(value[:2]), int(value[3:])
    except ValueError:
        raise ConfigError(key, value, 'a local time "HH:MM" (00:00 to 24:00)') from None
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ConfigError(key, value, 'a local time "HH:MM" (00:00 to 24:00)')
    return h * 60 + m


def parse_instant(value: Any, key: str) -> int:
    """An RFC 3339 time with offset (or a TOML datetime) as UTC milliseconds."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(key, value, 'a time with offset such as "2026-11-01T00:00:00+01:00"') from None
    else:
        raise ConfigError(key, value, 'a time with offset such as "2026-11-01T00:00:00+01:00"')
    if dt.tzinfo is None:
        raise ConfigError(key, value, "a time with an explicit offset or Z (local times are ambiguous)")
    try:
        return int(dt.astimezone(UTC).timestamp() * 1000)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise ConfigError(key, value, "a time between years 1 and 9999 in UTC") from None


def _plan(raw: Any, key: str) -> Plan:
    _known(raw, key, _PLAN_KEYS)
    pid = _get(raw, key, "id", str, what="a plan id string")
    if not pid:
        raise ConfigError(f"{key}.id", pid, "a non-empty plan id")
    version = _int(raw, key, "version", minimum=1)
    active_from = parse_instant(_get(raw, key, "active_from", (str, datetime), what="an activation time"),
                                f"{key}.active_from")
    currency = _get(raw, key, "currency", str, what="an ISO 4217 currency code such as EUR")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise ConfigError(f"{key}.currency", currency, "an ISO 4217 currency code such as EUR")
    tz = _get(raw, key, "timezone", str, what="an IANA timezone such as Europe/Berlin")
    try:
        ZoneInfo(tz)
    # OSError: a key naming a directory of the zone database ("Europe") or longer than a file name can be
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{key}.timezone", tz, "an IANA timezone such as Europe/Berlin") from None
    cycle_day = _int(raw, key, "cycle_day", 1, minimum=1)
    if cycle_day > 28:
        raise ConfigError(f"{key}.cycle_day", cycle_day, "a day of the month from 1 to 28 (every month has it)")
    kind = _get(raw, key, "kind", str, "usage")
    if kind not in ("usage", "burstable"):
        raise ConfigError(f"{key}.kind", kind, "'usage' or 'burstable'")
    unit = _get(raw, key, "unit", str, "GB")
    if unit not in UNITS:
        raise ConfigError(f"{key}.unit", unit, "one of " + ", ".join(UNITS))
    increment = _int(raw, key, "quantity_increment_bytes", 1, minimum=1)
    q_round = _get(raw, key, "quantity_rounding", str, "interval")
    if q_round not in ("interval", "cycle"):
        raise ConfigError(f"{key}.quantity_rounding", q_round, "'interval' or 'cycle'")
    m_round = _get(raw, key, "money_rounding", str, "half_up")
    if m_round not in MONEY_ROUNDING:
        raise ConfigError(f"{key}.money_rounding", m_round, "one of " + ", ".join(MONEY_ROUNDING))
    prorate = _get(raw, key, "prorate", bool, True, "true or false")
    zero = _strings(raw, key, "zero_rated_classes")
    bands = tuple(_band(b, f"{key}.band[{i}]") for i, b in enumerate(_get(raw, key, "band", list, [], "a list")))
    default_band = _get(raw, key, "default_band", str, "offpeak" if bands else "any")
    names = [b.name for b in bands] + [default_band]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}.band", names, "distinct band names (default_band included)")
    minimum = money(raw.get("minimum_charge", "0"), f"{key}.minimum_charge")
    max_charge = money(raw["max_charge"], f"{key}.max_charge") if "max_charge" in raw else None
    fair = _int(raw, key, "fair_usage_bytes", None, minimum=1)
    common = dict(id=pid, version=version, active_from_ms=active_from, currency=currency, timezone=tz,
                  cycle_day=cycle_day, kind=kind, unit=unit, quantity_increment_bytes=increment,
                  quantity_rounding=q_round, money_rounding=m_round, prorate=prorate, zero_rated_classes=zero,
                  bands=bands, default_band=default_band, minimum_charge=minimum, max_charge=max_charge,
                  fair_usage_bytes=fair, description=_get(raw, key, "description", str, ""))
    if kind == "burstable":
        if "rate" in raw:
            raise ConfigError(f"{key}.rate", raw["rate"], "no [[plan.rate]] in a burstable plan (use [plan.burst])")
        if "burst" not in raw:
            raise ConfigError(f"{key}.burst", None, "a [plan.burst] table (required for kind = 'burstable')")
        return Plan(**common, burst=_burst(raw["burst"], f"{key}.burst"))
    if "burst" in raw:
        raise ConfigError(f"{key}.burst", raw["burst"], "only in a plan with kind = 'burstable'")
    rates_raw = _get(raw, key, "rate", list, what="one or more [[plan.rate]] tables")
    if not rates_raw:
        raise ConfigError(f"{key}.rate", rates_raw, "one or more [[plan.rate]] tables")
    rates = tuple(_rate(r, f"{key}.rate[{i}]", set(names)) for i, r in enumerate(rates_raw))
    rnames = [r.name for r in rates]
    if len(set(rnames)) != len(rnames):
        raise ConfigError(f"{key}.rate", rnames, "distinct rate card names")
    return Plan(**common, rates=rates)


def _strings(raw: dict[str, Any], key: str, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = raw.get(name, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}.{name}", value, "a list of non-empty strings")
    return tuple(value)


def _band(raw: Any, key: str) -> Band:
    _known(raw, key, {"name", "days", "from", "to"})
    name = _get(raw, key, "name", str, what="a band name")
    days = _strings(raw, key, "days", DAYS)
    for d in days:
        if d not in DAYS:
            raise ConfigError(f"{key}.days", d, "weekday names " + ", ".join(DAYS))
    start = _time_of_day(raw.get("from", "00:00"), f"{key}.from")
    end = _time_of_day(raw.get("to", "24:00"), f"{key}.to")
    if start == end:
        raise ConfigError(f"{key}.to", raw.get("to", "24:00"), "a time different from 'from'")
    return Band(name, tuple(DAYS.index(d) for d in days), start, end)


def _rate(raw: Any, key: str, bands: set[str]) -> RateCard:
    _known(raw, key, {"name", "direction", "classes", "allowance_bytes", "tier_mode", "tier", "price"})
    name = _get(raw, key, "name", str, what="a rate card name")
    direction = _get(raw, key, "direction", str, what="up, down or total")
    if direction not in DIRECTIONS:
        raise ConfigError(f"{key}.direction", direction, "up, down or total")
    classes = _strings(raw, key, "classes", ("*",))
    allowance = _int(raw, key, "allowance_bytes", 0)
    mode = _get(raw, key, "tier_mode", str, "graduated")
    if mode not in ("graduated", "volume"):
        raise ConfigError(f"{key}.tier_mode", mode, "'graduated' or 'volume'")
    if "price" in raw and "tier" in raw:
        raise ConfigError(f"{key}.price", raw["price"], "either price or [[...tier]] tables, not both")
    tiers_raw = [{"price": raw["price"]}] if "price" in raw else _get(raw, key, "tier", list, what="tiers or price")
    if not tiers_raw:
        raise ConfigError(f"{key}.tier", tiers_raw, "one or more tiers")
    tiers = []
    previous = 0
    for i, t in enumerate(tiers_raw):
        tkey = f"{key}.tier[{i}]" if "tier" in raw else key
        _known(t, tkey, {"up_to_bytes", "price"})
        last = i == len(tiers_raw) - 1
        up_to = _int(t, tkey, "up_to_bytes", None, minimum=1)
        if last and up_to is not None:
            raise ConfigError(f"{tkey}.up_to_bytes", up_to, "no bound on the last tier (it is open-ended)")
        if not last and up_to is None:
            raise ConfigError(f"{tkey}.up_to_bytes", None, "an upper bound (every tier but the last has one)")
        if up_to is not None and up_to <= previous:
            raise ConfigError(f"{tkey}.up_to_bytes", up_to, f"a bound greater than the previous one ({previous})")
        previous = up_to or previous
        tiers.append(Tier(up_to, _prices(t.get("price"), f"{tkey}.price", bands)))
    return RateCard(name, direction, classes, allowance, mode, tuple(tiers))


def _prices(raw: Any, key: str, bands: set[str]) -> dict[str, Decimal]:
    if isinstance(raw, dict):
        missing = bands - set(raw)
        extra = set(raw) - bands
        if extra:
            first = sorted(extra)[0]
            raise ConfigError(f"{key}.{first}", raw[first], f"a band of the plan: {sorted(bands)}")
        if missing:
            raise ConfigError(key, raw, f"a price for every band ({', '.join(sorted(bands))}), missing "
                              f"{', '.join(sorted(missing))}")
        return {b: money(v, f"{key}.{b}") for b, v in raw.items()}
    if raw is None:
        raise ConfigError(key, None, 'a price, e.g. "0.50", or a table of prices by band (required)')
    price = money(raw, key)
    return dict.fromkeys(bands, price)


def _burst(raw: Any, key: str) -> Burst:
    _known(raw, key, {"commit_bps", "price_per_mbps", "direction", "increment_bps", "percentile", "commit_charge"})
    direction = _get(raw, key, "direction", str, "max")
    if direction not in ("max", "up", "down", "sum"):
        raise ConfigError(f"{key}.direction", direction, "max, up, down or sum")
    pct = _int(raw, key, "percentile", 95, minimum=1)
    if pct > 100:
        raise ConfigError(f"{key}.percentile", pct, "an integer from 1 to 100")
    return Burst(commit_bps=_int(raw, key, "commit_bps", 0),
                 price_per_mbps=money(raw.get("price_per_mbps"), f"{key}.price_per_mbps"),
                 direction=direction, increment_bps=_int(raw, key, "increment_bps", 1, minimum=1),
                 percentile=pct, commit_charge=money(raw.get("commit_charge", "0"), f"{key}.commit_charge"))
