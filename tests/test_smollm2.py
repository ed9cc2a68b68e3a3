"""The causal-LM path with a real LLaMA-architecture model (SmolLM2-135M from its PyPI package)."""

import numpy as np
import pytest

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.builders.gene_embeddings import embed_genes
from screader_db.encoders import CausalLMEncoder, resolve_encoder
from screader_db.genes import GeneResolver
from screader_db.inputs import read_h5ad

pytestmark = pytest.mark.data("smollm2", "baron_human")


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
    genes = ["INS", "GCG", "CD3E"]
    texts, _ = GeneResolver().descriptions(genes)
    emb = embed_genes(genes, smollm2, use_cache=False)
    assert emb.n_embedded == 3
    np.testing.assert_allclose(emb.vectors, smollm2.encode(genes, texts), rtol=1e-4, atol=1e-5)
    # the text decides the vector, not the gene's name
    np.testing.assert_allclose(smollm2.encode(["CD3E"], texts[:1])[0], emb.vectors[0], rtol=1e-4, atol=1e-5)
    reworded = smollm2.encode(["INS"], [texts[0].replace("insulin", "glucagon", 1)])[0]
    assert "insulin" in texts[0]

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(reworded, emb.vectors[0]) < 0.9999
    assert cos(emb.vectors[0], emb.vectors[1]) < 0.9999 and cos(emb.vectors[0], emb.vectors[2]) < 0.9999
