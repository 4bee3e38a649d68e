"""Rating commands: ``flowmed rate``, ``flowmed rerate``, ``flowmed bill-run`` and ``flowmed explain``."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import click

from collector.commands.common import config_options
from collector.configtree import ConfigError


def _instant(value: str) -> int:
    """``2026-11-01``, ``2026-11-01T00:00:00Z`` or with an offset -> UTC ms (a bare date or time means UTC)."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a date or time such as 2026-11-01 or "
                                 "2026-11-01T00:00:00+01:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _job(config):
    from rating.job import RatingJob

    try:
        job = RatingJob(config)
    except ConfigError as exc:
        raise click.ClickException(f"rating configuration error: {exc}") from None
    try:
        job.plans  # noqa: B018 - load and validate now, for a clear error
        job.assignments  # noqa: B018
    except BaseException as exc:
        job.close()  # its query engine holds the process's chDB session
        if isinstance(exc, ConfigError):
            raise click.ClickException(f"rating configuration error: {exc}") from None
        raise
    return job


def _run(job, *args, **kwargs):
    from mediation.query import QueryError
    from rating.lease import LeaseHeld

    try:
        return job.run(*args, **kwargs)
    except LeaseHeld as exc:
        raise click.ClickException(str(exc)) from None
    except QueryError as exc:
        raise click.ClickException(f"cannot read the store: {exc}") from None


@click.command("rate")
@click.option("--follow", is_flag=True, help="Keep running: one rating run every rating.schedule_interval_s.")
@config_options
def rate_command(follow: bool, config) -> None:
    """Rate closed usage intervals into rated_usage (only what changed is written; one job at a time)."""
    from rating.lease import LeaseHeld
    from rating.rerate import format_report

    job = _job(config)
    try:
        while True:
            try:
                report = _run(job) if not follow else job.run()
                click.echo("\n".join(format_report(report)))
            except LeaseHeld as exc:  # --follow: another host is rating now; try again next time
                click.echo(f"skipped: {exc}", err=True)
            except Exception as exc:  # --follow keeps going through a failed run (store down, bad plans file)
                if not follow:
                    raise
                click.echo(f"rating run failed: {exc}", err=True)
            if not follow:
                break
            time.sleep(config.rating.schedule_interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        job.close()


@click.command("rerate")
@click.option("--from", "from_", required=True, help="Start of the period (date or time; whole cycles are redone).")
@click.option("--to", "to", required=True, help="End of the period (exclusive).")
@click.option("--subscriber", default=None, help="Only this subscriber.")
@config_options
def rerate_command(from_: str, to: str, subscriber: str | None, config) -> None:
    """Re-rate a period after a plan or assignment correction; prints the difference per subscriber."""
    from rating.rerate import format_report

    start, end = _instant(from_), _instant(to)
    if end <= start:
        raise click.BadParameter("--to must be after --from")
    job = _job(config)
    try:
        report = _run(job, "rerate", from_ms=start, to_ms=end, subscriber=subscriber)
    finally:
        job.close()
    click.echo("\n".join(format_report(report)))


@click.command("bill-run")
@click.option("--cycle", required=True, help="Billing cycle YYYY-MM (the month the cycle starts in).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--output", "output", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory for the lines, totals and control files.")
@click.option("--force", is_flag=True, help="Export even though the cycle has intervals not closed yet.")
@config_options
def bill_run_command(cycle: str, fmt: str, output: str, force: bool, config) -> None:
    """Export a cycle's rated usage: per-subscriber lines and totals plus a control record."""
    from mediation.query import QueryError
    from rating.billrun import CycleOpen, bill_run

    job = _job(config)
    try:
        run = bill_run(job.engine.query, job.plans, cycle, job.closed_until(int(time.time() * 1000)), force=force)
    except CycleOpen as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cycle") from None
    except QueryError as exc:
        raise click.ClickException(f"cannot read the store: {exc}") from None
    finally:
        job.close()
    for path in run.write(output, fmt):
        click.echo(str(path))
    for row in run.control.to_pylist():
        click.echo(f"control {row['cycle']} {row['currency']}: {row['record_count']} records, {row['total_bytes']} "
                   f"bytes, {row['total_amount']} {row['currency']}, {row['subscribers']} subscribers"
                   + ("" if row["complete"] else " (PROVISIONAL: cycle not closed)"))


@click.command("explain")
@click.option("--subscriber", required=True, help="Subscriber id.")
@click.option("--cycle", required=True, help="Billing cycle YYYY-MM.")
@config_options
def explain_command(subscriber: str, cycle: str, config) -> None:
    """Show how each amount of a subscriber's cycle was reached (usage, band, tier, allowance, rounding)."""
    from mediation.query import QueryError
    from rating.explain import explain

    job = _job(config)
    try:
        lines = explain(job, subscriber, cycle)
    except QueryError as exc:
        raise click.ClickException(f"cannot read the store: {exc}") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cycle") from None
    finally:
        job.close()
    sys.stdout.write("\n".join(lines) + "\n")


COMMANDS = [rate_command, rerate_command, bill_run_command, explain_command]
