"""The Dask build: a LocalCluster of 2 workers gives the same vectors and labels as one machine."""

import numpy as np
import pytest

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.synthetic import write_h5ad

pytest.importorskip("dask.distributed")


def test_dask_build_matches_the_single_machine_build(tmp_path):
    reference = write_h5ad(tmp_path / "ref.h5ad", 3000, n_types=6, n_genes=800, chunk=1000, seed=1)
    query = write_h5ad(tmp_path / "query.h5ad", 300, n_types=6, n_genes=800, chunk=300, seed=1)
    settings = BuildSettings(model="random:32", method="genept", n_genes=300, layout="none")
    local = build_atlas(reference, tmp_path / "local", label_key="cell_type", settings=settings, chunk=700)
    spread = build_atlas(reference, tmp_path / "dask", label_key="cell_type", settings=settings, chunk=700,
                         dask="local")
    ids_a, vec_a = local.embeddings()
    ids_b, vec_b = spread.embeddings()
    order_a, order_b = np.argsort(ids_a), np.argsort(ids_b)
    np.testing.assert_array_equal(ids_a[order_a], ids_b[order_b])
    assert vec_a[order_a].tobytes() == vec_b[order_b].tobytes()
    assert local.cells()["label"].equals(spread.cells()["label"])
    assert sorted(p.name for p in spread.cell_parts()) == [f"part-{i:05d}.parquet" for i in range(5)]
    a, b = annotate(query, local), annotate(query, spread)
    assert a.labels.equals(b.labels)
    np.testing.assert_array_equal(a.neighbour_ids, b.neighbour_ids)


def test_dask_needs_a_file(tmp_path):
    from conftest import make_counts

    from screader_db.errors import ScreaderError

    with pytest.raises(ScreaderError, match="--dask needs the reference as an .h5ad path"):
        build_atlas(make_counts(n_cells=50), tmp_path / "a", label_key="cell_type", dask="local",
                    settings=BuildSettings(model="random:16", method="genept", n_genes=30, layout="none"))
