"""Annotate query cells against an atlas: embed them the atlas's way, search, vote.

``annotate(adata, atlas)`` is the one call; the CLI's ``query`` command is a thin layer on it.
The query is read in row chunks (a path is opened backed or lazily where its format allows,
:mod:`screader_db.input_files`), so its size is bounded by the results, not by the expression matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.calibration import confidence_of
from screader_db.classifier import blend, on_labels
from screader_db.confidence import agreement, cluster_agreement, combine
from screader_db.errors import InputDataError, ScreaderError
from screader_db.information import CellInformation, min_detected
from screader_db.input_files import open_input
from screader_db.inputs import (
    CHUNK,
    plan_genes,
)
from screader_db.label_families import Family, fold, replay
from screader_db.metrics import UNASSIGNED
from screader_db.options import AnnotateOptions
from screader_db.progress import SILENT, Reporter
from screader_db.query_input import Answering, PreparedQuery, embed_query, fit_to_panel, prepare_query
from screader_db.results import EMPTY, LOW_MARGIN, LOW_SCORE, NOVEL_POPULATION, SCORE_PREFIX, AnnotationResult
from screader_db.second_opinion import SecondOpinion, seek
from screader_db.vote import Vote, decide, propagate, query_graph, tally

# The label levels a query may vote at (the ``level`` option), and the atlas cells' column of each:
# the data sets' own labels (``fine`` is another name for ``label``), the label map's harmonised
# labels, the Cell Ontology terms' names and their broad classes (:mod:`screader_db.ontology`).
LEVELS = {"label": "label", "fine": "label", "harmonised": "label_harmonised", "ontology": "label_ontology",
          "broad": "label_broad"}
# What a cell's label is (the table's ``call_level``): the vote's label at the chosen level, the
# broad class its candidates share (:func:`parent_labels`), or Unassigned.
CALL_FINE, CALL_PARENT, CALL_UNASSIGNED = "fine", "parent", "unassigned"
MAP_SAMPLE = 50_000


def restrict(cells: pd.DataFrame, column: str, *, datasets: list[str] | None, labels: list[str] | None,
             exclude_labels: list[str] | None) -> pd.Index | None:
    """The atlas cells allowed to vote.

    Parameters
    ----------
    cells : pandas.DataFrame
        Atlas cells with their ``dataset`` and label ``column``, indexed by cell id.
    column : str
        The label column of the chosen level (:data:`LEVELS`).
    datasets, labels : list of str or None
        Keep only cells of these data sets, and with these labels.
    exclude_labels : list of str or None
        Leave out cells with these labels.

    Returns
    -------
    pandas.Index or None
        The ids of the cells kept; None when no filter is given (every cell may vote).

    Raises
    ------
    ScreaderError
        A data set or label the atlas does not have, or filters that leave no cell.
    """
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
               exclude_labels: list[str] | None = None, few_types: bool = False,
               reporter: Reporter = SILENT) -> tuple[Any, dict[str, Any]] | None:
    """Novel clusters of the query against the atlas's label profiles.

    Parameters
    ----------
    query : PreparedQuery
        The query (its informative cells).
    opened : Atlas
        The atlas, with its label profiles and novelty calibration.
    chunk : int
        Rows per chunk.
    cutoff : float or None
        The relative score's cut-off; None takes the atlas's calibrated one, and leaves that rule
        off where the calibration switched it off (the far-from-every-label rule still applies;
        the info's ``relative_check`` says why).
    datasets, labels, exclude_labels : list of str or None
        Restrict the profiles the same way they restrict the neighbours.
    few_types : bool
        The query holds only a few of the atlas's types (it was centred on the reference's centre plus
        its offset, :func:`screader_db.centring.matched_centre`): with ``cutoff`` None the relative
        score's rule is left off, since its clusters are parts of those few types and how well each
        matches a label against the others measures nothing (the far-from-every-label rule applies).
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    tuple of (NoveltyResult, dict) or None
        The result and its ``info`` entry; None when the atlas has no profiles, the filters
        leave none, or the query is too small to cluster.
    """
    import scipy.sparse as sp

    from screader_db.expression_stream import GeneMoments
    from screader_db.features import variable_from_moments
    from screader_db.inputs import sample_chunks
    from screader_db.novelty import DEFAULT_CUTOFF, FEW_TYPES_OFF, N_VARIABLE, SAMPLE_CELLS, stream_detect

    found = opened.profiles()
    n = query.source.n_cells
    if found is None or n < MIN_NOVELTY_CELLS:
        return None
    profiles, calibration = found
    relative_off = None
    if cutoff is None and not calibration.get("enabled", True):
        caught = float(calibration.get("hidden_caught", 0.0))
        relative_off = (f"the relative score's rule is switched off for this atlas: hiding a reference label "
                        f"caught {caught:.0%} of its cells when the atlas was built")
    elif cutoff is None and few_types:
        relative_off = FEW_TYPES_OFF
    profiles = _allowed_profiles(profiles, datasets, labels, exclude_labels)
    if not profiles.labels:
        return None
    # Profiles are log1p CP10k over every gene a cell measured: no panel library here.
    stream = query.stream.over(plan_genes(query.mapping.symbols, profiles.genes))
    chosen = None if relative_off else float(calibration.get("cutoff", DEFAULT_CUTOFF) if cutoff is None else cutoff)
    seed = int(opened.embedder.params.get("seed", 0))
    with reporter.task("Looking for populations the atlas lacks", n, "cells") as advance:
        # A query no larger than the sample is read once and kept, and every cell is clustered;
        # a larger one is read for the variable genes and to assign, and only its sample to cluster.
        # The sample's rows are taken in the same pass as the genes' moments.
        whole = n <= SAMPLE_CELLS
        chunks = stream.replayable(chunk) if whole else (lambda: stream.chunks(chunk))
        moments = GeneMoments(len(profiles.genes))

        def counted() -> Iterator[tuple[int, sp.csr_matrix]]:
            for start, block in chunks():
                moments.add(block)
                yield start, block

        sample = sample_chunks(counted, n, sample_cells=SAMPLE_CELLS, seed=seed)
        variable = variable_from_moments(*moments.mean_var(), moments.detected, N_VARIABLE)
        result = stream_detect(chunks, sample, n, profiles.genes, variable, profiles, cutoff=chosen, seed=seed)
        advance(n)
    info = {"checked": True, "cutoff": chosen, "calibrated": bool(calibration.get("calibrated", False)),
            "novel_cells": int(result.novel.sum()), **result.details}
    if relative_off:
        info["relative_check"] = relative_off
    return result, info


def reference_map_frame(opened: store.Atlas, column: str, seed: int = 0) -> pd.DataFrame | None:
    """The reference map's cells: positions and labels, a seeded sample of :data:`MAP_SAMPLE` from larger atlases.

    Parameters
    ----------
    opened : Atlas
        The opened version.
    column : str
        The label column (a level of :meth:`screader_db.store.Atlas.cells`).
    seed : int
        The sample's seed.

    Returns
    -------
    pandas.DataFrame or None
        Columns x, y and label, indexed by cell id; None when the atlas has no map.
    """
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
    stream = query.stream
    n = stream.n_cells
    information = CellInformation(n, query.plan.matched)
    with reporter.task("Checking which cells carry information", n, "cells") as advance:
        for start, block in stream.chunks(chunk):
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
        fill: Any = {"label": UNASSIGNED, "unassigned_reason": EMPTY, "call_level": CALL_UNASSIGNED}.get(
            column, "" if present.dtype == object else 0)
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


def _listed(names: tuple[str, ...] | None) -> list[str] | None:
    return list(names) if names else None


@contextmanager
def _query_data(adata: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """The query as an AnnData, and how its file was read: a path is opened (backed or lazily where its format
    allows, :func:`screader_db.input_files.open_input`) and closed again afterwards."""
    if not isinstance(adata, str | Path):
        yield adata, {}
        return
    with open_input(adata) as opened:
        yield opened.adata, opened.file.info()


@dataclass(frozen=True)
class Plan:
    """What an annotation votes with: the options, the atlas, its defaults filled in, and the
    atlas cells that may vote.

    Attributes
    ----------
    options : AnnotateOptions
        The checked options.
    atlas : Atlas
        The opened atlas.
    k, power, propagation : int, float, float
        The vote's settings: the options', else the atlas's.
    column : str
        The atlas cells' label column at the chosen level (:data:`LEVELS`).
    cells : pandas.DataFrame
        Data set and label of every atlas cell that may vote, indexed by cell id.
    allowed : pandas.Index or None
        Their ids, when the neighbour filter leaves some out.
    """

    options: AnnotateOptions
    atlas: store.Atlas
    k: int
    power: float
    propagation: float
    column: str
    cells: pd.DataFrame
    allowed: pd.Index | None

    @classmethod
    def of(cls, atlas: str | Path | store.Atlas, options: AnnotateOptions) -> Plan:
        """Open the atlas (unless given opened), check its model and version, and fill in its defaults.

        Parameters
        ----------
        atlas : str, Path or Atlas
            An atlas folder (opened at ``options.version``) or an opened atlas.
        options : AnnotateOptions
            Checked options.

        Returns
        -------
        Plan

        Raises
        ------
        ScreaderError
            The atlas is missing, of another model or version, or the neighbour filter leaves no cell.
        """
        opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas, version=options.version)
        if options.version is not None and options.version != opened.version:
            message = (f"version {options.version} of the atlas at {opened.root} was asked for, but the atlas given is "
                       f"version {opened.version}; open version {options.version}, or leave version out")
            raise ScreaderError(message)
        opened.check_model(options.model)
        defaults = opened.annotation_defaults()
        wanted = options.neighbours
        column = LEVELS[wanted.level]
        cells = opened.cells(["dataset", column])
        allowed = restrict(cells, column, datasets=_listed(wanted.datasets), labels=_listed(wanted.labels),
                           exclude_labels=_listed(wanted.exclude_labels))
        return cls(options=options, atlas=opened, k=int(defaults["k"] if options.k is None else options.k),
                   power=float(defaults["power"] if options.power is None else options.power),
                   propagation=float(defaults["propagation"] if options.propagation is None else options.propagation),
                   column=column, cells=cells if allowed is None else cells.loc[allowed], allowed=allowed)

    def vocabulary(self) -> list[str]:
        """The labels that can win, sorted: the level's labels of the atlas, or of the cells the neighbour filter keeps.

        Returns
        -------
        list of str
        """
        if self.allowed is None:
            return list(self.atlas.labels(self.column))  # a copy: the atlas keeps its own
        return sorted(self.cells[self.column].astype(str).unique())

    def families(self, vocabulary: list[str]) -> list[Family]:
        """The vote's labels with finer labels below them in the Cell Ontology (:mod:`screader_db.label_families`).

        Parameters
        ----------
        vocabulary : list of str
            The vote's labels, at the plan's level.

        Returns
        -------
        list of Family
            Empty when fewer than two labels have an ontology id or the ontology cannot be had.
        """
        from screader_db.label_families import families
        from screader_db.ontology import available_ontology

        known = self.atlas.label_terms(self.column)
        terms = [known.get(str(label), "") for label in vocabulary]
        if len(vocabulary) < 2 or sum(bool(term) for term in terms) < 2:
            return []
        ontology, _ = available_ontology()
        if ontology is None:
            return []
        return families(terms, {term: ontology.terms[term].ancestors for term in set(terms) if term in ontology.terms})


@dataclass(frozen=True)
class Prepared:
    """The query ready to embed: mapped onto the index that answers it, its empty cells set aside.

    Attributes
    ----------
    answering : Answering
        The embedder, index and score calibration that answer the query (the atlas's or a panel's).
    whole : PreparedQuery
        Every query cell.
    query : PreparedQuery
        The cells that carry information: those labelled.
    empty : numpy.ndarray
        Per cell of ``whole``: too empty to label.
    floor : int
        The fewest detected atlas genes a cell needs.
    matched : int
        Query genes matched to the atlas's own genes.
    min_score : float
        The score cut-off: the option's, else the answering index's calibrated one.
    """

    answering: Answering
    whole: PreparedQuery
    query: PreparedQuery
    empty: np.ndarray
    floor: int
    matched: int
    min_score: float


def prepare(plan: Plan, answering: Answering, *, matched: int, chunk: int = CHUNK,
            reporter: Reporter = SILENT) -> Prepared:
    """Set aside the query's cells too empty to label (:mod:`screader_db.information`).

    Parameters
    ----------
    plan : Plan
        The annotation's plan.
    answering : Answering
        What answers the query (:func:`fit_to_panel`).
    matched : int
        Query genes matched to the atlas's own genes.
    chunk : int
        Rows read per chunk.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    Prepared

    Raises
    ------
    InputDataError
        Every query cell is empty.
    """
    whole, scores, min_score = answering.query, answering.scores, plan.options.min_score
    floor = min_detected(scores)
    empty = _empty_cells(whole, floor, chunk=chunk, reporter=reporter)
    query = replace(whole, source=whole.source.subset(np.flatnonzero(~empty))) if empty.any() else whole
    return Prepared(answering=answering, whole=whole, query=query, empty=empty, floor=floor, matched=matched,
                    min_score=float(scores.get("min_score", 0.0) if min_score is None else min_score))


@dataclass(frozen=True)
class Neighbours:
    """Each informative query cell's nearest atlas cells that may vote, and the query's novel populations.

    Attributes
    ----------
    similarities, ids : numpy.ndarray
        Cells × k cosine similarities and atlas cell ids (-1: none).
    novel : tuple or None
        :func:`find_novel`'s answer; None when the check was off or could not run.
    probes : dict
        The approximate index's probes checked on the query (:meth:`CellIndex.check_probes`); empty
        when the index is exact, or the query small and the index checked before.
    """

    similarities: np.ndarray
    ids: np.ndarray
    novel: tuple[Any, dict[str, Any]] | None
    probes: dict[str, Any] = field(default_factory=dict)


def search_neighbours(plan: Plan, prepared: Prepared, vectors: np.ndarray, *, chunk: int = CHUNK,
                      few_types: bool = False, reporter: Reporter = SILENT) -> Neighbours:
    """Search the index for every cell's ``k`` nearest atlas cells; meanwhile look for novel populations.

    Parameters
    ----------
    plan : Plan
        The annotation's plan (``k``, the cells allowed, the novelty options).
    prepared : Prepared
        The prepared query.
    vectors : numpy.ndarray
        The informative cells' vectors (:func:`embed_query`).
    chunk : int
        Rows read per chunk by the novelty check.
    few_types : bool
        The query holds a few of the atlas's types (:func:`find_novel`).
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    Neighbours
    """
    from concurrent.futures import ThreadPoolExecutor

    options, wanted = plan.options, plan.options.neighbours
    allowed = None if plan.allowed is None else plan.allowed.to_numpy()

    index = prepared.answering.index
    probes: dict[str, Any] = {}

    def run_search() -> tuple[np.ndarray, np.ndarray]:
        with reporter.task("Searching the atlas", len(vectors), "cells") as advance:
            sims, ids, checked = index.search_checked(vectors, plan.k, allowed=allowed)
            advance(len(vectors))
        probes.update(checked)
        return sims, ids

    # The novelty check reads only the query's expression, so it runs while FAISS searches (which
    # releases the GIL): on a large query the two together take little more than the search.
    with ThreadPoolExecutor(max_workers=1) as pool:
        searching = pool.submit(run_search)
        novel = None
        if options.novelty:
            own_level = LEVELS[wanted.level] == "label"
            novel = find_novel(prepared.query, plan.atlas, chunk=chunk, cutoff=options.novelty_cutoff,
                               datasets=_listed(wanted.datasets), labels=_listed(wanted.labels) if own_level else None,
                               exclude_labels=_listed(wanted.exclude_labels) if own_level else None,
                               few_types=few_types, reporter=reporter)
        sims, ids = searching.result()
    return Neighbours(similarities=sims, ids=ids, novel=novel, probes=probes)


@dataclass(frozen=True)
class Votes:
    """The neighbours' vote of every informative query cell.

    Attributes
    ----------
    vocabulary : list of str
        The labels that could win, sorted; label codes index it.
    result : Vote
        Final label shares (after propagation), winner, runner-up, margin and mean similarity.
    knn_best : numpy.ndarray
        Each cell's best label among its own neighbours, before propagation.
    vote_confidence : numpy.ndarray
        The score's calibrated confidence.
    second_opinion : numpy.ndarray or None
        The share of the second method's vote that goes to each cell's label; None when skipped.
    agreement : numpy.ndarray or None
        The query graph's agreement with each cell's label; None for a query of two cells or fewer.
    evidence : numpy.ndarray or None
        The marker evidence of each call (:func:`weigh_evidence`); None until weighed, or without it.
    classifier : numpy.ndarray or None
        The linear classifier's probability of each cell's label; None without a classifier.
    cluster : numpy.ndarray or None
        The share of each cell's novelty-check cluster that got its label
        (:func:`screader_db.confidence.cluster_agreement`); None until the clusters are known, or without them.
    parents : dict of str to list of str
        Each label with finer labels below it in the Cell Ontology, and those labels.
    parents_folded : int
        Cells given a label below a parent label that the parent would have won
        (:mod:`screader_db.label_families`).
    """

    vocabulary: list[str]
    result: Vote
    knn_best: np.ndarray
    vote_confidence: np.ndarray
    second_opinion: np.ndarray | None = None
    agreement: np.ndarray | None = None
    evidence: np.ndarray | None = None
    classifier: np.ndarray | None = None
    cluster: np.ndarray | None = None
    parents: dict[str, list[str]] = field(default_factory=dict)
    parents_folded: int = 0

    @property
    def confidence(self) -> np.ndarray:
        """The vote's confidence combined with the query graph's agreement, the second opinion, the
        marker evidence and the cluster agreement, those the votes have
        (:func:`screader_db.confidence.combine`); the vote's own for a query of two cells or fewer."""
        if self.agreement is None:
            return self.vote_confidence
        return combine(self.vote_confidence, self.agreement, self.second_opinion, self.evidence, self.cluster)


def vote(plan: Plan, neighbours: Neighbours, vectors: np.ndarray, scores: dict[str, Any],
         second: SecondOpinion | None = None) -> Votes:
    """Tally the neighbours' labels (weight max(cos, 0)^power), smooth the shares over the query's
    own neighbour graph, blend in the linear classifier's probabilities (:mod:`screader_db.classifier`,
    fitted beside the second method) and decide each cell's label; its confidence weighs the second
    method's vote for that label when there is one.

    Parameters
    ----------
    plan : Plan
        The annotation's plan (``power``, ``propagation``, the cells' labels).
    neighbours : Neighbours
        The search's answer.
    vectors : numpy.ndarray
        The informative cells' vectors (for the query graph).
    scores : dict
        The answering index's score calibration.
    second : SecondOpinion or None
        The second method's neighbours (:func:`screader_db.second_opinion.seek`); None or skipped:
        the confidence's two-input form.

    Returns
    -------
    Votes
    """
    vocabulary = plan.vocabulary()
    sims = neighbours.similarities
    codes = _label_codes(plan, vocabulary, neighbours.ids)
    shares = tally(sims, codes, len(vocabulary), power=plan.power)
    knn_best = np.asarray(vocabulary, dtype=object)[shares.argmax(axis=1)]
    graph = query_graph(vectors) if len(vectors) > 2 else None
    if plan.propagation > 0 and graph is not None:
        shares = propagate(shares, graph, plan.propagation)
    classified = _classified(plan, vocabulary, second)
    # A parent label's votes go to the label below it with the most where the family's finer labels
    # hold enough of them (screader_db.label_families). The score the Unassigned rules read counts
    # the parent's votes a label took (they say "one of the labels below it"); the confidence and the
    # second opinion read the label's own votes: a call the parent's votes carried is a less certain
    # one (moving them into the confidence too cost 2 of the 14 suite tasks whose AUROC reached 0.85).
    hold = plan.options.parent_hold
    found = plan.families(vocabulary) if hold > 0 else []
    unfolded = blend(shares, classified)
    blended, moves = fold(unfolded, found, hold=hold)
    decided = decide(blended, sims, codes)
    chosen = None if classified is None else _at(classified, decided.best)
    own = _score(shares, chosen, decided.best)
    if moves:
        taken = None if classified is None else _at(replay(classified, moves), decided.best)
        decided = replace(decided, score=_score(replay(shares, moves), taken, decided.best))
    else:
        decided = replace(decided, score=own)
    vote_confidence = confidence_of(own, scores)
    opinion = None
    if second is not None and second.ids is not None and second.similarities is not None:
        other = tally(second.similarities, _label_codes(plan, vocabulary, second.ids), len(vocabulary), power=plan.power)
        opinion = _at(other, decided.best)
    agreeing = None if graph is None else agreement(graph, decided.best)
    return Votes(vocabulary=vocabulary, result=decided, knn_best=knn_best, vote_confidence=vote_confidence,
                 second_opinion=opinion, agreement=agreeing, classifier=chosen,
                 parents={vocabulary[f.parent]: [vocabulary[i] for i in f.below] for f in found},
                 parents_folded=int((unfolded.argmax(axis=1) != decided.best).sum()) if found else 0)


def _at(matrix: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Each row's entry at its label ``best`` (float32)."""
    return matrix[np.arange(len(matrix)), best].astype(np.float32)


def _score(shares: np.ndarray, chosen: np.ndarray | None, best: np.ndarray) -> np.ndarray:
    """The stronger of the two votes for each cell's label: the neighbours' share (the scale the score's
    cut-off and confidence map were calibrated on) or the classifier's probability ``chosen``."""
    share = _at(shares, best)
    return share if chosen is None else np.maximum(share, chosen)


def weigh_evidence(plan: Plan, prepared: Prepared, votes: Votes, *, chunk: int = CHUNK) -> Votes:
    """The votes with each call's marker evidence (:mod:`screader_db.call_evidence`) weighed into its confidence.

    Evidence needs the atlas's label profiles and a vote at the data sets' own labels (the level the
    profiles are kept at); otherwise, and for a query of two cells or fewer, the votes come back as they are.

    Parameters
    ----------
    plan : Plan
        The annotation's plan (the label level).
    prepared : Prepared
        The prepared query (its informative cells are read once more, over the few genes needed).
    votes : Votes
        The vote (:func:`vote`).
    chunk : int
        Rows read per chunk.

    Returns
    -------
    Votes
        With ``evidence`` (which its ``confidence`` then weighs).
    """
    from screader_db.call_evidence import evidence
    from screader_db.explain import label_profiles

    if LEVELS[plan.options.neighbours.level] != "label" or votes.agreement is None:
        return votes
    profiles = label_profiles(plan.atlas)
    if profiles is None:
        return votes
    names, decided = np.asarray(votes.vocabulary, dtype=object), votes.result
    called = names[decided.best]
    other = np.where(decided.second >= 0, names[np.clip(decided.second, 0, None)], "")
    return replace(votes, evidence=evidence(prepared.query, profiles, called, other, chunk=chunk))


def _classified(plan: Plan, vocabulary: list[str], second: SecondOpinion | None) -> np.ndarray | None:
    """The linear classifier's probabilities over the vote's labels, or None where there are none.

    At a label level other than the data sets' own, each class counts towards its cells' label at that
    level; a class whose cells carry more than one such label leaves the vote to the neighbours.
    """
    if second is None or second.probabilities is None:
        return None
    level = None
    if plan.column != "label":
        pairs = plan.atlas.cells(["label", plan.column]).astype(str).drop_duplicates()
        if pairs["label"].duplicated().any():
            return None
        level = dict(zip(pairs["label"], pairs[plan.column], strict=True))
    return on_labels(second.probabilities, second.classes, vocabulary, level)


def _label_codes(plan: Plan, vocabulary: list[str], ids: np.ndarray) -> np.ndarray:
    """The label code (in ``vocabulary``) of each neighbour in ``ids``; -1 for none (or a cell the plan leaves out).

    Only the neighbours' labels are looked up, so a query's cost does not grow with the atlas.
    """
    code_of = {label: i for i, label in enumerate(vocabulary)}
    flat = ids.ravel()
    labels = plan.cells[plan.column].reindex(flat)
    codes = pd.Series(labels.to_numpy(), dtype=object).map(code_of).fillna(-1).to_numpy()
    return np.where(flat >= 0, codes, -1).astype(np.int64).reshape(ids.shape)


@dataclass(frozen=True)
class Labelled:
    """The per-cell table of the informative cells, and what the novelty check and clustering found.

    Attributes
    ----------
    table : pandas.DataFrame
        The :class:`~screader_db.results.AnnotationResult` table's columns.
    novelty : dict
        The ``novelty`` entry of the result's info.
    clustering : str or None
        The majority-voting clustering algorithm, when it ran.
    """

    table: pd.DataFrame
    novelty: dict[str, Any]
    clustering: str | None


def label_parents(classes: dict[str, str], vocabulary: list[str]) -> list[str]:
    """The broad class above each label of a level: the most common ``label_broad`` of the atlas cells with it.

    Parameters
    ----------
    classes : dict
        Label -> its broad class (:meth:`screader_db.store.Atlas.label_classes`, which maps each
        broad class to itself at the broad level).
    vocabulary : list of str
        The level's labels.

    Returns
    -------
    list of str
        One per label; a label without a broad class is its own parent.
    """
    return [classes.get(label) or label for label in vocabulary]


def parent_labels(shares: np.ndarray, parents: list[str], *, min_score: float, min_margin: float) -> np.ndarray:
    """The parent answer of each cell: the broad class whose labels together pass the same cut-offs a label must.

    The vote shares of the labels under one broad class are added up; the class with the largest
    sum is the answer when that sum is at least ``min_score`` and leads the next class by at least
    ``min_margin``. A class over one label never passes where its label failed.

    Parameters
    ----------
    shares : numpy.ndarray
        Cells × labels vote shares.
    parents : list of str
        Each label's broad class (:func:`label_parents`).
    min_score, min_margin : float
        The cut-offs of a call.

    Returns
    -------
    numpy.ndarray of object
        The class's name per cell, "" where no class passes.
    """
    names, codes = np.unique(np.asarray(parents, dtype=object), return_inverse=True)
    if len(names) == len(parents) or not len(shares):
        return np.full(len(shares), "", dtype=object)
    members = np.zeros((len(parents), len(names)), dtype=np.float64)
    members[np.arange(len(parents)), codes] = 1.0
    grouped = np.asarray(shares, dtype=np.float64) @ members
    order = np.argsort(-grouped, axis=1, kind="stable")
    rows = np.arange(len(grouped))
    top = grouped[rows, order[:, 0]]
    second = grouped[rows, order[:, 1]] if len(names) > 1 else np.zeros(len(grouped))
    passed = (top >= min_score) & (top - second >= min_margin)
    return np.where(passed, names[order[:, 0]], "").astype(object)


def abstain(plan: Plan, prepared: Prepared, neighbours: Neighbours, votes: Votes, vectors: np.ndarray, *,
            reporter: Reporter = SILENT) -> Labelled:
    """Label each informative cell, or leave it Unassigned: a score below ``min_score``, a margin
    below ``min_margin``, or a novel population (less the flagged clusters whose distinguishing genes
    are their voted label's: :func:`screader_db.novelty.judge_genes`); add majority labels when
    asked, and why each Unassigned cell is.

    A cell set aside for its score or margin whose candidate labels share a broad class that passes
    both cut-offs (:func:`parent_labels`) is given that class instead (``call_level`` ``parent``);
    a novel population stays Unassigned.

    Parameters
    ----------
    plan : Plan
        The annotation's plan (``min_margin``, ``majority_voting``).
    prepared : Prepared
        The prepared query (its ``min_score`` and cells).
    neighbours : Neighbours
        The search's answer (its novel populations).
    votes : Votes
        The vote.
    vectors : numpy.ndarray
        The informative cells' vectors (for majority-voting clusters).
    reporter : Reporter
        Receives stage messages.

    Returns
    -------
    Labelled
    """
    options, decided, min_score = plan.options, votes.result, prepared.min_score
    found = neighbours.novel[0] if neighbours.novel is not None else None
    if found is not None and votes.agreement is not None:
        votes = replace(votes, cluster=cluster_agreement(found.cluster, decided.best))
    names_arr = np.asarray(votes.vocabulary, dtype=object)
    raw = names_arr[decided.best]
    called = (decided.score >= min_score) & (decided.margin >= options.min_margin)
    parents = label_parents(plan.atlas.label_classes(plan.column), votes.vocabulary)
    parent = parent_labels(decided.shares, parents, min_score=min_score, min_margin=options.min_margin)
    rescued = ~called & (parent != "")
    label = np.where(called, raw, np.where(rescued, parent, UNASSIGNED))
    second = np.where(decided.second >= 0, names_arr[np.clip(decided.second, 0, None)], "")
    table = pd.DataFrame({
        "label": label.astype(object), "score": decided.score, "confidence": votes.confidence,
        "vote_confidence": votes.vote_confidence, "margin": decided.margin, "second_label": second.astype(object),
        "mean_similarity": decided.mean_similarity, "raw_label": raw.astype(object), "knn_label": votes.knn_best,
    }, index=pd.Index([str(i) for i in prepared.query.source.obs.index]))
    after = table.columns.get_loc("vote_confidence") + 1
    for name, values in (("cluster_agreement", votes.cluster), ("classifier", votes.classifier),
                         ("marker_evidence", votes.evidence), ("second_opinion", votes.second_opinion)):
        if values is not None:
            table.insert(after, name, values)
    info_novelty: dict[str, Any] = {"checked": False}
    if neighbours.novel is not None:
        result, info_novelty = neighbours.novel
        if result is not None:
            from screader_db.novelty import judge_genes

            result = judge_genes(result, votes.knn_best)  # the neighbours' own labels, as the check weighs them
            judged = ("cluster_explained", "spared_clusters", "novel_clusters")
            info_novelty = {**info_novelty, **{key: result.details[key] for key in judged if key in result.details},
                            "novel_cells": int(result.novel.sum())}
            table["label"] = np.where(result.novel, UNASSIGNED, table["label"].to_numpy())
            table["novelty_cluster"] = pd.Categorical(result.cluster.astype(str))
            table["cluster_match"] = result.match
            table["novel"] = result.novel
    algorithm = None
    if options.majority_voting:
        from screader_db.clusters import cluster_cells, majority_labels

        reporter.message("Clustering the query for majority voting")
        clusters, algorithm = cluster_cells(vectors)
        majority, share = majority_labels(table["label"].to_numpy(), clusters)
        table["cluster"] = pd.Categorical(clusters.astype(str))
        table["majority_label"] = majority
        table["majority_share"] = share
    table["unassigned_reason"] = _unassigned_reasons(table, min_score=min_score, min_margin=options.min_margin)
    unassigned = (table["label"] == UNASSIGNED).to_numpy()
    table["call_level"] = np.where(unassigned, CALL_UNASSIGNED, np.where(rescued, CALL_PARENT, CALL_FINE)).astype(object)
    label_scores = pd.DataFrame(decided.shares.astype(np.float32), index=table.index,
                                columns=[SCORE_PREFIX + name for name in votes.vocabulary])
    return Labelled(table=pd.concat([table, label_scores], axis=1), novelty=info_novelty, clustering=algorithm)


def assemble(plan: Plan, prepared: Prepared, vectors: np.ndarray, neighbours: Neighbours, votes: Votes,
             labelled: Labelled, second: SecondOpinion | None = None) -> AnnotationResult:
    """The result: the table with the empty cells put back in their places, what was used, the
    neighbours, the vectors and the query's place on the reference map.

    Parameters
    ----------
    plan, prepared, vectors, neighbours, votes, labelled, second
        The earlier stages' answers (``second`` None: no second opinion was sought).

    Returns
    -------
    AnnotationResult
    """
    opened, options, answering, query = plan.atlas, plan.options, prepared.answering, prepared.query
    sims, ids, empty, read = neighbours.similarities, neighbours.ids, prepared.empty, options.read
    info = {
        "atlas": str(opened.root), "atlas_version": opened.version, "model_id": opened.model_id,
        "method": answering.embedder.method, "k": int(min(plan.k, sims.shape[1])), "genes_matched": int(prepared.matched),
        "genes_in_atlas": len(opened.embedder.genes), "panel": answering.panel, "species": query.mapping.species,
        "input_kind": query.kind, "input_scale_evidence": query.evidence,
        "min_score": float(prepared.min_score), "min_margin": float(options.min_margin), "level": options.neighbours.level,
        "power": plan.power, "propagation": plan.propagation, "novelty": labelled.novelty,
        "score_labels": list(votes.vocabulary), "empty_cells": int(empty.sum()), "min_detected_genes": prepared.floor,
        "layer": query.source.where.removeprefix("layers/") if query.source.where.startswith("layers/") else "",
        "use_raw": query.source.where == "raw/X", "gene_key": query.source.gene_key or "",
        "batch_key": read.batch_key or "",
        "second_opinion": second.info if second is not None else {"used": False, "reason": "not sought"},
        "parent_labels": {"hold": options.parent_hold, "families": votes.parents, "moved": votes.parents_folded},
    }
    if neighbours.probes:
        info["search_probes"] = neighbours.probes
    if options.majority_voting:
        info["clustering"] = labelled.clustering
    table, umap = labelled.table, _placement(opened, sims, ids)
    if empty.any():
        names = pd.Index([str(i) for i in prepared.whole.source.obs.index])
        table, (vectors, sims, ids, umap) = _with_empty_cells(table, (vectors, sims, ids, umap), empty, names)
    return AnnotationResult(table=table, embeddings=vectors, neighbour_ids=ids, neighbour_similarities=sims,
                            atlas_labels=votes.vocabulary, info=info, umap=umap,
                            reference_map=reference_map_frame(opened, plan.column), atlas=opened)


def annotate(adata: Any, atlas: str | Path | store.Atlas, *, options: AnnotateOptions | None = None,
             chunk: int = CHUNK, reporter: Reporter = SILENT, **flat_options: Any) -> AnnotationResult:
    """Label every cell of a query against an atlas.

    The stages, in order: plan (options and atlas defaults), read the query and choose what answers
    it (:func:`prepare_query`, :func:`fit_to_panel`), :func:`prepare`, :func:`embed_query`,
    :func:`search_neighbours`, :func:`second_opinion`, :func:`vote`, :func:`weigh_evidence`,
    :func:`abstain`, :func:`assemble`. The query is read in chunks; the input AnnData is not changed.

    Parameters
    ----------
    adata : AnnData, str or Path
        The query: an AnnData (in memory or backed), or the path of a file or folder in any format of
        :data:`screader_db.input_files.FORMATS` (an .h5ad read in backed mode), closed afterwards; the
        info then records ``input_format`` and ``input_format_evidence``.
    atlas : str, Path or Atlas
        An atlas folder, or an opened atlas.
    options : AnnotateOptions or None
        The options (:mod:`screader_db.options`); None: every default.
    chunk : int
        Query cells read at a time (bounds memory).
    reporter : Reporter
        Receives progress and stage messages.
    **flat_options
        Options by their flat names (``k=20``, ``min_score=0.5``, ``datasets=["a"]``; see
        :data:`screader_db.options.ANNOTATE_OPTIONS`), applied over ``options``.

    Returns
    -------
    AnnotationResult
        Labels, scores, neighbours, vectors and what was used.

    Raises
    ------
    ScreaderError
        An option that cannot work, an unknown option name, or a neighbour filter that leaves no cell.
    InputDataError
        The query cannot be read or labelled (the message says why); GeneOverlapError for too few shared genes.
    AtlasError
        The atlas is missing or damaged; ModelMismatchError when ``model`` is not the atlas's.
    """
    options = (options or AnnotateOptions()).updated(**flat_options)
    options.check()
    clock = StageClock()
    with _query_data(adata) as (data, source):
        with clock("read"):
            plan = Plan.of(atlas, options)
            read = options.read
            reporter.message("Reading the query")
            query = prepare_query(data, plan.atlas.embedder.genes, layer=read.layer, use_raw=read.use_raw,
                                  gene_key=read.gene_key, species=read.species, check_overlap=False,
                                  input_scale=read.input_scale, batch_key=read.batch_key)
            answering = fit_to_panel(query, plan.atlas, datasets=_listed(options.neighbours.datasets),
                                     reporter=reporter)
        with clock("prepare"):
            prepared = prepare(plan, answering, matched=query.plan.matched, chunk=chunk, reporter=reporter)
        fits: list[Any] = []
        with clock("embed"):
            vectors = embed_query(prepared.query, answering.embedder, center=options.center, chunk=chunk,
                                  reporter=reporter, fits=fits)
        with clock("search and novelty check"):
            few_types = bool(fits) and all(fit is not None and fit.better for fit in fits)
            neighbours = search_neighbours(plan, prepared, vectors, chunk=chunk, few_types=few_types, reporter=reporter)
        with clock("second opinion"):
            second = second_opinion(plan, prepared, chunk=chunk, reporter=reporter)
        with clock("vote"):
            votes = vote(plan, neighbours, vectors, answering.scores, second)
        with clock("marker evidence"):
            votes = weigh_evidence(plan, prepared, votes, chunk=chunk)
        with clock("abstain"):
            labelled = abstain(plan, prepared, neighbours, votes, vectors, reporter=reporter)
        with clock("assemble"):
            result = assemble(plan, prepared, vectors, neighbours, votes, labelled, second)
        result.info.update(source)
        if prepared.whole.source.held:
            result.info["input_format_evidence"] = (f"{result.info.get('input_format_evidence', '')}; stored dense or by "
                                                    "column, so read once into memory as a sparse matrix").lstrip("; ")
        result.info["centring"] = _centring(answering.embedder, prepared.query, options.center, fits)
        result.info["stage_seconds"] = clock.seconds
        return result


def second_opinion(plan: Plan, prepared: Prepared, *, chunk: int = CHUNK, reporter: Reporter = SILENT) -> SecondOpinion:
    """The second method's neighbours of the informative cells (:func:`screader_db.second_opinion.seek`), if asked for.

    Parameters
    ----------
    plan : Plan
        The annotation's plan (``k``, the cells allowed, the ``second_opinion`` option).
    prepared : Prepared
        The prepared query.
    chunk : int
        Rows read per chunk.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    SecondOpinion
        Its neighbours, or why there are none.
    """
    if not plan.options.second_opinion:
        return SecondOpinion(None, None, {"used": False, "reason": "switched off (second_opinion false)"})
    allowed = None if plan.allowed is None else plan.allowed.to_numpy()
    return seek(plan.atlas, prepared.query, plan.k, allowed=allowed, datasets=_listed(plan.options.neighbours.datasets),
                chunk=chunk, reporter=reporter)


_CENTRES = {"reference": "the reference's centre", "query": "the {whose}'s mean", "balanced": "the {whose}'s balanced mean"}


def _centring(embedder: Any, query: PreparedQuery, center: str | None, fits: list[Any]) -> dict[str, Any]:
    """The query info entry saying what the query was centred on (``info["centring"]``); for a query of
    several batches, what each batch was centred on (``batches``: name -> cells and centring)."""
    from screader_db.cell_embedding import LEARNED_METHODS

    if embedder.method in LEARNED_METHODS:
        return {"on": "nothing (a learned method does not centre)"}
    batches = query.batches()
    if len(batches) == 1:
        mode = embedder.centre_mode(query.stream.n_cells, center)
        return fits[0].describe() if fits else {"on": _CENTRES[mode].format(whose="query")}
    each = {}
    for (name, rows), fit in zip(batches, fits, strict=True):
        mode = embedder.centre_mode(len(rows), center)
        on = fit.describe("batch") if fit is not None else {"on": _CENTRES[mode].format(whose="batch")}
        each[name] = {"cells": len(rows), **on}
    return {"on": f"each batch's own centre ({len(batches)} batches of obs {query.batch_key!r})", "batches": each}


class StageClock:
    """Wall seconds of each named stage of an annotation (``info["stage_seconds"]``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the block as ``stage`` (added to what the stage already took)."""
        import time

        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - began, 4)
