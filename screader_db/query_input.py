"""A query opened, mapped onto the atlas's genes and checked, and what it is answered with.

``prepare_query`` opens the query and maps its genes; ``fit_to_panel`` chooses the atlas's own
embedder and index, or a panel index when the query measures too few of the atlas's genes;
``embed_query`` streams the cell vectors. :func:`screader_db.annotation.annotate` runs them in turn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from screader_db import store
from screader_db.errors import GeneOverlapError, InputDataError, ScreaderWarning
from screader_db.expression_stream import ExpressionStream
from screader_db.genes import GeneMapping, looks_like_ensembl
from screader_db.inputs import (
    CHUNK,
    ExpressionSource,
    GenePlan,
    held_in_memory,
    input_scale_of,
    map_genes,
    open_expression,
    plan_genes,
)
from screader_db.progress import SILENT, Reporter

MIN_OVERLAP = 0.2
WARN_OVERLAP = 0.6
# A query with fewer than this share of the atlas's genes is answered on a panel index.
PANEL_SHARE = 0.95
# The fewest shared genes a panel index is fitted on: with fewer, panels of the transfer suite fell to
# or below the accuracy of giving every cell the reference's most common label (benchmarks/panel_floor.py:
# Baron human -> mouse, 50 random variable genes: 0.453 against 0.479; 75 genes: 0.504; README).
MIN_PANEL_GENES = 75
# An atlas gene whose mean log1p CP10k is below this in every label of the data sets a query is
# restricted to is silent there: a query lacking it is not short of it (silent_missing_genes).
SILENT_MEAN = 0.01


def _names_hint(source: ExpressionSource, mapping: GeneMapping) -> str:
    """What the query's gene names look like, and how to fix the mapping, when too few match."""
    names = source.names
    hint = f"How the query's {mapping.n_input:,} genes mapped: {mapping.how}; first names: {', '.join(names[:5])}."
    hint += source.columns_hint
    if looks_like_ensembl(names) > 0.5:
        hint += " The query's genes look like Ensembl ids (ENSG...); pass --gene-key with a var column of symbols."
    elif mapping.species == "human" and sum(n[:1].isupper() and n[1:2].islower() for n in names[:500]) > 100:
        hint += " Many names look like mouse symbols; pass --species mouse."
    return hint


def _overlap_error(matched: int, n_atlas: int, source: ExpressionSource, mapping: GeneMapping) -> GeneOverlapError:
    message = (
        f"only {matched} of the atlas's {n_atlas:,} genes are in the query ({matched / n_atlas:.0%}; "
        f"at least {MIN_OVERLAP:.0%} is needed). {_names_hint(source, mapping)}"
    )
    return GeneOverlapError(message)


def _check_overlap(plan: GenePlan, n_atlas: int, source: ExpressionSource, mapping: GeneMapping) -> None:
    share = plan.matched / n_atlas
    if share < MIN_OVERLAP:
        raise _overlap_error(plan.matched, n_atlas, source, mapping)
    if share < WARN_OVERLAP:
        warnings.warn(f"only {plan.matched} of the atlas's {n_atlas:,} genes ({share:.0%}) are in the query; "
                      "labels may be less reliable", ScreaderWarning, stacklevel=4)


@dataclass
class PreparedQuery:
    """A query source with its gene mapping onto the atlas genes, checked and ready to stream.

    Attributes
    ----------
    source : ExpressionSource
        The query's chosen matrix (all cells, or those kept).
    mapping : GeneMapping
        Its genes as human symbols.
    plan : GenePlan
        How its genes become the atlas's (or a panel's) genes.
    kind, evidence : str
        The scale of its values and why (:func:`screader_db.inputs.input_scale_of`).
    library : GenePlan or None
        The genes library sizes are taken over, when not all (a panel query is normalised over
        the genes it shares with the atlas, as the panel's reference is).
    batch_key : str or None
        The obs column naming each cell's batch, each centred on its own (:func:`embed_query`).
    """

    source: ExpressionSource
    mapping: GeneMapping
    plan: GenePlan
    kind: str
    library: GenePlan | None = None
    evidence: str = ""
    batch_key: str | None = None

    def batches(self) -> list[tuple[str, np.ndarray]]:
        """Each batch's name and its rows (positions among :attr:`source`'s cells), in order of first
        appearance; one batch of every cell without a :attr:`batch_key`.

        Returns
        -------
        list of (str, numpy.ndarray)
        """
        if self.batch_key is None:
            return [("", np.arange(self.source.n_cells))]
        names = self.source.obs[self.batch_key].astype(str).to_numpy()
        _, first, codes = np.unique(names, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        return [(str(names[first[code]]), np.flatnonzero(codes == code)) for code in order]

    @property
    def stream(self) -> ExpressionStream:
        """The query's cells as log-normalised chunks over :attr:`plan`'s genes."""
        return ExpressionStream(self.source, self.plan, self.kind, library=self.library, evidence=self.evidence)

    def chunks(self, size: int = CHUNK) -> Any:
        """(start, log-normalised block) for every ``size`` cells (:meth:`ExpressionStream.chunks`).

        Parameters
        ----------
        size : int
            Rows per chunk (default :data:`~screader_db.inputs.CHUNK`).

        Returns
        -------
        Iterator of (int, scipy.sparse.csr_matrix)
            Each chunk's first row and its float32 log1p(counts per 10,000) rows over :attr:`plan`'s
            genes; a chunk with NaN, infinite or negative values raises
            :class:`~screader_db.errors.InputDataError` when reached.
        """
        return self.stream.chunks(size)

    def onto(self, genes: list[str], library: list[str] | None = None) -> PreparedQuery:
        """The same query mapped onto other atlas genes (library sizes over ``library`` genes if given).

        Parameters
        ----------
        genes : list of str
            The new target genes.
        library : list of str or None
            Genes the library sizes are taken over; None takes every query gene.

        Returns
        -------
        PreparedQuery
        """
        over = None if library is None else plan_genes(self.mapping.symbols, library)
        return replace(self, plan=plan_genes(self.mapping.symbols, genes), library=over)


def prepare_query(adata: Any, genes: list[str], *, layer: str | None = None, use_raw: bool = False,
                  gene_key: str | None = None, species: str = "auto", check_overlap: bool = True,
                  input_scale: str | None = None, batch_key: str | None = None) -> PreparedQuery:
    """Open, map and check a query against the atlas genes.

    Parameters
    ----------
    adata : AnnData
        The query (in memory or backed).
    genes : list of str
        The atlas's genes.
    layer, use_raw, gene_key, species
        Which matrix and gene names are read, and how they map to human symbols.
    check_overlap : bool
        Refuse too small an overlap with ``genes``; off when the caller answers a partial panel
        another way.
    input_scale : str or None
        The scale of the values (:data:`screader_db.inputs.SCALES`); ``auto`` or None tells it
        (:func:`screader_db.inputs.input_scale_of`).
    batch_key : str or None
        An obs column naming each cell's batch: each batch is centred on its own (:func:`embed_query`).

    Returns
    -------
    PreparedQuery

    Raises
    ------
    GeneOverlapError
        Too few atlas genes are in the query (with ``check_overlap``).
    InputDataError
        The matrix, the genes, the values or the batch column are not usable; the message says why.
    """
    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species)
    if not source.obs.index.is_unique:
        repeated = int(source.obs.index.duplicated().sum())
        warnings.warn(f"{repeated:,} of the query's {source.n_cells:,} cell names repeat an earlier one; every result "
                      "keeps the query's cell order, but a table joined by name will not line up: make them unique "
                      "first (adata.obs_names_make_unique())", ScreaderWarning, stacklevel=3)
    if batch_key is not None:
        _check_batches(source, batch_key)
    mapping = map_genes(source, species=species)
    plan = plan_genes(mapping.symbols, genes)
    raw = None if use_raw or layer else getattr(adata, "raw", None)
    if raw is not None and raw.shape[1] > source.n_genes and plan.matched < PANEL_SHARE * len(genes):
        warnings.warn(f"the query's .X holds {source.n_genes:,} genes and its .raw {raw.shape[1]:,}: .X has "
                      f"{plan.matched:,} of the atlas's {len(genes):,}; pass --use-raw to read every gene of .raw",
                      ScreaderWarning, stacklevel=3)
    if check_overlap:
        _check_overlap(plan, len(genes), source, mapping)
    scale = input_scale_of(source, input_scale)
    return PreparedQuery(source=held_in_memory(source), mapping=mapping, plan=plan, kind=scale.scale,
                         evidence=scale.evidence, batch_key=batch_key)


def _check_batches(source: ExpressionSource, batch_key: str) -> None:
    """Refuse a batch column that is not in the query's obs, or that leaves cells without a batch."""
    if batch_key not in source.obs.columns:
        known = ", ".join(map(str, source.obs.columns)) or "none"
        message = f"--batch-key {batch_key!r} is not an obs column of the query; columns present: {known}"
        raise InputDataError(message)
    missing = int(source.obs[batch_key].isna().sum())
    if missing:
        message = (f"{missing:,} cells have no value in obs column {batch_key!r}; give them a batch, or leave out "
                   "--batch-key to centre the query as one")
        raise InputDataError(message)


@dataclass
class Answering:
    """What a query is answered with: the atlas's own embedder and index, or a panel's."""

    query: PreparedQuery
    embedder: Any
    index: Any
    scores: dict[str, Any]  # the score calibration: confidence map and default cut-off
    panel: dict[str, Any]  # whether a panel index was used, which, and whether it was reused


def silent_missing_genes(query: PreparedQuery, opened: store.Atlas, datasets: list[str] | None) -> int:
    """How many atlas genes the query lacks are silent in every label of the chosen data sets.

    With ``datasets`` (the ``--datasets`` restriction), an atlas gene that none of those data sets'
    labels expresses (none of them measures it, or its mean log1p CP10k is below :data:`SILENT_MEAN`
    in every label's profile) reads as 0
    in both the voting reference cells and a query that lacks it, so it does not count as missing: a
    blood query of a pancreas + blood atlas restricted to the blood data set is answered on the
    atlas's own index, not on a panel (README, "New cell types: refits").

    Parameters
    ----------
    query : PreparedQuery
        The query, mapped onto the atlas's genes.
    opened : Atlas
        The opened atlas.
    datasets : list of str or None
        The data sets whose cells may vote; None counts nothing as silent.

    Returns
    -------
    int
        Missing atlas genes silent in the chosen data sets (0 without ``datasets`` or label profiles).
    """
    profiles = opened.profiles() if datasets else None
    if datasets is None or profiles is None or not profiles[0].datasets:
        return 0
    found = np.asarray(query.plan.assign.sum(axis=0)).ravel() > 0
    genes = np.asarray(query.plan.genes, dtype=object)
    missing = genes[~found]
    labels = profiles[0]
    keep = np.isin(np.asarray(labels.datasets, dtype=object), list(datasets))
    if not keep.any():
        return 0
    measured = set(opened.expression_genes(datasets))
    position = {gene: i for i, gene in enumerate(labels.genes)}
    unmeasured = sum(1 for gene in missing if gene not in measured)  # 0 in every chosen reference cell
    columns = np.asarray([position[gene] for gene in missing if gene in measured and gene in position], dtype=np.int64)
    loudest = labels.means[keep][:, columns].max(axis=0) if len(columns) else np.zeros(0)
    return unmeasured + int((loudest < SILENT_MEAN).sum())


def fit_to_panel(query: PreparedQuery, opened: store.Atlas, *, datasets: list[str] | None = None,
                 reporter: Reporter = SILENT) -> Answering:
    """The atlas's own embedder and index, or a panel index when the query lacks more than a few of the atlas's genes.

    A panel index is the atlas re-fitted on the genes both share, fitted once and kept in the atlas
    version, with its own score calibration (see :mod:`screader_db.builders.panel`). It is used when
    the query has fewer than :data:`PANEL_SHARE` of the atlas's genes, the atlas keeps reference
    expression and its method is not a learned one; otherwise the atlas's own is used if the
    overlap is large enough. Using a panel warns (:class:`~screader_db.errors.ScreaderWarning`).

    Parameters
    ----------
    query : PreparedQuery
        The query, mapped onto the atlas's genes.
    opened : Atlas
        The opened atlas; panels it fits or reads are kept in ``opened.panels`` for later queries.
    datasets : list of str or None
        Fit the panel on these data sets' cells alone, as an atlas of them would be; None: every data set.
    reporter : Reporter
        Receives the progress of a panel fit.

    Returns
    -------
    Answering
        The query (re-mapped onto the panel's genes, normalised over the shared genes, when a panel
        is used), embedder, index, score calibration and the ``panel`` info entry.

    Raises
    ------
    GeneOverlapError
        Too few atlas genes are in the query for the atlas's own embedder, or fewer than
        :data:`MIN_PANEL_GENES` shared genes for a panel.
    AtlasError
        A kept panel is unreadable or of another format.
    """
    from screader_db.cell_embedding import LEARNED_METHODS

    embedder = opened.embedder
    own = Answering(query, embedder, opened.index, opened.annotation_defaults()["scores"], {"used": False})
    if query.plan.matched >= PANEL_SHARE * len(embedder.genes):
        return own
    silent = silent_missing_genes(query, opened, datasets)
    if silent and query.plan.matched + silent >= PANEL_SHARE * len(embedder.genes):
        return replace(own, panel={"used": False, "silent_missing_genes": silent})
    stored = opened.expression_genes(datasets)
    if not stored or embedder.method in LEARNED_METHODS:
        _check_overlap(query.plan, len(embedder.genes), query.source, query.mapping)
        return own
    shared = sorted(set(query.mapping.symbols) & set(stored))
    if len(shared) < MIN_PANEL_GENES:
        message = (
            f"the query shares only {len(shared)} genes with the atlas's reference ({len(stored):,} genes); at least "
            f"{MIN_PANEL_GENES} are needed (with fewer, panels in the transfer suite were labelled no better than by "
            f"giving every cell the most common label). Query with a file that measures more genes (the whole transcriptome rather than a "
            f"targeted panel), or check the gene names. {_names_hint(query.source, query.mapping)}"
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
                reporter: Reporter = SILENT, fits: list[Any] | None = None, passes: Any = None) -> np.ndarray:
    """Cell vectors of the whole query, centred the atlas's way (an extra pass when self-centred).

    Parameters
    ----------
    query : PreparedQuery
        The query, mapped onto the embedder's genes.
    embedder : CellEmbedder
        The atlas's (or a panel's) embedder.
    center : str or None
        How the query is centred (``query``, ``balanced``, ``reference``, ``auto``); None takes
        the embedder's own.
    chunk : int
        Rows per chunk.
    reporter : Reporter
        Receives the progress.
    fits : list or None
        Receives how the query's clusters matched the labels, when the query centres itself
        (:class:`screader_db.centring.OffsetFit`).
    passes : callable or None
        The query's chunks, for a caller that reads them again (:meth:`ExpressionStream.replayable`);
        None reads them. Not used for a query of several batches (:attr:`PreparedQuery.batch_key`):
        each batch is read, centred (``center`` decided on its own size) and embedded on its own, as
        if it were queried alone, and ``fits`` receives one entry a batch, in the order of
        :meth:`PreparedQuery.batches` (None for a batch whose clusters were not matched).

    Returns
    -------
    numpy.ndarray
        float32, cells × ``embedder.dim``.
    """
    batches = query.batches()
    if len(batches) == 1:
        return query.stream.embed(embedder, center=center, chunk=chunk, description="Embedding query cells",
                                  reporter=reporter, fits=fits, passes=passes)
    vectors = np.empty((query.stream.n_cells, embedder.dim), dtype=np.float32)
    for name, rows in batches:
        own: list[Any] = []
        vectors[rows] = query.stream.subset(rows).embed(embedder, center=center, chunk=chunk, reporter=reporter,
                                                        description=f"Embedding query cells of {name}", fits=own)
        if fits is not None:
            fits.append(own[0] if own else None)
    return vectors
