"""Access control helpers: a shared-token authenticator for the ``authenticate`` hook.

``WebSocketServer(authenticate=hook)`` calls ``hook(request)`` for every
WebSocket upgrade and streaming HTTP request.  The hook returns ``None``
(allowed, every topic), an iterable of allowed topic prefixes, or raises
:class:`~zmqws.handshake.HTTPError` with 401 or 403.
"""

from __future__ import annotations

import hmac
from typing import Callable, Iterable, Optional

from .handshake import HTTPError, Request

__all__ = ["token_authenticator", "request_token"]


def request_token(request: Request) -> Optional[str]:
    """The token of a request: ``Authorization: Bearer TOKEN`` (RFC 6750 §2.1), else ``?token=``."""
    header = request.header("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query_value("token")


def token_authenticator(token: str, topics: Optional[Iterable[str]] = None
                        ) -> Callable[[Request], Optional[Iterable[str]]]:
    """A hook that admits requests carrying ``token`` (compared in constant time), else 401.

    ``topics``, if given, are the prefixes the admitted clients may receive.
    """
    expected = token.encode("utf-8")
    allowed = list(topics) if topics is not None else None

    def authenticate(request: Request) -> Optional[Iterable[str]]:
        given = request_token(request)
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
            raise HTTPError(401, "missing or wrong token",
                            [("WWW-Authenticate", 'Bearer realm="zmqws"')])
        return allowed

    return authenticate
