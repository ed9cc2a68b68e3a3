"""Peer annotators scored beside screader-db in evaluations (CellTypist)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from screader_db.errors import ScreaderError


def celltypist_predict(reference: Any, query: Any, *, label_key: str, seed: int = 0, feature_selection: bool = False,
                       majority_voting: bool = False) -> np.ndarray:
    """Train CellTypist on the reference (log1p CP10k over human symbols) and label the query.

    Both inputs are AnnData objects whose ``X`` is log1p(counts per 10,000) and whose var
    names are human symbols, as :func:`screader_db.inputs.load_expression` makes them.
    """
    try:
        import celltypist
    except ImportError as err:
        message = "CellTypist is not installed; `pip install 'screader-db[eval]'` adds it"
        raise ScreaderError(message) from err
    import anndata as ad

    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = celltypist.train(reference.X, labels=reference.obs[label_key].astype(str).to_numpy(),
                                 genes=np.asarray(reference.var_names), check_expression=False, n_jobs=1,
                                 feature_selection=feature_selection, max_iter=500)
        holder = ad.AnnData(X=query.X, obs=query.obs[[]].copy(), var=query.var[[]].copy())
        result = celltypist.annotate(holder, model=model, majority_voting=majority_voting)
    column = "majority_voting" if majority_voting else "predicted_labels"
    return result.predicted_labels[column].astype(str).to_numpy()
