"""Access control helpers: authenticators for the ``authenticate`` hook.

``WebSocketServer(authenticate=hook)`` calls ``hook(request)`` for every
WebSocket upgrade and streaming HTTP request.  The hook returns ``None``
(allowed, every topic), an iterable of topic prefixes (read and write only
there), a :class:`~zmqws.rights.Rights`, or raises
:class:`~zmqws.protocol.handshake.HTTPError` with 401 or 403.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

from .protocol.handshake import HTTPError, Request
from .rights import Rights, TokenFile

__all__ = ["token_authenticator", "TokenFileAuthenticator", "request_token", "authenticator"]

Authenticator = Callable[[Request], Union[None, Iterable[str], Rights]]


def request_token(request: Request) -> Optional[str]:
    """The token of a request: ``Authorization: Bearer TOKEN`` (RFC 6750 §2.1), else ``?token=``."""
    header = request.header("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.query_value("token")


def _unauthorized() -> HTTPError:
    """401 with the challenge of RFC 6750 §3."""
    return HTTPError(401, "missing or wrong token", [("WWW-Authenticate", 'Bearer realm="zmqws"')])


def _same(given: Optional[str], expected: bytes) -> bool:
    import hmac  # here, not at the top: hmac loads OpenSSL's hashlib (megabytes of RSS)

    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected)


def token_authenticator(token: str, topics: Optional[Iterable[str]] = None) -> Authenticator:
    """A hook that admits requests carrying ``token`` (compared in constant time), else 401.

    ``topics``, if given, are the prefixes the admitted clients may read and write.
    """
    expected = token.encode("utf-8")
    allowed = list(topics) if topics is not None else None

    def authenticate(request: Request) -> Optional[Iterable[str]]:
        if not _same(request_token(request), expected):
            raise _unauthorized()
        return allowed

    return authenticate


class TokenFileAuthenticator:
    """A hook that admits the tokens of a :class:`~zmqws.rights.TokenFile` with their rights
    (and ``token``, if given, with every right), else 401.  ``tokens.reload()`` (the CLI
    calls it on SIGHUP) takes effect for the next request."""

    def __init__(self, tokens: TokenFile, token: Optional[str] = None) -> None:
        self.tokens = tokens
        self._expected = token.encode("utf-8") if token else None

    def __call__(self, request: Request) -> Optional[Rights]:
        given = request_token(request)
        if self._expected is not None and _same(given, self._expected):
            return None
        rights = self.tokens.lookup(given)
        if rights is None:
            raise _unauthorized()
        return rights


def authenticator(token: Optional[str], token_file: Optional[str]) -> Optional[Authenticator]:
    """The hook of the command line's ``--token`` and ``--token-file`` (None: neither given):
    with a token file, its tokens with their rights (and ``token`` with every right)."""
    if token_file:
        return TokenFileAuthenticator(TokenFile(token_file), token)
    return token_authenticator(token) if token else None
