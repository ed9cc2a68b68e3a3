"""Marker genes and gene weights fitted on a labelled reference (from streaming statistics).

Markers: for each label, genes ranked by mean log expression inside the label minus outside
it, among genes detected in at least ``min_fraction`` of the label's cells; the union of the
top ``per_label`` of every label. Weights: η² per gene, the share of its variance that lies
between labels (each label counted once, whatever its size).
"""

from __future__ import annotations

import numpy as np

from screader_db.reference_stats import ReferenceStats

MAX_GENES = 600


def markers_per_label(n_labels: int, per_label: int = 50, max_genes: int = MAX_GENES) -> int:
    """Markers per label: ``per_label``, fewer for many labels so the union stays near ``max_genes``.

    Parameters
    ----------
    n_labels : int
        Labels of the reference (0 counts as 1).
    per_label : int
        The most markers per label.
    max_genes : int
        The size the union of all labels' markers should stay near.

    Returns
    -------
    int
        ``min(per_label, max_genes // n_labels)``, but never fewer than 10.
    """
    return int(max(10, min(per_label, max_genes // max(n_labels, 1))))


def select_markers(stats: ReferenceStats, *, per_label: int = 50, min_fraction: float = 0.2,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """Indices (into ``stats.genes``) of the marker genes, in label order, without repeats.

    Parameters
    ----------
    stats : ReferenceStats
        The reference's per-label statistics.
    per_label : int
        The most genes taken per label (by mean log value inside the label minus outside it).
    min_fraction : float
        Genes detected in fewer than this share of a label's cells are not its markers.
    allowed : numpy.ndarray of bool or None
        Mask over ``stats.genes`` of the genes that may be chosen; None allows all.

    Returns
    -------
    numpy.ndarray of int64
        Each label's top genes, best first, after those of earlier labels; a gene already chosen is not
        repeated, and a label with few eligible genes gives fewer than ``per_label``.
    """
    means = stats.class_means()
    fractions = stats.class_fractions()
    counts = stats.class_counts.astype(np.float64)
    total = stats.log_sum
    chosen: dict[int, None] = {}
    for c in range(len(stats.labels)):
        outside = max(stats.n_cells - counts[c], 1.0)
        score = means[c] - (total - stats.class_log_sum[c]) / outside
        score[fractions[c] < min_fraction] = -np.inf
        if allowed is not None:
            score[~allowed] = -np.inf
        order = np.argsort(-score, kind="stable")[:per_label]
        for gene in order:
            if np.isfinite(score[gene]):
                chosen[int(gene)] = None
    return np.fromiter(chosen, dtype=np.int64)


def eta_squared(stats: ReferenceStats, genes: np.ndarray) -> np.ndarray:
    """Between-label share of each gene's variance: Var_k(μ_k) / (Var_k(μ_k) + mean_k Var_k).

    Parameters
    ----------
    stats : ReferenceStats
        The reference's per-label statistics; labels with no cells are left out.
    genes : numpy.ndarray of int
        Indices into ``stats.genes`` of the genes to weigh.

    Returns
    -------
    numpy.ndarray of float32, shape (len(genes),)
        η² of each gene in [0, 1), over log values (1e-6 is added to the denominator).
    """
    present = stats.class_counts > 0
    means = stats.class_means()[present][:, genes]
    within = stats.class_variances()[present][:, genes]
    between = means.var(axis=0)
    return (between / (between + within.mean(axis=0) + 1e-6)).astype(np.float32)
