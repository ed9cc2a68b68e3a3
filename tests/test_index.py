import numpy as np
import pytest

from screader_db.cell_embedding import l2_normalise
from screader_db.errors import AtlasError, ScreaderError
from screader_db.index import build_index, load_index, save_index, search


def _vectors(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    return l2_normalise(centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d)))


def test_flat_index_returns_exact_neighbours_with_cell_ids(tmp_path):
    V = _vectors(500)
    ids = (np.int64(7) << 32) + np.arange(500, dtype=np.int64)
    index, info = build_index(V, ids)
    assert info.kind == "flat"
    sims, found = search(index, V[:5], 3)
    assert list(found[:, 0]) == list(ids[:5])
    np.testing.assert_allclose(sims[:, 0], 1.0, rtol=1e-5)
    save_index(index, info, tmp_path / "i.faiss", {"model_id": "m"})
    loaded, sidecar = load_index(tmp_path / "i.faiss", verify=True)
    assert sidecar["provenance"]["model_id"] == "m"
    assert loaded.ntotal == 500


def test_ivf_reaches_its_recall_target():
    V = _vectors(20000, seed=1)
    _, info = build_index(V, np.arange(20000, dtype=np.int64), kind="ivf", recall_target=0.95)
    assert info.kind == "ivf" and info.nlist > 0
    assert info.recall_at_10 >= 0.95


def test_damaged_index_is_refused(tmp_path):
    V = _vectors(100)
    index, info = build_index(V, np.arange(100, dtype=np.int64))
    save_index(index, info, tmp_path / "i.faiss", {})
    raw = bytearray((tmp_path / "i.faiss").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "i.faiss").write_bytes(bytes(raw))
    with pytest.raises(AtlasError, match="does not match its recorded sha256"):
        load_index(tmp_path / "i.faiss", verify=True)


def test_unknown_kind():
    with pytest.raises(ScreaderError, match="unknown index kind 'hnsw'"):
        build_index(_vectors(10), np.arange(10, dtype=np.int64), kind="hnsw")
