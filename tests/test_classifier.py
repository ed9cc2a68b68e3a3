"""The linear classifier beside the neighbours: fit, keep, map onto a vote's labels, blend."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.classifier import Classifier, blend, fit_classifier, on_labels
from screader_db.errors import AtlasError


def _cells(seed=0):
    """Three labels, each raising its own ten of thirty genes (log-like values)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], 40)
    X = rng.poisson(0.3, size=(120, 30)).astype(np.float32)
    for i, label in enumerate("abc"):
        X[labels == label, i * 10:(i + 1) * 10] += rng.poisson(3, size=(40, 10))
    return sp.csr_matrix(np.log1p(X)), labels, [f"G{i}" for i in range(30)]


def test_the_classifier_learns_labels_and_reads_back_the_same(tmp_path):
    X, labels, genes = _cells()
    fitted = fit_classifier(X, labels, genes)
    assert fitted.classes == ["a", "b", "c"] and fitted.genes == genes
    probabilities = fitted.probabilities(_cells(seed=1)[0])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert (np.asarray(fitted.classes)[probabilities.argmax(axis=1)] == labels).mean() > 0.95
    fitted.save(tmp_path / "classifier.safetensors", {"model_id": "none"})
    again = Classifier.load(tmp_path / "classifier.safetensors")
    np.testing.assert_array_equal(again.probabilities(X), fitted.probabilities(X))


def test_one_label_fits_no_classifier():
    X, _, genes = _cells()
    assert fit_classifier(X, np.repeat("a", X.shape[0]), genes) is None


def test_a_file_of_another_format_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"coef": np.zeros((2, 2), np.float32), "intercept": np.zeros(2, np.float32)},
              str(tmp_path / "c.safetensors"), metadata={"format": "classifier-0"})
    with pytest.raises(AtlasError, match="classifier format 'classifier-0'"):
        Classifier.load(tmp_path / "c.safetensors")


def test_probabilities_follow_the_vote_labels_and_levels():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)
    # the vote has b and a (in that order) but not c: c's share is left out and each row scaled back to 1
    np.testing.assert_allclose(on_labels(probabilities, ["a", "b", "c"], ["b", "a"]), [[0.375, 0.625], [0.5, 0.5]])
    # at a broader level, a and b are both "x"
    np.testing.assert_allclose(on_labels(probabilities, ["a", "b", "c"], ["x", "y"], {"a": "x", "b": "x", "c": "y"}),
                               [[0.8, 0.2], [0.2, 0.8]])


def test_the_blend_weighs_both_and_leaves_cells_without_neighbours_alone():
    shares = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    probabilities = np.array([[0.2, 0.8], [0.3, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(blend(shares, probabilities, 0.5), [[0.6, 0.4], [0.0, 0.0]])
    assert blend(shares, None) is shares
