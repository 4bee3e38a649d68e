"""The console's ASGI application (Starlette): routes, templates, static assets and access control.

Handlers are synchronous (they wait on queries) and run in Starlette's thread pool; the event loop only serves.
Static assets come from inside the installed packages: the console's own CSS/JS/icon from
``collector/console/static`` and ``plotly.min.js`` from the ``plotly`` Python package (installed from PyPI with
flowmed), so the browser never fetches anything from another site.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from collector.config import Config
from collector.console import compliance, pages, subscriber
from collector.console.auth import AccessMiddleware, Authenticator
from collector.console.data import ConsoleStore
from collector.console.views import Context, PageError, PageValues
from collector.console.window import RANGES, iso

HERE = Path(__file__).resolve().parent
MAX_PARAM_CHARS = 512
"""Longer query-string values are refused (every parameter is a time, an address, an id or a choice)."""
NAV = (("exporters", "Exporters"), ("traffic", "Traffic"), ("subscriber", "Subscriber"),
       ("compliance", "Compliance"), ("reconciliation", "Reconciliation"))

log = logging.getLogger("flowmed.console")

Endpoint = Callable[[Request], Awaitable[Response]]


def plotly_js() -> Path:
    """``plotly.min.js`` as shipped inside the ``plotly`` package."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _params(request: Request) -> dict[str, str]:
    params = {}
    for key, value in request.query_params.items():
        if len(key) > 64 or len(value) > MAX_PARAM_CHARS:
            raise PageError(f"parameter {key[:64]!r} is too long")
        params[key] = value
    return params


def build_app(ctx: Context) -> Starlette:
    """The application over ``ctx`` (its store stays open for the application's life)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(nav=NAV, ranges=RANGES, iso=iso, source=ctx.store.describe(), target=ctx.store.target,
                       holds_data=ctx.store.holds_data)
    env.filters["q"] = lambda v: quote(str(v), safe="")

    def page(name: str, handler: Callable[[Context, dict[str, str]], PageValues]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            status, params = 200, {}
            values: PageValues
            try:
                params = _params(request)
                values = await run_in_threadpool(handler, ctx, params)
            except PageError as exc:
                status, values = exc.status, {"title": name.capitalize(), "error": str(exc), "charts": [],
                                              "tables": []}
            except Exception:  # a bug: logged with its traceback, the page says so without details
                log.error("console page %s failed:\n%s", name, traceback.format_exc())
                status, values = 500, {"title": name.capitalize(), "charts": [], "tables": [],
                                       "error": "internal error (logged by the console)"}
            values.setdefault("params", params)
            values.update(request=request, page=name, user=request.scope.get("state", {}).get("user", ""))
            return templates.TemplateResponse(request, f"{name}.html", values, status_code=status,
                                              headers={"cache-control": "no-store"})
        return endpoint

    def download(make: Callable[[Context, dict[str, str]], tuple[str, str | bytes]], media_type: str) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                filename, body = await run_in_threadpool(make, ctx, _params(request))
            except PageError as exc:
                return PlainTextResponse(str(exc) + "\n", status_code=exc.status)
            except Exception:
                log.error("console download failed:\n%s", traceback.format_exc())
                return PlainTextResponse("internal error (logged by the console)\n", status_code=500)
            return Response(body, media_type=media_type, headers={
                "content-disposition": f'attachment; filename="{filename}"', "cache-control": "no-store"})
        return endpoint

    async def home(request: Request) -> Response:
        return RedirectResponse("/exporters", status_code=302)

    async def plotly(request: Request) -> Response:
        return FileResponse(plotly_js(), media_type="text/javascript",
                            headers={"cache-control": "public, max-age=86400"})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    routes = [
        Route("/", home),
        Route("/healthz", health),
        Route("/exporters", page("exporters", pages.exporters)),
        Route("/traffic", page("traffic", pages.traffic)),
        Route("/subscriber", page("subscriber", subscriber.subscriber_page)),
        Route("/subscriber/records.csv", download(subscriber.records_csv, "text/csv; charset=utf-8")),
        Route("/subscriber/usage.csv", download(subscriber.usage_csv, "text/csv; charset=utf-8")),
        Route("/subscriber/statement.pdf", download(subscriber.statement_pdf, "application/pdf")),
        Route("/compliance", page("compliance", compliance.compliance_page)),
        Route("/compliance/report.csv",
              download(lambda c, p: compliance.report_file(c, p, "csv"), "text/csv; charset=utf-8")),
        Route("/compliance/report.xlsx",
              download(lambda c, p: compliance.report_file(c, p, "xlsx"),
                       "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")),
        Route("/reconciliation", page("reconciliation", pages.reconciliation)),
        Route("/static/plotly.min.js", plotly),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    return app


def make_app(config: Config, store: ConsoleStore | None = None,
             clock: Callable[[], float] | None = None) -> AccessMiddleware:
    """The application with access control for ``config`` (its store opened unless given)."""
    store = store if store is not None else ConsoleStore.open(config)
    ctx = Context(store, config) if clock is None else Context(store, config, clock)
    return AccessMiddleware(build_app(ctx), Authenticator(config.console))
