"""The input scale is told right on real data: pbmc3k and Baron human counts, transformed each way."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.inputs import SCALE_SAMPLE, detect_scale, read_h5ad
from screader_db.suite import _rpkm

pytestmark = pytest.mark.data("pbmc3k", "baron_human")
WAYS = {
    "ln(1+CP10k)": ("ln", 1e4, np.log1p),
    "log2(1+CPM)": ("log2", 1e6, lambda v: np.log2(1 + v)),
    "log10(1+CP10k)": ("log10", 1e4, lambda v: np.log10(1 + v)),
    "CPM": ("linear", 1e6, None),
}


@pytest.fixture(scope="module", params=["pbmc3k", "baron_human"])
def counts(request, data_path):
    adata = read_h5ad(data_path(request.param))
    return sp.csr_matrix(adata.X[:SCALE_SAMPLE], dtype=np.float32)


def test_raw_counts_are_counts(counts):
    assert detect_scale(counts).scale == "counts"


@pytest.mark.parametrize("places", [None, 2], ids=["full precision", "2 decimals"])
@pytest.mark.parametrize("way", list(WAYS))
def test_each_transform_is_detected(counts, way, places):
    scale, total, log = WAYS[way]
    library = np.asarray(counts.sum(axis=1)).ravel()
    X = sp.csr_matrix(sp.diags((total / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)
    if log is not None:
        X.data = log(X.data).astype(np.float32)
    if places is not None:  # as an exported table keeps them
        X.data = np.round(X.data, places)
        X.eliminate_zeros()
    found = detect_scale(X)
    assert found.scale == scale, found.evidence
    assert found.integer_share[scale] > 0.99, found.evidence
    wrong = [v for s, v in found.integer_share.items() if s != scale and not np.isnan(v)]
    # rounded values are known less exactly, so wrong inverses land within tolerance more often by chance
    assert max(wrong, default=0.0) < (0.1 if places is None else 0.4), found.evidence
    assert ("every value is rounded to 0.01" in found.evidence) == (places == 2), found.evidence


def test_logs_rounded_to_one_decimal_are_read_in_the_likeliest_base(counts):
    """Too coarse for integer ratios; their totals are still most even under the right inverse."""
    library = np.asarray(counts.sum(axis=1)).ravel()
    X = sp.csr_matrix(sp.diags((1e4 / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)
    X.data = np.round(np.log1p(X.data), 1)
    X.eliminate_zeros()
    found = detect_scale(X)
    assert (found.scale, found.guessed) == ("ln", True), found.evidence
    assert "ln (likeliest)" in found.evidence and "Pass --input-scale" in found.evidence


@pytest.mark.parametrize("way", ["ln", "log2", "log10"])
def test_logs_of_rpkm_are_read_in_their_own_base(counts, way):
    """Reads per kilobase per million have no integer ratios and no equal totals; logged, they are
    neither too large to be logarithms nor of one total, and are read as logarithms: in their own base,
    or (ln against log2, whose totals can be as even: CV 0.111 each on Baron human) the other of the two,
    which moves few labels; never as log10, which moves many."""
    X = _rpkm(counts, seed=1)
    X.data = {"ln": np.log1p, "log2": lambda v: np.log2(1 + v), "log10": lambda v: np.log10(1 + v)}[way](X.data)
    found = detect_scale(sp.csr_matrix(X, dtype=np.float32))
    assert found.guessed, found.evidence
    assert found.scale == way or (way != "log10" and found.scale != "log10"), found.evidence
    assert found.library_cv[found.scale] <= found.library_cv[way] and found.scale != "linear", found.evidence


LINEAR = {
    "expected counts": lambda X, rng: X.data.__iadd__((rng.random(X.data.size) < 0.3) * rng.random(X.data.size)),
    "ambient-corrected counts": lambda X, rng: X.data.__imul__(rng.uniform(0.7, 1.0, X.data.size)),
}


@pytest.mark.parametrize("way", [*LINEAR, "RPKM of some genes"])
def test_linear_values_without_integer_structure_are_linear(counts, way):
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    if way in LINEAR:
        LINEAR[way](X, rng)
    else:  # reads per kilobase per million, then the genes of one kind kept
        library = np.asarray(X.sum(axis=1)).ravel()
        X = sp.csr_matrix(sp.diags(1e6 / np.maximum(library, 1)) @ X @ sp.diags(1e3 / rng.uniform(500, 5000, X.shape[1])))
        X = X[:, rng.random(X.shape[1]) < 0.6]
    found = detect_scale(sp.csr_matrix(X, dtype=np.float32))
    assert found.scale == "linear", found.evidence
    assert "too large to be logarithms" in found.evidence


def test_log_values_without_integer_structure_or_equal_totals_are_read_as_a_log(counts):
    """Their most even totals are under log2 on Baron human (CV 0.115 against ln's 0.121), under ln on
    pbmc3k: the base may be the wrong one of the two, never linear or log10, and is said to be a guess."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    X.data *= rng.uniform(0.7, 1.0, X.data.size)  # ambient-corrected, then ln(1+CP10k), then some genes
    X = sp.csr_matrix(sp.diags(1e4 / np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1e-9)) @ X)
    X.data = np.log1p(X.data)
    X = X[:, rng.random(X.shape[1]) < 0.6]
    found = detect_scale(sp.csr_matrix(X, dtype=np.float32))
    assert found.scale in ("ln", "log2") and found.guessed, found.evidence
