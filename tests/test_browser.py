"""The live page and zmqws.js in a real headless Chromium (Playwright), against a real Gateway
fed by a real ZeroMQ PUB socket: WebSocket, Server-Sent Events and long-polling, the fallback
from one to the next, and resume after the server drops the connection mid-stream.

Needs ``pip install playwright`` (the Python package only: the browser is the system's
``/usr/bin/chromium``, Debian package ``chromium``; ``playwright install`` is not used).
Without them these tests fail; they do not skip.

The page's contract: ``GET /`` loads ``/zmqws.js``, reads ``?topic=`` and ``?transports=``,
shows ``#state``, ``#transport``, ``#count``, ``#last-id`` (the id's last 6 digits; the full id in
``title`` and ``data-id``), a canvas ``#rate-chart``, a log ``#log`` of ``<div class="msg"
data-id="ID">`` rows (a short ``.id`` with the full id in its ``title``), the gateway's counters
from ``/metrics`` in ``#gateway`` (``#upstream``, ``#clients``, ``#zmq-in``, ``#drops``; hidden when
``/metrics`` answers 401, 403 or 404), with ``--rpc`` a form ``#twoway`` (``#twoway-input``,
``#twoway-request``, ``#twoway-send``, the answer in ``#twoway-out``; hidden when ``GET /rpc`` is
404), fits a 375 px wide phone, and exposes ``window.zmqwsPage = {client, received, direct}``
where ``received`` holds every message ``{id, topic, data, binary}`` and ``direct`` those the
application sent to this client alone.  ``ZMQWS_SCREENSHOTS=1`` refreshes ``docs/screenshot.png`` and
``docs/screenshot-phone.png``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

from conftest import wait_subscribed, wait_until

pytestmark = pytest.mark.timeout(60)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

# The gateway's options for these tests: a subscription outlives a reconnect (linger) and the
# history holds every message of a test, so a client that comes back with since=lastId loses
# nothing; an empty long-poll is answered after 2 s (the page shows "open" after the first).
GATEWAY_OPTIONS = dict(linger=30, history=10_000, poll_timeout=2.0, close_timeout=1.0)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, closed in a finalizer."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (CI must have it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install playwright")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
    except BaseException:
        playwright.stop()
        raise
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


class PageLog:
    """What the page said: uncaught errors and console lines (shown when a test fails)."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.console: List[str] = []

    def __str__(self) -> str:
        return "page errors: %s\nconsole:\n%s" % (self.errors, "\n".join(self.console[-30:]))


DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 375, "height": 740}


@pytest.fixture
def open_page(browser):
    """``open_page(url, init_script=None, viewport=DESKTOP)`` → (page, PageLog); a viewport
    narrower than 500 px is a phone's (touch, 2x pixels); the context is closed at teardown."""
    contexts = []

    def open_(url: str, init_script: Optional[str] = None, viewport: dict = DESKTOP):
        phone = viewport["width"] < 500
        context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone,
                                      device_scale_factor=2 if phone else 1)
        contexts.append(context)
        context.set_default_timeout(15_000)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        log = PageLog()
        page.on("pageerror", lambda exc: log.errors.append(str(exc)))
        page.on("console", lambda msg: log.console.append(f"{msg.type}: {msg.text}"))
        page.goto(url, wait_until="load")
        return page, log

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def live_gateway(make_gateway, pub):
    """A Gateway on a real PUB socket, already receiving (the slow-joiner fence passed)."""
    gw = make_gateway(pub.endpoint, **GATEWAY_OPTIONS)
    wait_subscribed(pub, gw)
    return gw


# -- helpers ---------------------------------------------------------------------------------------------


def on_loop(gw, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Run ``fn`` on the gateway's loop thread and return its result."""
    result: "queue.Queue[Any]" = queue.Queue()

    def call():
        try:
            result.put((True, fn()))
        except BaseException as exc:  # pragma: no cover - re-raised below
            result.put((False, exc))

    gw.call_soon_threadsafe(call)
    ok, value = result.get(timeout=timeout)
    if not ok:
        raise value
    return value


def parked_polls(gw) -> int:
    return on_loop(gw, lambda: sum(1 for c in gw.connection_list() if c.parked))


def drop_connections(gw, transport: str) -> int:
    """Close the page's connection(s) of ``transport`` from the server side; how many."""
    def drop() -> int:
        if transport == "websocket":
            clients = gw.client_list()
            for client in clients:
                client.close(1001, "test: going away")
            return len(clients)
        victims = [c for c in gw.connection_list() if c.transport == transport]
        for client in victims:
            gw.abort(client)  # the TCP connection is gone at once: no response, no end of stream
        return len(victims)
    return on_loop(gw, drop)


def wait_open(page, transport: str, log: PageLog, timeout: float = 15.0) -> None:
    try:
        page.wait_for_function(
            """(t) => {
                const s = document.querySelector('#state'), tr = document.querySelector('#transport');
                return !!(s && tr && /\\bopen\\b/i.test(s.textContent)
                          && tr.textContent.trim().toLowerCase().includes(t));
            }""", arg=transport, timeout=timeout * 1000, polling=50)
    except Exception as exc:
        state = page.evaluate("""() => [
            document.querySelector('#state') && document.querySelector('#state').textContent,
            document.querySelector('#transport') && document.querySelector('#transport').textContent]""")
        raise AssertionError(f"the page did not open over {transport}: #state/#transport = {state}\n{log}") from exc


def wait_received(page, n: int, log: PageLog, timeout: float = 20.0) -> List[dict]:
    try:
        page.wait_for_function("(n) => window.zmqwsPage && window.zmqwsPage.received.length >= n",
                               arg=n, timeout=timeout * 1000, polling=50)
    except Exception as exc:
        got = page.evaluate("() => window.zmqwsPage ? window.zmqwsPage.received.length : null")
        raise AssertionError(f"{got} of {n} messages reached the page\n{log}") from exc
    return page.evaluate("() => window.zmqwsPage.received")


def seqs_of(received: List[dict]) -> List[int]:
    return [json.loads(m["data"])["seq"] for m in received]


def check_in_order(received: List[dict]) -> None:
    ids = [m["id"] for m in received]
    assert all(a < b for a, b in zip(ids, ids[1:])), f"ids not strictly increasing: {ids}"
    assert all(isinstance(m["id"], int) for m in received)


def server_transport_counts(gw) -> dict:
    return {"ws": gw.stats.ws_connections, "sse": gw.stats.sse_connections, "poll": gw.stats.polls_held}


# -- the page over each transport --------------------------------------------------------------------------


CASES = [
    pytest.param("", None, "websocket", id="websocket"),
    pytest.param("?transports=sse,poll", None, "sse", id="sse-by-query"),
    pytest.param("?transports=poll", None, "poll", id="poll-by-query"),
    pytest.param("", "delete window.WebSocket;", "sse", id="no-WebSocket-falls-back-to-sse"),
    pytest.param("", "delete window.WebSocket; delete window.EventSource;", "poll",
                 id="no-WebSocket-no-EventSource-falls-back-to-poll"),
]


@pytest.mark.parametrize("query, init_script, transport", CASES)
def test_page_receives_every_message_in_order(live_gateway, pub, open_page, query, init_script, transport):
    gw = live_gateway
    before = server_transport_counts(gw)
    page, log = open_page(f"http://127.0.0.1:{gw.port}/{query}", init_script)
    if init_script:  # the init script really took the API away
        assert page.evaluate("() => typeof window.WebSocket") == "undefined"
    wait_open(page, transport, log)
    if transport == "poll":  # publish while a poll is held, not between two polls
        wait_until(lambda: parked_polls(gw) >= 1, message="a parked poll")
    n = 50
    for seq in range(n):
        pub.send_multipart([b"demo.x", json.dumps({"seq": seq, "text": f"message {seq}"}).encode()])
    received = wait_received(page, n, log)
    assert len(received) == n, f"more messages than published: {received[n:]}"
    assert seqs_of(received) == list(range(n))
    check_in_order(received)
    assert {m["topic"] for m in received} == {"demo.x"}
    assert not any(m["binary"] for m in received)
    # the log shows one row per message (it may render in batches: wait for them)
    page.wait_for_function("(n) => document.querySelectorAll('#log .msg').length >= n", arg=n, timeout=5000)
    rows = page.eval_on_selector_all("#log .msg", "rows => rows.map(r => Number(r.dataset.id))")
    assert sorted(rows) == [m["id"] for m in received], rows
    assert rows in ([m["id"] for m in received], [m["id"] for m in reversed(received)])
    # the counters and the chart
    page.wait_for_function("(n) => /\\b" + str(n) + "\\b/.test(document.querySelector('#count').textContent)",
                           arg=n, timeout=5000)
    assert page.get_attribute("#last-id", "title") == f"id {received[-1]['id']}"
    assert page.evaluate("() => document.querySelector('#rate-chart') instanceof HTMLCanvasElement")
    # the server saw the transport the page says it uses
    after = server_transport_counts(gw)
    used = {k: after[k] - before[k] for k in after}
    key = {"websocket": "ws", "sse": "sse", "poll": "poll"}[transport]
    assert used[key] >= 1, used
    assert all(v == 0 for k, v in used.items() if k != key), f"other transports were used: {used}"
    assert not log.errors, str(log)


# -- a forced disconnect in the middle of a stream ------------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes ``n`` messages ``[b"demo.x", {"seq": i}]`` at about ``rate`` per second (owns the PUB)."""

    def __init__(self, pub, n: int, rate: float) -> None:
        super().__init__(name="publisher", daemon=True)
        self.pub = pub
        self.n = n
        self.interval = 1.0 / rate
        self.sent = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for seq in range(self.n):
                delay = start + seq * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.pub.send_multipart([b"demo.x", json.dumps({"seq": seq, "text": f"tick {seq}"}).encode()])
                self.sent = seq + 1
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_forced_disconnect_mid_stream_loses_nothing(live_gateway, pub, open_page, transport):
    gw = live_gateway
    query = {"websocket": "", "sse": "?transports=sse", "poll": "?transports=poll"}[transport]
    page, log = open_page(f"http://127.0.0.1:{gw.port}/{query}")
    wait_open(page, transport, log)
    if transport == "poll":
        wait_until(lambda: parked_polls(gw) >= 1, message="a parked poll")
    key = {"websocket": "ws", "sse": "sse", "poll": "poll"}[transport]
    connections = server_transport_counts(gw)[key]
    n = 300
    publisher = Publisher(pub, n, rate=100)
    publisher.start()
    try:
        wait_received(page, 80, log)  # the stream is flowing
        dropped = 0
        deadline = time.monotonic() + 5
        while not dropped:  # a poll may be between two requests: try again
            assert time.monotonic() < deadline, "no connection to drop"
            dropped = drop_connections(gw, transport)
            time.sleep(0.005)
        at_drop = publisher.sent
        # the page notices, reconnects (after its back-off) and resumes with since=lastId
        wait_until(lambda: server_transport_counts(gw)[key] > connections, timeout=10,
                   message=f"the page to reconnect over {transport}")
        wait_open(page, transport, log)
        if transport == "websocket":
            ARTIFACTS.mkdir(exist_ok=True)
            wait_received(page, 220, log)
            page.screenshot(path=str(ARTIFACTS / "page.png"))  # messages flowing
        publisher.join(10)
        assert not publisher.is_alive() and publisher.error is None, publisher.error
        received = wait_received(page, n, log, timeout=20)
    finally:
        publisher.join(10)
    assert at_drop < n, "the drop came after the end of the stream"
    seqs = seqs_of(received)
    assert len(seqs) == len(set(seqs)), "duplicates"
    missing = sorted(set(range(n)) - set(seqs))
    assert not missing, f"lost across the reconnect: {missing[:20]}\n{log}"
    assert seqs == list(range(n))
    check_in_order(received)
    assert page.evaluate("() => window.zmqwsPage.gaps || []") == []  # the resume was complete
    assert not log.errors, str(log)
    assert page.evaluate("() => window.zmqwsPage.client.transport") == transport


# -- the page over TLS -------------------------------------------------------------------------------------


def test_page_over_wss_with_a_self_signed_certificate(browser, make_gateway, pub, tmp_path):
    """The page served over https:// and its WebSocket over wss://, in a real Chromium that is
    told to accept the test's self-signed certificate (--ignore-certificate-errors)."""
    import subprocess

    import zmqws.tls

    certfile, keyfile = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", keyfile, "-out", certfile], check=True, capture_output=True, timeout=60)
    gw = make_gateway(pub.endpoint, ssl_context=zmqws.tls.server_context(certfile, keyfile),
                      **GATEWAY_OPTIONS)
    # A second Chromium from the module's Playwright (one Playwright per thread), with the flag.
    chromium = browser.browser_type.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS + ["--ignore-certificate-errors"], timeout=30_000)
    try:
        page = chromium.new_page()
        log = PageLog()
        page.on("pageerror", lambda exc: log.errors.append(str(exc)))
        page.goto(f"https://127.0.0.1:{gw.port}/", wait_until="load")
        wait_open(page, "websocket", log)
        assert page.evaluate("() => window.zmqwsPage.client.url").startswith("https://")
        n = 20
        # The SUB socket subscribed when the page connected; publish until the first arrives.
        deadline = time.monotonic() + 10
        while not page.evaluate("() => window.zmqwsPage.received.length") and time.monotonic() < deadline:
            pub.send_multipart([b"demo.x", json.dumps({"seq": -1, "text": "probe"}).encode()])
            time.sleep(0.1)
        for seq in range(n):
            pub.send_multipart([b"demo.x", json.dumps({"seq": seq, "text": f"message {seq}"}).encode()])
        page.wait_for_function(
            "(n) => window.zmqwsPage.received.filter(m => JSON.parse(m.data).seq >= 0).length >= n",
            arg=n, timeout=20_000, polling=50)
        received = page.evaluate("() => window.zmqwsPage.received")
        assert [s for s in seqs_of(received) if s >= 0] == list(range(n))  # probes (-1) aside
        check_in_order(received)
        assert gw.stats.ws_connections >= 1 and gw.stats.tls_errors == 0
    finally:
        chromium.close()


def test_chromium_negotiates_permessage_deflate_and_reads_compressed_frames(live_gateway, pub, open_page):
    """RFC 7692 with a real browser: Chromium offers permessage-deflate, the gateway accepts,
    and messages above the compression threshold (sent compressed, once for all) arrive intact."""
    gw = live_gateway
    page, log = open_page(f"http://127.0.0.1:{gw.port}/")
    wait_open(page, "websocket", log)
    negotiated = on_loop(gw, lambda: [c.ws.deflate is not None for c in gw.client_list()])
    assert negotiated == [True]
    bodies = [json.dumps({"seq": seq, "text": "compressible " * 200}) for seq in range(5)]
    sent_before = gw.stats.bytes_out
    for body in bodies:
        pub.send_multipart([b"demo.x", body.encode()])
    received = wait_received(page, len(bodies), log)
    assert [m["data"] for m in received] == bodies
    # the frames on the wire were compressed: far fewer bytes than the JSON envelopes
    assert gw.stats.bytes_out - sent_before < sum(len(b) for b in bodies) // 4


# -- the page at a glance: short ids, the gateway's counters, a phone's width -------------------------------


DOCS = Path(__file__).resolve().parent.parent / "docs"
# ZMQWS_SCREENSHOTS=1 refreshes docs/screenshot*.png (by hand; tests do not write into the repo in CI)
SCREENSHOTS = os.environ.get("ZMQWS_SCREENSHOTS") == "1"
CLOCK_ID = 1_796_461_000_000_001  # ids as a gateway gives them (microseconds since the epoch): 16 digits


@pytest.fixture
def demo_gateway(make_gateway):
    """A Gateway fed by the built-in demo publisher (prices.* and news), with clock-like ids."""
    from zmqws.demo import DemoPublisher

    demo = DemoPublisher(rate=40).start()
    try:
        yield make_gateway(demo.endpoint, first_id=CLOCK_ID, **GATEWAY_OPTIONS)
    finally:
        demo.stop()


def metrics_text(gw) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.parametrize("viewport, screenshot", [(DESKTOP, "screenshot.png"), (PHONE, "screenshot-phone.png")],
                         ids=["desktop", "phone"])
def test_page_short_ids_gateway_counters_and_no_horizontal_scroll(demo_gateway, open_page, viewport, screenshot):
    gw = demo_gateway
    page, log = open_page(f"http://127.0.0.1:{gw.port}/", viewport=viewport)
    wait_open(page, "websocket", log)
    received = wait_received(page, 20, log)
    assert all(m["id"] >= CLOCK_ID for m in received)
    # every log row shows the id's last 6 digits; the full id is in its title
    page.wait_for_function("() => document.querySelectorAll('#log .msg').length >= 20", timeout=5000)
    rows = page.eval_on_selector_all(
        "#log .msg",
        "rows => rows.map(r => [r.dataset.id, r.querySelector('.id').textContent, r.querySelector('.id').title])")
    for full, shown, title in rows:
        assert shown == "#\u2026" + full[-6:] and title == f"id {full}", (full, shown, title)
    last, shown, title = page.evaluate("() => { const e = document.querySelector('#last-id');"
                                       " return [e.dataset.id, e.textContent, e.title]; }")  # one read: it moves
    assert shown == "\u2026" + last[-6:] and title == f"id {last}"
    # the gateway's own counters, read from /metrics: the page's WebSocket is one client
    page.wait_for_function("""() => document.querySelector('#clients').textContent === '1'
                                    && Number(document.querySelector('#zmq-in').textContent) >= 20""",
                           timeout=10_000)  # fetched when the page opens, then every 2 s
    assert "websocket 1" in page.text_content("#clients-sub")
    assert page.text_content("#drops") == "0"
    upstream = "connected" if 'zmqws_upstream_connected{endpoint="' in metrics_text(gw) else "unknown"
    assert page.text_content("#upstream") == upstream
    # nothing wider than the screen: no horizontal scrolling, on a phone too
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
    assert page.evaluate("() => document.body.scrollWidth") <= viewport["width"]
    if SCREENSHOTS:
        time.sleep(8)  # a few bars in the rate chart, a fuller log
        page.screenshot(path=str(DOCS / screenshot))
    assert not log.errors, str(log)


def test_page_shows_a_disconnected_upstream(demo_gateway, open_page, monkeypatch):
    """The upstream gauge (zmqws_upstream_connected, one series per endpoint): one endpoint at 0
    shows "disconnected" and names it."""
    import zmqws.metrics

    render = zmqws.metrics.render
    monkeypatch.setattr(zmqws.metrics, "render", lambda *args: render(*args) + (
        b'# TYPE zmqws_upstream_connected gauge\nzmqws_upstream_connected{endpoint="tcp://10.0.0.5:5556"} 0\n'))
    page, log = open_page(f"http://127.0.0.1:{demo_gateway.port}/")
    wait_open(page, "websocket", log)
    page.wait_for_function("() => document.querySelector('#upstream').dataset.state === 'disconnected'",
                           timeout=10_000)
    assert page.text_content("#upstream-sub") == "tcp://10.0.0.5:5556"
    assert not log.errors, str(log)


def test_page_hides_the_counters_when_metrics_are_off(make_gateway, pub, open_page):
    gw = make_gateway(pub.endpoint, metrics=False, **GATEWAY_OPTIONS)
    page, log = open_page(f"http://127.0.0.1:{gw.port}/")
    wait_open(page, "websocket", log)
    page.wait_for_function("() => document.querySelector('#gateway').hidden", timeout=10_000)
    assert page.is_hidden("#gateway")
    assert page.evaluate("() => document.querySelector('link[rel=icon]').href").startswith("data:image/svg+xml,")


def demo_time_status(port: int) -> int:
    """The status of a ``POST /rpc`` request ``demo.time``."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/rpc", data=b'{"topic": "demo.time", "data": null}')
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_demo_page_requests_and_messages_the_demo_application(spawn, open_page, viewport):
    """``--demo`` runs the demo application as ``--rpc``: the page's "Request" shows its reply
    (POST /rpc, topic demo.echo) with the round trip; "Send" sends a message on the page's
    WebSocket and the application's ``send`` back shows in the log as a row to this client."""
    process = spawn(sys.executable, "-m", "zmqws", "--demo", "--port", "0")
    port = int(process.wait_for_line("stderr", re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")).group(1))
    wait_until(lambda: demo_time_status(port) != 503, message="the demo application connected")  # DEALER connects after
    page, log = open_page(f"http://127.0.0.1:{port}/", viewport=viewport)
    wait_open(page, "websocket", log)
    page.wait_for_function("() => !document.querySelector('#twoway').hidden", timeout=10_000)
    page.fill("#twoway-input", "hello from chromium")
    page.click("#twoway-request")
    page.wait_for_function("() => document.querySelector('#twoway-out').dataset.status", timeout=10_000)
    answer = page.text_content("#twoway-out")
    assert page.get_attribute("#twoway-out", "data-status") == "200", answer
    assert re.fullmatch(r'reply: \{"echo": "hello from chromium", "time": [\d.]+\}  \(\d+ ms round trip\)',
                        answer), answer
    page.fill("#twoway-input", "a message")
    page.click("#twoway-send")
    page.wait_for_function("() => window.zmqwsPage.direct.length === 1", timeout=10_000)
    echo = page.evaluate("() => window.zmqwsPage.direct[0]")
    assert echo["topic"] == "demo.echo" and json.loads(echo["data"])["echo"] == "a message"
    page.wait_for_function("() => document.querySelector('#log .direct')", timeout=5000)
    assert "a message" in page.text_content("#log .direct")
    assert page.evaluate("() => window.zmqwsPage.received.every(m => m.id !== null)")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
    assert page.evaluate("() => document.body.scrollWidth") <= viewport["width"]
    assert not log.errors, str(log)


def test_page_hides_the_two_way_form_without_rpc(make_gateway, pub, open_page):
    """Without --rpc, GET /rpc is 404: the form stays hidden, and the page works as before."""
    gw = make_gateway(pub.endpoint, **GATEWAY_OPTIONS)
    page, log = open_page(f"http://127.0.0.1:{gw.port}/")
    wait_open(page, "websocket", log)
    page.wait_for_function("() => performance.getEntriesByName(location.origin + '/rpc').length", timeout=10_000)
    time.sleep(0.2)  # the probe's answer handled
    assert page.is_hidden("#twoway")
    assert not log.errors, str(log)
