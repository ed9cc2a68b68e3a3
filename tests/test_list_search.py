import sys

import numpy as np
import pytest

from screader_db import list_search
from screader_db.cell_embedding import l2_normalise
from screader_db.list_search import Lists, probe_recall


def _setting(seed=0, n=3000, d=20, n_lists=60, n_queries=400, nprobe=5):
    rng = np.random.default_rng(seed)
    vectors = l2_normalise(rng.standard_normal((n, d))).astype(np.float32)
    owner = rng.integers(0, n_lists, n)
    owner[owner == 7] = 8  # list 7 is empty
    owner[np.flatnonzero(owner == 3)[3:]] = 4  # list 3 holds three rows, fewer than k
    lists = Lists.of_owners(owner, n_lists)
    queries = l2_normalise(rng.standard_normal((n_queries, d))).astype(np.float32)
    probes = np.stack([rng.choice(n_lists, nprobe, replace=False) for _ in range(n_queries)])
    probes[0] = -1
    probes[0, :2] = [3, 7]  # probes three rows in all
    return vectors, lists, queries, probes


@pytest.mark.parametrize("one_pass_width", [list_search.ONE_PASS_WIDTH, 0])
def test_search_is_exact_within_the_probed_lists(monkeypatch, one_pass_width):
    # 5 probes of 7: one pass by default; two passes (a floor, then what reaches it) when forced.
    monkeypatch.setattr(list_search, "ONE_PASS_WIDTH", one_pass_width)
    vectors, lists, queries, probes = _setting()
    k = 7
    sims, rows = list_search.search(queries, vectors, lists, probes, k)
    owner = lists.list_of_rows(len(vectors))
    np.testing.assert_array_equal(Lists.of_owners(owner, lists.count).rows, lists.rows)  # each the other's inverse
    for q in range(len(queries)):
        allowed = np.flatnonzero(np.isin(owner, probes[q][probes[q] >= 0]))
        scores = vectors[allowed] @ queries[q]
        best = allowed[np.argsort(-scores, kind="stable")[:k]]
        found = rows[q][rows[q] >= 0]
        np.testing.assert_array_equal(np.sort(found), np.sort(best))
        np.testing.assert_allclose(sims[q][: len(found)], vectors[found] @ queries[q], atol=1e-5)
        assert np.all(np.diff(sims[q][: len(found)]) <= 1e-6)
    # The first query probes three rows: the rest of its answer is empty.
    assert (rows[0] >= 0).sum() == 3 and np.all(np.isneginf(sims[0][3:]))


def test_search_in_blocks_gives_the_same_answer():
    vectors, lists, queries, probes = _setting(seed=1)
    whole = list_search.search(queries, vectors, lists, probes, 5)
    assert len(queries) > 64
    blocks = list_search.search(queries, vectors, lists, probes, 5, block=64)
    np.testing.assert_array_equal(blocks[1], whole[1])
    np.testing.assert_allclose(blocks[0], whole[0], atol=1e-6)  # the products round alike but for their shape


def test_probe_recall_is_the_recall_of_the_search():
    vectors, lists, queries, probes = _setting(seed=2, nprobe=12)
    probes[0] = probes[1]
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    owner = lists.list_of_rows(len(vectors))
    for nprobe in (1, 4, 12):
        _, rows = list_search.search(queries, vectors, lists, probes[:, :nprobe], 10)
        searched = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)])
        assert probe_recall(probes, truth, owner, nprobe) == searched
    assert probe_recall(probes, truth, owner, 1) < probe_recall(probes, truth, owner, 12)


def test_one_pass_and_two_passes_give_the_same_answer(monkeypatch):
    vectors, lists, queries, probes = _setting(seed=3, nprobe=8)
    one = list_search.search(queries, vectors, lists, probes, 15)
    monkeypatch.setattr(list_search, "ONE_PASS_WIDTH", 0)
    two = list_search.search(queries, vectors, lists, probes, 15)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_allclose(one[0], two[0], atol=1e-6)


@pytest.mark.parametrize("stored", [np.float32, np.float16])
def test_torch_and_numpy_products_give_the_same_answer(monkeypatch, stored):
    pytest.importorskip("torch")
    vectors, lists, queries, probes = _setting(seed=4, nprobe=12)
    vectors = vectors.astype(stored)
    with_torch = list_search.search(queries, vectors, lists, probes, 10)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with_numpy = list_search.search(queries, vectors, lists, probes, 10)
    np.testing.assert_array_equal(with_torch[1], with_numpy[1])
    np.testing.assert_allclose(with_torch[0], with_numpy[0], atol=1e-6)


def test_pairs_sort_by_query_then_best_first():
    rng = np.random.default_rng(5)
    query = rng.integers(0, 50, 5000)
    sim = rng.standard_normal(5000).astype(np.float32)
    sim[::5] = sim[1::5]  # equal similarities keep their order
    sim[:3] = [0.0, -0.0, -np.inf]
    order = list_search._by_query_best_first(query, sim)
    expected = sorted(range(len(query)), key=lambda i: (query[i], -sim[i]))  # sorted() is stable
    np.testing.assert_array_equal(order, expected)
