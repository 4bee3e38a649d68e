"""Run the console: open the store, bind the listening socket, serve with uvicorn on uvloop until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from collector.config import Config, split_endpoint

if TYPE_CHECKING:  # opened by the command before it serves
    from collector.console.data import ConsoleStore

log = logging.getLogger("flowmed.console")


class ListenError(OSError):
    """The console's address cannot be bound (in use, not on this host)."""


def bind(endpoint: str) -> socket.socket:
    """A listening TCP socket on ``endpoint`` (``127.0.0.1:9109``, ``[::1]:9109``); raises :class:`ListenError`."""
    host, port = split_endpoint(endpoint)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(exc.errno, f"cannot listen on {endpoint}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Plain(logging.Filter):
    """Drop uvicorn's ANSI-coloured copy of its messages (our log lines are logfmt or JSON)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping gracefully on SIGTERM/SIGINT and then exiting with status 0 (uvicorn would
        raise the signal again after its shutdown, so the process would end "killed by SIGTERM")."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(config: Config, store: ConsoleStore) -> None:
    """Serve the console for ``config`` over ``store`` until stopped (uvicorn handles SIGTERM and SIGINT)."""
    import uvicorn

    from collector.console.app import make_app

    sock = bind(config.console.listen)
    logging.getLogger("uvicorn.error").addFilter(_Plain())
    app = make_app(config, store)
    server = _server_class()(uvicorn.Config(app, loop="uvloop", http="h11", lifespan="off", access_log=False,
                                           log_config=None, log_level=config.log.level, server_header=False,
                                           timeout_keep_alive=5, limit_concurrency=64))
    host, port = split_endpoint(config.console.listen)
    url_host = f"[{host}]" if ":" in host else host
    log.info("flowmed console on http://%s:%d/ (auth %s) reading %s", url_host, port, config.console.auth,
             store.describe())
    server.run(sockets=[sock])
