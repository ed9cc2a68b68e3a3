"""One upload's annotation for the web page, run where the server runs annotations.

:func:`run_job` is called with the job's folder (:mod:`screader_db.web.result_store`) in a worker
process or thread of the server (:class:`screader_db.annotate_workers.Workers`): it annotates the
upload, writes ``result.json`` (what the page shows) and then the downloads, the per-cell CSV, the
annotated ``.h5ad`` and the HTML report, each whole or not at all, and reports its stage as it goes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.atlas_cache import AtlasCache
from screader_db.options import AnnotateOptions
from screader_db.progress import Advance, Reporter
from screader_db.results import AnnotationResult
from screader_db.server_limits import ServerLimits, check_declared, h5ad_shape
from screader_db.web.result_store import DOWNLOADS, RESULT, STAGE, Job, write_json

PAGE_MAP_CELLS = 20_000  # reference cells drawn on the page's map (a sample of larger atlases)
TRUTH_MAX_LABELS = 200  # an obs column with more distinct values is not offered as a truth column
COLUMNS = ("label", "score", "confidence", "second_opinion", "margin", "second_label", "unassigned_reason", "call_level",
           "raw_label", "cluster", "majority_label")  # second_opinion when sought; the last two with majority voting
_PROGRESS_EVERY = 0.3  # seconds between progress writes


class StageReporter(Reporter):
    """Writes the current stage and its count to the job's ``stage.json``, for the page to poll."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._written = 0.0

    def _write(self, stage: str, done: int | None = None, total: int | None = None, *, finished: bool = False) -> None:
        data: dict[str, Any] = {"stage": stage, "done": done, "total": total}
        if finished:
            data["finished"] = time.time()
        write_json(self.folder / STAGE, data)
        self._written = time.monotonic()

    def message(self, text: str) -> None:
        """The stage is now ``text``.

        Parameters
        ----------
        text : str
            What is happening.
        """
        self._write(text)

    @contextmanager
    def task(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        """A counted stage, its count written at most every 0.3 s.

        Parameters
        ----------
        description : str
            What is happening.
        total : int
            Items when done.
        unit : str
            What an item is.

        Yields
        ------
        Callable[[int], None]
            Call with the items just finished.
        """
        count = [0]
        self._write(description, 0, total)

        def advance(n: int) -> None:
            count[0] += n
            if time.monotonic() - self._written > _PROGRESS_EVERY:
                self._write(description, count[0], total)

        yield advance

    def finish(self, text: str) -> None:
        """The result is written: the page's clock stops here.

        Parameters
        ----------
        text : str
            What happens after (the downloads being written).
        """
        self._write(text, finished=True)


def run_job(cache: AtlasCache, atlas: store.Atlas, folder: Path, options: AnnotateOptions, limits: ServerLimits) -> None:
    """Annotate the upload in ``folder`` and write what the page shows and offers.

    Parameters
    ----------
    cache : AtlasCache
        The caller's cache (the atlas is loaded through it).
    atlas : Atlas
        The version to annotate against.
    folder : Path
        The job's folder, holding the upload.
    options : AnnotateOptions
        The options chosen on the page.
    limits : ServerLimits
        What an upload may declare (an .h5ad's cells and cells × genes are checked before it is read).

    Raises
    ------
    ScreaderError
        The upload cannot be read or annotated; the message names the upload, not its path.
    """
    from screader_db.annotated_file import write_annotated
    from screader_db.annotation import annotate
    from screader_db.input_files import open_input
    from screader_db.report import write_report

    job = Job(folder.name, folder)
    path, reporter = job.upload, StageReporter(folder)
    reporter.message("Reading the upload")
    read = options.read
    if path.suffix == ".h5ad":
        shape = h5ad_shape(path, layer=read.layer, use_raw=read.use_raw)
        if shape is not None:
            check_declared(*shape, limits, what="the uploaded file")
    cache.ready(atlas)
    result = annotate(path, atlas, options=options, reporter=reporter)
    with open_input(path) as data:
        write_json(folder / RESULT, page_result(job, result, atlas, truth_columns(data.adata.obs)))
        reporter.finish("Writing the downloads")
        with _written(folder, DOWNLOADS["csv"]) as target:
            result.write_table(target, overwrite=True)
        with _written(folder, DOWNLOADS["h5ad"]) as target:
            write_annotated(result, path, target)
        with _written(folder, DOWNLOADS["report"]) as target:
            write_report(result, data.adata, target, overwrite=True, layer=read.layer, use_raw=read.use_raw,
                         gene_key=read.gene_key)


@contextmanager
def _written(folder: Path, name: str) -> Iterator[Path]:
    """A path in the job's ``partial/`` folder to write ``name`` to (its own suffix kept), moved into place after."""
    partial = folder / "partial"
    partial.mkdir(exist_ok=True)
    yield partial / name
    os.replace(partial / name, folder / name)


def truth_columns(obs: pd.DataFrame) -> dict[str, list[str]]:
    """The query's obs columns a user may compare the labels with: text or categories, 2 to
    :data:`TRUTH_MAX_LABELS` distinct values, not one per cell.

    Parameters
    ----------
    obs : pandas.DataFrame
        The query's cell metadata.

    Returns
    -------
    dict of str to list of str
        Column name to one value per cell (missing values as "").
    """
    found = {}
    for name in obs.columns:
        values = obs[name]
        if not (isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or pd.api.types.is_string_dtype(values)):
            continue
        distinct = values.nunique(dropna=True)
        if 2 <= distinct <= min(TRUTH_MAX_LABELS, len(values) - 1):
            found[str(name)] = ["" if pd.isna(v) else str(v) for v in values.tolist()]
    return found


def _values(values: pd.Series | np.ndarray) -> list[Any]:
    """JSON values of a column: numbers rounded to 4 places (None for NaN), text as text (None when missing)."""
    series = pd.Series(values)
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return [round(float(v), 4) if math.isfinite(v) else None for v in series.astype(float).tolist()]
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in series.tolist()]


def reference_map(atlas: store.Atlas, column: str = "label", *, frame: pd.DataFrame | None = None,
                  cells: int = PAGE_MAP_CELLS, seed: int = 0) -> dict[str, list[Any]] | None:
    """The reference map as the page draws it: x, y, label and data set of a sample of the atlas's cells.

    Parameters
    ----------
    atlas : Atlas
        The opened version.
    column : str
        The label column (a level of :meth:`screader_db.store.Atlas.cells`).
    frame : pandas.DataFrame or None
        Map positions and labels already read (``AnnotationResult.reference_map``, indexed by cell id).
    cells : int
        At most this many cells, drawn at random (seeded) from larger atlases.
    seed : int
        The sample's seed.

    Returns
    -------
    dict or None
        Columns ``x``, ``y``, ``label``, ``dataset``; None when the atlas has no map.
    """
    from screader_db.annotation import reference_map_frame

    frame = reference_map_frame(atlas, column, seed) if frame is None else frame
    if frame is None:
        return None
    if len(frame) > cells:
        frame = frame.sample(cells, random_state=seed)
    datasets = atlas.cells(["dataset"])["dataset"].reindex(frame.index)
    return {"x": _values(frame["x"]), "y": _values(frame["y"]), "label": _values(frame["label"]),
            "dataset": _values(datasets)}


def label_summary(result: AnnotationResult) -> list[dict[str, Any]]:
    """The page's per-label summary.

    Parameters
    ----------
    result : AnnotationResult
        An annotation.

    Returns
    -------
    list of dict
        The rows of :meth:`AnnotationResult.summary` (label, cells, share, mean_score, unassigned)
        with each label's mean confidence.
    """
    summary = result.summary()
    confidence = result.table.groupby("label", observed=True)["confidence"].mean().reindex(summary.index)
    return [{"label": str(label), "cells": int(row.cells), "share": round(float(row.share), 4),
             "mean_score": round(float(row.mean_score), 4), "unassigned": int(row.unassigned),
             "mean_confidence": round(float(confidence[label]), 4) if math.isfinite(confidence[label]) else None}
            for label, row in summary.iterrows()]


def page_result(job: Job, result: AnnotationResult, atlas: store.Atlas, truth: dict[str, list[str]]) -> dict[str, Any]:
    """``result.json``: what the page shows of one annotation.

    Parameters
    ----------
    job : Job
        The job.
    result : AnnotationResult
        The annotation of its upload.
    atlas : Atlas
        The version it was annotated against.
    truth : dict
        The query's candidate truth columns (:func:`truth_columns`).

    Returns
    -------
    dict
        Columnar per-cell values (``columns``, with map positions ``x`` and ``y``), ``summary``,
        ``reference_map``, ``truth_columns``, ``info`` and the ``downloads``' URLs.
    """
    import json

    table = result.table
    columns: dict[str, list[Any]] = {"cell": [str(name) for name in table.index]}
    columns.update({name: _values(table[name]) for name in COLUMNS if name in table})
    empty: list[Any] = [None] * len(table)
    umap = result.umap
    columns["x"] = empty if umap is None else _values(umap[:, 0])
    columns["y"] = empty if umap is None else _values(umap[:, 1])
    status = job.status()
    seconds = status["seconds"]
    info = json.loads(json.dumps({**result.info, "seconds": seconds}, default=str))
    mapped = None if result.reference_map is None else reference_map(atlas, frame=result.reference_map)
    return {"id": job.id, "filename": status["filename"], "n_cells": len(table), "atlas": Path(atlas.root).name,
            "version": atlas.version, "columns": columns, "summary": label_summary(result), "reference_map": mapped,
            "truth_columns": truth, "info": info,
            "downloads": {kind: f"/ui/results/{job.id}/{name}" for kind, name in DOWNLOADS.items()}}
