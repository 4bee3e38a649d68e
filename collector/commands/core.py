"""Core commands: ``flowmed run``, ``decode``, ``check-config`` and ``status``."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from collector.commands.common import config_options
from collector.config import Config
from collector.configtree import to_dict
from collector.memory import start_trimmer

if TYPE_CHECKING:
    from decoders.dispatch import DispatchDecoder

SECRET_WORDS = ("password", "secret", "token", "private_key", "api_key")
"""A config key containing one of these holds a secret (unless it names where the secret is: ``*_env``, ``*_file``)."""

REDACTED = "<redacted>"


@click.command()
@config_options
@click.option("--worker", type=int, default=None, hidden=True, help="Internal: run as worker N of a supervisor.")
def run(config: Config, worker: int | None) -> None:
    """Run the collector daemon in the foreground (logs to stderr; stop with SIGTERM or Ctrl-C, reload with SIGHUP)."""
    start_trimmer()  # hands the heap's freed space back to the kernel while the daemon runs
    ctx = click.get_current_context()
    config_path = ctx.meta.get("flowmed.config_path")
    overrides = tuple(ctx.meta.get("flowmed.overrides", ()))
    if worker is not None:
        from collector import server

        fds = [int(fd) for fd in os.environ.get("FLOWMED_LISTEN_FDS", "").split(",") if fd]
        sys.exit(server.run(config, config_path, overrides, worker=worker, listen_fds=fds or None))
    if config.service.workers > 1:
        from collector import workers

        sys.exit(workers.Supervisor(config, config_path, overrides).run())
    from collector import server

    sys.exit(server.run(config, config_path, overrides))


@click.command()
@config_options
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: a header and one line per flow; json: one JSON object per line.")
@click.option("--port", "ports", type=int, multiple=True,
              help="Only datagrams to this UDP port (repeatable; default: every UDP datagram in the capture).")
def decode(config: Config, pcap: str, fmt: str, ports: tuple[int, ...]) -> None:
    """Decode the NetFlow/IPFIX and sFlow datagrams in a capture offline, as the daemon would, one row per flow (per
    flow sample for sFlow).

    Datagrams are decoded in the daemon's batch size with the capture time as the receive time. Decode errors per
    exporter and reason are summarised on stderr.
    """
    from collector.components import make_decoder
    from decoders.pcap import PcapError, read_udp

    decoder = make_decoder(config)
    batch_size = config.listen.batch_datagrams
    writer = _RowWriter(fmt)
    errors: dict[tuple[str, str], int] = {}
    batch: list[tuple[bytes, str, int]] = []
    try:
        for pkt in read_udp(pcap, ports or None):
            batch.append((pkt.payload, pkt.src, pkt.ts_ms))
            if len(batch) >= batch_size:
                writer.write(_decode_batch(decoder, batch, errors))
                batch = []
    except PcapError as exc:
        raise click.ClickException(str(exc)) from None
    writer.write(_decode_batch(decoder, batch, errors))
    held = len(decoder.netflow.state.pending)
    if held:  # data still waiting for its template at the end of the capture is reported, not hidden
        click.echo(f"not decoded: {held} data sets whose template is not in the capture", err=True)
    for (exporter, reason), count in sorted(errors.items()):
        click.echo(f"decode errors: exporter={exporter} reason={reason} count={count}", err=True)


def _decode_batch(decoder: DispatchDecoder, batch: list[tuple[bytes, str, int]],
                  errors: dict[tuple[str, str], int]) -> dict[str, np.ndarray]:
    if not batch:
        return {}
    result = decoder.decode(batch)
    for key, count in result.errors.items():
        errors[key] = errors.get(key, 0) + int(count)
    return result.flows


class _RowWriter:
    """Flows as text: addresses as IP text (IPv4 for mapped addresses), times as ISO-8601 UTC with milliseconds."""

    def __init__(self, fmt: str) -> None:
        from decoders.schema import FLOWS

        self.fmt = fmt
        self.columns = FLOWS.columns
        self.header_done = False
        self.csv = csv.writer(sys.stdout, lineterminator="\n")

    def write(self, flows: dict[str, np.ndarray]) -> None:
        if self.fmt == "csv" and not self.header_done:
            self.csv.writerow([c.name for c in self.columns])
            self.header_done = True
        if not flows:
            return
        n = len(next(iter(flows.values())))
        text = {c.name: _column_text(c.kind, flows.get(c.name), n) for c in self.columns}
        names = [c.name for c in self.columns]
        for i in range(n):  # text output for troubleshooting: a loop per row is fine here
            row = [text[name][i] for name in names]
            if self.fmt == "csv":
                self.csv.writerow(row)
            else:
                sys.stdout.write(json.dumps(dict(zip(names, row, strict=True))) + "\n")


def _column_text(kind: str, values: np.ndarray | None, n: int) -> list[Any]:
    from decoders.addresses import address_text

    if values is None:
        return [""] * n
    if kind == "ip":
        return [address_text(raw) for raw in np.asarray(values, dtype="S16").tolist()]
    if kind == "timestamp_ms":
        return [str(t) + "Z" for t in np.asarray(values, dtype="int64").astype("datetime64[ms]")]
    texts: list[Any] = np.asarray(values).tolist()
    return texts


@click.command("check-config")
@config_options
def check_config(config: Config) -> None:
    """Validate the configuration and print the effective settings as TOML (secrets redacted).

    Exit status 0 when valid; 2 with the key, the value and what is expected when not.
    """
    click.echo(to_toml(redact(to_dict(config))), nl=False)


def redact(tree: Any, key: str = "") -> Any:
    """A copy of a config tree with every secret value replaced by ``<redacted>``."""
    if isinstance(tree, dict):
        return {k: redact(v, k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v, key) for v in tree]
    lowered = key.lower()
    if (any(w in lowered for w in SECRET_WORDS) and not lowered.endswith(("_env", "_file", "_path"))
            and tree not in ("", None)):
        return REDACTED
    return tree


def to_toml(tree: dict[str, Any]) -> str:
    """Serialise a config tree (tables, arrays of tables, scalars, lists of scalars) as TOML."""
    lines: list[str] = []
    _toml_table(tree, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml_table(tree: dict[str, Any], path: list[str], lines: list[str], array: bool = False) -> None:
    scalars = {k: v for k, v in tree.items() if not isinstance(v, dict) and not _is_table_list(v)}
    if path and (scalars or array or not tree):
        lines.append("")
        lines.append(f"[[{_key(path)}]]" if array else f"[{_key(path)}]")
    for k, v in scalars.items():
        lines.append(f"{_key([k])} = {_toml_value(v)}")
    for k, v in tree.items():
        if isinstance(v, dict):
            _toml_table(v, [*path, k], lines)
        elif _is_table_list(v):
            for item in v:
                _toml_table(item, [*path, k], lines, array=True)


def _key(path: list[str]) -> str:
    return ".".join(p if p.replace("_", "").replace("-", "").isalnum() else json.dumps(p) for p in path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


@click.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
def status(config: Config, as_json: bool) -> None:
    """Show what the running daemon sees: exporters, listeners, outputs and spool (from its metrics endpoint)."""
    from collector import status as status_mod

    try:
        data = status_mod.fetch(config.metrics.listen)
    except OSError as exc:
        raise click.ClickException(f"no flowmed answering on {config.metrics.listen}: {exc}") from None
    click.echo(json.dumps(data, indent=1) if as_json else status_mod.render(data))


COMMANDS = [run, decode, check_config, status]
