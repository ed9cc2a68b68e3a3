"""Score calibration on the reference: the held-out split, the confidence map and the default cut-off."""

import numpy as np
import pytest
import scipy.sparse as sp

from screader_db.calibration import MAX_CORRECT_LOST, MIN_CONFIDENCE, confidence_of, score_calibration, split


def _counts(mask, labels):
    return {label: int(mask[labels == label].sum()) for label in sorted(set(labels))}


def test_the_split_holds_out_a_share_of_every_label_and_keeps_single_cells():
    labels = np.array(["a"] * 10 + ["b"] * 7 + ["c"] * 2 + ["d"])
    mask = split(labels, seed=0)
    assert mask.dtype == bool and mask.shape == (20,)
    assert _counts(mask, labels) == {"a": 3, "b": 2, "c": 1, "d": 0}
    assert _counts(split(labels, share=0.01), labels) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert _counts(split(labels, share=0.5), labels) == {"a": 5, "b": 4, "c": 1, "d": 0}


def test_the_split_is_seeded():
    labels = np.repeat(["a", "b"], 50)
    assert np.array_equal(split(labels, seed=3), split(labels, seed=3))
    assert not np.array_equal(split(labels, seed=3), split(labels, seed=4))


class _UnitRows:
    """A stand-in embedder: the cells' rows scaled to unit length (no centring)."""

    mean = None

    def transform(self, X, mean=None):
        dense = np.asarray(X.toarray(), dtype=np.float32)
        return dense / np.linalg.norm(dense, axis=1, keepdims=True)


def _clusters(sizes, centres, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for (name, size), centre in zip(sizes.items(), centres, strict=True):
        rows.append(np.asarray(centre, dtype=np.float64) + noise * rng.normal(size=(size, len(centre))))
        labels += [name] * size
    return sp.csr_matrix(np.vstack(rows)), np.array(labels)


def test_the_embedder_is_refitted_on_the_cells_the_split_keeps():
    X, labels = _clusters({"a": 40, "b": 40}, [[8, 0, 0, 0], [0, 8, 0, 0]])
    seen = []

    def fit(part, part_labels):
        seen.append((part.shape[0], list(part_labels)))
        return _UnitRows()

    found = score_calibration(fit, X, labels, seed=2)
    kept = ~split(labels, seed=2)
    assert seen == [(int(kept.sum()), list(labels[kept]))]
    assert found["calibrated"] and found["held_out_cells"] == int((~kept).sum()) == 24
    assert found["held_out_accuracy"] == 1.0


def test_overlapping_labels_get_a_cut_off_that_loses_at_most_one_percent_of_right_calls():
    X, labels = _clusters({"a": 400, "b": 400, "c": 400}, [[6, 0, 0], [0, 3, 0], [0, 3, 0.8]], seed=1)
    found = score_calibration(lambda part, _: _UnitRows(), X, labels, k=15)
    assert found["calibrated"] and found["held_out_cells"] == 360
    assert 0.6 < found["held_out_accuracy"] < 0.85
    assert 0 < found["loss_cut"] < found["even_cut"] < 1
    assert found["min_score"] == found["loss_cut"]
    assert 0 < found["correct_lost_at_min_score"] <= MAX_CORRECT_LOST
    knots, confidence = np.array(found["score_knots"]), np.array(found["confidence_knots"])
    assert knots[0] == 0.0 and knots[-1] == 1.0 and np.all(np.diff(knots) > 0)
    assert np.all(np.diff(confidence) >= 0) and confidence.min() >= 0 and confidence.max() <= 1
    assert np.all(confidence[knots >= found["even_cut"]] >= MIN_CONFIDENCE)
    assert np.all(confidence[knots < found["even_cut"]] < MIN_CONFIDENCE)


def test_no_cut_off_where_every_score_is_more_likely_right_than_wrong():
    X, labels = _clusters({"a": 400, "b": 400, "c": 400}, [[6, 0, 0], [0, 3, 0], [0, 3, 1.5]], seed=1)
    found = score_calibration(lambda part, _: _UnitRows(), X, labels, k=15)
    assert found["even_cut"] == 0.0 < found["loss_cut"]
    assert found["min_score"] == 0.0 and found["correct_lost_at_min_score"] == 0.0
    assert min(found["confidence_knots"]) >= MIN_CONFIDENCE


@pytest.mark.parametrize(("sizes", "why"), [({"a": 30, "b": 30}, "18 held-out cells"), ({"a": 100}, "one label")])
def test_too_little_to_calibrate_is_said_and_sets_no_cut_off(sizes, why):
    X, labels = _clusters(sizes, [[5, 0]] * len(sizes))

    def fit(part, part_labels):
        raise AssertionError("nothing is fitted")

    assert score_calibration(fit, X, labels) == {"calibrated": False, "min_score": 0.0,
                                                 "reason": "too few labelled cells to calibrate"}, why


def test_confidence_is_read_off_the_knots_and_is_the_score_without_a_calibration():
    calibration = {"calibrated": True, "score_knots": [0.0, 0.5, 1.0], "confidence_knots": [0.0, 0.2, 1.0]}
    found = confidence_of(np.array([0.25, 0.75, 1.0, 0.0, -0.5, 1.5]), calibration)
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, [0.1, 0.6, 1.0, 0.0, 0.0, 1.0], rtol=1e-6)
    scores = np.array([0.3, 0.9], dtype=np.float64)
    plain = confidence_of(scores, {"calibrated": False, "min_score": 0.0})
    assert plain.dtype == np.float32 and plain.tolist() == scores.astype(np.float32).tolist()
