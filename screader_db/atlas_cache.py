"""The server's opened atlas versions: follows the ``current`` pointer on every request.

Checking the pointer is one ``readlink``, so the server picks up a new version (a rebuild, a data
set added or removed) on the next request without a restart. A version is opened once and kept
while it is among the last few used; a request holds on to the :class:`~screader_db.store.Atlas`
it started with, so a version switch never changes the atlas under a running annotation.
A version is verified against its recorded checksums when it is first opened (unless ``verify``
is off), so a damaged version is refused before it answers anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from screader_db import store

KEEP = 2


class AtlasCache:
    """Opened versions of the atlas at ``root``, newest use last; thread-safe.

    Parameters
    ----------
    root
        The atlas folder.
    keep
        Versions kept open (at least 1).
    verify
        Check a version's files against their recorded checksums when it is first opened.
    """

    def __init__(self, root: str | Path, *, keep: int = KEEP, verify: bool = True) -> None:
        self.root = Path(root)
        self.keep = max(keep, 1)
        self.verify = verify
        self._opened: OrderedDict[int, store.Atlas] = OrderedDict()
        self._lock = threading.Lock()

    def current(self) -> store.Atlas:
        """The atlas's current version, opened (metadata only) on first use.

        Returns
        -------
        Atlas
            The version the ``current`` pointer names now.

        Raises
        ------
        AtlasError
            The folder holds no atlas, or (``verify``) the version's files do not match their checksums.
        """
        return self.version(store.current_version(self.root))

    def version(self, number: int) -> store.Atlas:
        """Version ``number`` of the atlas, opened (metadata only) on first use.

        Parameters
        ----------
        number
            A version of the atlas.

        Returns
        -------
        Atlas

        Raises
        ------
        AtlasError
            No such version, or (``verify``) its files do not match their checksums.
        """
        with self._lock:
            found = self._opened.get(number)
            if found is not None:
                self._opened.move_to_end(number)
                return found
        opened = store.open_atlas(self.root, version=number, verify=self.verify)
        with self._lock:
            found = self._opened.setdefault(number, opened)
            self._opened.move_to_end(number)
            while len(self._opened) > self.keep:
                self._opened.popitem(last=False)
            return found

    def ready(self, atlas: store.Atlas) -> store.Atlas:
        """``atlas`` with every part a query uses loaded (once, whichever thread asks first).

        Parameters
        ----------
        atlas
            A version from :meth:`current`.

        Returns
        -------
        Atlas
            The same object, loaded (:attr:`~screader_db.store.Atlas.loaded`).
        """
        return atlas.load()

    @property
    def versions_open(self) -> list[int]:
        """Numbers of the versions kept open, least recently used first."""
        with self._lock:
            return list(self._opened)
