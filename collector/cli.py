"""The ``flowmed`` command: a click group whose subcommands live in ``collector/commands/*``.

Each module listed in COMMAND_MODULES exposes ``COMMANDS``, a list of click commands; keeping them apart lets each
area (flows, store, mediation, rating, IPDR) own its commands.
"""

from __future__ import annotations

import importlib

import click

COMMAND_MODULES = (
    "collector.commands.core",
    "collector.commands.query",
    "collector.commands.mediation",
    "collector.commands.rating",
    "collector.commands.ipdr",
    "collector.commands.compliance",
    "collector.commands.clickhouse",
    "collector.commands.console",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="flowmed")
def main() -> None:
    """flowmed: NetFlow/IPFIX/IPDR collector with usage mediation and rating."""


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area has no commands yet
                continue
            raise
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # python -m collector.cli (the supervisor starts its workers this way)
    main()
