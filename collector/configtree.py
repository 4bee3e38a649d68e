"""Build typed, frozen dataclass trees from TOML tables, strictly.

Unknown keys, wrong types and invalid values are errors that name the dotted key, the value given and what is
expected. ``--set a.b=c`` overrides are applied to the raw TOML tree before building, so they get the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from typing import Any, ClassVar, Protocol, TypeVar, get_args, get_origin

from decoders.settings import ConfigError

__all__ = ["ConfigError", "Section", "apply_overrides", "build", "parse_override", "to_dict"]


class Section(Protocol):
    """A settings section: a dataclass that checks its values once built (every section has ``validate``)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def validate(self, key: str) -> None:
        """Raise ConfigError naming ``key`` (the section's dotted key) and the bad value, if any."""


T = TypeVar("T", bound=Section)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE``; VALUE is read as a TOML value when it parses as one, else as a plain string."""
    if "=" not in text:
        raise ConfigError(text, text, "KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key, raw, "a dotted key such as store.path")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw TOML tree (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), child, "a table (cannot set a key inside a value)")
            node = child
        node[path[-1]] = value
    return tree


def build(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(key, data, f"a table of {cls.__name__} settings")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        expected = f"one of the known keys: {', '.join(sorted(fields))}"
        close = difflib.get_close_matches(str(unknown[0]).lower(), sorted(fields), n=1, cutoff=0.6)
        if close:
            expected += f" (did you mean {f'{key}.{close[0]}' if key else close[0]}?)"
        raise ConfigError(where, data[unknown[0]], expected)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{key}.{name}" if key else name)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # a required field is missing
        raise ConfigError(key, data, f"{cls.__name__} with all required keys ({exc})") from None
    obj.validate(key)
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(exc.expected)
        raise ConfigError(key, value, " or ".join(errors))
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(key, value, "one of " + ", ".join(repr(a) for a in get_args(tp)))
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, value, "a list")
        (item_tp, *_) = get_args(tp)
        items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a table")
        _, value_tp = get_args(tp)
        return {k: _convert(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a type hint: a class, not an instance
        # every section dataclass of the tree is a Section (tests/collector/test_config_sections.py walks them)
        return build(typing.cast(type[Section], tp), value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, value, "a number")
        if not math.isfinite(value):  # TOML has nan and inf; no setting means them (nan passes every "> 0" check)
            raise ConfigError(key, value, "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
        return value
    raise ConfigError(key, value, f"a value of type {tp}")


def to_dict(obj: Any) -> Any:
    """A config tree as plain TOML-like data (for ``check-config`` output)."""
    if dataclasses.is_dataclass(obj):
        # generic over the config dataclasses: each field by its name
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
