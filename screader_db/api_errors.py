"""How the server words an error: one HTTP status per kind, API names, no paths of the server.

The library's messages are written for the command line: they name flags (``--gene-key``) and
paths on this machine. Over HTTP the caller sets query parameters and form fields, and has no
business knowing where the server keeps its atlas. So a message is rewritten before it is sent:
flags that are API fields become their field names (``gene_key``, ``species=mouse``,
``use_raw=true``), sentences that offer only command-line remedies are left out, and the atlas
folder and upload folders become names.

Statuses: 400 a bad option (query parameter), 401/403 authentication, 404 an unknown data set,
409 a conflict with the atlas's state, 413 a request over the server's limits, 415 a body of
another type, 422 data that cannot be annotated, 503 an atlas that cannot be served (missing,
damaged, of another format).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from screader_db.errors import (
    AtlasError,
    InputDataError,
    ModelMismatchError,
    OutputExistsError,
    RequestTooLargeError,
    ScreaderError,
    WorkerLostError,
)
from screader_db.options import option_fields

UPLOAD_PREFIX = "screader-upload-"
# values a flag may be followed by in a library message, written as field=value over HTTP
_VALUES = re.compile(r"(?:human|mouse|auto|counts|ln|log2|log10|linear|label|harmonised)(?:\|[a-z0-9]+)*")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: (\S+))?")
_SENTENCE = re.compile(r"(?<=[.;])\s+")
# the boolean annotate options, written over HTTP as field=true|false
BOOLEAN_FIELDS = frozenset(f.name for f in option_fields() if f.kind == "bool")


def status_of(error: ScreaderError) -> int:
    """The HTTP status a library error becomes.

    Parameters
    ----------
    error : ScreaderError
        The error raised while serving a request.

    Returns
    -------
    int
        413 :class:`RequestTooLargeError`; 409 :class:`ModelMismatchError` or :class:`OutputExistsError`;
        503 any other :class:`AtlasError` or
        :class:`WorkerLostError`; 422 :class:`InputDataError`; 400 anything else.
    """
    if isinstance(error, RequestTooLargeError):
        return 413
    if isinstance(error, ModelMismatchError | OutputExistsError):
        return 409
    if isinstance(error, AtlasError | WorkerLostError):
        return 503
    if isinstance(error, InputDataError):
        return 422
    return 400


def api_wording(message: str, fields: Iterable[str]) -> str:
    """``message`` with flags that are API ``fields`` named as fields, other flags' sentences left out.

    The sentences that name any other flag (remedies only the command line offers), or that quote a
    ``screader-db`` command, are left out.

    Parameters
    ----------
    message : str
        A library error message, worded for the command line.
    fields : iterable of str
        The API's field names (underscored): ``--gene-key`` becomes ``gene_key``, a boolean field
        ``use_raw=true``, and a flag followed by a known value ``species=mouse``.

    Returns
    -------
    str
        The reworded message without trailing punctuation; when every sentence would be left out, the reworded
        message whole.
    """
    known = set(fields)

    def field(match: re.Match[str]) -> str:
        name = match.group(1).replace("-", "_")
        value = match.group(2)
        if name not in known:
            return match.group(0)
        if name in BOOLEAN_FIELDS:
            return f"{name}=true" + ("" if value is None else f" {value}")
        if value is not None and _VALUES.fullmatch(value.rstrip(".,;)")):
            bare = value.rstrip(".,;)")
            return f"{name}={bare}{value[len(bare):]}"
        return name + ("" if value is None else f" {value}")

    worded = _FLAG.sub(field, message)
    sentences = _SENTENCE.split(worded)
    kept = [s for s in sentences if "--" not in s and "`screader-db" not in s]
    if not kept:
        return worded
    return " ".join(kept).rstrip(" ;.,")


def without_paths(message: str, root: Path) -> str:
    """``message`` with the atlas folder named by its name and upload folders left out.

    Parameters
    ----------
    message : str
        The message to clean.
    root : Path
        The atlas folder: its given, absolute and resolved forms become its last component (``atlas`` when
        it has none).

    Returns
    -------
    str
        The message; ``<tempdir>/screader-upload-*/`` prefixes are removed, leaving the uploaded file's name.
    """
    name = root.name or "atlas"
    for shown in sorted({str(root.resolve()), str(root.absolute()), str(root)}, key=len, reverse=True):
        if shown not in (".", ""):
            message = message.replace(shown, name)
    uploads = re.escape(tempfile.gettempdir()) + "/" + UPLOAD_PREFIX + r"[^/\s]+/"
    return re.sub(uploads, "", message)
