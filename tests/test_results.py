"""The evidence an AnnotationResult carries for each call, on pbmc3k against an atlas of other
pbmc3k cells: label scores (table, obsm, uns), why a cell is Unassigned, and its neighbours."""

import anndata as ad
import numpy as np
import pytest

from screader_db import annotate
from screader_db.classifier import WEIGHT
from screader_db.errors import CellNotFoundError, InputDataError
from screader_db.metrics import UNASSIGNED
from screader_db.store import open_atlas

NEIGHBOUR_COLUMNS = ["rank", "cell_id", "reference_cell", "dataset", "label", "donor", "similarity"]


@pytest.mark.data("pbmc3k")
def test_label_scores_sum_to_one_and_survive_an_h5ad_round_trip(pbmc_split, pbmc_result, tmp_path):
    _, query, _ = pbmc_split
    result = pbmc_result
    labels = result.info["score_labels"]
    assert labels == result.atlas_labels == sorted(query.obs["celltype"].astype(str).unique())
    assert [c for c in result.table.columns if c.startswith("score_")] == [f"score_{label}" for label in labels]
    scores = result.label_scores
    assert list(scores.columns) == labels and list(scores.index) == list(query.obs_names)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    best = scores.to_numpy().argmax(axis=1)
    assert (np.asarray(labels)[best] == result.table["raw_label"].to_numpy()).all()
    # the per-label scores are the blended vote (neighbours and classifier); the score is the neighbours'
    # share of the label given, so blend = w * score + (1 - w) * probability bounds it from below
    score = result.table["score"].to_numpy()
    assert ((score >= 0) & (score <= 1)).all()
    assert (score >= (scores.max(axis=1).to_numpy() - (1 - WEIGHT)) / WEIGHT - 1e-5).all()

    path = tmp_path / "annotated.h5ad"
    result.to_adata(query).write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.obsm["screader_scores"].dtype == np.float32
    np.testing.assert_array_equal(back.obsm["screader_scores"], scores.to_numpy())
    assert [str(v) for v in back.uns["screader"]["score_labels"]] == labels
    np.testing.assert_array_equal(back.obsm["screader_neighbours"], result.neighbour_ids)
    assert back.obsm["screader_neighbours"].dtype == np.int64
    np.testing.assert_allclose(back.obsm["screader_neighbour_similarity"], result.neighbour_similarities)
    assert not [c for c in back.obs.columns if c.startswith("screader_score_")]
    assert {"screader_label", "screader_score", "screader_unassigned_reason"} <= set(back.obs.columns)
    assert "screader_scores" not in query.obsm


@pytest.mark.data("pbmc3k")
def test_every_unassigned_cell_says_which_rule_set_it_aside(pbmc_split):
    root, query, _ = pbmc_split
    result = annotate(query, root, min_margin=0.9)
    table = result.table
    unassigned = table["label"] == UNASSIGNED
    assert (table.loc[~unassigned, "unassigned_reason"] == "").all()
    reasons = table.loc[unassigned, "unassigned_reason"]
    assert set(reasons) <= {"novel population", "low score", "low margin"} and "" not in set(reasons)
    low_score = table["score"] < result.info["min_score"]
    novel = table.get("novel", False)
    expected = np.where(novel, "novel population", np.where(low_score, "low score", "low margin"))
    assert (reasons.to_numpy() == expected[unassigned.to_numpy()]).all()
    assert (reasons == "low margin").any()


@pytest.mark.data("pbmc3k")
def test_neighbours_of_a_cell_name_the_reference_cells_that_voted(pbmc_split, pbmc_result):
    root, query, _ = pbmc_split
    result = pbmc_result
    i = 7
    frame = result.neighbours(query.obs_names[i])
    assert list(frame.columns) == NEIGHBOUR_COLUMNS
    assert frame.equals(result.neighbours(i)) and frame.equals(result.neighbours(str(i)))
    assert list(frame["rank"]) == list(range(1, result.info["k"] + 1))
    assert frame["similarity"].iloc[0] == pytest.approx(float(result.neighbour_similarities[i, 0]))
    assert (np.diff(frame["similarity"].to_numpy()) <= 1e-6).all()
    cells = open_atlas(root).cells()
    ids = result.neighbour_ids[i]
    assert list(frame["cell_id"]) == list(ids)
    assert list(frame["label"]) == list(cells.loc[ids, "label"])
    assert list(frame["reference_cell"]) == list(cells.loc[ids, "barcode"])
    assert set(frame["dataset"]) == {"pbmc3k"}
    assert set(frame["donor"]) == {""}  # pbmc3k records no donor


@pytest.mark.data("pbmc3k")
def test_a_cell_the_query_lacks_is_refused(pbmc_result):
    name = pbmc_result.table.index[0]
    typo = name[:-3] + "X-1"
    with pytest.raises(CellNotFoundError, match=rf"^cell '{typo}' is not in the query \(400 cells\); did you mean "
                                                rf"'{name}'.*\? Pass an obs name or a position from 0 to 399$"):
        pbmc_result.neighbours(typo)
    with pytest.raises(CellNotFoundError, match=r"^cell position 400 is out of range: the query has 400 cells "
                                                r"\(positions 0 to 399\)$"):
        pbmc_result.neighbours(400)


# to_adata on a small generated query (the reference map laid out without umap-learn, which is faster here).
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import warnings

    from conftest import make_counts

    from screader_db.builders.atlas import build_atlas
    from screader_db.errors import ScreaderWarning

    root = tmp_path_factory.mktemp("small") / "atlas"
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", ScreaderWarning)
        patch.setitem(__import__("sys").modules, "umap", None)
        build_atlas(make_counts(300, seed=0), root, label_key="cell_type")
    query = make_counts(80, seed=1)
    query.obsm["X_umap"] = np.ones((80, 2), dtype=np.float32)  # the user's own map
    query.uns["user"] = {"kept": 1}
    return query, annotate(query, root)


def test_to_adata_returns_a_copy_sharing_nothing_and_keeps_the_users_umap(small):
    query, result = small
    keys = (set(query.obs.columns), set(query.obsm), set(query.uns))
    counts, checked = query.X.toarray(), result.info["novelty"]["checked"]
    out = result.to_adata(query)
    assert (set(query.obs.columns), set(query.obsm), set(query.uns)) == keys
    assert {"screader_label", "screader_score", "screader_confidence", "screader_unassigned_reason"} <= set(out.obs.columns)
    assert set(out.obsm) == {"X_umap", "X_screader", "screader_scores", "screader_neighbours",
                             "screader_neighbour_similarity", "X_screader_umap"}
    np.testing.assert_array_equal(out.obsm["X_umap"], query.obsm["X_umap"])  # never overwritten
    np.testing.assert_array_equal(out.obsm["X_screader_umap"], result.umap)
    out.X.data[:] = -1
    out.obsm["X_umap"][:] = 5
    out.obsm["X_screader"][:] = 0
    out.obs["cell_type"] = "changed"
    out.uns["user"]["kept"] = 2
    out.uns["screader"]["novelty"]["checked"] = "changed"
    np.testing.assert_array_equal(query.X.toarray(), counts)
    assert (query.obsm["X_umap"] == 1).all() and (query.obs["cell_type"] != "changed").all()
    assert query.uns["user"]["kept"] == 1 and result.info["novelty"]["checked"] == checked
    assert np.abs(result.embeddings).sum() > 0


def test_to_adata_writes_under_key_added_and_in_place(small):
    query, result = small
    copy = query.copy()
    assert result.to_adata(copy, inplace=True, key_added="lab") is None
    assert {"lab_label", "lab_score"} <= set(copy.obs.columns)
    assert not [c for c in copy.obs.columns if c.startswith("screader_")]
    assert {"X_lab", "lab_scores", "lab_neighbours", "lab_neighbour_similarity", "X_lab_umap", "X_umap"} == set(copy.obsm)
    assert copy.uns["lab"]["score_labels"] == result.score_labels and "screader" not in copy.uns


def test_nested_uns_stays_nested_through_an_h5ad(small, tmp_path):
    query, result = small
    out = result.to_adata(query)
    assert isinstance(out.uns["screader"]["novelty"], dict) and isinstance(out.uns["screader"]["panel"], dict)
    out.write_h5ad(tmp_path / "annotated.h5ad")
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    info = back.uns["screader"]
    assert bool(info["novelty"]["checked"]) == result.info["novelty"]["checked"]
    assert bool(info["panel"]["used"]) == result.info["panel"]["used"]
    assert [str(v) for v in info["score_labels"]] == result.score_labels
    assert int(info["atlas_version"]) == result.info["atlas_version"]


def test_a_backed_query_stays_backed_in_place_and_is_read_into_memory_for_a_copy(small, tmp_path):
    query, result = small
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    out = result.to_adata(backed)
    assert not out.isbacked and backed.isbacked and "screader_label" not in backed.obs
    assert (out.obs["screader_label"].astype(str) == result.labels.astype(str).to_numpy()).all()
    result.to_adata(backed, inplace=True)
    assert backed.isbacked and "screader_label" in backed.obs and "X_screader" in backed.obsm
    backed.file.close()


def test_to_adata_refuses_another_number_of_cells(small):
    query, result = small
    with pytest.raises(InputDataError, match=r"^the AnnData has 10 cells and the result 80; pass the AnnData that was "
                                             r"annotated$"):
        result.to_adata(query[:10])
