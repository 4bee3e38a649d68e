"""The error every layer raises for a bad setting, on the ground floor so that each layer can raise it.

Each layer owns the dataclasses of its own settings and checks them; a check that fails raises
:class:`ConfigError` naming the dotted key, so the process layer reports every bad setting the same way whether
the TOML reader found it or the layer that owns the setting did.
"""

from __future__ import annotations

import ipaddress
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, located by its dotted key."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key or '<root>'}: got {value!r}, expected {expected}")


def check_endpoint(key: str, value: str) -> None:
    """``host:port`` or ``[v6]:port``; raises ConfigError naming the key."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(key, value, "an address and port such as 0.0.0.0:2055 or [::]:4739")


def check_positive(key: str, **values: float) -> None:
    """Every value greater than 0; raises ConfigError naming ``key.name`` of the first that is not."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{key}.{name}" if key else name, value, "a number greater than 0")
