"""Choosing the genes an atlas is built on (highly variable genes of the reference)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def gene_moments(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance of a sparse matrix, without densifying it.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n_cells, n_genes)
        Cells by genes.

    Returns
    -------
    mean : numpy.ndarray of float64, shape (n_genes,)
    var : numpy.ndarray of float64, shape (n_genes,)
        Unbiased (n - 1) variance, clipped at 0.
    """
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel().astype(np.float64)
    sq = X.copy()
    sq.data = sq.data.astype(np.float64) ** 2
    mean_sq = np.asarray(sq.mean(axis=0)).ravel()
    var = (mean_sq - mean**2) * n / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def highly_variable(X_log: sp.csr_matrix, n_top: int = 3000, *, n_bins: int = 20, min_cells: int = 3) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes, Seurat flavour (as scanpy's default).

    Dispersion (variance / mean of the un-logged data) is z-scored within 20 bins of mean
    expression, so highly expressed genes do not win by their level alone.

    Parameters
    ----------
    X_log : scipy.sparse.csr_matrix, shape (n_cells, n_genes)
        Log-normalised (natural ``log1p``) expression; ``expm1`` gives the linear values.
    n_top : int
        How many genes to pick.
    n_bins : int
        Bins of log mean expression the dispersions are z-scored within.
    min_cells : int
        Genes detected in fewer cells are never picked.

    Returns
    -------
    numpy.ndarray of int, sorted
        Column indices; fewer than ``n_top`` when fewer genes are usable.
    """
    linear = X_log.copy()
    linear.data = np.expm1(linear.data)
    mean, var = gene_moments(linear)
    detected = np.asarray((X_log > 0).sum(axis=0)).ravel()
    return variable_from_moments(mean, var, detected, n_top, n_bins=n_bins, min_cells=min_cells)


def variable_from_moments(mean: np.ndarray, var: np.ndarray, detected: np.ndarray, n_top: int, *, n_bins: int = 20,
                          min_cells: int = 3) -> np.ndarray:
    """The Seurat-flavour selection from per-gene linear mean, variance and detection counts.

    Parameters
    ----------
    mean, var : numpy.ndarray, shape (n_genes,)
        Per gene: mean and variance of the linear (un-logged) values.
    detected : numpy.ndarray, shape (n_genes,)
        Per gene: cells with a non-zero value.
    n_top : int
        How many genes to pick.
    n_bins : int
        Equal-width bins of ``log1p(mean)`` the log dispersions are z-scored within; a bin with one gene or no
        spread scores its genes 1.
    min_cells : int
        Genes detected in fewer cells, or with zero dispersion, are never picked.

    Returns
    -------
    numpy.ndarray of int, sorted
        Indices of the highest-scoring genes; fewer than ``n_top`` when fewer genes are usable.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.where(mean > 0, var / mean, 0.0)
        dispersion[dispersion == 0] = np.nan
        log_disp = np.log(dispersion)
        log_mean = np.log1p(mean)
    usable = (detected >= min_cells) & np.isfinite(log_disp)
    edges = np.linspace(log_mean[usable].min(), log_mean[usable].max(), n_bins + 1) if usable.any() else np.array([0, 1])
    bins = np.clip(np.digitize(log_mean, edges[1:-1]), 0, n_bins - 1)
    score = np.full(len(mean), -np.inf)
    for b in range(n_bins):
        members = usable & (bins == b)
        if not members.any():
            continue
        values = log_disp[members]
        sd = values.std(ddof=1) if members.sum() > 1 else 0.0
        score[members] = (values - values.mean()) / sd if sd > 0 else 1.0
    order = np.argsort(-score, kind="stable")
    chosen = order[: min(n_top, int(np.isfinite(score).sum()))]
    return np.sort(chosen)

