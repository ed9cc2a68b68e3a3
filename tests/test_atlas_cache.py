"""The server's cache of opened versions: follows the pointer, keeps a few, loads each once."""

from concurrent.futures import ThreadPoolExecutor

from conftest import make_counts
from serving import small_atlas

from screader_db import annotate
from screader_db.atlas_cache import AtlasCache


def test_follows_the_current_pointer_and_keeps_the_last_versions(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    cache = AtlasCache(root, keep=2)
    first = cache.current()
    assert first.version == 1 and cache.current() is first
    held = cache.ready(first)
    small_atlas(root, n_cells=150, seed=2, overwrite=True)
    second = cache.current()
    assert second.version == 2 and len(second.cells()) == 150
    small_atlas(root, n_cells=120, seed=3, overwrite=True)
    assert cache.current().version == 3
    assert cache.versions_open == [2, 3]
    query = make_counts(n_cells=30, seed=4)
    old = annotate(query, held)
    assert old.info["atlas_version"] == 1
    assert annotate(query, cache.ready(cache.current())).info["atlas_version"] == 3


def test_ready_loads_a_version_once_for_many_threads(tmp_path):
    cache = AtlasCache(small_atlas(tmp_path / "atlas"))
    atlas = cache.current()
    assert not atlas.loaded
    with ThreadPoolExecutor(4) as pool:
        ready = list(pool.map(lambda _: cache.ready(atlas), range(8)))
    assert all(r is atlas for r in ready)
    assert atlas.loaded
    index = atlas.index
    assert cache.ready(atlas).index is index
