"""Encoders: the random twin, and the causal-LM path on a tiny random LLaMA model."""

import numpy as np
import pytest

from screader_db.encoders import CausalLMEncoder, RandomEncoder, resolve_encoder
from screader_db.errors import ModelError


def test_random_vectors_depend_on_gene_and_seed_only():
    enc = RandomEncoder(dim=16, seed=3)
    a = enc.encode(["INS", "GCG"], ["x", "y"])
    b = enc.encode(["GCG", "INS"], ["other", "text"])
    np.testing.assert_array_equal(a[0], b[1])
    assert not np.allclose(a, RandomEncoder(dim=16, seed=4).encode(["INS", "GCG"], ["x", "y"]))
    assert resolve_encoder("random:16:3").model_id == "random:16:3"


def test_bad_specs_are_explained(tmp_path):
    with pytest.raises(ModelError, match="neither a packaged model"):
        resolve_encoder("no-such-model")
    with pytest.raises(ModelError, match="random:DIM or random:DIM:SEED"):
        resolve_encoder("random:x")
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ModelError, match="is a file but not a .gguf model"):
        resolve_encoder(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="has neither modules.json"):
        resolve_encoder(str(tmp_path))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_causal_lm_pooling_is_independent_of_batching(tiny_llama, pooling):
    enc = resolve_encoder(str(tiny_llama), pooling=pooling, batch_size=2)
    assert isinstance(enc, CausalLMEncoder)
    texts = ["INS: insulin . binding", "GCG: gene", "CD3E: receptor binding activity cell process", "SST"]
    genes = ["INS", "GCG", "CD3E", "SST"]
    together = enc.encode(genes, texts)
    alone = np.vstack([enc.encode([g], [t]) for g, t in zip(genes, texts, strict=True)])
    assert together.shape == (4, 32)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_layer_choice_changes_vectors(tiny_llama):
    last = resolve_encoder(str(tiny_llama), layer=-1).encode(["INS"], ["INS: insulin"])
    first = resolve_encoder(str(tiny_llama), layer=1).encode(["INS"], ["INS: insulin"])
    assert not np.allclose(last, first)
    assert resolve_encoder(str(tiny_llama), layer=1).key != resolve_encoder(str(tiny_llama)).key
