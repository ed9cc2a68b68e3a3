import numpy as np
import pytest

from screader_db.cell_embedding import l2_normalise
from screader_db.errors import AtlasError, ScreaderError
from screader_db.index import (
    PCA_DIM,
    REFINE_FACTORS,
    build_index,
    choose_kind,
    exact_search,
    load_index,
    remove_id_range,
    save_index,
    search,
)


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


def _wide(n, d=300, seed=2):
    """Clustered unit vectors whose within-cluster spread lies mostly in a few directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    programs = rng.standard_normal((12, d))
    rows = rng.integers(0, 12, n)
    spread = rng.standard_normal((n, 12)) @ programs * 0.15
    return l2_normalise(centres[rows] + spread + 0.05 * rng.standard_normal((n, d)))


def _ids(n):
    half = n // 2
    return np.concatenate([(np.int64(1) << 40) + np.arange(half), (np.int64(2) << 40) + np.arange(n - half)])


def test_choose_kind_by_size_and_width():
    assert choose_kind(10_000, dim=600) == "flat"
    assert choose_kind(1_000_000, dim=600) == "ivf-pca"
    assert choose_kind(1_000_000, dim=2 * PCA_DIM) == "ivf"


def test_pca_index_reaches_its_target_and_returns_inner_products(tmp_path):
    drawn = _wide(6300)
    V, queries = drawn[:6000], drawn[6000:]
    ids = _ids(6000)
    index, info = build_index(V, ids, kind="ivf-pca", recall_target=0.95)
    assert info.kind == "ivf-pca" and info.extra["pca_dim"] == PCA_DIM
    assert info.recall_at_10 >= 0.95 and info.extra["k_factor"] in REFINE_FACTORS
    sims, found = search(index, queries, 10)
    _, rows = exact_search(queries, V, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ids[rows], strict=True)])
    assert recall >= 0.9
    # Similarities are the exact inner products of the ids returned, best first.
    position = {int(i): p for p, i in enumerate(ids)}
    direct = np.array([[V[position[int(i)]] @ q for i in row] for row, q in zip(found, queries, strict=True)])
    np.testing.assert_allclose(sims, direct, atol=1e-4)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    # A larger k re-ranks the tuned pool (or k candidates, if more): its first ten are at least as close.
    wider, _ = search(index, queries, 15)
    assert np.all(wider[:, :10] >= sims - 1e-6)
    save_index(index, info, tmp_path / "i.faiss", {})
    loaded, sidecar = load_index(tmp_path / "i.faiss")
    assert sidecar["index"]["k_factor"] == info.extra["k_factor"]
    _, found_again = search(loaded, queries, 10)
    np.testing.assert_array_equal(found_again, found)


def test_pca_index_filters_and_removes_exactly_by_id():
    V = _wide(4000, seed=3)
    ids = _ids(4000)
    index, _ = build_index(V, ids, kind="ivf-pca", recall_target=0.95)
    queries = V[:50]
    second = ids[ids >= (np.int64(2) << 40)]
    _, found = search(index, queries, 10, allowed=second)
    assert np.isin(found, second).all()
    remove_id_range(index, int(np.int64(1) << 40), int(np.int64(2) << 40))
    assert index.ntotal == len(second)
    _, after = search(index, queries, 10)
    assert np.isin(after, second).all()
    # The removal keeps the trained lists, so the remaining cells are found as before.
    np.testing.assert_array_equal(after, found)


def test_pca_index_stops_probing_when_the_target_is_out_of_reach():
    V = _wide(4000, seed=4)
    _, info = build_index(V, _ids(4000), kind="ivf-pca", recall_target=1.01)
    assert not info.extra["target_met"]
    # It stops where recall stops improving, not at every list.
    assert info.nprobe < info.nlist and info.recall_at_10 >= 0.95


def test_pca_kind_on_narrow_vectors_is_a_plain_ivf():
    _, info = build_index(_vectors(3000, d=64), np.arange(3000, dtype=np.int64), kind="ivf-pca")
    assert info.kind == "ivf" and "k_factor" not in info.extra
