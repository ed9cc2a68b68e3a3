"""The result of annotating cells against an atlas, and the ways to read it out."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import AtlasError, CellNotFoundError, InputDataError
from screader_db.metrics import UNASSIGNED, Agreement, agreement
from screader_db.outputs import atomic_write, refuse_existing
from screader_db.plots import write_plots

KEY_ADDED = "screader"  # the default prefix of every AnnData key AnnotationResult.to_adata writes
SCORE_PREFIX = "score_"  # table columns score_<label>: each label's final vote share
# Why a cell is Unassigned (table column ``unassigned_reason``), in the order the rules are checked.
EMPTY, NOVEL_POPULATION, LOW_SCORE, LOW_MARGIN = "empty", "novel population", "low score", "low margin"


@dataclass(frozen=True)
class AdataKeys:
    """The AnnData keys :meth:`AnnotationResult.to_adata` writes under one ``key_added`` prefix ``K``.

    Parameters
    ----------
    key_added
        The prefix, ``"screader"`` by default.

    Attributes
    ----------
    obs_prefix
        ``K_``: the per-cell table's columns become ``obs['K_<column>']``.
    embedding
        ``obsm['X_K']``: the cell vectors.
    scores
        ``obsm['K_scores']``: cells × labels vote shares.
    neighbours, similarity
        ``obsm['K_neighbours']`` (atlas cell ids) and ``obsm['K_neighbour_similarity']``.
    umap
        ``obsm['X_K_umap']``: the cells placed on the atlas's reference map.
    uns
        ``uns['K']``: the query info and ``score_labels``.
    """

    key_added: str = KEY_ADDED

    @property
    def obs_prefix(self) -> str:
        """``K_``, the prefix of the ``obs`` columns (``obs['K_<column>']``)."""
        return f"{self.key_added}_"

    @property
    def embedding(self) -> str:
        """``X_K``, the ``obsm`` key of the cell vectors."""
        return f"X_{self.key_added}"

    @property
    def scores(self) -> str:
        """``K_scores``, the ``obsm`` key of the cells × labels vote shares."""
        return f"{self.key_added}_scores"

    @property
    def neighbours(self) -> str:
        """``K_neighbours``, the ``obsm`` key of the neighbouring atlas cell ids."""
        return f"{self.key_added}_neighbours"

    @property
    def similarity(self) -> str:
        """``K_neighbour_similarity``, the ``obsm`` key of the neighbours' similarities."""
        return f"{self.key_added}_neighbour_similarity"

    @property
    def umap(self) -> str:
        """``X_K_umap``, the ``obsm`` key of the cells' places on the atlas's reference map."""
        return f"X_{self.key_added}_umap"

    @property
    def uns(self) -> str:
        """``K``, the ``uns`` key of the query info and ``score_labels``."""
        return self.key_added


def h5ad_value(value: Any) -> Any:
    """A copy of ``value`` that anndata can write to ``uns`` in an .h5ad, nesting kept.

    Parameters
    ----------
    value
        A scalar, string, None, NumPy array, DataFrame, or a dict, list or tuple of these.

    Returns
    -------
    object
        Dicts with string keys (recursively), lists and tuples as lists (a list holding dicts as a
        dict keyed by position; one holding None or nested lists as its text), arrays and frames
        copied, other objects as their text.
    """
    if isinstance(value, dict):
        return {str(k): h5ad_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = list(value)
        if any(isinstance(v, dict) for v in items):
            return {str(i): h5ad_value(v) for i, v in enumerate(items)}
        if all(isinstance(v, str | int | float | bool | np.generic) for v in items):
            return [v.item() if isinstance(v, np.generic) else v for v in items]
        return str(items)
    if isinstance(value, np.ndarray | pd.DataFrame):
        return value.copy()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def cell_position(names: pd.Index, cell: str | int) -> int:
    """The row of one cell, named or counted.

    Parameters
    ----------
    names
        The query's obs names.
    cell
        An obs name, or an integer position (negative counts from the end; a string of digits that
        is not an obs name counts as a position too).

    Returns
    -------
    int
        The row, from 0.

    Raises
    ------
    CellNotFoundError
        When the name is not there (with the closest names) or the position is out of range.
    """
    n = len(names)
    position: int | None = None
    if isinstance(cell, int | np.integer) and not isinstance(cell, bool):
        position = int(cell)
    elif str(cell) in names:
        return int(names.get_loc(str(cell)))
    elif str(cell).lstrip("-").isdigit():
        position = int(str(cell))
    if position is not None and -n <= position < n:
        return position % n
    if position is not None:
        message = f"cell position {position} is out of range: the query has {n:,} cells (positions 0 to {n - 1:,})"
        raise CellNotFoundError(message)
    close = difflib.get_close_matches(str(cell), [str(v) for v in names[:200_000]], n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; first names: {', '.join(map(str, names[:3]))}"
    message = f"cell {cell!r} is not in the query ({n:,} cells){hint} Pass an obs name or a position from 0 to {n - 1:,}"
    raise CellNotFoundError(message)


def neighbour_table(atlas: Any, ids: np.ndarray, similarities: np.ndarray, *, level: str = "label") -> pd.DataFrame:
    """The reference neighbours of one cell as a table, nearest first.

    Parameters
    ----------
    atlas
        The opened atlas the cell was annotated against.
    ids
        The neighbours' atlas cell ids (-1 for none).
    similarities
        Their cosine similarities.
    level
        ``label`` or ``harmonised``: which label column to show (the one the vote used).

    Returns
    -------
    pandas.DataFrame
        Columns rank, cell_id, reference_cell (barcode), dataset, label, donor ("" when the
        reference recorded none) and similarity.

    Raises
    ------
    AtlasError
        When some ids are not in this atlas version (the cell was annotated against another).
    """
    ids = np.asarray(ids, dtype=np.int64)
    sims = np.asarray(similarities, dtype=np.float32)
    keep = ids >= 0
    ids, sims = ids[keep], sims[keep]
    column = "label_harmonised" if level == "harmonised" else "label"
    cells = atlas.cells()
    missing = ~np.isin(ids, cells.index.to_numpy())
    if missing.any():
        message = (f"{int(missing.sum())} of the cell's neighbours (ids {', '.join(map(str, ids[missing][:3]))}) are not in "
                   f"version {atlas.version} of the atlas at {atlas.root}; the cell was annotated against another atlas "
                   "or version. Open the one it was annotated against, or annotate it again")
        raise AtlasError(message)
    found = cells.loc[ids]
    donors = atlas.cell_metadata(ids)["donor"].reindex(ids).fillna("")
    return pd.DataFrame({
        "rank": np.arange(1, len(ids) + 1), "cell_id": ids, "reference_cell": found["barcode"].astype(str).to_numpy(),
        "dataset": found["dataset"].astype(str).to_numpy(), "label": found[column].astype(str).to_numpy(),
        "donor": donors.astype(str).to_numpy(), "similarity": sims,
    })


@dataclass
class AnnotationResult:
    """Per-cell labels and confidences, the neighbours they came from, and the cell vectors.

    Parameters
    ----------
    table
        One row per query cell (index = the query's obs names), columns ``label``, ``score``
        (weight share of the winning label), ``confidence`` (how likely the label is right,
        :mod:`screader_db.confidence`), ``vote_confidence`` (the score's calibrated confidence on
        the reference alone), ``second_opinion`` (the expression method's vote share of the label,
        when sought, :mod:`screader_db.second_opinion`), ``margin`` (to the runner-up), ``second_label``, ``mean_similarity``,
        ``raw_label`` (the winner before abstention), ``unassigned_reason`` and one
        ``score_<label>`` column per atlas label (its vote share).
    embeddings
        Cells × dim unit cell vectors.
    neighbour_ids, neighbour_similarities
        Cells × k atlas cell ids of the neighbours that voted, and their similarities.
    atlas_labels
        Every label the atlas knows.
    info
        What the query was and how it was annotated (atlas version, method, genes matched, input
        scale, novelty check, ...).
    umap
        Cells × 2 positions on the atlas's reference map, when it has one.
    reference_map
        The reference cells' map positions and labels, when the atlas has a map.
    atlas
        The opened atlas the cells were annotated against (for :meth:`neighbours`).
    """

    table: pd.DataFrame
    embeddings: np.ndarray
    neighbour_ids: np.ndarray
    neighbour_similarities: np.ndarray
    atlas_labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    umap: np.ndarray | None = None
    reference_map: pd.DataFrame | None = None
    atlas: Any = field(default=None, repr=False)

    @property
    def labels(self) -> pd.Series:
        """Each cell's label (``Unassigned`` when no label is trustworthy)."""
        return self.table["label"]

    @property
    def score_labels(self) -> list[str]:
        """The labels of the ``score_<label>`` columns, in column order."""
        named = self.info.get("score_labels")
        if named is not None:
            return [str(v) for v in named]
        return [c[len(SCORE_PREFIX):] for c in self.table.columns if c.startswith(SCORE_PREFIX)]

    @property
    def label_scores(self) -> pd.DataFrame:
        """Cells × labels: each label's share of the cell's vote (rows sum to 1)."""
        labels = self.score_labels
        frame = self.table[[SCORE_PREFIX + label for label in labels]].astype(np.float32)
        frame.columns = pd.Index(labels)
        return frame

    def neighbours(self, cell: str | int) -> pd.DataFrame:
        """The reference cells that voted for one cell, nearest first.

        Parameters
        ----------
        cell
            An obs name or a position.

        Returns
        -------
        pandas.DataFrame
            As :func:`neighbour_table`: rank, cell_id, reference_cell, dataset, label, donor, similarity.

        Raises
        ------
        CellNotFoundError
            When the cell is not in the query.
        AtlasError
            When the result does not carry its atlas and neighbours (a result from a server).
        """
        position = cell_position(self.table.index, cell)
        if self.atlas is None or self.neighbour_ids.shape[1] == 0:
            message = ("this result does not carry its atlas and neighbours (a result from a server has the labels "
                       "only); annotate locally with screader_db.annotate(adata, atlas) to look at the neighbours")
            raise AtlasError(message)
        return neighbour_table(self.atlas, self.neighbour_ids[position], self.neighbour_similarities[position],
                               level=str(self.info.get("level", "label")))

    @property
    def scores(self) -> pd.Series:
        """Each cell's score: the stronger of its label's share of the neighbour vote and the linear classifier's probability of it."""
        return self.table["score"]

    def to_frame(self) -> pd.DataFrame:
        """A copy of the per-cell table.

        Returns
        -------
        pandas.DataFrame
            One row per query cell, indexed by obs name, with the columns of :attr:`table`.
        """
        return self.table.copy()

    def summary(self) -> pd.DataFrame:
        """Cells per predicted label.

        Returns
        -------
        pandas.DataFrame
            One row per label, largest first and Unassigned last; columns cells, share, mean_score
            and unassigned (cells whose best label it was that were left Unassigned).
        """
        grouped = self.table.groupby("label", observed=True)["score"].agg(cells="size", mean_score="mean")
        grouped["share"] = grouped["cells"] / max(len(self.table), 1)
        dropped = self.table.loc[self.table["label"] == UNASSIGNED, "raw_label"].value_counts()
        grouped["unassigned"] = dropped.reindex(grouped.index).fillna(0).astype(int)
        grouped.loc[grouped.index == UNASSIGNED, "unassigned"] = 0
        order = grouped.sort_values("cells", ascending=False)
        order = pd.concat([order[order.index != UNASSIGNED], order[order.index == UNASSIGNED]])
        return order[["cells", "share", "mean_score", "unassigned"]]

    @property
    def n_unassigned(self) -> int:
        """How many cells are Unassigned."""
        return int((self.table["label"] == UNASSIGNED).sum())

    def agreement(self, truth: Any) -> Agreement:
        """Accuracy and macro-F1 against true labels, on cells whose label the atlas knows.

        Parameters
        ----------
        truth
            One true label per cell, in the result's order.

        Returns
        -------
        Agreement
            Accuracy, macro-F1, per-class F1 and the number of cells scored.

        Raises
        ------
        InputDataError
            When there are not as many labels as cells.
        """
        values = pd.Series(truth).astype(str).to_numpy()
        if len(values) != len(self.table):
            message = f"{len(values)} true labels for {len(self.table)} annotated cells"
            raise InputDataError(message)
        return agreement(self.table["label"].to_numpy(), values, known=self.atlas_labels)

    def to_adata(self, adata: Any, *, inplace: bool = False, key_added: str = KEY_ADDED) -> Any:
        """The annotation written into an AnnData under keys that start with ``key_added``.

        Parameters
        ----------
        adata
            The query that was annotated: the same cells in the same order.
        inplace
            Write into ``adata`` and return None. By default ``adata`` is left as it was and a new
            AnnData is returned that shares no array, frame or dict with it. anndata copies a
            backed AnnData only by reading it into memory, so a backed ``adata`` is read into memory
            for the copy; with ``inplace=True`` it stays backed.
        key_added
            The prefix ``K`` of every key written (see :class:`AdataKeys`).

        Returns
        -------
        anndata.AnnData or None
            The annotated copy, or None with ``inplace=True``. Keys written (``K`` = ``key_added``):

            - ``obs['K_<column>']``: every column of :attr:`table` but the ``score_<label>`` ones
              (``K_label``, ``K_score``, ``K_confidence``, ``K_vote_confidence``, ``K_margin``,
              ``K_second_label``, ``K_mean_similarity``, ``K_raw_label``, ``K_unassigned_reason``, ...);
              text columns as categoricals;
            - ``obsm['X_K']``: the cell vectors;
            - ``obsm['K_scores']``: cells × labels vote shares, labels in ``uns['K']['score_labels']``;
            - ``obsm['K_neighbours']`` (atlas cell ids) and ``obsm['K_neighbour_similarity']``, when the
              result carries its neighbours;
            - ``obsm['X_K_umap']``: the cells placed on the atlas's reference map, when it has one
              (``sc.pl.embedding(annotated, basis="K_umap")``); ``obsm['X_umap']`` is never written;
            - ``uns['K']``: the query info as nested dicts (see :func:`h5ad_value`) and ``score_labels``.

            Keys of these names that ``adata`` already has are replaced; no other key is touched.

        Raises
        ------
        InputDataError
            When ``adata`` has another number of cells than the result.
        """
        if adata.n_obs != len(self.table):
            message = (f"the AnnData has {adata.n_obs:,} cells and the result {len(self.table):,}; pass the AnnData "
                       "that was annotated")
            raise InputDataError(message)
        keys = AdataKeys(key_added)
        if inplace:
            out = adata
        elif getattr(adata, "isbacked", False):
            out = adata.to_memory(copy=True)
        else:
            out = adata.copy()
        score_columns = {SCORE_PREFIX + label for label in self.score_labels}
        for column in self.table.columns:
            if column in score_columns:
                continue
            values = self.table[column].to_numpy()
            out.obs[keys.obs_prefix + column] = pd.Categorical(values) if values.dtype == object else values.copy()
        out.obsm[keys.embedding] = np.array(self.embeddings, copy=True)
        out.obsm[keys.scores] = self.label_scores.to_numpy(dtype=np.float32)
        if self.neighbour_ids.shape[1]:
            out.obsm[keys.neighbours] = np.array(self.neighbour_ids, dtype=np.int64, copy=True)
            out.obsm[keys.similarity] = np.array(self.neighbour_similarities, dtype=np.float32, copy=True)
        if self.umap is not None:
            out.obsm[keys.umap] = np.array(self.umap, copy=True)
        uns = h5ad_value(self.info)
        uns["score_labels"] = list(self.score_labels)
        out.uns[keys.uns] = uns
        return None if inplace else out

    def plot(self, folder: str | Path, *, truth: Any = None) -> list[Path]:
        """Write the result's figures as PNG files.

        Parameters
        ----------
        folder
            Where to write ``umap.png`` (when the atlas has a map), ``scores.png`` and, with
            ``truth``, ``confusion.png``; created when missing.
        truth
            One true label per cell, for the confusion matrix.

        Returns
        -------
        list of Path
            The files written.
        """
        return write_plots(self, Path(folder), truth=truth)

    def write_table(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the per-cell table (with a ``cell`` column) as CSV, TSV or Parquet.

        Parameters
        ----------
        path
            The file; ``.csv``, ``.tsv`` (or ``.txt``, comma-separated) or ``.parquet`` chooses the format.
        overwrite
            Replace an existing file.

        Returns
        -------
        Path
            The file written.

        Raises
        ------
        OutputExistsError
            When the file exists and ``overwrite`` is False.
        InputDataError
            When the extension is none of those.
        """
        target = Path(path)
        refuse_existing(target, overwrite=overwrite)
        frame = self.table.rename_axis("cell").reset_index()
        suffix = target.suffix.lower()
        with atomic_write(target) as tmp:
            if suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            elif suffix in (".csv", ".tsv", ".txt"):
                frame.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
            else:
                message = f"unknown table format {target.suffix!r}; use .csv, .tsv or .parquet"
                raise InputDataError(message)
        return target
