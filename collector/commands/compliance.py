"""``flowmed trace`` (who held an address and port at an instant; a subscriber's connections) and
``flowmed ipdr-report`` (compliance records in the DoT IPDR / NAT log layout). See ``docs/compliance.md``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
import pyarrow as pa

from collector.commands.common import config_options
from collector.commands.mediation import parse_time
from collector.config import Config
from decoders.addresses import network_text, optional_address_text

if TYPE_CHECKING:  # imported where used: a fast CLI start
    from mediation.compliance.deterministic import DeterministicNat
    from storage.query import QueryEngine

_TARGET = click.option("--target", type=click.Choice(["auto", "store", "clickhouse"]), default="auto",
                       show_default=True, help="The embedded store, the ClickHouse server, or auto.")

def instant(text: str, option: str) -> int:
    """``--at``/``--from``/``--to`` as UTC milliseconds (ISO 8601 or epoch ms; epoch seconds are refused)."""
    return parse_time(text, option)


def _when(t: dt.datetime) -> str:
    """A time of the answer (timestamp, UTC) as text with milliseconds."""
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _where(addr: str, port: int) -> str:
    return f"{addr}:{port}" if port and addr else (addr or "-")


@dataclass(frozen=True)
class Holder:
    """One inside address that held the asked address and port at the instant (one per protocol at most)."""

    subscriber_id: str
    private_addr: str
    private_port: int
    protocol: int
    """IP protocol of the NAT row that holds (0: a port block or no NAT)."""
    nat: str
    """The NAT evidence as text ('' without NAT)."""
    binding: str
    """The binding of the inside address as text ('' when none)."""


@dataclass(frozen=True)
class Verdict:
    """What a trace answer says: who held it (``state`` 'held'), nobody (the mapping had 'ended', or 'none' matched),
    or several inside addresses in different protocols ('ambiguous': give ``--protocol``)."""

    state: str
    holders: tuple[Holder, ...] = ()
    nat: str = ""
    """The NAT evidence when nobody holds (the end that released the port), else the first holder's."""

    @property
    def subscriber_id(self) -> str:
        """The holder's subscriber id; '' for nobody, an unknown subscriber or an ambiguous answer."""
        return self.holders[0].subscriber_id if self.state == "held" else ""

    @property
    def private_addr(self) -> str:
        return self.holders[0].private_addr if self.state == "held" else ""

    @property
    def private_port(self) -> int:
        return self.holders[0].private_port if self.state == "held" else 0

    @property
    def binding(self) -> str:
        return self.holders[0].binding if self.state == "held" else ""

    def line(self) -> str:
        """The verdict as one line of text (what the table output prints first, and the CSV/JSON verdict row's
        detail)."""
        if self.state == "ambiguous":
            each = "; ".join(f"protocol {h.protocol}: {h.subscriber_id or 'unknown'}, inside address "
                             f"{_where(h.private_addr, h.private_port)}, NAT: {h.nat}, binding: {h.binding or 'none'}"
                             for h in self.holders)
            return ("holder: ambiguous (the port was held in several protocols by different inside addresses; give "
                    f"--protocol); {each}")
        if self.state == "held":
            h = self.holders[0]
            who = h.subscriber_id or "unknown (no binding of the inside address)"
            return (f"holder: {who}; inside address {_where(h.private_addr, h.private_port)}; NAT: {h.nat or 'none'}; "
                    f"binding: {h.binding or 'none'}")
        who = "nobody (the NAT mapping had ended)" if self.state == "ended" else \
            "nobody (no NAT mapping or binding matched)"
        return f"holder: {who}; inside address -; NAT: {self.nat or 'none'}; binding: none"


def tidy(result: pa.Table) -> pa.Table:
    """A trace answer for people: addresses as :mod:`decoders.addresses` prints them everywhere (IPv4 without
    ``::ffff:``, the zero address as empty), times as UTC timestamps with milliseconds, a binding's network as
    ``10.1.0.0/24`` (a host as its address) also in its detail."""
    cols = {}
    for name in result.column_names:
        col = result.column(name)
        if name in ("private_addr", "public_addr", "dst_addr", "exporter"):
            col = pa.array([optional_address_text(v) for v in col.to_pylist()], pa.string())
        elif name in ("time_from", "time_to"):  # UInt64 milliseconds on every backend
            col = pa.array(col.to_numpy(zero_copy_only=False).astype("int64"), pa.int64()).cast(
                pa.timestamp("ms", tz="UTC"))
        elif name == "network":
            col = pa.array([_network(v) for v in col.to_pylist()], pa.string())
        cols[name] = col
    if "network" in cols and "detail" in cols:  # "radius session a1" -> "radius 100.64.0.1 session a1"
        cols["detail"] = pa.array([f"{d.split(' ', 1)[0]} {n} {d.split(' ', 1)[1]}" if n and " " in d else d
                                   for d, n in zip(cols["detail"].to_pylist(), cols["network"].to_pylist(),
                                                   strict=True)], pa.string())
    return pa.table(cols)


def _network(text: str | None) -> str:
    if not text:
        return ""
    addr, _, plen = text.partition("/")
    return network_text(addr, int(plen or 128))


def verdict(answer: pa.Table, at_ms: int | None = None, window_s: int = 60) -> Verdict:
    """The holder named by an address trace answer (:class:`mediation.compliance.trace.AddressQuery` at ``at_ms``).

    A NAT row's detail reads ``<scope> <start|end|observed> ...``: a start holds, an end means nobody held the port,
    an observed translation holds (only where no start or end was logged) until its flow ended plus the window, as
    the query decides. Each holding row is matched with the binding of its inside address and port. Holders with
    different inside addresses (sessions of several protocols on one public port) that do not all name the same
    subscriber make the answer ambiguous.
    """
    rows = answer.to_pylist()
    nats = [r for r in rows if r["evidence"] == "nat"]
    bindings = {(r["private_addr"], int(r["private_port"])): r for r in rows if r["evidence"] == "binding"}

    def kind(r: dict[str, Any]) -> str:
        return "start" if "deterministic" in r["detail"] else (r["detail"].split(" ") + [""])[1]

    def nat_text(r: dict[str, Any]) -> str:
        if "deterministic" in r["detail"]:
            return f"{r['detail']}: {r['public_addr']} ports {r['public_port_start']}-{r['public_port_end']}"
        return f"{r['detail']} at {_when(r['time_from'])} by {r['exporter']}"

    def binding_text(r: dict[str, Any] | None) -> str:
        return "" if r is None else f"{r['detail']} from {_when(r['time_from'])}"

    if not nats:  # not behind NAT: the address itself is the inside address
        b = next(iter(bindings.values()), None)
        if b is None:
            return Verdict("none")
        return Verdict("held", (Holder(b["subscriber_id"], b["private_addr"], int(b["private_port"]), 0, "",
                                       binding_text(b)),))
    logged = any(kind(r) in ("start", "end") for r in nats)
    held = [r for r in nats if kind(r) == "start" or (kind(r) == "observed" and not logged and (
        at_ms is None or r["time_to"].timestamp() * 1000 + window_s * 1000 >= at_ms))]
    if not held:
        ended = [r for r in nats if kind(r) == "end"]
        return Verdict("ended" if ended else "none", (), nat_text((ended or nats)[0]))
    holders = []
    for r in held:
        b = bindings.get((r["private_addr"], int(r["private_port"])))
        holders.append(Holder(b["subscriber_id"] if b else "", r["private_addr"], int(r["private_port"]),
                              int(r["protocol"]), nat_text(r), binding_text(b)))
    subscribers = {h.subscriber_id for h in holders}
    if len({h.private_addr for h in holders}) > 1 and (len(subscribers) > 1 or "" in subscribers):
        return Verdict("ambiguous", tuple(holders), holders[0].nat)
    return Verdict("held", tuple(holders), holders[0].nat)


def verdict_row(v: Verdict, address: str, port: int | None, at_ms: int) -> dict[str, object]:
    """The verdict as an answer row (evidence 'verdict', first in CSV and JSON answers): the holder (empty unless
    exactly one), its inside address and port, the asked address and port, the instant, the verdict line."""
    h = v.holders[0] if v.state == "held" else None
    return {"evidence": "verdict", "time_from": at_ms, "time_to": at_ms, "subscriber_id": v.subscriber_id,
            "private_addr": h.private_addr if h else "", "private_port": h.private_port if h else 0,
            "public_addr": optional_address_text(address), "public_port_start": port or 0,
            "public_port_end": port or 0, "protocol": h.protocol if h else 0, "dst_addr": "", "dst_port": 0,
            "bytes": 0, "exporter": "", "detail": v.line(), "network": ""}


def with_verdict(answer: pa.Table, row: dict[str, object]) -> pa.Table:
    """``answer`` with the verdict row first (same columns and types)."""
    arrays = [pa.array([row[f.name]], pa.int64()).cast(f.type) if pa.types.is_timestamp(f.type)
              else pa.array([row[f.name]]).cast(f.type) for f in answer.schema]
    return pa.concat_tables([pa.Table.from_arrays(arrays, schema=answer.schema), answer])


def run_trace(engine: QueryEngine, *, address: str | None = None, port: int | None = None, at_ms: int | None = None,
              window_s: int = 60, lookback_s: int = 86400, subscriber: str | None = None, from_ms: int | None = None,
              to_ms: int | None = None, protocol: int | None = None,
              deterministic: DeterministicNat | None = None) -> pa.Table:
    """Run the one trace query on ``engine``; the tidy answer. Either ``address`` and ``at_ms`` (``port`` behind
    NAT), or ``subscriber``, ``from_ms`` and ``to_ms``."""
    from mediation.compliance.trace import EVIDENCE, AddressQuery, SubscriberQuery

    q: AddressQuery | SubscriberQuery
    if address is not None:
        if at_ms is None:
            raise ValueError("an address trace needs at_ms")
        mapping = deterministic.inside_of(address, port) if deterministic and port is not None else None
        q = AddressQuery(address, int(at_ms), port, window_s, lookback_s, protocol=protocol, deterministic=mapping)
    else:
        if subscriber is None or from_ms is None or to_ms is None:
            raise ValueError("a subscriber trace needs subscriber, from_ms and to_ms")
        q = SubscriberQuery(subscriber, int(from_ms), int(to_ms))
    answer = tidy(engine.query(q.sql(engine.source), text_addresses=False))
    # UNION ALL parts come back in any order on a server: evidence kind first, then time
    rank = pa.array([EVIDENCE.index(e) for e in answer.column("evidence").to_pylist()], pa.int32())
    answer = answer.append_column("_rank", rank)
    answer = answer.sort_by([("_rank", "ascending"), ("time_from", "ascending"), ("private_port", "ascending")])
    return answer.drop_columns(["_rank"])


@click.command("trace")
@click.option("--address", help="Public (or any) IPv4/IPv6 address to trace.")
@click.option("--port", type=click.IntRange(0, 65535), help="Public port behind NAT (needed on shared addresses).")
@click.option("--protocol", type=click.IntRange(0, 255), help="IP protocol of the session (6 TCP, 17 UDP): sessions "
              "of other protocols on the same public port are ignored. Without it each protocol is decided on its "
              "own, and sessions of several protocols by different subscribers make the answer ambiguous.")
@click.option("--at", "at", help="Instant, ISO 8601 (UTC unless an offset is given, milliseconds kept) or epoch "
              "milliseconds (epoch seconds are refused).")
@click.option("--window", "window_s", type=click.IntRange(0, 86400), default=60, show_default=True,
              help="Seconds around --at for matching flows (and how long an observed translation holds).")
@click.option("--subscriber", help="Subscriber id: list its bindings and connections between --from and --to.")
@click.option("--from", "from_", help="Start (with --subscriber).")
@click.option("--to", "to", help="End, exclusive (with --subscriber).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@_TARGET
@config_options
def trace_command(address: str | None, port: int | None, protocol: int | None, at: str | None, window_s: int,
                  subscriber: str | None, from_: str | None, to: str | None, fmt: str, target: str,
                  config: Config) -> None:
    """Who held an address (and, behind CGNAT, a public port) at an instant, with the evidence: the NAT session or
    port block, the RADIUS session or static binding, and the matching flows. Or, with --subscriber, a
    subscriber's bindings and connections over a period.

    \b
    Examples:
      flowmed trace --address 203.0.113.7 --port 40112 --at 2026-03-02T14:03:22Z
      flowmed trace --subscriber alice --from 2026-03-02T00:00:00Z --to 2026-03-03T00:00:00Z
    """
    from mediation.compliance.deterministic import DeterministicNat
    from storage.errors import QueryError
    from storage.query import QueryEngine, render

    if (address is None) == (subscriber is None):
        raise click.UsageError("give either --address (with --at) or --subscriber (with --from and --to)")
    if address is not None:
        if at is None:
            raise click.UsageError("--address needs --at")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise click.BadParameter(f"{address!r} is not an IP address", param_hint="--address") from None
        at_ms = instant(at, "--at")
    elif from_ is None or to is None:
        raise click.UsageError("--subscriber needs --from and --to")
    else:
        from_ms, to_ms = instant(from_, "--from"), instant(to, "--to")
    try:
        engine = QueryEngine.for_config(config, target)
    except Exception as exc:
        raise click.ClickException(f"cannot open the {target} query target: {exc}") from None
    try:
        if address is not None:
            answer = run_trace(engine, address=address, port=port, at_ms=at_ms, window_s=window_s,
                               lookback_s=config.compliance.nat_lookback_s, protocol=protocol,
                               deterministic=DeterministicNat(config.compliance.deterministic))
        else:
            answer = run_trace(engine, subscriber=subscriber, from_ms=from_ms, to_ms=to_ms)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    if address is not None:
        v = verdict(answer, at_ms, window_s)
        if fmt == "table":
            sys.stdout.write(v.line() + "\n")
            if port is None and v.nat.split(" ")[0] in ("session", "block", "flow"):
                sys.stdout.write("note: this address is behind NAT and shared: the holder depends on the port; give "
                                 "--port for an answer\n")
            sys.stdout.write("\n")
        else:  # CSV and JSON carry the verdict as their first row
            answer = with_verdict(answer, verdict_row(v, address, port, at_ms))
    sys.stdout.write(render(answer, fmt))


@click.command("ipdr-report")
@click.option("--from", "from_", required=True, help="Start, ISO 8601 (UTC unless an offset is given) or epoch "
              "milliseconds.")
@click.option("--to", "to", required=True, help="End (exclusive).")
@click.option("--address", help="Address (source or public NAT address) to report.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port with --address (source or public NAT port).")
@click.option("--subscriber", help="Subscriber id to report.")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True)
@click.option("--layout", type=click.Choice(["dot", "generic"]), default="dot", show_default=True,
              help="dot: compliance.report_fields (the DoT IPDR and NAT log parameters, in order); generic: every "
                   "field.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (required for xlsx; CSV goes to "
                                                                    "stdout without it).")
@_TARGET
@config_options
def ipdr_report_command(from_: str, to: str, address: str | None, port: int | None, subscriber: str | None, fmt: str,
                        layout: str, output: str | None, target: str, config: Config) -> None:
    """Compliance records (IP detail records) of a period for an address or a subscriber, as CSV or XLSX, with the
    customer's name, address, phone and e-mail from compliance.directory_file."""
    from mediation.compliance.deterministic import DeterministicNat
    from mediation.compliance.report import (
        GENERIC_FIELDS,
        ReportError,
        ReportQuery,
        check_fields,
        fill_deterministic,
        fill_public_side,
        keep_for_address,
        load_directory,
        nat_sql,
        report_rows,
        report_sql,
        to_csv,
        to_xlsx,
    )
    from storage.errors import QueryError
    from storage.query import QueryEngine

    if (address is None) == (subscriber is None):
        raise click.UsageError("give either --address [--port] or --subscriber")
    if port is not None and address is None:
        raise click.UsageError("--port needs --address")
    if fmt == "xlsx" and not output:
        raise click.UsageError("--format xlsx needs --output FILE")
    try:
        fields = check_fields(config.compliance.report_fields if layout == "dot" else GENERIC_FIELDS)
        directory = load_directory(config.compliance.directory_file)
        if address is not None:
            ipaddress.ip_address(address)
    except (ReportError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    q = ReportQuery(instant(from_, "--from"), instant(to, "--to"), address, port, subscriber)
    try:
        engine = QueryEngine.for_config(config, target)
    except Exception as exc:
        raise click.ClickException(f"cannot open the {target} query target: {exc}") from None
    try:
        lookback_s = config.compliance.nat_lookback_s
        result = engine.query(report_sql(q, engine.source, lookback_s), text_addresses=False)
        rows = report_rows(result, directory)
        # records from routers inside the NAT carry no public side: take it from the NAT log
        extra = nat_sql(rows, q.from_ms, q.to_ms, lookback_s, engine.source)
        if extra is not None:
            fill_public_side(rows, engine.query(extra, text_addresses=False))
        fill_deterministic(rows, DeterministicNat(config.compliance.deterministic))
        if address is not None:  # inside records whose filled public side is another address or port go
            rows = keep_for_address(rows, address, port)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    if fmt == "xlsx":
        assert output is not None  # --format xlsx without --output was refused above
        to_xlsx(rows, fields, output)
        click.echo(f"{len(rows)} records written to {output}", err=True)
    elif output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(to_csv(rows, fields))
        click.echo(f"{len(rows)} records written to {output}", err=True)
    else:
        sys.stdout.write(to_csv(rows, fields))


COMMANDS = [trace_command, ipdr_report_command]
