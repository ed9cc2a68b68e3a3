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


def test_marker_evidence_is_high_for_cells_expressing_what_sets_their_label_apart():
    import anndata as ad
    import pandas as pd
    from conftest import panel_genes

    from screader_db.call_evidence import evidence, pair_genes
    from screader_db.query_input import prepare_query

    genes = panel_genes(60)
    means = np.zeros((3, 60))
    means[0, :10], means[1, 10:20], means[2, 20:30] = 2.0, 2.0, 2.0  # A, B and C each raise ten genes
    profiles = pd.DataFrame(means, index=["A", "B", "C"], columns=genes)
    up, down = pair_genes(profiles, "A", "B", np.ones(60, dtype=bool), n_genes=5)
    assert set(up) <= set(range(10)) and set(down) <= set(range(10, 20)) and len(up) == len(down) == 5
    counts = np.ones((4, 60), dtype=np.float32)
    counts[0, :10] = counts[1, 10:20] = 40  # cell 0 expresses A's genes, cell 1 B's
    query = prepare_query(ad.AnnData(counts, var=pd.DataFrame(index=genes)), genes)
    called, other = np.array(["A", "A", "A", "Z"]), np.array(["B", "B", "", "A"])
    found = evidence(query, profiles, called, other, chunk=3)  # chunks split the cells
    assert found[0] > 0 > found[1] and found[2] == found[3] == 0  # no runner-up, or a label without a profile
    # an unmeasured gene is never evidence: without A's genes the pair has only B's
    measured = np.ones(60, dtype=bool)
    measured[:10] = False
    assert len(pair_genes(profiles, "A", "B", measured)[0]) == 0


def test_marker_evidence_moves_the_confidence_of_a_call():
    votes, agree = np.full(3, 0.95), np.full(3, 0.9)
    with_evidence = combine(votes, agree, np.full(3, 0.9), np.array([-1.0, 0.0, 1.0]))
    assert np.all(np.diff(with_evidence) > 0)


def test_cluster_agreement_is_the_share_of_a_cells_cluster_with_its_label():
    from screader_db.confidence import cluster_agreement

    cluster = np.array([0, 0, 0, 0, 1, 1, 2])
    codes = np.array([3, 3, 3, 5, 5, 5, 3])
    np.testing.assert_allclose(cluster_agreement(cluster, codes), [0.75, 0.75, 0.75, 0.25, 1.0, 1.0, 1.0])


def test_a_label_its_cluster_does_not_share_lowers_the_confidence():
    from screader_db.confidence import FORMS, OPTIONAL

    assert {tuple(form) for form in FORMS} == {tuple(n for n in OPTIONAL if n in form) for form in FORMS}
    assert len(FORMS) == 2 ** len(OPTIONAL)
    votes, agree, shares = np.full(3, 0.95), np.full(3, 0.9), np.array([0.1, 0.5, 1.0])
    for opinion, evidence in ((None, None), (np.full(3, 0.9), None), (None, np.zeros(3)), (np.full(3, 0.9), np.zeros(3))):
        assert np.all(np.diff(combine(votes, agree, opinion, evidence, shares)) > 0)
