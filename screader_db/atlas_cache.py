"""The server's opened atlas versions: follows the ``current`` pointer on every request.

Checking the pointer is one ``readlink``, so the server picks up a new version (a rebuild, a data
set added or removed) on the next request without a restart. A version is opened once and kept
while it is among the last few used; a request holds on to the :class:`~screader_db.store.Atlas`
it started with, so a version switch never changes the atlas under a running annotation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from screader_db import store

KEEP = 2


class AtlasCache:
    """Opened versions of the atlas at ``root``, newest use last; thread-safe."""

    def __init__(self, root: str | Path, *, keep: int = KEEP) -> None:
        self.root = Path(root)
        self.keep = max(keep, 1)
        self._opened: OrderedDict[int, store.Atlas] = OrderedDict()
        self._lock = threading.Lock()
        self._gates: dict[int, threading.Lock] = {}

    def current(self) -> store.Atlas:
        """The atlas's current version, opened (metadata only) on first use."""
        number = store.current_version(self.root)
        with self._lock:
            found = self._opened.get(number)
            if found is not None:
                self._opened.move_to_end(number)
                return found
        opened = store.open_atlas(self.root, version=number)
        with self._lock:
            found = self._opened.setdefault(number, opened)
            self._opened.move_to_end(number)
            while len(self._opened) > self.keep:
                old, _ = self._opened.popitem(last=False)
                self._gates.pop(old, None)
            return found

    def ready(self, atlas: store.Atlas) -> store.Atlas:
        """``atlas`` with its embedder, index and cell table loaded (once, whichever thread asks first)."""
        if _loaded(atlas):
            return atlas
        with self._lock:
            gate = self._gates.setdefault(atlas.version, threading.Lock())
        with gate:
            if not _loaded(atlas):
                atlas.cells()
                atlas.layout()
                atlas.embedder  # noqa: B018 - properties that load on first access
                atlas.index  # noqa: B018
        return atlas

    @property
    def versions_open(self) -> list[int]:
        with self._lock:
            return list(self._opened)


def _loaded(atlas: store.Atlas) -> bool:
    return atlas._index is not None and atlas._embedder is not None and atlas._cells is not None
