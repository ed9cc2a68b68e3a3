"""How likely a cell's label is right: the vote's calibrated confidence, corrected by the query itself.

The vote's confidence (:func:`screader_db.calibration.confidence_of`) is calibrated on a split of
the reference, where nearly every cell scores 1.0, so under a study or species shift it hardly
separates right from wrong. The signal that moved most on the transfer suite is the query's own
agreement: the share of a cell's nearest query cells (the query's kNN graph over the cell
vectors, similarity-weighted) whose label is the cell's. A cell on the edge between two query
populations, or inside a population whose cells the atlas scatters over several labels, is
wrong far more often than its vote alone says.

A third query signal needs the novelty check's clusters (:mod:`screader_db.novelty`): the share of
the cell's cluster that got the cell's label (:func:`cluster_agreement`). A cell whose label its
cluster mostly does not share is wrong far more often (on the transfer suite 13% of cells, right
38% of the time against 91%), and it reaches further than the graph's few neighbours.

Two more signals come with most calls. A second opinion (:mod:`screader_db.second_opinion`): the
share of the expression method's neighbour vote that goes to the cell's label; where the two
methods disagree, the default was wrong far more often than either signal above says. And marker
evidence (:mod:`screader_db.call_evidence`): how much more the cell expresses the genes that set
its label apart from the runner-up than the runner-up's own; it tells a whole population's wrong
label (CD8 against CD4 T cells) where every neighbour agrees.

``confidence = sigmoid(a · logit(vote confidence) + b · agreement + f · cluster agreement + d · logit(second opinion) + e · evidence + c)``,
with the constants fitted once across the transfer suite (``benchmarks/confidence.py``), each task
family scored by a fit on the others, one set for each combination of the optional inputs a call
has (:data:`FORMS`): without a second opinion (an atlas that keeps no expression, or one too
large), without evidence (an atlas without label profiles, or a vote at another label level) or
without clusters (the novelty check off) the form without them. Signals measured there and left
out because they added nothing beside these: neighbour-label entropy, similarity relative to the
reference's own neighbour similarities, genes detected, agreement with the nearest label profile,
a cluster's purity (the same for every cell of it).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Fitted by benchmarks/confidence.py on every task of the transfer suite (README, "Confidence under
# shift"), one set per combination of the optional inputs a call has: the weights of
# logit(vote confidence), agreement, logit(second opinion), marker evidence and cluster agreement,
# and the intercept.
OPTIONAL = ("second_opinion", "evidence", "cluster")
FORMS: dict[tuple[str, ...], dict[str, float]] = {
    (): {"vote": 0.31, "agreement": 3.92, "intercept": -2.62},
    ("second_opinion",): {"vote": 0.11, "agreement": 3.33, "second_opinion": 0.28, "intercept": -2.05},
    ("evidence",): {"vote": 0.29, "agreement": 3.37, "evidence": 0.60, "intercept": -2.38},
    ("second_opinion", "evidence"): {"vote": 0.12, "agreement": 2.90, "second_opinion": 0.25, "evidence": 0.49,
                                     "intercept": -1.89},
    ("cluster",): {"vote": 0.20, "agreement": 1.36, "cluster": 3.73, "intercept": -2.66},
    ("second_opinion", "cluster"): {"vote": 0.11, "agreement": 1.30, "second_opinion": 0.15, "cluster": 3.31,
                                    "intercept": -2.33},
    ("evidence", "cluster"): {"vote": 0.19, "agreement": 1.12, "evidence": 0.38, "cluster": 3.56, "intercept": -2.51},
    ("second_opinion", "evidence", "cluster"): {"vote": 0.11, "agreement": 1.09, "second_opinion": 0.14, "evidence": 0.34,
                                                "cluster": 3.20, "intercept": -2.22},
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


def cluster_agreement(cluster: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per cell: the share of the cells of its cluster that carry its label code.

    Parameters
    ----------
    cluster : numpy.ndarray of int, shape (n_cells,)
        Each cell's cluster (the novelty check's).
    codes : numpy.ndarray of int, shape (n_cells,)
        Each cell's label code.

    Returns
    -------
    numpy.ndarray of float, shape (n_cells,)
        In (0, 1]; 1 where the whole cluster has the cell's label.
    """
    cluster, codes = np.asarray(cluster, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    _, pair = np.unique(np.column_stack([cluster, codes]), axis=0, return_inverse=True)
    _, group = np.unique(cluster, return_inverse=True)
    return np.bincount(pair.ravel())[pair.ravel()] / np.bincount(group)[group]


def combine(vote_confidence: np.ndarray, agreement_share: np.ndarray, second_opinion: np.ndarray | None = None,
            evidence: np.ndarray | None = None, cluster: np.ndarray | None = None) -> np.ndarray:
    """The confidence of the vote's confidence, the query's agreement and, when given, the second
    opinion, the marker evidence and the cluster agreement, with the constants of :data:`FORMS` for
    the inputs given.

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
    cluster : numpy.ndarray or None, shape (n_cells,)
        The cluster agreement of each call (:func:`cluster_agreement`).

    Returns
    -------
    numpy.ndarray of float32, shape (n_cells,)
        ``sigmoid(z)``, ``z`` the module docstring's sum; in (0, 1).
    """
    given = {"second_opinion": second_opinion, "evidence": evidence, "cluster": cluster}
    form = FORMS[tuple(name for name, values in given.items() if values is not None)]
    z = form["vote"] * logit(vote_confidence) + form["agreement"] * np.asarray(agreement_share, dtype=np.float64)
    if second_opinion is not None:
        z = z + form["second_opinion"] * logit(second_opinion)
    if evidence is not None:
        z = z + form["evidence"] * np.asarray(evidence, dtype=np.float64)
    if cluster is not None:
        z = z + form["cluster"] * np.asarray(cluster, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-(z + form["intercept"])))).astype(np.float32)
