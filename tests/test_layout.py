"""Placing cells on the reference map from their neighbours' positions (layout.place)."""

import numpy as np
import pytest

from screader_db.layout import PLACE_TEMPERATURE, place

NAN = [np.nan, np.nan]


def test_one_neighbour_or_equal_similarities_give_its_position_or_the_midpoint():
    found = place(np.array([[0.7], [0.2]]), np.array([[[1.0, 2.0]], [[-3.0, 4.0]]]))
    assert found.dtype == np.float32 and found.shape == (2, 2)
    np.testing.assert_array_equal(found, [[1.0, 2.0], [-3.0, 4.0]])
    np.testing.assert_allclose(place(np.array([[0.5, 0.5]]), np.array([[[0.0, 0.0], [2.0, 6.0]]])), [[1.0, 3.0]])


def test_weights_are_a_softmax_of_similarity_over_the_temperature():
    sims = np.array([[0.9, 0.8, 0.6]])
    positions = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]])
    weights = np.exp(sims[0] / PLACE_TEMPERATURE)
    weights /= weights.sum()
    expected = weights @ positions[0]
    np.testing.assert_allclose(place(sims, positions)[0], expected, rtol=1e-6)
    assert place(sims, positions)[0, 0] < 5  # the nearest neighbour counts most


def test_adding_the_same_amount_to_every_similarity_moves_nothing_and_overflows_nothing():
    sims = np.array([[0.9, 0.8, 0.6]])
    positions = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]])
    shifted = place(sims + 100.0, positions)
    assert np.isfinite(shifted).all()
    np.testing.assert_allclose(shifted, place(sims, positions), rtol=1e-5)


def test_neighbours_without_a_position_are_left_out():
    sims = np.array([[0.99, 0.5], [0.8, 0.7]])
    positions = np.array([[NAN, [4.0, -1.0]], [NAN, NAN]])
    found = place(sims, positions)
    np.testing.assert_array_equal(found[0], [4.0, -1.0])
    np.testing.assert_array_equal(found[1], [0.0, 0.0])  # nothing to go by: the origin, never NaN


def test_the_reference_map_keeps_groups_apart_and_caches_its_compiled_code(tmp_path):
    """UMAP's numba functions are compiled once per machine: a build leaves their cache in the project's cache folder."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from screader_db.layout import umap_layout\n"
        "rng = np.random.default_rng(0)\n"
        "centres = rng.normal(size=(3, 32))\n"
        "v = np.repeat(centres, 60, axis=0) + 0.2 * rng.normal(size=(180, 32))\n"
        "v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
        "np.save(sys.argv[1], umap_layout(v.astype(np.float32)))\n"
    )
    out = tmp_path / "coords.npy"
    env = {**os.environ, "SCREADER_DB_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-c", "import sys\n" + script, str(out)], check=True, env=env, timeout=600)
    coords = np.load(out)
    group = np.repeat(np.arange(3), 60)
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    assert (group[d.argmin(axis=1)] == group).mean() > 0.95
    cached = list((tmp_path / "home" / "numba").rglob("*.nbi"))
    assert cached  # the layout's compiled functions, loaded by the next process instead of compiled again


@pytest.mark.parametrize("approximate_from", [10_000, 300])
def test_cells_past_the_sample_are_placed_among_their_own_group(monkeypatch, approximate_from):
    """UMAP lays out a sample; every other cell lands among the laid-out cells of its own group,
    whether its neighbours come from an exact or (from ``PLACE_APPROXIMATE`` laid-out cells) an approximate search."""
    import screader_db.layout as layout

    monkeypatch.setattr(layout, "PLACE_APPROXIMATE", approximate_from)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    group = np.repeat(np.arange(4), 500)
    vectors = centres[group] + 0.3 * rng.normal(size=(2000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    coords = layout.reference_layout(vectors, sample=400)
    assert coords.shape == (2000, 2) and np.isfinite(coords).all()
    chosen = np.sort(np.random.default_rng(0).choice(2000, size=400, replace=False))
    placed = np.setdiff1d(np.arange(2000), chosen)
    d = ((coords[placed][:, None, :] - coords[chosen][None, :, :]) ** 2).sum(axis=2)
    assert (group[chosen][d.argmin(axis=1)] == group[placed]).mean() > 0.98
