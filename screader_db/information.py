"""Cells that carry too little information to be labelled, by a floor measured on the reference.

A cell with no counts, or with the same value on every gene, still lands somewhere in the
embedding, and its neighbours vote as confidently as anyone's: an all-zero cell was called
``T cell`` at confidence 0.6, a cell with every gene at 1 ``macrophage`` at 0.99. Such cells are
``Unassigned`` with the reason ``empty`` instead. A cell is empty when it detects fewer of the
atlas's genes than the floor measured when the atlas was built, or when its values over the
atlas's genes are (nearly) constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

# The floor is a tenth of the reference cells' 1% quantile of detected atlas genes. The quantile
# itself would set real cells aside: cells of other data sets detect fewer of an atlas's genes
# (Baron mouse against a Baron human marker atlas: lowest 37, the reference's 1% quantile 72; Kang
# against pbmc3k: lowest 35, quantile 61), and a tenth of it (7 and 8 genes of 462 and 282) is far
# below any real cell measured.
DETECTED_QUANTILE = 0.01
FLOOR_SHARE = 0.1
# Atlases built before the floor was measured use this one (the measured floors were 7 to 12 genes).
DEFAULT_MIN_DETECTED = 5
# Values over the atlas's genes whose coefficient of variation is below this count as constant;
# reference cells' lowest was 0.86 (pbmc3k, marker genes), sparse cells are far above 1.
CONSTANT_CV = 0.1


def detection_floor(sample: sp.spmatrix) -> dict[str, Any]:
    """The calibration entries for a reference sample: the floor of detected atlas genes and its quantile.

    Parameters
    ----------
    sample : scipy.sparse matrix
        Reference cells × atlas genes, log-normalised.

    Returns
    -------
    dict
        ``min_detected_genes`` (the floor) and, for a non-empty sample, ``detected_genes_quantile``
        (the quantile, its number of genes and the cells it was measured on).
    """
    X = sp.csr_matrix(sample)
    if X.shape[0] == 0:
        return {"min_detected_genes": DEFAULT_MIN_DETECTED}
    detected = np.asarray((X > 0).sum(axis=1)).ravel()
    quantile = float(np.quantile(detected, DETECTED_QUANTILE))
    return {"min_detected_genes": max(1, int(np.ceil(FLOOR_SHARE * quantile))),
            "detected_genes_quantile": {"quantile": DETECTED_QUANTILE, "genes": quantile, "cells": int(X.shape[0])}}


def min_detected(calibration: dict[str, Any]) -> int:
    """The floor a calibration records, or the default for atlases built before it was measured.

    Parameters
    ----------
    calibration : dict
        The atlas's score calibration.

    Returns
    -------
    int
        The fewest atlas genes a cell must detect.
    """
    return int(calibration.get("min_detected_genes", DEFAULT_MIN_DETECTED))


class CellInformation:
    """Per query cell: how many atlas genes it detects and how much its values over them vary.

    Filled block by block from log-normalised expression over the atlas's genes (the genes the
    query lacks are zero columns).

    Parameters
    ----------
    n_cells : int
        Cells in the query.
    measured : int
        Atlas genes the query has; the spread is taken over these.
    """

    def __init__(self, n_cells: int, measured: int) -> None:
        self.measured = max(int(measured), 1)
        self.detected = np.zeros(n_cells, dtype=np.int64)
        self.variation = np.zeros(n_cells, dtype=np.float64)

    def add(self, start: int, block: sp.csr_matrix) -> None:
        """Measure the cells of ``block``, whose first row is cell ``start``.

        Parameters
        ----------
        start : int
            Position of the block's first cell.
        block : scipy.sparse.csr_matrix
            Log-normalised rows over the atlas's genes.
        """
        n_genes = self.measured
        rows = slice(start, start + block.shape[0])
        self.detected[rows] = np.asarray((block > 0).sum(axis=1)).ravel()
        mean = np.asarray(block.sum(axis=1), dtype=np.float64).ravel() / n_genes
        square = np.asarray(block.multiply(block).sum(axis=1), dtype=np.float64).ravel() / n_genes
        spread = np.sqrt(np.maximum(square - mean**2, 0.0))
        self.variation[rows] = np.divide(spread, mean, out=np.zeros_like(spread), where=mean > 0)

    def empty(self, floor: int) -> np.ndarray:
        """Cells detecting fewer than ``floor`` atlas genes, or with (nearly) the same value on all of them.

        Parameters
        ----------
        floor : int
            The fewest atlas genes a cell must detect (:func:`min_detected`).

        Returns
        -------
        numpy.ndarray
            bool, one per cell.
        """
        return (self.detected < floor) | (self.variation < CONSTANT_CV)
