"""Clustering: the package's k-means, and majority labels within clusters of query cells.

:func:`kmeans` (scikit-learn's) serves the composition-balanced centring (:mod:`screader_db.centring`) and the
novelty check (:mod:`screader_db.novelty`); :func:`cluster_cells` groups query cells for the
cluster-level smoothing, reported beside the per-cell labels, never instead of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100, restarts: int = 3) -> np.ndarray:
    """Cluster index of each point: scikit-learn's k-means (k-means++ starts, Lloyd steps), best of
    ``restarts`` by inertia.

    Parameters
    ----------
    points
        (n, d) float array.
    k
        Clusters (at most ``n``).
    seed
        Seed of the starts.
    iterations
        Most Lloyd steps per start (fewer once the centres stop moving).
    restarts
        Starts tried.

    Returns
    -------
    numpy.ndarray
        int64 cluster of each point.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    if k <= 1:
        return np.zeros(len(points), dtype=np.int64)
    model = KMeans(n_clusters=k, init="k-means++", n_init=restarts, max_iter=iterations, random_state=seed)
    with warnings.catch_warnings():
        # Fewer distinct points than clusters (repeated cells): the clusters it found are kept.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_predict(points).astype(np.int64)


def group_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """The mean row of each group, each sum taken row by row in the rows' order (the same numbers as
    ``values[groups == j].mean(axis=0)``, in one pass).

    Parameters
    ----------
    values
        (n, d) float array.
    groups
        Group of each row, 0 to ``n_groups - 1``.
    n_groups
        Groups.

    Returns
    -------
    numpy.ndarray
        (n_groups, d) means; NaN rows for groups without a row.
    """
    ends = np.cumsum(np.bincount(groups, minlength=n_groups))
    kind = np.result_type(values.dtype, np.float32)  # what .mean gives: float32 stays float32
    means = np.full((n_groups, values.shape[1]), np.nan, dtype=kind)
    ordered = values[np.argsort(groups, kind="stable")]
    for j, (start, end) in enumerate(zip(ends - np.diff(ends, prepend=0), ends, strict=True)):
        if end > start:
            means[j] = ordered[start:end].mean(axis=0)
    return means


def cluster_cells(vectors: np.ndarray, *, resolution: float = 1.0, seed: int = 0, k: int = 15) -> tuple[np.ndarray, str]:
    """Cluster cells by their vectors: Leiden on a kNN graph when scanpy is installed, else k-means.

    Parameters
    ----------
    vectors
        (cells, dim) embedding of the cells.
    resolution
        Leiden resolution.
    seed
        Seed of the graph and the clustering.
    k
        Neighbours of the Leiden graph.

    Returns
    -------
    clusters, algorithm
        The cluster of each cell, and ``"leiden"``, ``"kmeans"`` or ``"none"`` (fewer than 3 cells).
    """
    n = len(vectors)
    if n < 3:
        return np.zeros(n, dtype=np.int64), "none"
    try:
        import anndata as ad
        import scanpy as sc

        holder = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32))
        holder.obsm["X_screader"] = vectors
        sc.pp.neighbors(holder, n_neighbors=min(k, n - 1), use_rep="X_screader", metric="cosine", random_state=seed)
        sc.tl.leiden(holder, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
        return holder.obs["leiden"].astype(int).to_numpy(), "leiden"
    except ImportError:
        n_clusters = int(max(2, min(50, round(np.sqrt(n / 10)))))
        return kmeans(vectors, n_clusters, seed=seed, restarts=4, iterations=300), "kmeans"


def majority_labels(labels: Sequence[str], clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's cluster majority label and the share of its cluster that holds that label.

    Parameters
    ----------
    labels
        Label of each cell.
    clusters
        Cluster of each cell.

    Returns
    -------
    majority, share
        Per cell: its cluster's most common label (ties: the first by name) and that label's
        share of the cluster (float32).
    """
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=object), "cluster": clusters})
    counts = frame.groupby(["cluster", "label"], observed=True).size().rename("n").reset_index()
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    top = counts.drop_duplicates("cluster").set_index("cluster")
    sizes = frame.groupby("cluster").size()
    majority = top["label"].reindex(clusters).to_numpy()
    share = (top["n"] / sizes).reindex(clusters).to_numpy(dtype=np.float32)
    return majority, share
