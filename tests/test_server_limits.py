"""What a request declares, read before it is parsed or its matrix is touched."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_counts

from screader_db.errors import RequestTooLargeError, ScreaderError
from screader_db.server_limits import ServerLimits, check_declared, check_json_body, h5ad_shape


def test_the_declared_shape_of_an_h5ad(tmp_path):
    adata = make_counts(n_cells=30, seed=1)
    adata.layers["dense"] = adata.X.toarray()
    adata.raw = ad.AnnData(X=sp.csr_matrix(np.ones((30, 70), dtype=np.float32)))
    adata.write_h5ad(tmp_path / "q.h5ad")
    assert h5ad_shape(tmp_path / "q.h5ad") == (30, 50)
    assert h5ad_shape(tmp_path / "q.h5ad", layer="dense") == (30, 50)
    assert h5ad_shape(tmp_path / "q.h5ad", use_raw=True) == (30, 70)
    (tmp_path / "text.h5ad").write_text("not hdf5")
    assert h5ad_shape(tmp_path / "text.h5ad") is None


def test_limits_on_cells_values_and_json_values():
    limits = ServerLimits(max_cells=100, max_values=1000)
    check_declared(100, 10, limits, what="the query")
    with pytest.raises(RequestTooLargeError, match="the query declares 101 cells; this server annotates at most 100"):
        check_declared(101, 1, limits, what="the query")
    with pytest.raises(RequestTooLargeError, match="declares 50 cells × 21 genes = 1,050 values; this server accepts at most 1,000"):
        check_declared(50, 21, limits, what="the query")
    check_json_body(b"[" + b",".join([b"0"] * 1000) + b"]", limits)
    with pytest.raises(RequestTooLargeError, match="the JSON body holds about 1,001 values"):
        check_json_body(b"[" + b",".join([b"0"] * 1001) + b"]", limits)
    with pytest.raises(ScreaderError, match="max_cells must be above 0, got 0"):
        ServerLimits(max_cells=0)
    assert 1 <= ServerLimits(max_connections=10**9).connection_cap() < 10**9
