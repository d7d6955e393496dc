"""``python -m zmqws.client URL``: a terminal client of the gateway, on zmqws's own protocol code.

It prints the messages of a gateway as they come, and when the connection
drops it reconnects with back-off (0.5 s, doubling up to 10 s) and resumes
after the last id it printed (``?since=ID``): nothing is missed, nothing is
printed twice, and the gateway's gap notices (``{"gap": [first, last]}``, the
ids it cannot vouch for) go to stderr.  Standard library only, blocking
sockets (``ssl`` for ``wss://``).

* RFC 6455 §4.1, the client's opening handshake: a random 16-byte
  ``Sec-WebSocket-Key``; the answer must be 101 with ``Upgrade: websocket``,
  ``Connection: Upgrade`` and ``Sec-WebSocket-Accept`` equal to
  :func:`zmqws.protocol.handshake.accept_key` of the key, and no extension or
  subprotocol that was not asked for.
* §5.1, §5.3: frames are read and written by
  :class:`zmqws.connection.ClientConnection`: every frame sent (pongs, the
  close) is masked with a fresh key from ``os.urandom``, a masked server frame
  fails the connection.  §5.5.2: pings are answered with pongs.

The client always asks for the ``json`` envelope (it needs the ids to resume)
and prints what ``--format`` asks: the payload, ``topic payload`` or the JSON
object, one line per message.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import signal
import socket
import ssl
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .protocol.connection import ClientConnection, CloseReceived, ConnectionFailed, Message
from .protocol.handshake import accept_key

__all__ = ["main", "stream_url", "Refused", "Dropped", "Printer", "connect", "messages", "close"]

USER_AGENT = "zmqws.client"
MAX_MESSAGE_SIZE = 1 << 30  # the gateway's messages are as large as its publishers make them
MAX_RESPONSE_HEAD = 16384
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
# Statuses worth trying again: the gateway is full (503) or asks to slow down (429), or a proxy in
# front of it cannot reach it (502, 504); the others (400 bad topic, 401 token, 403 origin, Host or
# rights, 404 path) will not change by themselves.
RETRY_STATUSES = frozenset((429, 502, 503, 504))


class Refused(Exception):
    """The gateway answered the handshake with an HTTP status other than 101."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class Dropped(Exception):
    """The connection ended: the TCP connection was lost, or a close frame was exchanged."""


class OutputClosed(Exception):
    """Nobody reads the output any more (piped into ``head``, say): time to stop."""


# -- the URL and the handshake (RFC 6455 §4.1) ---------------------------------------------


def stream_url(url: str, topics: Sequence[str], since: Optional[int]) -> str:
    """``url`` as ``ws://``/``wss://`` with ``topic=`` for each topic, ``format=json`` and
    ``since=ID`` (replacing any ``format``/``since`` it had); ``http(s)://`` is accepted."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("format", "since")]
    query += [("topic", topic) for topic in topics]
    query.append(("format", "json"))
    if since is not None:
        query.append(("since", str(since)))
    return urlunsplit((scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def _open_socket(url: str, timeout: float, insecure: bool) -> socket.socket:
    """A TCP connection to the URL's host and port; TLS with certificate checks for ``wss``."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    sock = socket.create_connection((parts.hostname, parts.port or (443 if secure else 80)), timeout)
    if not secure:
        return sock
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        return context.wrap_socket(sock, server_hostname=parts.hostname)
    except BaseException:
        sock.close()
        raise


def _request(url: str, key: str, token: Optional[str]) -> bytes:
    """§4.1: the opening handshake's request (and ``Authorization: Bearer`` with a token)."""
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13", f"User-Agent: {USER_AGENT}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(sock: socket.socket) -> Tuple[bytes, bytes]:
    """The response head (up to the blank line) and the bytes read after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_RESPONSE_HEAD:
            raise Dropped("handshake response head too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise Dropped("connection closed during the handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> Tuple[int, Dict[str, str]]:
    """Status code and headers (lower-case names; repeated ones joined by ", ", RFC 9110 §5.3)."""
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise Dropped(f"not an HTTP response: {lines[0][:80]!r}")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return int(fields[1]), headers


def _tokens(value: str) -> List[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def _refusal(sock: socket.socket, status: int, headers: Dict[str, str], rest: bytes) -> Refused:
    """The error's short text body (the gateway sends its reason there), read within bounds."""
    want = min(int(headers.get("content-length", "0") or 0), 1024)
    try:
        while len(rest) < want:
            chunk = sock.recv(want - len(rest))
            if not chunk:
                break
            rest += chunk
    except OSError:
        pass
    return Refused(status, rest[:want].decode("utf-8", "replace").strip())


def connect(url: str, *, token: Optional[str] = None, timeout: float = 10.0,
            insecure: bool = False) -> Tuple[socket.socket, ClientConnection, bytes]:
    """§4.1: open the connection and do the opening handshake.

    Returns the socket, a client-side :class:`ClientConnection` and the bytes
    that came right after the 101 response (the first frames, perhaps).  Raises
    :class:`Refused` for another status, :class:`Dropped` for an answer that
    breaks §4.1, ``OSError`` (``ssl.SSLError`` included) for the network.
    """
    sock = _open_socket(url, timeout, insecure)
    try:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        sock.sendall(_request(url, key, token))
        head, rest = _read_head(sock)
        status, headers = _parse_head(head)
        if status != 101:
            raise _refusal(sock, status, headers, rest)
        if "websocket" not in _tokens(headers.get("upgrade", "")):
            raise Dropped("101 without Upgrade: websocket")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise Dropped("101 without Connection: Upgrade")
        if headers.get("sec-websocket-accept") != accept_key(key):
            raise Dropped("wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions") or headers.get("sec-websocket-protocol"):
            raise Dropped("the server chose an extension or subprotocol that was not offered")
    except BaseException:
        sock.close()
        raise
    masking_keys = iter(functools.partial(os.urandom, 4), None)  # §5.3: strong entropy
    return sock, ClientConnection(masking_keys, max_message_size=MAX_MESSAGE_SIZE), rest


def _flush(sock: socket.socket, ws: ClientConnection) -> None:
    """Write what the connection queued (pongs, a close frame)."""
    if ws.out:
        data = b"".join(ws.out)
        ws.discard_output()
        sock.sendall(data)


def messages(sock: socket.socket, ws: ClientConnection, rest: bytes = b"",
             idle_timeout: float = 0.0) -> Iterator[Message]:
    """The messages of the connection as they come; pings are answered (§5.5.2).

    Ends with :class:`Dropped` when the peer closes (its close frame is answered,
    §5.5.1), breaks the protocol (a close frame is sent, §7.1.7), the TCP
    connection ends or nothing arrives for ``idle_timeout`` seconds (0 = wait
    for ever; the gateway pings a silent client every ``--ping-interval``).
    """
    sock.settimeout(idle_timeout or None)
    data = rest
    while True:
        for event in ws.receive(data) if data else ():
            if isinstance(event, Message):
                yield event
            elif isinstance(event, CloseReceived):
                _flush(sock, ws)
                raise Dropped(f"closed by the server: {event.code} {event.reason}".strip())
            elif isinstance(event, ConnectionFailed):
                _flush(sock, ws)
                raise Dropped(f"protocol error: {event.code} {event.reason}")
        _flush(sock, ws)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise Dropped(f"nothing received for {idle_timeout:g} s") from None
        if not data:
            raise Dropped("connection lost (no close frame)")


def close(sock: socket.socket, ws: ClientConnection, timeout: float = 1.0) -> None:
    """§7.1.2: send a 1000 close frame, wait briefly for the server's, close TCP."""
    try:
        ws.close(1000)
        _flush(sock, ws)
        for _ in messages(sock, ws, idle_timeout=timeout):
            pass
    except (Dropped, OSError):
        pass
    finally:
        sock.close()


# -- printing -------------------------------------------------------------------------------


class Printer:
    """Prints messages in the JSON envelope as ``--format`` asks; keeps the last id.

    ``payload``: the data (binary data as ``<N bytes>``; ``json`` keeps it, as
    base64); ``topic``: ``topic payload`` (the payload alone for a message
    without topic, as the gateway does); ``json``: the object on one line.
    Gap notices and errors from the gateway go to ``err``.
    """

    __slots__ = ("format", "out", "err", "last_id", "printed")

    def __init__(self, format_: str, out: TextIO, err: TextIO, since: Optional[int] = None) -> None:
        self.format = format_
        self.out = out
        self.err = err
        self.last_id = since
        self.printed = 0

    def handle(self, message: Message) -> None:
        if message.binary:  # not a gateway's json envelope
            self._print(f"<{len(message.data)} bytes>")
            return
        text = message.data.decode("utf-8")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), int):
            if isinstance(doc, dict) and ("gap" in doc or "error" in doc):
                print(text, file=self.err, flush=True)
            else:
                self._print(text)
            return
        if self.last_id is not None and doc["id"] <= self.last_id:
            return  # already printed before a reconnect
        self.last_id = doc["id"]
        self._print(self._render(text, doc))

    def _render(self, text: str, doc: Dict[str, Any]) -> str:
        if self.format == "json":
            return text
        data = doc.get("data", "")
        if doc.get("binary"):
            data = f"<{len(base64.b64decode(data))} bytes>"
        topic = doc.get("topic") or ""
        return f"{topic} {data}" if self.format == "topic" and topic else str(data)

    def _print(self, line: str) -> None:
        try:
            print(line, file=self.out, flush=True)
        except BrokenPipeError:
            raise OutputClosed() from None
        self.printed += 1


# -- the command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zmqws.client",
        description="Print what a zmqws gateway sends, one message per line; reconnect and resume "
                    "(?since=last id) when the connection drops.")
    p.add_argument("url", nargs="?", default="ws://127.0.0.1:8080/",
                   help="the gateway: ws://, wss://, http:// or https://HOST:PORT/ (default: %(default)s)")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="receive the topics starting with PREFIX (repeatable; default: every topic)")
    p.add_argument("--format", choices=("payload", "topic", "json"), default="payload",
                   help="print the payload, 'topic payload', or the JSON object {id, topic, data} "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_const", const="json", dest="format",
                   help="the same as --format json")
    p.add_argument("--since", type=int, metavar="ID",
                   help="start with the messages after this id (still in the gateway's history)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N messages (default: 0 = never)")
    p.add_argument("--token", metavar="TOKEN",
                   help="the gateway's --token, sent as 'Authorization: Bearer' "
                        "(default: the ZMQWS_TOKEN environment variable)")
    p.add_argument("--insecure", action="store_true",
                   help="wss://: do not check the server's certificate")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="connect and handshake timeout (default: %(default)s s)")
    p.add_argument("--rpc", metavar="TOPIC",
                   help="send one request on the two-way channel (a gateway with --rpc, see "
                        "docs/two-way.md) and print its reply's data as JSON, then exit "
                        "(status 1 for an error reply, a timeout or a refusal)")
    p.add_argument("--data", metavar="JSON",
                   help="with --rpc: the request's data, JSON (anything else is sent as a string)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="reconnect when nothing (not even a ping) arrives for S seconds; "
                        "the gateway pings every 20 s by default (default: %(default)s; 0 = never)")
    return p


def _note(text: str) -> None:
    print(f"zmqws.client: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Connect, print, reconnect with back-off until ``--count`` messages (or for ever)."""
    token = args.token or os.environ.get("ZMQWS_TOKEN")
    printer = Printer(args.format, out, err, args.since)
    delay = BACKOFF_FIRST
    while True:
        url = stream_url(args.url, args.topic, printer.last_id)
        try:
            sock, ws, rest = connect(url, token=token, timeout=args.timeout, insecure=args.insecure)
        except Refused as exc:
            if exc.status not in RETRY_STATUSES:
                _note(f"{url}: refused: {exc}")
                return 1
            problem = f"refused: {exc}"
        except ssl.SSLCertVerificationError as exc:
            _note(f"{url}: {exc.verify_message or exc} (--insecure skips the check)")
            return 1
        except (Dropped, OSError) as exc:
            problem = str(exc) or type(exc).__name__
        else:
            _note(f"connected to {url}")
            delay = BACKOFF_FIRST
            try:
                for message in messages(sock, ws, rest, args.idle_timeout):
                    printer.handle(message)
                    if args.count and printer.printed >= args.count:
                        close(sock, ws)
                        return 0
            except (Dropped, OSError) as exc:
                problem = str(exc) or type(exc).__name__
                sock.close()
            except BaseException:  # Ctrl-C, or nobody reads the output: a clean close
                close(sock, ws)
                raise
        _note(f"{problem}; reconnecting in {delay:g} s")
        time.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


def request(args: argparse.Namespace, out: TextIO) -> int:
    """``--rpc TOPIC``: one request, ``{"rpc": 1, "topic", "data"}``, and its reply
    (``{"reply": 1, "data"}`` printed as JSON, or ``{"reply": 1, "error"}`` on stderr)."""
    token = args.token or os.environ.get("ZMQWS_TOKEN")
    url = stream_url(args.url, args.topic, None)
    try:
        data: Any = json.loads(args.data) if args.data is not None else None
    except ValueError:
        data = args.data
    try:
        sock, ws, rest = connect(url, token=token, timeout=args.timeout, insecure=args.insecure)
    except (Refused, Dropped, OSError) as exc:
        _note(f"{url}: {exc}")
        return 1
    try:
        ws.send(json.dumps({"rpc": 1, "topic": args.rpc, "data": data}))
        _flush(sock, ws)
        for message in messages(sock, ws, rest, args.idle_timeout):
            doc = json.loads(message.data) if not message.binary else None
            if isinstance(doc, dict) and doc.get("reply") == 1:
                if "error" in doc:
                    _note(f"error: {doc['error']}")
                    return 1
                print(json.dumps(doc.get("data")), file=out, flush=True)
                return 0
            if isinstance(doc, dict) and "error" in doc and "reply" not in doc:
                _note(f"refused: {doc['error']}")  # e.g. the gateway has no two-way channel
                return 1
    except (Dropped, OSError) as exc:
        _note(f"{url}: {exc}")
    finally:
        close(sock, ws)
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        stream_url(args.url, args.topic, None)
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.rpc is not None:
            return request(args, sys.stdout)
        return run(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 0
    except OutputClosed:  # no complaint about stdout when Python exits
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
