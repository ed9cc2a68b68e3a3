import ast
from pathlib import Path

import numpy as np
import pytest

from screader_db.cell_embedding import l2_normalise
from screader_db.errors import AtlasError, ScreaderError
from screader_db.index import (
    LIST_SEARCH_MIN,
    PCA_DIM,
    QUERY_CHECK_CELLS,
    REFINE_FACTORS,
    CellIndex,
    choose_kind,
    exact_search,
    knn,
    recall_at_k,
)

PACKAGE = Path(__file__).resolve().parents[1]


def _vectors(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    return l2_normalise(centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d)))


def test_flat_index_returns_exact_neighbours_with_cell_ids(tmp_path):
    V = _vectors(500)
    ids = (np.int64(7) << 32) + np.arange(500, dtype=np.int64)
    index = CellIndex.build(V, ids)
    assert index.kind == "flat" and index.info.kind == "flat" and index.nprobe == 0
    sims, found = index.search(V[:5], 3)
    assert list(found[:, 0]) == list(ids[:5])
    np.testing.assert_allclose(sims[:, 0], 1.0, rtol=1e-5)
    index.save(tmp_path / "i.faiss", {"model_id": "m"})
    loaded = CellIndex.load(tmp_path / "i.faiss", verify=True)
    assert loaded.provenance["model_id"] == "m"
    assert loaded.ntotal == 500 and loaded.kind == "flat" and loaded.dim == 16
    np.testing.assert_array_equal(loaded.ids(), ids)


def test_ivf_reaches_its_recall_target():
    V = _vectors(20000, seed=1)
    index = CellIndex.build(V, np.arange(20000, dtype=np.int64), kind="ivf", recall_target=0.95)
    info = index.info
    assert info.kind == "ivf" and info.nlist > 0 and index.nprobe == info.nprobe
    assert info.recall_at_10 >= 0.95


def test_recall_counts_the_exact_neighbours_found():
    V = _vectors(20000, seed=1)
    ids = np.arange(20000, dtype=np.int64) + 3
    index = CellIndex.build(V, ids, kind="ivf", recall_target=0.95)
    queries = V[:200]
    _, rows = knn(queries, V, 11)
    truth = ids[rows[:, 1:]]
    tuned = index.recall(queries, truth, own=ids[:200])
    assert tuned >= 0.9
    index.nprobe = 1
    assert index.info.nprobe == 1 and index.recall(queries, truth, own=ids[:200]) < tuned
    index.nprobe = index.info.nlist
    assert index.recall(queries, truth, own=ids[:200]) == 1.0


def test_damaged_index_is_refused(tmp_path):
    V = _vectors(100)
    CellIndex.build(V, np.arange(100, dtype=np.int64)).save(tmp_path / "i.faiss", {})
    raw = bytearray((tmp_path / "i.faiss").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "i.faiss").write_bytes(bytes(raw))
    with pytest.raises(AtlasError, match="does not match its recorded sha256"):
        CellIndex.load(tmp_path / "i.faiss", verify=True)


def test_a_missing_index_is_an_atlas_error(tmp_path):
    with pytest.raises(AtlasError, match=r"cannot read the FAISS index \S*nothing.faiss"):
        CellIndex.load(tmp_path / "nothing.faiss")


def test_unknown_kind():
    with pytest.raises(ScreaderError, match="unknown index kind 'hnsw'"):
        CellIndex.build(_vectors(10), np.arange(10, dtype=np.int64), kind="hnsw")


def test_a_flat_index_has_no_lists_to_probe():
    index = CellIndex.build(_vectors(50), np.arange(50, dtype=np.int64))
    with pytest.raises(ScreaderError, match="a flat index has no lists to probe"):
        index.nprobe = 4


def test_add_and_remove_keep_the_recorded_size(tmp_path):
    V = _vectors(300, seed=5)
    first, second = np.arange(200, dtype=np.int64), (np.int64(1) << 32) + np.arange(100, dtype=np.int64)
    index = CellIndex.build(V[:200], first)
    index.add(V[200:], second)
    assert index.ntotal == index.info.n == 300
    _, found = index.search(V[200:210], 1)
    np.testing.assert_array_equal(found[:, 0], second[:10])
    index.remove(0, 1 << 32)
    assert index.ntotal == index.info.n == 100
    index.save(tmp_path / "i.faiss", {})
    assert CellIndex.load(tmp_path / "i.faiss").info.n == 100


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
    index = CellIndex.build(V, ids, kind="ivf-pca", recall_target=0.95)
    info = index.info
    assert index.kind == "ivf-pca" and info.extra["pca_dim"] == PCA_DIM
    assert info.recall_at_10 >= 0.95 and info.extra["k_factor"] in REFINE_FACTORS
    sims, found = index.search(queries, 10)
    _, rows = exact_search(queries, V, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ids[rows], strict=True)])
    assert recall >= 0.9
    # Similarities are the exact inner products of the ids returned, best first.
    position = {int(i): p for p, i in enumerate(ids)}
    direct = np.array([[V[position[int(i)]] @ q for i in row] for row, q in zip(found, queries, strict=True)])
    np.testing.assert_allclose(sims, direct, atol=1e-4)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    # A larger k re-ranks the tuned pool (or k candidates, if more): its first ten are at least as close.
    wider, _ = index.search(queries, 15)
    assert np.all(wider[:, :10] >= sims - 1e-6)
    index.save(tmp_path / "i.faiss", {})
    loaded = CellIndex.load(tmp_path / "i.faiss")
    assert loaded.kind == "ivf-pca" and loaded.info.extra["k_factor"] == info.extra["k_factor"]
    assert loaded.nprobe == info.nprobe
    _, found_again = loaded.search(queries, 10)
    np.testing.assert_array_equal(found_again, found)


def test_pca_index_filters_and_removes_exactly_by_id():
    V = _wide(4000, seed=3)
    ids = _ids(4000)
    index = CellIndex.build(V, ids, kind="ivf-pca", recall_target=0.95)
    queries = V[:50]
    second = ids[ids >= (np.int64(2) << 40)]
    _, found = index.search(queries, 10, allowed=second)
    assert np.isin(found, second).all()
    index.remove(int(np.int64(1) << 40), int(np.int64(2) << 40))
    assert index.ntotal == index.info.n == len(second)
    _, after = index.search(queries, 10)
    assert np.isin(after, second).all()
    # The removal keeps the trained lists, so the remaining cells are found as before (but for
    # near-ties: the cells are added again from the float16 store, a rounding of their vectors).
    assert np.mean([len(np.intersect1d(a, f)) / 10 for a, f in zip(after, found, strict=True)]) >= 0.99
    assert (after[:, 0] == found[:, 0]).all()


def test_pca_index_stops_probing_when_the_target_is_out_of_reach():
    V = _wide(4000, seed=4)
    info = CellIndex.build(V, _ids(4000), kind="ivf-pca", recall_target=1.01).info
    assert not info.extra["target_met"]
    # It stops where recall stops improving, not at every list.
    assert info.nprobe < info.nlist and info.recall_at_10 >= 0.95


def test_pca_kind_on_narrow_vectors_is_a_plain_ivf():
    info = CellIndex.build(_vectors(3000, d=64), np.arange(3000, dtype=np.int64), kind="ivf-pca").info
    assert info.kind == "ivf" and "k_factor" not in info.extra


def test_knn_is_exact_search_over_vectors_in_memory():
    V, queries = _vectors(800, seed=6), _vectors(40, seed=7)
    sims, rows = knn(queries, V, 5)
    direct = queries @ V.T
    np.testing.assert_array_equal(rows[:, 0], direct.argmax(axis=1))
    np.testing.assert_allclose(sims, np.sort(direct, axis=1)[:, ::-1][:, :5], atol=1e-5)
    distances, nearest = knn(queries, V, 5, metric="l2")
    np.testing.assert_array_equal(nearest[:, 0], rows[:, 0])  # unit rows: nearest is most similar
    np.testing.assert_allclose(distances[:, 0], 2 - 2 * sims[:, 0], atol=1e-5)
    with pytest.raises(ScreaderError, match="unknown metric 'cosine' for knn"):
        knn(queries, V, 5, metric="cosine")


def test_approximate_knn_finds_most_exact_neighbours():
    V = _vectors(5000, seed=8)
    _, exact = knn(V[:300], V, 10)
    _, approximate = knn(V[:300], V, 10, approximate=True, seed=1)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact, strict=True)])
    assert found > 0.8
    np.testing.assert_array_equal(knn(V[:300], V, 10, approximate=True, seed=1)[1], approximate)


def test_no_module_but_the_index_imports_faiss():
    """FAISS is owned by screader_db/index.py: no other module of the package or the benchmarks imports it."""
    importers = []
    for path in sorted([*(PACKAGE / "screader_db").rglob("*.py"), *(PACKAGE / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "faiss" or name.startswith("faiss.") for name in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert set(importers) == {"screader_db/index.py"}


def _near_copies():
    """Atlas cells in tight groups of ten near-copies (as cells resampled from one real cell), so the
    build, tuning on atlas cells, needs few probes; queries drawn around the same centres but not
    near any copy need many more to find their true ten nearest. (vectors, ids, index, queries)"""
    rng = np.random.default_rng(4)
    drawn = _wide(800 + LIST_SEARCH_MIN + 500, seed=4)
    sources, queries = drawn[:800], drawn[800:]
    V = l2_normalise(np.repeat(sources, 10, axis=0) + 0.02 * rng.standard_normal((8000, sources.shape[1])))
    ids = _ids(8000)
    return V, ids, CellIndex.build(V, ids, kind="ivf-pca", recall_target=0.95), queries


def test_a_query_check_widens_the_probes_for_queries_far_from_the_atlas():
    V, ids, index, queries = _near_copies()
    queries = queries[: LIST_SEARCH_MIN - 100]  # searched one query at a time
    _, rows = exact_search(queries, V, 10)
    truth = ids[rows]
    built = (index.nprobe, index.info.extra["k_factor"])
    before = recall_at_k(index.search(queries, 10)[1], truth)
    assert not index.checked
    checked = index.check_probes(queries)
    assert index.checked and checked["checked"] == QUERY_CHECK_CELLS and checked["target"] == 0.95
    assert checked["widened"] and (checked["nprobe"], checked["k_factor"]) > built
    after = recall_at_k(index.search(queries, 10)[1], truth)  # later searches keep the widest probes
    assert after >= 0.93 > before, (before, after)
    np.testing.assert_array_equal(index.search(queries, 10, probes=built)[1], index.search(queries, 10, probes=built)[1])
    assert recall_at_k(index.search(queries, 10, probes=built)[1], truth) == before
    assert CellIndex.build(_vectors(300), _ids(300), kind="flat").check_probes(queries[:, :16]) == {}


def test_a_large_query_is_searched_exactly_within_the_lists_it_probes():
    V, ids, index, queries = _near_copies()
    assert len(queries) >= LIST_SEARCH_MIN
    _, rows = exact_search(queries, V, 10)
    truth = ids[rows]
    built = (index.nprobe, index.info.extra["k_factor"])
    one_at_a_time = recall_at_k(index.search(queries[:900], 10)[1], truth[:900])
    checked = index.check_probes(queries)
    assert checked["search"] == "exact within the probed lists" and checked["k_factor"] is None
    assert checked["recall_at_10"] >= 0.95 and checked["nprobe"] > built[0]
    assert not index.checked  # a smaller query later is still checked for its own probes
    sims, found = index.search(queries, 10)
    assert recall_at_k(found, truth) >= 0.93 > one_at_a_time
    # A smaller batch asked to be scored by list is searched the same way, each query on its own.
    np.testing.assert_array_equal(index.search(queries[:300], 10, by_list=True)[1], found[:300])
    # Exact inner products with the stored (float16) vectors of the ids returned, best first; within
    # float16's rounding of the vectors themselves.
    stored = index.stored_vectors().astype(np.float32)
    position = {int(i): p for p, i in enumerate(index.ids())}
    direct = np.array([[stored[position[int(i)]] @ q for i in row] for row, q in zip(found, queries, strict=True)])
    np.testing.assert_allclose(sims, direct, atol=1e-5)
    original = {int(i): p for p, i in enumerate(ids)}
    full = np.array([[V[original[int(i)]] @ q for i in row] for row, q in zip(found, queries, strict=True)])
    np.testing.assert_allclose(sims, full, atol=5e-4)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    # At the build's probes, exact scoring of the probed lists finds at least what re-ranking finds.
    at_built = index.search(queries, 10, probes=(built[0], None))[1]
    assert recall_at_k(at_built, truth) >= recall_at_k(
        np.vstack([index.search(queries[s : s + 500], 10, probes=built)[1] for s in range(0, len(queries), 500)]), truth)
    # A filter by id is searched through the lists one query at a time, as before.
    second = ids[ids >= (np.int64(2) << 40)]
    assert np.isin(index.search(queries, 10, allowed=second)[1], second).all()


def test_an_index_saved_with_a_float32_store_is_read_and_searched_as_before(tmp_path, monkeypatch):
    import screader_db.index as index_module

    V, ids = _wide(4000, seed=6), _ids(4000)
    factory = index_module._faiss().index_factory
    monkeypatch.setattr(index_module, "_pca_refined", lambda dim, nlist, hnsw: factory(
        dim, f"IDMap2,PCA{PCA_DIM},IVF{nlist},SQ8,RFlat", index_module._faiss().METRIC_L2))
    old = CellIndex.build(V, ids, kind="ivf-pca", recall_target=0.95)
    old.save(tmp_path / "index.faiss", {"made": "with a float32 store"})
    monkeypatch.undo()
    loaded = CellIndex.load(tmp_path / "index.faiss")
    assert loaded.stored_vectors().dtype == np.float32
    truth = ids[exact_search(V[:1200], V, 10)[1]]
    assert recall_at_k(loaded.search(V[:500], 10)[1], truth[:500]) >= 0.9  # one query at a time
    assert recall_at_k(loaded.search(V[:1200], 10)[1], truth) >= 0.9  # by list
    assert CellIndex.build(V, ids, kind="ivf-pca").stored_vectors().dtype == np.float16
