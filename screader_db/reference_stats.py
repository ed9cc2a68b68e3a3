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

from screader_db.expression_stream import ExpressionStream, GeneMoments
from screader_db.inputs import ExpressionSource, GenePlan, input_scale_of, rows_in_block
from screader_db.progress import SILENT, Reporter

SAMPLE_CELLS = 10_000


@dataclass
class ReferenceStats:
    """Sufficient statistics of a log-normalised reference over ``genes``.

    Attributes
    ----------
    genes, labels : list of str
        The columns, and the sorted labels the per-label rows follow.
    n_cells : int
        Cells read.
    kind : str
        The scale the reference's values were read on.
    log_sum : numpy.ndarray
        Per gene: sum of log-normalised values.
    moments : GeneMoments
        Per gene: linear (counts per 10,000) sums, sums of squares and detection counts.
    class_counts : numpy.ndarray
        Cells per label.
    class_log_sum, class_log_sumsq, class_detected : numpy.ndarray
        Per label and gene: sum and sum of squares of log values, and cells detecting the gene.
    sample_rows : numpy.ndarray
        Row positions of the sampled cells (see :func:`stratified_sample`).
    sample : scipy.sparse.csr_matrix
        Their log-normalised rows (float32).
    """

    genes: list[str]
    labels: list[str]
    n_cells: int
    kind: str
    log_sum: np.ndarray
    moments: GeneMoments
    class_counts: np.ndarray
    class_log_sum: np.ndarray
    class_log_sumsq: np.ndarray
    class_detected: np.ndarray
    sample_rows: np.ndarray
    sample: sp.csr_matrix

    @property
    def linear_sum(self) -> np.ndarray:
        """Per gene: sum of linear values."""
        return self.moments.linear_sum

    @property
    def linear_sumsq(self) -> np.ndarray:
        """Per gene: sum of squared linear values."""
        return self.moments.linear_sumsq

    @property
    def detected(self) -> np.ndarray:
        """Per gene: cells detecting it."""
        return self.moments.detected

    @property
    def mean(self) -> np.ndarray:
        """Per gene: mean log-normalised value (float32)."""
        return (self.log_sum / max(self.n_cells, 1)).astype(np.float32)

    def linear_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per gene: mean and unbiased variance of the linear values (see :meth:`GeneMoments.mean_var`).

        Returns
        -------
        tuple of numpy.ndarray
            (mean, variance), float64.
        """
        return self.moments.mean_var()

    def class_means(self) -> np.ndarray:
        """Labels × genes: mean log value.

        Returns
        -------
        numpy.ndarray
            float64, rows following :attr:`labels` (a label without cells gives zeros).
        """
        return self.class_log_sum / np.maximum(self.class_counts, 1)[:, None]

    def class_fractions(self) -> np.ndarray:
        """Labels × genes: share of the label's cells detecting the gene.

        Returns
        -------
        numpy.ndarray
            float64 in [0, 1], rows following :attr:`labels`.
        """
        return self.class_detected / np.maximum(self.class_counts, 1)[:, None]

    def class_variances(self) -> np.ndarray:
        """Labels × genes: variance of the log values (population, clipped at 0).

        Returns
        -------
        numpy.ndarray
            float64, rows following :attr:`labels`.
        """
        n = np.maximum(self.class_counts, 1)[:, None]
        mean = self.class_log_sum / n
        return np.maximum(self.class_log_sumsq / n - mean**2, 0.0)

    def sample_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels of the sampled cells, from every cell's ``labels``.

        Parameters
        ----------
        labels : numpy.ndarray
            One label per reference cell, in the order the statistics were read.

        Returns
        -------
        numpy.ndarray
            One per row of :attr:`sample`.
        """
        return labels[self.sample_rows]


def stratified_sample(codes: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """Sorted row positions: up to ``size`` cells, every label represented (small labels whole).

    Each label gets an equal share of the budget; what small labels leave unused goes to the
    larger ones, so prototypes of rare types are fitted on all their cells.

    Parameters
    ----------
    codes : numpy.ndarray
        Each cell's label code (0 ..).
    size : int
        Most cells to pick.
    seed : int
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        Sorted row positions.
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

    Parameters
    ----------
    source : ExpressionSource
        The reference's expression.
    plan : GenePlan
        The genes the statistics are taken over.
    labels : numpy.ndarray
        Each cell's label.
    chunk : int
        Rows per chunk.
    sample_cells : int
        Most cells kept as a sample (:func:`stratified_sample`); 0 keeps none.
    seed : int
        Seed of the sample.
    kind : str or None
        The scale of the values, as the reference was opened with (``ref.kind``); None tells it
        with :func:`screader_db.inputs.input_scale_of`.
    reporter : Reporter
        Receives the progress.

    Returns
    -------
    ReferenceStats

    Raises
    ------
    InputDataError
        A chunk holds NaN, infinite or negative values, or no scale fits the values.
    """
    names = sorted(set(labels.tolist()))
    code = {name: i for i, name in enumerate(names)}
    codes = np.array([code[v] for v in labels], dtype=np.int64)
    n, g, c = source.n_cells, len(plan.genes), len(names)
    sample_rows = stratified_sample(codes, sample_cells, seed=seed)
    log_sum = np.zeros(g)
    moments = GeneMoments(g, sum_dtype=np.float32)
    class_counts = np.bincount(codes, minlength=c).astype(np.int64)
    class_log_sum = np.zeros((c, g))
    class_log_sumsq = np.zeros((c, g))
    class_detected = np.zeros((c, g))
    sampled: list[sp.csr_matrix] = []
    stream = ExpressionStream(source, plan, kind or input_scale_of(source).scale)
    with reporter.task("Reading the reference", n, "cells") as advance:
        for start, X in stream.chunks(chunk):
            rows = codes[start : start + X.shape[0]]
            log_sum += np.asarray(X.sum(axis=0)).ravel()
            moments.add(X)
            binary = X.copy()
            binary.data = np.ones_like(binary.data)
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
    return ReferenceStats(genes=plan.genes, labels=names, n_cells=n, kind=stream.scale, log_sum=log_sum, moments=moments,
                          class_counts=class_counts, class_log_sum=class_log_sum, class_log_sumsq=class_log_sumsq,
                          class_detected=class_detected, sample_rows=sample_rows, sample=sample)
