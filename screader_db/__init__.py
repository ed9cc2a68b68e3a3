"""screader-db: a precomputed language-model embedding database for single-cell annotation."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "annotate": "screader_db.annotation",
    "AnnotationResult": "screader_db.results",
    "Atlas": "screader_db.store",
    "open_atlas": "screader_db.store",
    "build_atlas": "screader_db.builders.atlas",
    "ScreaderError": "screader_db.errors",
    "ScreaderWarning": "screader_db.errors",
    "Client": "screader_db.client",
    "AnnotateOptions": "screader_db.options",
    "ReadOptions": "screader_db.options",
    "NeighbourFilter": "screader_db.options",
    "SearchOptions": "screader_db.options",
    "search": "screader_db.cell_search",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'screader_db' has no attribute {name!r}")
