"""Optional dependencies: which extra installs each one, and the error when one is missing.

The base install builds atlases and annotates with the default method (``marker``). Other
features need an extra (``pip install 'screader-db[llm,server]'``):

==========  =================================================================  =====================================
extra       packages                                                           needed by
==========  =================================================================  =====================================
``llm``     torch, transformers, sentence-transformers, gguf, accelerate      gene text models (``--model``), the
                                                                               text and learned methods
``server``  fastapi, uvicorn, python-multipart, pydantic                      ``screader-db serve``
``client``  httpx, pydantic                                                    :class:`screader_db.client.Client`
``dask``    dask[distributed]                                                  ``build --dask``
``layout``  umap-learn                                                         the reference UMAP (without it, the
                                                                               first two principal components)
==========  =================================================================  =====================================
"""

from __future__ import annotations

import importlib
from typing import Any

from screader_db.errors import MissingExtraError

PACKAGE = "screader-db"


def missing_extra(error: ImportError, *, extra: str, purpose: str, module: str | None = None) -> MissingExtraError:
    """The error to raise when an import that an extra provides failed.

    Parameters
    ----------
    error
        The ``ImportError`` raised by the failed import (its ``name`` is the missing module).
    extra
        The extra that installs the module, e.g. ``"llm"``.
    purpose
        What needed it, as the subject of "... needs the extra", e.g. ``"screader-db serve"``.
    module
        The module that was imported, named when the error does not name one.

    Returns
    -------
    MissingExtraError
        With a message naming the extra and the pip command that installs it.
    """
    name = error.name or module or "a module"
    reason = " ".join(str(error).split())
    message = f"{purpose} needs the '{extra}' extra ({name} cannot be imported: {reason}): pip install '{PACKAGE}[{extra}]'"
    return MissingExtraError(message, extra=extra, module=name)


def require(module: str, *, extra: str, purpose: str) -> Any:
    """Import ``module``, or raise an error naming the extra that installs it.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"torch"`` or ``"dask.distributed"``.
    extra
        The extra that installs it, e.g. ``"llm"``.
    purpose
        What needs it, as the subject of "... needs the extra".

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingExtraError
        When the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(err, extra=extra, purpose=purpose, module=module) from err


def optional(module: str) -> Any | None:
    """Import ``module`` if it is installed, for a speed-up or a better result that is not needed.

    Parameters
    ----------
    module
        Dotted module name.

    Returns
    -------
    module or None
        The imported module, or None when it cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
