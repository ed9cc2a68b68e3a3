"""A shared lab atlas with real data: two data sets added, queried separately, one removed."""

import numpy as np
import pytest
from typer.testing import CliRunner

from screader_db import annotate, store
from screader_db.cli import app

pytestmark = pytest.mark.data("baron_human", "baron_mouse", "orthologs_human_mouse_all", "pbmc3k")
runner = CliRunner()


@pytest.fixture(scope="module")
def paths(data_path):
    return data_path("baron_human"), data_path("pbmc3k"), data_path("baron_mouse")


def _cli(*args):
    result = runner.invoke(app, [*map(str, args), "--quiet"] if args[0] in ("build", "add", "remove") else list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


def test_two_data_sets_then_one(paths, tmp_path):
    baron, pbmc, mouse = paths
    lab, alone = tmp_path / "lab", tmp_path / "alone"
    _cli("build", "--reference", baron, "--label-key", "cell_ontology_class", "--atlas", lab, "--dataset-name", "baron",
         "--layout", "none")
    _cli("add", pbmc, "--atlas", lab, "--name", "pbmc3k", "--label-key", "celltype", "--no-refit")  # refits: test_refit.py
    listing = _cli("datasets", "--atlas", lab)
    assert "baron" in listing and "pbmc3k" in listing
    assert store.open_atlas(lab).info["n_cells"] == 2142 + 2700
    from screader_db.inputs import read_h5ad

    query = read_h5ad(mouse)
    baron_only = annotate(query, lab, datasets=["baron"])
    pbmc_only = annotate(query, lab, datasets=["pbmc3k"])
    assert (store.dataset_of(baron_only.neighbour_ids) == 1).all()
    assert (store.dataset_of(pbmc_only.neighbour_ids) == 2).all()
    assert set(pbmc_only.table["raw_label"]) <= {"B", "CD14 Monocytes", "CD4 T", "CD8 T", "Dendritic", "FCGR3A Monocytes",
                                                 "Megakaryocytes", "NK"}
    _cli("remove", "pbmc3k", "--atlas", lab)
    versions = _cli("versions", "--atlas", lab)
    assert "remove pbmc3k" in versions
    _cli("build", "--reference", baron, "--label-key", "cell_ontology_class", "--atlas", alone, "--dataset-name", "baron",
         "--layout", "none")
    after, single = annotate(query, lab), annotate(query, alone)
    np.testing.assert_array_equal(after.neighbour_ids, single.neighbour_ids)
    np.testing.assert_allclose(after.neighbour_similarities, single.neighbour_similarities, rtol=1e-6)
    assert after.labels.equals(single.labels)
    # A filtered search may order exact ties differently; the neighbours' similarities and the labels agree.
    np.testing.assert_allclose(baron_only.neighbour_similarities, after.neighbour_similarities, rtol=1e-6)
    assert baron_only.labels.equals(after.labels)
    _cli("gc", "--atlas", lab, "--keep", "1")
    assert store.list_versions(lab) == [3]
