"""Provenance records: package versions and build identifiers written into every atlas file."""

from __future__ import annotations

import datetime as dt
import getpass
import importlib.metadata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

PACKAGES = ("screader-db", "numpy", "scipy", "anndata", "pyarrow", "duckdb", "faiss-cpu", "faiss-gpu-cu12",
            "torch", "transformers", "sentence-transformers")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an atlas (those installed).

    Returns
    -------
    dict of str to str
        Distribution name (from :data:`PACKAGES`) to its installed version; packages not installed are left out.
    """
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def now() -> str:
    """The current time in UTC, to the second.

    Returns
    -------
    str
        ISO 8601 with offset, e.g. ``2024-05-01T12:00:00+00:00``.
    """
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def new_build_id() -> str:
    """A fresh random build identifier.

    Returns
    -------
    str
        16 lowercase hex digits (the first 64 bits of a random UUID4).
    """
    return uuid.uuid4().hex[:16]


_acting_as: ContextVar[str | None] = ContextVar("screader_db_acting_as", default=None)


def user() -> str:
    """Who makes a change: the name set by :func:`acting_as` (the server's caller), else the OS user.

    Returns
    -------
    str
        The name; ``"unknown"`` when the OS user cannot be looked up.
    """
    named = _acting_as.get()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Record changes made inside the block (in this thread or task) as made by ``name``.

    Parameters
    ----------
    name : str
        Returned by :func:`user` inside the block; an empty name falls back to the OS user.

    Yields
    ------
    None
        The previous name is restored on leaving the block.
    """
    token = _acting_as.set(name)
    try:
        yield
    finally:
        _acting_as.reset(token)


def describe(values: dict[str, Any]) -> dict[str, Any]:
    """A provenance dict with the package versions and time added.

    Parameters
    ----------
    values : dict
        The record's own fields; left unchanged.

    Returns
    -------
    dict
        A copy of ``values`` with ``package_versions`` (:func:`package_versions`) and ``created_at`` (:func:`now`)
        added, overriding any such keys in ``values``.
    """
    return {**values, "package_versions": package_versions(), "created_at": now()}
