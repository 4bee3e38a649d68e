"""The ``flowmed`` command: a click group whose subcommands live in ``collector/commands/*``.

Each module of :data:`COMMAND_MODULES` exposes ``COMMANDS``, a list of click commands; keeping them apart lets each
area (flows, store, mediation, rating, IPDR) own its commands. They are imported plainly: a command module that
fails to import fails the command line, instead of its commands going missing.
"""

from __future__ import annotations

import click

import collector.tables  # noqa: F401  (every command knows every table: the composition root registers them)
from collector.commands import clickhouse, compliance, console, core, ipdr, mediation, query, rating

COMMAND_MODULES = (core, query, mediation, rating, ipdr, compliance, clickhouse, console)
"""The modules of commands, in the order of ``flowmed --help``."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="flowmed")
def main() -> None:
    """flowmed: NetFlow/IPFIX/IPDR collector with usage mediation and rating."""


for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)

if __name__ == "__main__":  # python -m collector.cli (the supervisor starts its workers this way)
    main()
