"""How likely a cell's label is right: the vote's calibrated confidence, corrected by the query itself.

The vote's confidence (:func:`screader_db.calibration.confidence_of`) is calibrated on a split of
the reference, where nearly every cell scores 1.0, so under a study or species shift it hardly
separates right from wrong. The signal that moved most on the transfer suite is the query's own
agreement: the share of a cell's nearest query cells (the query's kNN graph over the cell
vectors, similarity-weighted) whose label is the cell's. A cell on the edge between two query
populations, or inside a population whose cells the atlas scatters over several labels, is
wrong far more often than its vote alone says.

The third signal is a second opinion (:mod:`screader_db.second_opinion`): the share of the
expression method's neighbour vote that goes to the cell's label. Where the two methods disagree,
the default was wrong far more often than either signal above says.

``confidence = sigmoid(a · logit(vote confidence) + b · agreement + d · logit(second opinion) + c)``,
with the constants fitted once across the transfer suite (``benchmarks/confidence.py``), each task
family scored by a fit on the others; without a second opinion (an atlas that keeps no expression,
or one too large), the two-input form with its own constants. Signals measured there and left out
because they added nothing beside these: neighbour-label entropy, similarity relative to the
reference's own neighbour similarities, genes detected, agreement with the nearest label profile,
query-cluster purity.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Fitted by benchmarks/confidence.py on every task of the transfer suite (README, "Confidence").
VOTE_WEIGHT = 0.29
AGREEMENT_WEIGHT = 4.38
INTERCEPT = -3.03
# The same with the second opinion (its logit) as a third input.
SECOND_VOTE_WEIGHT = 0.08
SECOND_AGREEMENT_WEIGHT = 3.76
SECOND_OPINION_WEIGHT = 0.30
SECOND_INTERCEPT = -2.46
CLIP = 1e-3


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of ``p`` clipped to [:data:`CLIP`, 1 - :data:`CLIP`], in float64.

    Parameters
    ----------
    p : numpy.ndarray
        Probabilities or shares.

    Returns
    -------
    numpy.ndarray of float64
    """
    p = np.clip(np.asarray(p, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(p / (1 - p))


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


def combine(vote_confidence: np.ndarray, agreement_share: np.ndarray,
            second_opinion: np.ndarray | None = None) -> np.ndarray:
    """The confidence of the vote's confidence, the query's agreement and, when given, the second opinion.

    Parameters
    ----------
    vote_confidence : numpy.ndarray, shape (n_cells,)
        The vote's calibrated confidence in [0, 1] (:func:`logit` clips it).
    agreement_share : numpy.ndarray, shape (n_cells,)
        From :func:`agreement`.
    second_opinion : numpy.ndarray or None, shape (n_cells,)
        The share of the second method's vote that goes to each cell's label; None: the two-input form.

    Returns
    -------
    numpy.ndarray of float32, shape (n_cells,)
        ``sigmoid(z)``, ``z`` the module docstring's sum with the constants of the form used; in (0, 1).
    """
    agreement_share = np.asarray(agreement_share, dtype=np.float64)
    if second_opinion is None:
        z = VOTE_WEIGHT * logit(vote_confidence) + AGREEMENT_WEIGHT * agreement_share + INTERCEPT
    else:
        z = (SECOND_VOTE_WEIGHT * logit(vote_confidence) + SECOND_AGREEMENT_WEIGHT * agreement_share
             + SECOND_OPINION_WEIGHT * logit(second_opinion) + SECOND_INTERCEPT)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
