"""Why one cell got its label: its label scores, the reference cells that voted, and the markers.

The evidence comes from an :class:`~screader_db.results.AnnotationResult`, from an AnnData that
``to_adata`` wrote (``obsm['<key_added>_scores']``, ``obsm['<key_added>_neighbours']``,
``uns['<key_added>']``, ``key_added="screader"`` by default), or, for a query not yet annotated,
from annotating the whole query (label propagation and the novelty check look at every cell, so
one cell is never annotated alone).

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
from screader_db.annotation import annotate
from screader_db.errors import AtlasMismatchError
from screader_db.inputs import load_expression, read_h5ad
from screader_db.progress import SILENT, Reporter
from screader_db.results import KEY_ADDED, SCORE_PREFIX, AdataKeys, AnnotationResult, cell_position, neighbour_table

TOP = 3
N_MARKERS = 10
MARKER_COLUMNS = ["label", "gene", "marker_mean", "cell_value", "expressed"]


@dataclass(frozen=True)
class Explanation:
    """The evidence behind one cell's call.

    Attributes
    ----------
    cell
        The cell's obs name.
    label, raw_label, unassigned_reason
        Its label, the winner before abstention, and why it is Unassigned ("" when it is not).
    scores
        The top labels and their vote shares (columns label, score), best first.
    neighbours
        The reference cells that voted (see :func:`~screader_db.results.neighbour_table`).
    markers
        For each top label, its reference markers (columns label, gene, marker_mean = mean log
        expression in the reference label, cell_value = the cell's log1p CP10k, expressed).
    call
        The cell's other per-cell values as annotated (score, confidence, margin, ...).
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


def is_annotated(adata: Any, *, key_added: str = KEY_ADDED) -> bool:
    """Whether ``adata`` carries the label scores and neighbours that ``AnnotationResult.to_adata`` writes.

    Parameters
    ----------
    adata
        An AnnData.
    key_added
        The prefix ``to_adata`` wrote under.

    Returns
    -------
    bool
        True when ``obsm['<key_added>_scores']``, ``obsm['<key_added>_neighbours']`` and
        ``uns['<key_added>']`` are all there.
    """
    keys = AdataKeys(key_added)
    return keys.scores in adata.obsm and keys.neighbours in adata.obsm and keys.uns in adata.uns


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


def _from_adata(adata: Any, cell: str | int, opened: store.Atlas, keys: AdataKeys) -> _Evidence:
    info = dict(adata.uns[keys.uns])
    _check_version(info.get("atlas_version"), opened, "the AnnData")
    position = cell_position(pd.Index(adata.obs_names.astype(str)), cell)
    prefix = keys.obs_prefix
    row = {str(c)[len(prefix):]: adata.obs[c].iloc[position] for c in adata.obs.columns if str(c).startswith(prefix)}
    labels = [str(v) for v in np.asarray(info.get("score_labels", []))]
    scores = pd.Series(np.asarray(adata.obsm[keys.scores][position], dtype=np.float32), index=labels)
    return _Evidence(position, str(adata.obs_names[position]), row, scores,
                     np.asarray(adata.obsm[keys.neighbours][position], dtype=np.int64),
                     np.asarray(adata.obsm[keys.similarity][position], dtype=np.float32), info)


def label_profiles(opened: store.Atlas, level: str = "label") -> pd.DataFrame | None:
    """Labels × genes mean log expression of the atlas's reference.

    Parameters
    ----------
    opened
        The atlas.
    level
        ``label`` (the data sets' own labels) or ``harmonised`` (merged through the atlas's label map).

    Returns
    -------
    pandas.DataFrame or None
        One row per label (a label kept by several data sets is their cell-weighted mean), one
        column per gene; None when the atlas keeps no profiles.
    """
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
    """The top marker genes of each of ``labels``, ranked by their lead over the other labels.

    Parameters
    ----------
    profiles
        Labels × genes mean log expression (:func:`label_profiles`).
    labels
        The labels to find markers for; labels not in ``profiles`` are skipped.
    n_markers
        Most markers per label.
    genes
        Only these genes (the ones the query measures); all when None.

    Returns
    -------
    pandas.DataFrame
        Columns label, gene, marker_mean (the gene's mean in the label) and lead (that mean minus
        the mean of the other labels' means); only genes with a positive lead.
    """
    from screader_db.novelty import leads

    usable = profiles if genes is None else profiles.loc[:, [g for g in profiles.columns if g in genes]]
    rows = []
    means = usable.to_numpy()
    lead_of = leads(means, np.ones(len(usable), dtype=bool)) if usable.shape[1] else None
    position = {label: i for i, label in enumerate(usable.index)}
    for label in labels:
        if label not in position or lead_of is None:
            continue
        inside, lead = means[position[label]], lead_of[position[label]]
        for j in np.argsort(-lead, kind="stable")[:n_markers]:
            if lead[j] > 0:
                rows.append({"label": label, "gene": str(usable.columns[j]), "marker_mean": float(inside[j]),
                             "lead": float(lead[j])})
    return pd.DataFrame(rows, columns=["label", "gene", "marker_mean", "lead"])


def cell_values(adata: Any, position: int, genes: list[str], *, info: dict[str, Any], layer: str | None = None,
                use_raw: bool | None = None, gene_key: str | None = None) -> tuple[pd.Series, set[str]]:
    """One cell's log1p CP10k over ``genes``, read on the scale the annotation detected.

    Parameters
    ----------
    adata
        The query.
    position
        The cell's row.
    genes
        Human gene symbols to read.
    info
        The annotation's info (:attr:`~screader_db.results.AnnotationResult.info`): species, input
        scale, and the layer, raw and gene column it read.
    layer, use_raw, gene_key
        Override what the annotation read.

    Returns
    -------
    values : pandas.Series
        The cell's values, indexed by ``genes`` (0 for genes the query lacks).
    measured : set of str
        The symbols the query measures.
    """
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
                 use_raw: bool | None = None, gene_key: str | None = None, key_added: str = KEY_ADDED,
                 reporter: Reporter = SILENT) -> Explanation:
    """The evidence behind the label of one cell of a query.

    Parameters
    ----------
    adata
        The query, or the path of its .h5ad (read backed).
    cell
        An obs name or a position.
    atlas
        The atlas (a folder or an opened one) the query was annotated against.
    result
        The query's annotation. When None, the scores and neighbours come from ``adata`` if
        ``to_adata`` wrote them there (under ``key_added``), else from annotating all of ``adata`` now.
    top
        How many labels to show.
    n_markers
        Markers shown per label.
    version
        The atlas version to open (default: the current one).
    layer, use_raw, gene_key
        Where the expression is read (default: what the annotation read).
    key_added
        The prefix ``to_adata`` wrote under.
    reporter
        Progress reporting when the query is annotated now.

    Returns
    -------
    Explanation
        The cell's label, top label scores, voting neighbours and markers.

    Raises
    ------
    CellNotFoundError
        When ``cell`` is not in the query.
    AtlasMismatchError
        When the annotation was made against another version of the atlas.
    """
    if isinstance(adata, str | Path):
        adata = read_h5ad(adata, backed=True)
    opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
    if result is None and is_annotated(adata, key_added=key_added):
        evidence = _from_adata(adata, cell, opened, AdataKeys(key_added))
    else:
        if result is None:
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
