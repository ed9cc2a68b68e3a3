"""Cell search: the atlas cells most like a query, with their data set, label and metadata.

``search(atlas, ...)`` takes one query of four kinds and returns a :class:`SearchResult`:

- query cells (an AnnData or a file of any input format), embedded as :func:`~screader_db.annotate` embeds
  them (mapped onto the atlas's genes, answered on a panel index when they lack some, empty cells
  set aside); each cell is a query;
- atlas cells by id: each cell's stored vector is a query, so the cell itself comes first;
- the centroid of atlas cells (by ids or by label): the mean of their stored vectors, scaled back
  to unit length as every cell vector is (:func:`~screader_db.cell_embedding.l2_normalise`);
- a gene signature (genes with weights): one pseudo-cell (:func:`signature_vector`).

The filters (data sets, labels, a read-only SQL condition over the ``cells`` view) are resolved
to the ids of the cells that meet them all, and the FAISS search is restricted to those ids (an
id selector inside the search, :meth:`~screader_db.index.CellIndex.search`): a hit always meets
the filters, and the hits are the nearest cells among those that do, not what an unfiltered top
k keeps after filtering.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import store
from screader_db.errors import InputDataError, ScreaderError, ScreaderWarning, SqlError
from screader_db.gene_signatures import read_signature, signature_vector
from screader_db.options import SearchOptions
from screader_db.progress import SILENT, Reporter

HIT_COLUMNS = ("query", "rank", "cell_id", "similarity", "dataset", "barcode", "label", "label_harmonised",
               "ontology_id", "donor", "metadata")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
QUERY_FLAGS = "--cells, --ids, --centroid-of-ids, --centroid-of-label or --signature"
WHERE_EXAMPLE = "\"metadata->>'donor' = 'D3'\""
SHOWN = 5  # ids or genes named in a message
# With an IVF index, filters that leave at most this many cells are searched exactly over them
# (filtered_search): 100 queries over 100,000 vectors of 573 floats take 0.38 s on 2 cores
# (index.exact_search), one query 37 ms.
EXACT_ALLOWED = 100_000


@dataclass(frozen=True)
class Query:
    """Query vectors ready to search.

    Attributes
    ----------
    names : list of str
        One name per query (a query cell's name, an atlas cell id, ``centroid`` or ``signature``).
    vectors : numpy.ndarray
        Unit float32 rows, one per query, in the space of ``index``.
    index : CellIndex
        The index that answers them: the atlas's, or a panel's for query cells lacking genes.
    info : dict
        What the query was and what was used to make it.
    """

    names: list[str]
    vectors: np.ndarray
    index: Any
    info: dict[str, Any]


@dataclass(frozen=True)
class SearchResult:
    """The atlas cells found for each query.

    Attributes
    ----------
    hits : pandas.DataFrame
        One row per (query, hit), by query then rank, with the columns of :data:`HIT_COLUMNS`:
        ``query`` (its name), ``rank`` (1 = most similar), ``cell_id``, ``similarity`` (cosine),
        the hit's ``dataset``, ``barcode``, ``label``, ``label_harmonised``, ``ontology_id``,
        ``donor`` ("" when none is recorded) and ``metadata`` (the reference's obs values, JSON text).
    info : dict
        What was searched: the atlas and version, the query kind and number of queries, ``k``,
        the filters and how many cells they leave, the index kind, the search time, and what each
        kind of query used (signature genes used and missing; query cells' empty cells, genes
        matched and panel).
    """

    hits: pd.DataFrame
    info: dict[str, Any]

    def to_frame(self, *, flatten: bool = False) -> pd.DataFrame:
        """The hits as a new DataFrame.

        Parameters
        ----------
        flatten : bool
            Spread the ``metadata`` JSON into one column per key, named ``metadata.<key>``, in
            place of the ``metadata`` column.

        Returns
        -------
        pandas.DataFrame
            A copy of :attr:`hits`.
        """
        frame = self.hits.copy()
        if not flatten:
            return frame
        records = [json.loads(text) if text else {} for text in frame["metadata"]]
        spread = pd.DataFrame.from_records(records, index=frame.index).add_prefix("metadata.")
        return pd.concat([frame.drop(columns="metadata"), spread], axis=1)

    def summary(self) -> pd.DataFrame:
        """Hits per label, over every query.

        Returns
        -------
        pandas.DataFrame
            Indexed by label, most hits first: ``hits``, ``share`` of all hits and ``mean_similarity``.
        """
        grouped = self.hits.groupby("label", sort=False)["similarity"]
        frame = pd.DataFrame({"hits": grouped.size(), "mean_similarity": grouped.mean().astype(float)})
        frame.insert(1, "share", frame["hits"] / max(len(self.hits), 1))
        return frame.sort_values(["hits", "mean_similarity"], ascending=False)

    def write(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the hits as CSV, TSV or Parquet (by extension), through a temporary file.

        Parameters
        ----------
        path : str or Path
            Ends in ``.csv``, ``.tsv`` or ``.parquet``.
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        Path
            The file written.

        Raises
        ------
        InputDataError
            Another extension.
        OutputExistsError
            The file exists and ``overwrite`` is false.
        """
        from screader_db.outputs import atomic_write, refuse_existing

        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            message = f"unknown table format {target.suffix!r} for {target}; use .csv, .tsv or .parquet"
            raise InputDataError(message)
        refuse_existing(target, overwrite=overwrite)
        with atomic_write(target) as tmp:
            if suffix == ".parquet":
                self.hits.to_parquet(tmp, index=False)
            else:
                self.hits.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
        return target

    def to_payload(self) -> dict[str, Any]:
        """The result as JSON values (the server's answer).

        Returns
        -------
        dict
            ``{"hits": [{"query": ..., "rank": ..., ..., "metadata": {...}}, ...], "info": {...}}``.
        """
        records = self.hits.to_dict("records")
        for record in records:
            record["metadata"] = json.loads(record["metadata"]) if record["metadata"] else {}
            record["similarity"] = float(record["similarity"])
        return {"hits": json.loads(json.dumps(records, default=_json_value)),
                "info": json.loads(json.dumps(self.info, default=_json_value))}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SearchResult:
        """The result of the server's answer (the inverse of :meth:`to_payload`).

        Parameters
        ----------
        payload : dict
            As :meth:`to_payload` makes it.

        Returns
        -------
        SearchResult
        """
        frame = pd.DataFrame.from_records(payload.get("hits", []), columns=list(HIT_COLUMNS))
        frame["metadata"] = [json.dumps(value or {}) for value in frame["metadata"]]
        frame = frame.astype({"rank": np.int64, "cell_id": np.int64, "similarity": np.float32})
        return cls(hits=frame, info=dict(payload.get("info", {})))


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def search(atlas: str | Path | store.Atlas, *, cells: Any = None, ids: Any = None, centroid_of: Any = None,
           signature: Any = None, options: SearchOptions | None = None, reporter: Reporter = SILENT,
           **flat_options: Any) -> SearchResult:
    """The atlas cells most like a query, each with its similarity, data set, label and metadata.

    Give exactly one query: ``cells``, ``ids``, ``centroid_of`` or ``signature``.

    Parameters
    ----------
    atlas : str, Path or Atlas
        An atlas folder (its current version) or an opened atlas.
    cells : AnnData, str or Path
        Query cells, each a query; a path (any format :func:`~screader_db.input_files.open_input`
        reads: .h5ad, zarr, 10x, Matrix Market, loom, CSV/TSV) is opened and closed afterwards.
    ids : sequence of int
        Atlas cell ids, each a query (its stored vector).
    centroid_of : sequence of int, or str
        Atlas cell ids, or a label (every atlas cell with that label): one query, their centroid.
    signature : mapping, DataFrame, Series, sequence, str or Path
        Genes with weights: a mapping gene -> weight, a two-column table (gene, weight), a
        Series indexed by gene, gene names (weight 1), text such as ``'CD19:1,MS4A1:1'``, or a
        file of gene and weight columns (:func:`read_signature`). One query (:func:`signature_vector`).
    options : SearchOptions or None
        The options (:mod:`screader_db.options`); None: every default.
    reporter : Reporter
        Receives progress and stage messages.
    **flat_options
        Options by their flat names (``k=50``, ``where="label = 'B'"``; see
        :data:`screader_db.options.SEARCH_OPTIONS`), applied over ``options``.

    Returns
    -------
    SearchResult
        The hits of every query and what was searched.

    Raises
    ------
    ScreaderError
        Not exactly one query, an unknown option, cell id, data set or label, or filters that
        leave no cell.
    SqlError
        The ``where`` condition is not one read-only SQL condition, or it fails or runs too long.
    InputDataError
        A signature or query cells that cannot be read; GeneOverlapError when none of a
        signature's genes, or too few of the query cells' genes, are atlas genes.
    AtlasError
        The atlas is missing or damaged.
    """
    options = (options or SearchOptions()).updated(**flat_options)
    options.check()
    given = [flag for flag, value in (("--cells", cells), ("--ids", ids), ("--centroid-of-ids or --centroid-of-label",
                                                                            centroid_of), ("--signature", signature))
             if value is not None]
    if len(given) != 1:
        message = f"give exactly one query: {QUERY_FLAGS}; got {' and '.join(given) if given else 'none'}"
        raise ScreaderError(message)
    opened = atlas if isinstance(atlas, store.Atlas) else store.open_atlas(atlas)
    allowed = allowed_cells(opened, options)
    stored = StoredVectors(opened)
    if cells is not None:
        query = query_cells(opened, cells, options=options, reporter=reporter)
    elif ids is not None:
        query = query_ids(opened, ids, stored=stored)
    elif centroid_of is not None:
        query = query_centroid(opened, centroid_of, stored=stored)
    else:
        query = query_signature(opened, signature, species=options.read.species)
    began = time.perf_counter()
    with reporter.task("Searching the atlas", len(query.vectors), "queries") as advance:
        own = query.index is opened.index  # a panel index's vectors are not the atlas's stored ones
        sims, found, exact = filtered_search(query.index, query.vectors, options.k, allowed, stored if own else None)
        advance(len(query.vectors))
    seconds = time.perf_counter() - began
    hits = hit_table(opened, query.names, sims, found)
    searched = len(allowed) if allowed is not None else int(query.index.ntotal)
    info = {"atlas": str(opened.root), "atlas_version": opened.version, **query.info, "k": options.k,
            "datasets": _names(options.datasets), "labels": _names(options.labels), "where": options.where or None,
            "searched_cells": int(searched), "index": query.index.kind, "searched_exactly": exact,
            "search_seconds": round(seconds, 6)}
    return SearchResult(hits=hits, info=info)


def filtered_search(index: Any, vectors: np.ndarray, k: int, allowed: np.ndarray | None,
                    stored: StoredVectors | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The top ``k`` of each query among the ``allowed`` cells.

    An exact (``flat``) index is searched with an id selector, which keeps the allowed cells inside
    the search. An IVF index scans only the lists nearest each query, and a selector keeps the
    allowed cells of those lists: when a filter goes against the query (one label of twenty,
    searched from cells of another) they hold too few, or only distant ones. On 250,000 synthetic
    cells (``ivf-pca``, 96 of 4,000 lists probed), 100 queries filtered to one label of 20 got 22 of
    their 1,000 hits (recall@10 0.02 against exact search over the allowed cells), and filtered to
    every other label 982 (benchmarks/search.py). So with an IVF
    index, up to :data:`EXACT_ALLOWED` allowed cells are searched exactly, over their stored
    vectors; more are searched with the selector, and the queries it leaves short are searched
    again exactly.

    Parameters
    ----------
    index : CellIndex
        The index searched.
    vectors : numpy.ndarray
        Unit query rows.
    k : int
        Hits per query.
    allowed : numpy.ndarray or None
        The cell ids that may be returned; None: every cell.
    stored : StoredVectors or None
        The stored vectors of the index's cells (read only for an exact search); None keeps to the
        selector (a panel index, whose vectors are not stored).

    Returns
    -------
    sims, ids : numpy.ndarray
        Queries × min(k, allowed) similarities and cell ids, best first (-1: none).
    searched_exactly : int
        Queries searched exactly over the allowed cells.
    """
    if allowed is None or stored is None or index.kind == "flat":
        sims, found = index.search(vectors, k, allowed=allowed)
        return sims, found, 0
    if len(allowed) <= EXACT_ALLOWED:
        again = np.arange(len(vectors))
        width = min(k, len(allowed))
        sims = np.full((len(vectors), width), -np.inf, dtype=np.float32)
        found = np.full((len(vectors), width), -1, dtype=np.int64)
    else:
        sims, found = index.search(vectors, k, allowed=allowed)
        sims, found = np.array(sims), np.array(found)
        again = np.flatnonzero((found < 0).any(axis=1))
    if len(again):
        from screader_db.index import exact_search

        exact_sims, rows = exact_search(vectors[again], stored.of(allowed, flag="--where"), found.shape[1])
        sims[again], found[again] = exact_sims, allowed[rows]
    return sims, found, len(again)


def _names(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values else None


def allowed_cells(opened: store.Atlas, options: SearchOptions) -> np.ndarray | None:
    """The ids of the atlas cells a search may return: those of the data sets, labels and ``where``
    condition of ``options``.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    options : SearchOptions
        Its ``datasets``, ``labels``, ``where`` and ``timeout``.

    Returns
    -------
    numpy.ndarray or None
        Sorted int64 ids; None when no filter is given (every cell).

    Raises
    ------
    ScreaderError
        A data set or label the atlas does not have, or filters that leave no cell.
    SqlError
        As :func:`where_cells`.
    """
    from screader_db.annotation import restrict

    kept = restrict(opened.cells(["dataset", "label"]), "label", datasets=_names(options.datasets),
                    labels=_names(options.labels), exclude_labels=None)
    if not options.where:
        return None if kept is None else np.sort(kept.to_numpy(dtype=np.int64))
    meeting = where_cells(opened, options.where, timeout=options.timeout)
    if not len(meeting):
        message = (f"no atlas cell meets --where {options.where!r}; loosen it. Count the cells it keeps with "
                   f"`screader-db sql \"SELECT count(*) FROM cells WHERE {options.where}\"`")
        raise ScreaderError(message)
    if kept is None:
        return meeting
    allowed = np.intersect1d(meeting, kept.to_numpy(dtype=np.int64))
    if not len(allowed):
        message = (f"no atlas cells are left: {len(meeting):,} meet --where and {len(kept):,} --datasets/--labels, "
                   "but none meets both; loosen the filters")
        raise ScreaderError(message)
    return allowed


def where_cells(opened: store.Atlas, where: str, *, timeout: float | None = 60.0) -> np.ndarray:
    """The ids of the atlas cells that meet a SQL condition over the ``cells`` view.

    ``where`` must parse as one SQL expression (so it cannot end the statement, add another, or
    comment out the rest); it then runs as ``SELECT cell_id FROM cells WHERE (where)`` through
    :class:`~screader_db.sql.AtlasSQL`, with its checks: one read-only statement, no file or
    setting outside the atlas, at most ``timeout`` seconds.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    where : str
        The condition, such as ``metadata->>'donor' = 'D3'`` or ``label IN ('B', 'NK')``.
    timeout : float or None
        Seconds it may run; None for no limit.

    Returns
    -------
    numpy.ndarray
        Sorted, distinct int64 cell ids.

    Raises
    ------
    SqlError
        ``where`` is not one SQL expression, or the statement is refused, fails or runs too long.
    """
    import duckdb

    from screader_db.atlas_format import CATALOGUE_SCHEMA
    from screader_db.sql import AtlasSQL

    columns = ", ".join(column.split()[0] for column in CATALOGUE_SCHEMA["cells"].split(", "))
    try:
        condition = str(duckdb.SQLExpression(where))
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = (f"--where takes one SQL condition over the columns of the cells view ({columns}), such as "
                   f"{WHERE_EXAMPLE}; {where!r} is not one ({first})")
        raise SqlError(message) from err
    try:
        with AtlasSQL(opened, timeout=timeout) as db:
            found = db.table(f"SELECT cell_id FROM cells WHERE (\n{condition}\n)").column("cell_id").to_numpy()
    except SqlError as err:
        reason = str(err).removeprefix("the query failed: ")
        raise SqlError(f"the --where condition {where!r} failed: {reason}") from err
    return np.unique(np.asarray(found, dtype=np.int64))


def parse_cell_ids(values: Any, flag: str = "--ids") -> np.ndarray:
    """Atlas cell ids given as numbers or text.

    Parameters
    ----------
    values : int, str or sequence of int or str
        The ids.
    flag : str
        How they were given, for messages.

    Returns
    -------
    numpy.ndarray
        int64 ids, in the order given.

    Raises
    ------
    ScreaderError
        No ids, or one that is not a whole number.
    """
    items = [values] if isinstance(values, int | str | np.integer) else list(values)
    if not items:
        raise ScreaderError(f"{flag} names no cells; give atlas cell ids (the cell_id column of the cells view)")
    ids = []
    for item in items:
        try:
            number = int(str(item).strip()) if not isinstance(item, int | np.integer) else int(item)
        except ValueError:
            message = f"{flag} takes atlas cell ids (whole numbers, the cell_id column of the cells view); got {item!r}"
            raise ScreaderError(message) from None
        ids.append(number)
    return np.asarray(ids, dtype=np.int64)


class StoredVectors:
    """The atlas's stored cell vectors (:meth:`~screader_db.store.Atlas.embeddings`), read on first use
    and kept for one search.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    """

    def __init__(self, opened: store.Atlas) -> None:
        self.opened = opened
        self._ids: pd.Index | None = None
        self._vectors: np.ndarray | None = None

    def of(self, wanted: np.ndarray, *, flag: str = "--ids") -> np.ndarray:
        """The stored vectors of some atlas cells, in the order asked for.

        Parameters
        ----------
        wanted : numpy.ndarray
            Cell ids (repeats allowed).
        flag : str
            How the ids were given, for messages.

        Returns
        -------
        numpy.ndarray
            float32, one unit row per id.

        Raises
        ------
        ScreaderError
            Ids the atlas version does not have.
        """
        opened = self.opened
        wanted = np.asarray(wanted, dtype=np.int64)
        missing = np.unique(wanted[opened.cells([]).index.get_indexer(wanted) < 0])
        if len(missing):
            shown = ", ".join(map(str, missing[:SHOWN])) + (", ..." if len(missing) > SHOWN else "")
            message = (f"{flag}: version {opened.version} of the atlas has no cells with ids {shown} ({len(missing)} of the "
                       f"{len(np.unique(wanted))} ids given). Look ids up in the cell_id column of `screader-db sql "
                       f"\"SELECT cell_id, dataset, label FROM cells\"`")
            raise ScreaderError(message)
        if self._ids is None or self._vectors is None:
            ids, self._vectors = opened.embeddings()
            self._ids = pd.Index(ids)
        return self._vectors[self._ids.get_indexer(wanted)]


def query_ids(opened: store.Atlas, ids: Any, *, stored: StoredVectors | None = None) -> Query:
    """Atlas cells as queries: each one's stored vector.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    ids : sequence of int or str
        Cell ids.
    stored : StoredVectors or None
        The stored vectors, when the caller has them (None reads them).

    Returns
    -------
    Query
        One query per id, named by the id.

    Raises
    ------
    ScreaderError
        No ids, ids that are not whole numbers, or ids the atlas does not have.
    """
    wanted = parse_cell_ids(ids, "--ids")
    return Query(names=[str(i) for i in wanted], vectors=(stored or StoredVectors(opened)).of(wanted, flag="--ids"),
                 index=opened.index, info={"query": "ids", "queries": len(wanted)})


def query_centroid(opened: store.Atlas, centroid_of: Any, *, stored: StoredVectors | None = None) -> Query:
    """The centroid of atlas cells as one query: the mean of their stored vectors, at unit length.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    centroid_of : sequence of int, or str
        Cell ids, or a label (every cell whose ``label`` it is).
    stored : StoredVectors or None
        The stored vectors, when the caller has them (None reads them).

    Returns
    -------
    Query
        One query, named ``centroid``.

    Raises
    ------
    ScreaderError
        No such label, no ids, or ids the atlas does not have.
    """
    from screader_db.cell_embedding import l2_normalise

    if isinstance(centroid_of, str):
        cells = opened.cells(["label"])
        members = cells.index.to_numpy(dtype=np.int64)[cells["label"].to_numpy() == centroid_of]
        if not len(members):
            known = sorted(set(cells["label"].astype(str)))
            message = (f"--centroid-of-label: the atlas has no cells labelled {centroid_of!r}; its labels: "
                       f"{', '.join(known[:30])}{', ...' if len(known) > 30 else ''}")
            raise ScreaderError(message)
        source: dict[str, Any] = {"centroid_of_label": centroid_of}
        flag = "--centroid-of-label"
    else:
        members = parse_cell_ids(centroid_of, "--centroid-of-ids")
        source, flag = {}, "--centroid-of-ids"
    vectors = (stored or StoredVectors(opened)).of(members, flag=flag)
    centroid = l2_normalise(vectors.astype(np.float64).mean(axis=0, keepdims=True))
    info = {"query": "centroid", "queries": 1, "centroid_cells": len(np.unique(members)), **source}
    return Query(names=["centroid"], vectors=centroid, index=opened.index, info=info)


def query_signature(opened: store.Atlas, signature: Any, *, species: str = "auto") -> Query:
    """A gene signature as one query (:func:`read_signature`, :func:`signature_vector`).

    Genes that are not atlas genes are left out with a :class:`~screader_db.errors.ScreaderWarning`
    naming them, and listed in the query's info.

    Parameters
    ----------
    opened : Atlas
        The atlas.
    signature : Any
        As :func:`read_signature` takes it.
    species : str
        How the gene names are read.

    Returns
    -------
    Query
        One query, named ``signature``.

    Raises
    ------
    InputDataError
        As :func:`read_signature` and :func:`signature_vector`.
    """
    weights = read_signature(signature)
    embedder = opened.embedder
    vector, used, missing = signature_vector(embedder, weights, species=species)
    if missing:
        warnings.warn(f"{len(missing)} of the signature's {len(weights)} genes are not among the {len(embedder.genes):,} "
                      f"genes the atlas embeds cells over and were left out: {', '.join(missing)}", ScreaderWarning,
                      stacklevel=3)
    info = {"query": "signature", "queries": 1, "signature_genes": used, "signature_missing": missing}
    return Query(names=["signature"], vectors=vector, index=opened.index, info=info)


@contextmanager
def _opened(cells: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """Query cells as an AnnData, and how their file was read: a path of any input format is opened
    (backed or lazily where the format allows, :func:`~screader_db.input_files.open_input`) and closed afterwards."""
    if not isinstance(cells, str | Path):
        yield cells, {}
        return
    from screader_db.input_files import open_input

    with open_input(cells) as opened:
        yield opened.adata, opened.file.info()


def query_cells(opened: store.Atlas, cells: Any, *, options: SearchOptions, reporter: Reporter = SILENT) -> Query:
    """Query cells as queries, embedded with :func:`~screader_db.annotate`'s stages.

    The cells are read and mapped onto the atlas's genes (:func:`~screader_db.query_input.prepare_query`),
    answered on a panel index when they lack some (:func:`~screader_db.query_input.fit_to_panel`),
    their empty cells set aside (:func:`~screader_db.annotation.prepare`: they get no hits) and the
    rest embedded (:func:`~screader_db.query_input.embed_query`).

    Parameters
    ----------
    opened : Atlas
        The atlas.
    cells : AnnData, str or Path
        The query cells (a path of any input format).
    options : SearchOptions
        Its read options, ``center`` and ``datasets`` (a panel is fitted on those data sets).
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    Query
        One query per informative cell, named by its obs name.

    Raises
    ------
    InputDataError
        The cells cannot be read, or all are empty; GeneOverlapError for too few shared genes.
    """
    from screader_db.annotation import Plan, prepare
    from screader_db.options import AnnotateOptions, NeighbourFilter
    from screader_db.query_input import embed_query, fit_to_panel, prepare_query

    read = options.read
    plan = Plan.of(opened, AnnotateOptions(center=options.center, read=read,
                                           neighbours=NeighbourFilter(datasets=options.datasets)))
    with _opened(cells) as (data, source):
        reporter.message("Reading the query cells")
        query = prepare_query(data, opened.embedder.genes, layer=read.layer, use_raw=read.use_raw,
                              gene_key=read.gene_key, species=read.species, check_overlap=False,
                              input_scale=read.input_scale, batch_key=read.batch_key)
        answering = fit_to_panel(query, opened, datasets=_names(options.datasets), reporter=reporter)
        prepared = prepare(plan, answering, matched=query.plan.matched, reporter=reporter)
        vectors = embed_query(prepared.query, answering.embedder, center=options.center, reporter=reporter)
        names = [str(name) for name in prepared.query.source.obs.index]
    info = {"query": "cells", "queries": len(names), "query_cells": len(prepared.empty),
            "empty_cells": int(prepared.empty.sum()), "genes_matched": int(query.plan.matched),
            "genes_in_atlas": len(opened.embedder.genes), "panel": answering.panel,
            "input_scale_evidence": query.evidence, **source}
    return Query(names=names, vectors=vectors, index=answering.index, info=info)


def hit_table(opened: store.Atlas, names: list[str], similarities: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """The hits of every query as one table.

    Parameters
    ----------
    opened : Atlas
        The atlas searched.
    names : list of str
        The queries' names, one per row of ``ids``.
    similarities, ids : numpy.ndarray
        Queries × k cosine similarities and cell ids, best first (-1: none found).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`HIT_COLUMNS`, by query then rank.
    """
    rows, ranks = np.nonzero(ids >= 0)
    found = ids[rows, ranks].astype(np.int64)
    cells = opened.cells().reindex(found)
    stored = opened.cell_metadata(found)
    metadata = stored["metadata"].reindex(found)
    donors = stored["donor"].reindex(found).fillna("")
    return pd.DataFrame({
        "query": np.asarray(names, dtype=object)[rows] if len(names) else np.empty(0, dtype=object),
        "rank": (ranks + 1).astype(np.int64),
        "cell_id": found,
        "similarity": np.asarray(similarities, dtype=np.float32)[rows, ranks],
        **{column: cells[column].astype(str).to_numpy(dtype=object)
           for column in ("dataset", "barcode", "label", "label_harmonised", "ontology_id")},
        "donor": donors.astype(str).to_numpy(dtype=object),
        "metadata": [json.dumps(value if isinstance(value, dict) else {}) for value in metadata],
    }, columns=list(HIT_COLUMNS))
