"""RFC 6455 §4 opening handshake and the small HTTP/1.1 it rides on, sans-I/O.

* :class:`RequestParser`: incremental HTTP/1.1 request parser (RFC 9112 §2-§6)
  with limits: the request line and headers must fit in ``max_header_size``
  bytes (431 beyond), a body (``Content-Length`` only) in ``max_body_size``,
  or in what ``body_limit(request)`` says for that request (413 beyond,
  before any of it is read).
* :func:`websocket_accept`: validates an upgrade request as §4.2.1 says and
  builds the 101 response (§4.2.2), or raises :class:`HTTPError` with the
  status to answer: 400 with a short reason, 426 with
  ``Sec-WebSocket-Version: 13`` for another version (§4.4).
* :func:`http_response`: any other response, always with a length.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import HTTPError

try:  # the built-in SHA-1: hashlib would load OpenSSL's libcrypto (megabytes of RSS) for it
    from _sha1 import sha1 as _sha1
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import sha1 as _sha1

__all__ = ["HTTPError", "Request", "RequestParser", "websocket_accept", "accept_key",
           "http_response", "parse_extensions", "is_websocket_upgrade", "SERVER_NAME"]

SERVER_NAME = "zmqws"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # §1.3

REASONS = {
    101: "Switching Protocols", 200: "OK", 204: "No Content", 301: "Moved Permanently",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 426: "Upgrade Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class Request:
    """A parsed HTTP/1.1 request.  Header names are lower-case; repeated headers keep every value."""

    __slots__ = ("method", "target", "version", "headers", "body", "path", "query", "peer", "last")

    def __init__(self, method: str, target: str, version: str,
                 headers: Dict[str, List[str]], body: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        parts = urlsplit(target)
        self.path = unquote(parts.path) or "/"
        self.query: Dict[str, List[str]] = parse_qs(parts.query, keep_blank_values=True)
        self.peer: Optional[Tuple[str, int]] = None
        self.last = False  # the server closes the connection after this one (RFC 9112 §9.6)

    def header(self, name: str) -> Optional[str]:
        """All values of a header joined by ", " (RFC 9110 §5.3), or None."""
        values = self.headers.get(name.lower())
        if values is None:
            return None
        return ", ".join(values)

    def tokens(self, name: str) -> List[str]:
        """A comma-separated header as lower-case tokens (RFC 9110 §5.6.1)."""
        value = self.header(name)
        if not value:
            return []
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    def query_value(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def keep_alive(self) -> bool:
        """RFC 9112 §9.3: persistent unless ``Connection: close`` (or HTTP/1.0 without keep-alive),
        or the server made it the connection's ``last`` request."""
        if self.last:
            return False
        tokens = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def __repr__(self) -> str:  # pragma: no cover
        return f"Request({self.method} {self.target} {self.version})"


class RequestParser:
    """Incremental HTTP/1.1 request parser.

    ``feed(data)`` returns a :class:`Request` once the head (and body, if it
    has a ``Content-Length``) is complete, else None; bytes after the request
    stay in ``rest`` (a client may send WebSocket frames right behind its
    handshake).  Malformed input raises :class:`HTTPError`.
    """

    __slots__ = ("max_header_size", "max_body_size", "max_headers", "body_limit", "_buf", "_head",
                 "_need", "rest")

    def __init__(self, max_header_size: int = 8192, max_body_size: int = 1 << 20,
                 max_headers: int = 100, body_limit: Optional[Callable[[Request], int]] = None) -> None:
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.max_headers = max_headers
        self.body_limit = body_limit  # the largest body a request may have (0: none), by its head
        self._buf = bytearray()
        self._head: Optional[Request] = None
        self._need = 0
        self.rest = b""

    def feed(self, data: bytes) -> Optional[Request]:
        self._buf += data
        if self._head is None:
            # Tolerate empty lines before the request line (RFC 9112 §2.2).
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_header_size:
                    raise HTTPError(431, "request line and headers too large")
                return None
            if end + 4 > self.max_header_size:
                raise HTTPError(431, "request line and headers too large")
            head = bytes(self._buf[:end])
            del self._buf[:end + 4]
            self._head = self._parse_head(head)
            self._need = self._body_length(self._head)
        if len(self._buf) < self._need:
            return None
        request = self._head
        request.body = bytes(self._buf[:self._need])
        self.rest = bytes(self._buf[self._need:])
        self._buf = bytearray()
        self._head = None
        self._need = 0
        return request

    def reset(self) -> bytes:
        """Make ready for the next request on a persistent connection; return leftover bytes."""
        rest, self.rest = self.rest, b""
        return rest

    def _parse_head(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "malformed request line") from None
        if not method or not all(c in _TOKEN_CHARS for c in method.encode()):
            raise HTTPError(400, "malformed method")
        if not target or any(c <= " " or c == "\x7f" for c in target):
            raise HTTPError(400, "malformed request target")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if version.startswith("HTTP/"):
                raise HTTPError(505, "unsupported HTTP version")
            raise HTTPError(400, "malformed request line")
        if len(lines) - 1 > self.max_headers:
            raise HTTPError(431, "too many header fields")
        headers: Dict[str, List[str]] = {}
        for line in lines[1:]:
            if not line or line[0] in b" \t":
                raise HTTPError(400, "obsolete line folding or empty header line")
            name, sep, value = line.partition(b":")
            if not sep or not name or not all(c in _TOKEN_CHARS for c in name):
                raise HTTPError(400, "malformed header field")
            try:
                text = value.strip(b" \t").decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
                raise HTTPError(400, "malformed header value") from None
            if any(c in text for c in "\r\n\x00"):
                raise HTTPError(400, "malformed header value")
            headers.setdefault(name.decode("ascii").lower(), []).append(text)
        if target[0] != "/" and not target.startswith(("http://", "https://")) and target != "*":
            raise HTTPError(400, "malformed request target")
        try:
            return Request(method, target, version, headers)
        except ValueError:
            raise HTTPError(400, "malformed request target") from None

    def _body_length(self, request: Request) -> int:
        limit = self.max_body_size if self.body_limit is None else self.body_limit(request)
        if not limit and ("transfer-encoding" in request.headers
                          or request.headers.get("content-length", ["0"]) != ["0"]):
            raise HTTPError(413, "this request takes no body")
        if "transfer-encoding" in request.headers:
            raise HTTPError(501, "transfer codings are not supported; send Content-Length")
        values = request.headers.get("content-length")
        if not values:
            return 0
        # 1*DIGIT is ASCII only: str.isdigit() alone accepts "²" (Latin-1 0xB2), which int() refuses.
        if len(set(values)) != 1 or not (values[0].isascii() and values[0].isdigit()):
            raise HTTPError(400, "malformed Content-Length")
        # int() refuses strings of more than 4300 digits: check the digit count first.
        digits = values[0].lstrip("0") or "0"
        if len(digits) > 18 or int(digits) > limit:
            raise HTTPError(413, "request body too large")
        return int(digits)


def accept_key(key: str) -> str:
    """§4.2.2 step 5.4: base64(SHA-1(key + GUID))."""
    return base64.b64encode(_sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def is_websocket_upgrade(request: Request) -> bool:
    """True when the request asks for a WebSocket upgrade (``Upgrade: websocket``)."""
    return "websocket" in request.tokens("upgrade")


def parse_extensions(value: str) -> List[Tuple[str, List[Tuple[str, Optional[str]]]]]:
    """§9.1: ``Sec-WebSocket-Extensions`` as [(name, [(param, value or None), ...]), ...].

    Quoted values are unquoted; a malformed header raises HTTPError(400).
    """
    result = []
    for item in _split_outside_quotes(value, ","):
        item = item.strip()
        if not item:
            continue
        parts = _split_outside_quotes(item, ";")
        name = parts[0].strip()
        if not _is_token(name):
            raise HTTPError(400, "malformed Sec-WebSocket-Extensions")
        params: List[Tuple[str, Optional[str]]] = []
        for param in parts[1:]:
            pname, sep, pvalue = param.partition("=")
            pname = pname.strip()
            if not _is_token(pname):
                raise HTTPError(400, "malformed Sec-WebSocket-Extensions")
            if not sep:
                params.append((pname, None))
                continue
            pvalue = pvalue.strip()
            if len(pvalue) >= 2 and pvalue[0] == '"' and pvalue[-1] == '"':
                pvalue = pvalue[1:-1].replace('\\"', '"')
            if not _is_token(pvalue):
                raise HTTPError(400, "malformed Sec-WebSocket-Extensions")
            params.append((pname, pvalue))
        result.append((name, params))
    return result


def _split_outside_quotes(value: str, sep: str) -> List[str]:
    parts: List[str] = []
    current: List[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _is_token(text: str) -> bool:
    return bool(text) and all(ord(c) < 128 and ord(c) in _TOKEN_CHARS for c in text)


ExtensionNegotiator = Callable[[List[Tuple[str, List[Tuple[str, Optional[str]]]]]],
                               Optional[Tuple[str, object]]]


def websocket_accept(request: Request, subprotocols: Iterable[str] = (),
                     negotiate_extensions: Optional[ExtensionNegotiator] = None,
                     extra_headers: Sequence[Tuple[str, str]] = ()
                     ) -> Tuple[bytes, Optional[str], Optional[object]]:
    """§4.2.1-§4.2.2: check an upgrade request; return (101 response, subprotocol, extension).

    ``subprotocols`` lists what the server speaks, in its order of preference;
    the first one the client also offered is chosen (§4.2.2 /subprotocol/).
    ``negotiate_extensions`` receives the parsed offers and returns the
    response header value and a state object, or None to decline.
    """
    if request.method != "GET":
        raise HTTPError(400, "a WebSocket upgrade must use GET")
    if request.version != "HTTP/1.1":
        raise HTTPError(400, "a WebSocket upgrade needs HTTP/1.1")
    if not request.headers.get("host"):
        raise HTTPError(400, "missing Host header")
    if "websocket" not in request.tokens("upgrade"):
        raise HTTPError(400, "missing Upgrade: websocket")
    if "upgrade" not in request.tokens("connection"):
        raise HTTPError(400, "missing Connection: upgrade")
    versions = request.tokens("sec-websocket-version")
    if versions != ["13"]:
        raise HTTPError(426, "unsupported Sec-WebSocket-Version (13 is supported)",
                        [("Sec-WebSocket-Version", "13")])
    keys = request.headers.get("sec-websocket-key", [])
    if len(keys) != 1:
        raise HTTPError(400, "missing or repeated Sec-WebSocket-Key")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HTTPError(400, "Sec-WebSocket-Key is not base64 of 16 bytes")

    chosen: Optional[str] = None
    offered = request.tokens("sec-websocket-protocol")
    if offered:
        offered_exact = [t.strip() for t in (request.header("sec-websocket-protocol") or "").split(",")]
        for proto in subprotocols:
            if proto in offered_exact:
                chosen = proto
                break

    extension_header: Optional[str] = None
    extension_state: Optional[object] = None
    ext_value = request.header("sec-websocket-extensions")
    if ext_value and negotiate_extensions is not None:
        agreed = negotiate_extensions(parse_extensions(ext_value))
        if agreed is not None:
            extension_header, extension_state = agreed

    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: " + accept_key(key),
    ]
    if chosen is not None:
        lines.append("Sec-WebSocket-Protocol: " + chosen)
    if extension_header:
        lines.append("Sec-WebSocket-Extensions: " + extension_header)
    lines.append("Server: " + SERVER_NAME)
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), chosen, extension_state


def http_response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
                  headers: Sequence[Tuple[str, str]] = (), keep_alive: bool = False,
                  head_only: bool = False) -> bytes:
    """An HTTP/1.1 response with ``Content-Length`` (RFC 9112 §6.3); no body for HEAD."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "Server: " + SERVER_NAME]
    if status not in (204, 304):
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(error: HTTPError) -> bytes:
    """The response for an :class:`HTTPError`: its status and reason as a short text body."""
    return http_response(error.status, (error.reason + "\n").encode("utf-8"),
                         headers=error.headers)
