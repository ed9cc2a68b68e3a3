"""Reading and checking expression: each bad input has its own message."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.errors import InputDataError
from screader_db.inputs import check_values, load_expression, normalise, plan_genes, read_h5ad


def test_counts_and_lognorm_are_told_apart():
    counts = sp.csr_matrix(np.array([[0, 3, 1], [2, 0, 5]], dtype=np.float32))
    assert check_values(counts) == "counts"
    logged = counts.copy()
    logged.data = np.log1p(logged.data)
    assert check_values(logged) == "lognorm"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[np.nan, 1.0]], "the matrix has 1 NaN or infinite values; remove or impute them before annotating"),
        ([[np.inf, 1.0]], "the matrix has 1 NaN or infinite values; remove or impute them before annotating"),
        ([[-1.5, 1.0]], r"the matrix has negative values \(minimum -1.5\): it looks scaled or z-scored"),
        ([[100.5, 1.0]], r"non-integer values up to 100: neither raw counts nor log-normalised data"),
    ],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(InputDataError, match=message):
        check_values(sp.csr_matrix(np.array(values, dtype=np.float32)))


def test_zero_cells_and_zero_genes():
    with pytest.raises(InputDataError, match="the data has zero cells"):
        check_values(sp.csr_matrix((0, 5), dtype=np.float32))
    with pytest.raises(InputDataError, match="the data has zero genes"):
        check_values(sp.csr_matrix((5, 0), dtype=np.float32))


def test_lognormalisation_and_merging_of_duplicate_symbols():
    X = sp.csr_matrix(np.array([[1, 1, 2], [0, 4, 0]], dtype=np.float32))
    plan = plan_genes(["A", "A", "B"])
    assert plan.genes == ["A", "B"]
    out = normalise(X, "counts", plan)
    dense = out.toarray()
    np.testing.assert_allclose(dense[0], np.log1p([2 / 4 * 1e4, 2 / 4 * 1e4]), rtol=1e-5)
    np.testing.assert_allclose(dense[1], np.log1p([1e4, 0]), rtol=1e-5)
    relogged = out.copy()
    again = normalise(relogged, "lognorm", plan_genes(["A", "B"]))
    np.testing.assert_allclose(again.toarray(), dense, rtol=1e-4)


def test_read_errors(tmp_path):
    with pytest.raises(InputDataError, match="does not exist; check the path"):
        read_h5ad(tmp_path / "missing.h5ad")
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match=r"is empty \(0 bytes\)"):
        read_h5ad(empty)
    text = tmp_path / "cells.h5ad"
    text.write_text("gene,cell1\nCD3E,1\n")
    with pytest.raises(InputDataError, match=r"is not an .h5ad file \(no HDF5 signature\)"):
        read_h5ad(text)


def test_truncated_h5ad_is_reported(tmp_path, counts_adata):
    good = tmp_path / "good.h5ad"
    counts_adata.write_h5ad(good)
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(InputDataError, match="could not be read as AnnData"):
        read_h5ad(broken)


def test_duplicate_gene_names(counts_adata):
    adata = counts_adata.copy()
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    with pytest.raises(InputDataError, match=r"1 gene names occur more than once \(INS...\); make them unique"):
        load_expression(adata)


def test_unmappable_names_get_a_hint(counts_adata):
    adata = counts_adata.copy()
    adata.var_names = [f"gene_{i}" for i in range(adata.n_vars)]
    with pytest.raises(InputDataError, match="none of the 50 gene names could be mapped"):
        load_expression(adata)


def test_layer_and_raw_choices(counts_adata):
    adata = counts_adata.copy()
    with pytest.raises(InputDataError, match="layer 'counts' is not in the file; layers present: none"):
        load_expression(adata, layer="counts")
    with pytest.raises(InputDataError, match="the file has no .raw"):
        load_expression(adata, use_raw=True)
    adata.layers["counts"] = adata.X.copy()
    expr = load_expression(adata, layer="counts")
    assert expr.kind == "counts" and expr.n_cells == adata.n_obs


def test_input_is_not_changed_and_alignment_zero_fills(counts_adata):
    before = counts_adata.X.copy()
    expr = load_expression(counts_adata)
    assert (before != counts_adata.X).nnz == 0
    expr = load_expression(counts_adata, target=["INS", "NOT_THERE", "GCG"])
    X = expr.X
    assert X.shape == (counts_adata.n_obs, 3)
    assert X[:, 1].nnz == 0
