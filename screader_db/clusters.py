"""Cluster-level smoothing: majority labels within clusters of query cells (reported beside, never instead)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def cluster_cells(vectors: np.ndarray, *, resolution: float = 1.0, seed: int = 0, k: int = 15) -> tuple[np.ndarray, str]:
    """Cluster cells by their vectors: Leiden on a kNN graph when scanpy is installed, else k-means.

    Returns the cluster of each cell and the algorithm used.
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
        from sklearn.cluster import KMeans

        n_clusters = int(max(2, min(50, round(np.sqrt(n / 10)))))
        model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=4)
        return model.fit_predict(vectors).astype(np.int64), "kmeans"


def majority_labels(labels: Sequence[str], clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's cluster majority label and the share of its cluster that holds that label."""
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=object), "cluster": clusters})
    counts = frame.groupby(["cluster", "label"], observed=True).size().rename("n").reset_index()
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    top = counts.drop_duplicates("cluster").set_index("cluster")
    sizes = frame.groupby("cluster").size()
    majority = top["label"].reindex(clusters).to_numpy()
    share = (top["n"] / sizes).reindex(clusters).to_numpy(dtype=np.float32)
    return majority, share
