"""The error every layer raises for a bad setting, on the ground floor so that each layer can raise it.

Each layer owns the dataclasses of its own settings and checks them; a check that fails raises
:class:`ConfigError` naming the dotted key, so the process layer reports every bad setting the same way whether
the TOML reader found it or the layer that owns the setting did.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration problem, located by its dotted key."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key or '<root>'}: got {value!r}, expected {expected}")
