import numpy as np
import scipy.sparse as sp

from screader_db.metrics import agreement
from screader_db.vote import decide, knn_vote, propagate, query_graph, tally


def test_power_weighted_vote():
    sims = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5]], dtype=np.float32)
    codes = np.array([[0, 0, 1], [1, 2, -1]])
    linear = knn_vote(sims, codes, 3, power=1)
    assert list(linear.best) == [0, 1]
    np.testing.assert_allclose(linear.score[0], 1.7 / 1.8, rtol=1e-5)
    np.testing.assert_allclose(linear.margin[0], 1.6 / 1.8, rtol=1e-5)
    np.testing.assert_allclose(linear.mean_similarity[1], 0.5)
    assert linear.second[0] == 1
    quartic = knn_vote(sims, codes, 3, power=4)
    expected = (0.9**4 + 0.8**4) / (0.9**4 + 0.8**4 + 0.1**4)
    np.testing.assert_allclose(quartic.score[0], expected, rtol=1e-5)


def test_one_close_neighbour_outvotes_many_loose_ones():
    sims = np.array([[0.95, 0.6, 0.6, 0.6, 0.6]])
    codes = np.array([[1, 0, 0, 0, 0]])
    assert knn_vote(sims, codes, 2, power=1).best[0] == 0
    assert knn_vote(sims, codes, 2, power=8).best[0] == 1


def test_propagation_pulls_a_stray_cell_to_its_population():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(16)
    vectors = centre + 0.05 * rng.standard_normal((30, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shares = np.tile([0.9, 0.1], (30, 1))
    shares[0] = [0.3, 0.7]
    graph = query_graph(vectors.astype(np.float32), k=10)
    assert sp.issparse(graph)
    np.testing.assert_allclose(np.asarray(graph.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    smoothed = propagate(shares, graph, 0.5)
    assert smoothed[0].argmax() == 0
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, rtol=1e-6)
    assert (propagate(shares, graph, 0.0) == shares).all()
    vote = decide(smoothed, np.ones((30, 3)), np.zeros((30, 3), dtype=int))
    assert (vote.best == 0).all()


def test_tally_ignores_missing_neighbours():
    shares = tally(np.array([[0.5, 0.4]]), np.array([[-1, 1]]), 2)
    np.testing.assert_allclose(shares, [[0.0, 1.0]])


def test_agreement_ignores_labels_the_reference_lacks():
    agree = agreement(["a", "a", "b", "Unassigned", "a"], ["a", "b", "b", "a", "c"], known=["a", "b"])
    assert agree.n_scored == 4
    assert agree.accuracy == 0.5
    assert agree.unassigned_rate == 0.25
    assert abs(agree.assigned_precision - 2 / 3) < 1e-9
    assert abs(agree.per_class_f1["b"] - 2 / 3) < 1e-9
