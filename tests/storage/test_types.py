"""The one kind-to-ClickHouse type map covers every column kind in every server generation."""

from __future__ import annotations

import itertools

import pytest

from decoders.schema import KINDS
from storage.clickhouse.types import kind_type, modern_type, parquet_type


@pytest.mark.parametrize(("datetime64", "ipv6"), list(itertools.product([False, True], repeat=2)))
def test_every_kind_has_a_type_in_every_generation(datetime64: bool, ipv6: bool) -> None:
    assert all(kind_type(kind, datetime64=datetime64, ipv6=ipv6) for kind in KINDS)


def test_the_generations_differ_only_in_times_and_addresses() -> None:
    assert modern_type("ip") == "IPv6" and parquet_type("ip") == "FixedString(16)"
    assert kind_type("timestamp_ms", datetime64=False, ipv6=False) == "DateTime('UTC')"
    assert {modern_type(k) for k in KINDS if k not in ("ip", "timestamp_ms")} == \
        {parquet_type(k) for k in KINDS if k not in ("ip", "timestamp_ms")}
