"""Why one cell got its label: its label scores, the reference cells that voted, and the markers.

The evidence comes from an :class:`~screader_db.results.AnnotationResult`, from an AnnData that
``to_adata`` wrote (``obsm['screader_scores']``, ``obsm['screader_neighbours']``,
``uns['screader']``), or, for a query not yet annotated, from annotating the whole query (label
propagation and the novelty check look at every cell, so one cell is never annotated alone).

Markers come from the atlas's label profiles (mean log expression per label): a label's markers
are the genes whose mean in the label most exceeds their mean over the other labels, among the
genes the query measures. A marker counts as expressed in the cell when the cell has any reads of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.errors import AtlasMismatchError
from screader_db.progress import SILENT, Reporter
from screader_db.results import (
    NEIGHBOURS_KEY,
    PREFIX,
    SCORE_PREFIX,
    SCORES_KEY,
    SIMILARITY_KEY,
    AnnotationResult,
    cell_position,
    neighbour_table,
)

TOP = 3
N_MARKERS = 10
MARKER_COLUMNS = ["label", "gene", "marker_mean", "cell_value", "expressed"]


@dataclass(frozen=True)
class Explanation:
    """The evidence behind one cell's call.

    ``scores``: the top labels and their vote shares (columns label, score), best first.
    ``neighbours``: the reference cells that voted (see :func:`~screader_db.results.neighbour_table`).
    ``markers``: for each top label, its reference markers (columns label, gene, marker_mean = mean
    log expression in the reference label, cell_value = the cell's log1p CP10k, expressed).
    ``call``: the cell's other per-cell values as annotated (score, confidence, margin, ...).
    """

    cell: str
    label: str
    raw_label: str
    unassigned_reason: str
    scores: pd.DataFrame
    neighbours: pd.DataFrame
    markers: pd.DataFrame
    call: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Evidence:
    position: int
    name: str
    row: dict[str, Any]
    scores: pd.Series
    ids: np.ndarray
    similarities: np.ndarray
    info: dict[str, Any]


def is_annotated(adata: Any) -> bool:
    """Whether ``adata`` carries the label scores and neighbours that ``AnnotationResult.to_adata`` writes."""
    return SCORES_KEY in adata.obsm and NEIGHBOURS_KEY in adata.obsm and "screader" in adata.uns


def _check_version(annotated: Any, opened: store.Atlas, what: str) -> None:
    if annotated is None or int(annotated) == opened.version:
        return
    message = (
        f"{what} was annotated against version {int(annotated)} of the atlas, and the atlas opened is version "
        f"{opened.version} ({opened.root}); the neighbours and scores belong to version {int(annotated)}. "
        f"Pass --version {int(annotated)} (Python: version={int(annotated)}), or annotate the query again"
    )
    raise AtlasMismatchError(message)


def _from_result(result: AnnotationResult, cell: str | int, opened: store.Atlas) -> _Evidence:
    _check_version(result.info.get("atlas_version"), opened, "the result")
    position = cell_position(result.table.index, cell)
    row = result.table.iloc[position]
    scores = result.label_scores.iloc[position]
    plain = {k: v for k, v in row.items() if not str(k).startswith(SCORE_PREFIX)}
    return _Evidence(position, str(result.table.index[position]), plain, scores, result.neighbour_ids[position],
                     result.neighbour_similarities[position], dict(result.info))


def _from_adata(adata: Any, cell: str | int, opened: store.Atlas) -> _Evidence:
    info = dict(adata.uns["screader"])
    _check_version(info.get("atlas_version"), opened, "the AnnData")
    position = cell_position(pd.Index(adata.obs_names.astype(str)), cell)
    row = {str(c)[len(PREFIX):]: adata.obs[c].iloc[position] for c in adata.obs.columns if str(c).startswith(PREFIX)}
    labels = [str(v) for v in np.asarray(info.get("score_labels", []))]
    scores = pd.Series(np.asarray(adata.obsm[SCORES_KEY][position], dtype=np.float32), index=labels)
    return _Evidence(position, str(adata.obs_names[position]), row, scores,
                     np.asarray(adata.obsm[NEIGHBOURS_KEY][position], dtype=np.int64),
                     np.asarray(adata.obsm[SIMILARITY_KEY][position], dtype=np.float32), info)


def label_profiles(opened: store.Atlas, level: str = "label") -> pd.DataFrame | None:
    """Labels × genes mean log expression of the atlas's reference (None when the atlas keeps no
    profiles). A label kept by several data sets is their cell-weighted mean; at the ``harmonised``
    level, labels are merged through the atlas's label map."""
    found = opened.profiles()
    if found is None:
        return None
    profiles = found[0]
    names = list(profiles.labels)
    if level == "harmonised":
        cells = opened.cells(["dataset", "label", "label_harmonised"]).drop_duplicates()
        if profiles.datasets:
            mapped = {(d, lab): h for d, lab, h in cells.itertuples(index=False)}
            names = [mapped.get((d, lab), lab) for d, lab in zip(profiles.datasets, profiles.labels, strict=True)]
        else:
            by_label = {lab: h for _, lab, h in cells.itertuples(index=False)}
            names = [by_label.get(lab, lab) for lab in names]
    weights = np.maximum(np.asarray(profiles.counts, dtype=np.float64), 1.0)
    sums = pd.DataFrame(profiles.means * weights[:, None], columns=profiles.genes).groupby(np.asarray(names)).sum()
    totals = pd.Series(weights).groupby(np.asarray(names)).sum()
    return sums.div(totals, axis=0)


def label_markers(profiles: pd.DataFrame, labels: list[str], *, n_markers: int = N_MARKERS,
                  genes: set[str] | None = None) -> pd.DataFrame:
    """The top ``n_markers`` genes of each of ``labels``: mean in the label minus the mean over the
    other labels' means, among ``genes`` when given (columns label, gene, marker_mean, lead)."""
    usable = profiles if genes is None else profiles.loc[:, [g for g in profiles.columns if g in genes]]
    rows = []
    n = len(usable)
    for label in labels:
        if label not in usable.index or usable.shape[1] == 0:
            continue
        inside = usable.loc[label].to_numpy()
        others = (usable.to_numpy().sum(axis=0) - inside) / max(n - 1, 1)
        lead = inside - others
        for j in np.argsort(-lead, kind="stable")[:n_markers]:
            if lead[j] > 0:
                rows.append({"label": label, "gene": str(usable.columns[j]), "marker_mean": float(inside[j]),
                             "lead": float(lead[j])})
    return pd.DataFrame(rows, columns=["label", "gene", "marker_mean", "lead"])


def cell_values(adata: Any, position: int, genes: list[str], *, info: dict[str, Any], layer: str | None = None,
                use_raw: bool | None = None, gene_key: str | None = None) -> tuple[pd.Series, set[str]]:
    """One cell's log1p CP10k over ``genes``, read on the scale the annotation detected, and the
    genes the query measures. ``layer``, ``use_raw`` and ``gene_key`` default to what the annotation read."""
    from screader_db.inputs import load_expression

    layer = layer if layer is not None else (str(info.get("layer") or "") or None)
    use_raw = bool(info.get("use_raw", False)) if use_raw is None else use_raw
    gene_key = gene_key if gene_key is not None else (str(info.get("gene_key") or "") or None)
    one = adata[position : position + 1]
    expression = load_expression(one, layer=layer, use_raw=use_raw, gene_key=gene_key,
                                 species=str(info.get("species", "auto")), target=genes,
                                 input_scale=str(info.get("input_kind") or "auto"))
    values = pd.Series(np.asarray(expression.X.todense()).ravel(), index=genes)
    return values, {s for s in expression.mapping.symbols if s}


def explain_cell(adata: Any, cell: str | int, atlas: str | Path | store.Atlas, *, result: AnnotationResult | None = None,
                 top: int = TOP, n_markers: int = N_MARKERS, version: int | None = None, layer: str | None = None,
                 use_raw: bool | None = None, gene_key: str | None = None,
                 reporter: Reporter = SILENT) -> Explanation:
    """The evidence behind the label of ``cell`` (an obs name or a position) of the query ``adata``.

    The scores and neighbours come from ``result`` when given, else from ``adata`` when it was
    written by ``AnnotationResult.to_adata`` (and annotated against this atlas version), else
    from annotating all of ``adata`` now. ``top`` labels are shown with ``n_markers`` markers each.
    """
    from screader_db.inputs import read_h5ad

    if isinstance(adata, str | Path):
        adata = read_h5ad(adata, backed=True)
    opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
    if result is None and is_annotated(adata):
        evidence = _from_adata(adata, cell, opened)
    else:
        if result is None:
            from screader_db.annotation import annotate

            result = annotate(adata, opened, layer=layer, use_raw=bool(use_raw), gene_key=gene_key, reporter=reporter)
        evidence = _from_result(result, cell, opened)
    level = str(evidence.info.get("level", "label"))
    neighbours = neighbour_table(opened, evidence.ids, evidence.similarities, level=level)
    ranked = evidence.scores.sort_values(ascending=False, kind="stable")
    shown = ranked[ranked > 0].head(max(top, 1))
    if shown.empty:
        shown = ranked.head(1)
    scores = pd.DataFrame({"label": shown.index.astype(str), "score": shown.to_numpy(dtype=np.float64)})
    markers = pd.DataFrame(columns=MARKER_COLUMNS)
    profiles = label_profiles(opened, level)
    if profiles is not None:
        genes = [str(g) for g in profiles.columns]
        values, measured = cell_values(adata, evidence.position, genes, info=evidence.info, layer=layer,
                                       use_raw=use_raw, gene_key=gene_key)
        found = label_markers(profiles, list(scores["label"]), n_markers=n_markers, genes=measured)
        found["cell_value"] = values.reindex(found["gene"]).to_numpy(dtype=np.float64)
        found["expressed"] = found["cell_value"] > 0
        markers = found[MARKER_COLUMNS]
    row = evidence.row
    call = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()
            if k not in ("label", "raw_label", "unassigned_reason")}
    return Explanation(cell=evidence.name, label=_text(row.get("label")), raw_label=_text(row.get("raw_label")),
                       unassigned_reason=_text(row.get("unassigned_reason")), scores=scores,
                       neighbours=neighbours, markers=markers, call=call)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
