"""Who may read the console: loopback only without auth, HTTP basic with hashed passwords, a trusted reverse proxy;
and the settings that enforce it."""

from __future__ import annotations

import base64

import pytest

from collector.config import load
from collector.configtree import ConfigError
from collector.console.app import make_app
from collector.console.auth import hash_password, loopback_host, verify_password
from tests.console.helpers import asgi_get


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_password_hashes_verify_and_never_hold_the_password():
    h = hash_password("correct horse", n=2**10)
    assert h.startswith("scrypt$1024$8$1$") and "correct" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsf", h)
    assert hash_password("correct horse", n=2**10) != h  # salted
    import hashlib

    salt = b"0123456789abcdef"
    pbkdf2 = "pbkdf2_sha256$1000$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(
        hashlib.pbkdf2_hmac("sha256", b"s3cret-pw", salt, 1000)).decode()
    assert verify_password("s3cret-pw", pbkdf2) and not verify_password("s3cret-px", pbkdf2)
    for broken in ("", "md5$x$y", "scrypt$0$8$1$AA==$AA==", "scrypt$1024$8$1$!!$AA==", "pbkdf2_sha256$99999999999$a$b"):
        assert not verify_password("x", broken)


def test_a_console_beyond_loopback_needs_authentication():
    with pytest.raises(ConfigError, match="console.auth"):
        load(None, ["console.listen=0.0.0.0:9109"])
    with pytest.raises(ConfigError, match="console.users"):
        load(None, ["console.listen=192.0.2.5:9109", "console.auth=basic"])
    with pytest.raises(ConfigError, match="password_hash"):
        load(None, ["console.auth=basic", 'console.users=[{name="ops", password_hash="plaintext"}]'])
    ok = load(None, ["console.listen=[::]:9109", "console.auth=proxy"])
    assert ok.console.auth == "proxy"
    assert load(None, []).console.listen == "127.0.0.1:9109"


def test_loopback_host_names():
    for host in ("127.0.0.1:9109", "localhost:9109", "[::1]:9109", "localhost", "127.0.0.2"):
        assert loopback_host(host), host
    for host in ("evil.example:9109", "192.0.2.1:9109", "", "[2001:db8::1]:9109", "127.0.0.1.evil.example"):
        assert not loopback_host(host), host


@pytest.fixture
def empty_store(tmp_path):
    return tmp_path / "data"


def _app(store, *sets: str):
    return make_app(load(None, [f"store.path={store}", *sets]))


def test_without_auth_only_loopback_host_names_are_answered(empty_store):
    app = _app(empty_store)
    try:
        status, headers, body = asgi_get(app, "/healthz")
        assert status == 200 and body == b"ok\n"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        # a web page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) gets nothing
        status, _, body = asgi_get(app, "/exporters", host="rebind.example:9109")
        assert status == 421 and b"loopback" in body
    finally:
        app.app.state.ctx.store.close()


def test_basic_authentication(empty_store):
    h = hash_password("opensesame", n=2**10)
    app = _app(empty_store, "console.listen=0.0.0.0:9109", "console.auth=basic",
               f'console.users=[{{name="ops", password_hash="{h}"}}]')
    try:
        status, headers, _ = asgi_get(app, "/healthz", host="console.example")
        assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
        assert asgi_get(app, "/healthz", headers=_basic("ops", "wrong"))[0] == 401
        assert asgi_get(app, "/healthz", headers=_basic("nobody", "opensesame"))[0] == 401
        assert asgi_get(app, "/healthz", headers={"Authorization": "Basic !!!"})[0] == 401
        assert asgi_get(app, "/healthz", headers=_basic("ops", "opensesame"), host="console.example")[0] == 200
        assert asgi_get(app, "/healthz", headers=_basic("ops", "opensesame"))[0] == 200  # remembered
        status, _, body = asgi_get(app, "/exporters", headers=_basic("ops", "opensesame"))
        assert status == 200 and b"ops" in body  # the user is shown
    finally:
        app.app.state.ctx.store.close()


def test_reverse_proxy_mode_trusts_only_its_proxies(empty_store):
    app = _app(empty_store, "console.listen=0.0.0.0:9109", "console.auth=proxy",
               'console.trusted_proxies=["10.9.0.0/24"]', "console.proxy_header=X-Remote-User")
    try:
        assert asgi_get(app, "/healthz", headers={"X-Remote-User": "ann"}, client=("10.9.0.7", 1))[0] == 200
        assert asgi_get(app, "/healthz", client=("10.9.0.7", 1))[0] == 401  # the proxy named nobody
        status, _, body = asgi_get(app, "/healthz", headers={"X-Remote-User": "ann"}, client=("192.0.2.66", 1))
        assert status == 403 and b"trusted_proxies" in body  # someone else sending the header
        assert asgi_get(app, "/healthz", headers={"X-Remote-User": "ann"}, client=("::ffff:10.9.0.7", 1))[0] == 200
    finally:
        app.app.state.ctx.store.close()
