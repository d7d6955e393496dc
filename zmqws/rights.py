"""Who may read and write which topics: one rights check for every transport. Sans-I/O.

A client's :class:`Rights` come from the ``authenticate`` hook (or a token
file, :class:`TokenFile`) when it connects, and every transport asks this
module, and only this module, whether a topic may be read or written:

* **read**: the topic prefixes a client may subscribe to.  A requested prefix
  is allowed when it starts with one of them (``prices.eu`` is within
  ``prices.``); ``None`` is every topic; an empty set is none at all.
* **write**: the topics a client may send upstream (forwarded messages,
  Socket.IO events, requests): the topic must start with one of them.

:func:`resolve_topics` turns what a client asked for into the prefixes it is
routed with, and refuses (never narrows silently, never widens) what is not
allowed or over the caps (``max_topics`` prefixes of ``max_topic_length``
bytes at most per client).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Dict, FrozenSet, Iterable, List, Optional, Union

from .protocol.errors import ZmqwsError

__all__ = ["Rights", "ALL_RIGHTS", "TopicRefused", "resolve_topics", "topic_matches",
           "rights_from_hook", "TopicPolicy", "TokenFile", "parse_token_file"]

log = logging.getLogger("zmqws")

DEFAULT_MAX_TOPICS = 256
DEFAULT_MAX_TOPIC_LENGTH = 256


def topic_matches(topic: bytes, prefixes: Iterable[bytes]) -> bool:
    """ZeroMQ's subscription rule: does ``topic`` start with any of ``prefixes``?"""
    return any(topic.startswith(p) for p in prefixes)


class TopicRefused(ZmqwsError):
    """A topic request that is not allowed or over a cap; ``status`` is the HTTP answer
    (403 for rights, 400 for malformed or too many topics)."""

    def __init__(self, reason: str, status: int = 403, topic: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.topic = topic

    @property
    def message(self) -> str:
        """The reason with the topic, for answers that carry no separate topic field."""
        return self.reason if self.topic is None else f"{self.reason}: {self.topic}"


def _prefixes(values: Optional[Iterable[Union[str, bytes]]]) -> Optional[FrozenSet[bytes]]:
    if values is None:
        return None
    return frozenset(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)


@dataclass(frozen=True)
class Rights:
    """What one client may read and write (``None``: every topic; empty: none)."""

    read: Optional[FrozenSet[bytes]] = None
    write: Optional[FrozenSet[bytes]] = None
    name: Optional[str] = field(default=None, compare=False)  # the token's name, for logs

    @classmethod
    def of(cls, read: Optional[Iterable[Union[str, bytes]]] = None,
           write: Optional[Iterable[Union[str, bytes]]] = None, name: Optional[str] = None) -> "Rights":
        return cls(_prefixes(read), _prefixes(write), name)

    @property
    def restricted(self) -> bool:
        return self.read is not None

    def may_read(self, prefix: bytes) -> bool:
        """A subscription to ``prefix`` stays within the read rights."""
        return self.read is None or topic_matches(prefix, self.read)

    def may_write(self, topic: bytes) -> bool:
        """A message on ``topic`` may go upstream."""
        return self.write is None or topic_matches(topic, self.write)

    def everything(self) -> List[bytes]:
        """The prefixes of a client that names no topic: all it may read."""
        return [b""] if self.read is None else sorted(self.read)


ALL_RIGHTS = Rights()


def rights_from_hook(result: object) -> Rights:
    """What an ``authenticate`` hook returned, as :class:`Rights`.

    ``None``: every right.  A :class:`Rights`: as it is.  An iterable of
    prefixes: read *and* write only there (a restricted client never writes
    where it may not read; return ``Rights`` to say otherwise).
    """
    if result is None:
        return ALL_RIGHTS
    if isinstance(result, Rights):
        return result
    if isinstance(result, (str, bytes)):
        raise TypeError("authenticate must return None, Rights or an iterable of prefixes, not one string")
    prefixes = _prefixes(result)  # type: ignore[arg-type]
    return Rights(prefixes, prefixes)


def resolve_topics(requested: Iterable[Union[str, bytes]], rights: Rights,
                   max_topics: int = DEFAULT_MAX_TOPICS,
                   max_topic_length: int = DEFAULT_MAX_TOPIC_LENGTH) -> List[bytes]:
    """The sorted prefixes a client is routed with, from what it asked for.

    Nothing asked: everything it may read (refused when it may read nothing).
    Anything asked that it may not read, longer than ``max_topic_length``
    bytes, or more than ``max_topics`` distinct prefixes: :class:`TopicRefused`.
    The count is checked before any other work, so a huge request costs O(cap).
    """
    wanted: Dict[bytes, None] = {}
    for value in requested:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(raw) > max_topic_length:
            raise TopicRefused(f"topic longer than {max_topic_length} bytes", 400)
        wanted[raw] = None
        if max_topics and len(wanted) > max_topics:
            raise TopicRefused(f"more than {max_topics} topics", 400)
    if not wanted:
        prefixes = rights.everything()
        if not prefixes:
            raise TopicRefused("no topic allowed")
        return prefixes
    check_read(wanted, rights)
    return sorted(wanted)


def check_read(prefixes: Iterable[bytes], rights: Rights) -> None:
    """Refuse (403) the first prefix outside the read rights."""
    if rights.read is None:
        return
    for prefix in prefixes:
        if not topic_matches(prefix, rights.read):
            shown = prefix.decode("utf-8", "replace")
            raise TopicRefused("topic not allowed", 403, shown)


def check_count(prefixes: Iterable[bytes], max_topics: int, max_topic_length: int) -> None:
    """The caps on a client's whole set of prefixes (after a subscribe adds to it)."""
    count = 0
    for prefix in prefixes:
        count += 1
        if len(prefix) > max_topic_length:
            raise TopicRefused(f"topic longer than {max_topic_length} bytes", 400)
    if max_topics and count > max_topics:
        raise TopicRefused(f"more than {max_topics} topics", 400)


class TopicPolicy:
    """The one check of the topics a client asks for, on every transport: its read rights and
    the caps (``max_topics`` prefixes of ``max_topic_length`` bytes per client,
    ``max_upstream_prefixes`` distinct prefixes in ``subscribed``, the SUB socket's set).
    Every refusal is :class:`TopicRefused` and is counted by ``refused()``."""

    __slots__ = ("max_topics", "max_topic_length", "max_upstream_prefixes", "subscribed", "refused")

    def __init__(self, max_topics: int, max_topic_length: int, max_upstream_prefixes: int,
                 subscribed: AbstractSet[bytes], refused: Callable[[], None]) -> None:
        self.max_topics = max_topics
        self.max_topic_length = max_topic_length
        self.max_upstream_prefixes = max_upstream_prefixes
        self.subscribed = subscribed
        self.refused = refused

    def join(self, rights: Rights, requested: Iterable[Union[str, bytes]]) -> List[bytes]:
        """The prefixes a joining client is routed with (:func:`resolve_topics`, and the room
        upstream)."""
        try:
            prefixes = resolve_topics(requested, rights, self.max_topics, self.max_topic_length)
            self._check_upstream_room(prefixes)
        except TopicRefused:
            self.refused()
            raise
        return prefixes

    def subscribe(self, rights: Rights, current: Iterable[bytes], wanted: List[bytes]) -> List[bytes]:
        """A client's prefixes once ``wanted`` are added to ``current``."""
        try:
            check_count(wanted, 0, self.max_topic_length)
            check_read(wanted, rights)
            chosen = dict.fromkeys(current)
            chosen.update(dict.fromkeys(wanted))
            check_count(chosen, self.max_topics, self.max_topic_length)
            self._check_upstream_room(chosen)
        except TopicRefused:
            self.refused()
            raise
        return sorted(chosen)

    def _check_upstream_room(self, prefixes: Iterable[bytes]) -> None:
        """Refuse (503) prefixes that would take the SUB socket past ``max_upstream_prefixes``."""
        limit = self.max_upstream_prefixes
        if not limit:
            return
        new = sum(1 for p in prefixes if p not in self.subscribed)
        if new and len(self.subscribed) + new > limit:
            raise TopicRefused("too many distinct topics on this gateway", 503)


# -- the token file ------------------------------------------------------------------------


def _field(text: str) -> Optional[FrozenSet[bytes]]:
    """``*``: every topic (None); ``-``: none; else comma-separated prefixes."""
    if text == "*":
        return None
    if text == "-":
        return frozenset()
    return frozenset(p.encode("utf-8") for p in text.split(",") if p)


def parse_token_file(text: str, source: str = "token file") -> Dict[str, Rights]:
    """``token  read-prefixes  [write-prefixes]`` per line; ``#`` comments; ``*`` all, ``-`` none.

    With no write column a token writes nothing.  Errors name the line.
    """
    tokens: Dict[str, Rights] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{source}:{number}: expected 'token read-prefixes [write-prefixes]'")
        token, read = parts[0], parts[1]
        write = parts[2] if len(parts) == 3 else "-"
        if token in tokens:
            raise ValueError(f"{source}:{number}: the token is listed twice")
        tokens[token] = Rights(_field(read), _field(write), name=f"{os.path.basename(source)}:{number}")
    return tokens


class TokenFile:
    """The tokens of ``--token-file``, reloaded by :meth:`reload` (on SIGHUP).

    :meth:`lookup` compares every token in constant time; a reload that fails
    keeps the tokens loaded before and says why in the log.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tokens: Dict[str, Rights] = {}
        self.load()

    def load(self) -> None:
        """Read the file; raises ``ValueError`` naming the file (and line) when it cannot."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"--token-file {self.path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"--token-file {self.path}: not UTF-8 text") from None
        self.tokens = parse_token_file(text, self.path)

    def reload(self) -> bool:
        try:
            self.load()
        except ValueError as exc:
            log.error("token file not reloaded, the previous tokens stay: %s", exc)
            return False
        log.info("token file reloaded: %d tokens", len(self.tokens))
        return True

    def lookup(self, given: Optional[str]) -> Optional[Rights]:
        import hmac  # here, not at the top: hmac loads OpenSSL's hashlib (megabytes of RSS)

        if given is None:
            return None
        raw = given.encode("utf-8")
        found = None
        for token, rights in self.tokens.items():  # no early exit: constant time in the match
            if hmac.compare_digest(token.encode("utf-8"), raw):
                found = rights
        return found
