"""The result of annotating cells against an atlas, and the ways to read it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import InputDataError, OutputExistsError
from screader_db.metrics import UNASSIGNED, Agreement, agreement

PREFIX = "screader_"


@dataclass
class AnnotationResult:
    """Per-cell labels and confidences, the neighbours they came from, and the cell vectors.

    ``table`` has one row per query cell (index = the query's obs names) with the columns
    ``label``, ``score`` (weight share of the winning label), ``margin`` (to the runner-up),
    ``second_label``, ``mean_similarity`` and ``raw_label`` (the winner before abstention).
    """

    table: pd.DataFrame
    embeddings: np.ndarray
    neighbour_ids: np.ndarray
    neighbour_similarities: np.ndarray
    atlas_labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    umap: np.ndarray | None = None
    reference_map: pd.DataFrame | None = None

    @property
    def labels(self) -> pd.Series:
        return self.table["label"]

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
        """A copy of ``adata`` with ``obs['screader_*']``, ``obsm['X_screader']`` and ``uns['screader']``."""
        if adata.n_obs != len(self.table):
            message = f"the AnnData has {adata.n_obs} cells, the result {len(self.table)}"
            raise InputDataError(message)
        out = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
        for column in self.table.columns:
            values = self.table[column].to_numpy()
            out.obs[PREFIX + column] = pd.Categorical(values) if values.dtype == object else values
        out.obsm["X_screader"] = self.embeddings
        if self.umap is not None:
            out.obsm["X_umap"] = self.umap
        out.uns["screader"] = {k: (str(v) if not isinstance(v, int | float | str) else v) for k, v in self.info.items()}
        return out

    def plot(self, folder: str | Path, *, truth: Any = None) -> list[Path]:
        """Write PNGs into ``folder``: the query on the reference map, the score histogram and,
        given true labels, a confusion matrix. Returns the paths written."""
        from screader_db.plots import write_plots

        return write_plots(self, Path(folder), truth=truth)

    def write_table(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the per-cell table as CSV, TSV or Parquet, chosen by the file extension."""
        target = Path(path)
        if target.exists() and not overwrite:
            message = f"{target} exists; pass --overwrite to replace it"
            raise OutputExistsError(message)
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
