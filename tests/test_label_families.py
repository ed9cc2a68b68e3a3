"""Parent labels: which labels are parents of others, how their votes move, and what that does on real cells."""

import numpy as np
import pandas as pd
import pytest

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.evaluation import split_tasks
from screader_db.fetch import resolve_dataset
from screader_db.inputs import read_h5ad
from screader_db.label_families import Family, describe, families, fold, label_terms, replay
from screader_db.store import open_atlas

T, CD4, CD8, NAIVE, CLASSICAL, NONCLASSICAL = "CL:0000084", "CL:0000624", "CL:0000625", "CL:0000895", "CL:0001054", "CL:0002396"
ANCESTORS = {CD4: {T}, CD8: {T}, NAIVE: {CD4, T}, NONCLASSICAL: {CLASSICAL}}


def test_a_parent_needs_two_labels_below_it_and_the_most_specific_come_first():
    terms = [T, CD4, CD8, NAIVE, "CL:0000236", CLASSICAL, NONCLASSICAL, ""]
    found = families(terms, ANCESTORS)
    # CD4 has only the naive cells below it, the classical monocytes only the non-classical: neither is a parent
    assert found == [Family(0, (1, 2, 3))]
    nested = families([T, CD4, CD8, NAIVE, "CL:0000900"], {**ANCESTORS, "CL:0000900": {CD4, T}})
    assert nested == [Family(1, (3, 4)), Family(0, (1, 2, 3, 4))]


def test_a_parent_keeps_its_votes_only_while_it_holds_enough_of_its_family():
    # labels: T, CD4 T, CD8 T, B
    shares = np.array([[0.8, 0.2, 0.0, 0.0],   # T holds 0.8 of its family: kept
                       [0.5, 0.3, 0.1, 0.1],   # 0.5 / 0.9 < 0.7: to CD4 T
                       [0.4, 0.0, 0.1, 0.5],   # 0.4 / 0.5 = 0.8: kept, B wins as before
                       [0.3, 0.0, 0.2, 0.5],   # 0.3 / 0.5 < 0.7: to CD8 T, which now ties B's 0.5
                       [0.6, 0.0, 0.0, 0.4]])  # nothing below: kept
    folded, moves = fold(shares, [Family(0, (1, 2))], hold=0.7)
    np.testing.assert_allclose(folded.sum(axis=1), 1.0)
    np.testing.assert_allclose(folded[[0, 2, 4]], shares[[0, 2, 4]])
    np.testing.assert_allclose(folded[1], [0.0, 0.8, 0.1, 0.1])
    np.testing.assert_allclose(folded[3], [0.0, 0.0, 0.5, 0.5])
    unmoved, none = fold(shares, [Family(0, (1, 2))], hold=0.0)
    np.testing.assert_allclose(unmoved, shares)
    assert none == []
    # the same moves on another matrix over the same labels (the classifier's probabilities)
    other = np.full_like(shares, 0.25)
    replayed = replay(other, moves)
    np.testing.assert_allclose(replayed[[0, 2, 4]], other[[0, 2, 4]])
    np.testing.assert_allclose(replayed[1], [0.0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(replayed[3], [0.0, 0.25, 0.5, 0.25])


def test_the_line_names_each_parent_and_the_cells_it_gave_up():
    said = describe({"hold": 0.7, "families": {"T": ["CD4 T", "CD8 T"]}, "moved": 40})
    assert said.startswith("T (above CD4 T, CD8 T): 40 cells that the parent would have won went to a label below it")
    assert "parent_hold 0.7" in said
    assert describe({"hold": 0.7, "families": {}, "moved": 0}) == "none among the atlas's labels"
    assert describe({"hold": 0.0, "families": {}, "moved": 0}) == "not folded (parent_hold 0)"
    assert describe({}) == "not sought"


def test_each_label_takes_its_cells_most_common_term():
    cells = pd.DataFrame({"label": ["T", "T", "T", "CD4 T", "odd"], "ontology_id": [T, T, CD4, CD4, ""]})
    assert label_terms(cells, "label", ["CD4 T", "T", "odd", "absent"]) == [CD4, T, "", ""]


@pytest.mark.data("pbmc3k")
def test_a_coarse_parent_in_the_reference_takes_fewer_cells_that_its_children_describe(tmp_path):
    from screader_db.suite import LABEL, _with_parent

    adata = read_h5ad(resolve_dataset("pbmc3k"))
    adata.obs[LABEL] = adata.obs["celltype"].astype(str)
    task = split_tasks(adata, label_key=LABEL, seeds=1)[0]
    reference = _with_parent(task.reference, "pbmc3k", seed=0)  # 15% of the CD4 and CD8 T cells called "T"
    root = tmp_path / "atlas"
    build_atlas(reference, root, label_key=LABEL, settings=BuildSettings(layout="none"))
    truth = task.query.obs[LABEL].to_numpy()
    folded = annotate(task.query, root)
    assert folded.info["parent_labels"]["families"] == {"T": ["CD4 T", "CD8 T"]}
    assert folded.info["parent_labels"]["moved"] > 0
    assert describe(folded.info["parent_labels"]).startswith("T (above CD4 T, CD8 T): ")
    opened = open_atlas(root)  # the labels' terms are worked out once per opened atlas
    terms = opened.label_terms("label")
    assert terms["T"] == T and terms["CD4 T"] == CD4 and opened.label_terms("label") is terms
    classes = opened.label_classes("label")  # each label's broad class, also once per opened atlas
    cells = opened.cells(["label", "label_broad"])
    assert classes == {label: group.value_counts().index[0] for label, group in cells.groupby("label")["label_broad"]}
    assert opened.label_classes("label") is classes and opened.label_classes("label_broad")["T cell"] == "T cell"
    assert opened.labels("label") == sorted(classes) and opened.labels("label") is opened.labels("label")
    plain = annotate(task.query, root, parent_hold=0)
    assert plain.info["parent_labels"] == {"hold": 0.0, "families": {}, "moved": 0}
    t_cells = np.isin(truth, ["CD4 T", "CD8 T"])
    called_t = {name: int((result.table["raw_label"].to_numpy()[t_cells] == "T").sum())
                for name, result in (("folded", folded), ("plain", plain))}
    assert called_t["folded"] < called_t["plain"], called_t
    right = {name: float((result.table["raw_label"].to_numpy() == truth).mean())
             for name, result in (("folded", folded), ("plain", plain))}
    assert right["folded"] > right["plain"], right
    # a call the parent's votes carried: its score (what the Unassigned rules read) counts the parent's
    # votes, at least its folded share; its confidence reads the finer label's own votes, so it is lower
    moved = (plain.table["raw_label"].to_numpy() == "T") & (folded.table["raw_label"].to_numpy() != "T")
    label = folded.table["raw_label"].to_numpy()[moved]
    cells = folded.table.index[moved]
    shares = np.array([folded.table.loc[cell, f"score_{name}"] for cell, name in zip(cells, label, strict=True)])
    assert moved.any() and (folded.table["score"].to_numpy()[moved] >= shares - 1e-6).all()
    assert np.median(folded.table["vote_confidence"].to_numpy()[moved]) < np.median(plain.table["vote_confidence"].to_numpy()[moved])
