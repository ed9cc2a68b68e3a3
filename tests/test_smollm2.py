"""The causal-LM path with a real LLaMA-architecture model (SmolLM2-135M from its PyPI package)."""

import numpy as np
import pytest

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.builders.gene_embeddings import embed_genes
from screader_db.encoders import CausalLMEncoder, resolve_encoder
from screader_db.inputs import read_h5ad


@pytest.fixture(scope="module")
def smollm2():
    enc = resolve_encoder("smollm2", batch_size=16)
    assert isinstance(enc, CausalLMEncoder)
    return enc


def test_smollm2_embeds_200_descriptions_and_builds_an_atlas(smollm2, data_path, tmp_path):
    human = read_h5ad(data_path("baron_human"))
    atlas = build_atlas(human, tmp_path / "atlas", label_key="cell_ontology_class", dataset_name="baron_human",
                        settings=BuildSettings(model="smollm2", method="genept", n_genes=200, layout="none"))
    assert atlas.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert atlas.provenance["encoder_settings"]["kind"] == "causal-lm"
    assert len(atlas.embedder.genes) == 200
    from screader_db.gene_vectors import read_gene_embeddings

    emb = read_gene_embeddings(atlas.path / "gene_embeddings.parquet")
    assert emb.vectors.shape == (200, 576)
    assert np.isfinite(emb.vectors).all()
    assert np.linalg.matrix_rank(emb.vectors) > 100
    result = annotate(human[:300].copy(), atlas, center="reference")
    own_ids = (1 << 32) + np.arange(300)
    assert (result.neighbour_ids[:, 0] == own_ids).mean() > 0.9
    assert result.agreement(human.obs["cell_ontology_class"][:300]).accuracy > 0.6


def test_smollm2_vectors_reflect_text(smollm2):
    emb = embed_genes(["INS", "GCG", "CD3E"], smollm2)
    cos = emb.vectors @ emb.vectors.T / np.outer(*[np.linalg.norm(emb.vectors, axis=1)] * 2)
    assert cos[0, 1] < 0.9999
