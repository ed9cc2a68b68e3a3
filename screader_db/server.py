"""The lab atlas over HTTP (FastAPI): annotate cells, read what the atlas holds, add or remove data sets.

``create_app(atlas_dir)`` builds the application; ``screader-db serve`` runs it with uvicorn.
Reading endpoints are open; the writing ones need ``Authorization: Bearer <token>`` and are
switched off (403) when the server has no token. Every error is JSON ``{"error": "..."}``.
The atlas's ``current`` pointer is checked on every request, so a new version is served without
a restart; annotation runs in worker threads, at most one request per CPU core at a time (more
would only compete for the same cores), so requests are served side by side and the rest queue.
"""

from __future__ import annotations

import hmac
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from screader_db import __version__, store
from screader_db.atlas_cache import AtlasCache
from screader_db.body_limit import BodyLimit
from screader_db.errors import AtlasError, InputDataError, ModelMismatchError, OutputExistsError, ScreaderError
from screader_db.payloads import CountsRequest, counts_adata, parse_counts, result_payload

MAX_UPLOAD_BYTES = 512_000_000
TOKEN_ENV = "SCREADER_DB_TOKEN"
UPLOAD_FIELD = "file"
WRITE_WAIT = 60.0


def status_of(error: ScreaderError) -> int:
    """The HTTP status a library error becomes."""
    if isinstance(error, ModelMismatchError | OutputExistsError):
        return 409
    if isinstance(error, AtlasError):
        return 503
    if isinstance(error, InputDataError):
        return 422
    return 400


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


def create_app(atlas_dir: str | Path, *, token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The HTTP application serving the atlas at ``atlas_dir``.

    ``token`` enables ``POST /datasets`` and ``DELETE /datasets/{name}`` for clients sending
    ``Authorization: Bearer <token>``; without one those endpoints answer 403. Request bodies
    over ``max_upload_bytes`` are refused with 413.
    """
    root = Path(atlas_dir)
    cache = AtlasCache(root)
    app = FastAPI(title="screader-db", version=__version__,
                  description=f"Annotate single cells against the shared atlas at {root}.")
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.state.atlas = cache
    _handlers(app)
    writer = _Writer(token)
    limiters: dict[str, Any] = {}

    def _limiter() -> Any:
        """One annotation per CPU core at a time (made on first use, inside the event loop)."""
        if "annotate" not in limiters:
            limiters["annotate"] = anyio.CapacityLimiter(max(1, os.cpu_count() or 1))
        return limiters["annotate"]

    @app.get("/health", summary="Is the atlas ready, and which version is served")
    def health() -> dict[str, Any]:
        atlas = cache.current()
        return {"status": "ok", "atlas": str(root), "version": atlas.version, "model_id": atlas.model_id,
                "method": atlas.provenance.get("method", ""), "cells": int(atlas.info.get("n_cells", 0)),
                "datasets": len(atlas.datasets), "dim": atlas.info.get("dim"), "screader_db": __version__}

    @app.get("/datasets", summary="The reference data sets of the current version")
    def datasets() -> dict[str, Any]:
        atlas = cache.current()
        return {"version": atlas.version, "datasets": atlas.datasets}

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
        atlas = cache.current()
        options = {"k": k, "min_score": min_score, "species": species, "level": level, "gene_key": gene_key,
                   "layer": layer, "use_raw": use_raw, "majority_voting": majority_voting, "model": model,
                   "datasets": datasets, "labels": labels, "exclude_labels": exclude_labels, "input_scale": input_scale}
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            parsed = parse_counts(await request.body())
            return await anyio.to_thread.run_sync(_annotate_counts, cache, atlas, parsed, options, limiter=_limiter())
        if kind == "multipart/form-data":
            async with request.form() as form:
                upload = _upload(form)
                return await anyio.to_thread.run_sync(_annotate_upload, cache, atlas, upload, options,
                                                      limiter=_limiter())
        raise HTTPException(415, f"unsupported content type {kind or 'none'!r}; send an .h5ad as multipart/form-data "
                                 f"field {UPLOAD_FIELD!r}, or JSON {{\"genes\": [...], \"cells\": [...], \"counts\": [[...]]}}")

    @app.post("/datasets", summary="Add a labelled data set (a new atlas version); needs the token",
              dependencies=[Depends(writer)], openapi_extra=DATASET_BODY, status_code=201)
    async def add(request: Request) -> dict[str, Any]:
        from screader_db.builders.datasets import add_dataset

        async with request.form() as form:
            upload = _upload(form)
            name, label_key = form.get("name"), form.get("label_key")
            if not isinstance(name, str) or not name or not isinstance(label_key, str) or not label_key:
                raise InputDataError("send the form fields 'name' (the data set's name) and 'label_key' (its label column)")

            def run() -> Any:
                with _saved(upload) as path, _conflict():
                    return add_dataset(root, path, name=name, label_key=label_key, wait=WRITE_WAIT)

            built = await run_in_threadpool(run)
        return {"dataset": name, "version": built.version, "cells": int(built.info.get("n_cells", 0))}

    @app.delete("/datasets/{name}", summary="Remove a data set (a new atlas version); needs the token",
                dependencies=[Depends(writer)])
    async def remove(name: str) -> dict[str, Any]:
        from screader_db.builders.datasets import remove_dataset

        present = [d["name"] for d in cache.current().datasets]
        if name not in present:
            raise HTTPException(404, f"the atlas has no data set named {name!r}; data sets: {', '.join(present)}")

        def run() -> Any:
            with _conflict():
                return remove_dataset(root, name, wait=WRITE_WAIT)

        built = await run_in_threadpool(run)
        return {"removed": name, "version": built.version, "cells": int(built.info.get("n_cells", 0))}

    return app


BEARER = HTTPBearer(auto_error=False, description="the token the server was started with")


class _Writer:
    """The dependency of the writing endpoints: 403 when the server has no token, 401 for a wrong one."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not self.token:
            raise HTTPException(403, f"writing is disabled on this server: start it with {TOKEN_ENV} set or "
                                     "--token-file FILE to allow adding and removing data sets")
        given = credentials.credentials if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            reason = "a wrong token was sent" if given else "no token was sent"
            raise HTTPException(401, f"{reason}; send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ScreaderError)
    async def library_error(_: Request, error: ScreaderError) -> JSONResponse:
        return _error(status_of(error), str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        return _error(422, f"invalid request: {problems}")


def _upload(form: Any) -> UploadFile:
    upload = form.get(UPLOAD_FIELD)
    if not isinstance(upload, UploadFile):
        raise InputDataError(f"no file in the form: send the .h5ad as multipart/form-data field {UPLOAD_FIELD!r}")
    return upload


@contextmanager
def _saved(upload: UploadFile) -> Iterator[Path]:
    """The upload as a temporary .h5ad file, removed afterwards; error messages name the upload, not the path."""
    with tempfile.TemporaryDirectory(prefix="screader-upload-") as folder:
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


def _annotate_upload(cache: AtlasCache, atlas: store.Atlas, upload: UploadFile, options: dict[str, Any]) -> dict[str, Any]:
    from screader_db.annotation import annotate
    from screader_db.inputs import read_h5ad

    cache.ready(atlas)
    with _saved(upload) as path:
        adata = read_h5ad(path, backed=True)
        try:
            result = annotate(adata, atlas, **options)
        finally:
            adata.file.close()
    return result_payload(result)


def _annotate_counts(cache: AtlasCache, atlas: store.Atlas, request: CountsRequest, options: dict[str, Any]) -> dict[str, Any]:
    from screader_db.annotation import annotate

    cache.ready(atlas)
    return result_payload(annotate(counts_adata(request), atlas, **options))


@contextmanager
def _conflict() -> Iterator[None]:
    """A write the atlas's state refuses (locked by another writer, changed meanwhile, a bad name) is 409."""
    try:
        yield
    except AtlasError as err:
        raise HTTPException(409, str(err)) from err

