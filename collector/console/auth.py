"""Who may read the console: nobody but loopback (``none``), HTTP basic users (``basic``) or a reverse proxy that
authenticated the user (``proxy``); and the security headers of every answer.

Passwords are stored only as salted hashes from the standard library: ``scrypt$N$r$p$salt$hash`` (what
``flowmed console --hash-password`` writes) or ``pbkdf2_sha256$iterations$salt$hash`` (salt and hash base64). A hash
costs tens of milliseconds to check, so a checked ``Authorization`` header is remembered for a few minutes (keyed by
an HMAC of the header under a per-process key, never the password itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # --hash-password imports this module: it stays on the standard library at run time
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from collector.config import ConsoleConfig

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_SCRYPT_N = 2**20
MAX_PBKDF2_ITERATIONS = 10_000_000
CACHE_TTL_S = 300.0
CACHE_SIZE = 1024
REALM = 'Basic realm="flowmed console", charset="UTF-8"'

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
"""No inline script and nothing from elsewhere (Plotly sets inline styles on its SVG, hence style-src)."""

SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash of ``password`` for ``console.users``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (scrypt or pbkdf2_sha256); False for a malformed hash."""
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if not (1 < n <= MAX_SCRYPT_N and 0 < r <= 32 and 0 < p <= 16):
                return False
            salt, want = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
            got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20,
                                 dklen=len(want))
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            iterations = int(parts[1])
            if not 0 < iterations <= MAX_PBKDF2_ITERATIONS:
                return False
            salt, want = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, dklen=len(want))
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return bool(want) and hmac.compare_digest(got, want)


class Authenticator:
    """Decides who a request is (or that it is refused) under ``console.auth``."""

    def __init__(self, console_config: ConsoleConfig) -> None:
        self.mode = console_config.auth
        self.users = {u.name: u.password_hash for u in console_config.users}
        self.header = console_config.proxy_header.lower().encode("latin-1")
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in console_config.trusted_proxies]
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def user(self, scope: Scope) -> tuple[str | None, int]:
        """``(user, 0)`` when the request may proceed, else ``(None, status)`` with 401 or 403."""
        headers = dict(scope.get("headers") or [])
        if self.mode == "none":
            # Loopback only: a page of another site must not reach the console through a name that resolves to
            # 127.0.0.1 (DNS rebinding), so the Host must be a loopback name or address too.
            return ("", 0) if loopback_host(headers.get(b"host", b"").decode("latin-1")) else (None, 421)
        if self.mode == "proxy":
            peer = (scope.get("client") or ("", 0))[0]
            if not self._trusted(peer):
                return None, 403
            name = headers.get(self.header, b"").decode("latin-1").strip()
            return (name, 0) if name else (None, 401)
        return self._basic(headers.get(b"authorization", b""))

    def _trusted(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.proxies)

    def _basic(self, header: bytes) -> tuple[str | None, int]:
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic" or not value or len(value) > 4096:
            return None, 401
        key = hmac.new(self._key, value.strip(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[1] < CACHE_TTL_S:
                return hit[0], 0
        try:
            name, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, binascii.Error):
            return None, 401
        encoded = self.users.get(name)
        if encoded is None or not verify_password(password, encoded):
            return None, 401
        with self._lock:
            self._cache[key] = (name, now)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return name, 0


def loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback (``localhost``, ``127.0.0.1:9109``, ``[::1]:9109``)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AccessMiddleware:
    """ASGI middleware: refuses requests the :class:`Authenticator` refuses and adds the security headers."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.auth.mode == "basic":  # a hash check takes tens of milliseconds: off the event loop
            from starlette.concurrency import run_in_threadpool

            user, status = await run_in_threadpool(self.auth.user, scope)
        else:
            user, status = self.auth.user(scope)
        if user is None:
            await _refuse(send, status)
            return
        scope.setdefault("state", {})["user"] = user

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_secured)


REFUSALS = {
    401: b"authentication required\n",
    403: b"this address may not use the console (not in console.trusted_proxies)\n",
    421: b"without authentication the console answers only requests to a loopback host name (localhost, 127.0.0.1)\n",
}


async def _refuse(send: Send, status: int) -> None:
    body = REFUSALS[status]
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS]
    if status == 401:
        headers.append((b"www-authenticate", REALM.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
