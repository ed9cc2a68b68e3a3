"""Partial gene panels: the stored reference expression, panel indexes fitted once and reused, the floor."""

import warnings

import numpy as np
import pytest
from conftest import make_counts, panel_genes

from screader_db import annotate, store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.builders.datasets import add_dataset, remove_dataset
from screader_db.errors import GeneOverlapError, ScreaderWarning
from screader_db.index import describe_search
from screader_db.inputs import load_expression
from screader_db.query_input import MIN_PANEL_GENES
from screader_db.stored_expression import StoredExpression, read_part

GENES = panel_genes(160)


@pytest.fixture(scope="module")
def cells():
    return make_counts(n_cells=360, genes=GENES, n_types=4, seed=3)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory, cells):
    root = tmp_path_factory.mktemp("panel") / "atlas"
    build_atlas(cells[:240].copy(), root, label_key="cell_type", dataset_name="ref", settings=BuildSettings(layout="none"))
    return root


def _query(cells, genes):
    keep = [g in genes for g in cells.var_names]
    return cells[240:, keep].copy()


def test_the_atlas_keeps_the_reference_expression(atlas, cells):
    opened = store.open_atlas(atlas)
    stored = StoredExpression(opened.path)
    assert stored.n_cells == 240 and stored.genes() == sorted(GENES)
    ids, X, genes = read_part(stored.files[0])
    expected = load_expression(cells[:240].copy(), target=genes)
    np.testing.assert_allclose(X.toarray(), expected.X.toarray(), rtol=1e-6)
    np.testing.assert_array_equal(ids, store.cell_ids(1, 240))
    meta = opened.info["files"]
    assert any(path.startswith("expression/ref/part-") for path in meta), "stored expression is listed with its sha256"


def test_a_partial_panel_is_fitted_once_and_reused(atlas, cells):
    query = _query(cells, GENES[40:])
    with pytest.warns(ScreaderWarning, match=r"answered on the 120 genes it shares .*fitted now and kept"):
        first = annotate(query, atlas)
    panel = first.info["panel"]
    assert panel["used"] and panel["shared_genes"] == 120 and not panel["reused"]
    folder = store.open_atlas(atlas).path / "panels" / panel["key"]
    assert (folder / "PANEL.json").is_file() and (folder / "index.faiss").is_file()
    with pytest.warns(ScreaderWarning, match="reused"):
        again = annotate(query, atlas)  # a fresh open of the atlas reads the kept panel index
    assert again.info["panel"]["reused"] and again.info["panel"]["key"] == panel["key"]
    np.testing.assert_array_equal(first.neighbour_ids, again.neighbour_ids)
    truth = cells.obs["cell_type"].to_numpy()[240:]
    assert (first.table["raw_label"].to_numpy() == truth).mean() > 0.9


def test_a_full_panel_uses_the_atlas_index(atlas, cells):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScreaderWarning)
        result = annotate(cells[240:].copy(), atlas)
    assert result.info["panel"] == {"used": False}


def test_below_the_floor_the_query_is_refused_with_the_floor(atlas, cells):
    query = _query(cells, GENES[: MIN_PANEL_GENES - 10])
    with pytest.raises(GeneOverlapError, match=rf"shares only {MIN_PANEL_GENES - 10} genes with the atlas's reference "
                                                rf"\(160 genes\); at least {MIN_PANEL_GENES} are needed"):
        annotate(query, atlas)


def test_an_atlas_without_stored_expression_keeps_the_overlap_rule(tmp_path, cells):
    root = tmp_path / "old"
    opened = build_atlas(cells[:240].copy(), root, label_key="cell_type", settings=BuildSettings(layout="none"))
    import json
    import shutil

    shutil.rmtree(opened.path / "expression")  # as an atlas written before the expression was kept
    meta = json.loads((opened.path / "VERSION.json").read_text())
    meta["files"] = {path: digest for path, digest in meta["files"].items() if not path.startswith("expression/")}
    (opened.path / "VERSION.json").write_text(json.dumps(meta))
    outside = [g for g in GENES if g not in opened.embedder.genes]
    with pytest.raises(GeneOverlapError, match=r"only 2 of the atlas's \d+ genes are in the query"):
        annotate(_query(cells, outside + opened.embedder.genes[:2]), root)


def test_added_data_sets_keep_their_expression_and_removal_drops_it(tmp_path, cells):
    root = tmp_path / "lab"
    build_atlas(cells[:160].copy(), root, label_key="cell_type", dataset_name="one", settings=BuildSettings(layout="none"))
    added = add_dataset(root, cells[160:240].copy(), label_key="cell_type", name="two")
    stored = StoredExpression(added.path)
    assert stored.n_cells == 240
    assert {p.parent.name for p in stored.files} == {"one", "two"}
    np.testing.assert_array_equal(np.sort(stored.ids()), np.sort(added.cells().index.to_numpy()))
    with pytest.warns(ScreaderWarning, match="panel index"):
        result = annotate(_query(cells, GENES[40:]), added)
    assert result.info["panel"]["used"]
    removed = remove_dataset(root, "two")
    assert {p.parent.name for p in StoredExpression(removed.path).files} == {"one"}


def test_an_atlas_built_without_its_expression_keeps_none_when_data_sets_are_added(tmp_path, cells):
    root = tmp_path / "lean"
    build_atlas(cells[:160].copy(), root, label_key="cell_type", settings=BuildSettings(layout="none", keep_expression=False))
    added = add_dataset(root, cells[160:240].copy(), label_key="cell_type", name="two")
    assert not (added.path / "expression").exists()
    assert added.expression_genes() == []


def test_the_second_opinion_is_fitted_on_the_kept_expression_once_and_reused(atlas, cells):
    import json

    first = annotate(cells[240:].copy(), atlas)
    opinion = first.info["second_opinion"]
    assert opinion["used"] and opinion["method"] == "expression" and opinion["genes"] == len(GENES)
    meta = json.loads((store.open_atlas(atlas).path / "panels" / opinion["key"] / "PANEL.json").read_text())
    assert meta["method"] == "expression" and meta["provenance"]["panel"]["method"] == "expression"
    again = annotate(cells[240:].copy(), atlas)
    assert again.info["second_opinion"] == {**opinion, "reused": True}
    shares = first.table["second_opinion"].to_numpy()
    assert ((shares >= 0) & (shares <= 1)).all() and np.median(shares) > 0.9  # four well-separated types
    np.testing.assert_array_equal(first.table["confidence"], again.table["confidence"])


def test_a_large_search_by_the_second_method_is_searched_by_lists(atlas, cells, monkeypatch):
    from screader_db import index, second_opinion

    exact = annotate(cells[240:].copy(), atlas)
    assert "search_probes" not in exact.info["second_opinion"]
    monkeypatch.setattr(index, "LIST_WORK", 1.0)  # 120 query cells, 240 atlas cells
    monkeypatch.setattr(index, "LIST_CELLS", 100)
    by_lists = annotate(cells[240:].copy(), atlas)
    probes = by_lists.info["second_opinion"]["search_probes"]
    assert probes["recall_at_10"] >= 0.95 and probes["nprobe"] <= probes["nlist"] == int(index.CHECKED_LISTS * np.sqrt(240))
    assert "searched exact within" in second_opinion.describe(by_lists.info["second_opinion"])
    assert describe_search(by_lists.info["search_probes"]).startswith(f"exact within {by_lists.info['search_probes']['nprobe']} "
                                                                   f"of {probes['nlist']} lists trained for the query")
    assert by_lists.info["search_probes"]["nlist"] == probes["nlist"]  # the atlas's own index too
    np.testing.assert_allclose(by_lists.table["second_opinion"], exact.table["second_opinion"], atol=0.2)
    assert (by_lists.table["label"] == exact.table["label"]).mean() > 0.95


def test_the_classifier_is_kept_beside_the_second_opinion_and_votes(atlas, cells):
    from screader_db.classifier import Classifier

    result = annotate(cells[240:].copy(), atlas)
    opinion = result.info["second_opinion"]
    assert opinion["classifier"]
    kept = Classifier.load(store.open_atlas(atlas).path / "panels" / opinion["key"] / "classifier.safetensors")
    assert sorted(kept.classes) == sorted(cells[:240].obs["cell_type"].astype(str).unique())
    # the score stays the neighbours' share of the label given; the per-label scores are the blended vote
    scores = result.label_scores.to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
    assert (result.table["score"].to_numpy() <= 1).all()
    without = annotate(cells[240:].copy(), atlas, second_opinion=False)
    truth = cells[240:].obs["cell_type"].astype(str).to_numpy()
    assert (result.labels.to_numpy() == truth).mean() >= (without.labels.to_numpy() == truth).mean() - 0.02


def test_an_atlas_without_its_expression_has_no_second_opinion(tmp_path, cells):
    root = tmp_path / "lean"
    build_atlas(cells[:240].copy(), root, label_key="cell_type", settings=BuildSettings(layout="none", keep_expression=False))
    result = annotate(cells[240:].copy(), root)
    assert result.info["second_opinion"] == {"used": False, "reason": "the atlas keeps no reference expression"}
    confidence = result.table["confidence"].to_numpy()
    assert "second_opinion" not in result.table and ((confidence > 0) & (confidence < 1)).all()


def test_an_atlas_folder_that_cannot_be_written_skips_the_second_opinion(tmp_path, cells, monkeypatch):
    import screader_db.builders.panel as panel_module

    root = tmp_path / "shared"
    build_atlas(cells[:240].copy(), root, label_key="cell_type", settings=BuildSettings(layout="none"))

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(panel_module, "_fit", refused)  # as a folder the user may read but not write
    result = annotate(cells[240:].copy(), root)
    reason = result.info["second_opinion"]["reason"]
    assert not result.info["second_opinion"]["used"] and "Permission denied" in reason and "--no-second-opinion" in reason
    assert (result.table["raw_label"].to_numpy() == cells.obs["cell_type"].to_numpy()[240:]).mean() > 0.9
