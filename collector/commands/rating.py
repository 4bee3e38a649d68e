"""Rating commands: ``flowmed rate``, ``flowmed rerate``, ``flowmed bill-run`` and ``flowmed explain``."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

import click

from collector.commands.common import config_options
from collector.config import Config
from collector.configtree import ConfigError

if TYPE_CHECKING:  # the rating floor is imported by the commands that run (a fast CLI start)
    from rating.job import RatingJob, RunReport
    from rating.timebase import Instant


def _instant(value: str, option: str) -> Instant:
    """A ``--from``/``--to`` value: a date or time without offset (each plan's own time zone) or an instant."""
    from rating.timebase import parse_instant

    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _job(config: Config) -> RatingJob:
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


def _run(job: RatingJob, kind: str = "rate", *, from_: Instant | None = None, to: Instant | None = None,
         subscriber: str | None = None) -> RunReport:
    from rating.lease import LeaseHeld
    from storage.errors import QueryError

    try:
        return job.run(kind, from_=from_, to=to, subscriber=subscriber)
    except LeaseHeld as exc:
        raise click.ClickException(str(exc)) from None
    except QueryError as exc:
        raise click.ClickException(f"cannot read the store: {exc}") from None


@click.command("rate")
@click.option("--follow", is_flag=True, help="Keep running: one rating run every rating.schedule_interval_s "
              "(SIGTERM or SIGINT stop it between runs; /metrics on rating.metrics_listen).")
@config_options
def rate_command(follow: bool, config: Config) -> None:
    """Rate closed usage intervals into rated_usage (only what changed is written; one job at a time)."""
    from rating.rerate import format_report

    job = _job(config)
    try:
        if not follow:
            click.echo("\n".join(format_report(_run(job))))
        else:
            _follow(job, config)
    except KeyboardInterrupt:
        pass
    finally:
        job.close()


def _follow(job: RatingJob, config: Config) -> None:
    """``flowmed rate --follow``: a run every ``rating.schedule_interval_s`` until SIGTERM / SIGINT, counted in
    metrics; a failed run (store down, bad plans file) is logged and the next one tried."""
    from collector import status as status_mod
    from rating.lease import LeaseHeld
    from rating.metrics import RatingMetrics
    from rating.rerate import format_report

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # finish the run in progress (its writes are idempotent anyway)
    metrics = RatingMetrics()
    http = None
    if config.rating.metrics_listen:
        try:
            http = status_mod.HttpServer(config.rating.metrics_listen, metrics.registry, metrics.status)
        except OSError as exc:  # a ListenError: it names the address and what it was for
            raise click.ClickException(str(exc)) from None
        http.start()
        click.echo(f"metrics on http://{http.address}/metrics", err=True)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = job.run()
            except LeaseHeld as exc:  # another host is rating now; try again next time
                metrics.failed("rate", time.monotonic() - started, "skipped")
                click.echo(f"skipped: {exc}", err=True)
            except Exception as exc:
                metrics.failed("rate", time.monotonic() - started)
                click.echo(f"rating run failed: {exc}", err=True)
            else:
                metrics.succeeded(report, time.monotonic() - started, time.time())
                click.echo("\n".join(format_report(report)))
            stop.wait(config.rating.schedule_interval_s)
    finally:
        if http is not None:
            http.close()


PERIOD_HELP = ("A date or time without offset (2026-11-01, 2026-11-01T06:00) is read in each plan's own time zone; "
               "with an offset or Z (2026-11-01T00:00:00+01:00) it is that instant.")


@click.command("rerate")
@click.option("--from", "from_", required=True,
              help="Start of the period (inclusive). " + PERIOD_HELP)
@click.option("--to", "to", required=True,
              help="End of the period (exclusive): --from 2026-10-01 --to 2026-11-01 is exactly October in every "
              "plan's time zone. " + PERIOD_HELP)
@click.option("--subscriber", default=None, help="Only this subscriber.")
@config_options
def rerate_command(from_: str, to: str, subscriber: str | None, config: Config) -> None:
    """Re-rate a period after a plan or assignment correction; prints the difference per subscriber.

    Every billing cycle that overlaps [--from, --to) in a plan's own calendar is re-rated whole (allowances and
    tiers are cycle-wide); the cycles re-rated are listed per plan calendar.
    """
    from rating.rerate import format_report

    start, end = _instant(from_, "--from"), _instant(to, "--to")
    job = _job(config)
    try:
        report = _run(job, "rerate", from_=start, to=end, subscriber=subscriber)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    finally:
        job.close()
    click.echo("\n".join(format_report(report)))


@click.command("bill-run")
@click.option("--cycle", required=True, help="Billing cycle YYYY-MM (the month the cycle starts in, in each plan's own "
              "calendar: time zone and cycle day).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--output", "output", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory for the lines, totals and control files.")
@click.option("--force", is_flag=True, help="Export even though the cycle has intervals not closed yet.")
@config_options
def bill_run_command(cycle: str, fmt: str, output: str, force: bool, config: Config) -> None:
    """Export a cycle's rated usage: per-subscriber lines and totals plus control rows (one per currency and plan
    calendar, each with that calendar's own cycle bounds)."""
    from rating.billrun import CycleOpen, bill_run
    from storage.errors import QueryError

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
        click.echo(f"control {row['cycle']} {row['currency']} {row['timezone'] or '(plan unknown)'} "
                   f"(cycle day {row['cycle_day']}, {row['cycle_start']} .. {row['cycle_end']}): "
                   f"{row['record_count']} records, {row['total_bytes']} bytes, {row['total_amount']} "
                   f"{row['currency']}, {row['subscribers']} subscribers"
                   + ("" if row["complete"] else " (PROVISIONAL: cycle not closed)"))


@click.command("explain")
@click.option("--subscriber", required=True, help="Subscriber id.")
@click.option("--cycle", required=True, help="Billing cycle YYYY-MM.")
@config_options
def explain_command(subscriber: str, cycle: str, config: Config) -> None:
    """Show how each amount of a subscriber's cycle was reached (usage, band, tier, allowance, rounding)."""
    from rating.explain import explain
    from storage.errors import QueryError

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
