"""How likely a cell's label is right: the vote's calibrated confidence, corrected by the query itself.

The vote's confidence (:func:`screader_db.calibration.confidence_of`) is calibrated on a split of
the reference, where nearly every cell scores 1.0, so under a study or species shift it hardly
separates right from wrong. The signal that moved most on the transfer suite is the query's own
agreement: the share of a cell's nearest query cells (the query's kNN graph over the cell
vectors, similarity-weighted) whose label is the cell's. A cell on the edge between two query
populations, or inside a population whose cells the atlas scatters over several labels, is
wrong far more often than its vote alone says.

``confidence = sigmoid(a · logit(vote confidence) + b · agreement + c)``, with ``a``, ``b``, ``c``
fitted once across the transfer suite (``benchmarks/confidence.py``), each task family scored
by a fit on the others. Signals measured there and left out because they added nothing beside
these two: neighbour-label entropy, similarity relative to the reference's own neighbour
similarities, genes detected, agreement with the nearest label profile, query-cluster purity.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Fitted by benchmarks/confidence.py on every task of the transfer suite (README, "Confidence").
VOTE_WEIGHT = 0.29
AGREEMENT_WEIGHT = 4.38
INTERCEPT = -3.03
CLIP = 1e-3


def agreement(graph: sp.csr_matrix, codes: np.ndarray) -> np.ndarray:
    """Per cell: the weight share of its query neighbours (``graph``, row-normalised) labelled as it is.

    Parameters
    ----------
    graph : scipy.sparse.csr_matrix, shape (n_cells, n_cells)
        The query's kNN graph, each row's weights summing to 1 (a row with no neighbours gives 0).
    codes : numpy.ndarray of int, shape (n_cells,)
        Each cell's label code.

    Returns
    -------
    numpy.ndarray of float, shape (n_cells,)
        The sum of the weights of the neighbours sharing the cell's code, in [0, 1] for a row-normalised graph.
    """
    codes = np.asarray(codes, dtype=np.int64)
    coo = graph.tocoo()
    same = codes[coo.row] == codes[coo.col]
    return np.asarray(sp.csr_matrix((coo.data * same, (coo.row, coo.col)), shape=graph.shape).sum(axis=1)).ravel()


def combine(vote_confidence: np.ndarray, agreement_share: np.ndarray) -> np.ndarray:
    """The confidence of :data:`VOTE_WEIGHT` · logit(vote confidence) + :data:`AGREEMENT_WEIGHT` · agreement.

    Parameters
    ----------
    vote_confidence : numpy.ndarray, shape (n_cells,)
        The vote's calibrated confidence in [0, 1]; clipped to [:data:`CLIP`, 1 - :data:`CLIP`] before the logit.
    agreement_share : numpy.ndarray, shape (n_cells,)
        From :func:`agreement`.

    Returns
    -------
    numpy.ndarray of float32, shape (n_cells,)
        ``sigmoid(z)`` with :data:`INTERCEPT` added to ``z``; in (0, 1).
    """
    p = np.clip(np.asarray(vote_confidence, dtype=np.float64), CLIP, 1 - CLIP)
    z = VOTE_WEIGHT * np.log(p / (1 - p)) + AGREEMENT_WEIGHT * np.asarray(agreement_share, dtype=np.float64) + INTERCEPT
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
