"""sha256 of files and folders, the one way the project fingerprints data on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes.

    Parameters
    ----------
    path : str or Path
        The file; read in 1 MiB chunks.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(path: Path) -> list[Path]:
    """The regular files under ``path``, sorted by their POSIX relative path.

    Parameters
    ----------
    path : Path
        The folder, searched recursively.

    Returns
    -------
    list of Path
        Full paths (``path`` joined), regular files only.
    """
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def sha256_tree(path: str | Path) -> str:
    """Hex sha256 of a folder: one line ``<sha256>  <relative path>`` per file, sorted.

    Parameters
    ----------
    path : str or Path
        The folder; file names and contents count, empty folders and timestamps do not.

    Returns
    -------
    str
        The hex sha256 of the joined lines (each ending in a newline).
    """
    root = Path(path)
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in tree_files(root)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or the tree hash of a folder.

    Parameters
    ----------
    path : str or Path
        A file (:func:`sha256_file`) or a folder (:func:`sha256_tree`).

    Returns
    -------
    str
        Hex sha256.
    """
    p = Path(path)
    return sha256_tree(p) if p.is_dir() else sha256_file(p)


def size_of(path: str | Path) -> int:
    """Size in bytes of a file, or of all files under a folder.

    Parameters
    ----------
    path : str or Path
        A file or a folder (searched recursively).

    Returns
    -------
    int
        Bytes.
    """
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in tree_files(p))
    return p.stat().st_size


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string.

    Parameters
    ----------
    text : str
        Encoded as UTF-8 before hashing.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
