"""Marker genes and η² gene weights, from the statistics of a small reference whose markers are known."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from screader_db.inputs import open_expression, plan_genes
from screader_db.markers import eta_squared, markers_per_label, select_markers
from screader_db.reference_stats import collect

GENES = [f"G{i}" for i in range(12)]
MARKERS = {"A": [200, 100, 50], "B": [200, 100, 50], "C": [200, 100, 50]}  # G0-G2, G3-G5, G6-G8


def _stats(counts, labels):
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))
    plan = plan_genes(GENES, GENES)
    return collect(open_expression(adata), plan, np.asarray(labels), sample_cells=0, kind="counts")


@pytest.fixture(scope="module")
def stats():
    """Ten cells per label; every cell has the same library size, so a marker is constant inside its
    label; G10 and G11 vary from cell to cell the same way in every label."""
    rows, labels = [], []
    for k, (label, levels) in enumerate(MARKERS.items()):
        for i in range(10):
            row = np.zeros(len(GENES))
            row[3 * k : 3 * k + 3] = levels
            shift = 3 * (i % 5)
            row[10], row[11] = 20 + shift, 20 - shift
            rows.append(row)
            labels.append(label)
    return _stats(np.vstack(rows), labels)


def _names(stats, found):
    return [stats.genes[i] for i in found]


def test_the_strongest_markers_of_each_label_in_label_order(stats):
    assert _names(stats, select_markers(stats, per_label=2)) == ["G0", "G1", "G3", "G4", "G6", "G7"]
    assert _names(stats, select_markers(stats, per_label=3)) == [f"G{i}" for i in range(9)]


def test_genes_left_out_of_allowed_are_never_markers(stats):
    allowed = np.ones(len(GENES), dtype=bool)
    allowed[[0, 6]] = False
    assert _names(stats, select_markers(stats, per_label=2, allowed=allowed)) == ["G1", "G2", "G3", "G4", "G7", "G8"]


def test_a_gene_shared_by_labels_is_listed_once_where_it_first_comes(stats):
    found = _names(stats, select_markers(stats, per_label=len(GENES)))
    assert len(found) == len(set(found)) == 11
    assert found[:3] == ["G0", "G1", "G2"] and set(found[3:5]) == {"G10", "G11"}
    assert found[5:] == ["G3", "G4", "G5", "G6", "G7", "G8"]
    assert "G9" not in found  # detected in no cell


def test_a_gene_detected_in_too_few_of_a_labels_cells_is_not_its_marker():
    counts = np.zeros((20, len(GENES)))
    counts[:10, 0] = 100  # A's marker in every A cell
    counts[0, 1] = 1000  # in one A cell of ten
    counts[10:, 2] = 100  # B's marker
    counts[:, 10] = 50
    local = _stats(counts, ["A"] * 10 + ["B"] * 10)
    assert "G1" not in _names(local, select_markers(local, per_label=5))
    assert "G1" in _names(local, select_markers(local, per_label=5, min_fraction=0.05))
    assert _names(local, select_markers(local, per_label=1)) == ["G0", "G2"]


def test_eta_squared_is_the_between_label_share_of_the_variance(stats):
    weights = eta_squared(stats, np.array([0, 3, 10, 11]))
    assert weights.dtype == np.float32 and weights.shape == (4,)
    assert weights[0] > 0.999 and weights[1] > 0.999  # constant within labels, different between them
    assert weights[2] < 1e-6 and weights[3] < 1e-6  # the same spread in every label
    assert np.array_equal(eta_squared(stats, np.array([10, 0])), weights[[2, 0]])


@pytest.mark.parametrize(("n_labels", "per_label", "max_genes", "expected"), [
    (3, 50, 600, 50), (20, 50, 600, 30), (100, 50, 600, 10), (0, 50, 600, 50), (4, 50, 100, 25), (3, 5, 600, 10),
])
def test_markers_per_label_keeps_the_union_near_the_cap(n_labels, per_label, max_genes, expected):
    assert markers_per_label(n_labels, per_label, max_genes) == expected
