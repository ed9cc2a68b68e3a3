"""The lab atlas over HTTP (FastAPI): annotate cells, read what the atlas holds, add or remove data sets.

``create_app(atlas_dir)`` builds the application; ``screader-db serve`` runs it with uvicorn
(see :mod:`screader_db.http_connections`). Reading endpoints are open; the writing ones need
``Authorization: Bearer <token>`` and are switched off (403) when the server has no token. Every
error is JSON ``{"error": "..."}`` worded for the API (see :mod:`screader_db.api_errors`).
The atlas's ``current`` pointer is checked on every request, so a new version is served without
a restart. Annotation takes a slot (one per CPU core: more would only compete for the same
cores) before its body is parsed or its upload read, and runs in a worker thread; requests past
the slots queue. Every request is held to the :class:`~screader_db.server_limits.ServerLimits`:
bytes, declared cells and cells × genes, connections and header time.
"""

from __future__ import annotations

import hmac
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from screader_db import __version__, store
from screader_db.api_errors import UPLOAD_PREFIX, api_wording, status_of, without_paths
from screader_db.atlas_cache import AtlasCache
from screader_db.body_limit import BodyLimit
from screader_db.errors import AtlasDamagedError, AtlasError, InputDataError, ScreaderError
from screader_db.payloads import CountsRequest, counts_adata, parse_counts, result_payload
from screader_db.server_limits import ServerLimits, check_declared, check_json_body, h5ad_shape

TOKEN_ENV = "SCREADER_DB_TOKEN"
API_USER = "api"  # the name changes are recorded under when the token has none
UPLOAD_FIELD = "file"
FORM_FIELDS = (UPLOAD_FIELD, "name", "label_key")
WRITE_WAIT = 60.0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


ANNOTATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": [UPLOAD_FIELD],
                           "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                                         "description": "query cells as an .h5ad file"}}},
            },
            "application/json": {"schema": CountsRequest.model_json_schema()},
        },
    },
}
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


def create_app(atlas_dir: str | Path, *, token: str | Mapping[str, str] | None = None,
               limits: ServerLimits | None = None, verify: bool = True, preload: bool = False) -> FastAPI:
    """The HTTP application serving the atlas at ``atlas_dir``.

    ``token`` (one token, or several by name: ``{"alice": "...", "bob": "..."}``) enables
    ``POST /datasets`` and ``DELETE /datasets/{name}`` for clients sending
    ``Authorization: Bearer <token>``; without one those endpoints answer 403. Changes are
    recorded as made by the token's name (``api`` for a single token). Requests beyond
    ``limits`` are refused with 413. ``verify`` checks each version's files against their
    recorded sha256 when the server first opens it; ``preload`` opens and reads the current
    version now, so a missing or damaged atlas stops the server from starting (an AtlasError).
    """
    root = Path(atlas_dir)
    limits = limits or ServerLimits()
    cache = AtlasCache(root, verify=verify)
    if preload:
        cache.ready(cache.current())
    app = FastAPI(title="screader-db", version=__version__,
                  description=f"Annotate single cells against the shared atlas {root.name!r}.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, max_json_bytes=limits.max_json_bytes)
    app.state.atlas = cache
    app.state.limits = limits
    writer = _Writer(token)
    limiters: dict[str, Any] = {}

    def _slot() -> Any:
        """One annotation per CPU core at a time (made on first use, inside the event loop)."""
        if "annotate" not in limiters:
            limiters["annotate"] = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        return limiters["annotate"]

    @app.get("/health", summary="Is the atlas ready, and which version is served")
    def health() -> dict[str, Any]:
        atlas = cache.current()
        return {"status": "ok", "atlas": root.name, "version": atlas.version, "model_id": atlas.model_id,
                "method": atlas.provenance.get("method", ""), "cells": int(atlas.info.get("n_cells", 0)),
                "datasets": len(atlas.datasets), "dim": atlas.info.get("dim"), "screader_db": __version__}

    @app.get("/datasets", summary="The reference data sets of the current version")
    def datasets() -> dict[str, Any]:
        atlas = cache.current()
        shown = [{**d, "source_file": Path(str(d.get("source_file") or "")).name} for d in atlas.datasets]
        return {"version": atlas.version, "datasets": shown}

    @app.get("/versions", summary="Every version of the atlas, oldest first")
    def versions() -> dict[str, Any]:
        current = store.current_version(root)
        rows = [{**row, "current": row["version"] == current} for row in store.version_history(root)]
        return {"current": current, "versions": rows}

    @app.post("/annotate", summary="Label query cells: an .h5ad upload (field 'file') or JSON counts",
              openapi_extra=ANNOTATE_BODY)
    async def annotate_cells(
        request: Request,
        k: Annotated[int, Query(ge=1, le=1000, description="nearest reference cells that vote")] = 15,
        min_score: Annotated[float | None, Query(ge=0, le=1, description="below this vote share a cell is Unassigned "
                                                                    "(default: the atlas's calibrated cut-off)")] = None,
        species: Annotated[str, Query(description="human, mouse or auto")] = "auto",
        level: Annotated[str, Query(description="label or harmonised")] = "label",
        gene_key: Annotated[str | None, Query(description="var column with gene symbols (h5ad)")] = None,
        layer: Annotated[str | None, Query(description="layer to read instead of X (h5ad)")] = None,
        use_raw: Annotated[bool, Query(description="read .raw (h5ad)")] = False,
        majority_voting: Annotated[bool, Query(description="add each query cluster's majority label")] = False,
        model: Annotated[str | None, Query(description="refuse unless the atlas uses this gene model")] = None,
        datasets: Annotated[list[str] | None, Query(description="only these data sets' cells may vote")] = None,
        labels: Annotated[list[str] | None, Query(description="only cells with these labels may vote")] = None,
        exclude_labels: Annotated[list[str] | None, Query(description="cells with these labels may not vote")] = None,
        input_scale: Annotated[str, Query(description="scale of the values: auto, counts, ln, log2, log10 or linear")] = "auto",
    ) -> dict[str, Any]:
        _check_options(level=level, species=species, input_scale=input_scale)
        options = {"k": k, "min_score": min_score, "species": species, "level": level, "gene_key": gene_key,
                   "layer": layer, "use_raw": use_raw, "majority_voting": majority_voting, "model": model,
                   "datasets": datasets, "labels": labels, "exclude_labels": exclude_labels, "input_scale": input_scale}
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", "multipart/form-data"):
            raise HTTPException(415, f"unsupported content type {kind or 'none'!r}; send an .h5ad as multipart/form-data "
                                     f"field {UPLOAD_FIELD!r}, or JSON {{\"genes\": [...], \"cells\": [...], "
                                     "\"counts\": [[...]]}")
        atlas = await run_in_threadpool(cache.current)
        if kind == "application/json":
            body = await request.body()
            async with _slot():
                found = await anyio.to_thread.run_sync(_annotate_counts, cache, atlas, body, options, limits)
        else:
            async with request.form() as form:
                upload = _upload(form)
                async with _slot():
                    found = await anyio.to_thread.run_sync(_annotate_upload, cache, atlas, upload, options, limits)
        found["info"]["atlas"] = root.name
        found["info"]["input_scale_evidence"] = api_wording(str(found["info"].get("input_scale_evidence", "")),
                                                            app.state.fields)
        return found

    @app.post("/datasets", summary="Add a labelled data set (a new atlas version); needs the token",
              openapi_extra=DATASET_BODY, status_code=201)
    async def add(request: Request, caller: str = Depends(writer)) -> dict[str, Any]:
        from screader_db.builders.datasets import add_dataset
        from screader_db.provenance import acting_as

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

    @app.delete("/datasets/{name}", summary="Remove a data set (a new atlas version); needs the token")
    async def remove(name: str, caller: str = Depends(writer)) -> dict[str, Any]:
        from screader_db.builders.datasets import remove_dataset
        from screader_db.provenance import acting_as

        present = [d["name"] for d in (await run_in_threadpool(cache.current)).datasets]
        if name not in present:
            raise HTTPException(404, f"the atlas has no data set named {name!r}; data sets: {', '.join(present)}")

        def run() -> Any:
            with acting_as(caller), _conflict():
                return remove_dataset(root, name, wait=WRITE_WAIT)

        built = await run_in_threadpool(run)
        return {"removed": name, "version": built.version, "cells": int(built.info.get("n_cells", 0))}

    app.state.fields = {p.name for r in app.routes if isinstance(r, APIRoute) for p in r.dependant.query_params} | \
        set(FORM_FIELDS)
    _handlers(app, root)
    return app


def _check_options(*, level: str, species: str, input_scale: str) -> None:
    """Refuse option values outside those the library accepts (400) before any work starts."""
    from screader_db.annotation import LEVELS
    from screader_db.genes import SPECIES
    from screader_db.inputs import scale_name

    if level not in LEVELS:
        raise ScreaderError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if species != "auto" and species not in SPECIES:
        raise ScreaderError(f"species must be one of {', '.join(SPECIES)} or auto, got {species!r}")
    if input_scale != "auto":
        try:
            scale_name(input_scale)
        except ScreaderError as err:
            raise ScreaderError(str(err)) from err


def read_tokens(path: Path) -> dict[str, str]:
    """The tokens of a token file: one per line, alone (recorded as ``api``) or after a name and a
    space (``alice 3f9c...``: changes are recorded as made by alice)."""
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


BEARER = HTTPBearer(auto_error=False, description="the token the server was started with")


class _Writer:
    """The dependency of the writing endpoints: the caller's name for a right token, 403 when the
    server has no token, 401 for a wrong one."""

    def __init__(self, token: str | Mapping[str, str] | None) -> None:
        self.tokens = dict(token) if isinstance(token, Mapping) else ({API_USER: token} if token else {})

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
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
        path = Path(folder) / f"{stem[:100]}.h5ad"
        upload.file.seek(0)
        with open(path, "wb") as handle:
            shutil.copyfileobj(upload.file, handle, 1 << 20)
        try:
            yield path
        except InputDataError as err:
            label = f"the uploaded file {upload.filename!r}" if upload.filename else "the uploaded file"
            raise type(err)(str(err).replace(str(path), label)) from err


def _annotate_upload(cache: AtlasCache, atlas: store.Atlas, upload: UploadFile, options: dict[str, Any],
                     limits: ServerLimits) -> dict[str, Any]:
    from screader_db.annotation import annotate
    from screader_db.inputs import read_h5ad

    with _saved(upload) as path:
        shape = h5ad_shape(path, layer=options["layer"], use_raw=options["use_raw"])
        if shape is not None:
            check_declared(*shape, limits, what=f"the uploaded file {upload.filename or 'upload'!r}")
        cache.ready(atlas)
        adata = read_h5ad(path, backed=True)
        try:
            result = annotate(adata, atlas, **options)
        finally:
            adata.file.close()
    return result_payload(result)


def _annotate_counts(cache: AtlasCache, atlas: store.Atlas, body: bytes, options: dict[str, Any],
                     limits: ServerLimits) -> dict[str, Any]:
    """Annotate a JSON counts body: its values counted before it is parsed, its cells and genes after."""
    from screader_db.annotation import annotate

    check_json_body(body, limits)
    request: CountsRequest = parse_counts(body)
    check_declared(len(request.counts), len(request.genes), limits, what="the JSON body")
    cache.ready(atlas)
    return result_payload(annotate(counts_adata(request), atlas, **options))


@contextmanager
def _conflict() -> Iterator[None]:
    """A write the atlas's state refuses (locked by another writer, changed meanwhile, a bad name) is 409."""
    try:
        yield
    except AtlasError as err:
        raise HTTPException(409, str(err)) from err

