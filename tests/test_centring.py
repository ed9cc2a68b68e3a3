"""Composition-balanced centring: the mean of cluster centroids counts each population about once."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.centring import balanced_mean


def _two_populations(n_first, n_second, seed=0):
    """Cells of two well-separated populations over 6 genes, with small noise."""
    rng = np.random.default_rng(seed)
    first = np.array([10, 0, 0, 2, 2, 2], dtype=np.float64)
    second = np.array([0, 10, 4, 2, 2, 2], dtype=np.float64)
    return np.vstack([first + rng.normal(0, 0.1, (n_first, 6)), second + rng.normal(0, 0.1, (n_second, 6))])


def test_a_tenfold_larger_population_does_not_pull_the_centre():
    X = _two_populations(900, 90)
    found = balanced_mean(X, n_clusters=2)
    assert found.dtype == np.float32 and found.shape == (6,)
    halfway = (X[:900].mean(axis=0) + X[900:].mean(axis=0)) / 2
    np.testing.assert_allclose(found, halfway, atol=1e-5)
    assert np.abs(X.mean(axis=0) - halfway).max() > 3  # the plain mean sits near the larger population


def test_two_mixes_of_the_same_populations_are_centred_alike():
    mostly_first = _two_populations(900, 100, seed=1)
    mostly_second = _two_populations(100, 900, seed=2)
    a, b = balanced_mean(mostly_first, n_clusters=2), balanced_mean(mostly_second, n_clusters=2)
    assert np.abs(a - b).max() < 0.05
    assert np.abs(mostly_first.mean(axis=0) - mostly_second.mean(axis=0)).max() > 7


def test_sparse_and_dense_input_and_a_repeated_call_agree():
    X = _two_populations(60, 40, seed=3)
    dense = balanced_mean(X, n_clusters=4, seed=5)
    assert np.array_equal(dense, balanced_mean(sp.csr_matrix(X), n_clusters=4, seed=5))
    assert np.array_equal(dense, balanced_mean(X, n_clusters=4, seed=5))


def test_no_more_cells_than_clusters_is_the_plain_mean():
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    found = balanced_mean(X, n_clusters=4)
    assert found.dtype == np.float32
    np.testing.assert_array_equal(found, X.mean(axis=0).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_group_means_are_the_means_of_each_groups_rows_to_the_last_bit(dtype):
    from screader_db.clusters import group_means

    rng = np.random.default_rng(3)
    for _ in range(50):
        n, d, k = int(rng.integers(5, 2000)), int(rng.integers(2, 40)), int(rng.integers(1, 30))
        values = (rng.standard_normal((n, d)) * rng.uniform(0.01, 100)).astype(dtype)
        groups = rng.integers(0, k, n)
        expected = np.stack([values[groups == j].mean(axis=0) if (groups == j).any() else np.full(d, np.nan, dtype)
                             for j in range(k)])
        found = group_means(values, groups, k)
        assert found.dtype == expected.dtype and np.array_equal(found, expected, equal_nan=True)
    assert np.isnan(group_means(np.ones((3, 2), dtype=dtype), np.array([0, 0, 2]), 3)[1]).all()


def _profiles():
    """Mean log profiles of three labels over 8 genes, and the reference's centre (their mean)."""
    means = np.array([[6, 0, 0, 1, 1, 2, 0, 3], [0, 6, 0, 1, 3, 2, 0, 1], [0, 0, 6, 3, 1, 2, 2, 1]], dtype=np.float64)
    return means, means.mean(axis=0)


def _cells(means, counts, offset, seed=0):
    rng = np.random.default_rng(seed)
    return np.vstack([m + offset + rng.normal(0, 0.2, (n, len(m))) for m, n in zip(means, counts, strict=True)])


def test_a_query_of_one_type_is_centred_on_the_reference_shifted_by_its_offset():
    from types import SimpleNamespace

    from screader_db.centring import matched_centre

    means, centre = _profiles()
    embedder = SimpleNamespace(mean=centre.astype(np.float32), weights=None, label_means=means.astype(np.float32))
    offset = np.array([0.5, -0.3, 0.2, 0.4, 0.0, -0.5, 0.3, 0.1])
    one_type = _cells(means, [300, 0, 0], offset)
    found = matched_centre(one_type, embedder)
    np.testing.assert_allclose(found, centre + offset, atol=0.1)
    # The balanced mean would centre the cells on themselves, taking away what makes them this type.
    assert np.abs(balanced_mean(one_type) - (centre + offset)).max() > 2
    # A query of every type keeps its balanced mean, to the last bit; so does an embedder without label means.
    every_type = _cells(means, [300, 100, 200], offset, seed=1)
    assert np.array_equal(matched_centre(every_type, embedder), balanced_mean(every_type))
    plain = SimpleNamespace(mean=embedder.mean, weights=None, label_means=None)
    assert np.array_equal(matched_centre(one_type, plain), balanced_mean(one_type))
