"""Is an atlas version the one its writer wrote: every file checked against its recorded sha256.

A version's ``VERSION.json`` lists each file it was written with and that file's sha256 (see
``builders/writer.py``). :func:`verify_version` hashes every listed file the first time a version
is opened in a process and refuses a version whose files are missing, changed, or joined by
files it never listed in the folders that are read by listing them (``cells/``,
``expression/``). A file that checked out is remembered by its device, inode, size and
modification time, in this process and in ``ATLAS/.tmp/verified.json``, so later opens (another
query, a server restart, the next version's hard-linked copies of unchanged files) hash only
what changed. Remembering by size and time is the one trade: damage that changes neither (bit
rot on the disk) is found again only once that cache file is deleted.

The catalogue (``atlas.duckdb``) is written after the list is made and checks its own blocks
(DuckDB keeps a checksum per block); panel indexes added by queries (``panels/``) carry no
recorded hash. :func:`reading` turns a failure to read any atlas file into an
:class:`~screader_db.errors.AtlasDamagedError` that names the file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from screader_db import atlas_format
from screader_db.checksums import sha256_file
from screader_db.errors import AtlasDamagedError, ScreaderError
from screader_db.outputs import atomic_write

CACHE_FILE = atlas_format.VERIFIED
# folders whose files are found by listing them, so a file the version never listed would be read
LISTED_FOLDERS = (atlas_format.CELLS, atlas_format.EXPRESSION)

_hashed: dict[tuple[int, int, int, int], str] = {}  # sha256 of the files hashed so far, by file identity
_lock = threading.Lock()


def _key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _damaged(folder: Path, relative: str, what: str) -> AtlasDamagedError:
    message = (
        f"the atlas file {folder.name}/{relative} {what}; the atlas version at {folder} is damaged or was changed "
        "after it was written. Restore the atlas folder from a backup or rebuild it (`screader-db build --overwrite`); "
        "--no-verify (Python: verify=False) skips this check at your own risk"
    )
    return AtlasDamagedError(message, file=f"{folder.name}/{relative}")


def verify_version(folder: Path, recorded: dict[str, str], *, cache_dir: Path | None = None) -> None:
    """Refuse a version whose files are missing, changed, or joined by unlisted ones.

    Files verified are remembered in this process and, when given, in ``cache_dir``.

    Parameters
    ----------
    folder
        The version folder.
    recorded
        Relative path -> sha256, as ``VERSION.json`` lists them.
    cache_dir
        The atlas's scratch folder (``ATLAS/.tmp``), where ``verified.json`` is kept.

    Returns
    -------
    None

    Raises
    ------
    AtlasDamagedError
        A listed file is missing, unreadable or has another sha256, or a file in
        :data:`LISTED_FOLDERS` is not listed.
    """
    stored = _read_cache(cache_dir)
    learned: dict[str, list[str]] = {}
    for relative, digest in sorted(recorded.items()):
        path = folder / relative
        try:
            stat = path.stat()
        except OSError:
            raise _damaged(folder, relative, "is missing") from None
        key = _key(stat)
        with _lock:
            found = _hashed.get(key)
        if found is None and stored.get(_cache_key(key), [""])[0] == digest:
            found = digest
        if found is None:
            try:
                found = sha256_file(path)
            except OSError as err:
                raise _damaged(folder, relative, f"cannot be read ({err.strerror or err})") from err
            if found == digest and cache_dir is not None:
                learned[_cache_key(key)] = [found, os.path.relpath(path, cache_dir.parent)]
        with _lock:
            _hashed[key] = found
        if found != digest:
            raise _damaged(folder, relative, f"does not match the sha256 recorded when it was written "
                                             f"(recorded {digest[:12]}…, found {found[:12]}…)")
    for name in LISTED_FOLDERS:
        for path in sorted((folder / name).rglob("*")) if (folder / name).is_dir() else []:
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and relative not in recorded:
                raise _damaged(folder, relative, "was not written with this version (it is not in its VERSION.json)")
    if learned and cache_dir is not None:
        _write_cache(cache_dir, {**stored, **learned})


def _cache_key(key: tuple[int, int, int, int]) -> str:
    return ":".join(map(str, key))


def _read_cache(cache_dir: Path | None) -> dict[str, list[str]]:
    """``{file key: [sha256, path inside the atlas]}`` from the atlas's cache (empty when unreadable)."""
    if cache_dir is None:
        return {}
    try:
        found = json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): [str(v[0]), str(v[1])] for k, v in found.items() if isinstance(v, list) and len(v) == 2}


def _write_cache(cache_dir: Path, entries: dict[str, list[str]]) -> None:
    """Best effort (a read-only atlas folder only means the next process hashes again); entries of
    files that are gone (versions deleted by ``gc``) are dropped."""
    kept = {key: value for key, value in entries.items() if (cache_dir.parent / value[1]).exists()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_dir / CACHE_FILE, tag=f".{os.getpid()}.{threading.get_ident()}") as tmp:
            tmp.write_text(json.dumps(kept, sort_keys=True))
    except OSError:
        return


@contextmanager
def reading(path: Path, what: str = "") -> Iterator[None]:
    """Turn a failure while reading an atlas file into an error naming the file.

    Parameters
    ----------
    path
        The file being read.
    what
        What it holds, for the message ("the label profiles").

    Returns
    -------
    Iterator[None]
        Yields once.

    Raises
    ------
    AtlasDamagedError
        The block raised anything but a :class:`~screader_db.errors.ScreaderError` (which passes).
    """
    try:
        yield
    except ScreaderError:
        raise
    except Exception as err:  # Arrow, safetensors, FAISS, DuckDB and OS errors alike: the file is damaged
        relative = in_version(path)
        message = (
            f"cannot read the atlas file {relative}{f' ({what})' if what else ''}: {_first_line(err)}. The file is damaged; "
            f"restore the atlas folder from a backup or rebuild it (`screader-db build --overwrite`)"
        )
        raise AtlasDamagedError(message, file=relative) from err


def in_version(path: Path) -> str:
    """A file's path as messages name it.

    Parameters
    ----------
    path
        A file.

    Returns
    -------
    str
        ``NNNNNN/relative/path`` inside its version folder, the whole path outside one.
    """
    for parent in path.parents:
        if parent.parent.name == atlas_format.VERSIONS and parent.name.isdigit():
            return f"{parent.name}/{path.relative_to(parent).as_posix()}"
    return str(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].rstrip('.')}" if text else type(err).__name__
