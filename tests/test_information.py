"""Cells with too little information to label are Unassigned (reason ``empty``), never a confident label."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from screader_db import annotate, store
from screader_db.errors import InputDataError
from screader_db.information import DEFAULT_MIN_DETECTED, CellInformation, detection_floor, min_detected


def _with_empty_cells(query, n=5):
    """The query with ``n`` all-zero cells and ``n`` cells with every gene at 1 put between its cells."""
    zeros = sp.csr_matrix((n, query.n_vars), dtype=np.float32)
    ones = sp.csr_matrix(np.ones((n, query.n_vars), dtype=np.float32))
    extra = ad.AnnData(X=sp.vstack([zeros, ones]).tocsr(), var=query.var[[]].copy(),
                       obs=pd.DataFrame(index=[f"zero{i}" for i in range(n)] + [f"ones{i}" for i in range(n)]))
    half = query.n_obs // 2
    return ad.concat([query[:half], extra, query[half:]], join="outer")


@pytest.mark.data("pbmc3k")
def test_all_zero_and_all_ones_cells_are_empty_and_the_rest_keep_their_labels(pbmc_split, pbmc_result):
    root, query, _ = pbmc_split
    floor = store.open_atlas(root).annotation_defaults()["scores"]["min_detected_genes"]
    assert 1 <= floor < 20  # a tenth of the reference's 1% quantile of detected atlas genes
    result = annotate(_with_empty_cells(query), root)
    table = result.table
    empty = table.index.str.startswith(("zero", "ones"))
    assert empty.sum() == 10
    assert (table.loc[empty, "label"] == "Unassigned").all()
    assert (table.loc[empty, "unassigned_reason"] == "empty").all()
    assert (table.loc[empty, ["confidence", "vote_confidence", "score"]] == 0).all().all()
    assert (result.neighbour_ids[empty] == -1).all()
    assert result.info["empty_cells"] == 10 and result.info["min_detected_genes"] == floor
    # the other cells are annotated exactly as without the empty ones (they take no part in centring or novelty)
    kept = table.loc[~empty]
    assert list(kept.index) == list(pbmc_result.table.index)
    assert list(kept["label"]) == list(pbmc_result.table["label"])
    assert np.allclose(kept["confidence"], pbmc_result.table["confidence"])
    assert "empty" not in set(pbmc_result.table["unassigned_reason"])
    written = result.to_adata(_with_empty_cells(query))
    assert list(written.obs.loc[written.obs_names.str.startswith("zero"), "screader_unassigned_reason"]) == ["empty"] * 5


@pytest.mark.data("pbmc3k")
def test_a_query_of_only_empty_cells_is_refused(pbmc_split):
    root, query, _ = pbmc_split
    blank = ad.AnnData(X=sp.csr_matrix((20, query.n_vars), dtype=np.float32), var=query.var[[]].copy(),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]))
    with pytest.raises(InputDataError, match=r"all 20 query cells are empty: each detects fewer than \d+ of the atlas's genes"):
        annotate(blank, root)


def test_the_floor_comes_from_the_reference_and_older_atlases_use_the_default():
    rng = np.random.default_rng(0)
    detected = rng.integers(40, 120, size=1000)
    rows = np.repeat(np.arange(1000), detected)
    cols = np.concatenate([rng.choice(300, size=d, replace=False) for d in detected])
    sample = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(1000, 300))
    found = detection_floor(sample)
    assert found["min_detected_genes"] == int(np.ceil(0.1 * np.quantile(detected, 0.01)))
    assert found["detected_genes_quantile"]["cells"] == 1000
    assert min_detected(found) == found["min_detected_genes"]
    assert min_detected({"calibrated": True, "min_score": 0.5}) == DEFAULT_MIN_DETECTED


def test_constant_values_over_the_measured_genes_are_empty():
    # 4 atlas genes, the query measures 3 of them (the 4th column is always 0)
    X = sp.csr_matrix(np.array([[0.7, 0.7, 0.7, 0.0],    # the same value on every measured gene
                                [0.0, 0.0, 0.0, 0.0],    # nothing
                                [2.0, 0.1, 0.0, 0.0],    # varies
                                [0.7, 0.0, 0.0, 0.0]],   # varies, but only one gene detected
                               dtype=np.float32))
    information = CellInformation(4, measured=3)
    information.add(0, X)
    assert list(information.empty(1)) == [True, True, False, False]
    assert list(information.empty(2)) == [True, True, False, True]
