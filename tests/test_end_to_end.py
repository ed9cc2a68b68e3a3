"""Real data, real models: Baron human atlas annotating Baron mouse, beside its baselines."""

import duckdb
import pytest

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.evaluation import MethodSpec, Task, evaluate
from screader_db.inputs import read_h5ad

pytestmark = pytest.mark.data("baron_human", "baron_mouse", "orthologs_human_mouse_all", "minilm")


@pytest.fixture(scope="session")
def baron(data_path):
    return read_h5ad(data_path("baron_human")), read_h5ad(data_path("baron_mouse"))


@pytest.fixture(scope="session")
def minilm_atlas(baron, tmp_path_factory):
    human, _ = baron
    root = tmp_path_factory.mktemp("atlas") / "baron_human"
    build_atlas(human, root, label_key="cell_ontology_class", dataset_name="baron_human",
                settings=BuildSettings(model="minilm", method="marker-text"))
    return root


def test_minilm_atlas_annotates_mouse_cells(baron, minilm_atlas):
    _, mouse = baron
    result = annotate(mouse, minilm_atlas)
    agree = result.agreement(mouse.obs["cell_ontology_class"])
    assert agree.n_scored == 1868
    assert agree.accuracy >= 0.85, agree.to_dict()
    assert result.info["species"] == "mouse"


def test_catalogue_opens_in_plain_duckdb(minilm_atlas):
    con = duckdb.connect(str(minilm_atlas / "atlas.duckdb"), read_only=True)
    rows = dict(con.execute("SELECT label, count(*) FROM cells GROUP BY 1").fetchall())
    assert rows["type B pancreatic cell"] == 623
    build = con.execute("SELECT model_id, model_sha, gene_embedding_sha256, parameters FROM builds").fetchone()
    assert build[0] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(build[1]) == 64 and len(build[2]) == 64
    tables = {r[0] for r in con.execute("SELECT table_name FROM provenance").fetchall()}
    assert tables == {"builds", "datasets", "cells", "genes", "gene_embeddings", "files", "provenance"}
    con.close()


def test_baselines_measured_in_the_same_run(baron, tmp_path):
    human, mouse = baron
    task = Task("Baron human -> mouse", human, mouse, "cell_ontology_class", "cell_ontology_class")
    specs = [MethodSpec("genept (minilm)", model="minilm"), MethodSpec("genept (random)", model="random:384:0"),
             MethodSpec("expression kNN", model="none", method="expression")]
    result = evaluate([task], specs, workdir=tmp_path)
    print("\n" + result.markdown(task.name))
    by_name = {r["method"]: r for r in result.rows}
    assert by_name["genept (minilm)"]["accuracy"] >= 0.85
    assert by_name["expression kNN"]["accuracy"] >= 0.85
    assert all(r["n_scored"] == 1868 for r in result.rows)
