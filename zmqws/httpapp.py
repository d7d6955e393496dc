"""The plain HTTP endpoints of a gateway: the page and files, ``/metrics``, ``/healthz``, ``/readyz``.

* ``GET /`` the live page and ``/zmqws.js`` its client (the package's static
  folder), then the files of ``static_dir``: from memory, read off the loop
  (:mod:`zmqws.files`);
* ``GET /metrics``: the Prometheus text (:mod:`zmqws.metrics`), behind
  ``metrics_token`` if set, else behind what clients need;
* ``GET /healthz``: 200 while the loop answers; ``GET /readyz``: 200 once the
  SUB endpoints are connected (every one, or any one with ``ready_any``);
* CORS headers for ``cors_origins``; ``OPTIONS`` preflights.

The streaming endpoints (``/events``, ``/poll``) are the transports'; this
module only hands them the request.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

from . import metrics as prometheus
from .files import FileCache, StaticFile
from .protocol.errors import HTTPError
from .protocol.handshake import error_response, http_response
from .transports import cors_headers

if TYPE_CHECKING:  # pragma: no cover
    from .config import HttpConfig
    from .peer import Client
    from .protocol.handshake import Request

__all__ = ["HttpApp"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

Cors = List[Tuple[str, str]]
Stream = Callable[["Client", "Request", Cors], None]


class Host(prometheus.Source, Protocol):
    """What the HTTP app needs of the gateway it serves."""

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None: ...

    def http_reply(self, client: "Client", response: bytes, keep_alive: bool = False) -> None: ...

    def reply_later(self, client: "Client") -> None: ...

    def reply_now(self, client: "Client", response: bytes, keep_alive: bool = False) -> None: ...


class HttpApp:
    """See the module docstring.  ``streams``: path -> the transport that takes it over."""

    def __init__(self, gateway: Host, config: "HttpConfig", authenticate: Optional[Callable[..., Any]],
                 ready_any: bool, streams: Dict[str, Stream]) -> None:
        self.gateway = gateway
        self.config = config
        self.ready_any = ready_any
        self.streams = streams
        # Files are served from the user's folder first, then the package's (page, zmqws.js).
        self.files = FileCache([d for d in (config.static_dir, STATIC) if d],
                               lambda callback: gateway.call_soon_threadsafe(callback),
                               time.monotonic, max_file_size=config.max_static_size,
                               max_total=config.static_cache_size)
        self._metrics_auth = authenticate
        if config.metrics_token:
            from .auth import token_authenticator  # hmac loads OpenSSL's libcrypto: only when needed
            self._metrics_auth = token_authenticator(config.metrics_token)

    def close(self) -> None:
        self.files.close()

    def handle(self, client: "Client", request: "Request") -> Optional[bytes]:
        """A plain HTTP request (see the module docstring); else 404 (405 for other methods)."""
        cors = cors_headers(request, self.config.cors_origins)
        if request.method == "OPTIONS" and cors:
            return http_response(204, headers=cors + [("Access-Control-Allow-Methods", "GET, HEAD"),
                                                      ("Access-Control-Allow-Headers", "Last-Event-ID"),
                                                      ("Access-Control-Max-Age", "600")])
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed", [("Allow", "GET, HEAD")])
        path = request.path
        if path == "/healthz":
            return http_response(200, b"ok\n", keep_alive=False)
        if path == "/readyz":
            return self._readyz()
        if path == "/metrics" and self.config.metrics:
            self._check_metrics_access(request)
            return http_response(200, prometheus.render(self.gateway), prometheus.CONTENT_TYPE)
        stream = self.streams.get(path)
        if stream is not None:
            stream(client, request, cors)
            return None
        page = self.config.page
        if path in ("/", "/index.html") and not page:
            raise HTTPError(404, "not found")
        relative = self.files.relative("/" + page if path == "/" and page else path)
        if relative is None:
            raise HTTPError(404, "not found")
        found = self.files.get(relative)
        if found is not None:
            self.gateway.http_reply(client, self._file_response(request, found, cors), keep_alive=True)
            return None
        self.gateway.reply_later(client)  # read off the loop, then _file_loaded
        self.files.load(relative, lambda found: self._file_loaded(client, request, found, cors))
        return None

    def _file_loaded(self, client: "Client", request: "Request", found: Optional[StaticFile], cors: Cors) -> None:
        if found is None:
            self.gateway.stats.http_errors += 1
            self.gateway.reply_now(client, error_response(HTTPError(404, "not found")))
        else:
            self.gateway.reply_now(client, self._file_response(request, found, cors), keep_alive=True)

    @staticmethod
    def _file_response(request: "Request", found: StaticFile, cors: Cors) -> bytes:
        return http_response(200, found.body, found.content_type, [("Cache-Control", "no-cache")] + cors,
                             keep_alive=request.keep_alive)

    def _check_metrics_access(self, request: "Request") -> None:
        """``/metrics`` needs ``metrics_token`` if set, else what clients need (401/403)."""
        if self._metrics_auth is not None:
            try:
                self._metrics_auth(request)
            except HTTPError:
                self.gateway.stats.forbidden += 1
                raise

    def _readyz(self) -> bytes:
        """``GET /readyz``: 200 once the SUB endpoints are connected (every one; any one with
        ``ready_any``; a gateway without any is ready), else 503 naming those that are not."""
        status = self.gateway.upstream_status()
        down = [endpoint for endpoint, connected in status.items() if not connected]
        if not down or (self.ready_any and len(down) < len(status)):
            return http_response(200, b"ready\n", keep_alive=False)
        body = "not ready: not connected: " + " ".join(down) + "\n"
        return http_response(503, body.encode("utf-8"), headers=[("Retry-After", "1")], keep_alive=False)
