"""Two-dimensional maps: a UMAP of the reference cells, and query cells placed on it.

The reference layout is computed once, when the atlas is built, on at most ``SAMPLE`` cells;
every other cell (reference or query) is placed at the similarity-weighted mean position of
its nearest laid-out neighbours, so placing a query costs nothing beyond the search.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from screader_db.errors import ScreaderWarning
from screader_db.extras import missing_extra

SAMPLE = 50_000
# From this many laid-out cells on, the rest are placed from an approximate (IVF) search of them:
# a million cells placed among 50,000 in 61 s instead of 138 s, sub-state purity 0.81 against 0.75.
PLACE_APPROXIMATE = 10_000
PLACE_TEMPERATURE = 0.05
# UMAP's optimisation epochs; its own default is 500 below 10,000 cells, 200 above.
EPOCHS = 200


def umap_layout(vectors: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """UMAP (cosine) of unit vectors, or their first two principal components without umap-learn.

    Without umap-learn (the ``layout`` extra) a :class:`~screader_db.errors.ScreaderWarning` names the extra.

    Parameters
    ----------
    vectors : numpy.ndarray
        (cells, dim) unit rows.
    seed : int
        UMAP's random state.
    n_neighbors : int
        UMAP's neighbours (at most cells - 1).

    Returns
    -------
    numpy.ndarray
        float32 (cells, 2) coordinates; all zeros for fewer than 10 cells.
    """
    if len(vectors) < 10:
        return np.zeros((len(vectors), 2), dtype=np.float32)
    try:
        import umap
    except ImportError as err:
        note = missing_extra(err, extra="layout", purpose="the reference UMAP")
        warnings.warn(f"{note}; the map shows the first two principal components instead", ScreaderWarning, stacklevel=2)
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return (centred @ vt[:2].T).astype(np.float32)
    from screader_db.index import knn

    k = min(n_neighbors, len(vectors) - 1)
    sims, rows = knn(vectors, vectors, k)
    distances = np.clip(1.0 - sims, 0.0, None).astype(np.float32)
    cache_compiled(("umap", "pynndescent"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1, low_memory=True,
                          n_epochs=EPOCHS, precomputed_knn=(rows.astype(np.int32), distances, None))
        return np.asarray(model.fit_transform(vectors), dtype=np.float32)


def cache_compiled(packages: tuple[str, ...]) -> int:
    """Keep the numba-compiled functions of loaded ``packages`` in the project's cache folder across runs.

    umap-learn and pynndescent compile most of their functions without numba's on-disk cache, which
    made every build spend its first ~20 s compiling. Each of their module-level compiled functions
    not yet cached gets a cache under ``numba/`` in :func:`screader_db.cache.cache_dir`; a later
    process loads the machine code instead of compiling it again.

    Parameters
    ----------
    packages : tuple of str
        Top-level package names whose loaded modules are looked through.

    Returns
    -------
    int
        Functions given a cache by this call.
    """
    import sys

    import numba
    from numba.core.caching import FunctionCache, NullCache
    from numba.core.dispatcher import Dispatcher

    from screader_db.cache import cache_dir

    config: Any = numba.config
    kept, folder = config.CACHE_DIR, str(cache_dir("numba"))
    config.CACHE_DIR = folder  # where the caches made below keep their files
    compiled: list[Any] = [value for name, module in list(sys.modules.items())
                           if module is not None and name.split(".")[0] in packages
                           for value in list(vars(module).values()) if isinstance(value, Dispatcher)]
    cached = 0
    try:
        for function in compiled:
            if isinstance(function._cache, NullCache):
                function._cache = FunctionCache(function.py_func)
                cached += 1
    finally:
        config.CACHE_DIR = kept
    return cached


def place(similarities: np.ndarray, neighbour_positions: np.ndarray) -> np.ndarray:
    """Positions from neighbours: softmax(similarity / T)-weighted mean of their 2-D coordinates.

    Parameters
    ----------
    similarities : numpy.ndarray
        (cells, k) similarities of each cell to its neighbours.
    neighbour_positions : numpy.ndarray
        (cells, k, 2) the neighbours' coordinates; a neighbour without a position is NaN and gets no weight.

    Returns
    -------
    numpy.ndarray
        float32 (cells, 2); a cell none of whose neighbours has a position is placed at (0, 0).
        T is :data:`PLACE_TEMPERATURE`.
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
    """A 2-D map of every reference cell: UMAP on a sample, the rest placed from its neighbours.

    Parameters
    ----------
    vectors
        Unit rows of the reference cells.
    seed
        Seed of the sample and the UMAP.
    sample
        Most cells laid out by UMAP; the others are placed from their ``k`` nearest laid-out cells
        (found by an approximate search from :data:`PLACE_APPROXIMATE` laid-out cells on).
    k
        Neighbours a placed cell is positioned from (:func:`place`).

    Returns
    -------
    numpy.ndarray
        float32 (cells, 2) coordinates.
    """
    n = len(vectors)
    if n <= sample:
        return umap_layout(vectors, seed=seed)
    from screader_db.index import ApproximateKnn, knn

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=sample, replace=False))
    coords = np.full((n, 2), np.nan, dtype=np.float32)
    coords[chosen] = umap_layout(vectors[chosen], seed=seed)
    laid_out = np.ascontiguousarray(vectors[chosen], dtype=np.float32)
    searcher = ApproximateKnn(laid_out, seed=seed) if sample >= PLACE_APPROXIMATE else None  # trained once
    rest = np.setdiff1d(np.arange(n), chosen)
    for start in range(0, len(rest), 50_000):
        rows = rest[start : start + 50_000]
        sims, pos = knn(vectors[rows], laid_out, k) if searcher is None else searcher.search(vectors[rows], k)
        coords[rows] = place(sims, coords[chosen][pos])
    return coords
