"""Options every command shares: ``--config`` and repeatable ``--set KEY=VALUE``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from collector.config import DEFAULT_CONFIG_FILE, load
from collector.configtree import ConfigError


class ConfigUsageError(click.ClickException):
    """A configuration error: exit status 2 like a usage error, but without click's usage banner (the command line
    was fine; the settings were not)."""

    exit_code = 2


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config``/``--set`` and pass the loaded, validated :class:`Config` as ``config``.

    Without ``--config``, ``collector.toml`` in the current directory is used when present, else the defaults.
    A configuration error exits with status 2 and names the key, the value and what was expected.
    """

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help=f"Configuration file (default: ./{DEFAULT_CONFIG_FILE} if present).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a setting by its dotted key, e.g. --set store.path=/srv/flowmed (repeatable).")
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str | None, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        if config_path is None and os.path.exists(DEFAULT_CONFIG_FILE):
            config_path = DEFAULT_CONFIG_FILE
        try:
            config = load(config_path, overrides)
        except ConfigError as exc:
            raise ConfigUsageError(f"configuration error: {exc}") from None
        # The daemon re-reads the same file and overrides on SIGHUP and passes them to its workers.
        ctx = click.get_current_context()
        ctx.meta["flowmed.config_path"] = config_path
        ctx.meta["flowmed.overrides"] = tuple(overrides)
        return func(*args, config=config, **kwargs)

    return wrapper

