"""Panel indexes: the atlas re-fitted on the genes a partial-panel query shares with it.

A query that measures only some of the atlas's genes (a targeted panel, a few hundred genes)
cannot be embedded the atlas's way: the genes it lacks would read as zero. Instead the cell
embedding is fitted again on the reference expression the atlas keeps, over the shared genes
only, every reference cell is embedded again, and a FAISS index is built over them. Both sides
are normalised over the shared genes, so a cell's library size means the same on each side.

The result is kept inside the atlas version, keyed by the hash of the gene set::

    versions/N/panels/<key>/PANEL.json, embedder.safetensors, index.faiss (+ .json)
                               (+ classifier.safetensors, fitted beside a second opinion)

so the next query with the same panel reuses it. It is written to a staging folder and
renamed into place, so a crash leaves either nothing or a whole panel index.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from screader_db import store
from screader_db.atlas_format import CLASSIFIER, EMBEDDER, INDEX, PANEL_FILE, PANEL_FORMAT, PANELS, STAGING_PREFIX
from screader_db.checksums import sha256_text
from screader_db.errors import AtlasError
from screader_db.progress import SILENT, Reporter


@dataclass
class PanelIndex:
    """The atlas fitted on one gene panel: its embedder and index over every reference cell.

    Parameters
    ----------
    key : str
        The panel's folder name (:func:`panel_key`).
    genes : list of str
        The panel's genes, sorted.
    embedder : CellEmbedder
        The embedding method fitted on the panel.
    index : CellIndex
        Every reference cell embedded on the panel.
    reused : bool
        Whether the panel was read from the atlas rather than fitted now.
    scores : dict
        The score calibration on this panel (confidence map, default cut-off).
    classifier : Classifier or None
        The linear classifier fitted on the same genes and cells, when asked for
        (:mod:`screader_db.classifier`).
    """

    key: str
    genes: list[str]
    embedder: Any
    index: Any
    reused: bool
    scores: dict[str, Any]
    classifier: Any = None


def panel_key(genes: list[str], datasets: list[str] | None = None, method: str | None = None, *,
              classifier: bool = False) -> str:
    """A short, stable name for a set of genes (and the data sets fitted on, when not all, and the
    method, when not the atlas's).

    Parameters
    ----------
    genes : list of str
        The panel's genes, in any order.
    datasets : list of str or None
        The data sets fitted on, in any order; None for every data set.
    method : str or None
        The cell embedding method fitted; None for the atlas's own.
    classifier : bool
        Whether a linear classifier is fitted beside it.

    Returns
    -------
    str
        The first 16 hex digits of the sha256 of the sorted genes (and data sets, and method, and
        the classifier's format).
    """
    from screader_db.classifier import FORMAT

    named = "" if datasets is None else "\ndatasets:" + ",".join(sorted(datasets))
    named += "" if method is None else "\nmethod:" + method
    named += f"\nclassifier:{FORMAT}" if classifier else ""
    return sha256_text("\n".join(sorted(genes)) + named)[:16]


def _settings(opened: store.Atlas, method: str | None = None) -> Any:
    from screader_db.builders.atlas import BuildSettings

    stored = opened.provenance.get("parameters", {})
    known = {f.name for f in fields(BuildSettings)}
    settings = BuildSettings(**{**{k: v for k, v in stored.items() if k in known}, "panel": None})
    if method is not None:
        settings.method = method
    elif settings.prototype_weight is None and "gamma" in opened.embedder.params:
        settings.prototype_weight = float(opened.embedder.params["gamma"])  # as the atlas was fitted, whatever today's default
    return settings


def open_panel(opened: store.Atlas, genes: list[str], *, datasets: list[str] | None = None, method: str | None = None,
               classifier: bool = False, reporter: Reporter = SILENT, device: str | None = None) -> PanelIndex:
    """The atlas's index for the gene panel ``genes``: read from the version if kept, else fitted and kept.

    Fitting reads the stored reference expression over ``genes``, fits the atlas's method with the
    atlas's build settings, calibrates the scores, embeds every reference cell and writes
    ``panels/<key>/`` in the version folder (see the module docstring).

    Parameters
    ----------
    opened : Atlas
        The opened atlas version; it must keep reference expression to fit a new panel.
    genes : list of str
        The genes the query shares with the atlas.
    datasets : list of str or None
        Fit on the cells of these data sets only; None: every data set.
    method : str or None
        Fit this cell embedding method instead of the atlas's own (a second opinion,
        :mod:`screader_db.second_opinion`); None: the atlas's.
    classifier : bool
        Fit (or read) the linear classifier of :mod:`screader_db.classifier` on the same genes and cells too.
    reporter : Reporter
        Receives the progress of a fit.
    device : str or None
        The torch device a learned method trains on; None picks a GPU when there is one.

    Returns
    -------
    PanelIndex
        ``reused`` tells whether it was read rather than fitted.

    Raises
    ------
    AtlasError
        The kept panel, its embedder or its index is of another format or unreadable.
    AtlasDamagedError
        A stored expression part is missing or unreadable.
    """
    from screader_db.cell_embedding import CellEmbedder
    from screader_db.classifier import Classifier
    from screader_db.index import CellIndex

    key = panel_key(genes, datasets, method, classifier=classifier)
    folder = opened.path / PANELS / key
    if not (folder / PANEL_FILE).is_file():
        _fit(opened, sorted(genes), folder, datasets=datasets, method=method, classifier=classifier, reporter=reporter,
             device=device)
        reused = False
    else:
        reused = True
    meta = json.loads((folder / PANEL_FILE).read_text())
    if meta.get("format") != PANEL_FORMAT:
        message = f"{folder} has panel format {meta.get('format')!r}, this version reads {PANEL_FORMAT!r}; delete the folder"
        raise AtlasError(message)
    index = CellIndex.load(folder / INDEX)
    fitted = Classifier.load(folder / CLASSIFIER) if (folder / CLASSIFIER).is_file() else None
    return PanelIndex(key=key, genes=list(meta["genes"]), embedder=CellEmbedder.load(folder / EMBEDDER),
                      index=index, reused=reused, scores=dict(meta.get("scores", {})), classifier=fitted)


def _fit(opened: store.Atlas, genes: list[str], folder: Path, *, datasets: list[str] | None, method: str | None,
         classifier: bool, reporter: Reporter, device: str | None) -> None:
    from screader_db.builders.atlas import calibrate_scores, fit_method
    from screader_db.classifier import fit_classifier
    from screader_db.expression_stream import ExpressionStream
    from screader_db.genes import GeneResolver
    from screader_db.index import CellIndex
    from screader_db.inputs import CHUNK, ExpressionSource, plan_genes
    from screader_db.reference_stats import collect
    from screader_db.stored_expression import StoredExpression, StoredMatrix

    settings = _settings(opened, method)
    stored = StoredExpression(opened.path, datasets=datasets)
    ids = stored.ids()
    labels = opened.cells(["label"])["label"].reindex(ids).astype(str).to_numpy()
    source = ExpressionSource(matrix=StoredMatrix(stored, genes), names=genes, obs=pd.DataFrame(index=ids.astype(str)))
    stream = ExpressionStream(source, plan_genes(genes, genes), "linear")  # StoredMatrix gives counts per 10,000
    what = "the atlas" if method is None else f"the {method} method"
    reporter.message(f"Fitting {what} on the {len(genes):,} genes the query shares with the atlas (kept for later queries)")
    stats = collect(stream.source, stream.plan, labels, kind=stream.scale, chunk=CHUNK, seed=settings.seed, reporter=reporter)
    fitted = fit_method(stats, labels, settings, resolver=GeneResolver(), reporter=reporter, device=device)
    embedder = fitted.embedder
    scores = calibrate_scores(fitted, stats, settings)
    vectors = stream.over(plan_genes(genes, embedder.genes)).embed(
        embedder, mean=embedder.mean, chunk=CHUNK, description="Embedding the atlas cells on the shared genes", reporter=reporter)
    index = CellIndex.build(vectors, ids, kind=settings.index, seed=settings.seed)
    linear = None
    if classifier:
        reporter.message("Fitting the linear classifier on the same genes")
        linear = fit_classifier(stats.sample[:, fitted.chosen], stats.sample_labels(labels), fitted.genes, seed=settings.seed)
    provenance = {**opened.provenance, "panel": {"key": folder.name, "n_genes": len(genes), "datasets": datasets,
                                                 "method": settings.method, "genes_sha256": sha256_text("\n".join(genes))}}
    staging = folder.parent / f"{STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
    staging.mkdir(parents=True)
    try:
        embedder.save(staging / EMBEDDER, provenance)
        index.save(staging / INDEX, provenance)
        if linear is not None:
            linear.save(staging / CLASSIFIER, provenance)
        meta = {"format": PANEL_FORMAT, "key": folder.name, "genes": genes, "datasets": datasets, "method": settings.method,
                "n_cells": len(ids),
                "atlas_genes": len(embedder.genes), "scores": scores, "provenance": provenance}
        (staging / PANEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / PANEL_FILE).is_file():  # another process finished first otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
