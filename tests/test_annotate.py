"""annotate(): plumbing on generated data with the random gene model (accuracy tests use real models)."""

import numpy as np
import pytest
from conftest import make_counts

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.errors import GeneOverlapError, ModelMismatchError, ScreaderWarning


@pytest.fixture
def atlas(tmp_path, counts_adata):
    build_atlas(counts_adata, tmp_path / "atlas", label_key="cell_type", dataset_name="synthetic",
                settings=BuildSettings(model="random:32", method="genept", n_genes=50, layout="none"))
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
    with pytest.raises(GeneOverlapError, match=r"the query shares only 3 genes with the atlas's reference \(\d+ genes\); "
                                               r"at least \d+ are needed"):
        annotate(query, atlas)


def test_results_are_deterministic(atlas):
    query = make_counts(n_cells=80, seed=8)
    a, b = annotate(query, atlas), annotate(query, atlas)
    np.testing.assert_array_equal(a.neighbour_ids, b.neighbour_ids)
    assert a.labels.equals(b.labels)


@pytest.fixture(scope="module")
def mapped_atlas(tmp_path_factory):
    """An atlas with a reference map and a label map (harmonised names and ontology ids)."""
    import pandas as pd

    root = tmp_path_factory.mktemp("mapped") / "atlas"
    label_map = pd.DataFrame({"dataset": ["synthetic", "*"], "label": ["type0", "type1"],
                              "harmonised_label": ["alpha", "alpha"], "ontology_id": ["CL:1", "CL:1"]})
    build_atlas(make_counts(n_cells=300), root, label_key="cell_type", dataset_name="synthetic", label_map=label_map,
                settings=BuildSettings(model="random:32", method="genept", n_genes=50, layout="umap"))
    return root


def test_harmonised_level_votes_on_mapped_labels(mapped_atlas):
    query = make_counts(n_cells=90, seed=9)
    result = annotate(query, mapped_atlas, level="harmonised")
    assert set(result.labels) <= {"alpha", "type2"}
    assert result.atlas_labels == ["alpha", "type2"]
    from screader_db.store import open_atlas

    cells = open_atlas(mapped_atlas).cells()
    assert set(cells.loc[cells["label"] == "type0", "ontology_id"]) == {"CL:1"}
    assert set(cells.loc[cells["label"] == "type2", "label_harmonised"]) == {"type2"}


def test_query_is_placed_on_the_reference_map_and_plotted(mapped_atlas, tmp_path):
    query = make_counts(n_cells=90, seed=10)
    result = annotate(query, mapped_atlas, majority_voting=True)
    assert result.umap.shape == (90, 2) and np.isfinite(result.umap).all()
    assert {"cluster", "majority_label", "majority_share"} <= set(result.table.columns)
    out = result.to_adata(query)
    assert out.obsm["X_screader_umap"].shape == (90, 2) and "X_umap" not in out.obsm
    written = result.plot(tmp_path / "plots", truth=query.obs["cell_type"])
    from PIL import Image

    assert {p.name for p in written} == {"umap.png", "scores.png", "confusion.png"}
    for path in written:
        with Image.open(path) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300


def test_summary_counts_unassigned_per_label(atlas):
    import scipy.sparse as sp

    query = make_counts(n_cells=60, seed=11)
    query.X = sp.csr_matrix(sp.vstack([query.X[:30] + query.X[30:], query.X[30:]]))  # 30 doublets: split votes
    result = annotate(query, atlas, min_score=0.9)
    table, summary = result.table, result.summary()
    unassigned = (table["label"] == "Unassigned").to_numpy()
    assert 0 < unassigned.sum() < 30
    assert summary.index[-1] == "Unassigned"
    assert summary.loc["Unassigned", ["cells", "unassigned"]].tolist() == [unassigned.sum(), 0]
    called = summary.drop("Unassigned")
    assert called["cells"].tolist() == sorted(called["cells"], reverse=True)
    assert called["cells"].to_dict() == table.loc[~unassigned, "label"].value_counts().to_dict()
    set_aside = table.loc[unassigned, "raw_label"].value_counts()
    assert (set_aside > 0).sum() >= 2, "the query sets aside cells of several labels"
    assert called["unassigned"].to_dict() == set_aside.reindex(called.index, fill_value=0).to_dict()
    assert called["unassigned"].sum() == result.n_unassigned



def test_neighbours_carry_the_donor_the_reference_recorded(atlas, counts_adata):
    result = annotate(make_counts(n_cells=30, seed=12), atlas, k=5)
    frame = result.neighbours(3)
    rows = result.neighbour_ids[3] & 0xFFFFFFFF  # the low bits of a cell id are its row in its data set
    assert list(frame["reference_cell"]) == list(counts_adata.obs_names[rows])
    assert list(frame["donor"]) == list(counts_adata.obs["donor"].astype(str).iloc[rows])


def test_a_result_from_a_server_has_scores_but_no_neighbours():
    from screader_db.errors import AtlasError
    from screader_db.payloads import result_from_payload, result_payload

    result = result_from_payload({"cells": [{"cell": "c0", "label": "a", "score": 0.75, "score_a": 0.75, "score_b": 0.25}],
                                  "labels": ["a", "b"], "info": {"score_labels": ["a", "b"]}})
    assert result.label_scores.loc["c0"].tolist() == [0.75, 0.25]
    assert result_payload(result)["cells"][0]["score_b"] == 0.25
    with pytest.raises(AtlasError, match=r"^this result does not carry its atlas and neighbours"):
        result.neighbours(0)


def test_a_path_is_read_backed_and_closed_again(atlas, tmp_path):
    import h5py

    query = make_counts(n_cells=50, seed=13)
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    from_file, in_memory = annotate(path, atlas, k=5), annotate(query, atlas, k=5)
    assert from_file.table.equals(in_memory.table)
    np.testing.assert_array_equal(from_file.neighbour_ids, in_memory.neighbour_ids)
    with h5py.File(path, "r+"):  # no handle of annotate's is left open on the file
        pass


def test_the_stages_give_what_annotate_gives(atlas):
    from screader_db.annotation import (
        Plan,
        abstain,
        assemble,
        embed_query,
        fit_to_panel,
        prepare,
        prepare_query,
        search_neighbours,
        second_opinion,
        vote,
        weigh_evidence,
    )
    from screader_db.options import AnnotateOptions

    query = make_counts(n_cells=40, seed=14)
    options = AnnotateOptions.from_flat(k=6, min_margin=0.2, majority_voting=True)
    plan = Plan.of(atlas, options)
    assert (plan.k, plan.column, plan.allowed) == (6, "label", None)
    mapped = prepare_query(query, plan.atlas.embedder.genes, check_overlap=False)
    answering = fit_to_panel(mapped, plan.atlas)
    prepared = prepare(plan, answering, matched=mapped.plan.matched)
    vectors = embed_query(prepared.query, answering.embedder)
    neighbours = search_neighbours(plan, prepared, vectors)
    second = second_opinion(plan, prepared)
    votes = weigh_evidence(plan, prepared, vote(plan, neighbours, vectors, answering.scores, second))
    labelled = abstain(plan, prepared, neighbours, votes, vectors)
    staged = assemble(plan, prepared, vectors, neighbours, votes, labelled, second)
    whole = annotate(query, atlas, options=options)
    stages = whole.info.pop("stage_seconds")
    # annotate() adds what the cells were centred on: 40 cells are too few to centre themselves
    assert whole.info.pop("centring") == {"on": "the reference's centre"}
    assert list(stages) == ["read", "prepare", "embed", "search and novelty check", "second opinion", "vote",
                            "marker evidence", "abstain", "assemble"]
    assert staged.table.equals(whole.table) and staged.info == whole.info
    np.testing.assert_array_equal(staged.embeddings, whole.embeddings)


def test_decorated_names_and_a_symbol_column_give_the_same_answer(atlas):
    query = make_counts(n_cells=80, seed=9)
    plain = annotate(query, atlas)
    decorated = query.copy()
    decorated.var_names = [f"GRCh38_{g}" for g in query.var_names]
    np.testing.assert_array_equal(annotate(decorated, atlas).neighbour_ids, plain.neighbour_ids)
    columned = query.copy()
    columned.var["feature_name"] = list(query.var_names)
    columned.var_names = [f"gene{i}" for i in range(query.n_vars)]
    with pytest.warns(ScreaderWarning, match="gene names were read from var column 'feature_name'"):
        result = annotate(columned, atlas)
    np.testing.assert_array_equal(result.neighbour_ids, plain.neighbour_ids)
    assert result.info["gene_key"] == "feature_name" and plain.info["gene_key"] == ""
