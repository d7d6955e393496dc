"""The plain HTTP of a Gateway (zmqws/httpapp.py and the dispatch around the transports) on
127.0.0.1: the page, ``/zmqws.js``, the icon, static files (types, traversal, symlinks, size
limit), unknown paths and methods, CORS, the request head limit."""

from __future__ import annotations

import http.client
import json
import os
from typing import Optional

import pytest

from conftest import SSEClient, get, wait_until

pytestmark = pytest.mark.timeout(60)


# -- the page, the client script, the icon ---------------------------------------------------------


@pytest.fixture
def plain_gateway(make_gateway):
    return make_gateway(None)


@pytest.mark.parametrize("path", ["/", "/index.html"])
def test_get_page(plain_gateway, http_exchange, path):
    status, headers, body = http_exchange(plain_gateway.port,
                                          f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert int(headers["content-length"]) == len(body)
    assert b"WebSocket" in body
    assert body.lstrip().lower().startswith(b"<!doctype html")


def test_head_page_returns_headers_only(plain_gateway, http_exchange):
    _status, get_headers, get_body = http_exchange(plain_gateway.port,
                                                   b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = http_exchange(plain_gateway.port, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    assert body == b""
    assert headers["content-type"].startswith("text/html")
    assert int(headers["content-length"]) == len(get_body)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    (b"GET /../zmqws/gateway.py HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", 405),
    (b"HEAD /other HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
], ids=["other", "traversal", "post", "head-other"])
def test_other_http_requests(plain_gateway, http_exchange, request_bytes, status):
    got, _headers, body = http_exchange(plain_gateway.port, request_bytes)
    assert got == status
    assert b"Traceback" not in body
    if request_bytes.startswith(b"HEAD"):
        assert body == b""


def test_page_disabled(make_gateway, http_exchange):
    gw = make_gateway(None, page=None)
    assert http_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 404


def test_favicon_is_served_not_counted_as_an_error(plain_gateway, http_exchange):
    """Browsers ask for /favicon.ico by themselves: a real icon, not a 404 in http_errors."""
    status, headers, body = http_exchange(plain_gateway.port, b"GET /favicon.ico HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    assert headers["content-type"].startswith("image/")
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO header: reserved 0, type 1 (icon)
    assert plain_gateway.stats.http_errors == 0


def test_client_script_and_page(make_gateway, http_conn):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, "/zmqws.js")
    assert response.status == 200
    assert response.getheader("Content-Type").split(";")[0] in ("text/javascript", "application/javascript")
    assert b"ZmqWs" in body
    response, body, _ = get(conn, "/")
    assert response.status == 200
    assert response.getheader("Content-Type").split(";")[0] == "text/html"
    assert body.lstrip().lower().startswith(b"<!doctype html")
    response, body, _ = get(conn, "/index.html")
    assert response.status == 200


# -- unknown paths and methods, limits -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/zmqws.jsx", "/events/", "/poll/x", "/static/", "/index.htm"])
def test_unknown_path_is_404(make_gateway, http_exchange, path):
    gw = make_gateway(None)
    status, _, _ = http_exchange(gw.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(make_gateway, http_conn, method):
    gw = make_gateway(None)
    conn = http_conn(gw.port)
    response, _, _ = get(conn, "/poll", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    assert gw.stats.polls_held == 0


@pytest.mark.parametrize("limit", [None, 1024])
def test_request_head_over_the_limit_is_431(make_gateway, http_exchange, limit):
    options = {} if limit is None else {"max_header_size": limit}
    gw = make_gateway(None, **options)
    size = (limit or 8192) + 100
    request = b"GET /poll HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    status, _, _ = http_exchange(gw.port, request)
    assert status == 431
    many = b"GET /poll HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"
    assert http_exchange(gw.port, many)[0] == 431
    assert gw.stats.polls_held == 0


# -- CORS ------------------------------------------------------------------------------------------


def _cors_gateway(make_gateway, origins=("http://a.example",)):
    gw = make_gateway(None, cors_origins=list(origins), poll_timeout=0.3, subscribe_all=True)
    gw.publish("hello", topic="c")
    wait_until(lambda: gw.last_id == 2)
    return gw


def _acao(port: int, path: str, origin: str) -> Optional[str]:
    """The Access-Control-Allow-Origin of a response to GET ``path`` with that Origin."""
    if path.startswith("/events"):
        stream = SSEClient(port, path, [("Origin", origin)])
        try:
            status, headers = stream.read_head()
        finally:
            stream.close()
        assert status == 200
        return headers.get("access-control-allow-origin")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        response, _, _ = get(conn, path, headers={"Origin": origin})
    finally:
        conn.close()
    assert response.status == 200
    return response.getheader("Access-Control-Allow-Origin")


@pytest.mark.parametrize("path", ["/poll?since=0", "/events?since=0", "/zmqws.js"])
def test_cors_for_the_configured_origin_only(make_gateway, path):
    gw = _cors_gateway(make_gateway)
    assert _acao(gw.port, path, "http://a.example") == "http://a.example"
    assert _acao(gw.port, path, "http://b.example") is None
    assert _acao(gw.port, path, "http://a.example.evil") is None
    plain = make_gateway(None, poll_timeout=0.3)
    plain.publish("x", topic="c")
    wait_until(lambda: plain.last_id == 1)
    assert _acao(plain.port, path, "http://a.example") is None


def test_cors_on_a_parked_poll(make_gateway, http_conn):
    gw = _cors_gateway(make_gateway)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, f"/poll?since={gw.last_id}", headers={"Origin": "http://a.example"})
    assert json.loads(body) == []  # answered at the timeout, still with the header
    assert response.getheader("Access-Control-Allow-Origin") == "http://a.example"


def test_cors_preflight(make_gateway, http_conn):
    gw = _cors_gateway(make_gateway)
    conn = http_conn(gw.port)
    response, body, _ = get(conn, "/poll", method="OPTIONS",
                            headers={"Origin": "http://a.example", "Access-Control-Request-Method": "GET",
                                     "Access-Control-Request-Headers": "last-event-id"})
    assert response.status == 204 and body == b""
    assert response.getheader("Access-Control-Allow-Origin") == "http://a.example"
    assert "GET" in response.getheader("Access-Control-Allow-Methods")
    assert "last-event-id" in response.getheader("Access-Control-Allow-Headers").lower()
    # another origin, or no CORS configured: no preflight approval
    conn = http_conn(gw.port)
    response, _, _ = get(conn, "/poll", method="OPTIONS", headers={"Origin": "http://b.example"})
    assert response.status == 405 and response.getheader("Access-Control-Allow-Origin") is None
    plain = make_gateway(None)
    conn = http_conn(plain.port)
    response, _, _ = get(conn, "/poll", method="OPTIONS", headers={"Origin": "http://a.example"})
    assert response.status == 405 and response.getheader("Access-Control-Allow-Origin") is None


# -- static files ----------------------------------------------------------------------------------


TRAVERSALS = [
    "/../zmqws/gateway.py",
    "/%2e%2e/etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../etc/passwd",
    "/./../gateway.py",
    "/..",
    "//etc/passwd",
    "/%2F%2Fetc%2Fpasswd",
    "/..%5c..%5cetc%5cpasswd",
    "/zmqws.js%00.png",
    "http://x/../../etc/passwd",
    "/../__init__.py",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_404(make_gateway, http_exchange, tmp_path, target):
    (tmp_path / "ok.txt").write_text("fine")
    gw = make_gateway(None, static_dir=str(tmp_path))
    status, _, body = http_exchange(gw.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status in (400, 404), status
    assert b"root:" not in body and b"import" not in body and b"fine" not in body


def test_symlinks_out_of_the_static_dir_are_404(make_gateway, http_exchange, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (static / "inside.txt").write_text("public")
    os.symlink(secret, static / "link.txt")
    os.symlink(tmp_path, static / "up")
    os.symlink("/etc/passwd", static / "passwd.txt")
    os.symlink(static / "inside.txt", static / "alias.txt")  # a link that stays inside is fine
    gw = make_gateway(None, static_dir=str(static))
    for path in ("/link.txt", "/up/secret.txt", "/passwd.txt"):
        status, _, body = http_exchange(gw.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert status == 404, path
        assert b"secret" not in body and b"root:" not in body
    assert http_exchange(gw.port, b"GET /alias.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")[2] == b"public"


def test_static_dir_files_with_their_types(make_gateway, http_conn, tmp_path):
    files = {
        "style.css": (b"body{}", "text/css"),
        "data.json": (b'{"a":1}', "application/json"),
        "page.html": (b"<!doctype html><p>hi", "text/html"),
        "sub/app.js": (b"var x = 1;", "text/javascript"),
        "image.png": (b"\x89PNG\r\n\x1a\n", "image/png"),
        "blob.unknownext": (b"\x00\x01", "application/octet-stream"),
    }
    for name, (content, _) in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    gw = make_gateway(None, static_dir=str(tmp_path))
    conn = http_conn(gw.port)
    for name, (content, content_type) in files.items():
        response, body, _ = get(conn, "/" + name)
        assert response.status == 200, name
        got = response.getheader("Content-Type").split(";")[0]
        assert got == content_type or (name.endswith(".js") and got == "application/javascript"), (name, got)
        assert body == content
    response, body, _ = get(conn, "/sub/app.js", method="HEAD")
    assert response.status == 200 and body == b"" and response.getheader("Content-Length") == "10"
    # the package's files are still there behind the user's folder
    response, body, _ = get(conn, "/zmqws.js")
    assert response.status == 200 and b"ZmqWs" in body


def test_static_file_over_the_size_limit_is_404(make_gateway, http_exchange, tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * 2000)
    gw = make_gateway(None, static_dir=str(tmp_path), max_static_size=1000)
    assert http_exchange(gw.port, b"GET /big.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 404
