"""Composition-balanced centring: the mean of k-means cluster centroids of a data set.

Centring each data set on its own gene means removes much of a platform or species shift, but
the plain mean depends on the cell-type mix (a query that is half beta cells is centred near
beta cells). The mean of cluster centroids counts each cell population about once, whatever its
size, so two data sets with different mixes are centred alike. Clusters come from seeded
k-means on the top principal components, averaged over several seeds for stability.

A query that holds only a few of the reference's types (sorted cells, one lineage) is not a
different mix of the same populations: its balanced mean sits on those types and centring on it
erases what tells them apart. :func:`matched_centre` matches the query's clusters to the
reference labels' mean profiles, estimates the query's offset from them, and centres such a query
on the reference's centre plus that offset; a query whose clusters fit their labels no better that
way keeps its balanced mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.clusters import group_means, kmeans

N_CLUSTERS = 20
SAMPLE_CELLS = 20_000
N_COMPONENTS = 30
SEEDS = 5
# Rounds of matching a query's clusters to labels and re-estimating its offset (matched_centre).
MATCH_ROUNDS = 5
# How much better the clusters must match their labels to centre on the offset: mean cosine higher by
# MATCH_MARGIN, and the misfit at most MISFIT_RATIO of the balanced mean's. On the transfer suite's queries,
# which hold every type, the misfit ratio was 0.94-1.12, except a weak random panel whose clusters all
# matched one label (0.76); on queries of one type or one lineage, 0.15-0.62 (benchmarks/few_types.py).
MATCH_MARGIN = 0.1
MISFIT_RATIO = 0.7


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
    dense = _dense(X)
    if len(dense) <= n_clusters:
        return dense.mean(axis=0).astype(np.float32)
    return _mean_of(_centroid_sets(dense, n_clusters, n_components, seeds, seed))


def matched_centre(X: sp.spmatrix | np.ndarray, embedder: Any, *, seed: int = 0) -> np.ndarray:
    """The centring vector of a query: its balanced mean, or the reference's shifted by the query's offset
    from the labels its clusters match, when the query holds only some of the reference's types.

    The balanced mean (:func:`balanced_mean`) centres a query holding the reference's types alike (each
    population counted about once on both sides); a query of a few types (sorted cells, one lineage) is
    centred on those types themselves, which erases what tells them apart from the rest. Here each query
    cluster (those of every clustering of the balanced mean) is matched to the reference label whose mean
    profile it correlates with best after taking off an offset, and the offset is re-estimated as the
    median over clusters of cluster minus matched label (from none, :data:`MATCH_ROUNDS` rounds). The
    reference's centre plus that offset replaces the balanced mean when the clusters match their labels
    clearly better with it (:attr:`OffsetFit.better`).

    Parameters
    ----------
    X
        (cells, genes) log expression over the embedder's genes, sparse or dense.
    embedder
        The cell embedder: its ``mean`` (the reference's centre), ``weights`` and ``label_means``; without
        ``label_means`` the balanced mean is returned.
    seed
        First seed of the clusterings.

    Returns
    -------
    numpy.ndarray
        float32 centring vector over the genes.
    """
    return centre_and_fit(X, embedder, seed=seed)[0]


def centre_and_fit(X: sp.spmatrix | np.ndarray, embedder: Any, *, seed: int = 0) -> tuple[np.ndarray, OffsetFit | None]:
    """:func:`matched_centre`, and the fit that chose it (None where there was nothing to match).

    Parameters
    ----------
    X
        (cells, genes) log expression over the embedder's genes.
    embedder
        The cell embedder.
    seed
        First seed of the clusterings.

    Returns
    -------
    centre : numpy.ndarray
        float32 centring vector over the genes.
    fit : OffsetFit or None
        How the query's clusters matched the labels with the offset and with the balanced mean.
    """
    dense = _dense(X)
    means = getattr(embedder, "label_means", None)
    if means is None or len(dense) <= N_CLUSTERS:
        return balanced_mean(dense, seed=seed), None
    sets = _centroid_sets(dense, N_CLUSTERS, N_COMPONENTS, SEEDS, seed)
    balanced = _mean_of(sets)
    fit = match_offset(np.vstack(sets), balanced, np.asarray(embedder.mean, dtype=np.float64),
                       np.asarray(means, dtype=np.float64), embedder.weights)
    if fit.better:
        return (embedder.mean + fit.offset).astype(np.float32), fit
    return balanced, fit


@dataclass(frozen=True)
class OffsetFit:
    """A query's offset from the reference, and how well its clusters match their labels with that offset
    and with the balanced mean's: mean cosine, and mean squared distance (misfit) between each centred
    cluster and its matched label's centred profile."""

    offset: np.ndarray
    matched: float
    balanced: float
    matched_misfit: float
    balanced_misfit: float

    @property
    def better(self) -> bool:
        """Whether the offset fits clearly better: :data:`MATCH_MARGIN` higher cosine, and at most
        :data:`MISFIT_RATIO` of the balanced mean's misfit."""
        return (self.matched > self.balanced + MATCH_MARGIN
                and self.matched_misfit < MISFIT_RATIO * self.balanced_misfit)

    def describe(self, whose: str = "query") -> dict[str, Any]:
        """The query info entry: which centre was used and the figures that chose it.

        Parameters
        ----------
        whose : str
            What was centred, as the entry names it: ``query``, or ``batch`` for one batch of a query.

        Returns
        -------
        dict
            ``on`` (what the query was centred on), ``cosine_with_offset``, ``cosine_balanced`` and
            ``misfit_ratio`` (the offset's misfit over the balanced mean's).
        """
        ratio = self.matched_misfit / self.balanced_misfit if self.balanced_misfit > 0 else 0.0
        return {"on": f"the reference's centre plus the {whose}'s offset" if self.better else f"the {whose}'s balanced mean",
                "cosine_with_offset": round(self.matched, 4), "cosine_balanced": round(self.balanced, 4),
                "misfit_ratio": round(ratio, 4)}


def match_offset(centroids: np.ndarray, balanced: np.ndarray, reference_mean: np.ndarray, label_means: np.ndarray,
                 weights: np.ndarray | None = None) -> OffsetFit:
    """Estimate a query's offset from the reference by matching its cluster centroids to label means.

    Parameters
    ----------
    centroids
        (clusters, genes) the query's cluster centroids.
    balanced
        The query's balanced mean.
    reference_mean
        The reference's centre.
    label_means
        (labels, genes) the reference labels' mean profiles.
    weights
        Per-gene weights of the embedding, or None.

    Returns
    -------
    OffsetFit
    """
    from screader_db.cell_embedding import l2_normalise

    scale = np.ones(centroids.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    profiles = (label_means - reference_mean) * scale
    labels = l2_normalise(profiles)

    def matches(offset: np.ndarray) -> tuple[np.ndarray, float, float]:
        centred = (centroids - reference_mean - offset) * scale
        cosine = l2_normalise(centred) @ labels.T
        match = cosine.argmax(axis=1)
        misfit = float(((centred - profiles[match]) ** 2).sum(axis=1).mean())
        return match, float(cosine.max(axis=1).mean()), misfit

    offset = np.zeros(centroids.shape[1])
    for _ in range(MATCH_ROUNDS):
        match = matches(offset)[0]
        offset = np.median(centroids - label_means[match], axis=0)
    _, matched, matched_misfit = matches(offset)
    _, at_balanced, balanced_misfit = matches(balanced - reference_mean)
    return OffsetFit(offset=offset, matched=matched, balanced=at_balanced, matched_misfit=matched_misfit,
                     balanced_misfit=balanced_misfit)


def _dense(X: sp.spmatrix | np.ndarray) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)  # type: ignore[union-attr]


def _centroid_sets(dense: np.ndarray, n_clusters: int, n_components: int, seeds: int, seed: int) -> list[np.ndarray]:
    """The centroids of the non-empty clusters of each of ``seeds`` k-means clusterings."""
    points = principal_points(dense - dense.mean(axis=0), n_components)
    sets = []
    for r in range(seeds):
        labels = kmeans(points, n_clusters, seed=seed + r)
        sets.append(group_means(dense, labels, n_clusters)[np.unique(labels)])
    return sets


def _mean_of(sets: list[np.ndarray]) -> np.ndarray:
    return np.mean([centroids.mean(axis=0) for centroids in sets], axis=0).astype(np.float32)


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
                  sample_cells: int = SAMPLE_CELLS, seed: int = 0, fits: list[OffsetFit] | None = None) -> np.ndarray:
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
    fits
        Receives the :class:`OffsetFit` of a self-centred batch whose clusters were matched to labels.

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

    centre, fit = centre_and_fit(sample_chunks(chunks, n_cells, sample_cells=sample_cells, seed=seed), embedder, seed=seed)
    if fits is not None and fit is not None:
        fits.append(fit)
    return centre
