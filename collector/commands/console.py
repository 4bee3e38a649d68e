"""``flowmed console``: the read-only web console (docs/console.md)."""

from __future__ import annotations

import sys

import click

from collector.commands.common import config_options
from collector.config import Config


@click.command("console")
@click.option("--hash-password", is_flag=True,
              help="Read a password (twice, not echoed), print its hash for [[console.users]] password_hash, exit.")
@config_options
def console_command(hash_password: bool, config: Config) -> None:
    """Serve the web console (exporters, traffic, a subscriber's cycle, compliance lookup, reconciliation) on
    console.listen (127.0.0.1:9109 by default), reading the store or ClickHouse like flowmed query.

    It only reads: every page runs SQL it templates itself, bounded to a time window. An address other than
    loopback needs console.auth = "basic" (console.users) or "proxy" (a reverse proxy that authenticates).

    \b
    Examples:
      flowmed console
      flowmed console --set store.path=/var/lib/flowmed
      flowmed console --hash-password
    """
    if hash_password:
        from collector.console.auth import hash_password as make_hash

        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
        if len(password) < 8:
            raise click.ClickException("use a password of at least 8 characters")
        sys.stdout.write(make_hash(password) + "\n")
        return
    from collector.console.data import ConsoleStore
    from collector.console.serve import ListenError, serve
    from collector.logging import setup as setup_logging

    setup_logging(config.log.level, config.log.format)
    try:
        store = ConsoleStore.open(config)
    except Exception as exc:  # cannot open chDB / reach the server
        raise click.ClickException(f"cannot open the {config.console.target} query target: {exc}") from None
    try:
        store.seal()  # the process runs nothing but the console's read queries from here on
        serve(config, store)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


COMMANDS = [console_command]
