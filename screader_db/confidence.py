"""How likely a cell's label is right: the vote's calibrated confidence, corrected by the query itself.

The vote's confidence (:func:`screader_db.calibration.confidence_of`) is calibrated on a split of
the reference, where nearly every cell scores 1.0, so under a study or species shift it hardly
separates right from wrong. The signal that moved most on the transfer suite is the query's own
agreement: the share of a cell's nearest query cells (the query's kNN graph over the cell
vectors, similarity-weighted) whose label is the cell's. A cell on the edge between two query
populations, or inside a population whose cells the atlas scatters over several labels, is
wrong far more often than its vote alone says.

Two more signals come with most calls. A second opinion (:mod:`screader_db.second_opinion`): the
share of the expression method's neighbour vote that goes to the cell's label; where the two
methods disagree, the default was wrong far more often than either signal above says. And marker
evidence (:mod:`screader_db.call_evidence`): how much more the cell expresses the genes that set
its label apart from the runner-up than the runner-up's own; it tells a whole population's wrong
label (CD8 against CD4 T cells) where every neighbour agrees.

``confidence = sigmoid(a · logit(vote confidence) + b · agreement + d · logit(second opinion) + e · evidence + c)``,
with the constants fitted once across the transfer suite (``benchmarks/confidence.py``), each task
family scored by a fit on the others, one set for each combination of the optional inputs a call
has (:data:`FORMS`): without a second opinion (an atlas that keeps no expression, or one too
large) or without evidence (an atlas without label profiles, or a vote at another label level)
the form without them. Signals measured there and left out because they added nothing beside
these: neighbour-label entropy, similarity relative to the reference's own neighbour
similarities, genes detected, agreement with the nearest label profile, query-cluster purity.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Fitted by benchmarks/confidence.py on every task of the transfer suite (README, "Confidence under
# shift"), one set per combination of the optional inputs a call has: the weights of
# logit(vote confidence), agreement, logit(second opinion) and marker evidence, and the intercept.
FORMS: dict[tuple[str, ...], dict[str, float]] = {
    (): {"vote": 0.31, "agreement": 3.92, "intercept": -2.62},
    ("second_opinion",): {"vote": 0.11, "agreement": 3.33, "second_opinion": 0.28, "intercept": -2.05},
    ("evidence",): {"vote": 0.29, "agreement": 3.37, "evidence": 0.60, "intercept": -2.38},
    ("second_opinion", "evidence"): {"vote": 0.12, "agreement": 2.90, "second_opinion": 0.25, "evidence": 0.49,
                                     "intercept": -1.89},
}
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


def combine(vote_confidence: np.ndarray, agreement_share: np.ndarray, second_opinion: np.ndarray | None = None,
            evidence: np.ndarray | None = None) -> np.ndarray:
    """The confidence of the vote's confidence, the query's agreement and, when given, the second
    opinion and the marker evidence, with the constants of :data:`FORMS` for the inputs given.

    Parameters
    ----------
    vote_confidence : numpy.ndarray, shape (n_cells,)
        The vote's calibrated confidence in [0, 1] (:func:`logit` clips it).
    agreement_share : numpy.ndarray, shape (n_cells,)
        From :func:`agreement`.
    second_opinion : numpy.ndarray or None, shape (n_cells,)
        The share of the second method's vote that goes to each cell's label (:mod:`screader_db.second_opinion`).
    evidence : numpy.ndarray or None, shape (n_cells,)
        The marker evidence of each call (:func:`screader_db.call_evidence.evidence`).

    Returns
    -------
    numpy.ndarray of float32, shape (n_cells,)
        ``sigmoid(z)``, ``z`` the module docstring's sum; in (0, 1).
    """
    given = {"second_opinion": second_opinion, "evidence": evidence}
    form = FORMS[tuple(name for name, values in given.items() if values is not None)]
    z = form["vote"] * logit(vote_confidence) + form["agreement"] * np.asarray(agreement_share, dtype=np.float64)
    if second_opinion is not None:
        z = z + form["second_opinion"] * logit(second_opinion)
    if evidence is not None:
        z = z + form["evidence"] * np.asarray(evidence, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-(z + form["intercept"])))).astype(np.float32)
