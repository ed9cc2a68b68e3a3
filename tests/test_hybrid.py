"""Learned cell embeddings: the scReader hybrid over a tiny random LLaMA, and the light adaptor.

Fast tests train for a moment on generated data with random gene vectors (plumbing, save/load,
provenance); the slow test trains the hybrid over real SmolLM2 with MiniLM gene vectors.
"""

import shutil

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_counts
from typer.testing import CliRunner

from screader_db import annotate, store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.cell_embedding import CellEmbedder, fit_embedder
from screader_db.errors import ModelError, ModelMismatchError, ScreaderError
from screader_db.hybrid import gene_tokens, train
from screader_db.query_input import prepare_query


def _settings(method: str, **extra) -> BuildSettings:
    return BuildSettings(model="random:16", method=method, n_genes=50, layout="none", n_top=16, **extra)


def test_tokens_are_the_top_genes_highest_first_padding_last():
    X = sp.csr_matrix(np.array([[0.0, 3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.5, 0.0, 0.0]], dtype=np.float32))
    index, value = gene_tokens(X, 3)
    np.testing.assert_array_equal(index, [[1, 4, 2], [2, 0, 0]])
    np.testing.assert_array_equal(value, np.array([[3.0, 2.0, 1.0], [0.5, 0.0, 0.0]], dtype=np.float32))
    index, value = gene_tokens(X, 8)
    assert index.shape == (2, 8) and value[0, 3:].sum() == 0


def test_hybrid_trains_annotates_and_reloads_identically(tiny_llama, tmp_path):
    reference = make_counts(n_cells=150, seed=0)
    root = tmp_path / "atlas"
    atlas = build_atlas(reference, root, label_key="cell_type", dataset_name="synthetic",
                        settings=_settings("hybrid", decoder=str(tiny_llama), epochs=1, train_cells=64))
    params = atlas.embedder.params
    assert params["decoder"] == str(tiny_llama) and len(params["decoder_sha"]) == 64
    assert (params["n_top"], params["epochs"], params["seed"], params["train_cells"]) == (16, 1, 0, 64)
    assert params["prompt"].startswith("Below are the most highly expressed genes")
    assert atlas.provenance["decoder"]["decoder_sha"] == params["decoder_sha"]
    assert atlas.embedder.dim == 32
    ids, stored = atlas.embeddings()
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)

    reopened = store.open_atlas(root)
    assert reopened.embedder._model is None
    result = annotate(reference, reopened)
    order = np.argsort(ids)
    np.testing.assert_allclose(result.embeddings, stored[order], atol=1e-5)
    assert len(result.labels) == 150

    _, X = next(prepare_query(make_counts(n_cells=40, seed=5), reopened.embedder.genes).chunks())
    one_by_one = np.vstack([reopened.embedder.transform(X[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(one_by_one, reopened.embedder.transform(X)[:5], atol=1e-5)


def _log(adata):
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    scaled = sp.diags(1e4 / np.asarray(counts.sum(axis=1)).ravel()) @ counts
    return sp.csr_matrix(np.log1p(scaled.toarray()), dtype=np.float32)


def test_adaptor_learns_the_generated_types(tmp_path):
    root = tmp_path / "atlas"
    build_atlas(make_counts(n_cells=300, seed=0), root, label_key="cell_type",
                settings=_settings("adaptor", epochs=8))
    query = make_counts(n_cells=120, seed=5)
    result = annotate(query, root, k=10)
    assert result.agreement(query.obs["cell_type"]).accuracy > 0.9
    embedder = store.open_atlas(root).embedder
    assert embedder.method == "adaptor" and embedder.dim == 128 and "decoder" not in embedder.params
    assert {"gene_vectors", "net.projector.first.weight", "head.weight"} <= set(embedder.state)


def test_learned_embedder_survives_save_and_load(tmp_path):
    adata = make_counts(n_cells=120, seed=1)
    X = _log(adata)
    genes = list(adata.var_names)
    vectors = np.random.default_rng(0).standard_normal((len(genes), 8)).astype(np.float32)
    embedder = fit_embedder("adaptor", X, genes, gene_vectors=vectors, labels=adata.obs["cell_type"].to_numpy(),
                            params={"epochs": 1, "n_top": 8}, seed=3)
    before = embedder.transform(X)
    embedder.save(tmp_path / "e.safetensors", {"model_id": "random"})
    again = CellEmbedder.load(tmp_path / "e.safetensors")
    assert again.params["seed"] == 3 and again.params["classes"] == ["type0", "type1", "type2"]
    np.testing.assert_array_equal(again.transform(X), before)


def test_changed_decoder_is_refused(tiny_llama, tmp_path):
    decoder = tmp_path / "decoder"
    shutil.copytree(tiny_llama, decoder)
    root = tmp_path / "atlas"
    build_atlas(make_counts(n_cells=90, seed=0), root, label_key="cell_type",
                settings=_settings("hybrid", decoder=str(decoder), epochs=1, train_cells=16))
    config = decoder / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    with pytest.raises(ModelMismatchError, match=r"trained on decoder '.*decoder' with sha256 \w+…, but the decoder "
                                                 r"found now has sha256 \w+…; restore the original model files"):
        _ = store.open_atlas(root).embedder
    shutil.rmtree(decoder)
    with pytest.raises(ModelMismatchError, match="needs its decoder .* which cannot be found here"):
        _ = store.open_atlas(root).embedder


def test_bad_settings_are_explained():
    adata = make_counts(n_cells=40, seed=2)
    X, genes = _log(adata), list(adata.var_names)
    vectors = np.ones((len(genes), 4), dtype=np.float32)
    with pytest.raises(ModelError, match="the hybrid method needs a causal language model as --decoder"):
        train("hybrid", X, adata.obs["cell_type"].to_numpy(), vectors, params={"decoder": "random:8"})
    with pytest.raises(ScreaderError, match="needs at least 2 reference labels, found 1"):
        train("adaptor", X, np.array(["a"] * 40), vectors)
    with pytest.raises(ScreaderError, match="loss must be one of ce, supcon, got 'mse'"):
        train("adaptor", X, adata.obs["cell_type"].to_numpy(), vectors, params={"loss": "mse"})
    with pytest.raises(ScreaderError, match="the adaptor method needs one gene vector per atlas gene"):
        fit_embedder("adaptor", X, genes, labels=adata.obs["cell_type"].to_numpy())


def test_cli_builds_an_adaptor_atlas(tmp_path):
    from screader_db.cli import app

    ref = tmp_path / "ref.h5ad"
    make_counts(n_cells=150).write_h5ad(ref)
    result = CliRunner().invoke(app, ["build", "--reference", str(ref), "--label-key", "cell_type", "--atlas",
                                      str(tmp_path / "atlas"), "--model", "random:16", "--method", "adaptor",
                                      "--n-genes", "50", "--n-top", "12", "--epochs", "2", "--layout", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    params = store.open_atlas(tmp_path / "atlas").embedder.params
    assert (params["n_top"], params["epochs"]) == (12, 2)


@pytest.mark.data("baron_human", "baron_mouse", "orthologs_human_mouse_all", "minilm", "smollm2")
@pytest.mark.slow
def test_hybrid_over_smollm2_annotates_baron_mouse(data_path, tmp_path):
    """Real SmolLM2 decoder, MiniLM gene vectors: 400 Baron human cells, 4 epochs -> 300 Baron mouse cells
    (CPU-sized: it shows the hybrid learns, not that it is accurate; see the README for its figures)."""
    from screader_db.inputs import read_h5ad
    from screader_db.reference_stats import stratified_sample

    human, mouse = read_h5ad(data_path("baron_human")), read_h5ad(data_path("baron_mouse"))
    key = "cell_ontology_class"
    reference = human[stratified_sample(human.obs[key].cat.codes.to_numpy(), 400, seed=0)].copy()
    shared = mouse[mouse.obs[key].isin(set(reference.obs[key]))]
    query = shared[stratified_sample(shared.obs[key].astype(str).astype("category").cat.codes.to_numpy(), 300,
                                     seed=0)].copy()
    atlas = build_atlas(reference, tmp_path / "atlas", label_key=key, dataset_name="baron_human",
                        settings=BuildSettings(model="minilm", method="hybrid", decoder="smollm2", n_top=32, epochs=4,
                                               layout="none"))
    assert atlas.embedder.params["decoder_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert atlas.embedder.dim == 576
    result = annotate(query, atlas)
    agree = result.agreement(query.obs[key])
    chance = query.obs[key].value_counts(normalize=True).max()
    assert agree.n_scored == 300
    assert agree.accuracy > chance + 0.1, agree.to_dict()
