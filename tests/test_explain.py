"""explain: the evidence behind one cell's label, from a result, an annotated .h5ad or a fresh
annotation, and the `screader-db explain` command; pbmc3k against an atlas of other pbmc3k cells."""

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from screader_db.cli import app
from screader_db.errors import AtlasMismatchError
from screader_db.explain import explain_cell, label_markers, label_profiles
from screader_db.store import open_atlas

pytestmark = pytest.mark.data("pbmc3k")
B_MARKERS = {"CD79A", "CD79B", "MS4A1", "CD74", "HLA-DRA", "CD19", "TCL1A"}


@pytest.fixture(scope="module")
def annotated(pbmc_split, pbmc_result, tmp_path_factory):
    _, query, _ = pbmc_split
    path = tmp_path_factory.mktemp("explain") / "annotated.h5ad"
    pbmc_result.to_adata(query).write_h5ad(path)
    return path


def test_explanation_from_a_result_and_from_the_annotated_file_agree(pbmc_split, pbmc_result, annotated):
    root, query, _ = pbmc_split
    b_cell = int(np.flatnonzero(pbmc_result.table["label"].to_numpy() == "B")[0])
    mine = explain_cell(query, b_cell, root, result=pbmc_result)
    written = explain_cell(ad.read_h5ad(annotated), query.obs_names[b_cell], root)
    assert mine.cell == written.cell == query.obs_names[b_cell]
    assert mine.label == written.label == "B" and mine.unassigned_reason == ""
    assert mine.scores["label"].iloc[0] == "B" and mine.scores["score"].is_monotonic_decreasing
    assert mine.scores.equals(written.scores)
    assert mine.neighbours.equals(written.neighbours)
    assert mine.neighbours.equals(pbmc_result.neighbours(b_cell))
    assert list(mine.markers.columns) == ["label", "gene", "marker_mean", "cell_value", "expressed"]
    assert mine.markers.equals(written.markers)
    markers = mine.markers[mine.markers["label"] == "B"]
    assert len(markers) == 10 and B_MARKERS & set(markers["gene"])
    assert (markers["expressed"] == (markers["cell_value"] > 0)).all()
    assert markers["expressed"].mean() >= 0.5  # a B cell shows most B markers
    assert mine.call["score"] == pytest.approx(float(pbmc_result.table["score"].iloc[b_cell]))


def test_markers_come_from_the_atlas_label_profiles(pbmc_split):
    root, _, _ = pbmc_split
    profiles = label_profiles(open_atlas(root))
    found = label_markers(profiles, ["CD14 Monocytes", "NK"], n_markers=5)
    assert list(found.groupby("label").size()) == [5, 5]
    assert {"LYZ", "S100A8", "S100A9", "CD14", "FCN1"} & set(found.loc[found["label"] == "CD14 Monocytes", "gene"])
    assert {"GNLY", "NKG7", "GZMB", "PRF1"} & set(found.loc[found["label"] == "NK", "gene"])
    assert (found["lead"] > 0).all()


def test_explain_command_prints_the_call_neighbours_and_markers(pbmc_split, pbmc_result, annotated):
    root, query, _ = pbmc_split
    name = query.obs_names[3]
    result = CliRunner().invoke(app, ["explain", name, "--query", str(annotated), "--atlas", str(root), "--top", "2",
                                      "--markers", "4"])
    assert result.exit_code == 0, result.output
    text = result.output
    label = pbmc_result.table["label"].iloc[3]
    assert f"Cell {name}: {label}" in text
    assert "Top label scores" in text and "Nearest reference cells (15)" in text
    first = pbmc_result.neighbours(3).iloc[0]
    assert first["reference_cell"] in text and f"{first['similarity']:.3f}" in text
    assert f"Markers of {label}, this cell's log1p CP10k (the label's reference mean): expressed " in text
    explained = explain_cell(query, 3, root, result=pbmc_result, top=2, n_markers=4)
    for row in explained.markers.itertuples():
        assert (f"{row.gene} {row.cell_value:.1f} ({row.marker_mean:.1f})" if row.expressed
                else f"{row.gene} ({row.marker_mean:.1f})") in text


def test_explain_command_annotates_a_query_that_was_not_annotated(pbmc_split, pbmc_result):
    root, _, path = pbmc_split
    result = CliRunner().invoke(app, ["explain", "5", "--query", str(path), "--atlas", str(root), "-q"])
    assert result.exit_code == 0, result.output
    name, label = pbmc_result.table.index[5], pbmc_result.table["label"].iloc[5]
    assert f"Cell {name}: {label}" in result.output


def test_a_file_annotated_against_another_version_is_refused(pbmc_split, annotated, tmp_path):
    root, _, _ = pbmc_split
    other = ad.read_h5ad(annotated)
    version = open_atlas(root).version
    other.uns["screader"]["atlas_version"] = version + 1
    with pytest.raises(AtlasMismatchError, match=rf"^the AnnData was annotated against version {version + 1} of the "
                                                 rf"atlas, and the atlas opened is version {version} .* Pass --version "
                                                 rf"{version + 1} \(Python: version={version + 1}\), or annotate the "
                                                 "query again$"):
        explain_cell(other, 0, root)
    path = tmp_path / "other.h5ad"
    other.write_h5ad(path)
    result = CliRunner().invoke(app, ["explain", "0", "--query", str(path), "--atlas", str(root)])
    assert result.exit_code == 1
    assert f"Error: the AnnData was annotated against version {version + 1} of the atlas" in " ".join(result.output.split())
