"""The setting descriptions in collector.toml name commands and options that exist (a description once said
``flowmed ipdr-report --format dot`` where the option is ``--layout``)."""

from __future__ import annotations

import re

import click

from collector.cli import main
from collector.configdoc import render


def mentions(text: str) -> list[list[str]]:
    """Every ``flowmed ...`` command line quoted in backticks, as words."""
    return [span.split() for span in re.findall(r"`(flowmed [^`]+)`", text)]


def unknown(words: list[str]) -> str | None:
    """What in ``flowmed <command> [<subcommand>] [--option [value]]...`` does not exist, or None (a value given to
    an option with a fixed set of choices must be one of them)."""
    command: click.Command = main
    for i, word in enumerate(words[1:], start=1):
        if word.startswith("--"):
            option = next((p for p in command.params if word in (*p.opts, *p.secondary_opts)), None)
            if option is None:
                return f"{' '.join(words)}: no option {word}"
            value = words[i + 1] if i + 1 < len(words) and not option.is_flag else None
            if isinstance(option.type, click.Choice) and value is not None and value not in option.type.choices:
                return f"{' '.join(words)}: {word} takes {list(option.type.choices)}, not {value}"
        elif isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
        elif command is main:
            return f"{' '.join(words)}: no command {word}"
    return None


def test_the_checker_finds_a_wrong_option():
    assert unknown("flowmed ipdr-report --format dot".split()) is not None
    assert unknown("flowmed ipdr-report --layout dot".split()) is None
    assert unknown("flowmed no-such-command".split()) is not None


def test_config_descriptions_name_real_commands_and_options():
    found = mentions(render())
    assert any(m[1] == "ipdr-report" for m in found)
    problems = [p for p in map(unknown, found) if p]
    assert not problems, problems
