"""The gene-embedding cache: unchanged inputs embed nothing; a changed text re-embeds one gene."""

import numpy as np

from screader_db.builders.gene_embeddings import embed_genes
from screader_db.encoders import resolve_encoder
from screader_db.gene_vectors import read_gene_embeddings, write_gene_embeddings


def test_cache_hits_and_single_gene_reembedding(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SCREADER_DB_HOME", str(tmp_path / "home"))
    enc = resolve_encoder(str(tiny_llama))
    genes = ["INS", "GCG", "SST"]
    texts = ["INS: insulin", "GCG: gene", "SST: cell"]
    first = embed_genes(genes, enc, texts=texts)
    assert first.n_embedded == 3
    again = embed_genes(genes, enc, texts=texts)
    assert again.n_embedded == 0
    np.testing.assert_array_equal(first.vectors, again.vectors)
    changed = embed_genes(genes, enc, texts=["INS: insulin", "GCG: protein binding", "SST: cell"])
    assert changed.n_embedded == 1
    np.testing.assert_array_equal(changed.vectors[0], first.vectors[0])
    assert not np.allclose(changed.vectors[1], first.vectors[1])


def test_parquet_round_trip_keeps_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("SCREADER_DB_HOME", str(tmp_path / "home"))
    emb = embed_genes(["INS", "GCG"], resolve_encoder("random:8"))
    path = write_gene_embeddings(emb, tmp_path / "g.parquet")
    back = read_gene_embeddings(path)
    assert back.genes == ["INS", "GCG"]
    assert back.model_id == "random:8:0"
    np.testing.assert_array_equal(back.vectors, emb.vectors)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert set(table.column_names) >= {"gene", "model_id", "model_sha", "pooling", "text_sha256", "vector"}
    assert b"screader_db.provenance" in table.schema.metadata


def test_rebuilding_an_atlas_reembeds_nothing(tiny_llama, tmp_path, monkeypatch):
    from conftest import make_counts

    from screader_db.builders.atlas import BuildSettings, build_atlas

    monkeypatch.setenv("SCREADER_DB_HOME", str(tmp_path / "home"))
    settings = BuildSettings(model=str(tiny_llama), method="genept", n_genes=30, layout="none")
    reference = make_counts(n_cells=120)
    first = build_atlas(reference, tmp_path / "atlas", label_key="cell_type", settings=settings)
    assert first.provenance["genes_embedded"] == 30
    second = build_atlas(reference, tmp_path / "atlas", label_key="cell_type", settings=settings, overwrite=True)
    assert second.provenance["genes_embedded"] == 0
    assert second.provenance["text_sha256"] == first.provenance["text_sha256"]
