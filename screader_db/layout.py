"""Two-dimensional maps: a UMAP of the reference cells, and query cells placed on it.

The reference layout is computed once, when the atlas is built, on at most ``SAMPLE`` cells;
every other cell (reference or query) is placed at the similarity-weighted mean position of
its nearest laid-out neighbours, so placing a query costs nothing beyond the search.
"""

from __future__ import annotations

import warnings

import numpy as np

SAMPLE = 50_000
PLACE_TEMPERATURE = 0.05


def umap_layout(vectors: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """UMAP (cosine) of unit vectors; falls back to the first two principal components without umap-learn."""
    if len(vectors) < 10:
        return np.zeros((len(vectors), 2), dtype=np.float32)
    try:
        import umap
    except ImportError:
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return (centred @ vt[:2].T).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_neighbors=min(n_neighbors, len(vectors) - 1), metric="cosine", random_state=seed,
                          n_jobs=1, low_memory=True)
        return np.asarray(model.fit_transform(vectors), dtype=np.float32)


def place(similarities: np.ndarray, neighbour_positions: np.ndarray) -> np.ndarray:
    """Positions from neighbours: softmax(similarity / T)-weighted mean of their 2-D coordinates.

    ``neighbour_positions`` has shape (cells, k, 2); neighbours without a position are NaN.
    """
    sims = np.where(np.isnan(neighbour_positions[..., 0]), -np.inf, similarities.astype(np.float64))
    top = np.max(sims, axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    weights = np.exp((sims - top) / PLACE_TEMPERATURE)
    weights[~np.isfinite(sims)] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    coords = np.nan_to_num(neighbour_positions, nan=0.0)
    return (np.einsum("nk,nkd->nd", weights / total, coords)).astype(np.float32)


def reference_layout(vectors: np.ndarray, *, seed: int = 0, sample: int = SAMPLE, k: int = 15) -> np.ndarray:
    """A 2-D map of every reference cell: UMAP on a sample, the rest placed from its neighbours."""
    n = len(vectors)
    if n <= sample:
        return umap_layout(vectors, seed=seed)
    import faiss

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=sample, replace=False))
    coords = np.full((n, 2), np.nan, dtype=np.float32)
    coords[chosen] = umap_layout(vectors[chosen], seed=seed)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors[chosen]))
    rest = np.setdiff1d(np.arange(n), chosen)
    for start in range(0, len(rest), 50_000):
        rows = rest[start : start + 50_000]
        sims, pos = index.search(np.ascontiguousarray(vectors[rows]), k)
        coords[rows] = place(sims, coords[chosen][pos])
    return coords
