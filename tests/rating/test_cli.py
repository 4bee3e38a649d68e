"""flowmed rate / rerate / bill-run / explain end to end on the embedded store, with hand-computed figures."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import load
from mediation.tables import USAGE
from storage.store import ParquetStore
from tests.rating.helpers import HOME_PLAN
from tests.rating.storeutil import usage_batch


@pytest.fixture
def site(tmp_path):
    (tmp_path / "plans.toml").write_text(HOME_PLAN)
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n"
                                              "bob,home,2026-01-01T00:00:00+01:00\n")
    cfg = tmp_path / "collector.toml"
    # The usage is of October 2026 and the commands use the real clock: look back far enough for any run date.
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[rating]\nlookback_cycles = 240\n')
    store = ParquetStore.for_config(load(cfg), housekeeper=False)
    store.write(USAGE, usage_batch([
        ("alice", "2026-10-05T10:00:00+02:00", "down", "default", 2_500_000_000),  # Monday, peak
        ("alice", "2026-10-05T10:00:00+02:00", "up", "default", 1_000_000_000),
        ("bob", "2026-10-10T12:00:00+02:00", "down", "cdn", 4_000_000_000),        # Saturday, zero-rated
        ("bob", "2026-10-10T12:00:00+02:00", "down", "default", 1_000_000_000),    # in the allowance
    ]), 1)
    store.close()
    return tmp_path, ["--config", str(cfg)]


def test_rate_bill_run_explain(site):
    root, opts = site
    runner = CliRunner()
    r = runner.invoke(main, ["rate", *opts])
    assert r.exit_code == 0, r.output
    assert "new 4" in r.output
    r = runner.invoke(main, ["rate", *opts])
    assert "new 0, changed 0, voided 0, unchanged 4" in r.output

    out = root / "export"
    r = runner.invoke(main, ["bill-run", "--cycle", "2026-10", "--output", str(out), *opts])
    assert r.exit_code == 0, r.output
    lines = list(csv.DictReader(open(out / "bill-run-2026-10-lines.csv")))
    got = {(x["subscriber_id"], x["rate_card"], x["band"]): (int(x["bytes"]), int(x["amount_micros"]), x["amount"])
           for x in lines}
    # alice: 2.5 GB peak download, 0.5 GB over the allowance * 1.20 = 0.60; 1 GB upload * 0.3333 = 0.3333.
    assert got == {("alice", "download", "peak"): (2_500_000_000, 600_000, "0.600000"),
                   ("alice", "upload", "peak"): (1_000_000_000, 333_300, "0.333300"),
                   ("bob", "zero_rated", "offpeak"): (4_000_000_000, 0, "0.000000"),
                   ("bob", "download", "offpeak"): (1_000_000_000, 0, "0.000000")}
    totals = {x["subscriber_id"]: (int(x["records"]), int(x["amount_micros"]))
              for x in csv.DictReader(open(out / "bill-run-2026-10-totals.csv"))}
    assert totals == {"alice": (2, 933_300), "bob": (2, 0)}
    (control,) = list(csv.DictReader(open(out / "bill-run-2026-10-control.csv")))
    assert (control["record_count"], control["total_bytes"], control["total_amount_micros"], control["total_amount"],
            control["currency"], control["complete"]) == ("4", "8500000000", "933300", "0.933300", "EUR", "true")

    # A cycle in the future is not closed: refused unless forced.
    r = runner.invoke(main, ["bill-run", "--cycle", "2099-11", "--output", str(out), *opts])
    assert r.exit_code == 1 and "not closed" in r.output
    r = runner.invoke(main, ["bill-run", "--cycle", "2099-11", "--force", "--format", "parquet", "--output", str(out),
                             *opts])
    assert r.exit_code == 0 and "PROVISIONAL" not in r.output  # no rows, no currency line
    assert (out / "bill-run-2099-11-control.parquet").exists()

    r = runner.invoke(main, ["explain", "--subscriber", "alice", "--cycle", "2026-10", *opts])
    assert r.exit_code == 0, r.output
    text = r.output
    assert "Mon 2026-10-05 10:00 CEST  down default  band peak: 2 500 000 000 bytes" in text
    assert "allowance 2 000 000 000 bytes: 2 000 000 000 bytes of this record inside it" in text
    assert "tier 1 (up to 5 000 000 000): 500 000 000 bytes at 1.20 EUR/GB = 0.6 EUR" in text
    assert "rounded once (half_up) to 600 000 micro-EUR" in text
    assert "stored: version 1, same amount" in text
    assert "total 2026-10: 0.933300 EUR (933 300 micro-EUR) over 2 records" in text


def test_rerate_reports_difference_after_assignment_correction(site):
    root, opts = site
    runner = CliRunner()
    assert runner.invoke(main, ["rate", *opts]).exit_code == 0
    # bob should have been on a plan without allowance, download at 0.10/GB flat, from October.
    (root / "plans.toml").write_text(HOME_PLAN + """
[[plan]]
id = "lite"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "EUR"
timezone = "Europe/Berlin"
[[plan.rate]]
name = "all"
direction = "total"
price = "0.10"
""")
    (root / "assignments.csv").write_text("subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n"
                                          "bob,lite,2026-01-01T00:00:00+01:00\n")
    r = runner.invoke(main, ["rerate", "--from", "2026-10-01", "--to", "2026-10-31", "--subscriber", "bob", *opts])
    assert r.exit_code == 0, r.output
    # bob: 1 GB default at 0.10 = 0.10 EUR; the cdn class is not zero-rated on "lite": 4 GB * 0.10 = 0.40 EUR.
    assert "bob\tEUR\t0.000000\t0.500000\t0.500000" in r.output
    assert "alice" not in r.output.split("subscriber\t")[-1]


def test_bad_plans_file_is_a_clear_error(site):
    root, opts = site
    (root / "plans.toml").write_text(HOME_PLAN.replace('price = "0.3333"', "price = 0.3333"))
    r = CliRunner().invoke(main, ["rate", *opts])
    assert r.exit_code == 1
    assert "plan[0].rate[1].price: got 0.3333, expected a decimal amount written as a string" in r.output
    r = CliRunner().invoke(main, ["bill-run", "--cycle", "2026-13", *opts])
    assert r.exit_code != 0 and "plan[0].rate[1].price" in r.output
    (root / "plans.toml").write_text(HOME_PLAN)
    r = CliRunner().invoke(main, ["bill-run", "--cycle", "2026-13", *opts])
    assert r.exit_code == 2 and "expected YYYY-MM" in r.output


FAIR_USE_PLAN = """
[[plan]]
id = "fup"
version = 1
active_from = "2026-01-01T00:00:00Z"
currency = "USD"
timezone = "UTC"
prorate = false
fair_usage_bytes = 3000000000
[[plan.rate]]
name = "all"
direction = "total"
price = "1.00"
"""


def test_explain_names_the_fair_usage_threshold_and_counts_no_unrated_usage(tmp_path):
    (tmp_path / "plans.toml").write_text(FAIR_USE_PLAN)
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\ncarol,fup,2026-01-01T00:00:00Z\n")
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[rating]\nlookback_cycles = 240\n')
    store = ParquetStore.for_config(load(cfg), housekeeper=False)
    store.write(USAGE, usage_batch([("carol", f"2026-10-0{d}T10:00:00+00:00", "down", "default", 1_000_000_000)
                                    for d in range(2, 6)]), 1)
    store.close()
    runner = CliRunner()
    assert runner.invoke(main, ["rate", "--config", str(cfg)]).exit_code == 0
    r = runner.invoke(main, ["explain", "--subscriber", "carol", "--cycle", "2026-10", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "fair-usage threshold reached at 3 000 000 000 bytes" in r.output
    assert "unrated usage" not in r.output  # every byte was rated (the fourth GB at 0)
    assert "total 2026-10: 3.000000 USD" in r.output
