"""The console over a ClickHouse server (Debian's 18.16) shows what it shows over the embedded store: the dataset
is written to both by the daemon's sink (and rated into both), and every page's tables are compared."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from collector.console.app import make_app
from tests.console.dataset import CYCLE, PUBLIC, build
from tests.console.helpers import asgi_get
from tests.console.test_pages import values

pytestmark = [pytest.mark.external, pytest.mark.slow]

DAY = "from=2026-11-02T00:00&to=2026-11-03T00:00"
PAGES = {
    f"/exporters?{DAY}": ["table-exporters", "table-errors", "table-rejects"],
    f"/traffic?by=src_addr&{DAY}": ["table-top"],
    f"/traffic?by=dst_port&metric=packets&{DAY}": ["table-top"],
    f"/traffic?by=protocol&metric=flows&{DAY}": ["table-top"],
    f"/traffic?by=traffic_class&{DAY}": ["table-top"],
    f"/reconciliation?{DAY}": ["table-reconciliation"],
    f"/subscriber?id=alice&cycle={CYCLE}": ["table-summary", "table-records"],
    f"/subscriber?{DAY}": ["table-subscribers"],
    f"/compliance?address={PUBLIC}&port=40100&at=2026-11-02T08:23:20&window=300": ["table-evidence"],
    f"/compliance?report=1&from=2026-11-02T08:00&to=2026-11-02T09:00&r_address={PUBLIC}": ["table-report"],
}


@pytest.fixture(scope="module")
def apps(clickhouse_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console_ch")
    db = "console_" + re.sub(r"\W", "_", tmp.name)[-30:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    ds = build(tmp, 24, "output.clickhouse.enabled=true", f"output.clickhouse.port={clickhouse_server.port}",
               f"output.clickhouse.database={db}")
    store = make_app(ds.config)
    on_store = store.app.state.ctx.store.query("SELECT count() AS n FROM flows").column("n")[0].as_py()
    assert int(clickhouse_server.query(f"SELECT count() FROM {db}.flows")) == on_store > 0
    assert int(clickhouse_server.query(f"SELECT count() FROM {db}.rated_usage")) > 0
    server = make_app(replace(ds.config, console=replace(ds.config.console, target="clickhouse")))
    yield store, server
    for app in (store, server):
        app.app.state.ctx.store.close()


@pytest.mark.parametrize("url", list(PAGES))
def test_the_server_shows_what_the_store_shows(apps, url):
    store, server = apps
    (s_status, _, s_body), (c_status, _, c_body) = asgi_get(store, url), asgi_get(server, url)
    s_text, c_text = s_body.decode(), c_body.decode()
    assert s_status == 200 and 'class="banner error"' not in s_text, s_text[-2000:]
    assert c_status == 200 and 'class="banner error"' not in c_text, re.findall(r'banner error"[^<]*', c_text)
    assert "ClickHouse server" in c_text
    for table in PAGES[url]:
        assert values(s_text, table), (url, table)
        assert values(c_text, table) == values(s_text, table), (url, table)
