import numpy as np
import scipy.sparse as sp

from screader_db.features import gene_moments, highly_variable


def test_moments_match_dense():
    rng = np.random.default_rng(0)
    dense = rng.poisson(1.0, size=(50, 8)).astype(np.float32)
    mean, var = gene_moments(sp.csr_matrix(dense))
    np.testing.assert_allclose(mean, dense.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, dense.var(0, ddof=1), rtol=1e-4)


def test_bimodal_marker_genes_are_chosen_at_every_expression_level():
    rng = np.random.default_rng(1)
    n, n_flat = 600, 500
    means = rng.lognormal(0.0, 1.2, size=n_flat)
    flat = rng.poisson(means, size=(n, n_flat))
    groups = rng.integers(0, 2, size=n)
    levels = np.geomspace(0.5, 20, 10)
    marker = rng.poisson(np.where(groups[:, None] == 1, 2 * levels, 0.02 * levels), size=(n, 10))
    X = sp.csr_matrix(np.log1p(np.hstack([flat, marker]).astype(np.float32)))
    chosen = set(highly_variable(X, n_top=20).tolist())
    assert len(chosen & set(range(n_flat, n_flat + 10))) >= 8
