"""Static files for the HTTP app, served from memory; the disk is read off the loop.

:class:`FileCache` maps a request path to a file under one of its folders
(never outside them: no ``..``, no link out, no dotfile nor anything under a
dot-directory) and keeps what it read in memory, least recently used first
out, within ``max_total`` bytes.  A file is read, and a cached one is
re-validated (by modification time and size, at most once every
``revalidate`` seconds, while the cached copy keeps being served), on one
worker thread; the result comes back to the loop through
``call_soon_threadsafe``.  Nothing here blocks the loop.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["FileCache", "StaticFile"]

log = logging.getLogger("zmqws")


class StaticFile:
    """A file as served: its body, content type, and what re-validation compares."""

    __slots__ = ("body", "content_type", "full", "mtime", "size", "checked")

    def __init__(self, body: bytes, content_type: str, full: str, mtime: float, size: int,
                 checked: float) -> None:
        self.body = body
        self.content_type = content_type
        self.full = full
        self.mtime = mtime
        self.size = size
        self.checked = checked  # loop clock of the last look at the disk


Done = Callable[[Optional[StaticFile]], None]


def _content_type(full: str) -> str:
    content_type = mimetypes.guess_type(full)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
        content_type += "; charset=utf-8"
    return content_type


def _public(relative: str) -> bool:
    """A relative path with no empty, ``.``/``..`` or dot-named part (``.git``, ``.env``...)."""
    return all(part and not part.startswith(".") for part in relative.split("/"))


class FileCache:
    """Files under ``roots`` (the first that has the path wins); see the module docstring.

    ``call_soon_threadsafe(callback)``: how the worker thread hands results
    to the loop.  ``clock``: the loop's monotonic clock.
    """

    def __init__(self, roots: Sequence[str], call_soon_threadsafe: Callable[[Callable[[], None]], None],
                 clock: Callable[[], float], max_file_size: int = 16 << 20, max_total: int = 64 << 20,
                 revalidate: float = 1.0) -> None:
        self.roots = [os.path.realpath(root) for root in roots]
        self.max_file_size = max_file_size
        self.max_total = max_total
        self.revalidate = revalidate
        self._call_soon = call_soon_threadsafe
        self._clock = clock
        self._files: "OrderedDict[str, StaticFile]" = OrderedDict()
        self._total = 0
        self._waiting: Dict[str, List[Done]] = {}  # path -> callbacks of the read in flight
        self._executor: Optional[ThreadPoolExecutor] = None

    @staticmethod
    def relative(path: str) -> Optional[str]:
        """The relative path of a request path, or None if it may never name a file here."""
        relative = path.lstrip("/")
        if not relative or "\0" in relative or "\\" in relative or not _public(relative):
            return None
        return relative

    def get(self, relative: str) -> Optional[StaticFile]:
        """The cached file (loop thread); a re-validation starts if it is due.  None: not cached."""
        entry = self._files.get(relative)
        if entry is None:
            return None
        self._files.move_to_end(relative)
        now = self._clock()
        if now - entry.checked >= self.revalidate and relative not in self._waiting:
            entry.checked = now
            self._waiting[relative] = []
            self._submit(relative, entry)
        return entry

    def load(self, relative: str, done: Done) -> None:
        """Read a file not in the cache off the loop; ``done(file or None)`` runs on the loop."""
        waiting = self._waiting.get(relative)
        if waiting is not None:
            waiting.append(done)
            return
        self._waiting[relative] = [done]
        self._submit(relative, None)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _submit(self, relative: str, known: Optional[StaticFile]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmqws-files")
        self._executor.submit(self._read, relative, known)

    # -- the worker thread ---------------------------------------------------------

    def _read(self, relative: str, known: Optional[StaticFile]) -> None:
        try:
            found = self._find(relative, known)
        except Exception:  # noqa: BLE001  # pragma: no cover - the waiting clients get 404, not silence
            log.exception("cannot read static file %r", relative)
            found = None
        try:
            self._call_soon(lambda: self._loaded(relative, known, found))
        except (OSError, RuntimeError):  # pragma: no cover - the loop closed meanwhile (stop)
            pass

    def _find(self, relative: str, known: Optional[StaticFile]) -> Optional[StaticFile]:
        """The file (the ``known`` one if unchanged), or None: absent, outside, or too big."""
        for root in self.roots:
            full = os.path.realpath(os.path.join(root, relative))
            if not full.startswith(root + os.sep) or not _public(os.path.relpath(full, root)):
                continue
            try:
                st = os.stat(full)
            except OSError:
                continue
            if not os.path.isfile(full):
                continue
            if known is not None and (known.full, known.mtime, known.size) == (full, st.st_mtime, st.st_size):
                return known
            if st.st_size > self.max_file_size:
                return None
            try:
                with open(full, "rb") as f:
                    body = f.read(self.max_file_size + 1)
            except OSError:
                continue
            if len(body) > self.max_file_size:
                return None
            return StaticFile(body, _content_type(full), full, st.st_mtime, len(body), 0.0)
        return None

    # -- back on the loop ----------------------------------------------------------

    def _loaded(self, relative: str, known: Optional[StaticFile], found: Optional[StaticFile]) -> None:
        if found is not known:
            self._forget(relative)
            if found is not None:
                found.checked = self._clock()
                self._keep(relative, found)
        for done in self._waiting.pop(relative, []):
            done(found)

    def _keep(self, relative: str, entry: StaticFile) -> None:
        if entry.size > self.max_total:
            return  # served this once, not kept
        while self._total + entry.size > self.max_total:
            _, old = self._files.popitem(last=False)
            self._total -= old.size
        self._files[relative] = entry
        self._total += entry.size

    def _forget(self, relative: str) -> None:
        old = self._files.pop(relative, None)
        if old is not None:
            self._total -= old.size
