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

from screader_db.clusters import group_means, kmeans

N_CLUSTERS = 20
SAMPLE_CELLS = 20_000
N_COMPONENTS = 30
SEEDS = 5


def balanced_mean(X: sp.spmatrix | np.ndarray, *, n_clusters: int = N_CLUSTERS, n_components: int = N_COMPONENTS,
                  seeds: int = SEEDS, seed: int = 0) -> np.ndarray:
    """Mean of the k-means centroids of the rows of ``X`` (averaged over ``seeds`` clusterings).

    Parameters
    ----------
    X
        (cells, genes) expression, sparse or dense.
    n_clusters
        Clusters per k-means; with no more cells than this, the plain mean is returned.
    n_components
        Principal components the cells are clustered on.
    seeds
        Clusterings averaged (seeds ``seed`` to ``seed + seeds - 1``).
    seed
        First seed.

    Returns
    -------
    numpy.ndarray
        float32 centring vector over the genes.
    """
    dense = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)  # type: ignore[union-attr]
    if len(dense) <= n_clusters:
        return dense.mean(axis=0).astype(np.float32)
    points = principal_points(dense - dense.mean(axis=0), n_components)
    means = []
    for r in range(seeds):
        labels = kmeans(points, n_clusters, seed=seed + r)
        means.append(group_means(dense, labels, n_clusters)[np.unique(labels)].mean(axis=0))
    return np.mean(means, axis=0).astype(np.float32)


def principal_points(centred: np.ndarray, n_components: int) -> np.ndarray:
    """The rows of a centred matrix on its first principal components.

    From the eigenvectors of the smaller of the two cross-products: the genes × genes one, or for
    fewer cells than genes (a small query) the cells × cells one, whose eigenvectors scaled by the
    square roots of their eigenvalues are the same points (each component's sign aside, which no
    distance sees).

    Parameters
    ----------
    centred : numpy.ndarray
        (cells, genes) float64, each column centred.
    n_components : int
        Components kept (at most the smaller dimension).

    Returns
    -------
    numpy.ndarray
        (cells, components) float64.
    """
    cells, genes = centred.shape
    kept = min(n_components, genes)
    if cells >= genes:
        _, vectors = np.linalg.eigh(centred.T @ centred)
        return centred @ vectors[:, ::-1][:, :kept]
    values, vectors = np.linalg.eigh(centred @ centred.T)
    return vectors[:, ::-1][:, :kept] * np.sqrt(np.clip(values[::-1][:kept], 0.0, None))


def stream_centre(embedder: Any, mode: str, chunks: Callable[[], Iterator[tuple[int, sp.csr_matrix]]], n_cells: int, *,
                  sample_cells: int = SAMPLE_CELLS, seed: int = 0) -> np.ndarray:
    """The centring vector of a batch read in chunks.

    Parameters
    ----------
    embedder
        The cell embedder (its ``mean`` and ``genes``).
    mode
        ``reference`` (the embedder's own mean), ``query`` (the batch's mean) or otherwise the
        batch's balanced mean (:func:`balanced_mean`).
    chunks
        Called with no argument, yields (first row, cells × genes block) over the batch.
    n_cells
        Cells in the batch.
    sample_cells
        Most cells the balanced mean is computed on (a seeded sample).
    seed
        Seed of the sample and the clusterings.

    Returns
    -------
    numpy.ndarray
        float32 centring vector over the embedder's genes.
    """
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
