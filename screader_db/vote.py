"""Turning the labels of a cell's nearest reference cells into one label with a confidence.

Each neighbour votes for its label with weight max(cos, 0)^power (power 4 by default: close
neighbours count far more than loose ones, which lets a small label win where it is clearly
closest). The vote shares can then be smoothed over the query's own neighbour graph (label
propagation): cells of one population in the query agree with each other far more reliably
than any of them agrees with another data set, so a few mislabelled cells are pulled back to
their population's label while distinct small populations keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

DEFAULT_POWER = 4.0
DEFAULT_PROPAGATION = 0.0
GRAPH_K = 15
ITERATIONS = 20
EXACT_GRAPH_CELLS = 20_000  # larger queries get an approximate neighbour graph


@dataclass
class Vote:
    """Per query cell: label shares, winning label code, its share, runner-up, margin, similarity.

    Attributes
    ----------
    shares
        (cells, labels) vote shares, each row summing to 1 (or 0 without neighbours).
    best, second
        Label codes of the winner and the runner-up (-1 with a single label).
    score
        The winner's share.
    margin
        The winner's share minus the runner-up's.
    mean_similarity
        Mean similarity of the neighbours that have a label.
    """

    shares: np.ndarray
    best: np.ndarray
    score: np.ndarray
    second: np.ndarray
    margin: np.ndarray
    mean_similarity: np.ndarray


def tally(similarities: np.ndarray, codes: np.ndarray, n_labels: int, *, power: float = DEFAULT_POWER) -> np.ndarray:
    """Label shares per cell from its neighbours, each weighted max(similarity, 0) ** power.

    Parameters
    ----------
    similarities
        (cells, k) similarity of each neighbour.
    codes
        (cells, k) label index of each neighbour, -1 for none.
    n_labels
        Number of labels.
    power
        Exponent of the weights.

    Returns
    -------
    numpy.ndarray
        (cells, n_labels) shares.
    """
    n = similarities.shape[0]
    weights = np.clip(similarities.astype(np.float64), 0.0, None) ** power + 1e-9
    weights[codes < 0] = 0.0
    table = np.zeros((n, n_labels), dtype=np.float64)
    valid = codes.ravel() >= 0
    rows = np.repeat(np.arange(n), codes.shape[1])
    np.add.at(table, (rows[valid], codes.ravel()[valid]), weights.ravel()[valid])
    total = table.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    return table / total


def query_graph(vectors: np.ndarray, *, k: int = GRAPH_K, seed: int = 0) -> sp.csr_matrix:
    """Row-normalised kNN graph of the query cells (cosine, self excluded).

    Exact up to ``EXACT_GRAPH_CELLS`` cells, approximate (:func:`screader_db.index.knn`) above.

    Parameters
    ----------
    vectors
        Unit rows of the query cells.
    k
        Neighbours per cell.
    seed
        Seed of the approximate index's training sample.

    Returns
    -------
    scipy.sparse.csr_matrix
        (cells, cells) weights max(cos, 0), each row summing to 1 (or 0).
    """
    from screader_db.index import knn

    n = len(vectors)
    k = min(k, n - 1)
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    sims, ids = knn(data, data, k + 1, approximate=n > EXACT_GRAPH_CELLS, seed=seed)
    rows, cols, vals = [], [], []
    for j in range(k + 1):
        keep = (ids[:, j] != np.arange(n)) & (ids[:, j] >= 0)
        rows.append(np.flatnonzero(keep))
        cols.append(ids[keep, j])
        vals.append(np.clip(sims[keep, j], 0.0, None))
    graph = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    degree = np.asarray(graph.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / degree) @ graph)


def propagate(shares: np.ndarray, graph: sp.csr_matrix, alpha: float, *, iterations: int = ITERATIONS) -> np.ndarray:
    """P ← (1 - α)·P₀ + α·W·P, repeated: each cell's shares blended with its query neighbours'.

    Parameters
    ----------
    shares
        (cells, labels) vote shares P₀.
    graph
        Row-normalised query graph W (:func:`query_graph`).
    alpha
        Weight of the neighbours; 0 or less returns ``shares`` unchanged.
    iterations
        Number of updates.

    Returns
    -------
    numpy.ndarray
        The smoothed shares.
    """
    if alpha <= 0:
        return shares
    current = shares.copy()
    for _ in range(iterations):
        current = (1 - alpha) * shares + alpha * (graph @ current)
    return current


def decide(shares: np.ndarray, similarities: np.ndarray, codes: np.ndarray) -> Vote:
    """Winner, share, runner-up and margin of each row of ``shares``.

    Parameters
    ----------
    shares
        (cells, labels) vote shares.
    similarities, codes
        (cells, k) neighbour similarities and label codes (-1 = none), for the mean similarity.

    Returns
    -------
    Vote
    """
    n, n_labels = shares.shape
    order = np.argsort(-shares, axis=1, kind="stable")
    best = order[:, 0]
    second = order[:, 1] if n_labels > 1 else np.full(n, -1)
    best_share = shares[np.arange(n), best]
    second_share = shares[np.arange(n), second] if n_labels > 1 else np.zeros(n)
    valid_sims = np.where(codes >= 0, similarities, np.nan)
    mean_sim = np.nan_to_num(np.nanmean(valid_sims, axis=1), nan=0.0)
    return Vote(shares=shares, best=best, score=best_share.astype(np.float32), second=second,
                margin=(best_share - second_share).astype(np.float32), mean_similarity=mean_sim.astype(np.float32))


def knn_vote(similarities: np.ndarray, codes: np.ndarray, n_labels: int, *, power: float = DEFAULT_POWER) -> Vote:
    """The vote of each cell's own neighbours, without smoothing.

    Parameters
    ----------
    similarities, codes, n_labels, power
        As for :func:`tally`.

    Returns
    -------
    Vote
    """
    return decide(tally(similarities, codes, n_labels, power=power), similarities, codes)
