"""Soak test: a gateway under a steady publisher, many good clients and a storm of bad ones.

    python benchmarks/soak.py                                  # 1000 clients, 60 s
    python benchmarks/soak.py --clients 100 --seconds 10 --size 4096

What runs:

* the gateway as a subprocess (``python -m zmqws``), its SUB connected to a PUB
  socket of this process;
* a publisher at a steady rate (``--rate`` messages/s, sent every ``--tick``
  seconds), each payload starting with its 10-digit sequence number;
* ``--clients`` clients in ``--procs`` processes (asyncio, many connections
  each).  The well-behaved ones (raw-socket asyncio protocols) connect before
  the first message, answer pings, count the messages and check their order,
  and close with 1000 after the last one.  ``--misbehaving-fraction`` of them
  are slots that, for the whole run, misbehave in rotating ways, one episode
  after another, and check how the gateway answered:

  ============== =================================================== ========================
  kind           what the client does                                expected
  ============== =================================================== ========================
  never_read     small SO_RCVBUF, handshake, never reads until the   1008 (slow consumer), or
                 gateway's queue must have overflowed, then reads     EOF after the buffered
                                                                      prefix if it read after
                                                                      the close timeout
  slow_read      the same, reading one byte a second meanwhile       as never_read
  unmasked       an unmasked text frame                              1002
  bad_opcode     a frame with reserved opcode 0x3                    1002
  half_open      part of an HTTP request, then nothing               dropped (no response)
                                                                      after the handshake
                                                                      timeout
  reset          handshake, reads a little, SO_LINGER 0 close (RST)  (nothing to see)
  oversized      a message over --max-message-size                   1009
  invalid_utf8   a text message that is not UTF-8                    1007
  ping_flood     pings at 5x the client rate (reading the pongs)     1008 (message rate limit)
  ============== =================================================== ========================

Pass criteria (printed as a table; exit status 1 if any fails): every good
client received every message in order and closed normally; every episode
got its expected outcome; the gateway's RSS, sampled every second, stayed
under the stated bound and came back near the baseline once the clients had
gone; no "Traceback" in the gateway's stderr.  ``--json FILE`` writes every
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK = b"\x5a\x17\xc3\x09"
KINDS = ["never_read", "slow_read", "unmasked", "bad_opcode", "half_open", "reset",
         "oversized", "invalid_utf8", "ping_flood"]
EXPECTED = {
    "never_read": {"1008", "eof"}, "slow_read": {"1008", "eof"},
    "unmasked": {"1002"}, "bad_opcode": {"1002"}, "half_open": {"dropped"}, "reset": {"reset"},
    "oversized": {"1009"}, "invalid_utf8": {"1007"}, "ping_flood": {"1008"},
}
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
END = b"END"


def mask(data: bytes) -> bytes:
    n = len(data)
    key = (MASK * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little") if n else b""


def client_frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    """A client frame (masked unless told otherwise)."""
    n = len(payload)
    b1 = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, b1 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, b1 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, b1 | 127, n)
    return head + (MASK + mask(payload) if masked else payload)


CLOSE_1000 = client_frame(0x8, struct.pack("!H", 1000))


# =====================================================================================
# client side (worker processes)
# =====================================================================================


class Good(asyncio.Protocol):
    """A well-behaved client: counts messages, checks their order, answers pings."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: bytes = REQUEST) -> None:
        self.loop = loop
        self.request = request
        self.opened = loop.create_future()
        self.finished = loop.create_future()  # END seen (or a failure)
        self.gone = loop.create_future()      # connection lost
        self.buf = bytearray()
        self.open = False
        self.next: Optional[int] = None       # the next sequence number expected
        self.first: Optional[int] = None
        self.count = 0
        self.error: Optional[str] = None
        self.close_code: Optional[int] = None
        self.closing = False
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        for fut in (self.opened, self.finished):
            if not fut.done():
                fut.set_result(False)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101 "):
                self._fail("handshake: " + bytes(buf[:40]).decode("latin-1"))
                self.transport.close()
                return
            del buf[:end + 4]
            self.open = True
            self.opened.set_result(True)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            hl = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            end = pos + hl + length
            if end > n:
                break
            opcode = b0 & 0x0F
            start = pos + hl
            if opcode == 1 or opcode == 2:
                self.message(buf, start, end)
            elif opcode == 9:  # ping → pong
                self.transport.write(client_frame(0xA, bytes(buf[start:end])))
            elif opcode == 8:
                self.close_code = int.from_bytes(buf[start:start + 2], "big") if length >= 2 else 1005
                if not self.closing:
                    self._fail(f"closed by the gateway with {self.close_code}")
                    self.closing = True
                    self.transport.write(CLOSE_1000)
                self.transport.close()
            pos = end
        if pos:
            del buf[:pos]

    def message(self, buf: bytearray, start: int, end: int) -> None:
        """A data message in ``buf[start:end]``: the end marker (answered with a close 1000)
        or the next sequence number."""
        if end - start == 3 and buf[start:end] == END:
            if not self.finished.done():
                self.finished.set_result(True)
            if not self.closing:
                self.closing = True
                self.transport.write(CLOSE_1000)
            return
        try:
            seq = int(buf[start:start + 10])
        except ValueError:
            self._fail(f"unexpected payload {bytes(buf[start:start + 20])!r}")
            return
        if self.next is None:
            self.first = seq
        elif seq != self.next and self.error is None:
            self._fail(f"order: expected {self.next}, got {seq}")
        self.next = seq + 1
        self.count += 1

    def connection_lost(self, exc) -> None:
        if not self.finished.done():
            self._fail(f"connection lost: {exc}")
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.gone.done():
            self.gone.set_result(True)


def parse_frame(buf: bytes, pos: int = 0) -> Optional[Tuple[int, bytes, int]]:
    """The server frame (unmasked) at ``buf[pos:]``: (opcode, payload, the position after it),
    or None while it is incomplete (RFC 6455 §5.2)."""
    n = len(buf)
    if n - pos < 2:
        return None
    b0, length = buf[pos], buf[pos + 1] & 0x7F
    hl = 2
    if length == 126:
        if n - pos < 4:
            return None
        length, hl = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
    elif length == 127:
        if n - pos < 10:
            return None
        length, hl = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
    end = pos + hl + length
    if end > n:
        return None
    return b0 & 0x0F, buf[pos + hl:end], end


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: port chosen at connect


class Raw:
    """A misbehaving client's socket with a few helpers (non-blocking, through the loop);
    ``source``: the local address to connect from (any of 127.0.0.0/8 on Linux)."""

    def __init__(self, loop, port: int, rcvbuf: Optional[int] = None, source: Optional[str] = None) -> None:
        self.loop = loop
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            self.sock.bind((source, 0))
        self.sock.setblocking(False)
        self.buf = b""
        self.pos = 0  # where the frames not yet read start in buf
        self.last_body = b""  # the body of the last HTTP response read, for whoever wants it

    async def connect(self) -> None:
        await asyncio.wait_for(self.loop.sock_connect(self.sock, ("127.0.0.1", self.port)), 10)

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), 10)

    async def recv(self, n: int = 262144, timeout: float = 10.0) -> bytes:
        return await asyncio.wait_for(self.loop.sock_recv(self.sock, n), timeout)

    async def handshake(self, request: bytes = REQUEST) -> None:
        await self.send(request)
        while b"\r\n\r\n" not in self.buf:
            chunk = await self.recv()
            if not chunk:
                raise EOFError("closed during the handshake")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise AssertionError(f"no 101: {head[:40]!r}")

    async def frame(self, timeout: float) -> Tuple[Optional[int], bytes]:
        """The next server frame, (opcode, payload); (None, b"timeout"), (None, b"eof") or
        (None, b"reset") when none comes."""
        deadline = time.monotonic() + timeout
        while True:
            found = parse_frame(self.buf, self.pos)
            if found is not None:
                opcode, payload, self.pos = found
                return opcode, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, b"timeout"
            try:
                chunk = await self.recv(262144, remaining)
            except asyncio.TimeoutError:
                return None, b"timeout"
            except (ConnectionResetError, BrokenPipeError):
                return None, b"reset"
            if not chunk:
                return None, b"eof"
            self.buf = self.buf[self.pos:] + chunk
            self.pos = 0

    async def until_close(self, timeout: float) -> Tuple[str, List[int]]:
        """Read frames until a close frame ("1008"...), EOF ("eof") or reset ("reset");
        also the sequence numbers of the data frames seen on the way."""
        deadline = time.monotonic() + timeout
        seqs: List[int] = []
        while True:
            opcode, payload = await self.frame(deadline - time.monotonic())
            if opcode is None:
                return payload.decode(), seqs
            if opcode in (1, 2) and payload != END:
                seqs.append(int(payload[:10]))
            elif opcode == 8:
                return str(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005), seqs

    def close(self, reset: bool = False) -> None:
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


LAG: Dict[str, Any] = {"max": 0.0, "stalls": []}


async def lag_monitor() -> None:
    """The worker's own event-loop lag: a client whose loop stalls longer than the handshake
    timeout is itself a slow client, and its episode says nothing about the gateway."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.1)
        lag = time.monotonic() - before - 0.1
        LAG["max"] = max(LAG["max"], lag)
        if lag > 0.5:
            LAG["stalls"].append((before, lag))


def stalled_during(start: float, end: float) -> float:
    return max([lag for at, lag in LAG["stalls"] if start <= at + lag and at <= end] + [0.0])


def contiguous(seqs: List[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def episode(kind: str, cfg: Dict[str, Any], loop) -> Dict[str, Any]:
    """One misbehaviour; returns {kind, outcome, ok, detail, seconds}."""
    started = time.monotonic()
    port = cfg["port"]
    detail = ""
    outcome = "?"
    steps = []
    raw = Raw(loop, port, rcvbuf=4096 if kind in ("never_read", "slow_read") else None, source=cfg.get("source"))
    try:
        await raw.connect()
        steps.append(("connected", round(time.monotonic() - started, 2)))
        if kind == "half_open":
            await raw.send(REQUEST[:40])
            outcome, _ = await raw.until_close(cfg["handshake_timeout"] + 8)
            took = time.monotonic() - started
            detail = f"{took:.1f} s"
            if outcome in ("eof", "reset") and not raw.buf:
                low, high = cfg["handshake_timeout"] - 0.2, cfg["handshake_timeout"] + 5
                outcome = "dropped" if low <= took <= high else f"dropped after {took:.1f} s"
        else:
            await raw.handshake(cfg.get("request", REQUEST))
            steps.append(("101", round(time.monotonic() - started, 2)))
            if kind in ("never_read", "slow_read"):
                hold = cfg["hold"]
                end = time.monotonic() + hold
                while time.monotonic() < end:
                    if kind == "slow_read":
                        try:
                            raw.buf += await raw.recv(1, 2)
                        except asyncio.TimeoutError:
                            pass
                    await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                outcome, seqs = await raw.until_close(cfg["close_timeout"] + 30)
                detail = f"{len(seqs)} messages, then {outcome}"
                if not contiguous(seqs):
                    outcome = "gap in the messages"
            elif kind == "reset":
                await raw.until_close(random.uniform(0.2, 1.0))
                raw.close(reset=True)
                outcome = "reset"
            elif kind in ("unmasked", "bad_opcode", "invalid_utf8", "oversized"):
                if kind == "unmasked":
                    frame = client_frame(0x1, b"not masked", masked=False)
                elif kind == "bad_opcode":
                    frame = client_frame(0x3, b"reserved")
                elif kind == "invalid_utf8":
                    frame = client_frame(0x1, b"caf\xc3\x28 \xff\xfe")
                else:
                    frame = client_frame(0x2, b"\0" * (cfg["max_message_size"] + 1000))
                try:
                    await raw.send(frame)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                outcome, _ = await raw.until_close(cfg["close_timeout"] + 10)
            elif kind == "ping_flood":
                per_tick = max(1, int(cfg["client_rate"] * 5 / 10))
                burst = client_frame(0x9, b"flood") * per_tick

                async def flood():
                    try:
                        for _ in range(100):  # at most 10 s
                            await raw.send(burst)
                            await asyncio.sleep(0.1)
                    except (ConnectionResetError, BrokenPipeError, OSError):
                        pass

                flooder = asyncio.ensure_future(flood())
                outcome, _ = await raw.until_close(15)
                flooder.cancel()
                try:
                    await flooder
                except asyncio.CancelledError:
                    pass
    except Exception as exc:  # report, do not crash the worker
        outcome = f"error: {type(exc).__name__}: {exc}"
        detail = f"steps {steps}"
    finally:
        raw.close()
    stall = stalled_during(started, time.monotonic())
    ok = outcome in EXPECTED[kind]
    if not ok and stall >= cfg["handshake_timeout"] * 0.5:
        # This client's own loop stalled (a loaded machine): the gateway's answer is not
        # judged; such episodes are counted apart and must stay rare.
        outcome = f"client stalled {stall:.1f} s ({outcome})"
        ok = None
    return {"kind": kind, "outcome": outcome, "ok": ok, "detail": detail,
            "at": round(started - cfg.get("storm_start", started), 2),
            "seconds": round(time.monotonic() - started, 2)}


async def slot(index: int, cfg: Dict[str, Any], storm_end: float, loop) -> List[Dict[str, Any]]:
    """One misbehaving slot: episodes of rotating kinds until the storm is over."""
    results = []
    k = index
    await asyncio.sleep(random.uniform(0, 0.2))
    while True:
        remaining = storm_end - time.monotonic()
        if remaining <= 0.5:
            return results
        for _ in range(len(KINDS)):
            kind = KINDS[k % len(KINDS)]
            k += 1
            needs = cfg["hold"] + 1 if kind in ("never_read", "slow_read") else 0
            if needs <= remaining:
                break
        else:  # pragma: no cover
            return results
        results.append(await episode(kind, cfg, loop))
        await asyncio.sleep(random.uniform(0.05, 0.3))


async def open_goods(port: int, factories: List[Callable[[], Good]],
                     sources: Optional[List[str]] = None) -> List[Good]:
    """One connected well-behaved client per factory (100 handshakes in flight at most),
    from ``sources[i]`` (a local address) if given."""
    loop = asyncio.get_running_loop()
    goods: List[Good] = []
    limit = asyncio.Semaphore(100)

    async def open_good(factory: Callable[[], Good], source: Optional[str]) -> None:
        async with limit:
            protocol = factory()
            goods.append(protocol)
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: protocol, "127.0.0.1", port, local_addr=(source, 0) if source else None), 15)
                await asyncio.wait_for(protocol.opened, 15)
            except (OSError, asyncio.TimeoutError) as exc:
                protocol._fail(f"connect: {exc!r}")

    await asyncio.gather(*(open_good(factory, sources[i] if sources else None)
                           for i, factory in enumerate(factories)))
    return goods


async def finish_goods(goods: List[Good], wait: float) -> List[Dict[str, Any]]:
    """Wait up to ``wait`` s for every client's end marker, 10 s more for the closes; abort
    the stragglers; what each client saw."""
    if goods:
        await asyncio.wait([g.finished for g in goods], timeout=max(1.0, wait))
    connected = [g.gone for g in goods if g.transport is not None]
    if connected:
        await asyncio.wait(connected, timeout=10)
    for g in goods:
        if g.transport is not None and not g.gone.done():
            g.transport.abort()
    return [{"open": g.open, "first": g.first, "next": g.next, "count": g.count,
             "end": g.finished.done() and g.finished.result() is True, "error": g.error,
             "close_code": g.close_code} for g in goods]


async def worker_main(cfg: Dict[str, Any], conn) -> None:
    loop = asyncio.get_running_loop()
    monitor = asyncio.ensure_future(lag_monitor())
    goods = await open_goods(cfg["port"], [lambda: Good(loop)] * cfg["good"])
    opened = sum(1 for g in goods if g.open)
    conn.send(("ready", opened))
    command, storm_end = await loop.run_in_executor(None, conn.recv)
    assert command == "start"
    cfg["storm_start"] = time.monotonic()
    LAG["max"] = 0.0
    slots = [asyncio.ensure_future(slot(cfg["slot_base"] + i, cfg, storm_end, loop))
             for i in range(cfg["bad"])]
    # Good clients finish at END (sent once the storm is over).
    good = await finish_goods(goods, storm_end - time.monotonic() + cfg["end_grace"])
    episodes = []
    for results in await asyncio.gather(*slots):
        episodes.extend(results)
    report = {
        "good": good,
        "episodes": episodes,
        "max_loop_lag": round(LAG["max"], 3),
    }
    monitor.cancel()
    conn.send(("done", report))


def worker_entry(cfg: Dict[str, Any], conn) -> None:
    random.seed(os.getpid())
    asyncio.run(worker_main(cfg, conn))


# =====================================================================================
# driver: gateway, publisher, RSS sampling, verdict
# =====================================================================================


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class GatewayProcess:
    """``python -m zmqws ARGS --port 0`` as a child process (this checkout's code): its port
    from the "listening on" line, its stderr kept, its RSS sampled every second once
    :meth:`sample` is called, stopped with SIGTERM by :meth:`stop`."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        argv = [sys.executable, "-m", "zmqws", "--port", "0", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        self.stderr_lines: List[str] = []
        self.samples: List[Tuple[float, int]] = []
        self._port: List[int] = []
        self._port_found = threading.Event()
        self._stop_sampling = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.popen.stderr:
            self.stderr_lines.append(line)
            match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
            if match and not self._port:
                self._port.append(int(match.group(1)))
                self._port_found.set()

    def port(self, timeout: float = 15.0) -> int:
        if not self._port_found.wait(timeout):
            raise RuntimeError("the gateway did not start: " + "".join(self.stderr_lines))
        return self._port[0]

    def rss(self) -> int:
        return rss_of(self.popen.pid)

    def sample(self, t0: float) -> None:
        """Append (seconds since t0, RSS) to :attr:`samples` every second until :meth:`stop`."""
        def run() -> None:
            while not self._stop_sampling.wait(1.0):
                try:
                    self.samples.append((round(time.monotonic() - t0, 1), self.rss()))
                except OSError:
                    return

        threading.Thread(target=run, daemon=True).start()

    def tracebacks(self) -> int:
        return sum(line.count("Traceback") for line in self.stderr_lines)

    def exceptions(self) -> Counter:
        """The exceptions of the tracebacks in stderr ("Type: message" at "file:line"), counted."""
        found: Counter = Counter()
        where = None
        inside = False
        for line in self.stderr_lines:
            if line.startswith("Traceback"):
                inside = True
            elif inside and line.startswith("  File "):
                where = line.split('"')[1].rsplit("/", 1)[-1] + ":" + line.split("line ")[1].split(",")[0]
            elif inside and not line.startswith(" "):
                inside = line.startswith("During handling") or not line.strip()
                if not inside:
                    found[f"{line.strip()[:120]} at {where}"] += 1
        return found

    def stop(self, timeout: float) -> Optional[int]:
        """SIGTERM, ``timeout`` s to exit (then SIGKILL); the exit status."""
        self._stop_sampling.set()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)
        return self.popen.returncode


def metrics(port: int, timeout: float = 5.0, token: Optional[str] = None) -> Dict[str, float]:
    """``GET /metrics`` (with ``token`` as a Bearer header if given), parsed; OSError unless 200."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise OSError(f"/metrics answered {status!r}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def probe(port: int, pub, timeout: float = 10.0, request: bytes = REQUEST) -> None:
    """Wait until a message published now reaches a client (the ZeroMQ slow joiner); the
    client upgrades with ``request`` and must be able to read every topic."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        deadline = time.monotonic() + timeout
        sock.settimeout(0.05)
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's SUB never received")
            pub.send(b"__probe__")
            try:
                if sock.recv(4096):
                    break
            except socket.timeout:
                pass
        time.sleep(0.3)  # probes still in flight go to this client, not to the good ones
        sock.sendall(CLOSE_1000)
    finally:
        sock.close()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import zmq

    bad_total = int(round(args.clients * args.misbehaving_fraction))
    good_total = args.clients - bad_total
    throughput = args.rate * (args.size + 4)
    # What a never-reading client must be sent before its queue overflows: the kernel's
    # socket buffers (up to tcp_wmem's max on the gateway side) plus --max-queue.
    overflow_bytes = 4_400_000 + args.max_queue
    hold = round(overflow_bytes / throughput * 1.15 + 1.0, 1)

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"

    gateway = GatewayProcess([
        "--sub", endpoint, "--subscribe-all",
        "--handshake-timeout", str(args.handshake_timeout), "--close-timeout", str(args.close_timeout),
        "--max-message-size", str(args.max_message_size), "--max-queue", str(args.max_queue),
        "--client-rate", str(args.client_rate), "--max-connections", str(args.clients * 2 + 100)])
    procs = []
    result: Dict[str, Any] = {"config": vars(args) | {"good": good_total, "misbehaving": bad_total,
                                                      "hold_seconds": hold}}
    try:
        port = gateway.port()
        probe(port, pub)
        time.sleep(1.0)
        baseline = gateway.rss()
        t0 = time.monotonic()
        gateway.sample(t0)

        # Client processes
        ctx = multiprocessing.get_context("spawn")
        n = args.procs
        cfg_common = {"port": port, "hold": hold, "handshake_timeout": args.handshake_timeout,
                      "close_timeout": args.close_timeout, "max_message_size": args.max_message_size,
                      "client_rate": args.client_rate, "end_grace": 30.0}
        pipes = []
        slot_base = 0
        for i in range(n):
            good = good_total // n + (1 if i < good_total % n else 0)
            bad = bad_total // n + (1 if i < bad_total % n else 0)
            parent, child = ctx.Pipe()
            cfg = dict(cfg_common, good=good, bad=bad, slot_base=slot_base)
            slot_base += bad
            proc = ctx.Process(target=worker_entry, args=(cfg, child), daemon=True)
            proc.start()
            procs.append(proc)
            pipes.append(parent)
        opened = 0
        for parent in pipes:
            if not parent.poll(120):
                raise RuntimeError("a client process did not connect its clients in time")
            tag, count = parent.recv()
            opened += count
        connected_at = time.monotonic() - t0
        rss_connected = gateway.rss()

        # The storm: misbehaving slots and the publisher, for args.seconds.
        storm_end = time.monotonic() + args.seconds
        for parent in pipes:
            parent.send(("start", storm_end))
        payload = b"%010d " + b"m" * max(0, args.size - 11)
        seq = 0
        next_tick = time.monotonic()
        per_tick = args.rate * args.tick
        owed = 0.0
        while time.monotonic() < storm_end:
            owed += per_tick
            while owed >= 1:
                pub.send(payload % seq)
                seq += 1
                owed -= 1
            next_tick += args.tick
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pub.send(END)
        published = seq

        reports = []
        for parent in pipes:
            if not parent.poll(args.seconds + 120):
                raise RuntimeError("a client process did not report in time")
            tag, report = parent.recv()
            reports.append(report)
        for proc in procs:
            proc.join(10)

        # After the storm: every client gone, then the memory after.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = metrics(port)
            if sum(v for k, v in m.items() if k.startswith("zmqws_clients{")) <= 1:  # this request
                break
            time.sleep(0.5)
        time.sleep(3.0)
        rss_after = min(gateway.rss() for _ in range(3) if time.sleep(0.3) is None)
        final_metrics = metrics(port)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        gateway.stop(args.close_timeout + 15)
        pub.close(0)
        context.term()

    goods = [g for r in reports for g in r["good"]]
    episodes = [e for r in reports for e in r["episodes"]]
    perfect = [g for g in goods if g["open"] and g["end"] and g["error"] is None and g["first"] == 0
               and g["next"] == published and g["count"] == published]
    by_kind: Dict[str, Counter] = defaultdict(Counter)
    bad_details: List[Dict[str, Any]] = []
    stalled = [e for e in episodes if e["ok"] is None]
    for e in episodes:
        by_kind[e["kind"]][e["outcome"] if e["ok"] is not None else "client stalled"] += 1
        if e["ok"] is False:
            bad_details.append(e)
    samples = gateway.samples
    peak = max([rss for _, rss in samples] + [rss_connected])
    # The bound: the baseline, 64 KiB per connection, every misbehaving client's queue
    # full at once, and 32 MiB of slack for the interpreter's arenas.
    bound = baseline + args.clients * 64 * 1024 + bad_total * args.max_queue + 32 * 1024 * 1024
    after_bound = baseline + max(16 * 1024 * 1024, (peak - baseline) // 2)
    tracebacks = gateway.tracebacks()
    result.update({
        "published": published, "good_clients": len(goods), "good_opened": opened,
        "good_perfect": len(perfect), "connected_after_s": round(connected_at, 1),
        "good_failures": [g for g in goods if g not in perfect][:20],
        "episodes": len(episodes), "outcomes": {k: dict(v) for k, v in sorted(by_kind.items())},
        "episode_failures": bad_details[:50],
        "rss": {"baseline": baseline, "connected": rss_connected, "peak": peak, "after": rss_after,
                "bound": bound, "after_bound": after_bound, "samples": samples},
        "tracebacks": tracebacks, "gateway_exit": gateway.popen.returncode,
        "client_loop_lag_max": max(r["max_loop_lag"] for r in reports),
        "gateway_stderr_tail": gateway.stderr_lines[-20:],
        "metrics": {k: v for k, v in final_metrics.items()
                    if k.startswith(("zmqws_closes_total", "zmqws_drops_total", "zmqws_handshake",
                                     "zmqws_protocol", "zmqws_messages_out", "zmqws_connections",
                                     "zmqws_loop_turn_max", "zmqws_websocket"))},
    })
    kinds_seen = set(by_kind)
    # The gateway's own counters must tell the same story as the clients.
    outcome_count = Counter(e["outcome"] for e in episodes)
    kind_count = Counter(e["kind"] for e in episodes)
    m = final_metrics
    agree = [
        ("closes 1000", m.get('zmqws_closes_total{code="1000"}', 0), len(perfect) + 1),  # + the probe
        ("closes 1002", m.get('zmqws_closes_total{code="1002"}', 0), outcome_count["1002"]),
        ("closes 1007", m.get('zmqws_closes_total{code="1007"}', 0), outcome_count["1007"]),
        ("closes 1009", m.get('zmqws_closes_total{code="1009"}', 0), outcome_count["1009"]),
        ("closes 1006", m.get('zmqws_closes_total{code="1006"}', 0), kind_count["reset"]),
        ("slow consumers closed", m.get('zmqws_drops_total{cause="slow_consumer_closed"}', 0),
         kind_count["never_read"] + kind_count["slow_read"]),
        ("rate limited", m.get('zmqws_drops_total{cause="client_rate_limit"}', 0), kind_count["ping_flood"]),
        ("handshake timeouts", m.get("zmqws_handshake_timeouts_total", 0), kind_count["half_open"]),
    ]
    disagree = [f"{name}: gateway {int(got)}, clients {want}" for name, got, want in agree if got != want]
    exact = not bad_details and not stalled and len(perfect) == good_total
    result["counters_vs_clients"] = [(name, int(got), want) for name, got, want in agree]
    result["checks"] = [
        ("well-behaved clients received every message in order",
         f"{len(perfect)}/{good_total} clients x {published} messages", len(perfect) == good_total),
        ("every misbehaving episode got the expected answer",
         f"{len(episodes) - len(bad_details) - len(stalled)}/{len(episodes)} episodes, "
         f"{len(kinds_seen)}/{len(KINDS)} kinds, {len(stalled)} not judged (client stalled)",
         not bad_details and len(episodes) > 0 and len(stalled) <= 0.05 * len(episodes)),
        ("the gateway's counters agree with the clients' outcomes",
         "; ".join(disagree) if disagree else f"{len(agree)} counters equal"
         + ("" if exact else " (not required: some episodes failed or stalled)"),
         not disagree or not exact),
        ("gateway RSS peak under the bound",
         f"peak {peak / 2**20:.1f} MiB <= {bound / 2**20:.1f} MiB (baseline {baseline / 2**20:.1f})",
         peak <= bound),
        ("gateway RSS back near the baseline after the storm",
         f"after {rss_after / 2**20:.1f} MiB <= {after_bound / 2**20:.1f} MiB", rss_after <= after_bound),
        ("no traceback in the gateway's stderr", f"{tracebacks} tracebacks", tracebacks == 0),
        ("gateway exited cleanly on SIGTERM", f"exit status {gateway.popen.returncode}",
         gateway.popen.returncode == 0),
    ]
    result["passed"] = all(ok for _, _, ok in result["checks"])
    return result


def print_report(result: Dict[str, Any]) -> None:
    cfg = result["config"]
    print(f"soak: {cfg['clients']} clients ({cfg['good']} well-behaved, {cfg['misbehaving']} misbehaving slots) "
          f"in {cfg['procs']} processes, {cfg['seconds']} s at {cfg['rate']} msg/s of {cfg['size']} bytes; "
          f"never-readers hold {cfg['hold_seconds']} s")
    print(f"published {result['published']} messages; good clients connected in {result['connected_after_s']} s")
    print()
    print(f"{'misbehaviour':<14} {'episodes':>8}  outcomes (expected: ...)")
    for kind in KINDS:
        outcomes = result["outcomes"].get(kind, {})
        shown = ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
        print(f"{kind:<14} {sum(outcomes.values()):>8}  {shown or '-'}  (expected: {'/'.join(sorted(EXPECTED[kind]))})")
    rss = result["rss"]
    print()
    print(f"gateway RSS: baseline {rss['baseline'] / 2**20:.1f} MiB, with clients {rss['connected'] / 2**20:.1f} MiB, "
          f"peak {rss['peak'] / 2**20:.1f} MiB, after {rss['after'] / 2**20:.1f} MiB")
    print("gateway counters: " + ", ".join(f"{k}={int(v)}" for k, v in sorted(result["metrics"].items())
                                            if v and "loop_turn_max" not in k))
    print()
    width = max(len(c[0]) for c in result["checks"])
    print(f"{'check':<{width}}  {'result':<6}  figures")
    for name, figures, ok in result["checks"]:
        print(f"{name:<{width}}  {'PASS' if ok else 'FAIL':<6}  {figures}")
    for failure in result["good_failures"][:5]:
        print("  good client failure:", failure)
    for failure in result["episode_failures"][:10]:
        print("  episode failure:", failure)
    if result["tracebacks"]:
        print("gateway stderr (tail):", "".join(result["gateway_stderr_tail"]))
    print()
    print("PASSED" if result["passed"] else "FAILED")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the storm (publishing time)")
    p.add_argument("--misbehaving-fraction", type=float, default=0.1)
    p.add_argument("--rate", type=int, default=200, help="messages per second")
    p.add_argument("--size", type=int, default=1024, help="payload bytes per message")
    p.add_argument("--tick", type=float, default=0.02, help="the publisher sends every TICK seconds")
    p.add_argument("--procs", type=int, default=0, help="client processes (default: 1 per 500 clients, at least 2)")
    p.add_argument("--max-queue", type=int, default=256 * 1024)
    p.add_argument("--max-message-size", type=int, default=64 * 1024)
    p.add_argument("--client-rate", type=float, default=100.0)
    p.add_argument("--handshake-timeout", type=float, default=2.0)
    p.add_argument("--close-timeout", type=float, default=10.0)
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = p.parse_args(argv)
    if args.procs <= 0:
        args.procs = max(2, (args.clients + 499) // 500)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print_report(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
