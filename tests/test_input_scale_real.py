"""The input scale is told right on real data: pbmc3k and Baron human counts, transformed each way."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.errors import InputDataError
from screader_db.inputs import SCALE_SAMPLE, detect_scale, read_h5ad

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


def test_values_rounded_to_one_decimal_are_too_coarse_for_a_log_scale(counts):
    library = np.asarray(counts.sum(axis=1)).ravel()
    X = sp.csr_matrix(sp.diags((1e4 / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)
    X.data = np.round(np.log1p(X.data), 1)
    X.eliminate_zeros()
    with pytest.raises(InputDataError, match=r"neither raw counts nor log-normalised data .* Pass --input-scale"):
        detect_scale(X)


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


def test_log_values_without_integer_structure_or_equal_totals_are_refused(counts):
    """Their most even totals are under log2 on Baron human, under ln on pbmc3k: no rule to guess from."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    X.data *= rng.uniform(0.7, 1.0, X.data.size)  # ambient-corrected, then ln(1+CP10k), then some genes
    X = sp.csr_matrix(sp.diags(1e4 / np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1e-9)) @ X)
    X.data = np.log1p(X.data)
    X = X[:, rng.random(X.shape[1]) < 0.6]
    with pytest.raises(InputDataError, match=r"non-integer values up to [\d.]+: neither raw counts nor log-normalised"):
        detect_scale(sp.csr_matrix(X, dtype=np.float32))
