"""Plans file validation, plan versions, assignments, and the exact money helpers."""

from __future__ import annotations

import os
from decimal import Decimal

import numpy as np
import pytest

from collector.configtree import ConfigError
from rating.assignments import AssignmentFile
from rating.money import price_fractions, products, round_div
from tests.rating.helpers import HOME_PLAN, assignments, ms, plans


@pytest.mark.parametrize(("old", "new", "key", "expected"), [
    ('currency = "EUR"', 'currency = "euro"', "plan[0].currency", "ISO 4217"),
    ('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"', "plan[0].timezone", "IANA timezone"),
    ('price = "0.3333"', "price = 0.3333", "plan[0].rate[1].price", "floats are inexact"),
    ('unit = "GB"', 'unit = "GIGS"', "plan[0].unit", "one of GB, GiB"),
    ('up_to_bytes = 5000000000', 'up_to_bytes = 0', "plan[0].rate[0].tier[0].up_to_bytes", ">= 1"),
    ('price = { peak = "1.20", offpeak = "0.60" }', 'price = { peak = "1.20" }', "plan[0].rate[0].tier[0].price",
     "missing offpeak"),
    ('direction = "up"', 'direction = "sideways"', "plan[0].rate[1].direction", "up, down or total"),
    ('cycle_day = 1', 'cycle_day = 31', "plan[0].cycle_day", "1 to 28"),
    ('from = "08:00"', 'from = "8am"', "plan[0].band[0].from", "HH:MM"),
    ('money_rounding = "half_up"', 'money_rounding = "bankers"', "plan[0].money_rounding", "half_even"),
])
def test_plan_errors_name_key_value_and_expectation(old, new, key, expected):
    assert old in HOME_PLAN
    with pytest.raises(ConfigError) as err:
        plans(HOME_PLAN.replace(old, new, 1))
    assert err.value.key == key
    assert expected in err.value.expected
    assert key in str(err.value)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError) as err:
        plans(HOME_PLAN.replace('cycle_day = 1', 'cycle_day = 1\nallowance = 5'))
    assert err.value.key == "plan[0].allowance"


def test_versions_by_activation_time_and_corrections():
    v2 = HOME_PLAN.replace("version = 1", "version = 2").replace("2026-01-01T00:00:00+01:00",
                                                                 "2026-12-01T00:00:00+01:00")
    v3 = v2.replace("version = 2", "version = 3")  # a correction of v2, same activation
    book = plans(HOME_PLAN + v2 + v3)
    assert book.version_at("home", ms("2026-11-30T23:59:00+01:00")).version == 1
    assert book.version_at("home", ms("2026-12-01T00:00:00+01:00")).version == 3
    assert book.version_at("home", ms("2025-12-01T00:00:00+01:00")) is None
    with pytest.raises(ConfigError, match="same timezone"):
        plans(HOME_PLAN + v2.replace("Europe/Berlin", "UTC"))


def test_assignments_lookup_and_reload(tmp_path):
    asg = assignments("subscriber_id,plan_id,from,to\na,p1,2026-11-01T00:00:00Z,\na,p2,2026-11-10T00:00:00Z,"
                      "2026-11-20T00:00:00Z\nb,p1,2026-11-05T00:00:00Z,\n")
    names = np.array(["a", "b", "c"], dtype=object)
    codes = np.array([0, 0, 0, 0, 1, 1, 2])
    at = np.array([ms(t) for t in ("2026-10-31T23:59:59Z", "2026-11-09T23:59:59Z", "2026-11-10T00:00:00Z",
                                   "2026-11-20T00:00:00Z", "2026-11-04T00:00:00Z", "2026-11-05T00:00:00Z",
                                   "2026-11-05T00:00:00Z")])
    found = asg.lookup(names, codes, at)
    plan = [asg.items[i].plan_id if i >= 0 else None for i in found]
    assert plan == [None, "p1", "p2", None, None, "p1", None]
    path = tmp_path / "assignments.csv"
    path.write_text("subscriber_id,plan_id,from\na,p1,2026-11-01T00:00:00Z\n")
    f = AssignmentFile(path)
    assert f.current().items[0].plan_id == "p1"
    path.write_text("subscriber_id,plan_id,from\na,p9,2026-11-01T00:00:00Z\n")
    os.utime(path, ns=(1, 1))
    assert f.current().items[0].plan_id == "p9"
    path.write_text("subscriber_id,plan_id,from\na,p9,not-a-time\n")
    os.utime(path, ns=(2, 2))
    assert f.current().items[0].plan_id == "p9"  # a bad file keeps the previous assignments
    assert "from" in f.last_error


def test_money_exact_gib_prices_and_rounding_modes():
    # 0.99 per GiB = 990000 micro / 2^30 bytes; 3 GiB + 1 byte costs 2970000 + 990000/2^30 micro -> rounds to
    # 2 970 000 (half up), and with up: 2 970 001.
    nums, den = price_fractions([Decimal("0.99")], 2**30)
    x = products(np.array([3 * 2**30 + 1]), np.array([nums[0]]))
    assert list(round_div(x, den, "half_up")) == [2_970_000]
    assert list(round_div(x, den, "up")) == [2_970_001]
    # Halves: 5/2 -> 3 (half_up), 2 (half_even); 7/2 -> 4 both.
    assert list(round_div(np.array([5, 7]), 2, "half_up")) == [3, 4]
    assert list(round_div(np.array([5, 7]), 2, "half_even")) == [2, 4]
    # Beyond int64: the object path gives the exact answer.
    big = products(np.array([2**40]), np.array([2**40]))
    assert big.dtype == object and int(big[0]) == 2**80


@pytest.mark.parametrize(("old", "new", "attr", "value", "first"), [
    ('timezone = "Europe/Berlin"', 'timezone = "UTC"', "timezone", "UTC", "'Europe/Berlin'"),
    ("cycle_day = 1", "cycle_day = 15", "cycle_day", 15, "1"),
])
def test_a_later_version_keeps_the_cycle_calendar(old, new, attr, value, first):
    v2 = HOME_PLAN.replace("version = 1", "version = 2").replace("2026-01-01T00:00:00+01:00",
                                                                 "2026-12-01T00:00:00+01:00")
    assert old in v2
    with pytest.raises(ConfigError) as err:
        plans(HOME_PLAN + v2.replace(old, new, 1))
    assert err.value.key == f"plan 'home' version 2.{attr}"
    assert err.value.value == value
    assert err.value.expected.startswith(f"the same {attr} as version 1 ({first})")
