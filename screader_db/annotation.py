"""Annotate query cells against an atlas: embed them the atlas's way, search, vote.

``annotate(adata, atlas)`` is the one call; the CLI's ``query`` command is a thin layer on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.errors import GeneOverlapError, ScreaderWarning
from screader_db.genes import looks_like_ensembl
from screader_db.inputs import align, load_expression, read_h5ad
from screader_db.metrics import UNASSIGNED
from screader_db.progress import SILENT, Reporter
from screader_db.results import AnnotationResult
from screader_db.vote import knn_vote

MIN_OVERLAP = 0.2
WARN_OVERLAP = 0.6
DEFAULT_K = 15


def _overlap_error(matched: int, n_atlas: int, names: list[str], mapping_how: dict[str, int]) -> GeneOverlapError:
    hint = ""
    if looks_like_ensembl(names) > 0.5:
        hint = " The query's genes look like Ensembl ids (ENSG...); if they did not map, pass --gene-key with a symbol column."
    elif names and sum(n[:1].isupper() and n[1:2].islower() for n in names[:500]) > 250:
        hint = " The names look like mouse symbols; pass --species mouse if they were not detected."
    message = (
        f"only {matched} of the atlas's {n_atlas:,} genes are in the query ({matched / n_atlas:.0%}; "
        f"at least {MIN_OVERLAP:.0%} is needed). Query genes mapped: {mapping_how}; first names: "
        f"{', '.join(names[:5])}.{hint}"
    )
    return GeneOverlapError(message)


def annotate(adata: Any, atlas: str | Path | store.Atlas, *, k: int = DEFAULT_K, layer: str | None = None,
             use_raw: bool = False, gene_key: str | None = None, species: str = "auto", model: str | None = None,
             center: str | None = None, min_score: float = 0.0, version: int | None = None,
             reporter: Reporter = SILENT) -> AnnotationResult:
    """Label every cell of ``adata`` (an AnnData or an .h5ad path) from its nearest atlas cells.

    ``model``, when given, is the gene-embedding model the caller expects; an atlas built with
    another one is refused. Cells whose vote share is below ``min_score`` become ``Unassigned``.
    The input AnnData is not changed.
    """
    if isinstance(adata, str | Path):
        adata = read_h5ad(adata)
    opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
    opened.check_model(model)
    embedder = opened.embedder
    reporter.message("Reading the query")
    expr = load_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species)
    X, matched = align(expr, embedder.genes)
    share = matched / len(embedder.genes)
    names = [str(v) for v in adata.var_names[:2000]]
    if share < MIN_OVERLAP:
        raise _overlap_error(matched, len(embedder.genes), names, expr.mapping.how)
    if share < WARN_OVERLAP:
        warnings.warn(f"only {matched} of the atlas's {len(embedder.genes):,} genes ({share:.0%}) are in the query; "
                      "labels may be less reliable", ScreaderWarning, stacklevel=2)
    with reporter.task("Embedding query cells", expr.n_cells, "cells") as advance:
        vectors = embedder.transform(X, center=center)
        advance(expr.n_cells)
    from screader_db.index import search

    with reporter.task("Searching the atlas", expr.n_cells, "cells") as advance:
        sims, ids = search(opened.index, vectors, k)
        advance(expr.n_cells)
    cells = opened.cells(["label"])
    vocabulary = sorted(cells["label"].unique())
    code_of = {label: i for i, label in enumerate(vocabulary)}
    codes_by_id = pd.Series(cells["label"].map(code_of).to_numpy(), index=cells.index)
    flat = ids.ravel()
    codes = np.where(flat >= 0, codes_by_id.reindex(flat).fillna(-1).to_numpy(), -1).astype(np.int64).reshape(ids.shape)
    vote = knn_vote(sims, codes, len(vocabulary))
    names_arr = np.asarray(vocabulary, dtype=object)
    raw = names_arr[vote.best]
    label = np.where(vote.score >= min_score, raw, UNASSIGNED)
    second = np.where(vote.second >= 0, names_arr[np.clip(vote.second, 0, None)], "")
    table = pd.DataFrame({
        "label": label.astype(object), "score": vote.score, "margin": vote.margin, "second_label": second.astype(object),
        "mean_similarity": vote.mean_similarity, "raw_label": raw.astype(object),
    }, index=pd.Index([str(i) for i in adata.obs_names], name=None))
    info = {
        "atlas": str(opened.root), "atlas_version": opened.version, "model_id": opened.model_id,
        "method": embedder.method, "k": int(min(k, sims.shape[1])), "genes_matched": int(matched),
        "genes_in_atlas": len(embedder.genes), "species": expr.mapping.species, "input_kind": expr.kind,
        "min_score": float(min_score),
    }
    return AnnotationResult(table=table, embeddings=vectors, neighbour_ids=ids, neighbour_similarities=sims,
                            atlas_labels=vocabulary, info=info)
