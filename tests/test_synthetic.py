import numpy as np

from screader_db.synthetic import chunks, design


def _within_type_top_share(programs: bool) -> float:
    """Share of one type's log-expression variance in its top 5 principal directions."""
    spec = design(n_types=4, n_genes=600, seed=3, programs=programs)
    counts, kinds = next(chunks(spec, 3000, chunk=3000, seed=3))
    X = np.log1p(counts[kinds == 0].toarray())
    X -= X.mean(axis=0)
    values = np.linalg.svd(X, compute_uv=False) ** 2
    return float(values[:5].sum() / values.sum())


def test_programs_give_cells_structure_within_a_type():
    plain = design(n_types=4, n_genes=600, seed=3, programs=False)
    rich = design(n_types=4, n_genes=600, seed=3)
    # The same types and markers either way; programs and donors only add variation within a type.
    assert plain.genes == rich.genes
    np.testing.assert_array_equal(plain.profiles, rich.profiles)
    assert rich.loadings is not None and plain.loadings is None
    assert _within_type_top_share(True) > 1.5 * _within_type_top_share(False)


def test_resampled_cells_keep_their_source_types_profile_thinned_and_seeded(tmp_path):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from screader_db.synthetic import resampled_chunks, write_resampled_h5ad

    spec = design(n_types=3, n_genes=300, seed=5)
    counts, kinds = next(chunks(spec, 400, chunk=400, seed=5))
    blocks = list(resampled_chunks(counts, kinds, 1000, chunk=300, seed=1))
    assert [b.shape[0] for b, _ in blocks] == [300, 300, 300, 100]
    X = sp.vstack([b for b, _ in blocks]).tocsr()
    drawn = np.concatenate([k for _, k in blocks])
    assert X.shape == (1000, 300) and np.all(X.data == np.round(X.data)) and X.data.min() > 0
    # each type's mean profile is its source's, scaled down by the thinning (at most all molecules kept)
    for kind in range(3):
        source_mean, resampled_mean = counts[kinds == kind].mean(axis=0), X[drawn == kind].mean(axis=0)
        assert np.corrcoef(np.asarray(source_mean).ravel(), np.asarray(resampled_mean).ravel())[0, 1] > 0.95
    assert 0.4 < X.sum() / 1000 / (counts.sum() / 400) < 0.9
    again = next(resampled_chunks(counts, kinds, 1000, chunk=300, seed=1))[0]
    assert (again != blocks[0][0]).nnz == 0  # seeded
    source = ad.AnnData(counts, obs=pd.DataFrame({"kind": np.asarray(spec.types)[kinds]}), var=pd.DataFrame(index=spec.genes))
    written = ad.read_h5ad(write_resampled_h5ad(tmp_path / "cells.h5ad", source, "kind", 250, chunk=100, seed=2))
    assert written.shape == (250, 300) and set(written.obs["cell_type"]) <= set(spec.types)
    assert list(written.var_names) == spec.genes
