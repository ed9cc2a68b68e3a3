"""Annotate query cells against an atlas: embed them the atlas's way, search, vote.

``annotate(adata, atlas)`` is the one call; the CLI's ``query`` command is a thin layer on it.
The query is read in row chunks (an .h5ad path is opened in backed mode), so its size is
bounded by the results, not by the expression matrix.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.calibration import confidence_of
from screader_db.confidence import agreement, combine
from screader_db.errors import GeneOverlapError, InputDataError, ScreaderError, ScreaderWarning
from screader_db.genes import GeneMapping, looks_like_ensembl
from screader_db.information import CellInformation, min_detected
from screader_db.inputs import (
    CHUNK,
    ExpressionSource,
    GenePlan,
    check_values,
    input_scale_of,
    map_genes,
    normalise,
    open_expression,
    plan_genes,
    read_h5ad,
)
from screader_db.metrics import UNASSIGNED
from screader_db.progress import SILENT, Reporter
from screader_db.results import EMPTY, LOW_MARGIN, LOW_SCORE, NOVEL_POPULATION, SCORE_PREFIX, AnnotationResult
from screader_db.vote import decide, propagate, query_graph, tally

MIN_OVERLAP = 0.2
WARN_OVERLAP = 0.6
# A query with fewer than this share of the atlas's genes is answered on a panel index.
PANEL_SHARE = 0.95
# The fewest shared genes a panel index is fitted on: with fewer, panels of the transfer suite fell to
# or below the accuracy of giving every cell the reference's most common label (benchmarks/panel_floor.py:
# Baron human -> mouse, 50 random variable genes: 0.453 against 0.479; 75 genes: 0.504; README).
MIN_PANEL_GENES = 75


def _names_hint(names: list[str], mapping: GeneMapping) -> str:
    """What the query's gene names look like, and how to fix the mapping, when too few match."""
    hint = f"How the query's {mapping.n_input:,} genes mapped: {mapping.how}; first names: {', '.join(names[:5])}."
    if looks_like_ensembl(names) > 0.5:
        hint += " The query's genes look like Ensembl ids (ENSG...); pass --gene-key with a var column of symbols."
    elif mapping.species == "human" and sum(n[:1].isupper() and n[1:2].islower() for n in names[:500]) > 100:
        hint += " Many names look like mouse symbols; pass --species mouse."
    return hint


def _overlap_error(matched: int, n_atlas: int, names: list[str], mapping: GeneMapping) -> GeneOverlapError:
    message = (
        f"only {matched} of the atlas's {n_atlas:,} genes are in the query ({matched / n_atlas:.0%}; "
        f"at least {MIN_OVERLAP:.0%} is needed). {_names_hint(names, mapping)}"
    )
    return GeneOverlapError(message)


def _check_overlap(plan: GenePlan, n_atlas: int, names: list[str], mapping: GeneMapping) -> None:
    share = plan.matched / n_atlas
    if share < MIN_OVERLAP:
        raise _overlap_error(plan.matched, n_atlas, names, mapping)
    if share < WARN_OVERLAP:
        warnings.warn(f"only {plan.matched} of the atlas's {n_atlas:,} genes ({share:.0%}) are in the query; "
                      "labels may be less reliable", ScreaderWarning, stacklevel=4)


@dataclass
class PreparedQuery:
    """A query source with its gene mapping onto the atlas genes, checked and ready to stream.

    ``library``, when set, is the plan whose genes the library sizes are taken over (a panel
    query is normalised over the genes it shares with the atlas, as the panel's reference is).
    """

    source: ExpressionSource
    mapping: GeneMapping
    plan: GenePlan
    kind: str
    library: GenePlan | None = None
    evidence: str = ""

    def chunks(self, size: int = CHUNK) -> Any:
        for start, block in self.source.chunks(size):
            check_values(block)
            yield start, normalise(block, self.kind, self.plan, library=self.library)

    def onto(self, genes: list[str], library: list[str] | None = None) -> PreparedQuery:
        """The same query mapped onto other atlas genes (library sizes over ``library`` genes if given)."""
        over = None if library is None else plan_genes(self.mapping.symbols, library)
        return replace(self, plan=plan_genes(self.mapping.symbols, genes), library=over)


def prepare_query(adata: Any, genes: list[str], *, layer: str | None = None, use_raw: bool = False,
                  gene_key: str | None = None, species: str = "auto", check_overlap: bool = True,
                  input_scale: str | None = None) -> PreparedQuery:
    """Open, map and check a query against the atlas genes (refusing too small an overlap unless
    ``check_overlap`` is off: the caller answers a partial panel another way). ``input_scale`` names
    the scale of the values (:data:`screader_db.inputs.SCALES`); ``auto`` or None detects it."""
    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key)
    mapping = map_genes(source, species=species)
    plan = plan_genes(mapping.symbols, genes)
    if check_overlap:
        _check_overlap(plan, len(genes), source.names, mapping)
    scale = input_scale_of(source, input_scale)
    return PreparedQuery(source=source, mapping=mapping, plan=plan, kind=scale.scale, evidence=scale.evidence)


@dataclass
class Answering:
    """What a query is answered with: the atlas's own embedder and index, or a panel's."""

    query: PreparedQuery
    embedder: Any
    index: Any
    scores: dict[str, Any]  # the score calibration: confidence map and default cut-off
    panel: dict[str, Any]  # whether a panel index was used, which, and whether it was reused


def fit_to_panel(query: PreparedQuery, opened: store.Atlas, *, datasets: list[str] | None = None,
                 reporter: Reporter = SILENT) -> Answering:
    """The atlas's own embedder and index, or, when the query lacks more than a few of the atlas's
    genes, the atlas re-fitted on the genes both share (a panel index, fitted once and kept in the
    atlas version, with its own score calibration; see :mod:`screader_db.builders.panel`). With
    ``datasets``, the panel is fitted on those data sets' cells alone, as an atlas of them would be."""
    from screader_db.cell_embedding import LEARNED_METHODS

    embedder = opened.embedder
    own = Answering(query, embedder, opened.index, opened.annotation_defaults()["scores"], {"used": False})
    if query.plan.matched >= PANEL_SHARE * len(embedder.genes):
        return own
    stored = opened.expression_genes(datasets)
    if not stored or embedder.method in LEARNED_METHODS:
        _check_overlap(query.plan, len(embedder.genes), query.source.names, query.mapping)
        return own
    shared = sorted(set(query.mapping.symbols) & set(stored))
    if len(shared) < MIN_PANEL_GENES:
        message = (
            f"the query shares only {len(shared)} genes with the atlas's reference ({len(stored):,} genes); at least "
            f"{MIN_PANEL_GENES} are needed (with fewer, panels in the transfer suite were labelled no better than by "
            f"giving every cell the most common label). Query with a file that measures more genes (the whole transcriptome rather than a "
            f"targeted panel), or check the gene names. {_names_hint(query.source.names, query.mapping)}"
        )
        raise GeneOverlapError(message)
    key = (*shared, "datasets:", *(sorted(datasets) if datasets else ["all"]))
    panel = opened.panels.get(key)
    if panel is None:
        from screader_db.builders.panel import open_panel

        panel = open_panel(opened, shared, datasets=datasets, reporter=reporter)
        opened.panels[key] = panel
    else:
        panel.reused = True
    warnings.warn(f"the query has {query.plan.matched} of the atlas's {len(embedder.genes):,} genes; it was answered on "
                  f"the {len(shared):,} genes it shares with the atlas's reference (panel index {panel.key}, "
                  f"{'reused' if panel.reused else 'fitted now and kept'})", ScreaderWarning, stacklevel=3)
    info = {"used": True, "key": panel.key, "shared_genes": len(shared), "reused": panel.reused,
            "panel_atlas_genes": len(panel.embedder.genes)}
    return Answering(query.onto(panel.embedder.genes, shared), panel.embedder, panel.index, panel.scores, info)


def embed_query(query: PreparedQuery, embedder: Any, *, center: str | None = None, chunk: int = CHUNK,
                reporter: Reporter = SILENT) -> np.ndarray:
    """Cell vectors of the whole query, centred the atlas's way (an extra pass when self-centred)."""
    from screader_db.centring import stream_centre

    n = query.source.n_cells
    mode = embedder.centre_mode(n, center)
    mean = stream_centre(embedder, mode, lambda: query.chunks(chunk), n, seed=int(embedder.params.get("seed", 0)))
    vectors = np.empty((n, embedder.dim), dtype=np.float32)
    with reporter.task("Embedding query cells", n, "cells") as advance:
        for start, block in query.chunks(chunk):
            vectors[start : start + block.shape[0]] = embedder.transform(block, mean=mean)
            advance(block.shape[0])
    return vectors


LEVELS = {"label": "label", "harmonised": "label_harmonised"}
MAP_SAMPLE = 50_000


def restrict(cells: pd.DataFrame, column: str, *, datasets: list[str] | None, labels: list[str] | None,
             exclude_labels: list[str] | None) -> pd.Index | None:
    """Cell ids allowed as neighbours, or None when every cell is."""
    if not datasets and not labels and not exclude_labels:
        return None
    keep = pd.Series(True, index=cells.index)
    for wanted, values, what in ((datasets, cells["dataset"], "data set"), (labels, cells[column], "label")):
        if wanted:
            unknown = sorted(set(wanted) - set(values))
            if unknown:
                known = ", ".join(sorted(set(values))[:20])
                message = f"the atlas has no {what} {', '.join(map(repr, unknown))}; known: {known}"
                raise ScreaderError(message)
            keep &= values.isin(wanted)
    if exclude_labels:
        keep &= ~cells[column].isin(exclude_labels)
    if not keep.any():
        raise ScreaderError("no atlas cells are left after --datasets/--labels/--exclude-labels; loosen the filters")
    return cells.index[keep.to_numpy()]


MIN_NOVELTY_CELLS = 100


def _allowed_profiles(profiles: Any, datasets: list[str] | None, labels: list[str] | None,
                      exclude_labels: list[str] | None) -> Any:
    """The label profiles of the data sets and (own-level) labels the query may be matched to."""
    keep = np.ones(len(profiles.labels), dtype=bool)
    if datasets and profiles.datasets:
        keep &= np.isin(np.asarray(profiles.datasets, dtype=object), datasets)
    if labels:
        keep &= np.isin(np.asarray(profiles.labels, dtype=object), labels)
    if exclude_labels:
        keep &= ~np.isin(np.asarray(profiles.labels, dtype=object), exclude_labels)
    return profiles if keep.all() else profiles.subset(keep)


def find_novel(query: PreparedQuery, opened: store.Atlas, *, chunk: int = CHUNK, cutoff: float | None = None,
               datasets: list[str] | None = None, labels: list[str] | None = None,
               exclude_labels: list[str] | None = None,
               reporter: Reporter = SILENT) -> tuple[Any, dict[str, Any]] | None:
    """Novel clusters of the query against the atlas's label profiles (None when the atlas has none,
    the filters leave none, or the query is too small to cluster; no result, with the reason, when
    the atlas's calibration switched the check off and no ``cutoff`` is given). ``datasets``, ``labels`` and
    ``exclude_labels`` restrict the profiles the same way they restrict the neighbours."""
    from screader_db.features import stream_moments, variable_from_moments
    from screader_db.novelty import DEFAULT_CUTOFF, N_VARIABLE, stream_detect

    found = opened.profiles()
    n = query.source.n_cells
    if found is None or n < MIN_NOVELTY_CELLS:
        return None
    profiles, calibration = found
    if cutoff is None and not calibration.get("enabled", True):
        caught = float(calibration.get("hidden_caught", 0.0))
        return None, {"checked": False, "reason": f"switched off for this atlas: hiding a reference label caught "
                                                   f"{caught:.0%} of its cells when the atlas was built"}
    profiles = _allowed_profiles(profiles, datasets, labels, exclude_labels)
    if not profiles.labels:
        return None
    plan = plan_genes(query.mapping.symbols, profiles.genes)

    def chunks() -> Any:
        for start, block in query.source.chunks(chunk):
            yield start, normalise(block, query.kind, plan)

    chosen = float(calibration.get("cutoff", DEFAULT_CUTOFF) if cutoff is None else cutoff)
    with reporter.task("Looking for populations the atlas lacks", n, "cells") as advance:
        mean, var, detected = stream_moments(chunks())
        variable = variable_from_moments(mean, var, detected, N_VARIABLE)
        result = stream_detect(chunks, n, profiles.genes, variable, profiles, cutoff=chosen,
                               seed=int(opened.embedder.params.get("seed", 0)))
        advance(n)
    info = {"checked": True, "cutoff": chosen, "calibrated": bool(calibration.get("calibrated", False)),
            "novel_cells": int(result.novel.sum()), **result.details}
    return result, info


def _reference_map(opened: store.Atlas, column: str, seed: int = 0) -> pd.DataFrame | None:
    layout = opened.layout()
    if layout is None:
        return None
    frame = layout.join(opened.cells([column]).rename(columns={column: "label"}))
    if len(frame) > MAP_SAMPLE:
        frame = frame.sample(MAP_SAMPLE, random_state=seed)
    return frame


def _placement(opened: store.Atlas, sims: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    from screader_db.layout import place

    layout = opened.layout()
    if layout is None:
        return None
    positions = layout.reindex(ids.ravel()).to_numpy(dtype=np.float32).reshape(ids.shape[0], ids.shape[1], 2)
    return place(sims, positions)


def _unassigned_reasons(table: pd.DataFrame, *, min_score: float, min_margin: float) -> np.ndarray:
    """Why each Unassigned cell is Unassigned ("" for labelled cells), the first rule that applies:
    its population matched no atlas label, its score was below ``min_score``, its margin below ``min_margin``.
    (Empty cells, reason ``empty``, are set aside before; see :func:`_with_empty_cells`.)"""
    unassigned = (table["label"] == UNASSIGNED).to_numpy()
    novel = table["novel"].to_numpy(dtype=bool) if "novel" in table else np.zeros(len(table), dtype=bool)
    low_score = (table["score"] < min_score).to_numpy()
    low_margin = (table["margin"] < min_margin).to_numpy()
    reason = np.select([novel, low_score, low_margin], [NOVEL_POPULATION, LOW_SCORE, LOW_MARGIN], default="")
    return np.where(unassigned, reason, "").astype(object)


def _empty_cells(query: PreparedQuery, floor: int, *, chunk: int, reporter: Reporter) -> np.ndarray:
    """Cells too empty to label (:mod:`screader_db.information`); refuses a query with no other cells."""
    n = query.source.n_cells
    information = CellInformation(n, query.plan.matched)
    with reporter.task("Checking which cells carry information", n, "cells") as advance:
        for start, block in query.chunks(chunk):
            information.add(start, block)
            advance(block.shape[0])
    empty = information.empty(floor)
    if empty.all():
        message = (f"all {n:,} query cells are empty: each detects fewer than {floor} of the atlas's genes or has the "
                   "same value on all of them. Check that the file holds expression (--layer, --use-raw) and that its "
                   "genes are named as the atlas's are (--gene-key)")
        raise InputDataError(message)
    return empty


def _with_empty_cells(table: pd.DataFrame, arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
                      empty: np.ndarray, names: pd.Index) -> tuple[pd.DataFrame, tuple[Any, ...]]:
    """The results of the informative cells with the empty ones put back in their places: Unassigned
    (reason ``empty``, confidence 0), no neighbours, zero scores and vectors, no map position."""
    n, rows = len(empty), np.flatnonzero(~empty)
    columns: dict[str, Any] = {}
    for column in table.columns:
        values = table[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = np.full(n, -1, dtype=values.cat.codes.dtype)
            codes[rows] = values.cat.codes.to_numpy()
            columns[column] = pd.Categorical.from_codes(codes, categories=values.cat.categories)
            continue
        present = values.to_numpy()
        fill: Any = {"label": UNASSIGNED, "unassigned_reason": EMPTY}.get(column, "" if present.dtype == object else 0)
        columns[column] = np.full(n, fill, dtype=present.dtype)
        columns[column][rows] = present
    full: list[np.ndarray | None] = []
    for values, fill in zip(arrays, (0.0, 0.0, -1, np.nan), strict=True):
        if values is None:
            full.append(None)
            continue
        out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
        out[rows] = values
        full.append(out)
    return pd.DataFrame(columns, index=names), tuple(full)


def _check_options(k: int, min_score: float | None, min_margin: float, novelty_cutoff: float | None) -> None:
    """Refuse option values that cannot work (no neighbours, NaN cut-offs), in the CLI's message style.
    Cut-offs outside [0, 1] are allowed here: above 1 sets every cell aside, below 0 none."""
    rules = [("k", k, k >= 1, "at least 1"), ("min_score", min_score, min_score is None or not math.isnan(min_score), "a number"),
             ("min_margin", min_margin, not math.isnan(min_margin), "a number"),
             ("novelty_cutoff", novelty_cutoff, novelty_cutoff is None or math.isfinite(novelty_cutoff), "a finite number")]
    for name, value, good, rule in rules:
        if not good:
            raise ScreaderError(f"{name} must be {rule}; got {value}")


def annotate(adata: Any, atlas: str | Path | store.Atlas, *, k: int | None = None, layer: str | None = None,
             use_raw: bool = False, gene_key: str | None = None, species: str = "auto", model: str | None = None,
             center: str | None = None, min_score: float | None = None, min_margin: float = 0.0, level: str = "label",
             majority_voting: bool = False,
             datasets: list[str] | None = None, labels: list[str] | None = None,
             exclude_labels: list[str] | None = None, power: float | None = None, propagation: float | None = None,
             novelty: bool = True, novelty_cutoff: float | None = None, version: int | None = None, chunk: int = CHUNK,
             input_scale: str | None = None, reporter: Reporter = SILENT) -> AnnotationResult:
    """Label every cell of ``adata`` (an AnnData, or an .h5ad path read in backed mode).

    ``model``, when given, is the gene-embedding model the caller expects; an atlas built with
    another one is refused. Cells whose vote share is below ``min_score`` (default: the atlas's
    calibrated cut-off) or whose margin to the runner-up is below ``min_margin`` become
    ``Unassigned``.
    ``level`` is ``label`` (each data set's own labels) or ``harmonised`` (through the atlas's
    label map). ``majority_voting`` adds the majority label of each query cluster beside the
    per-cell label. ``datasets``, ``labels`` and ``exclude_labels`` restrict which atlas cells
    may be neighbours (labels at the chosen level). ``k``, ``power`` (neighbour weight
    max(cos, 0)^power) and ``propagation`` (smoothing over the query's own neighbour graph, 0 =
    none) default to the atlas's annotation settings. With ``novelty`` (the default), query
    clusters that match no reference label (see :mod:`screader_db.novelty`) become
    ``Unassigned``; ``novelty_cutoff`` overrides the atlas's calibrated cut-off. ``input_scale``
    names the scale of the query's values (counts, ln, log2, log10, linear; default: detected). The
    input AnnData is not changed.
    """
    if level not in LEVELS:
        message = f"level must be one of {', '.join(LEVELS)}, got {level!r}"
        raise ScreaderError(message)
    if isinstance(adata, str | Path):
        adata = read_h5ad(adata, backed=True)
    opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=version)
    opened.check_model(model)
    defaults = opened.annotation_defaults()
    k = int(defaults["k"] if k is None else k)
    _check_options(k, min_score, min_margin, novelty_cutoff)
    power = float(defaults["power"] if power is None else power)
    propagation = float(defaults["propagation"] if propagation is None else propagation)
    column = LEVELS[level]
    cells = opened.cells(["dataset", column])
    allowed = restrict(cells, column, datasets=datasets, labels=labels, exclude_labels=exclude_labels)
    if allowed is not None:
        cells = cells.loc[allowed]
    reporter.message("Reading the query")
    query = prepare_query(adata, opened.embedder.genes, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species,
                          check_overlap=False, input_scale=input_scale)
    matched = query.plan.matched
    answering = fit_to_panel(query, opened, datasets=datasets, reporter=reporter)
    query, embedder, index, scores = answering.query, answering.embedder, answering.index, answering.scores
    min_score = float(scores.get("min_score", 0.0) if min_score is None else min_score)
    whole, floor = query, min_detected(scores)
    empty = _empty_cells(query, floor, chunk=chunk, reporter=reporter)
    query = replace(query, source=query.source.subset(np.flatnonzero(~empty))) if empty.any() else query
    vectors = embed_query(query, embedder, center=center, chunk=chunk, reporter=reporter)
    from screader_db.index import search

    def run_search() -> tuple[np.ndarray, np.ndarray]:
        with reporter.task("Searching the atlas", len(vectors), "cells") as advance:
            found = search(index, vectors, k, allowed=None if allowed is None else allowed.to_numpy())
            advance(len(vectors))
        return found

    # The novelty check reads only the query's expression, so it runs while FAISS searches (which
    # releases the GIL): on a large query the two together take little more than the search.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        searching = pool.submit(run_search)
        found_novel = None
        if novelty:
            own_level = level == "label"
            found_novel = find_novel(query, opened, chunk=chunk, cutoff=novelty_cutoff, datasets=datasets,
                                     labels=labels if own_level else None,
                                     exclude_labels=exclude_labels if own_level else None, reporter=reporter)
        sims, ids = searching.result()
    vocabulary = sorted(cells[column].unique())
    code_of = {label: i for i, label in enumerate(vocabulary)}
    codes_by_id = pd.Series(cells[column].map(code_of).to_numpy(), index=cells.index)
    flat = ids.ravel()
    codes = np.where(flat >= 0, codes_by_id.reindex(flat).fillna(-1).to_numpy(), -1).astype(np.int64).reshape(ids.shape)
    shares = tally(sims, codes, len(vocabulary), power=power)
    knn_best = np.asarray(vocabulary, dtype=object)[shares.argmax(axis=1)]
    graph = query_graph(vectors) if len(vectors) > 2 else None
    if propagation > 0 and graph is not None:
        shares = propagate(shares, graph, propagation)
    vote = decide(shares, sims, codes)
    vote_confidence = confidence_of(vote.score, scores)
    confidence = vote_confidence if graph is None else combine(vote_confidence, agreement(graph, vote.best))
    names_arr = np.asarray(vocabulary, dtype=object)
    raw = names_arr[vote.best]
    label = np.where((vote.score >= min_score) & (vote.margin >= min_margin), raw, UNASSIGNED)
    second = np.where(vote.second >= 0, names_arr[np.clip(vote.second, 0, None)], "")
    table = pd.DataFrame({
        "label": label.astype(object), "score": vote.score, "confidence": confidence, "vote_confidence": vote_confidence,
        "margin": vote.margin, "second_label": second.astype(object),
        "mean_similarity": vote.mean_similarity, "raw_label": raw.astype(object), "knn_label": knn_best,
    }, index=pd.Index([str(i) for i in query.source.obs.index]))
    info_novelty: dict[str, Any] = {"checked": False}
    if found_novel is not None:
        result, info_novelty = found_novel
        if result is not None:
            table["label"] = np.where(result.novel, UNASSIGNED, table["label"].to_numpy())
            table["novelty_cluster"] = pd.Categorical(result.cluster.astype(str))
            table["cluster_match"] = result.match
            table["novel"] = result.novel
    if majority_voting:
        from screader_db.clusters import cluster_cells, majority_labels

        reporter.message("Clustering the query for majority voting")
        clusters, algorithm = cluster_cells(vectors)
        majority, share = majority_labels(table["label"].to_numpy(), clusters)
        table["cluster"] = pd.Categorical(clusters.astype(str))
        table["majority_label"] = majority
        table["majority_share"] = share
    table["unassigned_reason"] = _unassigned_reasons(table, min_score=min_score, min_margin=min_margin)
    label_scores = pd.DataFrame(shares.astype(np.float32), index=table.index,
                                columns=[SCORE_PREFIX + name for name in vocabulary])
    table = pd.concat([table, label_scores], axis=1)
    info = {
        "atlas": str(opened.root), "atlas_version": opened.version, "model_id": opened.model_id,
        "method": embedder.method, "k": int(min(k, sims.shape[1])), "genes_matched": int(matched),
        "genes_in_atlas": len(opened.embedder.genes), "panel": answering.panel, "species": query.mapping.species, "input_kind": query.kind,
        "input_scale_evidence": query.evidence,
        "min_score": float(min_score), "min_margin": float(min_margin), "level": level, "power": power, "propagation": propagation,
        "novelty": info_novelty, "score_labels": list(vocabulary),
        "empty_cells": int(empty.sum()), "min_detected_genes": floor,
        "layer": layer or "", "use_raw": bool(use_raw), "gene_key": gene_key or "",
    }
    if majority_voting:
        info["clustering"] = algorithm
    umap = _placement(opened, sims, ids)
    if empty.any():
        names = pd.Index([str(i) for i in whole.source.obs.index])
        table, (vectors, sims, ids, umap) = _with_empty_cells(table, (vectors, sims, ids, umap), empty, names)
    return AnnotationResult(table=table, embeddings=vectors, neighbour_ids=ids, neighbour_similarities=sims,
                            atlas_labels=vocabulary, info=info, umap=umap,
                            reference_map=_reference_map(opened, column), atlas=opened)
