import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.cell_embedding import CellEmbedder, fit_embedder, l2_normalise, whiten
from screader_db.errors import AtlasError, ScreaderError


def _data(seed=0, n=120, g=30):
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(np.log1p(rng.poisson(2.0, size=(n, g)).astype(np.float32)))
    return X, [f"G{i}" for i in range(g)]


def test_whitened_vectors_are_decorrelated():
    rng = np.random.default_rng(0)
    E = rng.standard_normal((200, 16)) @ rng.standard_normal((16, 16)) + 3.0
    W = whiten(E)
    cov = W.T @ W / W.shape[0]
    np.testing.assert_allclose(cov, np.eye(W.shape[1]), atol=1e-4)
    np.testing.assert_allclose(W.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("method", ["genept", "expression", "pca"])
def test_methods_give_unit_vectors_and_survive_save_load(tmp_path, method):
    X, genes = _data()
    vectors = np.random.default_rng(1).standard_normal((len(genes), 8))
    emb = fit_embedder(method, X, genes, gene_vectors=vectors, n_components=5)
    out = emb.transform(X)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    emb.save(tmp_path / "e.safetensors", {"model_id": "x"})
    again = CellEmbedder.load(tmp_path / "e.safetensors")
    assert again.genes == genes and again.method == method
    np.testing.assert_allclose(again.transform(X), out, rtol=1e-5, atol=1e-6)


def test_small_queries_are_centred_on_the_reference():
    X, genes = _data()
    emb = fit_embedder("expression", X, genes)
    one = emb.transform(X[:1])
    np.testing.assert_allclose(one, l2_normalise(X[:1].toarray() - emb.mean), rtol=1e-5)
    big = emb.transform(X, center="query")
    np.testing.assert_allclose(big[0], l2_normalise(X[:1].toarray() - X.toarray().mean(0))[0], rtol=1e-4, atol=1e-6)


def test_errors():
    X, genes = _data()
    with pytest.raises(ScreaderError, match="unknown method 'umap'"):
        fit_embedder("umap", X, genes)
    emb = fit_embedder("expression", X, genes)
    with pytest.raises(ScreaderError, match="expression has 3 columns, the embedder expects 30 genes"):
        emb.transform(X[:, :3])


def test_unreadable_file_is_an_atlas_error(tmp_path):
    bad = tmp_path / "e.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(AtlasError, match="cannot read the cell embedder"):
        CellEmbedder.load(bad)


def test_a_marker_embedder_keeps_its_label_means_through_save_load(tmp_path):
    X, genes = _data()
    labels = np.array(["a", "b"] * (X.shape[0] // 2) + ["a"] * (X.shape[0] % 2))
    emb = fit_embedder("marker", X, genes, labels=labels)
    dense = X.toarray()
    expected = np.stack([dense[labels == name].mean(axis=0) for name in ("a", "b")])
    np.testing.assert_allclose(emb.label_means, expected, rtol=1e-5, atol=1e-6)
    emb.save(tmp_path / "e.safetensors")
    again = CellEmbedder.load(tmp_path / "e.safetensors")
    np.testing.assert_array_equal(again.label_means, emb.label_means)
    np.testing.assert_allclose(again.transform(X), emb.transform(X), rtol=1e-5, atol=1e-6)
