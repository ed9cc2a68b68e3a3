"""The shipped confidence: the vote's calibrated confidence corrected by the query's own agreement."""

import numpy as np
import scipy.sparse as sp

from screader_db.confidence import agreement, combine


def test_agreement_is_the_weight_share_of_query_neighbours_labelled_alike():
    # cell 0's neighbours: 1 (weight 0.75, same label) and 2 (0.25, other); cell 1's: 0; cell 2's: 1.
    graph = sp.csr_matrix(np.array([[0, 0.75, 0.25], [1.0, 0, 0], [0, 1.0, 0]]))
    np.testing.assert_allclose(agreement(graph, np.array([4, 4, 7])), [0.75, 1.0, 0.0])


def test_confidence_rises_with_the_vote_and_with_agreement():
    votes = np.array([0.3, 0.6, 0.9, 1.0])
    for share in (0.0, 0.5, 1.0):
        assert np.all(np.diff(combine(votes, np.full(4, share))) > 0)
    for vote in votes:
        assert np.all(np.diff(combine(np.full(3, vote), np.array([0.0, 0.5, 1.0]))) > 0)
    assert np.all((combine(votes, np.ones(4)) > 0) & (combine(votes, np.ones(4)) < 1))


def test_a_second_opinion_against_the_label_lowers_the_confidence():
    votes, agree = np.full(3, 0.95), np.full(3, 0.9)
    with_opinion = combine(votes, agree, np.array([0.0, 0.5, 1.0]))
    assert np.all(np.diff(with_opinion) > 0)
    assert with_opinion[0] < 0.5 < with_opinion[2]
    assert combine(votes, agree).shape == with_opinion.shape
