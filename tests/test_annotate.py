"""annotate(): plumbing on generated data with the random gene model (accuracy tests use real models)."""

import numpy as np
import pytest
from conftest import make_counts

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.errors import GeneOverlapError, ModelMismatchError


@pytest.fixture
def atlas(tmp_path, counts_adata):
    build_atlas(counts_adata, tmp_path / "atlas", label_key="cell_type", dataset_name="synthetic",
                settings=BuildSettings(model="random:32", n_genes=50))
    return tmp_path / "atlas"


def test_labels_come_back_for_every_cell(atlas):
    query = make_counts(n_cells=120, seed=5)
    result = annotate(query, atlas, k=10)
    assert list(result.table.index) == list(query.obs_names)
    assert result.embeddings.shape[0] == 120
    assert result.neighbour_ids.shape == (120, 10)
    agree = result.agreement(query.obs["cell_type"])
    assert agree.accuracy > 0.9
    summary = result.summary()
    assert summary["cells"].sum() == 120


def test_to_adata_is_a_copy(atlas):
    query = make_counts(n_cells=60, seed=6)
    before = set(query.obs.columns)
    out = annotate(query, atlas).to_adata(query)
    assert set(query.obs.columns) == before
    assert "screader_label" in out.obs and "screader_score" in out.obs
    assert out.obsm["X_screader"].shape[0] == 60
    assert out.uns["screader"]["model_id"] == "random:32:0"


def test_min_score_makes_cells_unassigned(atlas):
    query = make_counts(n_cells=60, seed=7)
    result = annotate(query, atlas, min_score=1.01)
    assert (result.labels == "Unassigned").all()
    assert result.n_unassigned == 60


def test_atlas_from_another_model_is_refused(atlas):
    with pytest.raises(ModelMismatchError, match=r"built with gene-embedding model 'random:32:0', not 'minilm'"):
        annotate(make_counts(n_cells=10), atlas, model="minilm")


def test_too_few_shared_genes(atlas):
    query = make_counts(n_cells=20, genes=["INS", "GCG", "SST"] + [f"LINC{i:05d}" for i in range(40)], n_types=1)
    with pytest.raises(GeneOverlapError, match=r"only \d+ of the atlas's \d+ genes are in the query"):
        annotate(query, atlas)


def test_results_are_deterministic(atlas):
    query = make_counts(n_cells=80, seed=8)
    a, b = annotate(query, atlas), annotate(query, atlas)
    np.testing.assert_array_equal(a.neighbour_ids, b.neighbour_ids)
    assert a.labels.equals(b.labels)
