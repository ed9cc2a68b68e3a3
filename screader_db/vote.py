"""Turning the labels of a cell's nearest reference cells into one label with a confidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Vote:
    """Per query cell: winning label code, its weight share, margin to the runner-up, similarity."""

    best: np.ndarray
    score: np.ndarray
    second: np.ndarray
    margin: np.ndarray
    mean_similarity: np.ndarray


def knn_vote(similarities: np.ndarray, codes: np.ndarray, n_labels: int) -> Vote:
    """Similarity-weighted vote over each row's neighbours (``codes`` are label indices, -1 = none).

    A neighbour's weight is its cosine similarity, floored at a small positive number so that
    a cell whose neighbours are all dissimilar still gets a vote, with low similarity reported.
    """
    n, _ = similarities.shape
    weights = np.clip(similarities, 1e-6, None).astype(np.float64)
    weights[codes < 0] = 0.0
    tally = np.zeros((n, n_labels), dtype=np.float64)
    rows = np.repeat(np.arange(n), codes.shape[1])
    valid = codes.ravel() >= 0
    np.add.at(tally, (rows[valid], codes.ravel()[valid]), weights.ravel()[valid])
    total = tally.sum(axis=1)
    total[total == 0] = 1.0
    share = tally / total[:, None]
    order = np.argsort(-share, axis=1, kind="stable")
    best = order[:, 0]
    second = order[:, 1] if n_labels > 1 else np.full(n, -1)
    best_share = share[np.arange(n), best]
    second_share = share[np.arange(n), second] if n_labels > 1 else np.zeros(n)
    valid_sims = np.where(codes >= 0, similarities, np.nan)
    mean_sim = np.nan_to_num(np.nanmean(valid_sims, axis=1), nan=0.0)
    return Vote(best=best, score=best_share.astype(np.float32), second=second,
                margin=(best_share - second_share).astype(np.float32), mean_similarity=mean_sim.astype(np.float32))
