"""``flowmed trace`` (who held an address and port at an instant; a subscriber's connections) and
``flowmed ipdr-report`` (compliance records in the DoT IPDR / NAT log layout). See ``docs/compliance.md``."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

import click
import pyarrow as pa

from collector.commands.common import config_options
from collector.commands.mediation import parse_time

_TARGET = click.option("--target", type=click.Choice(["auto", "store", "clickhouse"]), default="auto",
                       show_default=True, help="The embedded store, the ClickHouse server, or auto.")


@dataclass
class Verdict:
    """What a trace answer says: who held it (or nobody), through what."""

    subscriber_id: str
    private_addr: str
    private_port: int
    nat: str
    binding: str

    def line(self) -> str:
        if self.subscriber_id:
            who = self.subscriber_id
        elif (self.nat.split(" ") + [""])[1] == "end":
            who = "nobody (the NAT mapping had ended)"
        elif self.private_addr:
            who = "unknown (no binding of the inside address)"
        else:
            who = "nobody (no NAT mapping or binding matched)"
        where = f"{self.private_addr}:{self.private_port}" if self.private_port else self.private_addr
        return f"holder: {who}; inside address {where or '-'}; NAT: {self.nat or 'none'}; binding: " \
               f"{self.binding or 'none'}"


def _addr(text: str) -> str:
    if not text:
        return ""
    a = ipaddress.IPv6Address(text)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else ("" if a.packed == bytes(16) else str(a))


def tidy(result: pa.Table) -> pa.Table:
    """Addresses of a trace answer as plain text (IPv4 without ``::ffff:``, zero as empty)."""
    cols = {}
    for name in result.column_names:
        col = result.column(name)
        if name in ("private_addr", "public_addr", "dst_addr", "exporter"):
            col = pa.array([_addr(v) for v in col.to_pylist()], pa.string())
        elif name in ("time_from", "time_to"):  # UInt32 seconds on every backend
            col = pa.array(col.to_numpy(zero_copy_only=False).astype("int64"), pa.int64()).cast(
                pa.timestamp("s", tz="UTC"))
        cols[name] = col
    return pa.table(cols)


def verdict(answer: pa.Table, at_ms: int | None = None, window_s: int = 60) -> Verdict:
    """The holder named by an address trace answer (:class:`mediation.trace.AddressQuery` at ``at_ms``).

    The NAT row's detail reads ``<scope> <start|end|observed> ...``: a start holds, an end means nobody held the
    port, an observed translation holds until its flow ended plus the window (as the query decides).
    """
    rows = answer.to_pylist()
    nat = next((r for r in rows if r["evidence"] == "nat"), None)
    binding = next((r for r in rows if r["evidence"] == "binding"), None)
    nat_text = ""
    if nat is not None and "deterministic" in nat["detail"]:
        nat_text = f"{nat['detail']}: {nat['public_addr']} ports {nat['public_port_start']}-{nat['public_port_end']}"
    elif nat is not None:
        nat_text = f"{nat['detail']} at {nat['time_from']:%Y-%m-%d %H:%M:%S}Z by {nat['exporter']}"
    if binding is not None:
        return Verdict(binding["subscriber_id"], binding["private_addr"], int(binding["private_port"]), nat_text,
                       f"{binding['detail']} from {binding['time_from']:%Y-%m-%d %H:%M:%S}Z")
    if nat is None:
        return Verdict("", "", 0, "", "")
    kind = (nat["detail"].split(" ") + [""])[1]
    held = kind == "start" or (kind == "observed" and (
        at_ms is None or nat["time_to"].timestamp() * 1000 + window_s * 1000 >= at_ms))
    return Verdict("", nat["private_addr"] if held else "", int(nat["private_port"]) if held else 0, nat_text, "")


def run_trace(engine, *, address: str | None = None, port: int | None = None, at_ms: int | None = None,
              window_s: int = 60, lookback_s: int = 86400, subscriber: str | None = None, from_ms: int | None = None,
              to_ms: int | None = None, protocol: int | None = None, deterministic=None) -> pa.Table:
    """Run the one trace query on ``engine`` (a :class:`mediation.query.QueryEngine`); the tidy answer."""
    from mediation.trace import EVIDENCE, AddressQuery, SubscriberQuery

    if address is not None:
        mapping = deterministic.inside_of(address, port) if deterministic and port is not None else None
        q = AddressQuery(address, int(at_ms), port, window_s, lookback_s, protocol=protocol, deterministic=mapping)
    else:
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
              "of other protocols on the same public port are ignored.")
@click.option("--at", "at", help="Instant, ISO 8601 (UTC unless an offset is given) or epoch ms.")
@click.option("--window", "window_s", type=click.IntRange(0, 86400), default=60, show_default=True,
              help="Seconds around --at for matching flows (and how long an observed translation holds).")
@click.option("--subscriber", help="Subscriber id: list its bindings and connections between --from and --to.")
@click.option("--from", "from_", help="Start (with --subscriber).")
@click.option("--to", "to", help="End, exclusive (with --subscriber).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@_TARGET
@config_options
def trace_command(address, port, protocol, at, window_s, subscriber, from_, to, fmt, target, config) -> None:
    """Who held an address (and, behind CGNAT, a public port) at an instant, with the evidence: the NAT session or
    port block, the RADIUS session or static binding, and the matching flows. Or, with --subscriber, a
    subscriber's bindings and connections over a period.

    \b
    Examples:
      flowmed trace --address 203.0.113.7 --port 40112 --at 2026-03-02T14:03:22Z
      flowmed trace --subscriber alice --from 2026-03-02T00:00:00Z --to 2026-03-03T00:00:00Z
    """
    from mediation.deterministic import DeterministicNat
    from mediation.query import QueryEngine, QueryError, render

    if (address is None) == (subscriber is None):
        raise click.UsageError("give either --address (with --at) or --subscriber (with --from and --to)")
    if address is not None:
        if at is None:
            raise click.UsageError("--address needs --at")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise click.BadParameter(f"{address!r} is not an IP address", param_hint="--address") from None
    elif from_ is None or to is None:
        raise click.UsageError("--subscriber needs --from and --to")
    try:
        engine = QueryEngine.for_config(config, target)
    except Exception as exc:
        raise click.ClickException(f"cannot open the {target} query target: {exc}") from None
    try:
        if address is not None:
            answer = run_trace(engine, address=address, port=port, at_ms=parse_time(at), window_s=window_s,
                               lookback_s=config.compliance.nat_lookback_s, protocol=protocol,
                               deterministic=DeterministicNat(config.compliance.deterministic))
        else:
            answer = run_trace(engine, subscriber=subscriber, from_ms=parse_time(from_), to_ms=parse_time(to))
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    if address is not None and fmt == "table":
        v = verdict(answer, parse_time(at), window_s)
        sys.stdout.write(v.line() + "\n")
        if port is None and v.nat.split(" ")[0] in ("session", "block", "flow"):
            sys.stdout.write("note: this address is behind NAT and shared: the holder depends on the port; give "
                             "--port for an answer\n")
        sys.stdout.write("\n")
    sys.stdout.write(render(answer, fmt))


@click.command("ipdr-report")
@click.option("--from", "from_", required=True, help="Start, ISO 8601 (UTC unless an offset is given) or epoch ms.")
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
def ipdr_report_command(from_, to, address, port, subscriber, fmt, layout, output, target, config) -> None:
    """Compliance records (IP detail records) of a period for an address or a subscriber, as CSV or XLSX, with the
    customer's name, address, phone and e-mail from compliance.directory_file."""
    from mediation.compliance_report import (
        GENERIC_FIELDS,
        ReportError,
        ReportQuery,
        check_fields,
        fill_deterministic,
        fill_public_side,
        load_directory,
        nat_sql,
        report_rows,
        report_sql,
        to_csv,
        to_xlsx,
    )
    from mediation.deterministic import DeterministicNat
    from mediation.query import QueryEngine, QueryError

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
    q = ReportQuery(parse_time(from_), parse_time(to), address, port, subscriber)
    try:
        engine = QueryEngine.for_config(config, target)
    except Exception as exc:
        raise click.ClickException(f"cannot open the {target} query target: {exc}") from None
    try:
        result = engine.query(report_sql(q, engine.source), text_addresses=False)
        rows = report_rows(result, directory)
        # records from routers inside the NAT carry no public side: take it from the NAT log
        extra = nat_sql(rows, q.from_ms, q.to_ms, config.compliance.nat_lookback_s, engine.source)
        if extra is not None:
            fill_public_side(rows, engine.query(extra, text_addresses=False))
        fill_deterministic(rows, DeterministicNat(config.compliance.deterministic))
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()
    if fmt == "xlsx":
        to_xlsx(rows, fields, output)
        click.echo(f"{len(rows)} records written to {output}", err=True)
    elif output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(to_csv(rows, fields))
        click.echo(f"{len(rows)} records written to {output}", err=True)
    else:
        sys.stdout.write(to_csv(rows, fields))


COMMANDS = [trace_command, ipdr_report_command]
