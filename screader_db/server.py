"""The lab atlas over HTTP (FastAPI): annotate cells, search the atlas's cells, read what the atlas holds,
add or remove data sets.

``create_app(atlas_dir)`` builds the application; ``screader-db serve`` runs it with uvicorn
(see :mod:`screader_db.http_connections`). Reading endpoints are open; the writing ones need
``Authorization: Bearer <token>`` and are switched off (403) when the server has no token. Every
error is JSON ``{"error": "..."}`` worded for the API (see :mod:`screader_db.api_errors`).
The atlas's ``current`` pointer is checked on every request, so a new version is served without
a restart. Annotation takes a slot (one per CPU core: more would only compete for the same
cores) before its body is parsed or its upload read, and runs in a worker thread, or with
``workers`` above 1 in worker processes (:mod:`screader_db.annotate_workers`); requests past the
slots queue. Every request is held to the :class:`~screader_db.server_limits.ServerLimits`:
bytes, declared cells and cells × genes, connections and header time. The web page
(:mod:`screader_db.web`) is served by the same application, at ``/ui/``.
"""

from __future__ import annotations

import hmac
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from screader_db.extras import missing_extra

try:
    import anyio
    import anyio.to_thread
    import python_multipart  # noqa: F401  (request.form() reads uploads with it)
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field, ValidationError
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:
    raise missing_extra(err, extra="server", purpose="the HTTP server (screader-db serve)") from err

from screader_db import __version__, store
from screader_db.annotate_workers import Workers
from screader_db.api_errors import UPLOAD_PREFIX, api_wording, status_of, without_paths
from screader_db.atlas_cache import AtlasCache
from screader_db.body_limit import BodyLimit
from screader_db.errors import AtlasDamagedError, AtlasError, InputDataError, RequestTooLargeError, ScreaderError
from screader_db.options import (
    ANNOTATE_OPTIONS,
    SEARCH_OPTIONS,
    AnnotateOptions,
    OptionField,
    ReadOptions,
    SearchOptions,
    option_fields,
    search_option_fields,
)
from screader_db.payloads import CountsRequest, counts_adata, parse_counts, result_payload
from screader_db.server_limits import ServerLimits, check_declared, check_json_body, h5ad_shape
from screader_db.web.result_store import ResultStore
from screader_db.web.routes import add_pages

if TYPE_CHECKING:
    from screader_db.cell_search import SearchResult

TOKEN_ENV = "SCREADER_DB_TOKEN"
API_USER = "api"  # the name changes are recorded under when the token has none
UPLOAD_FIELD = "file"
FORM_FIELDS = (UPLOAD_FIELD, "name", "label_key")
WRITE_WAIT = 60.0
BEARER = HTTPBearer(auto_error=False, description="the token the server was started with")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _upload_or_json_body(upload: str, json_schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body of an endpoint taking an .h5ad upload (field ``file``) or a JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [UPLOAD_FIELD],
                               "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                                             "description": upload}}},
                },
                "application/json": {"schema": json_schema},
            },
        },
    }


ANNOTATE_BODY = _upload_or_json_body("query cells as an .h5ad file", CountsRequest.model_json_schema())
DATASET_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": [UPLOAD_FIELD, "name", "label_key"],
                           "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"},
                                          "name": {"type": "string", "description": "data set name in the atlas"},
                                          "label_key": {"type": "string", "description": "obs column with the labels"}}},
            },
        },
    },
}


MAX_K = 1000  # the most neighbours one request may ask for
_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "list": list[str]}


def _query_options(**values: Any) -> AnnotateOptions:
    """The annotate options of a request's query string, checked as the command line checks them (400)."""
    options = AnnotateOptions.from_flat(**values)
    options.check(strict=True)
    return options


def _query_parameters() -> list[inspect.Parameter]:
    """One query parameter per annotate option, with its type, default, bounds and help (:mod:`screader_db.options`)."""
    parameters = []
    for option in option_fields():
        kind = _TYPES[option.kind]
        query = Query(description=option.spec.help, ge=option.spec.low, le=MAX_K if option.name == "k" else option.spec.high)
        parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                                            annotation=Annotated[kind | None if option.optional else kind, query]))
    return parameters


# FastAPI reads a dependency's parameters from its signature: here, every annotate option.
_query_options.__signature__ = inspect.Signature(_query_parameters(), return_annotation=AnnotateOptions)  # type: ignore[attr-defined]


def create_app(atlas_dir: str | Path, *, token: str | Mapping[str, str] | None = None,
               limits: ServerLimits | None = None, verify: bool = True, preload: bool = False,
               workers: int = 1, results: ResultStore | None = None) -> FastAPI:
    """The HTTP application serving the atlas at ``atlas_dir``.

    ``POST /annotate`` takes every option of :func:`screader_db.annotate` as a query parameter
    (:data:`screader_db.options.ANNOTATE_OPTIONS`), checked as the command line checks them, with
    ``k`` at most :data:`MAX_K`. The server annotates against the atlas's current version:
    ``version`` pins it, and a request naming another version is refused with 409. ``GET /search``
    and ``POST /search`` take every option of :func:`screader_db.cell_search.search` the same way
    (:data:`screader_db.options.SEARCH_OPTIONS`) and one query (:class:`SearchRequest`, or an .h5ad
    upload of query cells), and search the current version.

    Parameters
    ----------
    atlas_dir : str or Path
        The atlas folder; its current version is served, followed as it changes.
    token : str, mapping of str to str, or None
        One token, or several by name (``{"alice": "...", "bob": "..."}``), that enable
        ``POST /datasets`` and ``DELETE /datasets/{name}`` for clients sending
        ``Authorization: Bearer <token>``; changes are recorded as made by the token's name
        (``api`` for a single token). None: those endpoints answer 403.
    limits : ServerLimits or None
        What one request may send and declare; more is refused with 413.
    verify : bool
        Check each version's files against their recorded sha256 when first opened.
    preload : bool
        Open and read the current version now, so a missing or damaged atlas stops the server
        from starting (and start the workers, which load it too).
    workers : int
        Processes annotations run in (:class:`screader_db.annotate_workers.Workers`); 1 runs them
        in threads of this process. Stopped when the application shuts down.
    results : ResultStore or None
        Where the web page (:mod:`screader_db.web`) keeps its annotations; None: a temporary
        folder, removed when the application shuts down, each result kept a day.

    Returns
    -------
    FastAPI
        The application; its ``state`` holds the atlas cache (``atlas``) and ``limits``.

    Raises
    ------
    AtlasError
        With ``preload``, when the atlas is missing or damaged.
    """
    root = Path(atlas_dir)
    limits = limits or ServerLimits()
    cache = AtlasCache(root, verify=verify)
    pool = Workers(cache, workers)
    if preload:
        pool.warm(cache.ready(cache.current()))
    app = FastAPI(title="screader-db", version=__version__,
                  description=f"Annotate single cells against the shared atlas {root.name!r}.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, max_json_bytes=limits.max_json_bytes)
    app.state.root, app.state.atlas, app.state.limits = root, cache, limits
    app.state.writer, app.state.slots, app.state.workers = _Writer(token), _Slots(pool.n), pool
    app.router.on_shutdown.append(pool.close)
    app.state.fields = set(ANNOTATE_OPTIONS) | set(FORM_FIELDS) | set(SEARCH_OPTIONS) | set(SEARCH_FIELDS)
    app.add_api_route("/health", _health, methods=["GET"], summary="Is the atlas ready, and which version is served")
    app.add_api_route("/datasets", _datasets, methods=["GET"], summary="The reference data sets of the current version")
    app.add_api_route("/versions", _versions, methods=["GET"], summary="Every version of the atlas, oldest first")
    app.add_api_route("/annotate", _annotate, methods=["POST"], openapi_extra=ANNOTATE_BODY,
                      summary="Label query cells: an .h5ad upload (field 'file') or JSON counts")
    app.add_api_route("/search", _search_get, methods=["GET"],
                      summary="The atlas cells most like some atlas cells, their centroid or a gene signature")
    app.add_api_route("/search", _search_post, methods=["POST"], openapi_extra=SEARCH_BODY,
                      summary="Cell search: an .h5ad upload of query cells (field 'file'), or a JSON query")
    app.add_api_route("/datasets", _add, methods=["POST"], openapi_extra=DATASET_BODY, status_code=201,
                      summary="Add a labelled data set (a new atlas version); needs the token")
    app.add_api_route("/datasets/{name}", _remove, methods=["DELETE"],
                      summary="Remove a data set (a new atlas version); needs the token")
    add_pages(app, results or ResultStore())
    _handlers(app, root)
    return app


class _Slots:
    """One annotation per CPU core (and per worker process) at a time (the limiter is made on first
    use, inside the event loop)."""

    def __init__(self, workers: int = 1) -> None:
        self._limiter: anyio.CapacityLimiter | None = None
        self._size = max(1, os.cpu_count() or 1, workers)

    def __call__(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._size)
        return self._limiter


def _health(request: Request) -> dict[str, Any]:
    atlas = request.app.state.atlas.current()
    return {"status": "ok", "atlas": request.app.state.root.name, "version": atlas.version, "model_id": atlas.model_id,
            "method": atlas.provenance.get("method", ""), "cells": int(atlas.info.get("n_cells", 0)),
            "datasets": len(atlas.datasets), "dim": atlas.info.get("dim"), "screader_db": __version__}


def shown_datasets(atlas: store.Atlas) -> list[dict[str, Any]]:
    """The data sets of a version as the server shows them: each source file by its name, never its path.

    Parameters
    ----------
    atlas : Atlas
        The opened version.

    Returns
    -------
    list of dict
        One row per data set.
    """
    return [{**d, "source_file": Path(str(d.get("source_file") or "")).name} for d in atlas.datasets]


def version_rows(root: Path) -> tuple[int, list[dict[str, Any]]]:
    """The atlas's current version and every version's history row, each marked ``current`` or not.

    Parameters
    ----------
    root : Path
        The atlas folder.

    Returns
    -------
    current : int
    rows : list of dict
        Oldest first.
    """
    current = store.current_version(root)
    return current, [{**row, "current": row["version"] == current} for row in store.version_history(root)]


def _datasets(request: Request) -> dict[str, Any]:
    atlas = request.app.state.atlas.current()
    return {"version": atlas.version, "datasets": shown_datasets(atlas)}


def _versions(request: Request) -> dict[str, Any]:
    current, rows = version_rows(request.app.state.root)
    return {"current": current, "versions": rows}


async def _annotate(request: Request, options: Annotated[AnnotateOptions, Depends(_query_options)]) -> JSONResponse:
    state = request.app.state
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "multipart/form-data"):
        raise HTTPException(415, f"unsupported content type {kind or 'none'!r}; send an .h5ad as multipart/form-data "
                                 f"field {UPLOAD_FIELD!r}, or JSON {{\"genes\": [...], \"cells\": [...], "
                                 "\"counts\": [[...]]}")
    atlas = await run_in_threadpool(state.atlas.current)
    if options.version is not None and options.version != atlas.version:
        raise HTTPException(409, f"this server annotates against the atlas's current version, {atlas.version}, not "
                                 f"version {options.version}; leave version out, or ask for version {atlas.version}")
    if kind == "application/json":
        body = await request.body()
        async with state.slots():
            found = await anyio.to_thread.run_sync(state.workers.call, _annotate_counts, atlas, body, options,
                                                   state.limits)
    else:
        async with request.form() as form:
            upload = _upload(form)
            async with state.slots():
                found = await anyio.to_thread.run_sync(_annotate_upload, state.workers, atlas, upload, options,
                                                       state.limits)
    found["info"]["atlas"] = state.root.name
    found["info"]["input_scale_evidence"] = api_wording(str(found["info"].get("input_scale_evidence", "")), state.fields)
    return JSONResponse(found)  # already plain JSON values: FastAPI's encoder would walk every row again


def _caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """The dependency of the writing endpoints: the name of the caller's token (:class:`_Writer`)."""
    return str(request.app.state.writer.caller(credentials))


async def _add(request: Request, caller: Annotated[str, Depends(_caller)]) -> dict[str, Any]:
    from screader_db.builders.datasets import add_dataset
    from screader_db.provenance import acting_as

    root = request.app.state.root
    async with request.form() as form:
        upload = _upload(form)
        name, label_key = form.get("name"), form.get("label_key")
        if not isinstance(name, str) or not name or not isinstance(label_key, str) or not label_key:
            raise InputDataError("send the form fields 'name' (the data set's name) and 'label_key' (its label column)")

        def run() -> Any:
            with acting_as(caller), _saved(upload) as path, _conflict():
                return add_dataset(root, path, name=name, label_key=label_key, wait=WRITE_WAIT,
                                   source_name=Path(upload.filename or "upload.h5ad").name)

        built = await run_in_threadpool(run)
    return {"dataset": name, "version": built.version, "cells": int(built.info.get("n_cells", 0))}


async def _remove(name: str, request: Request, caller: Annotated[str, Depends(_caller)]) -> dict[str, Any]:
    from screader_db.builders.datasets import remove_dataset
    from screader_db.provenance import acting_as

    root = request.app.state.root
    present = [d["name"] for d in (await run_in_threadpool(request.app.state.atlas.current)).datasets]
    if name not in present:
        raise HTTPException(404, f"the atlas has no data set named {name!r}; data sets: {', '.join(present)}")

    def run() -> Any:
        with acting_as(caller), _conflict():
            return remove_dataset(root, name, wait=WRITE_WAIT)

    built = await run_in_threadpool(run)
    return {"removed": name, "version": built.version, "cells": int(built.info.get("n_cells", 0))}


def read_tokens(path: Path) -> dict[str, str]:
    """The tokens of a token file.

    Parameters
    ----------
    path : Path
        The file: one token per line, alone (recorded as ``api``) or after a name and a space
        (``alice 3f9c...``: changes are recorded as made by alice).

    Returns
    -------
    dict of str to str
        Name to token.

    Raises
    ------
    ScreaderError
        The file is missing or empty, a line has more than two words, or a name comes twice.
    """
    if not path.is_file():
        raise ScreaderError(f"--token-file {path} does not exist; write the token into it (one line)")
    tokens: dict[str, str] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ScreaderError(f"--token-file {path}: a line holds a token, or a name and a token; found {len(fields)} words")
        name, token = (API_USER, fields[0]) if len(fields) == 1 else (fields[0], fields[1])
        if name in tokens:
            raise ScreaderError(f"--token-file {path} names {name!r} twice; give each token its own name")
        tokens[name] = token
    if not tokens:
        raise ScreaderError(f"--token-file {path} is empty; write the token into it (one line)")
    return tokens


class _Writer:
    """Who may write: the caller's name for a right token, 403 when the server has no token, 401 for a wrong one."""

    def __init__(self, token: str | Mapping[str, str] | None) -> None:
        self.tokens = dict(token) if isinstance(token, Mapping) else ({API_USER: token} if token else {})

    def caller(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        """The name of the token sent; HTTPException 403 or 401 when none may write."""
        if not self.tokens:
            raise HTTPException(403, f"writing is disabled on this server: its operator can start it with {TOKEN_ENV} "
                                     "set or with a token file to allow adding and removing data sets")
        given = (credentials.credentials if credentials is not None else "").encode()
        found = [name for name, token in self.tokens.items() if hmac.compare_digest(given, token.encode())]
        if not given or not found:
            reason = "a wrong token was sent" if given else "no token was sent"
            raise HTTPException(401, f"{reason}; send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        return found[0]


def _handlers(app: FastAPI, root: Path) -> None:
    def worded(message: str) -> str:
        return api_wording(without_paths(message, root), app.state.fields)

    @app.exception_handler(ScreaderError)
    async def library_error(_: Request, error: ScreaderError) -> JSONResponse:
        if isinstance(error, AtlasDamagedError):
            message = (f"the atlas served here is damaged ({worded(str(error))}); the server's operator must restore "
                       "or rebuild it")
            return _error(503, message)
        return _error(status_of(error), worded(str(error)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, worded(str(error.detail)), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        found = list(error.errors())
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in found[:5])
        options = all(e["loc"] and e["loc"][0] in ("query", "path", "header") for e in found)
        return _error(400 if options else 422, f"invalid request: {problems}")


def _upload(form: Any) -> UploadFile:
    upload = form.get(UPLOAD_FIELD)
    if not isinstance(upload, UploadFile):
        raise InputDataError(f"no file in the form: send the .h5ad as multipart/form-data field {UPLOAD_FIELD!r}")
    return upload


@contextmanager
def _saved(upload: UploadFile) -> Iterator[Path]:
    """The upload as a temporary .h5ad file, removed afterwards whatever happens; error messages
    name the upload, not the path."""
    with tempfile.TemporaryDirectory(prefix=UPLOAD_PREFIX, ignore_cleanup_errors=True) as folder:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.filename or "upload").stem).strip("._") or "upload"
        path = write_upload(upload, Path(folder) / f"{stem[:100]}.h5ad")
        try:
            yield path
        except InputDataError as err:
            label = f"the uploaded file {upload.filename!r}" if upload.filename else "the uploaded file"
            raise type(err)(str(err).replace(str(path), label)) from err


def write_upload(upload: UploadFile, path: Path) -> Path:
    """Copy an upload (already spooled by the form parser) to ``path``, a megabyte at a time.

    Parameters
    ----------
    upload : UploadFile
        The form's file.
    path : Path
        The file to write.

    Returns
    -------
    Path
        ``path``.
    """
    upload.file.seek(0)
    with open(path, "wb") as handle:
        shutil.copyfileobj(upload.file, handle, 1 << 20)
    return path


def _annotate_upload(workers: Workers, atlas: store.Atlas, upload: UploadFile, options: AnnotateOptions,
                     limits: ServerLimits) -> dict[str, Any]:
    """Save the upload, then annotate it where the workers run annotations."""
    with _saved(upload) as path:
        return workers.call(_annotate_saved, atlas, path, upload.filename or "upload", options, limits)


def _annotate_saved(cache: AtlasCache, atlas: store.Atlas, path: Path, filename: str, options: AnnotateOptions,
                    limits: ServerLimits) -> dict[str, Any]:
    """Annotate a saved .h5ad upload: its declared size checked before anything is read."""
    from screader_db.annotation import annotate

    with _read_upload(cache, atlas, path, options.read, limits, f"the uploaded file {filename!r}") as adata:
        return result_payload(annotate(adata, atlas, options=options))


@contextmanager
def _read_upload(cache: AtlasCache, atlas: store.Atlas, path: Path, read: ReadOptions, limits: ServerLimits,
                 what: str, check: Callable[[int], None] | None = None) -> Iterator[Any]:
    """A saved .h5ad upload opened backed (and closed after), with the atlas loaded; its declared size
    is checked first (and ``check`` given its declared cells), before anything is read."""
    from screader_db.inputs import read_h5ad

    shape = h5ad_shape(path, layer=read.layer, use_raw=read.use_raw)
    if shape is not None:
        check_declared(*shape, limits, what=what)
        if check is not None:
            check(shape[0])
    cache.ready(atlas)
    adata = read_h5ad(path, backed=True)
    try:
        yield adata
    finally:
        adata.file.close()


def _annotate_counts(cache: AtlasCache, atlas: store.Atlas, body: bytes, options: AnnotateOptions,
                     limits: ServerLimits) -> dict[str, Any]:
    """Annotate a JSON counts body: its values counted before it is parsed, its cells and genes after."""
    from screader_db.annotation import annotate

    check_json_body(body, limits)
    request: CountsRequest = parse_counts(body)
    check_declared(len(request.counts), len(request.genes), limits, what="the JSON body")
    cache.ready(atlas)
    return result_payload(annotate(counts_adata(request), atlas, options=options))


SEARCH_FIELDS = ("ids", "centroid_of_ids", "centroid_of_label", "signature")
MAX_HITS = 1_000_000  # queries × k one search request may ask for


class SearchRequest(BaseModel):
    """The JSON body of ``POST /search``: one query, as atlas cell ids, a centroid or a gene signature.

    Parameters
    ----------
    ids : list of int or None
        Atlas cell ids, each a query.
    centroid_of_ids : list of int or None
        Atlas cell ids whose centroid is the query.
    centroid_of_label : str or None
        An atlas label; the centroid of its cells is the query.
    signature : dict of str to float, str, or None
        Genes with weights, ``{"CD19": 1, "MS4A1": 1}`` or ``"CD19:1,MS4A1:1"``.
    """

    model_config = {"extra": "forbid"}

    ids: list[int] | None = Field(default=None, description="atlas cell ids, each a query")
    centroid_of_ids: list[int] | None = Field(default=None, description="atlas cell ids whose centroid is the query")
    centroid_of_label: str | None = Field(default=None, description="an atlas label: the centroid of its cells is the query")
    signature: dict[str, float] | str | None = Field(default=None, description="genes with weights: {\"CD19\": 1, "
                                                                               "\"MS4A1\": 1} or \"CD19:1,MS4A1:1\"")


SEARCH_BODY = _upload_or_json_body("query cells as an .h5ad file, each a query", SearchRequest.model_json_schema())


def _search_options(**values: Any) -> SearchOptions:
    """The search options of a request's query string, checked as the command line checks them (400)."""
    options = SearchOptions.from_flat(**values)
    options.check(strict=True)
    return options


def _option_parameters(options: tuple[OptionField, ...]) -> list[inspect.Parameter]:
    """One query parameter per option, with its type, default, bounds and help (:mod:`screader_db.options`)."""
    parameters = []
    for option in options:
        kind = _TYPES[option.kind]
        query = Query(description=option.spec.help, ge=option.spec.low, le=MAX_K if option.name == "k" else option.spec.high)
        parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                                            annotation=Annotated[kind | None if option.optional else kind, query]))
    return parameters


# FastAPI reads a dependency's parameters from its signature: here, every search option.
_search_options.__signature__ = inspect.Signature(_option_parameters(search_option_fields()),  # type: ignore[attr-defined]
                                                  return_annotation=SearchOptions)


def _id_list(values: list[str] | None, name: str) -> list[int] | None:
    """Cell ids of a repeated or comma-separated query parameter; 400 for one that is not a whole number."""
    if values is None:
        return None
    ids = []
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        try:
            ids.append(int(item))
        except ValueError:
            raise HTTPException(400, f"{name} takes atlas cell ids (whole numbers); got {item!r}") from None
    return ids


def _check_hits(queries: int, k: int, what: str) -> None:
    if queries * k > MAX_HITS:
        message = (f"{what} asks for {queries:,} queries × k = {k:,}, {queries * k:,} hits; this server returns at most "
                   f"{MAX_HITS:,} per request. Send fewer queries per request, or a smaller k")
        raise RequestTooLargeError(message)


async def _search_get(
    request: Request,
    options: Annotated[SearchOptions, Depends(_search_options)],
    ids: Annotated[list[str] | None, Query(description="Atlas cell ids, each a query (repeat or comma-separate).")] = None,
    centroid_of_ids: Annotated[list[str] | None, Query(description="Atlas cell ids whose centroid is the query "
                                                                   "(repeat or comma-separate).")] = None,
    centroid_of_label: Annotated[str | None, Query(description="An atlas label: the centroid of its cells is the "
                                                               "query.")] = None,
    signature: Annotated[str | None, Query(description="Genes with weights, CD19:1,MS4A1:1 (weight 1 when left "
                                                       "out).")] = None,
) -> dict[str, Any]:
    query = SearchRequest(ids=_id_list(ids, "ids"), centroid_of_ids=_id_list(centroid_of_ids, "centroid_of_ids"),
                          centroid_of_label=centroid_of_label, signature=signature)
    return await _search_query(request, options, query)


async def _search_post(request: Request, options: Annotated[SearchOptions, Depends(_search_options)]) -> dict[str, Any]:
    state = request.app.state
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            query = SearchRequest.model_validate_json(await request.body())
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
            message = (f"the JSON body is not one query: {{\"ids\": [...]}}, {{\"centroid_of_ids\": [...]}}, "
                       f"{{\"centroid_of_label\": \"...\"}} or {{\"signature\": {{\"CD19\": 1, ...}}}}: {problems}")
            raise InputDataError(message) from err
        return await _search_query(request, options, query)
    if kind != "multipart/form-data":
        raise HTTPException(415, f"unsupported content type {kind or 'none'!r}; send query cells as an .h5ad, "
                                 f"multipart/form-data field {UPLOAD_FIELD!r}, or a JSON query such as {{\"ids\": [...]}}")
    atlas = await run_in_threadpool(state.atlas.current)
    async with request.form() as form:
        upload = _upload(form)
        async with state.slots():
            result = await anyio.to_thread.run_sync(_search_upload, state.atlas, atlas, upload, options, state.limits)
    return _search_payload(request, result)


async def _search_query(request: Request, options: SearchOptions, query: SearchRequest) -> dict[str, Any]:
    """Search for a query of ids, a centroid or a signature (a signature's text is parsed here: never read as a file)."""
    from screader_db.gene_signatures import parse_signature

    state = request.app.state
    given = [name for name in SEARCH_FIELDS if getattr(query, name) is not None]
    if len(given) != 1:
        raise HTTPException(400, f"give exactly one query: {', '.join(SEARCH_FIELDS)}, or query cells as an .h5ad "
                                 f"(POST, multipart field {UPLOAD_FIELD!r}); got {' and '.join(given) or 'none'}")
    _check_hits(len(query.ids) if query.ids is not None else 1, options.k, "the request")
    signature = parse_signature(query.signature) if isinstance(query.signature, str) else query.signature
    centroid: Any = query.centroid_of_ids if query.centroid_of_ids is not None else query.centroid_of_label
    atlas = await run_in_threadpool(state.atlas.current)

    def run() -> SearchResult:
        from screader_db.cell_search import search

        state.atlas.ready(atlas)
        return search(atlas, ids=query.ids, centroid_of=centroid, signature=signature, options=options)

    async with state.slots():
        result = await anyio.to_thread.run_sync(run)
    return _search_payload(request, result)


def _search_upload(cache: AtlasCache, atlas: store.Atlas, upload: UploadFile, options: SearchOptions,
                   limits: ServerLimits) -> SearchResult:
    from screader_db.cell_search import search

    what = f"the uploaded file {upload.filename or 'upload'!r}"
    with _saved(upload) as path, _read_upload(cache, atlas, path, options.read, limits, what,
                                              check=lambda cells: _check_hits(cells, options.k, what)) as adata:
        return search(atlas, cells=adata, options=options)


def _search_payload(request: Request, result: SearchResult) -> dict[str, Any]:
    """The JSON answer of ``/search``: the atlas named by its folder's name, evidence worded for the API."""
    state = request.app.state
    payload = result.to_payload()
    payload["info"]["atlas"] = state.root.name
    if "input_scale_evidence" in payload["info"]:
        payload["info"]["input_scale_evidence"] = api_wording(str(payload["info"]["input_scale_evidence"]), state.fields)
    return payload


@contextmanager
def _conflict() -> Iterator[None]:
    """A write the atlas's state refuses (locked by another writer, changed meanwhile, a bad name) is 409."""
    try:
        yield
    except AtlasError as err:
        raise HTTPException(409, str(err)) from err

