"""Atlas versions: atomic publishing, reading old versions, refusing foreign formats."""

import json
import os

import duckdb
import pytest

from screader_db import store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.errors import AtlasError, OutputExistsError

RANDOM = BuildSettings(model="random:16", method="genept", n_genes=40, layout="none")


def _build(adata, root, **kw):
    return build_atlas(adata, root, label_key="cell_type", dataset_name="synthetic", settings=RANDOM, **kw)


def test_build_writes_every_part_with_provenance(counts_adata, tmp_path):
    atlas = _build(counts_adata, tmp_path / "a")
    folder = atlas.path
    for name in ("VERSION.json", "genes.parquet", "gene_embeddings.parquet", "embedder.safetensors", "index.faiss",
                 "index.faiss.json", "atlas.duckdb", "cells/synthetic/part-00000.parquet"):
        assert (folder / name).is_file(), name
    assert os.readlink(tmp_path / "a" / "current") == "versions/000001"
    con = duckdb.connect(str(tmp_path / "a" / "atlas.duckdb"), read_only=True)
    counts = dict(con.execute("SELECT label, count(*) FROM cells GROUP BY 1").fetchall())
    assert sum(counts.values()) == counts_adata.n_obs
    assert con.execute("SELECT count(*) FROM provenance").fetchone()[0] == 7
    model = con.execute("SELECT model_id, method FROM builds").fetchone()
    assert model == ("random:16:0", "genept")
    files = dict(con.execute("SELECT path, sha256 FROM files").fetchall())
    assert "index.faiss" in files and "cells/synthetic/part-00000.parquet" in files
    con.close()
    import pyarrow.parquet as pq

    for part in ("genes.parquet", "gene_embeddings.parquet", "cells/synthetic/part-00000.parquet"):
        meta = pq.read_schema(folder / part).metadata[b"screader_db.provenance"]
        assert json.loads(meta)["model_id"] == "random:16:0"
    sidecar = json.loads((folder / "index.faiss.json").read_text())
    assert sidecar["provenance"]["method"] == "genept"


def test_existing_atlas_needs_overwrite_and_keeps_old_versions(counts_adata, tmp_path):
    _build(counts_adata, tmp_path / "a")
    with pytest.raises(OutputExistsError, match="an atlas already exists at .*; pass --overwrite"):
        _build(counts_adata, tmp_path / "a")
    second = _build(counts_adata[:100].copy(), tmp_path / "a", overwrite=True)
    assert second.version == 2
    assert store.list_versions(tmp_path / "a") == [1, 2]
    assert len(store.open_atlas(tmp_path / "a", version=1).cells()) == counts_adata.n_obs
    assert len(store.open_atlas(tmp_path / "a").cells()) == 100


def test_missing_and_foreign_atlases(counts_adata, tmp_path):
    with pytest.raises(AtlasError, match="no atlas at .*: the folder does not exist"):
        store.open_atlas(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(AtlasError, match="is not a screader-db atlas"):
        store.open_atlas(tmp_path / "plain")
    atlas = _build(counts_adata, tmp_path / "a")
    meta_path = atlas.path / "VERSION.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "screader-atlas-0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AtlasError, match="has format 'screader-atlas-0'; this screader-db reads 'screader-atlas-1'"):
        store.open_atlas(tmp_path / "a")
    with pytest.raises(AtlasError, match="has no version 9; versions present: 1"):
        store.open_atlas(tmp_path / "a", version=9)


def test_failed_build_leaves_the_previous_version(counts_adata, tmp_path, monkeypatch):
    _build(counts_adata, tmp_path / "a")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("screader_db.index.CellIndex.save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _build(counts_adata, tmp_path / "a", overwrite=True)
    assert store.current_version(tmp_path / "a") == 1
    assert not list((tmp_path / "a" / "versions").glob(".staging-*"))
    assert len(store.open_atlas(tmp_path / "a").cells()) == counts_adata.n_obs


def test_the_donor_is_the_first_donor_column_the_reference_recorded():
    assert store.donor_of({"Sample": "s1", "donor_id": "d7", "n_genes": "812"}) == "d7"
    assert store.donor_of({"SAMPLE": "s1"}) == "s1"
    assert store.donor_of({"donor": "nan", "batch": "b2"}) == "b2"
    assert store.donor_of({"n_genes": "812"}) == ""


@pytest.fixture(scope="module")
def wide_atlas(tmp_path_factory):
    """Enough cells that pandas takes a while to build a cell index's hash table (the race's window)."""
    from conftest import make_counts

    return _build(make_counts(n_cells=20_000, seed=8), tmp_path_factory.mktemp("wide") / "a").root


def test_a_freshly_opened_atlas_is_shared_by_many_threads_at_once(wide_atlas):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd

    failures = []

    def lookup(opened, start):
        start.wait()
        cells = opened.cells(["label"])
        codes = pd.Series(np.arange(len(cells)), index=cells.index)
        try:
            codes.reindex(cells.index.to_numpy()[::7])
        except ValueError as err:
            failures.append(str(err))

    for _ in range(10):
        opened, start = store.open_atlas(wide_atlas), threading.Barrier(24)
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lookup, [opened] * 24, [start] * 24))
    assert failures == []


def test_many_threads_annotate_with_one_freshly_opened_atlas(wide_atlas):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from conftest import make_counts

    from screader_db import annotate

    query = make_counts(n_cells=30, seed=9)
    expected = annotate(query, wide_atlas).table["label"].tolist()

    def one(opened, start):
        start.wait()
        return annotate(query.copy(), opened).table["label"].tolist()

    for _ in range(3):
        opened, start = store.open_atlas(wide_atlas), threading.Barrier(8)
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, [opened] * 8, [start] * 8)) == [expected] * 8
