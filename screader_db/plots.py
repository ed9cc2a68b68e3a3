"""PNG figures of an annotation: the query on the reference map, scores, confusion matrix, bars, clusters."""

from __future__ import annotations

import io
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


def save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG and close it.

    Parameters
    ----------
    fig
        A matplotlib figure.
    path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes (closed afterwards), for embedding in a report.

    Parameters
    ----------
    fig
        A matplotlib figure.

    Returns
    -------
    bytes
        The PNG file's bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def plot_map(result: AnnotationResult, path: Path) -> Path | None:
    """Write the map: reference cells by label, and query cells placed among them, coloured by predicted label.

    Parameters
    ----------
    result
        An annotation.
    path
        The PNG file.

    Returns
    -------
    Path or None
        ``path``, or None (nothing written) when the atlas has no reference map.
    """
    fig = map_figure(result)
    return None if fig is None else save(fig, path)


def map_figure(result: AnnotationResult, *, size: tuple[float, float] = (15, 6.5)) -> Any:
    """The figure of :func:`plot_map`.

    Parameters
    ----------
    result
        An annotation.
    size
        Width and height in inches.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when the result has no reference map.
    """
    if result.umap is None or result.reference_map is None:
        return None
    plt = _pyplot()
    labels = result.table["label"].astype(str).to_numpy()
    colours = _colours(sorted(set(labels) | set(result.atlas_labels)))
    fig, axes = plt.subplots(1, 2, figsize=size, sharex=True, sharey=True)
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
    return fig


def plot_scores(result: AnnotationResult, path: Path) -> Path:
    """Write histograms of the vote share (score) and margin of every query cell.

    Parameters
    ----------
    result
        An annotation.
    path
        The PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    return save(scores_figure(result), path)


def scores_figure(result: AnnotationResult) -> Any:
    """The figure of :func:`plot_scores`.

    Parameters
    ----------
    result
        An annotation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    columns = [c for c in ("score", "margin") if c in result.table.columns]
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
    return fig


def plot_confusion(predicted: Any, truth: Any, path: Path, *, title: str = "") -> Path:
    """Write a row-normalised confusion matrix: true labels down, predicted labels across.

    Parameters
    ----------
    predicted, truth
        One predicted and one true label per cell.
    path
        The PNG file.
    title
        The title (a default one when empty).

    Returns
    -------
    Path
        ``path``.
    """
    return save(confusion_figure(predicted, truth, title=title), path)


def confusion_figure(predicted: Any, truth: Any, *, title: str = "") -> Any:
    """The figure of :func:`plot_confusion`.

    Parameters
    ----------
    predicted, truth
        One predicted and one true label per cell.
    title
        The title (a default one when empty).

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    return fig


def bar_figure(counts: pd.Series, *, xlabel: str, title: str = "") -> Any:
    """Horizontal bars, one per index value in the given order from the top, each labelled with its count.

    Parameters
    ----------
    counts
        A count per name.
    xlabel
        What is counted.
    title
        The title (none when empty).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    counts = counts.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(counts) + 1.2))
    bars = ax.barh([str(i) for i in counts.index], counts.to_numpy(), color="#4477aa")
    ax.bar_label(bars, labels=[f"{int(v):,}" for v in counts.to_numpy()], padding=3, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max(float(counts.max()), 1.0) * 1.15)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def cluster_quality_figure(clusters: pd.DataFrame) -> Any:
    """One point per query cluster: mean neighbour similarity across, mean score up, area by cells.

    Parameters
    ----------
    clusters
        One row per cluster (index = its id) with columns cells, mean_similarity, mean_score and,
        optionally, novel (drawn red: the cluster matches no atlas label).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sizes = 20 + 400 * clusters["cells"] / max(float(clusters["cells"].max()), 1.0)
    novel = clusters.get("novel", pd.Series(False, index=clusters.index)).to_numpy(dtype=bool)
    ax.scatter(clusters["mean_similarity"], clusters["mean_score"], s=sizes,
               c=np.where(novel, "#cc3311", "#4477aa"), alpha=0.7, linewidths=0)
    for name, row in clusters.iterrows():
        ax.annotate(str(name), (row["mean_similarity"], row["mean_score"]), fontsize=9, xytext=(5, 4),
                    textcoords="offset points")
    ax.set_xlabel("mean similarity to the atlas neighbours")
    ax.set_ylabel("mean score")
    low = float(clusters["mean_score"].min())
    ax.set_ylim(max(0.0, low - 0.1 * (1.0 - low) - 0.02), 1.0 + 0.1 * (1.0 - low) + 0.01)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title("Query clusters (red: matches no atlas label; area: cells)")
    fig.tight_layout()
    return fig


def write_plots(result: AnnotationResult, folder: Path, *, truth: Any = None) -> list[Path]:
    """Write every figure that applies.

    Parameters
    ----------
    result
        An annotation.
    folder
        Where the PNG files go (created when missing).
    truth
        One true label per cell: adds ``confusion.png``.

    Returns
    -------
    list of Path
        ``umap.png`` (when the atlas has a map), ``scores.png`` and ``confusion.png`` (with ``truth``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [p for p in (plot_map(result, folder / "umap.png"), plot_scores(result, folder / "scores.png")) if p]
    if truth is not None:
        written.append(plot_confusion(result.table["label"], truth, folder / "confusion.png"))
    return written
