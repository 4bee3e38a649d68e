"""A plan's time zone is validated into a ConfigError naming the key, whatever the text (issue 14 item 5)."""

from __future__ import annotations

import pytest

from collector.configtree import ConfigError
from tests.rating.helpers import HOME_PLAN, plans


@pytest.mark.parametrize("tz", ["Europe", "America", "a" * 300, "Europe/" + "b" * 300, "Europe/Berlin/x", "..",
                                "Europe/../Europe/Berlin", "/etc/localtime", "UTC\x00", ""])
def test_a_timezone_that_is_no_zone_is_a_config_error(tz: str) -> None:
    text = HOME_PLAN.replace('timezone = "Europe/Berlin"', f"timezone = {_toml_string(tz)}", 1)
    with pytest.raises(ConfigError) as err:
        plans(text)
    assert err.value.key == "plan[0].timezone"
    assert "IANA timezone" in err.value.expected


def _toml_string(text: str) -> str:
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in text) + '"'
