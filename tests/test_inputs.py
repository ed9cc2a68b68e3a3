"""Reading and checking expression: each bad input has its own message."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_counts

from screader_db.errors import InputDataError, ScreaderWarning
from screader_db.inputs import (
    ExpressionSource,
    check_values,
    detect_scale,
    held_in_memory,
    input_scale_of,
    load_expression,
    normalise,
    open_expression,
    plan_genes,
    read_h5ad,
)


def _counts(n_cells: int = 300, n_genes: int = 1500, seed: int = 0) -> sp.csr_matrix:
    """Negative-binomial counts with library sizes that vary tenfold across cells."""
    rng = np.random.default_rng(seed)
    profile = rng.gamma(0.3, 1.0, size=n_genes)
    profile /= profile.sum()
    library = rng.lognormal(np.log(3000.0), 0.6, size=n_cells)
    mu = library[:, None] * profile[None, :]
    return sp.csr_matrix(rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32))


def _per_cell(counts: sp.csr_matrix, total: float) -> sp.csr_matrix:
    library = np.asarray(counts.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags((total / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)


def _logged(X: sp.csr_matrix, log) -> sp.csr_matrix:
    out = X.copy()
    out.data = log(out.data).astype(np.float32)
    return out


TRANSFORMS = {
    "raw counts": ("counts", lambda c: c),
    "ln(1+CP10k)": ("ln", lambda c: _logged(_per_cell(c, 1e4), np.log1p)),
    "log2(1+CPM)": ("log2", lambda c: _logged(_per_cell(c, 1e6), lambda v: np.log2(1 + v))),
    "log10(1+CP10k)": ("log10", lambda c: _logged(_per_cell(c, 1e4), lambda v: np.log10(1 + v))),
    "CPM": ("linear", lambda c: _per_cell(c, 1e6)),
    "log1p(raw counts)": ("ln", lambda c: _logged(c, np.log1p)),
}


@pytest.mark.parametrize("genes", ["all genes", "300 genes"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_each_scale_is_detected_and_normalises_like_the_counts(name, genes):
    counts = _counts()
    scale, transform = TRANSFORMS[name]
    X = transform(counts)
    if genes == "300 genes":  # a panel: library sizes over the measured genes are no longer constant
        keep = np.sort(np.random.default_rng(1).choice(counts.shape[1], size=300, replace=False))
        counts, X = counts[:, keep], X[:, keep]
    found = detect_scale(X)
    assert found.scale == scale, found.evidence
    assert found.evidence.startswith(f"{scale}: ")
    if scale != "counts":
        assert found.integer_share[scale] > 0.99
        assert all(v < 0.3 for s, v in found.integer_share.items() if s != scale and not np.isnan(v))
    plan = plan_genes([f"G{i}" for i in range(counts.shape[1])])
    expected = normalise(counts, "counts", plan).toarray()
    np.testing.assert_allclose(normalise(X, found.scale, plan).toarray(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("log", "scale"), [(None, "linear"), (np.log1p, "ln")])
def test_normalised_values_without_integer_structure_are_told_by_library_size(log, scale):
    rng = np.random.default_rng(3)
    tpm = _per_cell(sp.csr_matrix(rng.gamma(0.5, 1.0, size=(200, 400)) * (rng.random((200, 400)) < 0.3)), 1e6)
    X = tpm if log is None else _logged(tpm, log)
    found = detect_scale(X)
    assert found.scale == scale
    assert "sum to the same total" in found.evidence
    assert found.library_cv[scale] < 1e-3


@pytest.mark.parametrize("change", ["fractional", "scaled down", "some genes of TPM"])
def test_linear_values_without_integer_structure_or_equal_totals_are_linear(change):
    counts = _counts()
    rng = np.random.default_rng(4)
    X = counts.copy()
    if change == "fractional":  # expected counts: part of the values carry a fraction
        X.data = X.data + (rng.random(X.data.size) < 0.3) * rng.random(X.data.size).astype(np.float32)
    elif change == "scaled down":  # ambient-corrected counts
        X.data = X.data * rng.uniform(0.7, 1.0, X.data.size).astype(np.float32)
    else:  # TPM, then a third of the genes dropped
        X = _per_cell(X @ sp.diags(1 / rng.uniform(500, 3000, X.shape[1])), 1e6)[:, : 2 * X.shape[1] // 3]
    found = detect_scale(sp.csr_matrix(X, dtype=np.float32))
    assert found.scale == "linear", found.evidence
    assert "too large to be logarithms" in found.evidence
    assert found.library_cv["linear"] > 1e-3


def test_values_that_fit_no_scale_are_refused_with_the_evidence():
    uniform = sp.csr_matrix(np.random.default_rng(2).uniform(0.0, 5.0, size=(300, 50)).astype(np.float32))
    pattern = (r"the matrix has non-integer values up to 5: neither raw counts nor log-normalised data of a scale "
               r"that could be recognised\..* ln: \d+\.\d% integer ratios, library CV [\d.]+; log2: .*"
               r"Pass --input-scale counts\|ln\|log2\|log10\|linear to say what it is, or pass raw counts \(--layer counts\)")
    with pytest.raises(InputDataError, match=pattern):
        detect_scale(uniform)
    with pytest.raises(InputDataError, match=r"non-integer values up to 100: neither raw counts nor log-normalised data"):
        detect_scale(sp.csr_matrix(np.array([[100.5, 1.0]], dtype=np.float32)))


def test_scaled_data_is_refused(counts_adata):
    adata = counts_adata.copy()
    logged = np.log1p(_per_cell(sp.csr_matrix(adata.X), 1e4).toarray())
    adata.X = (logged - logged.mean(axis=0)) / np.maximum(logged.std(axis=0), 1e-6)  # what sc.pp.scale does
    with pytest.raises(InputDataError, match=r"the matrix has negative values \(minimum -[\d.]+\): it looks scaled or z-scored "
                                             r"\(centred\)\. Pass raw counts or log-normalised data instead"):
        load_expression(adata)
    # as scanpy leaves it: scaled .X beside the counts in a layer and the log-normalised values in .raw
    adata.layers["counts"] = counts_adata.X.copy()
    adata.raw = ad.AnnData(sp.csr_matrix(logged.astype(np.float32)), obs=adata.obs, var=adata.var)
    with pytest.warns(ScreaderWarning, match=r"the data's \.X holds negative values, as scaled or centred data does; "
                                             r"its \.raw \(\d+ genes\) was read instead"):
        assert load_expression(adata).kind == "ln"  # what CellTypist reads too
    assert load_expression(adata, use_raw=True).kind == "ln"
    raw = adata.raw.to_adata()
    raw.X = raw.X.multiply(-1).tocsr()  # a .raw as scaled as .X is not read in its place; the counts layer is
    adata.raw = raw
    with pytest.warns(ScreaderWarning, match=r"its layer 'counts' \(\d+ genes\) was read instead\. Pass --layer counts"):
        assert load_expression(adata).kind == "counts"
    adata.layers["tpm"] = adata.layers.pop("counts")  # a layer not named for counts is not chosen
    with pytest.raises(InputDataError, match=r"it looks scaled or z-scored \(centred\)\. The file holds other matrices: "
                                             r"read one of them with --layer tpm or --use-raw$"):
        load_expression(adata)
    adata.layers["counts"] = adata.layers.pop("tpm")
    assert load_expression(adata, layer="counts").kind == "counts"
    adata.layers["scaled"] = adata.X
    adata.X = counts_adata.X.copy()
    with pytest.raises(InputDataError, match=r"read one of them with --layer counts or --use-raw or neither --layer nor "
                                             r"--use-raw \(\.X\)$"):
        load_expression(adata, layer="scaled")


def test_a_given_scale_is_taken_and_checked(counts_adata):
    source = ExpressionSource(matrix=sp.csr_matrix(counts_adata.X), names=list(counts_adata.var_names),
                              obs=counts_adata.obs)
    assert input_scale_of(source, "log2").scale == "log2"
    assert input_scale_of(source, "lognorm").scale == "ln"
    assert input_scale_of(source, "auto").scale == "counts"
    with pytest.raises(InputDataError, match=r"unknown input scale 'log'; choose one of auto, counts, ln, log2, log10, linear"):
        input_scale_of(source, "log")


def test_load_expression_detects_the_scale(counts_adata):
    logged = counts_adata.copy()
    logged.X = _logged(_per_cell(sp.csr_matrix(counts_adata.X), 1e6), lambda v: np.log2(1 + v))
    expr = load_expression(logged)
    assert expr.kind == "log2" and "after 2**x - 1" in expr.evidence
    np.testing.assert_allclose(expr.X.toarray(), load_expression(counts_adata).X.toarray(), rtol=1e-4, atol=1e-4)
    assert load_expression(logged, input_scale="log2").kind == "log2"


def test_fifty_genes_are_enough_to_tell_the_scale():
    adata = make_counts(n_cells=200, seed=4)
    assert detect_scale(_logged(_per_cell(sp.csr_matrix(adata.X), 1e4), np.log1p)).scale == "ln"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[np.nan, 1.0]], "the matrix has 1 NaN or infinite values; remove or impute them before annotating"),
        ([[np.inf, 1.0]], "the matrix has 1 NaN or infinite values; remove or impute them before annotating"),
        ([[-1.5, 1.0]], r"the matrix has negative values \(minimum -1.5\): it looks scaled or z-scored"),
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


def test_repeated_gene_names_are_summed_with_a_warning(counts_adata):
    adata = counts_adata.copy()
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    with pytest.warns(ScreaderWarning, match=r"1 gene names occur more than once \(INS, ...\): the values of each name are summed"):
        summed = load_expression(adata)
    whole = load_expression(counts_adata)
    counts = sp.csr_matrix(counts_adata.X).toarray()
    library = counts.sum(axis=1, keepdims=True)
    both = np.log1p((counts[:, 0] + counts[:, 1]) * 1e4 / library[:, 0])
    assert np.allclose(summed.X[:, summed.genes.index(names[0])].toarray().ravel(), both, atol=1e-4)
    assert counts_adata.var_names[1] not in summed.genes and len(summed.genes) == len(whole.genes) - 1


def test_a_var_column_names_the_genes_when_the_index_does_not(counts_adata):
    adata = counts_adata.copy()
    adata.var["feature_name"] = list(adata.var_names)
    adata.var["feature_biotype"] = "gene"
    adata.var_names = [f"ID{i:05d}" for i in range(adata.n_vars)]
    with pytest.warns(ScreaderWarning, match=r"do not name genes; gene names were read from var column 'feature_name'"):
        source = open_expression(adata)
    assert source.gene_key == "feature_name" and source.names == list(counts_adata.var_names)
    assert np.allclose(load_expression(adata).X.toarray(), load_expression(counts_adata).X.toarray())
    adata.var["feature_name"] = [f"X{i}" for i in range(adata.n_vars)]
    adata.var["symbols"] = list(counts_adata.var_names)
    adata.var.loc[adata.var.index[: adata.n_vars // 2 + 1], "symbols"] = "none"  # maps too few to be read unasked
    with pytest.raises(InputDataError, match=r"could be mapped.*Var columns whose names map: .*'symbols' \(24 map\)"):
        open_expression(adata)
    assert open_expression(counts_adata).gene_key is None


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


@pytest.mark.parametrize("stored", ["dense", "csc", "csr"])
def test_a_matrix_stored_dense_or_by_column_is_read_into_memory_once(counts_adata, tmp_path, stored, monkeypatch):
    import screader_db.inputs as inputs

    adata = counts_adata.copy()
    adata.X = {"dense": np.asarray(sp.csr_matrix(adata.X).todense()), "csc": sp.csc_matrix(adata.X),
               "csr": sp.csr_matrix(adata.X)}[stored]
    adata.write_h5ad(tmp_path / "q.h5ad")
    backed = read_h5ad(tmp_path / "q.h5ad", backed=True)
    source = open_expression(backed)
    held = held_in_memory(source)
    assert held.held == (stored != "csr")
    assert (held.matrix is source.matrix) == (stored == "csr")
    expected = sp.csr_matrix(counts_adata.X, dtype=np.float32)
    assert abs(held.rows(0, held.n_cells) - expected).max() == 0
    monkeypatch.setattr(inputs, "HOLD_BYTES", 0)  # too large to hold: read from the file as before
    assert not held_in_memory(open_expression(backed)).held


def test_the_first_rows_are_read_once_for_both_checks_and_a_subset_reads_its_own(counts_adata, tmp_path):
    """The scaled-.X check and the input-scale check share one read of the first rows of a backed file."""
    counts_adata.write_h5ad(tmp_path / "q.h5ad")
    source = open_expression(read_h5ad(tmp_path / "q.h5ad", backed=True))
    first = source.first  # read by open_expression's check of a scaled .X
    assert first is not None and source.head() is first
    assert input_scale_of(source).scale == "counts" and source.head() is first
    expected = sp.csr_matrix(counts_adata.X, dtype=np.float32)
    assert abs(first - expected[: first.shape[0]]).max() == 0
    rows = np.array([2, 5, 9])
    subset = source.subset(rows)
    assert subset.first is None
    assert abs(subset.head() - expected[rows]).max() == 0
    # rows past the end are clipped, as a slice is, instead of reaching scipy with a wrong shape
    assert source.rows(source.n_cells - 3, source.n_cells + 100).shape[0] == 3
    assert subset.rows(1, 50).shape[0] == 2 and source.rows(source.n_cells + 5, source.n_cells + 9).shape[0] == 0


def test_a_plan_onto_the_inputs_own_columns_gives_the_columns_as_a_selection_does():
    """When the targets are the input's columns in order, the plan skips its selection: same values."""
    counts = _counts(n_cells=50, n_genes=40)
    names = [f"G{i}" for i in range(40)]
    same = plan_genes(names, names)
    wider = plan_genes(names, [*names, "EXTRA"])  # not the identity: the selection path
    assert same.identity and not wider.identity
    direct = normalise(counts, "counts", same)
    selected = normalise(counts, "counts", wider)[:, :40]
    assert direct.has_sorted_indices
    np.testing.assert_array_equal(direct.toarray(), selected.toarray())
    before = counts.copy()
    same.apply(counts)
    np.testing.assert_array_equal(counts.toarray(), before.toarray())
