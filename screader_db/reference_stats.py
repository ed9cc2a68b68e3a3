"""One streaming pass over a reference: the statistics every fitting step needs.

Per gene: mean of log-normalised expression and mean/variance of the linear (counts per
10,000) values, for variable-gene selection. Per label: cell counts, sums of log expression
and detection counts, for marker genes and centroids. Plus a seeded sample of cells for
anything fitted on cells (PCA, trained adaptors). Memory is bounded by labels × genes and the
sample size, not by the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from screader_db.inputs import ExpressionSource, GenePlan, check_values, input_scale_of, normalise, rows_in_block
from screader_db.progress import SILENT, Reporter

SAMPLE_CELLS = 10_000


@dataclass
class ReferenceStats:
    """Sufficient statistics of a log-normalised reference over ``genes``."""

    genes: list[str]
    labels: list[str]
    n_cells: int
    kind: str
    log_sum: np.ndarray
    linear_sum: np.ndarray
    linear_sumsq: np.ndarray
    detected: np.ndarray
    class_counts: np.ndarray
    class_log_sum: np.ndarray
    class_log_sumsq: np.ndarray
    class_detected: np.ndarray
    sample_rows: np.ndarray
    sample: sp.csr_matrix

    @property
    def mean(self) -> np.ndarray:
        return (self.log_sum / max(self.n_cells, 1)).astype(np.float32)

    def linear_moments(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n_cells, 1)
        mean = self.linear_sum / n
        var = (self.linear_sumsq / n - mean**2) * n / max(n - 1, 1)
        return mean, np.maximum(var, 0.0)

    def class_means(self) -> np.ndarray:
        return self.class_log_sum / np.maximum(self.class_counts, 1)[:, None]

    def class_fractions(self) -> np.ndarray:
        return self.class_detected / np.maximum(self.class_counts, 1)[:, None]

    def class_variances(self) -> np.ndarray:
        n = np.maximum(self.class_counts, 1)[:, None]
        mean = self.class_log_sum / n
        return np.maximum(self.class_log_sumsq / n - mean**2, 0.0)

    def sample_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels[self.sample_rows]


def stratified_sample(codes: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """Sorted row positions: up to ``size`` cells, every label represented (small labels whole).

    Each label gets an equal share of the budget; what small labels leave unused goes to the
    larger ones, so prototypes of rare types are fitted on all their cells.
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(codes)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if len(codes) <= size:
        return np.arange(len(codes))
    quota = np.zeros(len(counts), dtype=np.int64)
    budget = size
    open_labels = [c for c in range(len(counts)) if counts[c] > 0]
    while budget > 0 and open_labels:
        share = max(budget // len(open_labels), 1)
        for c in list(open_labels):
            take = min(share, counts[c] - quota[c], budget)
            quota[c] += take
            budget -= take
            if quota[c] >= counts[c]:
                open_labels.remove(c)
            if budget == 0:
                break
    picked = [rng.choice(np.flatnonzero(codes == c), size=quota[c], replace=False) for c in range(len(counts)) if quota[c]]
    return np.sort(np.concatenate(picked))


def collect(source: ExpressionSource, plan: GenePlan, labels: np.ndarray, *, chunk: int = 10_000,
            sample_cells: int = SAMPLE_CELLS, seed: int = 0, kind: str | None = None,
            reporter: Reporter = SILENT) -> ReferenceStats:
    """Read the reference once, chunk by chunk, into :class:`ReferenceStats`.

    ``kind`` is the scale of the values, as the reference was opened with (``ref.kind``);
    None detects it from the first cells."""
    names = sorted(set(labels.tolist()))
    code = {name: i for i, name in enumerate(names)}
    codes = np.array([code[v] for v in labels], dtype=np.int64)
    n, g, c = source.n_cells, len(plan.genes), len(names)
    sample_rows = stratified_sample(codes, sample_cells, seed=seed)
    log_sum = np.zeros(g)
    linear_sum = np.zeros(g)
    linear_sumsq = np.zeros(g)
    detected = np.zeros(g)
    class_counts = np.bincount(codes, minlength=c).astype(np.int64)
    class_log_sum = np.zeros((c, g))
    class_log_sumsq = np.zeros((c, g))
    class_detected = np.zeros((c, g))
    sampled: list[sp.csr_matrix] = []
    kind = kind or input_scale_of(source).scale
    with reporter.task("Reading the reference", n, "cells") as advance:
        for start, block in source.chunks(chunk):
            check_values(block)
            X = normalise(block, kind, plan)
            rows = codes[start : start + X.shape[0]]
            log_sum += np.asarray(X.sum(axis=0)).ravel()
            linear = X.copy()
            linear.data = np.expm1(linear.data)
            linear_sum += np.asarray(linear.sum(axis=0)).ravel()
            linear.data = linear.data.astype(np.float64) ** 2
            linear_sumsq += np.asarray(linear.sum(axis=0)).ravel()
            binary = X.copy()
            binary.data = np.ones_like(binary.data)
            detected += np.asarray(binary.sum(axis=0)).ravel()
            onehot = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(c, len(rows)))
            class_log_sum += np.asarray((onehot @ X).todense())
            squared = X.copy()
            squared.data = squared.data.astype(np.float64) ** 2
            class_log_sumsq += np.asarray((onehot @ squared).todense())
            class_detected += np.asarray((onehot @ binary).todense())
            local = rows_in_block(sample_rows, start, X.shape[0])
            if len(local):
                sampled.append(X[local])
            advance(X.shape[0])
    sample = sp.csr_matrix(sp.vstack(sampled), dtype=np.float32) if sampled else sp.csr_matrix((0, g), dtype=np.float32)
    return ReferenceStats(genes=plan.genes, labels=names, n_cells=n, kind=kind, log_sum=log_sum, linear_sum=linear_sum,
                          linear_sumsq=linear_sumsq, detected=detected, class_counts=class_counts,
                          class_log_sum=class_log_sum, class_log_sumsq=class_log_sumsq, class_detected=class_detected,
                          sample_rows=sample_rows,
                          sample=sample)
