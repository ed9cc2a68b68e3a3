"""The result of annotating cells against an atlas, and the ways to read it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import AtlasError, CellNotFoundError, InputDataError
from screader_db.metrics import UNASSIGNED, Agreement, agreement
from screader_db.outputs import refuse_existing

PREFIX = "screader_"
SCORE_PREFIX = "score_"  # table columns score_<label>: each label's final vote share
# Why a cell is Unassigned (table column ``unassigned_reason``), in the order the rules are checked.
EMPTY, NOVEL_POPULATION, LOW_SCORE, LOW_MARGIN = "empty", "novel population", "low score", "low margin"
# obsm / uns keys written by AnnotationResult.to_adata
SCORES_KEY, NEIGHBOURS_KEY, SIMILARITY_KEY = "screader_scores", "screader_neighbours", "screader_neighbour_similarity"


def cell_position(names: pd.Index, cell: str | int) -> int:
    """The row of ``cell``: an obs name, or an integer position (a string of digits that is not an
    obs name counts as a position too)."""
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
    import difflib

    close = difflib.get_close_matches(str(cell), [str(v) for v in names[:200_000]], n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; first names: {', '.join(map(str, names[:3]))}"
    message = f"cell {cell!r} is not in the query ({n:,} cells){hint} Pass an obs name or a position from 0 to {n - 1:,}"
    raise CellNotFoundError(message)


def neighbour_table(atlas: Any, ids: np.ndarray, similarities: np.ndarray, *, level: str = "label") -> pd.DataFrame:
    """One row per reference neighbour of one cell, nearest first: rank, cell id, reference cell
    (its barcode), data set, label (at the level the vote used), donor ("" when the reference
    recorded none) and cosine similarity."""
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

    ``table`` has one row per query cell (index = the query's obs names) with the columns
    ``label``, ``score`` (weight share of the winning label), ``confidence`` (how likely the label
    is right, :mod:`screader_db.confidence`), ``vote_confidence`` (the score's calibrated
    confidence on the reference alone), ``margin`` (to the runner-up),
    ``second_label``, ``mean_similarity``, ``raw_label`` (the winner before abstention),
    ``unassigned_reason`` and one ``score_<label>`` column per atlas label (its vote share).
    ``atlas`` is the opened atlas the cells were annotated against (for :meth:`neighbours`).
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
        """The reference cells that voted for ``cell`` (an obs name or a position), nearest first:
        rank, cell id, reference cell (barcode), data set, label, donor and similarity."""
        position = cell_position(self.table.index, cell)
        if self.atlas is None or self.neighbour_ids.shape[1] == 0:
            message = ("this result does not carry its atlas and neighbours (a result from a server has the labels "
                       "only); annotate locally with screader_db.annotate(adata, atlas) to look at the neighbours")
            raise AtlasError(message)
        return neighbour_table(self.atlas, self.neighbour_ids[position], self.neighbour_similarities[position],
                               level=str(self.info.get("level", "label")))

    @property
    def scores(self) -> pd.Series:
        return self.table["score"]

    def to_frame(self) -> pd.DataFrame:
        """A copy of the per-cell table."""
        return self.table.copy()

    def summary(self) -> pd.DataFrame:
        """Cells per predicted label: count, share, mean score, and how many cells whose best
        label it was were left Unassigned. Largest first; the Unassigned row comes last."""
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
        return int((self.table["label"] == UNASSIGNED).sum())

    def agreement(self, truth: Any) -> Agreement:
        """Accuracy and macro-F1 against true labels, on cells whose label the atlas knows."""
        values = pd.Series(truth).astype(str).to_numpy()
        if len(values) != len(self.table):
            message = f"{len(values)} true labels for {len(self.table)} annotated cells"
            raise InputDataError(message)
        return agreement(self.table["label"].to_numpy(), values, known=self.atlas_labels)

    def to_adata(self, adata: Any) -> Any:
        """A copy of ``adata`` with ``obs['screader_*']`` (the table but the label scores),
        ``obsm['screader_scores']`` (cells × labels, labels in ``uns['screader']['score_labels']``),
        ``obsm['screader_neighbours']`` (atlas cell ids) and ``obsm['screader_neighbour_similarity']``,
        ``obsm['X_screader']`` (and ``X_umap`` when placed on a reference map) and ``uns['screader']``."""
        if adata.n_obs != len(self.table):
            message = f"the AnnData has {adata.n_obs} cells, the result {len(self.table)}"
            raise InputDataError(message)
        out = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
        score_columns = {SCORE_PREFIX + label for label in self.score_labels}
        for column in self.table.columns:
            if column in score_columns:
                continue
            values = self.table[column].to_numpy()
            out.obs[PREFIX + column] = pd.Categorical(values) if values.dtype == object else values
        out.obsm["X_screader"] = self.embeddings
        out.obsm[SCORES_KEY] = self.label_scores.to_numpy(dtype=np.float32)
        if self.neighbour_ids.shape[1]:
            out.obsm[NEIGHBOURS_KEY] = np.asarray(self.neighbour_ids, dtype=np.int64)
            out.obsm[SIMILARITY_KEY] = np.asarray(self.neighbour_similarities, dtype=np.float32)
        if self.umap is not None:
            out.obsm["X_umap"] = self.umap
        uns: dict[str, Any] = {k: (str(v) if not isinstance(v, int | float | str) else v) for k, v in self.info.items()}
        uns["score_labels"] = list(self.score_labels)
        out.uns["screader"] = uns
        return out

    def plot(self, folder: str | Path, *, truth: Any = None) -> list[Path]:
        """Write PNGs into ``folder``: the query on the reference map, the score histogram and,
        given true labels, a confusion matrix. Returns the paths written."""
        from screader_db.plots import write_plots

        return write_plots(self, Path(folder), truth=truth)

    def write_table(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the per-cell table as CSV, TSV or Parquet, chosen by the file extension."""
        target = Path(path)
        refuse_existing(target, overwrite=overwrite)
        frame = self.table.rename_axis("cell").reset_index()
        tmp = target.with_name(f".{target.name}.tmp")
        suffix = target.suffix.lower()
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix in (".csv", ".tsv", ".txt"):
            frame.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
        else:
            message = f"unknown table format {target.suffix!r}; use .csv, .tsv or .parquet"
            raise InputDataError(message)
        tmp.replace(target)
        return target
