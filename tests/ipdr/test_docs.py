"""docs/ipdr.md stays true to the configuration: its TOML snippets are valid collector.toml fragments, its
``--set`` overrides are accepted, and every ``section.key`` setting it names exists."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

from collector.config import Config, load
from collector.configtree import build

DOC = Path(__file__).resolve().parents[2] / "docs" / "ipdr.md"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_toml_snippets_are_valid_configuration():
    snippets = _blocks(DOC.read_text(), "toml")
    assert len(snippets) >= 3
    for snippet in snippets:
        config = build(Config, tomllib.loads(snippet))  # unknown keys, wrong types and bad values raise
        assert config.ipdr.enabled


def test_command_line_overrides_are_accepted():
    overrides = []
    for block in _blocks(DOC.read_text(), "sh"):
        words = shlex.split(block.replace("\\\n", " "), comments=True)
        overrides += [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert any(o.startswith("ipdr.exporters=") for o in overrides)
    load(None, overrides)


def test_named_settings_exist():
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    named = set(re.findall(r"`([a-z]+)\.([a-z_0-9]+)", DOC.read_text()))
    checked = 0
    for section, key in sorted(named):
        if section in sections:
            fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
            assert key in fields, f"docs/ipdr.md names {section}.{key}, which is not a setting"
            checked += 1
    assert checked >= 10
