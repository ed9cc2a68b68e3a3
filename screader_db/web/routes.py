"""The web page's routes on the server's application: the pages, their static files and their JSON.

``/`` leads to ``/ui/``, the annotate page (upload, options, progress, then the result: the map, the
per-label summary, the per-cell table, a confusion matrix against a chosen obs column, downloads);
``/ui/results/{id}`` is the same page showing one kept result; ``/ui/atlas`` shows the data sets,
versions, label counts and the reference map, with the admin forms (which call the token-guarded
``POST /datasets`` and ``DELETE /datasets/{name}``). The pages read ``/ui/api/...``. Reading needs
no token, as for the rest of the server; errors are the server's one-line JSON ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from screader_db import store
from screader_db.api_errors import api_wording, without_paths
from screader_db.errors import InputDataError, ScreaderError
from screader_db.input_files import FORMATS, detect_format
from screader_db.options import AnnotateOptions
from screader_db.web.jobs import reference_map, run_job
from screader_db.web.result_store import DOWNLOADS, ERROR, RESULT, Job, ResultStore, upload_name, write_json

STATIC = Path(__file__).parent / "static"
LEVELS = ("label", "fine", "harmonised", "ontology", "broad")
SUFFIXES = (".h5ad", ".h5", ".hdf5", ".loom", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
FOLDER_FORMATS = ("mtx", "zarr")  # read from a folder of files: not one upload
_LOG = logging.getLogger("screader_db.web")
_NO_CACHE = {"Cache-Control": "no-cache"}


def add_pages(app: FastAPI, results: ResultStore) -> None:
    """Add the web page to ``app`` (made by :func:`screader_db.server.create_app`).

    Parameters
    ----------
    app : FastAPI
        The server's application; its ``state`` holds the atlas cache, limits, slots and workers.
    results : ResultStore
        Where the page's annotations are kept (closed when the application shuts down).
    """
    app.state.results, app.state.jobs, app.state.atlas_pages = results, set(), {}
    app.router.on_shutdown.append(results.close)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")
    routes: list[tuple[str, Any, str, str]] = [
        ("/", _home, "GET", "The web page (a redirect to /ui/)"),
        ("/ui/", _annotate_page, "GET", "The annotate page"),
        ("/ui/results/{job_id}", _annotate_page, "GET", "The annotate page showing one kept result"),
        ("/ui/atlas", _atlas_page, "GET", "The atlas page"),
        ("/ui/api/info", _info, "GET", "What the annotate page offers: data sets, labels, levels, limits"),
        ("/ui/api/jobs", _submit, "POST", "Annotate an upload in the background (multipart: file and options)"),
        ("/ui/api/jobs/{job_id}", _status, "GET", "A page job's state, stage and downloads"),
        ("/ui/api/results/{job_id}", _result, "GET", "What the page shows of a finished job"),
        ("/ui/results/{job_id}/{name}", _download, "GET", "A finished job's CSV, annotated .h5ad or report"),
        ("/ui/api/atlas", _atlas, "GET", "The atlas page's data: data sets, versions, label counts, map"),
    ]
    for path, endpoint, method, summary in routes:
        app.add_api_route(path, endpoint, methods=[method], summary=summary, include_in_schema=path.startswith("/ui/api"))


def _home() -> RedirectResponse:
    return RedirectResponse("/ui/")


def _annotate_page(job_id: str | None = None) -> FileResponse:
    return FileResponse(STATIC / "annotate.html", headers=_NO_CACHE)


def _atlas_page() -> FileResponse:
    return FileResponse(STATIC / "atlas.html", headers=_NO_CACHE)


def _info(request: Request) -> dict[str, Any]:
    state = request.app.state
    atlas = state.atlas.current()
    labels = [row["label"] for row in _version_data(state, atlas)["label_counts"]["rows"]]
    return {"atlas": state.root.name, "version": atlas.version, "cells": int(atlas.info.get("n_cells", 0)),
            "datasets": [d["name"] for d in atlas.datasets], "labels": labels, "levels": list(LEVELS),
            "max_upload_bytes": state.limits.max_upload_bytes, "formats": list(SUFFIXES),
            "writing": bool(state.writer.tokens)}


def _job(request: Request, job_id: str) -> Job:
    job = request.app.state.results.get(job_id)
    if job is None:
        hours = request.app.state.results.max_age / 3600
        raise HTTPException(404, f"no result {job_id!r} on this server: results are kept for {hours:g} hours (fewer when "
                                 "space runs short) and not across restarts; upload the file again")
    return job


def _options(form: Any) -> AnnotateOptions:
    """The annotate options of the page's form, checked as the command line checks them."""
    def chosen(name: str) -> tuple[str, ...] | None:
        values = tuple(str(v) for v in form.getlist(name) if str(v))
        return values or None

    voting = str(form.get("majority_voting") or "false").lower()
    if voting not in ("true", "false", "on", "off", "1", "0"):
        raise InputDataError(f"majority_voting takes true or false; got {voting!r}")
    options = AnnotateOptions.from_flat(datasets=chosen("datasets"), exclude_labels=chosen("exclude_labels"),
                                        level=str(form.get("level") or "label"), majority_voting=voting in ("true", "on", "1"))
    options.check(strict=True)
    return options


async def _submit(request: Request) -> JSONResponse:
    from screader_db.server import UPLOAD_FIELD, _upload

    state = request.app.state
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise HTTPException(415, f"send the file as multipart/form-data field {UPLOAD_FIELD!r}")
    atlas = await run_in_threadpool(state.atlas.current)
    async with request.form() as form:
        upload = _upload(form)
        options = _options(form)
        filename = Path(upload.filename or "upload.h5ad").name
        job = await run_in_threadpool(_save, state.results, upload, filename)
    task = asyncio.get_running_loop().create_task(_run(request.app, job, atlas, options))
    state.jobs.add(task)
    task.add_done_callback(state.jobs.discard)
    return JSONResponse({"id": job.id, "status": f"/ui/api/jobs/{job.id}", "page": f"/ui/results/{job.id}"},
                        status_code=202)


def _save(results: ResultStore, upload: Any, filename: str) -> Job:
    """The upload saved into a new job's folder; a file of no format the readers know is refused now."""
    from screader_db.server import write_upload

    job = results.create(filename)
    path = write_upload(upload, job.folder / upload_name(filename))
    try:
        kind = detect_format(path).format
    except InputDataError:
        kind = None
    if kind is None or kind in FOLDER_FORMATS:
        readable = ", ".join(f for f in FORMATS if f not in FOLDER_FORMATS)
        message = (f"the uploaded file {filename!r} is of no format the web page reads; upload {', '.join(SUFFIXES)} "
                   f"({readable}); a Matrix Market or zarr folder is several files: save it as one .h5ad first")
        write_json(job.folder / ERROR, {"error": message})
        raise InputDataError(message)
    return job


async def _run(app: FastAPI, job: Job, atlas: store.Atlas, options: AnnotateOptions) -> None:
    """Run a page job where the server's annotations run; its failure is kept as the one-line error the page shows."""
    state = app.state
    try:
        async with state.slots():
            await anyio.to_thread.run_sync(state.workers.call, run_job, atlas, job.folder, options, state.limits)
    except ScreaderError as err:
        named = str(err).replace(str(job.upload), f"the uploaded file {job.status()['filename']!r}")
        message = api_wording(without_paths(named, state.root), state.fields)
        write_json(job.folder / ERROR, {"error": message, "at": time.time()})
    except Exception as err:  # a bug: the page gets one line, the log the traceback
        _LOG.exception("annotating %s failed", job.id)
        write_json(job.folder / ERROR, {"error": f"the annotation failed unexpectedly ({type(err).__name__}); the "
                                                 "server's log has the details", "at": time.time()})


def _status(request: Request, job_id: str) -> dict[str, Any]:
    return _job(request, job_id).status()


def _result(request: Request, job_id: str) -> FileResponse:
    job = _job(request, job_id)
    path = job.folder / RESULT
    if not path.is_file():
        status = job.status()
        raise HTTPException(409, status["error"] or f"result {job_id!r} is not ready yet ({status['stage'] or 'queued'})")
    return FileResponse(path, media_type="application/json")


def _download(request: Request, job_id: str, name: str) -> FileResponse:
    job = _job(request, job_id)
    if name not in DOWNLOADS.values():
        raise HTTPException(404, f"a result offers {', '.join(DOWNLOADS.values())}; not {name!r}")
    path = job.folder / name
    if not path.is_file():
        raise HTTPException(409, f"{name} of result {job_id!r} is still being written; try again in a few seconds")
    stem = Path(str(job.status()["filename"]) or "query").name.split(".")[0] or "query"
    media = {"labels.csv": "text/csv", "report.html": "text/html"}.get(name, "application/octet-stream")
    return FileResponse(path, media_type=media, filename=f"{stem}_{name}")


def _atlas(request: Request) -> dict[str, Any]:
    from screader_db.server import version_rows

    state = request.app.state
    atlas = state.atlas.current()
    _, versions = version_rows(state.root)
    return {"atlas": state.root.name, "version": atlas.version, "writing": bool(state.writer.tokens), "versions": versions,
            **_version_data(state, atlas)}


def _version_data(state: Any, atlas: store.Atlas) -> dict[str, Any]:
    """The pages' data one version fixes (data sets, label counts per data set, the map), made once
    per version: the current version's is kept."""
    found = state.atlas_pages.get(atlas.version)
    if found is None:
        found = _atlas_data(atlas)
        state.atlas_pages.clear()
        state.atlas_pages[atlas.version] = found
    return dict(found)


def _atlas_data(atlas: store.Atlas) -> dict[str, Any]:
    """The atlas page's data that one version fixes: data sets, label counts per data set, the map."""
    import pandas as pd

    from screader_db.server import shown_datasets

    cells = atlas.cells(["dataset", "label"])
    counts = pd.crosstab(cells["label"].astype(str), cells["dataset"].astype(str))
    names = [d["name"] for d in atlas.datasets if d["name"] in counts.columns]
    counts = counts.reindex(columns=names, fill_value=0)
    rows = [{"label": str(label), "counts": [int(v) for v in row]} for label, row in counts.iterrows()]
    return {"datasets": shown_datasets(atlas), "label_counts": {"datasets": names, "rows": rows},
            "reference_map": reference_map(atlas)}
