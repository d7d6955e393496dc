"""Hostile soak: every attack of "Hostile input" at once while good clients read a steady stream.

    python benchmarks/hostile_soak.py                              # 500 good clients, 60 s
    python benchmarks/hostile_soak.py --clients 100 --seconds 10   # the short run

What runs (the pieces come from ``benchmarks/soak.py``):

* the gateway as a subprocess: ``python -m zmqws --subscribe-all --token-file FILE --push
  tcp://... --payload text --max-queue 256K --handshake-timeout 2 --max-connections N
  --max-connections-per-address 32`` with ``ZMQWS_METRICS_TOKEN`` a secret of this script (its
  own ``/metrics`` reads send it; no client token opens ``/metrics``);
  the token file gives the good clients ``good`` (read ``prices.,news.``, no writing) and the
  attackers ``hostile`` (read ``prices.``, write ``orders.``), and ``ops`` (read ``*``);
* every client connects from a loopback address of its own (``127.G.x.y``), the Engine.IO
  flood from ``127.0.0.2`` alone, the ``/healthz`` prober and the ``/metrics`` reads from
  ``127.0.0.1``; every request says ``Host: 127.0.0.1`` (but attack 12's);
* a publisher at ``--rate`` msg/s spread over four topics, ``prices.eu``, ``prices.us``,
  ``news.all`` and ``secret.keys``, each with its own 10-digit sequence numbers (secret
  payloads say ``SECRET``), and every ``--odd-every`` seconds a message that is not UTF-8 on
  ``prices.eu`` and ``news.all`` (attack 6: with ``--payload text`` it must not wedge the route);
* a PULL socket the gateway's ``--push`` connects to: every message written upstream;
* ``--clients`` good clients (soak.py's raw asyncio clients) in ``--procs`` processes, one topic
  each (``prices.eu``, ``prices.us``, ``news.all`` in turn), that must receive every message of
  their topic in order (the non-UTF-8 ones aside) and close with 1000 after the end marker;
* one process of attackers, each attack in a loop for the whole run, all at once:

  == ============= =====================================================================
  #  attack        what it does, in a loop
  == ============= =====================================================================
  1  sio_secret    Socket.IO with the restricted token: CONNECT asking for ``secret.``
                   (must be a CONNECT_ERROR), and a ``subscribe`` to ``secret.`` after a
                   CONNECT (must be refused); nothing saying SECRET may ever arrive
  2  pipelined     ``GET /zmqws.js`` x 1000 on one connection, ``GET /poll?since=0`` x 100
                   on another, never read (small receive buffer), held 5 s
  3  resume        ``/events`` with ``Last-Event-ID: 0`` and a WebSocket with ``?since=0``,
                   never read, held 8 s
  4  eio_flood     Engine.IO polling handshakes over keep-alive connections (200/s at most)
                   from its own address until ten 503s (the per-address cap), then, past
                   ``--handshake-timeout``, a poll of the round's first session (gone: 400)
  5  many_topics   a Socket.IO ``subscribe`` of 20 000 topics; a WebSocket with ``?topic=`` x 300
  6  (publisher)   the non-UTF-8 messages above
  7  idle          ``--idle`` connections held open: half bare TCP, half upgraded WebSockets
                   that never answer a ping; each one reopened when the gateway drops it
  8  sio_offset    Socket.IO CONNECT with a real pid (of a session just closed) and offset "²"
  9  malformed     ``?since=²``, ``Last-Event-ID: ²``, 5000-digit ids (WebSocket and SSE), a
                   ``{"subscribe": [[[...]]]}`` control message 100 000 deep, lone surrogates
                   in a WebSocket control message and in a Socket.IO CONNECT
  10 write_rights  JSON-envelope sends on ``secret.`` and on no topic, a Socket.IO event on
                   ``secret.``, with the restricted token and with the read-only one, plus
                   allowed writes on ``orders.`` (so that the PULL check is not vacuous)
  11 metrics       ``/metrics`` with no token, with ``?token=hostile``, with ``Bearer ops``
  12 evil_host     ``/healthz``, ``/zmqws.js``, ``/events`` and an upgrade with
                   ``Host: evil.example``
  -  soak kinds    ``--slots`` slots of soak.py's misbehaving episodes (unmasked, bad opcode,
                   half open, reset, oversized, invalid UTF-8, ping flood; never_read and
                   slow_read need longer than a run here and are left to attacks 2 and 3)
  == ============= =====================================================================

The checks (a table; exit status 1 if any fails):

* every good client received every message of its topic, in order, and the end marker;
* no message of ``secret.`` reached a client without the right, and every restricted
  Socket.IO request for it was refused;
* the PULL socket received nothing outside the write rights (``orders.``), and the allowed
  writes did arrive;
* the gateway's RSS, sampled every second from ``/proc/PID/status``, stayed under
  ``baseline + 64 KiB x --max-connections + --max-queue x queueing attackers + 32 MiB``:
  the gateway runs with ``--max-connections`` = good clients + idle + queueing attackers
  + ``--per-address`` (the flood's worst case) + 200 (handshakes, the attack loops' churn,
  probes), so that the global cap is never reached: the good clients and the prober always
  fit and the flood meets the per-address cap alone; the queueing attackers are the
  connections the attacks and slots hold at once that can make the gateway queue output
  (all but the idle ones: 15 + ``--slots``); the 32 MiB are the interpreter's arenas;
* every attack got its known answer (``known_answers``: 403 for a foreign ``Host``, 400 for
  malformed ids, 401 for ``/metrics`` without its token, a fresh session for a bad
  Socket.IO offset, exactly ``--per-address`` - 1 Engine.IO sessions then 503, and those
  gone after ``--handshake-timeout``, ...); any other outcome fails;
* ``zmqws_queued_bytes`` (every output queue; read from ``/metrics`` every second) stayed
  under ``queueing attackers x (--max-queue + 64 KiB)``, and pipelining paused at least once;
* ``/healthz``, probed every 100 ms on a new connection by a process of its own, answered
  200 every time, within 50 ms (p50, p99 and max are reported);
* every soak episode got its expected answer; every attack ran;
* no ``Traceback`` in the gateway's stderr; the gateway exits with status 0 on SIGTERM.

Everything stops by itself within ``--seconds`` + 30 s; ports are ephemeral.
``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import multiprocessing
import os
import random
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Callable

import soak
from soak import END, EXPECTED, REQUEST, GatewayProcess, Good, Raw, client_frame

GOOD_TOPICS = [b"prices.eu", b"prices.us", b"news.all"]
SECRET_TOPIC = b"secret.keys"
ODD_TOPICS = [b"prices.eu", b"news.all"]  # also get the non-UTF-8 messages (attack 6)
SLOT_TOPIC = "prices.us"                  # the soak episodes read numbered payloads only
ODD_TAIL = b" not UTF-8"
ODD = b"\xff\xfe" + ODD_TAIL
TOKENS = """\
# token   read prefixes   write prefixes
good      prices.,news.   -
hostile   prices.         orders.
ops       *               -
"""
IDLE_CHURN_TOPIC = "prices.idle"  # no message is ever published there
QUIET = b'40{"topics":["prices.none"]}'  # a Socket.IO CONNECT to a topic without messages
# Connections each attack holds at once that can make the gateway queue output for them.
QUEUEING = {"sio_secret": 1, "pipelined": 2, "resume": 2, "eio_flood": 1, "many_topics": 1,
            "sio_offset": 2, "malformed": 1, "write_rights": 3, "metrics": 1, "evil_host": 1}
ATTACKS = ["sio_secret", "pipelined", "resume", "eio_flood", "many_topics", "idle", "sio_offset",
           "malformed", "write_rights", "metrics", "evil_host"]
HEALTHZ_LIMIT = 0.050
# Every client connects from a local address of its own (127.G.x.y, G: 1 good clients, 2 idle
# connections, 3 attack loops, 4 soak slots), the Engine.IO flood from FLOOD_SOURCE alone, the
# /healthz prober and the /metrics reads from 127.0.0.1: --max-connections-per-address caps the
# flood and nobody else (see max_connections).
FLOOD_SOURCE = "127.0.0.2"
SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("SOURCE", default=None)


def source(group: int, index: int) -> str:
    """The local address of client ``index`` of ``group``."""
    return f"127.{group}.{index // 250}.{index % 250 + 1}"


def request(path: str, host: str = "127.0.0.1", headers: str = "", upgrade: bool = False) -> bytes:
    """An HTTP/1.1 GET (a WebSocket upgrade if told), keep-alive."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
    if upgrade:
        head += REQUEST.split(b"\r\n", 2)[2].decode().replace("\r\n\r\n", "\r\n")
    return (head + "\r\n").encode("utf-8", "surrogatepass")


def upgrade(path: str, **kw: Any) -> bytes:
    return request(path, upgrade=True, **kw)


# =====================================================================================
# good clients (worker processes)
# =====================================================================================


class Reader(Good):
    """A good client of one topic that also counts the non-UTF-8 messages (skipped: what the
    gateway does with them is its business; everything after them must still come) and any
    secret message (it has no right to them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: bytes) -> None:
        super().__init__(loop, upgrade(f"/?token=good&topic={topic.decode()}"))
        self.topic = topic
        self.odd = 0
        self.secrets = 0

    def message(self, buf: bytearray, start: int, end: int) -> None:
        if buf[end - len(ODD_TAIL):end] == ODD_TAIL:  # as sent, or with its bytes replaced
            self.odd += 1
        elif buf[start + 11:start + 17] == b"SECRET":
            self.secrets += 1
            self._fail("a secret message")
        else:
            super().message(buf, start, end)


async def readers_main(cfg: dict[str, Any], conn) -> None:
    loop = asyncio.get_running_loop()
    monitor = asyncio.ensure_future(soak.lag_monitor())
    topics = [GOOD_TOPICS[(cfg["first"] + i) % len(GOOD_TOPICS)] for i in range(cfg["good"])]
    goods = await soak.open_goods(cfg["port"], [lambda t=t: Reader(loop, t) for t in topics],
                                  [source(1, cfg["first"] + i) for i in range(cfg["good"])])
    conn.send(("ready", sum(1 for g in goods if g.open)))
    command, storm_end = await loop.run_in_executor(None, conn.recv)
    assert command == "start"
    soak.LAG["max"] = 0.0
    seen = await soak.finish_goods(goods, storm_end - time.monotonic() + 3)
    for g, report in zip(goods, seen):
        report.update(topic=g.topic.decode(), odd=g.odd, secrets=g.secrets)
    monitor.cancel()
    conn.send(("done", {"good": seen, "max_loop_lag": round(soak.LAG["max"], 3)}))


def readers_entry(cfg: dict[str, Any], conn) -> None:
    asyncio.run(readers_main(cfg, conn))


# =====================================================================================
# attackers (one worker process)
# =====================================================================================


class Attacks:
    """What the attacks saw: outcomes counted per attack, and the violations (what must never
    happen, whatever the code: a secret message read, a refused request accepted)."""

    def __init__(self, port: int, storm_end: float, handshake_timeout: float) -> None:
        self.port = port
        self.storm_end = storm_end
        self.handshake_timeout = handshake_timeout
        self.rounds: Counter = Counter()
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.violations: list[str] = []
        self.allowed_writes = 0

    def running(self) -> bool:
        return time.monotonic() < self.storm_end

    def remaining(self) -> float:
        return self.storm_end - time.monotonic()

    def tally(self, attack: str, outcome: str) -> None:
        self.outcomes[attack][outcome] += 1

    def violation(self, attack: str, what: str) -> None:
        if len(self.violations) < 100:
            self.violations.append(f"{attack}: {what}")

    async def loop(self, attack: str, body: Callable[[], Any], pause: float, address: str) -> None:
        """``body`` again and again until the storm is over, connecting from ``address``; an
        exception ends one round only."""
        SOURCE.set(address)  # this task's context only
        while self.running():
            self.rounds[attack] += 1
            try:
                await body()
            except (OSError, EOFError, asyncio.TimeoutError) as exc:
                self.tally(attack, f"{type(exc).__name__}")
            await asyncio.sleep(min(pause, max(0.0, self.remaining())))

    async def connect(self, rcvbuf: int | None = None) -> Raw:
        raw = Raw(asyncio.get_running_loop(), self.port, rcvbuf, SOURCE.get())
        try:
            await raw.connect()
        except BaseException:
            raw.close()
            raise
        return raw

    async def hold(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.remaining())))


async def read_until(raw: Raw, size: int, deadline: float) -> bool:
    """Read until ``raw.buf`` holds ``size`` bytes; False if the connection closes first."""
    while len(raw.buf) < size:
        chunk = await raw.recv(65536, max(0.01, deadline - time.monotonic()))
        if not chunk:
            return False
        raw.buf += chunk
    return True


async def response_head(raw: Raw, timeout: float = 5.0, body: bool = False) -> int:
    """The status of the next HTTP response (0 if the connection closes first); what follows
    the head stays in ``raw.buf`` (the body too, unless ``body``: then it is read and dropped)."""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in raw.buf:
        if not await read_until(raw, len(raw.buf) + 1, deadline):
            return 0
    head, _, raw.buf = raw.buf.partition(b"\r\n\r\n")
    raw.pos = 0
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    if body:
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length and not await read_until(raw, int(length.group(1)), deadline):
            return 0
        size = int(length.group(1)) if length else 0
        raw.last_body, raw.buf = raw.buf[:size], raw.buf[size:]
    return status


async def status_of(at: Attacks, data: bytes, rcvbuf: int | None = None) -> tuple[Raw, int]:
    """A new connection sending ``data``; (the connection, the response status)."""
    raw = await at.connect(rcvbuf)
    try:
        await raw.send(data)
        return raw, await response_head(raw)
    except BaseException:
        raw.close()
        raise


async def answer(raw: Raw, timeout: float = 5.0) -> str:
    """What the gateway answers next on a WebSocket: the text of a data frame, "close NNNN",
    or "timeout"/"eof"/"reset"; pings are answered."""
    deadline = time.monotonic() + timeout
    while True:
        opcode, payload = await raw.frame(deadline - time.monotonic())
        if opcode is None:
            return payload.decode()
        if opcode == 9:
            await raw.send(client_frame(0xA, payload))
        elif opcode == 8:
            return f"close {int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else 1005}"
        elif opcode in (1, 2):
            return payload.decode("utf-8", "replace")


async def sio_open(at: Attacks, token: str = "hostile") -> tuple[Raw | None, str]:
    """A Socket.IO client over a WebSocket, past the Engine.IO open packet."""
    raw, status = await status_of(at, upgrade(f"/socket.io/?EIO=4&transport=websocket&token={token}"))
    if status != 101:
        raw.close()
        return None, f"status {status}"
    opened = await answer(raw)
    if not opened.startswith("0{"):
        raw.close()
        return None, f"no open packet: {opened[:40]}"
    return raw, "open"


async def sio_answer(at: Attacks, raw: Raw, timeout: float = 5.0) -> str:
    """The next Socket.IO packet but events (without the Engine.IO ``4``); Engine.IO pings
    answered; an event saying SECRET is a violation."""
    deadline = time.monotonic() + timeout
    while True:
        got = await answer(raw, max(0.01, deadline - time.monotonic()))
        if got == "2":
            await raw.send(client_frame(0x1, b"3"))
        elif got.startswith(("42", "45")):
            if "SECRET" in got:
                at.violation("socket.io", f"a secret message reached a restricted client: {got[:60]}")
        else:
            return got.removeprefix("4")


async def no_secret(at: Attacks, attack: str, raw: Raw, seconds: float) -> None:
    """Read for ``seconds``: a frame saying SECRET is a violation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = await answer(raw, deadline - time.monotonic())
        if "SECRET" in got:
            at.violation(attack, f"a secret message reached a restricted client: {got[:60]}")
        if got in ("timeout", "eof", "reset") or got.startswith("close"):
            return


# -- 1 -------------------------------------------------------------------------------------


async def sio_secret(at: Attacks) -> None:
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("sio_secret", how)
        return
    try:
        await raw.send(client_frame(0x1, b'40{"topics":["secret."]}'))
        got = await sio_answer(at, raw)
        at.tally("sio_secret", "connect: CONNECT_ERROR" if got.startswith("4") else f"connect: {got[:30]}")
        if got.startswith("0"):
            at.violation("sio_secret", f"CONNECT accepted for secret.: {got[:60]}")
        await no_secret(at, "sio_secret", raw, 0.3)
    finally:
        raw.close()
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("sio_secret", how)
        return
    try:
        await raw.send(client_frame(0x1, QUIET))
        if not (await sio_answer(at, raw)).startswith("0"):
            at.tally("sio_secret", "plain CONNECT refused")
            return
        await raw.send(client_frame(0x1, b'421["subscribe",["secret."]]'))
        got = await sio_answer(at, raw)
        refused = got.startswith("31") and "error" in got
        at.tally("sio_secret", "subscribe: refused" if refused else f"subscribe: {got[:30]}")
        if not refused:
            at.violation("sio_secret", f"subscribe to secret. not refused: {got[:60]}")
        await no_secret(at, "sio_secret", raw, 1.0)
    finally:
        raw.close()


# -- 2 -------------------------------------------------------------------------------------


async def pipelined(at: Attacks, path: str, count: int) -> None:
    raw = await at.connect(rcvbuf=4096)
    try:
        try:
            await raw.send(request(path) * count)
            at.tally("pipelined", f"{path.split('?')[0]} x{count}: all sent")
        except asyncio.TimeoutError:
            at.tally("pipelined", f"{path.split('?')[0]} x{count}: the gateway stopped reading")
        await at.hold(5.0)
    finally:
        raw.close()


# -- 3 -------------------------------------------------------------------------------------


async def resume(at: Attacks, data: bytes, name: str) -> None:
    raw, status = await status_of(at, data, rcvbuf=4096)
    try:
        at.tally("resume", f"{name}: {status}")
        await at.hold(8.0)
    finally:
        raw.close()


# -- 4 -------------------------------------------------------------------------------------


EIO_PATH = "/socket.io/?EIO=4&transport=polling&token=hostile"


async def eio_flood(at: Attacks) -> None:
    """Polling handshakes (200/s at most) on a keep-alive connection from FLOOD_SOURCE until the
    per-address cap has answered 503 ten times (a 503 closes the connection: another is opened),
    tallied as "opened N sessions, then 503"; then, past --handshake-timeout, a poll of the
    round's first session: it must be gone (400, "Session ID unknown")."""
    sids: list[str] = []
    refused = 0
    raw = None
    try:
        while at.running() and refused < 10:
            started = time.monotonic()
            if raw is None:
                raw = await at.connect()
            await raw.send(request(EIO_PATH))
            status = await response_head(raw, body=True)
            at.tally("eio_flood", f"{status}")
            if status == 200:
                sids.append(json.loads(bytes(raw.last_body)[1:])["sid"])
            else:
                refused += status == 503
                raw.close()
                raw = None
                if status != 503:
                    return
            await asyncio.sleep(max(0.0, 0.005 - (time.monotonic() - started)))
    finally:
        if raw is not None:
            raw.close()
    if refused:
        at.tally("eio_flood", f"opened {len(sids)} sessions, then 503")
    await at.hold(at.handshake_timeout + 1.5)
    if sids and at.running():
        raw, status = await status_of(at, request(f"{EIO_PATH}&sid={sids[0]}"))
        raw.close()
        at.tally("eio_flood", f"reaped: {status}")


# -- 5 -------------------------------------------------------------------------------------


SUBSCRIBE_20000 = b"421" + json.dumps(["subscribe", [f"prices.{i}." for i in range(20_000)]]).encode()


async def many_topics(at: Attacks) -> None:
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("many_topics", how)
    else:
        try:
            await raw.send(client_frame(0x1, QUIET))
            if (await sio_answer(at, raw)).startswith("0"):
                await raw.send(client_frame(0x1, SUBSCRIBE_20000))
                got = await sio_answer(at, raw, 10.0)
                at.tally("many_topics", "sio 20000: refused" if got.startswith("31") and "error" in got
                         else f"sio 20000: {got[:30]}")
        finally:
            raw.close()
    query = "&".join(f"topic=prices.{i}." for i in range(300))
    raw, status = await status_of(at, upgrade(f"/?token=hostile&{query}"))
    raw.close()
    at.tally("many_topics", f"ws 300: {status}")


# -- 7 -------------------------------------------------------------------------------------


async def idle(at: Attacks, upgraded: bool) -> None:
    """One idle connection, held until the gateway drops it (then the loop opens another)."""
    raw = await at.connect()
    try:
        opened = time.monotonic()
        if upgraded:
            await raw.send(upgrade(f"/?token=hostile&topic={IDLE_CHURN_TOPIC}"))
        while at.running():  # never answers a ping, never reads a message (there are none)
            try:
                chunk = await raw.recv(65536, max(0.01, at.remaining()))
            except asyncio.TimeoutError:
                return
            if not chunk:
                took = time.monotonic() - opened
                at.tally("idle", f"{'ws' if upgraded else 'tcp'} dropped after "
                         f"{'<5' if took < 5 else '5-30' if took < 30 else '>30'} s")
                return
    finally:
        raw.close()


# -- 8 -------------------------------------------------------------------------------------


async def sio_offset(at: Attacks) -> None:
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("sio_offset", how)
        return
    try:
        await raw.send(client_frame(0x1, QUIET))
        connected = await sio_answer(at, raw)
    finally:
        raw.close()  # the session ends: its pid may now be recovered
    try:
        pid = json.loads(connected[1:])["pid"]
    except (ValueError, KeyError, TypeError):
        at.tally("sio_offset", f"no pid: {connected[:30]}")
        return
    await asyncio.sleep(0.1)
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("sio_offset", how)
        return
    try:
        await raw.send(client_frame(0x1, b"40" + json.dumps({"pid": pid, "offset": "²"}).encode()))
        got = await sio_answer(at, raw)
        if got.startswith("0{"):
            fresh = json.loads(got[1:]).get("pid") != pid
            at.tally("sio_offset", "fresh CONNECT" if fresh else "CONNECT recovering the old session")
        else:
            at.tally("sio_offset", {"4": "CONNECT_ERROR"}.get(got[:1], got[:30]))
    finally:
        raw.close()


# -- 9 -------------------------------------------------------------------------------------


DEEP = b'{"subscribe": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HTTP_CASES = {
    "ws since=²": upgrade("/?token=hostile&topic=prices.&since=%C2%B2"),
    "ws since=5000 digits": upgrade("/?token=hostile&topic=prices.&since=" + "9" * 5000),
    "sse Last-Event-ID: ²": request("/events?token=hostile&topic=prices.", headers="Last-Event-ID: ²\r\n"),
    "sse Last-Event-ID: 5000 digits": request("/events?token=hostile&topic=prices.",
                                              headers=f"Last-Event-ID: {'9' * 5000}\r\n"),
    "poll since=²": request("/poll?token=hostile&topic=prices.&since=%C2%B2"),
}
WS_CASES = {
    "ws subscribe 100000 deep": DEEP,
    "ws subscribe lone surrogate": b'{"subscribe": "\\ud800"}',
}
SIO_CASES = {
    "sio CONNECT lone surrogate": b'40{"topics":["\\udc00"]}',
    "sio event lone surrogate": b'429["orders.\\ud800",1]',
}


async def malformed(at: Attacks) -> None:
    for name, data in HTTP_CASES.items():
        raw, status = await status_of(at, data)
        raw.close()
        at.tally("malformed", f"{name}: {status}")
    for name, message in WS_CASES.items():
        raw, status = await status_of(at, upgrade("/?token=hostile&topic=prices.none"))
        try:
            if status == 101:
                await raw.send(client_frame(0x1, message))
                got = await answer(raw)
                at.tally("malformed", f"{name}: {'error answer' if got.startswith('{') else got[:30]}")
            else:
                at.tally("malformed", f"{name}: upgrade {status}")
        finally:
            raw.close()
    for name, message in SIO_CASES.items():
        raw, how = await sio_open(at)
        if raw is None:
            at.tally("malformed", f"{name}: {how}")
            continue
        try:
            if message.startswith(b"429"):
                await raw.send(client_frame(0x1, QUIET))
                await sio_answer(at, raw)
            await raw.send(client_frame(0x1, message))
            got = await sio_answer(at, raw, 2.0)
            label = ("CONNECT_ERROR" if got.startswith("4{") else "error ack" if got.startswith("39[")
                     and '"ok":false' in got.replace(" ", "") else got[:30])
            at.tally("malformed", f"{name}: {label}")
            if got.startswith("39") and '"ok":true' in got:
                at.allowed_writes += 1  # forwarded on an orders. topic: allowed
        finally:
            raw.close()


# -- 10 ------------------------------------------------------------------------------------


async def write_rights(at: Attacks) -> None:
    hostile, status = await status_of(at, upgrade("/?token=hostile&topic=prices.none&format=json"))
    reader, status2 = await status_of(at, upgrade("/?token=good&topic=prices.none&format=json"))
    try:
        if status != 101 or status2 != 101:
            at.tally("write_rights", f"upgrade {status}/{status2}")
            return
        for raw, message in ((hostile, {"topic": "secret.x", "data": 1}),
                             (hostile, "no topic: goes on 'ws'"),
                             (reader, {"topic": "orders.x", "data": 1})):
            data = message if isinstance(message, str) else json.dumps(message)
            await raw.send(client_frame(0x1, data.encode()))
            got = await answer(raw)
            at.tally("write_rights", "refused" if "not allowed for writing" in got else got[:30])
        await hostile.send(client_frame(0x1, json.dumps({"topic": "orders.ok", "data": 1}).encode()))
        at.allowed_writes += 1
    finally:
        hostile.close()
        reader.close()
    raw, how = await sio_open(at)
    if raw is None:
        at.tally("write_rights", how)
        return
    try:
        await raw.send(client_frame(0x1, QUIET))
        if (await sio_answer(at, raw)).startswith("0"):
            await raw.send(client_frame(0x1, b'427["secret.y",1]'))
            got = await sio_answer(at, raw)
            at.tally("write_rights", "sio refused" if "not allowed for writing" in got else f"sio {got[:30]}")
            await raw.send(client_frame(0x1, b'428["orders.sio",2]'))
            if (await sio_answer(at, raw)).startswith("38"):
                at.allowed_writes += 1
    finally:
        raw.close()


# -- 11 ------------------------------------------------------------------------------------


METRICS = {
    "no token": request("/metrics"),
    "client token": request("/metrics?token=hostile"),
    "ops token": request("/metrics", headers="Authorization: Bearer ops\r\n"),
}


async def metrics_access(at: Attacks) -> None:
    """``/metrics`` without the --metrics-token (the gateway's is a secret of the driver)."""
    for name, data in METRICS.items():
        raw, status = await status_of(at, data)
        raw.close()
        at.tally("metrics", f"{name}: {status}")


# -- 12 ------------------------------------------------------------------------------------


EVIL = {
    "/healthz": request("/healthz", host="evil.example"),
    "/zmqws.js": request("/zmqws.js", host="evil.example"),
    "/events": request("/events?token=hostile&topic=prices.", host="evil.example"),
    "upgrade": upgrade("/?token=hostile&topic=prices.", host="evil.example"),
}


async def evil_host(at: Attacks) -> None:
    for name, data in EVIL.items():
        raw, status = await status_of(at, data)
        raw.close()
        at.tally("evil_host", f"{name}: {status}")


# -- the attackers' process ----------------------------------------------------------------


def attack_loops(at: Attacks, idle_count: int) -> list[Any]:
    """Every attack's loop (coroutines), all to run at once, each from its own address."""
    loops = [
        ("sio_secret", lambda: sio_secret(at), 0.2),
        ("pipelined", lambda: pipelined(at, "/zmqws.js", 1000), 0.5),
        ("pipelined", lambda: pipelined(at, "/poll?since=0&token=hostile&topic=prices.", 100), 0.5),
        ("resume", lambda: resume(at, request("/events?token=hostile&topic=prices.",
                                              headers="Last-Event-ID: 0\r\n"), "sse"), 0.5),
        ("resume", lambda: resume(at, upgrade("/?token=hostile&topic=prices.&since=0"), "ws"), 0.5),
        ("many_topics", lambda: many_topics(at), 1.0),
        ("sio_offset", lambda: sio_offset(at), 0.5),
        ("malformed", lambda: malformed(at), 0.5),
        ("write_rights", lambda: write_rights(at), 0.2),
        ("metrics", lambda: metrics_access(at), 0.5),
        ("evil_host", lambda: evil_host(at), 0.5),
    ]
    coros = [at.loop(name, body, pause, source(3, i)) for i, (name, body, pause) in enumerate(loops)]
    coros.append(at.loop("eio_flood", lambda: eio_flood(at), 0.1, FLOOD_SOURCE))
    for i in range(idle_count):
        coros.append(at.loop("idle", lambda upgraded=i % 2 == 1: idle(at, upgraded), 0.2, source(2, i)))
    return coros


async def attackers_main(cfg: dict[str, Any], conn) -> None:
    loop = asyncio.get_running_loop()
    monitor = asyncio.ensure_future(soak.lag_monitor())
    conn.send(("ready", 0))
    command, storm_end = await loop.run_in_executor(None, conn.recv)
    assert command == "start"
    at = Attacks(cfg["port"], storm_end, cfg["handshake_timeout"])
    slot_cfg = dict(cfg, storm_start=time.monotonic(), request=upgrade(f"/?token=good&topic={SLOT_TOPIC}"))
    # The soak episodes start early enough to end within the storm (the longest takes 15 s).
    slot_end = storm_end - min(12.0, cfg["seconds"] / 3)
    tasks = [asyncio.ensure_future(coro) for coro in attack_loops(at, cfg["idle"])]
    slots = [asyncio.ensure_future(soak.slot(i, dict(slot_cfg, source=source(4, i)), slot_end, loop))
             for i in range(cfg["slots"])]
    await asyncio.wait(tasks + slots, timeout=max(0.0, storm_end - time.monotonic()) + 10)
    for task in tasks + slots:
        task.cancel()
    await asyncio.gather(*tasks, *slots, return_exceptions=True)
    episodes = [e for s in slots if not s.cancelled() and s.exception() is None for e in s.result()]
    errors = [f"{type(t.exception()).__name__}: {t.exception()}" for t in tasks
              if t.done() and not t.cancelled() and t.exception() is not None]
    monitor.cancel()
    conn.send(("done", {"rounds": dict(at.rounds), "outcomes": {k: dict(v) for k, v in at.outcomes.items()},
                        "violations": at.violations, "allowed_writes": at.allowed_writes,
                        "episodes": episodes, "slots_cut": sum(1 for s in slots if s.cancelled()),
                        "loop_errors": errors, "max_loop_lag": round(soak.LAG["max"], 3)}))


def attackers_entry(cfg: dict[str, Any], conn) -> None:
    random.seed(os.getpid())
    asyncio.run(attackers_main(cfg, conn))


# =====================================================================================
# driver: gateway, publisher, PULL, /healthz probe, RSS, verdict
# =====================================================================================


def healthz_entry(port: int, start: float, end: float, conn) -> None:
    """Every 100 ms from ``start`` to ``end``: ``GET /healthz`` on a new connection; sends
    back [(seconds since start, latency s, status)] (status 0: no answer within 2 s)."""
    probe = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    results = []
    at = max(start, time.monotonic())
    while at < end:
        time.sleep(max(0.0, at - time.monotonic()))
        began = time.monotonic()
        status = 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(probe)
                data = b""
                while b"\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data[9:12])
        except OSError:
            pass
        results.append((round(began - start, 2), time.monotonic() - began, status))
        at = max(at + 0.1, time.monotonic())  # after a slow probe, no burst to catch up
    conn.send(results)


def pull_messages(sock, stop: threading.Event, topics: Counter) -> None:
    """Count what the gateway writes upstream, by topic, until ``stop``."""
    while not stop.is_set():
        if sock.poll(100):
            topics[sock.recv_multipart()[0].decode("utf-8", "replace")] += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def max_connections(args: argparse.Namespace, queueing: int) -> int:
    """The gateway's --max-connections: every client of the run at once, the Engine.IO flood's
    worst case (its address's cap, --per-address, sessions and connections together), and 200
    to spare (connections in their handshake, the churn of the attack loops, the probes): the
    global cap is never reached, so /healthz and the good clients always fit; the flood meets
    the per-address cap alone."""
    return args.clients + args.idle + queueing + args.per_address + 200


def known_answers(args: argparse.Namespace) -> dict[str, set[str]]:
    """What the gateway must answer each attack (docs/reliability.md "Hostile input",
    tests/test_attacks.py); any other outcome fails the run."""
    sent = ("all sent", "the gateway stopped reading")
    return {
        "sio_secret": {"connect: CONNECT_ERROR", "subscribe: refused"},
        "pipelined": {f"{path} x{n}: {how}" for path, n in (("/zmqws.js", 1000), ("/poll", 100)) for how in sent},
        "resume": {"sse: 200", "ws: 101"},
        "eio_flood": {"200", "503", f"opened {args.per_address - 1} sessions, then 503", "reaped: 400"},
        "many_topics": {"sio 20000: refused", "ws 300: 400"},
        "idle": {"tcp dropped after <5 s", "ws dropped after >30 s"},
        "sio_offset": {"fresh CONNECT"},
        "malformed": {f"{name}: 400" for name in HTTP_CASES} | {f"{name}: close 1008" for name in WS_CASES}
        | {"sio CONNECT lone surrogate: CONNECT_ERROR", "sio event lone surrogate: error ack"},
        "write_rights": {"refused", "sio refused"},
        "metrics": {f"{name}: 401" for name in METRICS},
        "evil_host": {f"{name}: 403" for name in EVIL},
    }


def sample_metrics(port: int, token: str, stop: threading.Event, seen: dict[str, Any]) -> None:
    """Every second until ``stop``: the peak of ``zmqws_queued_bytes`` (every client's output
    queue) and of the clients connected; failed reads counted."""
    while not stop.wait(1.0):
        try:
            m = soak.metrics(port, 2.0, token)
        except OSError as exc:
            seen["errors"].append(str(exc))
            continue
        seen["queued_peak"] = max(seen["queued_peak"], m.get("zmqws_queued_bytes", 0.0))
        clients = sum(v for k, v in m.items() if k.startswith("zmqws_clients{"))
        seen["clients_peak"] = max(seen["clients_peak"], clients)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    sub_endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    push_endpoint = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    queueing = sum(QUEUEING.values()) + args.slots
    folder = tempfile.TemporaryDirectory()
    token_file = os.path.join(folder.name, "tokens.txt")
    with open(token_file, "w") as f:
        f.write(TOKENS)
    metrics_token = secrets.token_hex(16)  # the operator's: no client token opens /metrics
    gateway = GatewayProcess([
        "--sub", sub_endpoint, "--subscribe-all", "--token-file", token_file, "--push", push_endpoint,
        "--payload", "text", "--max-queue", str(args.max_queue), "--handshake-timeout", str(args.handshake_timeout),
        "--max-connections", str(max_connections(args, queueing)),
        "--max-connections-per-address", str(args.per_address)], env={"ZMQWS_METRICS_TOKEN": metrics_token})
    procs: list[Any] = []
    written: Counter = Counter()
    stop_pull = threading.Event()
    puller = threading.Thread(target=pull_messages, args=(pull, stop_pull, written), daemon=True)
    result: dict[str, Any] = {"config": vars(args) | {"queueing_attackers": queueing}}
    published = dict.fromkeys([*GOOD_TOPICS, SECRET_TOPIC], 0)
    odd_sent = 0
    reports: list[Any] = []
    attackers: dict[str, Any] = {}
    probes: list[Any] = []
    seen: dict[str, Any] = {"queued_peak": 0.0, "clients_peak": 0.0, "errors": []}
    stop_sampling = threading.Event()
    try:
        port = gateway.port()
        soak.probe(port, pub, request=upgrade("/?token=ops"))
        puller.start()
        time.sleep(1.0)
        baseline = gateway.rss()
        t0 = time.monotonic()
        gateway.sample(t0)

        ctx = multiprocessing.get_context("spawn")
        pipes = []
        first = 0
        for i in range(args.procs):
            good = args.clients // args.procs + (1 if i < args.clients % args.procs else 0)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=readers_entry, args=({"port": port, "good": good, "first": first}, child),
                               daemon=True)
            first += good
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        parent, child = ctx.Pipe()
        cfg = {"port": port, "idle": args.idle, "slots": args.slots, "seconds": args.seconds,
               "handshake_timeout": args.handshake_timeout, "close_timeout": 3.0, "hold": 1e9,
               "max_message_size": 1 << 20, "client_rate": 100.0}
        proc = ctx.Process(target=attackers_entry, args=(cfg, child), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(parent)
        opened = 0
        for parent in pipes:
            if not parent.poll(30):
                raise RuntimeError("a client process did not connect its clients in time")
            opened += parent.recv()[1]
        connected_at = time.monotonic() - t0
        rss_connected = gateway.rss()

        storm_start = time.monotonic()
        storm_end = storm_start + args.seconds
        health_parent, health_child = ctx.Pipe()
        prober = ctx.Process(target=healthz_entry, args=(port, storm_start, storm_end, health_child), daemon=True)
        prober.start()
        procs.append(prober)
        threading.Thread(target=sample_metrics, args=(port, metrics_token, stop_sampling, seen), daemon=True).start()
        for parent in pipes:
            parent.send(("start", storm_end))
        payloads = {topic: b"%010d " + (b"SECRET " if topic == SECRET_TOPIC else b"") for topic in published}
        filler = b"m" * max(0, args.size - 18)
        topics = list(published)
        next_tick = time.monotonic()
        next_odd = next_tick + args.odd_every
        owed = 0.0
        turn = 0
        while time.monotonic() < storm_end:
            owed += args.rate * args.tick
            while owed >= 1:
                topic = topics[turn % len(topics)]
                turn += 1
                pub.send_multipart([topic, payloads[topic] % published[topic] + filler])
                published[topic] += 1
                owed -= 1
            if args.odd_every and time.monotonic() >= next_odd:
                for topic in ODD_TOPICS:
                    pub.send_multipart([topic, ODD])
                odd_sent += 1
                next_odd += args.odd_every
            next_tick += args.tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
        for topic in GOOD_TOPICS:
            pub.send_multipart([topic, END])

        deadline = storm_end + 15  # the readers: 3 s for the end marker, 10 s for the closes
        for parent in pipes:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("a client process did not report in time")
            report = parent.recv()[1]
            if "good" in report:
                reports.append(report)
            else:
                attackers = report
        if health_parent.poll(max(0.0, deadline - time.monotonic())):
            probes = health_parent.recv()
        stop_sampling.set()
        try:
            final_metrics = soak.metrics(port, 2.0, metrics_token)
        except OSError as exc:
            seen["errors"].append(str(exc))
            final_metrics = {}
    finally:
        stop_sampling.set()
        for proc in procs:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
        gateway.stop(6.0)  # its --close-timeout is 3 s
        stop_pull.set()
        if puller.is_alive():
            puller.join(2)
        pull.close(0)
        pub.close(0)
        context.term()
        folder.cleanup()
    return verdict(args, result, gateway, reports, attackers, probes, written, published,
                   baseline=baseline, rss_connected=rss_connected, opened=opened, odd_sent=odd_sent,
                   connected_at=connected_at, queueing=queueing, final_metrics=final_metrics, seen=seen)


def verdict(args: argparse.Namespace, result: dict[str, Any], gateway: GatewayProcess, reports: list[Any],
            attackers: dict[str, Any], probes: list[Any], written: Counter, published: dict[bytes, int],
            **figures: Any) -> dict[str, Any]:
    """Every figure and the checks."""
    goods = [g for r in reports for g in r["good"]]
    perfect = [g for g in goods if g["open"] and g["end"] and g["error"] is None and g["first"] == 0
               and g["count"] == published[g["topic"].encode()] and g["next"] == g["count"]]
    secrets_read = sum(g["secrets"] for g in goods)
    violations = attackers.get("violations", [])
    secret_violations = [v for v in violations if "secret" in v]
    outside = {t: n for t, n in written.items() if not t.startswith("orders.")}
    allowed_arrived = sum(n for t, n in written.items() if t.startswith("orders."))
    baseline = figures["baseline"]
    samples = gateway.samples
    peak = max([rss for _, rss in samples] + [figures["rss_connected"]])
    connections = max_connections(args, figures["queueing"])
    bound = baseline + connections * 64 * 1024 + figures["queueing"] * args.max_queue + 32 * 1024 * 1024
    latencies = [lat for _, lat, _ in probes]
    answered = [lat for _, lat, status in probes if status == 200]
    slow = [(at, round(lat * 1000, 1), status) for at, lat, status in probes
            if status != 200 or lat > HEALTHZ_LIMIT]
    expected_probes = int(args.seconds / 0.1)
    episodes = attackers.get("episodes", [])
    bad_episodes = [e for e in episodes if e["ok"] is False]
    stalled = [e for e in episodes if e["ok"] is None]
    rounds = attackers.get("rounds", {})
    missing = [a for a in ATTACKS if not rounds.get(a)]
    tracebacks = gateway.tracebacks()
    exit_status = gateway.popen.returncode
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    worst = max(latencies, default=0.0)
    answers = known_answers(args)
    outcomes = attackers.get("outcomes", {})
    unexpected = {f"{a}: {o}": n for a, got in outcomes.items() for o, n in got.items() if o not in answers[a]}
    seen = figures["seen"]
    queue_bound = figures["queueing"] * (args.max_queue + 64 * 1024)
    m = figures["final_metrics"]
    result.update({
        "published": {t.decode(): n for t, n in published.items()}, "odd_sent": figures["odd_sent"],
        "good_clients": len(goods), "good_opened": figures["opened"], "good_perfect": len(perfect),
        "good_failures": [g for g in goods if g not in perfect][:20],
        "good_odd_received": Counter(g["odd"] for g in goods),
        "connected_after_s": round(figures["connected_at"], 1),
        "attacks": {"rounds": rounds, "outcomes": outcomes, "unexpected": unexpected,
                    "expected": {a: sorted(v) for a, v in answers.items()},
                    "violations": violations, "loop_errors": attackers.get("loop_errors", []),
                    "allowed_writes_sent": attackers.get("allowed_writes", 0)},
        "episodes": len(episodes), "episode_outcomes": dict(Counter(f"{e['kind']}: {e['outcome']}"
                                                                    for e in episodes)),
        "episode_failures": bad_episodes[:20],
        "written_upstream": dict(written),
        "queued": {"peak": seen["queued_peak"], "bound": queue_bound, "clients_peak": seen["clients_peak"],
                   "metrics_errors": seen["errors"][:10]},
        "rss": {"baseline": baseline, "connected": figures["rss_connected"], "peak": peak, "bound": bound,
                "samples": samples},
        "healthz": {"probes": len(probes), "answered_200": len(answered), "p50_ms": round(p50 * 1000, 1),
                    "p99_ms": round(p99 * 1000, 1), "max_ms": round(worst * 1000, 1), "slow_or_failed": slow[:50],
                    "slow_or_failed_count": len(slow)},
        "tracebacks": tracebacks, "exceptions": dict(gateway.exceptions()), "gateway_exit": exit_status,
        "client_loop_lag_max": max([r["max_loop_lag"] for r in reports] + [attackers.get("max_loop_lag", 0)]),
        "gateway_stderr_tail": gateway.stderr_lines[-30:],
        "gateway_stderr_lines": len(gateway.stderr_lines),
        "gateway_stderr_kinds": Counter(re.sub(r"\d+", "N", line.partition(": ")[2])[:50]
                                        for line in gateway.stderr_lines).most_common(10),
        "metrics": {k: v for k, v in figures["final_metrics"].items() if v and not k.startswith("zmqws_info")},
    })
    good_total = args.clients
    mib = 2 ** 20
    result["checks"] = [
        ("good clients received every message of their topic in order",
         f"{len(perfect)}/{good_total} clients; published " + ", ".join(
             f"{t.decode()} {n}" for t, n in published.items() if t != SECRET_TOPIC)
         + f"; {figures['odd_sent']} non-UTF-8 rounds", len(perfect) == good_total),
        ("no secret message reached a client without the right",
         (f"{secrets_read} read by good clients, {len(secret_violations)} attack violations "
          f"({published[SECRET_TOPIC]} secret messages published)"),
         secrets_read == 0 and not secret_violations),
        ("nothing outside the write rights reached the PULL socket",
         (f"outside: {outside or 'none'}; allowed: {allowed_arrived} arrived of "
          f"{attackers.get('allowed_writes', 0)} sent"), not outside and allowed_arrived > 0),
        ("gateway RSS peak under the bound",
         (f"peak {peak / mib:.1f} MiB <= {bound / mib:.1f} MiB (baseline {baseline / mib:.1f} + 64 KiB x "
          f"{connections} connections + {args.max_queue // 1024} KiB x {figures['queueing']} + 32)"),
         peak <= bound),
        (f"/healthz answered 200 within {HEALTHZ_LIMIT * 1000:.0f} ms every 100 ms",
         (f"{len(answered)}/{len(probes)} answered (of ~{expected_probes}), p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms, {len(slow)} slow or failed"),
         bool(probes) and not slow and len(probes) >= 0.9 * expected_probes),
        ("every soak episode got its expected answer",
         (f"{len(episodes) - len(bad_episodes) - len(stalled)}/{len(episodes)} episodes, "
          f"{len(stalled)} not judged (client stalled), {attackers.get('slots_cut', 0)} slots cut at the end"),
         not bad_episodes and (len(episodes) > 0 or args.slots == 0) and len(stalled) <= 0.05 * len(episodes)),
        ("every attack got its known answer",
         (f"{sum(n for got in outcomes.values() for n in got.values())} answers, "
          f"{sum(unexpected.values())} unexpected" + (f": {unexpected}" if unexpected else "")
          + f"; Engine.IO: {int(m.get('zmqws_handshake_timeouts_total', 0))} sessions reaped, "
          f"{int(m.get('zmqws_refused_total', 0))} refused; {int(m.get('zmqws_host_refused_total', 0))} "
          f"Host refused, {int(m.get('zmqws_forbidden_total', 0))} forbidden"),
         bool(outcomes) and not unexpected),
        ("output queues held to --max-queue (pipelining, resume)",
         (f"zmqws_queued_bytes peak {seen['queued_peak'] / mib:.2f} MiB <= {queue_bound / mib:.2f} MiB "
          f"({figures['queueing']} x ({args.max_queue // 1024} + 64) KiB); "
          f"{int(m.get('zmqws_pipeline_paused_total', 0))} pipeline pauses; "
          f"{len(seen['errors'])} failed /metrics reads"),
         seen["queued_peak"] <= queue_bound and m.get("zmqws_pipeline_paused_total", 0) > 0
         and not seen["errors"]),
        ("every attack ran",
         f"{sum(rounds.values())} rounds; " + (f"missing: {', '.join(missing)}" if missing else "all")
         + (f"; {len(attackers.get('loop_errors', []))} attack loops crashed"
            if attackers.get("loop_errors") else ""),
         not missing and not attackers.get("loop_errors")),
        ("no traceback in the gateway's stderr", f"{tracebacks} tracebacks", tracebacks == 0),
        ("gateway exited cleanly on SIGTERM", f"exit status {exit_status}", exit_status == 0),
    ]
    result["passed"] = all(ok for _, _, ok in result["checks"])
    return result


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"hostile soak: {cfg['clients']} good clients in {cfg['procs']} processes, {cfg['idle']} idle "
          f"connections, {cfg['queueing_attackers']} queueing attackers ({cfg['slots']} soak slots), "
          f"{cfg['seconds']} s at {cfg['rate']} msg/s of {cfg['size']} bytes")
    print(f"good clients connected in {result['connected_after_s']} s; published {result['published']}")
    print()
    attacks = result["attacks"]
    print(f"{'attack':<13} {'rounds':>7}  outcomes")
    for name in ATTACKS:
        outcomes = attacks["outcomes"].get(name, {})
        shown = ", ".join(f"{k} x{v}" + ("" if k in attacks["expected"][name] else " (UNEXPECTED)")
                          for k, v in sorted(outcomes.items()))
        print(f"{name:<13} {attacks['rounds'].get(name, 0):>7}  {shown or '-'}")
    print(f"{'soak kinds':<13} {result['episodes']:>7}  " + ", ".join(
        f"{k} x{v}" for k, v in sorted(result["episode_outcomes"].items())))
    print(f"{'(expected)':<13} {'':>7}  " + ", ".join(f"{k}: {'/'.join(sorted(v))}" for k, v in EXPECTED.items()
                                                     if k not in ("never_read", "slow_read")))
    rss = result["rss"]
    health = result["healthz"]
    print()
    print(f"gateway RSS: baseline {rss['baseline'] / 2**20:.1f} MiB, with clients {rss['connected'] / 2**20:.1f} MiB, "
          f"peak {rss['peak'] / 2**20:.1f} MiB")
    print(f"longest gateway loop turn {result['metrics'].get('zmqws_loop_turn_max_seconds', 0) * 1000:.0f} ms; "
          f"longest client event-loop lag {result['client_loop_lag_max'] * 1000:.0f} ms")
    print(f"output queues: zmqws_queued_bytes peak {result['queued']['peak'] / 2**20:.2f} MiB; "
          f"clients connected peak {int(result['queued']['clients_peak'])}")
    print(f"/healthz: {health['probes']} probes, {health['answered_200']} answered 200, p50 {health['p50_ms']} ms, "
          f"p99 {health['p99_ms']} ms, max {health['max_ms']} ms")
    print(f"written upstream (PULL): {result['written_upstream']}")
    print(f"gateway stderr: {result['gateway_stderr_lines']} lines, most often: "
          + "; ".join(f"{n} x {text!r}" for text, n in result["gateway_stderr_kinds"][:5]))
    print("gateway counters: " + ", ".join(f"{k}={int(v)}" for k, v in sorted(result["metrics"].items())
                                            if "total" in k))
    print()
    width = max(len(c[0]) for c in result["checks"])
    print(f"{'check':<{width}}  {'result':<6}  figures")
    for name, figures, ok in result["checks"]:
        print(f"{name:<{width}}  {'PASS' if ok else 'FAIL':<6}  {figures}")
    for failure in result["good_failures"][:5]:
        print("  good client failure:", failure)
    for violation in attacks["violations"][:10]:
        print("  violation:", violation)
    for error in attacks["loop_errors"][:5]:
        print("  attack loop crashed:", error)
    for failure in result["episode_failures"][:5]:
        print("  episode failure:", failure)
    if result["healthz"]["slow_or_failed"]:
        print("  slow or failed /healthz (s into the storm, ms, status):", result["healthz"]["slow_or_failed"][:10])
    for exception, count in sorted(result["exceptions"].items(), key=lambda item: -item[1]):
        print(f"  gateway traceback x{count}: {exception}")
    print()
    print("PASSED" if result["passed"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500, help="good clients (default: 500)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the storm (default: 60)")
    p.add_argument("--rate", type=int, default=200, help="messages per second, all topics (default: 200)")
    p.add_argument("--size", type=int, default=1024, help="payload bytes per message (default: 1024)")
    p.add_argument("--tick", type=float, default=0.02, help="the publisher sends every TICK seconds")
    p.add_argument("--odd-every", type=float, default=2.0,
                   help="a non-UTF-8 message this often, 0 = never (default: 2)")
    p.add_argument("--idle", type=int, default=300, help="idle connections held open (default: 300)")
    p.add_argument("--slots", type=int, default=10, help="slots of soak.py's misbehaving episodes (default: 10)")
    p.add_argument("--procs", type=int, default=2, help="processes of good clients (default: 2)")
    p.add_argument("--max-queue", type=int, default=256 * 1024)
    p.add_argument("--handshake-timeout", type=float, default=2.0)
    p.add_argument("--per-address", type=int, default=32,
                   help="the gateway's --max-connections-per-address: caps the Engine.IO flood (default: 32)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print_report(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
