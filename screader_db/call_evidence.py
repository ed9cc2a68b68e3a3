"""Marker evidence for each call: does the cell express what sets its label apart from the runner-up?

For a cell called ``A`` with runner-up ``B``, the genes that set the two apart are taken from the
atlas's label profiles (mean log1p CP10k of each reference label): the :data:`N_GENES` with the
largest lead of ``A`` over ``B`` and the :data:`N_GENES` with the largest lead of ``B`` over
``A``, among the genes the query measures. The evidence is the cell's mean expression over the
first set minus its mean over the second. A CD8 T call of a cell that expresses CD4 and not CD8A
scores low whatever its neighbours said; on the transfer suite it was the fourth input of
``confidence`` (:mod:`screader_db.confidence`) that lifted the PBMC tasks, where both methods and
every neighbour agree on a whole population's wrong label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from screader_db.inputs import CHUNK, plan_genes

N_GENES = 20


def pair_genes(profiles: pd.DataFrame, called: str, other: str, measured: np.ndarray,
               n_genes: int = N_GENES) -> tuple[np.ndarray, np.ndarray]:
    """The columns of ``profiles`` that set ``called`` apart from ``other``, and those that set ``other`` apart.

    Parameters
    ----------
    profiles : pandas.DataFrame
        Labels × genes mean log expression (:func:`screader_db.explain.label_profiles`).
    called, other : str
        The two labels (rows of ``profiles``).
    measured : numpy.ndarray of bool
        Per column: the query measures the gene.
    n_genes : int
        Most genes on each side.

    Returns
    -------
    up, down : numpy.ndarray of int
        Column positions with a positive lead of ``called`` over ``other`` (largest first), and of
        ``other`` over ``called``; at most ``n_genes`` each, measured genes only.
    """
    lead = (profiles.loc[called].to_numpy(np.float64) - profiles.loc[other].to_numpy(np.float64)) * measured
    up = np.argsort(-lead, kind="stable")[:n_genes]
    down = np.argsort(lead, kind="stable")[:n_genes]
    return up[lead[up] > 0], down[lead[down] < 0]


def evidence(query: Any, profiles: pd.DataFrame, called: np.ndarray, other: np.ndarray, *,
             chunk: int = CHUNK, n_genes: int = N_GENES) -> np.ndarray:
    """Each cell's mean expression of the genes that set its label apart from the runner-up, less the reverse.

    Parameters
    ----------
    query : PreparedQuery
        The cells (one per entry of ``called``), read as log1p CP10k over every gene they measured.
    profiles : pandas.DataFrame
        Labels × genes mean log expression of the atlas's reference labels.
    called, other : numpy.ndarray of str
        Each cell's label and runner-up; a pair with a label ``profiles`` lacks (or no runner-up)
        scores 0.
    chunk : int
        Rows read at a time.
    n_genes : int
        Genes on each side of a pair (:func:`pair_genes`).

    Returns
    -------
    numpy.ndarray of float32
        One value per cell.
    """
    called, other = np.asarray(called, dtype=object), np.asarray(other, dtype=object)
    genes = [str(g) for g in profiles.columns]
    measured = np.isin(genes, [s for s in query.mapping.symbols if s])
    known = set(profiles.index)
    pairs = {pair: pair_genes(profiles, *pair, measured, n_genes)
             for pair in set(zip(called.tolist(), other.tolist(), strict=True)) if pair[0] in known and pair[1] in known}
    out = np.zeros(len(called), dtype=np.float32)
    used = sorted({int(g) for up, down in pairs.values() for g in (*up, *down)})
    if not used:
        return out
    column = {g: i for i, g in enumerate(used)}
    stream = query.stream.over(plan_genes(query.mapping.symbols, [genes[g] for g in used]))
    for start, block in stream.chunks(chunk):
        rows = slice(start, start + block.shape[0])
        here = pd.Series(list(zip(called[rows].tolist(), other[rows].tolist(), strict=True)))
        for pair, positions in here.groupby(here, sort=False).indices.items():
            if pair not in pairs:
                continue
            up, down = ([column[int(g)] for g in side] for side in pairs[pair])
            part = block[positions]
            high = np.asarray(part[:, up].mean(axis=1)).ravel() if up else 0.0
            low = np.asarray(part[:, down].mean(axis=1)).ravel() if down else 0.0
            out[start + positions] = high - low
    return out
