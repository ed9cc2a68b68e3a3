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
    """Markers per label: ``per_label``, fewer for many labels so the union stays near ``max_genes``."""
    return int(max(10, min(per_label, max_genes // max(n_labels, 1))))


def select_markers(stats: ReferenceStats, *, per_label: int = 50, min_fraction: float = 0.2,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """Indices (into ``stats.genes``) of the marker genes, in label order, without repeats."""
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
    """Between-label share of each gene's variance: Var_k(μ_k) / (Var_k(μ_k) + mean_k Var_k)."""
    present = stats.class_counts > 0
    means = stats.class_means()[present][:, genes]
    within = stats.class_variances()[present][:, genes]
    between = means.var(axis=0)
    return (between / (between + within.mean(axis=0) + 1e-6)).astype(np.float32)
