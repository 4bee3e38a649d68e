"""IPDR commands: ``flowmed ipdr sessions`` (ask CMTSs what they offer) and ``flowmed ipdr state`` (delta state)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from collector.commands.common import config_options
from collector.config import Config, split_endpoint
from decoders.ipdr import messages as m
from decoders.ipdr.session import CollectorConnection


@click.group("ipdr")
def ipdr() -> None:
    """IPDR/SP (DOCSIS SAMIS) collection tools."""


async def _sessions(host: str, port: int, timeout: float, vendor: str) -> dict[str, Any]:
    """What the CMTS at host:port offers, as a JSON document."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    conn = CollectorConnection()
    out: dict[str, Any] = {"exporter": f"{host}:{port}"}
    try:
        writer.write(conn.send(m.Connect(0, 0, m.Capability.MULTISESSION, 60, vendor)))
        async with asyncio.timeout(timeout):
            while "sessions" not in out:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the exporter")
                for ev in conn.receive_data(data):
                    if isinstance(ev, m.ConnectResponse):
                        out.update(vendor=ev.vendor_id, keepalive_s=ev.keepalive_s, capabilities=ev.capabilities)
                        writer.write(conn.send(m.GetSessions(1)))
                    elif isinstance(ev, m.GetSessionsResponse):
                        out["sessions"] = [{"id": s.session_id, "name": s.name, "description": s.description,
                                            "ack_time": s.ack_time_s, "ack_sequence_interval": s.ack_sequence_interval}
                                           for s in ev.sessions]
                    elif isinstance(ev, m.Error):
                        out.setdefault("errors", []).append({"code": ev.code, "description": ev.description})
        writer.write(conn.send(m.Disconnect()))
        await writer.drain()
    finally:
        writer.close()
    return out


@ipdr.command("sessions")
@click.option("--exporter", "exporters", multiple=True, metavar="HOST:PORT",
              help="CMTS to ask (repeatable; default: every ipdr.exporters entry).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per CMTS.")
@config_options
def sessions(config: Config, exporters: tuple[str, ...], timeout: float) -> None:
    """Connect to CMTSs, list the IPDR/SP sessions each offers (GET_SESSIONS) and disconnect; starts no flow."""
    targets = list(exporters) or [e.address for e in config.ipdr.exporters]
    if not targets:
        raise click.UsageError("no exporter: give --exporter or configure ipdr.exporters")
    failed = False
    for target in targets:
        host, port = split_endpoint(target)
        try:
            result = asyncio.run(_sessions(host, port, timeout, config.ipdr.vendor_id))
        except (OSError, TimeoutError, ConnectionError) as exc:
            result, failed = {"exporter": target, "error": str(exc) or type(exc).__name__}, True
        click.echo(json.dumps(result))
    if failed:
        raise SystemExit(1)


@ipdr.command("state")
@config_options
def state(config: Config) -> None:
    """Summarise the service-flow delta state (instances, tombstones, DSN watermarks), read-only."""
    from mediation.ipdr.journal import StateJournal

    path = config.data_path(config.ipdr.state_dir)
    click.echo(json.dumps({"path": str(path), **StateJournal(path, readonly=True).summary()}, indent=2))


COMMANDS = [ipdr]
