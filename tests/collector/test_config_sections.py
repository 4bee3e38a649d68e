"""Every section of the configuration tree checks itself: it has a ``validate(key)`` method (the configtree calls it
on each section it builds), so no section's check is an optional part found by probing."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from collector.config import Config
from collector.configtree import ConfigError, build
from storage.settings import OutputConfig


def _sections(cls: type[Any], seen: dict[type[Any], None]) -> dict[type[Any], None]:
    """``cls`` and every dataclass its fields hold (directly, in lists, tuples, dicts or unions), in tree order."""
    seen[cls] = None
    for tp in typing.get_type_hints(cls).values():
        stack = [tp]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and dataclasses.is_dataclass(t) and t not in seen:
                _sections(t, seen)
            stack.extend(typing.get_args(t))
    return seen


def test_every_section_has_a_validate_method() -> None:
    sections = _sections(Config, {})
    assert len(sections) > 20
    lacking = {cls for cls in sections if not callable(vars(cls).get("validate"))}
    assert not lacking, f"sections without validate(key): {sorted(c.__qualname__ for c in lacking)}"


def test_root_and_log_sections_accept_every_typed_value() -> None:
    config = build(Config, {"log": {"level": "debug", "format": "json"}})
    config.validate("")
    config.log.validate("log")
    assert (config.log.level, config.log.format) == ("debug", "json")



@dataclasses.dataclass(frozen=True)
class _Inner:
    n: int = 1

    def validate(self, key: str) -> None:
        if self.n < 0:
            raise ConfigError(f"{key}.n", self.n, "a count")


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)

    def validate(self, key: str) -> None:
        """Nothing of its own."""


def test_the_output_section_checks_through_its_clickhouse_subsection() -> None:
    output = build(OutputConfig, {"clickhouse": {"port": 9440}}, "output")
    output.validate("output")  # nothing of its own to check
    assert output.clickhouse.port == 9440
    with pytest.raises(ConfigError) as caught:
        build(OutputConfig, {"clickhouse": {"port": 0}}, "output")
    assert caught.value.key == "output.clickhouse.port"


def test_build_calls_the_validate_of_every_section_it_builds() -> None:
    assert build(_Outer, {"inner": {"n": 2}}, "outer").inner.n == 2
    with pytest.raises(ConfigError) as caught:
        build(_Outer, {"inner": {"n": -1}}, "outer")
    assert caught.value.key == "outer.inner.n"
