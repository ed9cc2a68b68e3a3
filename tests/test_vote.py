import numpy as np

from screader_db.metrics import agreement
from screader_db.vote import knn_vote


def test_similarity_weighted_vote():
    sims = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5]], dtype=np.float32)
    codes = np.array([[0, 0, 1], [1, 2, -1]])
    vote = knn_vote(sims, codes, 3)
    assert list(vote.best) == [0, 1]
    np.testing.assert_allclose(vote.score[0], 1.7 / 1.8, rtol=1e-5)
    np.testing.assert_allclose(vote.margin[0], 1.6 / 1.8, rtol=1e-5)
    np.testing.assert_allclose(vote.mean_similarity[1], 0.5)
    assert vote.second[0] == 1


def test_agreement_ignores_labels_the_reference_lacks():
    agree = agreement(["a", "a", "b", "Unassigned", "a"], ["a", "b", "b", "a", "c"], known=["a", "b"])
    assert agree.n_scored == 4
    assert agree.accuracy == 0.5
    assert agree.unassigned_rate == 0.25
    assert abs(agree.assigned_precision - 2 / 3) < 1e-9
    assert abs(agree.per_class_f1["b"] - 2 / 3) < 1e-9
