"""The project's cache folder: fetched data, models, gene embeddings and test atlases."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "SCREADER_DB_HOME"


def cache_home() -> Path:
    """The cache root: ``$SCREADER_DB_HOME`` if set, else the platform's user cache folder.

    Returns
    -------
    Path
        ``~`` expanded; not created here (:func:`cache_dir` creates folders under it).
    """
    override = os.environ.get(ENV_HOME)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("screader-db", appauthor=False))


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root, created on first use.

    Parameters
    ----------
    *parts : str
        Path components under :func:`cache_home`; none gives the root itself.

    Returns
    -------
    Path
        The folder, created with its parents if missing.
    """
    path = cache_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
