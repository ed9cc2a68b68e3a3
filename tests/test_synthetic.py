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
