"""Peer annotators scored beside screader-db in evaluations (CellTypist)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from screader_db.errors import ScreaderError


def _celltypist() -> Any:
    try:
        import celltypist
    except ImportError as err:
        message = "CellTypist is not installed; `pip install 'screader-db[eval]'` adds it"
        raise ScreaderError(message) from err
    return celltypist


def celltypist_train(reference: Any, *, label_key: str, seed: int = 0, feature_selection: bool = False) -> Any:
    """A CellTypist model trained on the reference (log1p CP10k over human symbols).

    Parameters
    ----------
    reference : AnnData
        ``X`` log1p(counts per 10,000), var names human symbols.
    label_key : str
        The obs column of the labels (read as strings).
    seed : int
        Seeds numpy's global random state before training.
    feature_selection : bool
        CellTypist's two-pass training on its selected genes.

    Returns
    -------
    celltypist.models.Model
        Trained with ``max_iter=500`` on one job; CellTypist's output and warnings are silenced.

    Raises
    ------
    ScreaderError
        CellTypist is not installed (the ``eval`` extra).
    """
    import contextlib
    import io

    celltypist = _celltypist()
    np.random.seed(seed)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return celltypist.train(reference.X, labels=reference.obs[label_key].astype(str).to_numpy(),
                                genes=np.asarray(reference.var_names), check_expression=False, n_jobs=1,
                                feature_selection=feature_selection, max_iter=500)


def celltypist_label(model: Any, query: Any, *, majority_voting: bool = False) -> np.ndarray:
    """Labels of the query cells (log1p CP10k over human symbols) from a trained CellTypist model.

    Parameters
    ----------
    model : celltypist.models.Model
        From :func:`celltypist_train`.
    query : AnnData
        ``X`` log1p(counts per 10,000), var names human symbols; only ``X`` and the names are passed on.
    majority_voting : bool
        Take CellTypist's over-cluster majority labels instead of its per-cell predictions.

    Returns
    -------
    numpy.ndarray of str, shape (n_cells,)

    Raises
    ------
    ScreaderError
        CellTypist is not installed (the ``eval`` extra).
    """
    import contextlib
    import io

    import anndata as ad

    celltypist = _celltypist()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        holder = ad.AnnData(X=query.X, obs=query.obs[[]].copy(), var=query.var[[]].copy())
        result = celltypist.annotate(holder, model=model, majority_voting=majority_voting)
    column = "majority_voting" if majority_voting else "predicted_labels"
    return result.predicted_labels[column].astype(str).to_numpy()


def celltypist_predict(reference: Any, query: Any, *, label_key: str, seed: int = 0, feature_selection: bool = False,
                       majority_voting: bool = False) -> np.ndarray:
    """Train CellTypist on the reference (log1p CP10k over human symbols) and label the query.

    Both inputs are AnnData objects whose ``X`` is log1p(counts per 10,000) and whose var
    names are human symbols, as :func:`screader_db.inputs.load_expression` makes them.

    Parameters
    ----------
    reference, query : AnnData
        The training and the query cells.
    label_key : str
        The reference's obs column of labels.
    seed : int
        Seed of the training (:func:`celltypist_train`).
    feature_selection : bool
        CellTypist's two-pass training on its selected genes.
    majority_voting : bool
        Take CellTypist's over-cluster majority labels.

    Returns
    -------
    numpy.ndarray of str, shape (n_query_cells,)

    Raises
    ------
    ScreaderError
        CellTypist is not installed (the ``eval`` extra).
    """
    model = celltypist_train(reference, label_key=label_key, seed=seed, feature_selection=feature_selection)
    return celltypist_label(model, query, majority_voting=majority_voting)


def celltypist_best(reference: Any, query: Any, *, label_key: str, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """CellTypist with the setting (feature selection on or off) that scores best on a reference split.

    The choice is made on a stratified 80/20 split of the reference alone, then the model is
    trained on the whole reference; the query's labels are never looked at.

    Parameters
    ----------
    reference, query : AnnData
        As :func:`celltypist_predict` takes them. Labels with a single cell are kept in the training part
        of the split; feature selection is only tried with more than 600 genes.
    label_key : str
        The reference's obs column of labels.
    seed : int
        Seed of the split and of the training.

    Returns
    -------
    labels : numpy.ndarray of str, shape (n_query_cells,)
    chosen : dict
        ``feature_selection`` (bool, the setting used) and ``split_macro_f1`` (setting to macro-F1 on the split).

    Raises
    ------
    ScreaderError
        CellTypist is not installed (the ``eval`` extra).
    """
    from sklearn.model_selection import train_test_split

    from screader_db.metrics import agreement

    labels = reference.obs[label_key].astype(str).to_numpy()
    counts = {label: int((labels == label).sum()) for label in set(labels)}
    splittable = np.array([counts[label] >= 2 for label in labels])
    rows = np.flatnonzero(splittable)
    train, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=labels[rows])
    train = np.sort(np.concatenate([train, np.flatnonzero(~splittable)]))
    scores = {}
    options = (False, True) if reference.n_vars > 2 * 300 else (False,)
    for feature_selection in options:
        predicted = celltypist_predict(reference[train], reference[np.sort(test)], label_key=label_key, seed=seed,
                                       feature_selection=feature_selection)
        scores[feature_selection] = agreement(predicted, labels[np.sort(test)]).macro_f1
    best = max(scores, key=lambda key: scores[key])
    chosen = {"feature_selection": best, "split_macro_f1": scores}
    return celltypist_predict(reference, query, label_key=label_key, seed=seed, feature_selection=best), chosen


def singler_predict(reference: Any, query: Any, *, label_key: str, threads: int = 2) -> np.ndarray:
    """SingleR (rank correlation against the reference's label profiles, with fine-tuning).

    It runs on log1p CP10k AnnData over the same genes, as :func:`celltypist_predict` takes them.

    Parameters
    ----------
    reference, query : AnnData
        ``X`` log1p(counts per 10,000), var names human symbols; genes are matched by name.
    label_key : str
        The reference's obs column of labels (read as strings).
    threads : int
        Threads SingleR uses.

    Returns
    -------
    numpy.ndarray of str, shape (n_query_cells,)
        SingleR's ``best`` label (after fine-tuning) of each query cell.

    Raises
    ------
    ScreaderError
        SingleR is not installed (the ``eval`` extra).
    """
    import scipy.sparse as sp

    try:
        import singler
    except ImportError as err:
        message = "SingleR is not installed; `pip install 'screader-db[eval]'` adds it"
        raise ScreaderError(message) from err

    def genes_by_cells(X: Any) -> sp.csc_matrix:
        matrix = sp.csc_matrix(sp.csr_matrix(X).T, dtype=np.float64)
        matrix.sort_indices()
        return matrix

    found = singler.annotate_single(test_data=genes_by_cells(query.X), ref_data=genes_by_cells(reference.X),
                                    ref_labels=reference.obs[label_key].astype(str).tolist(),
                                    test_features=list(query.var_names), ref_features=list(reference.var_names),
                                    num_threads=threads)
    return np.asarray(found.get_column("best"), dtype=object).astype(str)
