"""The evidence an AnnotationResult carries for each call, on pbmc3k against an atlas of other
pbmc3k cells: label scores (table, obsm, uns), why a cell is Unassigned, and its neighbours."""

import anndata as ad
import numpy as np
import pytest

from screader_db import annotate
from screader_db.errors import CellNotFoundError
from screader_db.metrics import UNASSIGNED
from screader_db.store import open_atlas

NEIGHBOUR_COLUMNS = ["rank", "cell_id", "reference_cell", "dataset", "label", "donor", "similarity"]


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
    np.testing.assert_allclose(scores.max(axis=1), result.table["score"], atol=1e-6)

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


def test_a_cell_the_query_lacks_is_refused(pbmc_result):
    name = pbmc_result.table.index[0]
    typo = name[:-3] + "X-1"
    with pytest.raises(CellNotFoundError, match=rf"^cell '{typo}' is not in the query \(400 cells\); did you mean "
                                                rf"'{name}'.*\? Pass an obs name or a position from 0 to 399$"):
        pbmc_result.neighbours(typo)
    with pytest.raises(CellNotFoundError, match=r"^cell position 400 is out of range: the query has 400 cells "
                                                r"\(positions 0 to 399\)$"):
        pbmc_result.neighbours(400)
