"""Every section of the configuration tree checks itself: it has a ``validate(key)`` method (the configtree calls it
on each section it builds), so no section's check is an optional part found by probing."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from collector.config import Config
from collector.configtree import build
from storage.settings import OutputConfig

PENDING = {OutputConfig}
"""Sections of floors this change could not edit (storage): each gains a ``validate`` there, then leaves this set."""


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
    assert lacking <= PENDING, f"sections without validate(key): {sorted(c.__qualname__ for c in lacking - PENDING)}"


def test_root_and_log_sections_accept_every_typed_value() -> None:
    config = build(Config, {"log": {"level": "debug", "format": "json"}})
    config.validate("")
    config.log.validate("log")
    assert (config.log.level, config.log.format) == ("debug", "json")
