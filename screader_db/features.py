"""Choosing the genes an atlas is built on (highly variable genes of the reference)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


def gene_moments(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance of a sparse matrix, without densifying it."""
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
    """
    linear = X_log.copy()
    linear.data = np.expm1(linear.data)
    mean, var = gene_moments(linear)
    detected = np.asarray((X_log > 0).sum(axis=0)).ravel()
    return variable_from_moments(mean, var, detected, n_top, n_bins=n_bins, min_cells=min_cells)


def variable_from_moments(mean: np.ndarray, var: np.ndarray, detected: np.ndarray, n_top: int, *, n_bins: int = 20,
                          min_cells: int = 3) -> np.ndarray:
    """The Seurat-flavour selection from per-gene linear mean, variance and detection counts."""
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


def stream_moments(blocks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-scale mean, variance and detection counts per gene over log-normalised row blocks."""
    total = total_sq = detected = None
    n = 0
    for _, block in blocks:
        linear = block.copy()
        linear.data = np.expm1(linear.data).astype(np.float64)
        part = np.asarray(linear.sum(axis=0)).ravel()
        linear.data **= 2
        part_sq = np.asarray(linear.sum(axis=0)).ravel()
        hits = np.diff(block.tocsc().indptr).astype(np.float64)
        total = part if total is None else total + part
        total_sq = part_sq if total_sq is None else total_sq + part_sq
        detected = hits if detected is None else detected + hits
        n += block.shape[0]
    if total is None or total_sq is None or detected is None:
        raise ValueError("no rows to summarise")
    mean = total / max(n, 1)
    var = np.maximum((total_sq / max(n, 1) - mean**2) * n / max(n - 1, 1), 0.0)
    return mean, var, detected
