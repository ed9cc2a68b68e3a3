"""GPU paths: they skip themselves without a CUDA GPU; run them where one is present."""

import numpy as np
import pytest

from screader_db.cell_embedding import l2_normalise
from screader_db.devices import cuda_available
from screader_db.index import CellIndex, TorchFlatSearcher

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")]


def test_gpu_search_matches_exact_cpu_search():
    rng = np.random.default_rng(0)
    vectors = l2_normalise(rng.standard_normal((20000, 64)))
    index = CellIndex.build(vectors, np.arange(20000, dtype=np.int64) + (5 << 32), kind="flat")
    queries = l2_normalise(rng.standard_normal((500, 64)))
    cpu_sims, cpu_ids = index.search(queries, 10, use_gpu=False)
    gpu_sims, gpu_ids = index.search(queries, 10, use_gpu=True)
    assert index.gpu_searcher() is not None
    np.testing.assert_allclose(gpu_sims, cpu_sims, atol=2e-3)
    assert (gpu_ids[:, 0] == cpu_ids[:, 0]).mean() > 0.99


def test_torch_searcher_in_full_precision_is_exact():
    rng = np.random.default_rng(1)
    vectors = l2_normalise(rng.standard_normal((3000, 32)))
    index = CellIndex.build(vectors, np.arange(3000, dtype=np.int64), kind="flat")
    searcher = TorchFlatSearcher(index, dtype="float32")
    sims, ids = searcher.search(vectors[:100], 5)
    assert (ids[:, 0] == np.arange(100)).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_causal_lm_on_cuda_matches_cpu(tiny_llama):
    from screader_db.encoders import resolve_encoder

    texts = ["INS: insulin . binding", "CD3E: receptor binding activity cell process"]
    cpu = resolve_encoder(str(tiny_llama), device="cpu").encode(["INS", "CD3E"], texts)
    gpu = resolve_encoder(str(tiny_llama), device="cuda", dtype="float32").encode(["INS", "CD3E"], texts)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    half = resolve_encoder(str(tiny_llama), device="cuda").encode(["INS", "CD3E"], texts)
    cos = (half * cpu).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(cpu, axis=1)
    assert (cos > 0.99).all()
