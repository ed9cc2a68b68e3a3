"""Calibrating vote scores on the reference: a confidence per cell and a default score cut-off.

When an atlas is built, a stratified 70/30 split of the reference cell sample stands in for an
atlas and a query: the embedder is refitted on the 70% part (same genes), the 30% part is
annotated against it, and the vote shares of its cells are related to whether their label was
right. Two things are kept:

- ``confidence``: an isotonic (monotone) map from vote share to the share of correct labels,
  stored as knots; each query cell's confidence is read off it. It is calibrated within the
  reference, so across data sets it is an upper bound.
- ``min_score``: the default of ``--min-score``. A cell is set aside only when it is more likely
  wrong than right (its confidence is below one half) and the cut-off would have turned at most
  1% of the correctly labelled held-out cells into ``Unassigned``: the lower of those two
  cut-offs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

MAX_CORRECT_LOST = 0.01
MIN_CONFIDENCE = 0.5
HELD_OUT_SHARE = 0.3


def split(labels: np.ndarray, *, share: float = HELD_OUT_SHARE, seed: int = 0) -> np.ndarray:
    """The reference's stratified split into a stand-in atlas and a held-out stand-in query.

    The one split rule of the package: the score calibration here and the novelty calibration
    (:func:`screader_db.novelty.calibrate`) both hold out these cells.

    Parameters
    ----------
    labels
        Label of each cell.
    share
        Share of each label's cells held out (rounded, at least one); a label with a single cell
        stays whole in the atlas part.
    seed
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the held-out cells.
    """
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2:
            test[rng.choice(members, size=max(1, round(share * len(members))), replace=False)] = True
    return test


def score_calibration(fit: Callable[[sp.csr_matrix, np.ndarray], Any], X: sp.csr_matrix, labels: np.ndarray, *,
                      k: int = 15, power: float = 4.0, seed: int = 0) -> dict[str, Any]:
    """Confidence knots and the default score cut-off from a split of the reference sample.

    Parameters
    ----------
    fit
        ``fit(X_part, labels_part)`` returns an embedder fitted on those cells (columns of ``X``
        follow its genes).
    X
        The reference sample (cells × the embedder's genes).
    labels
        Label of each cell.
    k, power
        Neighbours and vote power of the held-out cells' votes.
    seed
        Seed of the split.

    Returns
    -------
    dict
        ``calibrated``, ``min_score`` and, when calibrated, the held-out accuracy, the cut-offs
        considered and the ``score_knots`` / ``confidence_knots`` of the confidence map.
    """
    from sklearn.isotonic import IsotonicRegression

    from screader_db.index import knn
    from screader_db.vote import tally

    labels = np.asarray(labels).astype(str)
    test = split(labels, seed=seed)
    if test.sum() < 20 or len(set(labels[~test])) < 2:
        return {"calibrated": False, "min_score": 0.0, "reason": "too few labelled cells to calibrate"}
    embedder = fit(X[~test], labels[~test])
    reference = embedder.transform(X[~test], mean=embedder.mean)
    query = embedder.transform(X[test])
    sims, rows = knn(query, reference, min(k, len(reference)))
    names = sorted(set(labels[~test]))
    codes = np.searchsorted(names, labels[~test])[rows]
    shares = tally(sims, codes, len(names), power=power)
    scores = shares.max(axis=1)
    correct = np.asarray(names)[shares.argmax(axis=1)] == labels[test]
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, correct.astype(float))
    knots = np.unique(np.round(np.concatenate([[0.0, 1.0], scores]), 4))
    confidence = model.predict(knots)
    right = np.sort(scores[correct])
    cut_at = int(np.floor(MAX_CORRECT_LOST * len(right)))
    loss_cut = float(right[cut_at]) if len(right) and cut_at > 0 else 0.0
    likely = knots[confidence >= MIN_CONFIDENCE]
    even_cut = float(likely.min()) if len(likely) else 1.0
    min_score = min(loss_cut, even_cut)
    kept = scores >= min_score
    return {
        "calibrated": True, "held_out_cells": int(test.sum()), "held_out_accuracy": float(correct.mean()),
        "min_score": round(min_score, 4),
        "precision_at_min_score": float(correct[kept].mean()) if kept.any() else 0.0,
        "correct_lost_at_min_score": float((~kept & correct).sum() / max(correct.sum(), 1)),
        "loss_cut": round(loss_cut, 4), "even_cut": round(even_cut, 4),
        "score_knots": knots.tolist(), "confidence_knots": np.round(confidence, 4).tolist(),
    }


def confidence_of(scores: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Calibrated confidence of vote shares.

    Parameters
    ----------
    scores
        Vote shares of the winning labels.
    calibration
        The atlas's score calibration (:func:`score_calibration`).

    Returns
    -------
    numpy.ndarray
        float32 confidences; the shares themselves when the atlas is not calibrated.
    """
    if not calibration.get("calibrated"):
        return np.asarray(scores, dtype=np.float32)
    return np.interp(scores, calibration["score_knots"], calibration["confidence_knots"]).astype(np.float32)
