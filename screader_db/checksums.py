"""sha256 of files and folders, the one way the project fingerprints data on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(path: Path) -> list[Path]:
    """The regular files under ``path``, sorted by their POSIX relative path."""
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())


def sha256_tree(path: str | Path) -> str:
    """Hex sha256 of a folder: one line ``<sha256>  <relative path>`` per file, sorted."""
    root = Path(path)
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in tree_files(root)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or the tree hash of a folder."""
    p = Path(path)
    return sha256_tree(p) if p.is_dir() else sha256_file(p)


def size_of(path: str | Path) -> int:
    """Size in bytes of a file, or of all files under a folder."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in tree_files(p))
    return p.stat().st_size


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
