"""Composition-balanced centring: the mean of k-means cluster centroids of a data set.

Centring each data set on its own gene means removes much of a platform or species shift, but
the plain mean depends on the cell-type mix (a query that is half beta cells is centred near
beta cells). The mean of cluster centroids counts each cell population about once, whatever its
size, so two data sets with different mixes are centred alike. Clusters come from seeded
k-means on the top principal components, averaged over several seeds for stability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

N_CLUSTERS = 20
SAMPLE_CELLS = 20_000
N_COMPONENTS = 30
SEEDS = 5


def _kmeans(points: np.ndarray, k: int, seed: int, *, iterations: int = 100, restarts: int = 3) -> np.ndarray:
    """Cluster index of each point: k-means++ starts, Lloyd steps, best of ``restarts`` by inertia."""
    rng = np.random.default_rng(seed)
    n = len(points)
    k = min(k, n)
    sq = (points**2).sum(axis=1)
    best_inertia, best = np.inf, np.zeros(n, dtype=np.int64)
    for _ in range(restarts):
        centres = [points[rng.integers(n)]]
        distance = ((points - centres[0]) ** 2).sum(axis=1)
        for _ in range(1, k):
            total = distance.sum()
            pick = rng.choice(n, p=distance / total) if total > 0 else rng.integers(n)
            centres.append(points[pick])
            distance = np.minimum(distance, ((points - centres[-1]) ** 2).sum(axis=1))
        centre = np.stack(centres)
        labels = np.zeros(n, dtype=np.int64)
        for _ in range(iterations):
            d = sq[:, None] - 2 * points @ centre.T + (centre**2).sum(axis=1)[None, :]
            labels = d.argmin(axis=1)
            updated = np.stack([points[labels == j].mean(axis=0) if (labels == j).any() else centre[j] for j in range(k)])
            if np.allclose(updated, centre):
                break
            centre = updated
        inertia = d[np.arange(n), labels].sum()
        if inertia < best_inertia:
            best_inertia, best = inertia, labels
    return best


def balanced_mean(X: sp.spmatrix | np.ndarray, *, n_clusters: int = N_CLUSTERS, n_components: int = N_COMPONENTS,
                  seeds: int = SEEDS, seed: int = 0) -> np.ndarray:
    """Mean of the k-means centroids of the rows of ``X`` (averaged over ``seeds`` clusterings)."""
    dense = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)  # type: ignore[union-attr]
    if len(dense) <= n_clusters:
        return dense.mean(axis=0).astype(np.float32)
    centred = dense - dense.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    points = centred @ vectors[:, ::-1][:, : min(n_components, dense.shape[1])]
    means = []
    for r in range(seeds):
        labels = _kmeans(points, n_clusters, seed + r)
        means.append(np.stack([dense[labels == j].mean(axis=0) for j in np.unique(labels)]).mean(axis=0))
    return np.mean(means, axis=0).astype(np.float32)


def stream_centre(embedder: Any, mode: str, chunks: Callable[[], Iterator[tuple[int, sp.csr_matrix]]], n_cells: int, *,
                  sample_cells: int = SAMPLE_CELLS, seed: int = 0) -> np.ndarray:
    """The centring vector of a batch read in chunks: the reference's, its mean, or its balanced
    mean (from a seeded sample of at most ``sample_cells`` cells)."""
    if mode == "reference":
        return np.asarray(embedder.mean, dtype=np.float32)
    if mode == "query":
        total = None
        for _, block in chunks():
            part = np.asarray(block.sum(axis=0)).ravel()
            total = part if total is None else total + part
        return (np.zeros(len(embedder.genes)) if total is None else total / max(n_cells, 1)).astype(np.float32)
    from screader_db.inputs import sample_chunks

    return balanced_mean(sample_chunks(chunks, n_cells, sample_cells=sample_cells, seed=seed), seed=seed)
