"""The console's pages and downloads in-process over the store built from known flows: bounded windows, refusals,
the subscriber's statement (CSV, PDF), the compliance report, the SQL each page shows."""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import replace

import pytest

from collector.console.app import make_app
from collector.console.queries import DIMENSIONS, literal, rated_records, traffic_series
from collector.console.window import Window
from storage.query import QueryEngine
from tests.console.dataset import CYCLE, PUBLIC, T0
from tests.console.helpers import asgi_get

pytestmark = pytest.mark.slow

DAY = "from=2026-11-02T00:00&to=2026-11-03T00:00"


@pytest.fixture(scope="module")
def app(dataset):
    application = make_app(dataset.config)
    yield application
    application.app.state.ctx.store.close()


@pytest.fixture(scope="module")
def engine(dataset):
    with QueryEngine.for_store(dataset.config.store.path) as e:
        yield e


def page(app, url: str) -> tuple[int, str]:
    status, _, body = asgi_get(app, url)
    return status, body.decode()


def values(text: str, table_id: str) -> list[list[str]]:
    """The data-value (else the text) of every cell of a table, row by row."""
    m = re.search(rf'<table id="{table_id}".*?</table>', text, re.S)
    assert m, table_id
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(0), re.S):
        cells = re.findall(r'<td[^>]*?(?:data-value="([^"]*)")?[^>]*>(.*?)</td>', tr, re.S)
        if cells:
            rows.append([v if v else html.unescape(t) for v, t in cells])
    return rows


def test_every_page_answers_over_the_window(app):
    for url in ("/exporters", "/traffic", "/subscriber", "/compliance", "/reconciliation"):
        status, text = page(app, f"{url}?{DAY}")
        assert status == 200, (url, text[:400])
        assert 'class="banner error"' not in text, url
    assert page(app, "/")[0] == 302


def test_a_window_over_the_maximum_is_refused_before_reading(app):
    status, text = page(app, "/traffic?from=2026-11-01T00:00&to=2026-11-09T00:00")
    assert status == 400 and "at most 168 hours" in text
    assert page(app, "/exporters?from=2026-11-03T00:00&to=2026-11-02T00:00")[0] == 400
    assert "expected a time" in page(app, "/reconciliation?from=yesterday")[1]
    assert page(app, "/traffic?by=src_addr%3BDROP&" + DAY)[0] == 400  # only the listed groupings
    assert page(app, "/traffic?metric=sum(bytes)&" + DAY)[0] == 400
    assert page(app, "/traffic?" + DAY + "&x=" + "a" * 600)[0] == 400


def test_a_window_holding_too_many_rows_is_refused(dataset, engine):
    small = make_app(replace(dataset.config, console=replace(dataset.config.console, max_rows=1000)))
    try:
        status, text = page(small, f"/traffic?{DAY}")
        n = engine.query("SELECT count() AS n FROM flows WHERE time_received >= '2026-11-02 00:00:00' AND "
                         "time_received < '2026-11-03 00:00:00'").to_pylist()[0]["n"]
        assert status == 413 and f"holds {n:,} rows of flows" in text and "console.max_rows" in text
        assert page(small, "/traffic?from=2026-11-02T00:00&to=2026-11-02T01:00")[0] == 200
    finally:
        small.app.state.ctx.store.close()


def test_queries_read_only_the_windows_partitions(app):
    store = app.app.state.ctx.store
    w = Window(T0, T0 + 3_600_000)
    sql = traffic_series(store.source, "src_addr", "bytes", w, 60, 10).sql
    assert "date=2026-11-02/hour=00/" in sql and "hour=*" not in sql
    assert "LIMIT 1 BY row_id" in traffic_series(store.source, "traffic_class", "bytes", w, 300, 10).sql
    assert set(DIMENSIONS) >= {"src_addr", "dst_addr", "src_port", "dst_port", "protocol", "src_as", "dst_as",
                               "traffic_class"}
    # text from a request is only ever a quoted literal
    assert literal("x' OR 1=1 --") == "'x\\' OR 1=1 --'"
    q = rated_records(store.source, "o'brien\\", CYCLE, T0, T0 + 3_600_000)
    assert "subscriber_id = 'o\\'brien\\\\'" in q.sql


def test_subscriber_downloads(app, engine):
    status, headers, body = asgi_get(app, f"/subscriber/records.csv?id=alice&cycle={CYCLE}")
    assert status == 200 and headers["content-disposition"] == f'attachment; filename="alice-{CYCLE}-rated.csv"'
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    want = engine.query(f"SELECT count() AS n, sum(amount_micros) AS a FROM (SELECT * FROM rated_usage WHERE "
                        f"subscriber_id = 'alice' ORDER BY record_id, version DESC LIMIT 1 BY record_id) "
                        f"WHERE void = 0 AND cycle = '{CYCLE}'").to_pylist()[0]
    assert len(rows) == want["n"] > 0
    assert sum(int(r["amount_micros"]) for r in rows) == want["a"] > 0
    assert all(r["amount"] == f"{int(r['amount_micros']) // 10**6}.{int(r['amount_micros']) % 10**6:06d}"
               for r in rows)
    status, _, body = asgi_get(app, f"/subscriber/usage.csv?id=alice&cycle={CYCLE}")
    usage = list(csv.DictReader(io.StringIO(body.decode())))
    total = engine.query("SELECT sum(bytes) AS b FROM usage WHERE subscriber_id = 'alice'").to_pylist()[0]["b"]
    assert sum(int(r["bytes"]) for r in usage) == total
    status, headers, pdf = asgi_get(app, f"/subscriber/statement.pdf?id=alice&cycle={CYCLE}")
    assert status == 200 and pdf.startswith(b"%PDF-") and headers["content-type"] == "application/pdf"
    assert re.search(rb"/Type /Pages\s*/Count 1\b", pdf) or b"/Count 1 " in pdf  # one page
    amount = want["a"]
    assert f"{amount // 10**6}.{amount % 10**6:06d} EUR".encode() in pdf  # the total, uncompressed text
    assert asgi_get(app, "/subscriber/records.csv?id=")[0] == 400


def test_explain_lines_belong_to_their_record(app):
    status, text = page(app, f"/subscriber?id=alice&cycle={CYCLE}")
    assert status == 200
    pager = re.search(r'<nav class="pager" id="pager">(.*?)</nav>', text, re.S).group(1)
    assert re.findall(r"page=(\d+)", pager) == ["1", "2", "3", "4", "5", "9"] and "of 9" in pager  # 1728 records
    text = re.search(r'<table id="table-records".*?</table>', text, re.S).group(0)
    rows = re.findall(r'<tr class="">(.*?)</tr>\s*<tr class="explain" id="[^"]+" hidden><td[^>]*><pre>(.*?)</pre>',
                      text, re.S)
    assert len(rows) == 200  # the first page of records, each with its explain lines
    for cells, lines in rows:
        tds = re.findall(r"<td[^>]*>(.*?)</td>", cells)
        local, direction, cls, band = tds[1], tds[2], tds[3], tds[4]
        assert html.unescape(lines).startswith(f"{local}  {direction} {cls}  band {band}:"), (tds, lines[:120])
        assert "stored: version 1, same amount" in lines


def test_compliance_report_export(app, dataset):
    port, at = dataset.alice_port_at
    q = f"report=1&from=2026-11-02T08:00&to=2026-11-02T09:00&r_address={PUBLIC}&r_port={port}"
    status, text = page(app, "/compliance?" + q)
    assert status == 200 and "Report: 1 records" in text
    status, headers, body = asgi_get(app, "/compliance/report.csv?" + q)
    [row] = list(csv.DictReader(io.StringIO(body.decode())))
    assert (row["user_id"], row["public_ip"], row["public_port"], row["source_ip"]) == \
        ("alice", PUBLIC, str(port), "100.64.0.1")
    status, headers, xlsx = asgi_get(app, "/compliance/report.xlsx?" + q)
    assert status == 200 and xlsx.startswith(b"PK")
    assert asgi_get(app, "/compliance/report.csv?report=1&from=2026-11-01T00:00&to=2026-11-20T00:00"
                    f"&r_address={PUBLIC}")[0] == 400  # longer than console.max_window_h


def test_empty_windows_answer_for_every_grouping(app):
    for by in DIMENSIONS:
        status, text = page(app, f"/traffic?by={by}&from=2026-10-01T00:00&to=2026-10-01T03:00")
        assert status == 200 and "No data in this window." in text, by
    status, text = page(app, "/subscriber?id=nobody&cycle=2026-11")
    assert status == 200 and "no plan assignment covers this cycle" in text
