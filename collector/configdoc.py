"""A commented ``collector.toml`` generated from the config dataclasses and their attribute docstrings.

``python -m collector.configdoc > collector.toml`` rewrites the repository's default configuration after a section
or a key is added to :mod:`collector.config`; ``tests/collector/test_config.py`` checks the file still parses and
names every section. Lists of tables that are empty by default get a commented-out example entry.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import TYPE_CHECKING, Any, get_args, get_origin

from collector.commands.core import _toml_value
from collector.config import Config

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

HEADER = """\
# flowmed collector configuration: every setting, with its default value.
#
# Every key can also be overridden on the command line with --set, e.g. --set store.path=/srv/flowmed or
# --set 'listen.udp=["[::]:2055"]'. `flowmed check-config` validates a file and prints the effective settings.
# Relative paths are resolved against store.path. Send SIGHUP (systemctl reload flowmed) to reload; an invalid file
# is refused and the running configuration stays.
"""


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal that follows each field in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    class_def = tree.body[0]
    assert isinstance(class_def, ast.ClassDef)  # the source of a class is its class statement
    body = class_def.body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _comment(text: str, indent: str = "") -> list[str]:
    wrapped = textwrap.wrap(text, 116 - len(indent), break_on_hyphens=False)
    return [f"{indent}# {line}" for line in wrapped]


def _list_item_type(tp: Any) -> type | None:
    if get_origin(tp) in (list, tuple):
        (item, *_) = get_args(tp)
        return item if isinstance(item, type) and dataclasses.is_dataclass(item) else None
    return None


def _example(cls: type, path: str, lines: list[str]) -> None:
    """A commented-out ``[[path]]`` entry with every field of ``cls`` (required ones get a placeholder)."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    lines += ["", f"# [[{path}]]"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = {str: "...", int: 1, float: 1.0, bool: False}.get(hints[f.name], "...")
        lines += _comment(docs.get(f.name, ""), "")
        lines.append(f"# {f.name} = {_toml_value(value)}")


def _section(obj: DataclassInstance, path: str, lines: list[str]) -> None:
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    scalars = [f for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(hints[f.name])]
    if scalars:
        lines += ["", f"[{path}]"]
    later: list[tuple[Any, str]] = []
    examples: list[tuple[type, str]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)  # generic over the config dataclasses: a field by its name, not a probe
        if dataclasses.is_dataclass(hints[f.name]):
            later.append((value, f"{path}.{f.name}"))
            continue
        item = _list_item_type(hints[f.name])
        lines += _comment(docs.get(f.name, ""))
        if item is not None:
            lines.append(f"# {f.name}: none by default; add [[{path}.{f.name}]] tables, as in the example below.")
            examples.append((item, f"{path}.{f.name}"))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for item, p in examples:
        _example(item, p, lines)
    for value, p in later:
        _section(value, p, lines)


def render(config: Config | None = None) -> str:
    """The commented TOML for ``config`` (the defaults when None)."""
    config = config or Config()
    lines = [HEADER.rstrip("\n")]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(config):
        lines += ["", "# " + "-" * 116]
        cls = hints[f.name]
        lines += _comment((inspect.getdoc(cls) or "").split("\n")[0] if cls.__doc__ and
                          not cls.__doc__.startswith(cls.__name__ + "(") else "")
        _section(getattr(config, f.name), f.name, lines)  # each section by its field name (generic config code)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
