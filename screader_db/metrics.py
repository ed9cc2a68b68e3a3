"""Agreement between predicted and true labels (accuracy, macro-F1, per-class F1), and how well a
confidence separates right from wrong labels (AUROC) and matches their share (calibration error)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNASSIGNED = "Unassigned"


@dataclass
class Agreement:
    """Scores over the cells whose true label the reference knows (``shared`` labels)."""

    accuracy: float
    macro_f1: float
    n_cells: int
    n_scored: int
    unassigned_rate: float
    assigned_precision: float
    per_class_f1: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """The scores as a plain dict, for JSON.

        Returns
        -------
        dict
            Every field but ``labels``, under its field name.
        """
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n_cells": self.n_cells,
                "n_scored": self.n_scored, "unassigned_rate": self.unassigned_rate,
                "assigned_precision": self.assigned_precision, "per_class_f1": self.per_class_f1}


def agreement(predicted: Sequence[str] | Any, truth: Sequence[str] | Any, known: Sequence[str] | None = None) -> Agreement:
    """Score ``predicted`` against ``truth`` on cells whose true label is in ``known``.

    Cells whose true label the reference does not have are left out (they cannot be right).
    Macro-F1 averages over the true labels present among the scored cells; an ``Unassigned``
    prediction counts as wrong for accuracy and recall, and is left out of precision.

    Parameters
    ----------
    predicted, truth : sequence of str
        One label per cell, in the same order; values are compared as ``str``.
    known : sequence of str or None
        The labels the reference has; None scores every cell.

    Returns
    -------
    Agreement
        ``n_cells`` counts every cell, ``n_scored`` the cells kept; ``assigned_precision`` is the accuracy over
        cells not ``Unassigned``. With no cell kept, every score is 0.0.
    """
    pred = np.asarray([str(p) for p in predicted], dtype=object)
    true = np.asarray([str(t) for t in truth], dtype=object)
    keep = np.ones(len(true), dtype=bool) if known is None else np.isin(true, np.asarray(list(known), dtype=object))
    pred, true = pred[keep], true[keep]
    n = len(true)
    if n == 0:
        return Agreement(0.0, 0.0, len(keep), 0, 0.0, 0.0)
    assigned = pred != UNASSIGNED
    labels = sorted(set(true))
    per_class = {}
    for label in labels:
        tp = np.sum((pred == label) & (true == label))
        fp = np.sum((pred == label) & (true != label))
        fn = np.sum((pred != label) & (true == label))
        denom = 2 * tp + fp + fn
        per_class[label] = float(2 * tp / denom) if denom else 0.0
    correct = pred == true
    return Agreement(
        accuracy=float(correct.mean()),
        macro_f1=float(np.mean(list(per_class.values()))),
        n_cells=len(keep),
        n_scored=n,
        unassigned_rate=float(1 - assigned.mean()),
        assigned_precision=float(correct[assigned].mean()) if assigned.any() else 0.0,
        per_class_f1=per_class,
        labels=labels,
    )


def calibration_error(confidence: Any, correct: Any, *, bins: int = 10) -> float:
    """Expected calibration error: over equal-width confidence bins, the cell-weighted mean gap.

    The gap of a bin is between its mean confidence and its share of correct labels.

    Parameters
    ----------
    confidence : array-like of float, shape (n_cells,)
        Confidences in [0, 1]; 1.0 falls in the top bin.
    correct : array-like of bool, shape (n_cells,)
        Whether each cell's label is right.
    bins : int
        Number of bins over [0, 1].

    Returns
    -------
    float
        In [0, 1]; 0.0 for no cells.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    which = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    total = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, conf, bins) - np.bincount(which, right, bins))
    return float(gap.sum() / max(total.sum(), 1))


def separation(confidence: Any, correct: Any) -> float:
    """AUROC of ``confidence`` for right against wrong labels (NaN when all are right or all wrong).

    Parameters
    ----------
    confidence : array-like of float, shape (n_cells,)
        Higher should mean more likely right.
    correct : array-like of bool, shape (n_cells,)
        Whether each cell's label is right.

    Returns
    -------
    float
        AUROC in [0, 1] (0.5 is chance), or NaN.
    """
    from sklearn.metrics import roc_auc_score

    right = np.asarray(correct, dtype=bool)
    if right.all() or not right.any():
        return float("nan")
    return float(roc_auc_score(right, np.asarray(confidence, dtype=np.float64)))
