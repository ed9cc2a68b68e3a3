"""The input scale is told right on real data: pbmc3k and Baron human counts, transformed each way."""

import numpy as np
import pytest
import scipy.sparse as sp

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


@pytest.mark.parametrize("way", list(WAYS))
def test_each_transform_is_detected(counts, way):
    scale, total, log = WAYS[way]
    library = np.asarray(counts.sum(axis=1)).ravel()
    X = sp.csr_matrix(sp.diags((total / np.maximum(library, 1)).astype(np.float32)) @ counts, dtype=np.float32)
    if log is not None:
        X.data = log(X.data).astype(np.float32)
    found = detect_scale(X)
    assert found.scale == scale, found.evidence
    assert found.integer_share[scale] > 0.99, found.evidence
    wrong = [v for s, v in found.integer_share.items() if s != scale and not np.isnan(v)]
    assert max(wrong, default=0.0) < 0.1, found.evidence
