"""Hypothesis properties for the parsers that had none: RADIUS packets and accounting, collector.toml, plans.

The property is the h11 one: any input either parses or fails with the parser's own error type (RadiusError,
ConfigError), never anything else. The IPDR/SP messages, XDR records and session state machine have theirs in
tests/ipdr, the flow decoders in tests/decoders; every decoder also has a coverage-guided target in fuzz/.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import struct
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import Config, load
from collector.configtree import ConfigError, build, to_dict
from fuzz.targets import RADIUS_SECRET, sign_request
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.radius import ATTRIBUTES, RadiusAccounting, RadiusError, accounting_request, parse_packet
from rating.plans import _PLAN_KEYS, parse_plans

T0 = 1_700_000_000_000
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- RADIUS -----------------------------------------------------------------------------------------------------

attribute = st.tuples(st.sampled_from(sorted(ATTRIBUTES.values())) | st.integers(0, 255),
                      st.binary(max_size=40) | st.sampled_from([struct.pack("!I", v) for v in (0, 1, 2, 3, 7, 8)]))


@SETTINGS
@given(st.binary(max_size=300))
def test_radius_random_bytes_parse_or_raise_radius_error(data: bytes) -> None:
    try:
        p = parse_packet(data)
    except RadiusError as exc:
        assert exc.reason in ("short", "bad_length", "bad_attribute")
        return
    assert 20 <= len(p.raw) <= min(len(data), 4096)


@SETTINGS
@given(st.integers(0, 255), st.lists(attribute, max_size=12))
def test_radius_attributes_round_trip(identifier: int, attrs: list[tuple[int, bytes]]) -> None:
    p = parse_packet(accounting_request(identifier, attrs, RADIUS_SECRET))
    assert p.code == 4 and p.identifier == identifier and p.attributes == attrs


_acct: list[RadiusAccounting] = []


def _accounting() -> RadiusAccounting:
    if not _acct:
        cfg = load(None, ["radius.enabled=true", "radius.max_sessions=50",
                          f'radius.clients=[{{address="127.0.0.1", secret="{RADIUS_SECRET.decode()}"}}]'])
        _acct.append(RadiusAccounting(cfg.radius, Bindings(), 300_000))
    return _acct[0]


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 255), st.lists(attribute, max_size=10)), min_size=1, max_size=6),
       st.integers(0, 10**6))
def test_radius_accounting_answers_only_what_it_made_durable(requests, offset_s: int) -> None:
    """Signed requests with arbitrary attributes: handle() never raises, answers at most one response per request,
    each a valid Accounting-Response to its request, and the session bound holds."""
    acct = _accounting()
    datagrams = [accounting_request(i, attrs, RADIUS_SECRET) for i, attrs in requests]
    res = acct.handle([(d, ("127.0.0.1", 1)) for d in datagrams], T0 + offset_s * 1000)
    assert len(res.responses) <= len(datagrams)
    by_auth = {d[4:20]: d for d in datagrams}
    for resp, _addr in res.responses:
        assert resp[0] == 5 and len(resp) == 20
        assert any(hashlib.md5(resp[:4] + auth + RADIUS_SECRET).digest() == resp[4:20] for auth in by_auth)
    assert acct.open_sessions() <= 50


@SETTINGS
@given(st.binary(min_size=20, max_size=400))
def test_radius_signed_garbage_never_raises(data: bytes) -> None:
    _accounting().handle([(sign_request(data), ("127.0.0.1", 1))], T0)


# --- collector.toml -------------------------------------------------------------------------------------------

scalar = (st.integers(-(2**63), 2**63 - 1) | st.floats() | st.booleans() | st.text(max_size=20)
          | st.sampled_from(["0.0.0.0:2055", "[::1]:4739", "10.0.0.0/8", "192.0.2.1", "info", "json", "always",
                             "drop_oldest", "primary", "User-Name", "baseline", "store", "SAMIS", "rfc8158", ""])
          | st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=14)),
                                                    dt.timezone(dt.timedelta(hours=-12))])))
toml_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _keys(cls: type) -> dict[str, typing.Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


SECTIONS = {name: typing.get_type_hints(Config)[name] for name in _keys(Config)}


@st.composite
def config_trees(draw) -> dict:
    """Trees that mostly use real section and key names (so most of them reach the typed checks)."""
    tree: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        cls = SECTIONS[section]
        keys = sorted(_keys(cls))
        table = {}
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            table[key] = draw(toml_value)
        if draw(st.booleans()):
            table[draw(st.text(max_size=6))] = draw(scalar)
        tree[section] = table
    return tree


def _finite(node: typing.Any) -> bool:
    if isinstance(node, dict):
        return all(_finite(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


@pytest.mark.slow
@SETTINGS
@given(config_trees())
def test_config_builds_or_names_the_key(tree: dict) -> None:
    try:
        cfg = build(Config, tree)
    except ConfigError as exc:
        assert isinstance(exc.key, str) and exc.expected
        return
    assert _finite(to_dict(cfg))


# --- plans ----------------------------------------------------------------------------------------------------

plan_value = toml_value | st.sampled_from(["EUR", "UTC", "Europe/Berlin", "2026-01-01T00:00:00Z", "GB", "1.00",
                                            "usage", "burstable", "graduated", "total", "up", "down", "peak"])


@st.composite
def plan_trees(draw) -> dict:
    plans = []
    for _ in range(draw(st.integers(0, 2))):
        raw = {"id": "p", "version": 1, "active_from": "2026-01-01T00:00:00Z", "currency": "EUR", "timezone": "UTC",
               "rate": [{"name": "r", "direction": "total", "price": "1.00"}]}
        for key in draw(st.lists(st.sampled_from(sorted(_PLAN_KEYS)), max_size=4, unique=True)):
            raw[key] = draw(plan_value)
        if draw(st.booleans()):
            raw["rate"] = [{k: draw(plan_value) for k in draw(st.lists(st.sampled_from(
                ["name", "direction", "classes", "allowance_bytes", "tier_mode", "tier", "price"]), max_size=5,
                unique=True))}]
        plans.append(raw)
    return {"plan": plans}


@pytest.mark.slow
@SETTINGS
@given(plan_trees())
def test_plans_parse_or_name_the_key(tree: dict) -> None:
    try:
        parse_plans(tree)
    except ConfigError as exc:
        assert isinstance(exc.key, str) and exc.expected
