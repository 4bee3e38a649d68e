"""The console in a real browser: ``flowmed console`` over the store built from known flows, every page opened in
headless Chromium (Debian's chromium and chromium-driver through selenium). Each page's numbers are compared with
SQL answers written here, its charts must have drawn data, the browser console must hold no error, and a screenshot
of each page is saved (``$FLOWMED_CONSOLE_ARTIFACTS``, else a pytest temporary directory)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from storage.query import QueryEngine
from tests.console.dataset import CYCLE, EXPORTERS, PUBLIC, UNBALANCED
from tests.fixtures.peers import require_tool

pytestmark = [pytest.mark.external, pytest.mark.slow]

WINDOW = "from=2026-11-02T00:00&to=2026-11-04T00:00"
T_FROM, T_TO = "2026-11-02 00:00:00", "2026-11-04 00:00:00"


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="flowmed-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-GB", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(90)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("FLOWMED_CONSOLE_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def sql(dataset):
    with QueryEngine.for_store(dataset.config.store.path) as engine:
        yield lambda text: engine.query(text).to_pylist()


def click_and_wait_for(browser, element, url_part: str, timeout: float = 30.0) -> None:
    """Click ``element`` and wait until the browser is on the new page (its URL contains ``url_part``): a click
    returns before the navigation, and under load the old page is still the one that answers."""
    element.click()
    deadline = time.monotonic() + timeout
    while url_part not in browser.current_url:
        if time.monotonic() > deadline:
            raise AssertionError(f"no navigation to a URL with {url_part!r}: still on {browser.current_url}")
        time.sleep(0.05)


class Page:
    """A page open in the browser: waits for its charts, checks the browser console, saves a screenshot."""

    def __init__(self, browser, url: str, shots: Path, name: str) -> None:
        self.b = browser
        browser.get(url)
        self.wait_charts()
        self.errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1400, min(max(height, 800), 6000))
        time.sleep(0.3)  # Plotly redraws responsive charts on resize
        browser.save_screenshot(str(shots / f"{name}.png"))
        browser.set_window_size(1400, 1000)

    def wait_charts(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.b.execute_script("return document.readyState === 'complete' && document.body.dataset.charts "
                                     "!== undefined && document.body.dataset.chartsRendered === "
                                     "document.body.dataset.charts"):
                return
            time.sleep(0.1)
        raise AssertionError("charts were not drawn: " + str(self.b.get_log("browser")))

    def table(self, table_id: str) -> list[list[str]]:
        """The cells of a table, row by row: each cell's exact data-value, else its text."""
        return self.b.execute_script(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr:not(.explain)')).map("
            "tr => Array.from(tr.querySelectorAll('td')).map(td => td.dataset.value ?? td.textContent.trim()))",
            table_id)

    def chart(self, chart_id: str) -> list[dict]:
        """The traces Plotly drew in a chart: name, x and y (as numbers), and whether an SVG was made."""
        traces = self.b.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "if (!el || !el.data || !el.querySelector('.main-svg')) return null;"
            "return el.data.map(t => ({name: t.name, x: Array.from(t.x || []), "
            "y: Array.from(t.y || []).map(Number)}));",
            chart_id)
        assert traces is not None, f"chart {chart_id} was not drawn"
        return traces

    def text(self, element_id: str) -> str:
        return self.b.find_element("id", element_id).text

    def attr(self, element_id: str, name: str) -> str:
        return self.b.find_element("id", element_id).get_attribute(name)


def _check(page: Page) -> None:
    assert page.errors == [], page.errors
    assert not page.b.find_elements("id", "page-error"), page.text("page-error")


def test_exporters_page(browser, console, shots, sql):
    page = Page(browser, f"{console.url}/exporters?{WINDOW}", shots, "exporters")
    _check(page)
    want = {r["e"]: r for r in sql(
        "SELECT IPv6NumToString(exporter) AS e, sum(datagrams) AS d, sum(records) AS r, sum(sequence_lost) AS l, "
        "sum(decode_errors) AS x, argMax(templates, time) AS t FROM exporter_stats "
        f"WHERE time >= '{T_FROM}' AND time < '{T_TO}' GROUP BY exporter")}
    rejected = {r["e"]: r["n"] for r in sql(
        "SELECT IPv6NumToString(exporter) AS e, count() AS n FROM rejects "
        f"WHERE time_received >= '{T_FROM}' AND time_received < '{T_TO}' GROUP BY exporter")}
    rows = page.table("table-exporters")
    assert sorted(r[0] for r in rows) == sorted(EXPORTERS.values())
    for exporter, _last_seen, datagrams, records, lost, templates, errors, rejects in rows:
        w = want["::ffff:" + exporter]
        assert (int(datagrams), int(records), int(lost), int(templates), int(errors)) == \
            (w["d"], w["r"], w["l"], w["t"], w["x"]), exporter
        assert int(rejects) == rejected.get("::ffff:" + exporter, 0)
    # the dataset's faults are there: a sequence gap on the v9 router, malformed datagrams from the v5 one
    assert want["::ffff:" + EXPORTERS["v9"]]["l"] > 0 and want["::ffff:" + EXPORTERS["v5"]]["x"] > 0
    errors = sql("SELECT reason, sum(errors) AS n FROM exporter_errors "
                 f"WHERE time >= '{T_FROM}' AND time < '{T_TO}' GROUP BY reason")
    assert [[EXPORTERS["v5"], r["reason"], str(r["n"])] for r in errors] == page.table("table-errors")
    reasons = {r["reason"]: r["n"] for r in sql("SELECT reason, count() AS n FROM rejects "
                                                 f"WHERE time_received >= '{T_FROM}' AND time_received < '{T_TO}' "
                                                 "GROUP BY reason")}
    assert {r[1]: int(r[2]) for r in page.table("table-rejects")} == reasons
    # charts drew the same counts: datagrams/s times the step, summed, is the number of datagrams
    step = 900  # a 48-hour window is drawn in 15-minute steps
    for chart, column in (("chart-datagrams", "d"), ("chart-records", "r")):
        traces = page.chart(chart)
        assert {t["name"] for t in traces} == set(EXPORTERS.values())
        for t in traces:
            assert round(sum(t["y"]) * step) == want["::ffff:" + t["name"]][column], (chart, t["name"])
    assert sum(sum(t["y"]) for t in page.chart("chart-sequence")) == want["::ffff:" + EXPORTERS["v9"]]["l"]
    assert {t["name"]: sum(t["y"]) for t in page.chart("chart-rejects")} == reasons
    assert sum(sum(t["y"]) for t in page.chart("chart-errors")) == sum(r["n"] for r in errors)


TRAFFIC = {
    "src_addr": ("flows", "IPv6NumToString(src_addr)", "time_received"),
    "dst_port": ("flows", "toString(dst_port)", "time_received"),
    "protocol": ("flows", "toString(protocol)", "time_received"),
    "dst_as": ("flows", "toString(dst_as)", "time_received"),
    "traffic_class": ("usage", "traffic_class", "interval_start"),
}


@pytest.mark.parametrize("by", list(TRAFFIC))
def test_traffic_page(browser, console, shots, sql, by):
    page = Page(browser, f"{console.url}/traffic?by={by}&metric=bytes&{WINDOW}", shots, f"traffic-{by}")
    _check(page)
    table, key, time_col = TRAFFIC[by]
    where = f"{time_col} >= '{T_FROM}' AND {time_col} < '{T_TO}'" + (" AND source = 'flow'" if table == "usage"
                                                                      else "")
    want = sql(f"SELECT {key} AS k, sum(bytes) AS b, sum(packets) AS p FROM {table} WHERE {where} "
               "GROUP BY k ORDER BY b DESC, k LIMIT 10")
    total = sql(f"SELECT sum(bytes) AS b FROM {table} WHERE {where}")[0]["b"]
    rows = page.table("table-top")
    assert [(int(r[1]), int(r[2])) for r in rows] == [(w["b"], w["p"]) for w in want]
    if by == "protocol":
        assert rows[0][0] == "TCP (6)"
    elif by == "src_addr":
        assert [r[0] for r in rows] == [w["k"].removeprefix("::ffff:") for w in want]
    traces = page.chart("chart-traffic")
    step = 900
    assert len(traces) >= len(want) and all(len(t["y"]) == 192 for t in traces)  # 48 h in 15-minute steps
    drawn = sum(sum(t["y"]) for t in traces) * step / 8  # bit/s back to bytes
    assert abs(drawn - total) <= 1e-6 * total, (drawn, total)


def test_traffic_tabs_are_links_that_keep_the_window(browser, console, shots):
    page = Page(browser, f"{console.url}/traffic?{WINDOW}", shots, "traffic")
    _check(page)
    click_and_wait_for(browser, browser.find_element("link text", "Protocols"), "by=protocol")
    page.wait_charts()
    assert "by=protocol" in browser.current_url and "from=2026-11-02T00:00" in browser.current_url
    # the SQL behind the chart is shown and copyable
    browser.find_element("css selector", "#chart-traffic-panel details.sql summary").click()
    sql_text = browser.find_element("id", "chart-traffic-sql-1").text
    assert sql_text.startswith("SELECT") and "`protocol`" in sql_text and "hour=" in sql_text
    button = browser.find_element("css selector", "#chart-traffic-panel button.copy")
    button.click()
    assert button.text in ("Copied", "Copy")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_subscriber_page(browser, console, shots, sql):
    page = Page(browser, f"{console.url}/subscriber?id=alice&cycle={CYCLE}", shots, "subscriber")
    _check(page)
    used = sql("SELECT sum(bytes) AS b FROM usage WHERE subscriber_id = 'alice' AND source = 'flow'")[0]["b"]
    current = ("(SELECT * FROM rated_usage WHERE subscriber_id = 'alice' ORDER BY record_id, version DESC "
               f"LIMIT 1 BY record_id) WHERE void = 0 AND cycle = '{CYCLE}'")
    rated = sql(f"SELECT count() AS n, sum(amount_micros) AS a, sum(bytes) AS b FROM {current}")[0]
    assert int(page.attr("fact-usage", "data-value")) == used
    assert int(page.attr("fact-amount-EUR", "data-value")) == rated["a"] > 0
    assert page.text("fact-amount-EUR") == f"{rated['a'] // 10**6}.{rated['a'] % 10**6:06d} EUR"
    assert page.text("fact-plan") == "home v1"
    # the summary by rate card and band adds up to the same amounts, line by line
    lines = {(r["rate_card"], r["direction"], r["traffic_class"], r["band"]): (r["n"], r["b"], r["a"]) for r in sql(
        f"SELECT rate_card, direction, traffic_class, band, count() AS n, sum(bytes) AS b, sum(amount_micros) AS a "
        f"FROM {current} GROUP BY rate_card, direction, traffic_class, band")}
    shown = {tuple(r[:4]): (int(r[4]), int(r[5]), int(r[8])) for r in page.table("table-summary")}
    assert shown == lines
    # the charts: usage per interval by direction and class (bands shaded), billable volume against the
    # allowance and the fair-usage cap, the amount
    usage = page.chart("chart-usage")
    assert sum(sum(t["y"]) for t in usage) == used
    assert {t["name"] for t in usage} == {"down · default", "down · cdn", "up · default"}
    shapes = browser.execute_script("return document.getElementById('chart-usage').layout.shapes.length")
    assert shapes >= 20  # the peak band on every weekday of November
    cumulative = page.chart("chart-cumulative")
    assert {t["name"] for t in cumulative} == {"download (billable, cycle to date)", "upload (billable, cycle to date)"}
    notes = browser.execute_script(
        "return document.getElementById('chart-cumulative').layout.annotations.map(a => a.text)")
    assert notes == ["download allowance", "fair-usage threshold"]
    [amount] = page.chart("chart-amount")
    assert round(amount["y"][-1] * 10**6) == rated["a"]
    # records with their explain lines, shown on demand
    rows = page.table("table-records")
    assert len(rows) == min(200, rated["n"])
    first = browser.find_element("css selector", "#table-records button.explain-toggle")
    first.click()
    explain = browser.find_element("id", first.get_attribute("data-row"))
    assert explain.is_displayed() and "band" in explain.text and "stored: version 1" in explain.text
    assert "plan home version 1" in page.text("explain-general")
    for link in ("dl-records", "dl-usage", "dl-pdf"):
        assert f"id=alice&cycle={CYCLE}" in page.attr(link, "href")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_compliance_page(browser, console, shots, sql, dataset):
    from selenium.webdriver.common.by import By

    port, at_ms = dataset.alice_port_at
    browser.get(f"{console.url}/compliance")
    form = browser.find_element(By.ID, "trace-form")
    form.find_element(By.NAME, "address").send_keys(PUBLIC)
    form.find_element(By.NAME, "port").send_keys(str(port))
    window = form.find_element(By.NAME, "window")
    window.clear()
    window.send_keys("300")
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms / 1000))
    browser.execute_script("arguments[0].value = arguments[1]", form.find_element(By.NAME, "at"), at)
    click_and_wait_for(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"), "address=")
    page = Page(browser, browser.current_url, shots, "compliance")
    _check(page)
    assert page.text("verdict-holder") == "alice"
    assert page.text("verdict-line").startswith("holder: alice; inside address 100.64.0.1:51000; NAT: flow observed")
    evidence = page.table("table-evidence")
    assert [r[0] for r in evidence][:2] == ["nat", "binding"]
    flows = [r for r in evidence if r[0] == "flow"]
    # the flows of the holder's inside address and port (or of the public address and port) around the instant
    want = sql("SELECT count() AS n FROM ip_detail_records WHERE "
               "((src_addr = toIPv6('100.64.0.1') AND src_port = 51000) "
               f"OR (nat_addr = toIPv6('{PUBLIC}') AND nat_port = {port})) AND subscriber_id IN ('alice', '') AND "
               f"flow_start >= fromUnixTimestamp64Milli(toInt64({at_ms - 300_000}), 'UTC') "
               f"AND flow_start < fromUnixTimestamp64Milli(toInt64({at_ms // 1000 * 1000 + 301_000}), 'UTC')")[0]["n"]
    assert len(flows) == want == 2
    assert [r[5] for r in flows] == [f"{PUBLIC}:{port}", f"{PUBLIC}:{port + 1}"]
    # the ipdr-report preview and its export links
    report = f"report=1&from=2026-11-02T08:00&to=2026-11-02T09:00&r_address={PUBLIC}"
    page = Page(browser, f"{console.url}/compliance?{report}", shots, "compliance-report")
    _check(page)
    n = sql("SELECT count() AS n FROM ip_detail_records WHERE (src_addr = toIPv6('" + PUBLIC + "') OR nat_addr = "
            f"toIPv6('{PUBLIC}')) AND flow_start >= '2026-11-02 08:00:00' AND flow_start < '2026-11-02 09:00:00'"
            )[0]["n"]
    assert len(page.table("table-report")) == n == 12
    assert page.attr("dl-report-csv", "href").endswith(report)


def test_reconciliation_page(browser, console, shots, sql):
    page = Page(browser, f"{console.url}/reconciliation?{WINDOW}", shots, "reconciliation")
    _check(page)
    want = sql("SELECT toUInt32(interval_start) AS t, sum(bytes_in) AS i, sum(bytes_attributed) AS a, "
               "sum(bytes_unattributed) AS u, sum(bytes_rejected) AS r, sum(bytes_duplicate) AS d, "
               f"min(balanced) AS ok FROM reconciliation WHERE interval_start >= '{T_FROM}' AND "
               f"interval_start < '{T_TO}' GROUP BY t ORDER BY t")
    rows = page.table("table-reconciliation")
    assert [[int(x) for x in r[:6]] for r in rows] == [[w["t"], w["i"], w["a"], w["u"], w["r"], w["d"]]
                                                       for w in want]
    flagged = [int(r[0]) * 1000 for r in rows if r[9] == "0"]
    assert flagged == [UNBALANCED[0]]  # only the part that does not balance
    [bad] = browser.find_elements("css selector", "#table-reconciliation tr.flagged")
    assert "NOT BALANCED" in bad.text and str(UNBALANCED[2] - UNBALANCED[3]) in bad.text.replace(",", "")
    assert "1 interval does not balance" in page.text("balance-summary")
    traces = page.chart("chart-reconciliation")
    assert sum(sum(t["y"]) for t in traces if t["name"] not in ("bytes in", "not balanced")) == sum(
        w["a"] + w["u"] + w["r"] + w["d"] for w in want)
    [mark] = [t for t in traces if t["name"] == "not balanced"]
    assert mark["x"] == [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(UNBALANCED[0] / 1000))]
    browser.find_element("id", "only-flagged").click()
    page.wait_charts()
    assert [int(r[0]) * 1000 for r in page.table("table-reconciliation")] == [UNBALANCED[0]]


def test_every_page_without_data_says_so(browser, console, shots):
    """A window with nothing in it: pages answer, say so, and draw no empty chart (no console error either)."""
    for name in ("exporters", "traffic", "reconciliation"):
        page = Page(browser, f"{console.url}/{name}?from=2026-10-01T00:00&to=2026-10-01T06:00", shots,
                    f"{name}-empty")
        _check(page)
        assert browser.find_elements("css selector", "p.empty"), name
    page = Page(browser, f"{console.url}/traffic?from=2026-11-01T00:00&to=2026-11-20T00:00", shots, "too-large")
    assert "at most 168 hours" in page.text("page-error")
