"""Configuration through the CLI: errors name key, value and expectation; --set overrides; check-config output."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector import config as config_mod
from collector.cli import main
from collector.commands.core import REDACTED, redact, to_toml
from collector.configdoc import render
from collector.configtree import ConfigError, to_dict

ROOT = Path(__file__).resolve().parents[2]


def _check(*args: str, cwd: Path) -> tuple[int, str]:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=cwd):
        result = runner.invoke(main, ["check-config", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(("override", "key", "value", "expected"), [
    ("listen.batch_datagrams=lots", "listen.batch_datagrams", "'lots'", "an integer"),
    ("listen.batch_datagrams=0", "listen.batch_datagrams", "0", "greater than 0"),
    ('listen.udp=["127.0.0.1:2055", "nowhere"]', "listen.udp[1]", "'nowhere'", "an address and port"),
    ('listen.sflow=["127.0.0.1:6343", "6343"]', "listen.sflow[1]", "'6343'", "an address and port"),
    ('listen.sflow=["0.0.0.0:2055"]', "listen.sflow", "'0.0.0.0:2055'", "endpoints not also in listen.udp"),
    ("log.level=loud", "log.level", "'loud'", "one of 'debug'"),
    ("service.workers=0", "service.workers", "0", "an integer >= 1"),
    ("store.flush_interval_s=true", "store.flush_interval_s", "True", "a number"),
    ("sampling.rules=[{prefix='10.0.0.0/8', rate=0}]", "sampling.rules[0].rate", "0", ">= 1"),
    ("listen.colour=blue", "listen.colour", "'blue'", "one of the known keys"),
    ("nosuchsection.x=1", "nosuchsection", "{'x': 1}", "one of the known keys"),
])
def test_config_error_names_key_value_and_expectation(tmp_path: Path, override: str, key: str, value: str,
                                                        expected: str) -> None:
    code, out = _check("--set", override, cwd=tmp_path)
    assert code == 2
    assert f"{key}: got {value}, expected" in out and expected in out, out


def test_set_overrides_nested_keys_lists_and_numbers(tmp_path: Path) -> None:
    code, out = _check("--set", 'listen.udp=["[::1]:9995", "127.0.0.1:9996"]', "--set", "listen.batch_interval_ms=7",
                       "--set", "output.clickhouse.batch_interval_s=2.5", "--set", "store.path=/srv/flowmed data",
                       "--set", "sampling.rules=[{prefix='192.0.2.0/24', rate=100, override=true}]", cwd=tmp_path)
    assert code == 0, out
    tree = tomllib.loads(out)
    assert tree["listen"]["udp"] == ["[::1]:9995", "127.0.0.1:9996"]
    assert tree["listen"]["batch_interval_ms"] == 7
    assert tree["output"]["clickhouse"]["batch_interval_s"] == 2.5
    assert tree["store"]["path"] == "/srv/flowmed data"  # not TOML: taken as a plain string
    assert tree["sampling"]["rules"] == [{"prefix": "192.0.2.0/24", "rate": 100, "override": True}]


def test_config_file_then_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[listen]\nbatch_datagrams = 64\n[log]\nformat = "json"\n')
    code, out = _check("--config", str(conf), "--set", "log.format=logfmt", cwd=tmp_path)
    assert code == 0, out
    tree = tomllib.loads(out)
    assert tree["listen"]["batch_datagrams"] == 64 and tree["log"]["format"] == "logfmt"
    code, out = _check("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert code == 2 and "--config" in out and "an existing configuration file" in out
    conf.write_text("[listen\n")
    code, out = _check("--config", str(conf), cwd=tmp_path)
    assert code == 2 and "valid TOML" in out


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    code, out = _check("--set", "radius.clients=[{address='192.0.2.1', secret='hunter2', name='bras1'}, "
                       "{address='192.0.2.2', secret_env='NAS2_SECRET'}]", cwd=tmp_path)
    assert code == 0, out
    assert "hunter2" not in out
    clients = tomllib.loads(out)["radius"]["clients"]
    assert clients[0]["secret"] == REDACTED and clients[0]["name"] == "bras1"
    assert clients[1]["secret_env"] == "NAS2_SECRET" and clients[1]["secret"] == ""  # where it is: not a secret
    assert tomllib.loads(out)["output"]["clickhouse"]["password_env"] == "FLOWMED_CLICKHOUSE_PASSWORD"
    assert redact({"x": {"api_token": "t", "password": "p", "password_file": "/etc/f"}}) == \
        {"x": {"api_token": REDACTED, "password": REDACTED, "password_file": "/etc/f"}}


def test_check_config_output_round_trips() -> None:
    """What check-config prints is a valid config that loads to the same settings."""
    cfg = config_mod.load(None, ["sampling.rules=[{prefix='10.0.0.0/8', rate=10}]", "mediation.classes=[{name='cdn', "
                                 "prefixes=['198.51.100.0/24'], ports=[443]}]"])
    text = to_toml(to_dict(cfg))
    assert to_dict(config_mod.build(config_mod.Config, tomllib.loads(text))) == to_dict(cfg)


def test_repository_collector_toml_is_valid_and_covers_every_section() -> None:
    path = ROOT / "collector.toml"
    config_mod.load(path)  # valid as shipped
    tree = tomllib.loads(path.read_text())
    missing = [name for name in to_dict(config_mod.Config()) if name not in tree]
    assert not missing, f"collector.toml lacks sections {missing}: run python -m collector.configdoc > collector.toml"


def test_generated_example_with_its_examples_uncommented_still_parses() -> None:
    """The commented [[...]] examples are real TOML: uncommented they parse (validation aside)."""
    text = render()
    assert tomllib.loads(text)
    example = re.compile(r"^# (\[\[[\w.]+\]\]|\w+ = .*)$")
    uncommented = "\n".join(line[2:] if example.match(line) else line for line in text.splitlines())
    tree = tomllib.loads(uncommented)
    assert "rules" in tree["sampling"]


def test_config_error_is_a_value_error_with_fields() -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, ["metrics.listen=localhost"])
    assert (err.value.key, err.value.value) == ("metrics.listen", "localhost")
    assert "address and port" in err.value.expected


@pytest.mark.parametrize(("override", "suggestion"), [
    ("store.pth=x", "did you mean store.path?"),
    ("store.Path=x", "did you mean store.path?"),
    ("stor.path=x", "did you mean store?"),
    ("mediaton.enabled=false", "did you mean mediation?"),
    ("radius.clients=[{address='10.0.0.1', secert='s'}]", "did you mean radius.clients[0].secret?"),
])
def test_a_mistyped_key_or_section_gets_a_suggestion(tmp_path: Path, override: str, suggestion: str) -> None:
    code, out = _check("--set", override, cwd=tmp_path)
    assert code == 2 and suggestion in out, out


def test_no_suggestion_for_a_key_like_no_other(tmp_path: Path) -> None:
    code, out = _check("--set", "listen.colour=blue", cwd=tmp_path)
    assert code == 2 and "did you mean" not in out, out


def test_a_config_error_is_printed_without_the_usage_banner(tmp_path: Path) -> None:
    """The command line was right, the settings were not: click's 'Usage: ... Try --help' would mislead."""
    import subprocess
    import sys

    conf = tmp_path / "flowmed.toml"
    conf.write_text("[store]\npth = 'x'\n")
    flowmed = Path(sys.executable).with_name("flowmed")
    for args in (["check-config", "--config", str(conf)], ["run", "--set", "stor.path=x"]):
        out = subprocess.run([str(flowmed), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert out.returncode == 2
        assert out.stderr.startswith("Error: configuration error: "), out.stderr
        assert "Usage:" not in out.stderr and "--help" not in out.stderr, out.stderr
