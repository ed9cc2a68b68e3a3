"""PNG figures of an annotation: query cells on the reference map, scores, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from screader_db.metrics import UNASSIGNED

if TYPE_CHECKING:
    from screader_db.results import AnnotationResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(labels: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    palette = plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors
    out = {label: palette[i % len(palette)] for i, label in enumerate(sorted(labels))}
    out[UNASSIGNED] = (0.2, 0.2, 0.2)
    return out


def plot_map(result: AnnotationResult, path: Path) -> Path | None:
    """Reference cells in grey, query cells placed among them and coloured by predicted label."""
    if result.umap is None or result.reference_map is None:
        return None
    plt = _pyplot()
    labels = result.table["label"].astype(str).to_numpy()
    colours = _colours(sorted(set(labels) | set(result.atlas_labels)))
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharex=True, sharey=True)
    ref = result.reference_map
    for label, group in ref.groupby("label", observed=True):
        axes[0].scatter(group["x"], group["y"], s=3, color=colours.get(str(label), "grey"), label=str(label),
                        linewidths=0)
    axes[0].set_title(f"Reference ({len(ref):,} cells)")
    axes[1].scatter(ref["x"], ref["y"], s=2, color="#dddddd", linewidths=0)
    for label in sorted(set(labels)):
        mask = labels == label
        axes[1].scatter(result.umap[mask, 0], result.umap[mask, 1], s=5, color=colours[label],
                        label=f"{label} ({mask.sum():,})", linewidths=0)
    axes[1].set_title(f"Query ({len(labels):,} cells) placed on the reference map")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=3, frameon=False)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
    axes[0].set_ylabel("UMAP 2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores(result: AnnotationResult, path: Path) -> Path:
    """Histograms of the vote share and (when present) the novelty of every query cell."""
    plt = _pyplot()
    columns = [c for c in ("score", "margin", "novelty") if c in result.table.columns]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.8))
    axes = np.atleast_1d(axes)
    for ax, column in zip(axes, columns, strict=True):
        ax.hist(result.table[column].astype(float), bins=40, range=(0, 1), color="#4477aa")
        ax.set_xlabel(column)
        ax.set_ylabel("cells")
    threshold = result.info.get("min_score")
    if threshold:
        axes[0].axvline(float(threshold), color="#cc3311", linestyle="--", label="min score")
        axes[0].legend(frameon=False)
    fig.suptitle(f"{len(result.table):,} cells, {result.n_unassigned:,} Unassigned")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(predicted: Any, truth: Any, path: Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix: true labels down, predicted labels across."""
    plt = _pyplot()
    table = pd.crosstab(pd.Series(np.asarray(truth, dtype=str), name="true"),
                        pd.Series(np.asarray(predicted, dtype=str), name="predicted"))
    shares = table.div(table.sum(axis=1), axis=0)
    height = max(4.0, 0.4 * len(shares.index) + 2)
    width = max(5.0, 0.45 * len(shares.columns) + 3)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(shares.columns)), shares.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(shares.index)), shares.index, fontsize=8)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            if table.iat[i, j]:
                ax.text(j, i, str(table.iat[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares.iat[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Share of each true label (row) by predicted label")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(result: AnnotationResult, folder: Path, *, truth: Any = None) -> list[Path]:
    """Every figure that applies, written into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [p for p in (plot_map(result, folder / "umap.png"), plot_scores(result, folder / "scores.png")) if p]
    if truth is not None:
        written.append(plot_confusion(result.table["label"], truth, folder / "confusion.png"))
    return written
