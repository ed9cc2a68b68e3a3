"""Malformed expression matrices are refused before any arithmetic, naming the file and the fault.

Each file is a valid .h5ad written by anndata, then damaged with h5py the way a faulty writer
would: a column index past the last gene (scipy's compiled routines crash on it), an indptr that
decreases (rows silently scrambled), data shorter than indices, values that are not numbers.
"""

import re

import h5py
import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_counts
from serving import in_process, small_atlas
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.cli import app
from screader_db.errors import InputDataError
from screader_db.inputs import open_expression, read_h5ad
from screader_db.matrix_rows import check_structure, read_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return small_atlas(tmp_path_factory.mktemp("malformed") / "atlas")


def _valid(path, *, csc=False):
    adata = make_counts(n_cells=40, seed=4)
    if csc:
        adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(path)
    return path


def _replace(handle, name, values):
    del handle[name]
    handle.create_dataset(name, data=values)


def out_of_range_column(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        indices = handle["X/indices"][:]
        indptr = handle["X/indptr"][:]
        indices[indptr[7] + 1] = 10**8
        _replace(handle, "X/indices", indices)
    return r"X/indices holds gene index 100,000,000 \(in cell 7\), but there are 50 genes \(indices 0 to 49\)"


def negative_column(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        indices = handle["X/indices"][:].astype(np.int64)
        indices[3] = -2
        _replace(handle, "X/indices", indices)
    return r"X/indices holds gene index -2 \(in cell 0\)"


def decreasing_indptr(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        indptr = handle["X/indptr"][:]
        indptr[3], indptr[4] = indptr[4], indptr[3]
        handle["X/indptr"][:] = indptr
    return r"X/indptr decreases at cell 3 \(\d+ then \d+\); it must never decrease"


def indptr_past_the_end(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        indptr = handle["X/indptr"][:]
        indptr[-1] += 5
        handle["X/indptr"][:] = indptr
    return r"X/indptr runs from 0 to [\d,]+; it must run from 0 to the number of stored values"


def data_shorter_than_indices(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        _replace(handle, "X/data", handle["X/data"][:-10])
    return r"X/data holds [\d,]+ values but X/indices [\d,]+; each stored value needs one index"


def text_values(path):
    _valid(path)
    with h5py.File(path, "r+") as handle:
        _replace(handle, "X/data", np.array([str(v).encode() for v in handle["X/data"][:]]))
    return r"holds values of type \|S\d+ in X/data, not numbers"


def csc_out_of_range_row(path):
    _valid(path, csc=True)
    with h5py.File(path, "r+") as handle:
        indices = handle["X/indices"][:]
        indices[0] = 5000
        _replace(handle, "X/indices", indices)
    return r"X/indices holds cell index 5,000 \(in gene 0\), but there are 40 cells"


FAULTS = [out_of_range_column, negative_column, decreasing_indptr, indptr_past_the_end, data_shorter_than_indices,
          text_values, csc_out_of_range_row]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_annotate_path_refuses_a_malformed_matrix_naming_the_file(fault, atlas, tmp_path):
    path = tmp_path / "query.h5ad"
    pattern = fault(path)
    with pytest.raises(InputDataError, match=pattern) as raised:
        annotate(path, atlas)
    assert f"the expression matrix X of {path} is malformed" in str(raised.value) or "not numbers" in str(raised.value)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_query_command_refuses_a_malformed_matrix(fault, atlas, tmp_path):
    path = tmp_path / "query.h5ad"
    pattern = fault(path)
    out, table = tmp_path / "result.h5ad", tmp_path / "result.csv"
    result = runner.invoke(app, ["query", str(path), "--atlas", str(atlas), "--out", str(out), "--table", str(table),
                                 "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert text.startswith(f"Error: the expression matrix X of {path}"), text
    assert re.search(pattern, text), text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["query.h5ad"]


def test_an_in_memory_matrix_is_checked_too(atlas, tmp_path):
    path = tmp_path / "query.h5ad"
    pattern = out_of_range_column(path)
    adata = read_h5ad(path)  # scipy builds the matrix without looking at its indices
    with pytest.raises(InputDataError, match=pattern) as raised:
        annotate(adata, atlas)
    assert "the expression matrix X is malformed" in str(raised.value)
    assert adata.X.indices.max() == 10**8  # the caller's data is left as it was


def test_a_malformed_layer_is_named(tmp_path):
    adata = make_counts(n_cells=20, seed=1)
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        indptr = handle["layers/counts/indptr"][:]
        indptr[2], indptr[3] = indptr[3], indptr[2]
        handle["layers/counts/indptr"][:] = indptr
    source = open_expression(read_h5ad(path, backed=True), layer="counts")
    with pytest.raises(InputDataError, match=r"the expression matrix layers/counts of .*q.h5ad is malformed: "
                                             r"layers/counts/indptr decreases at cell 2"):
        list(source.chunks(7))


def test_dense_text_is_refused():
    matrix = np.full((3, 4), b"a")
    with pytest.raises(InputDataError, match=r"the expression matrix X holds values of type \|S1 in X, not numbers"):
        check_structure(matrix, where="X", origin=None)


def test_valid_blocks_read_the_same_as_scipy(tmp_path):
    adata = make_counts(n_cells=50, seed=5)
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    backed = read_h5ad(path, backed=True)
    check_structure(backed.X, where="X", origin=str(path))
    for start, stop in ((0, 50), (7, 19), (49, 50), (10, 10)):
        block = read_rows(backed.X, start, stop)
        assert block.dtype == np.float32 and block.shape == (stop - start, 50)
        assert (block != adata.X[start:stop]).nnz == 0


def test_the_server_answers_a_malformed_upload_with_422_and_keeps_serving(atlas, tmp_path):
    from screader_db.server import create_app

    path = tmp_path / "query.h5ad"
    out_of_range_column(path)
    with in_process(create_app(atlas)) as client:
        with open(path, "rb") as handle:
            answer = client.post("/annotate", files={"file": ("query.h5ad", handle, "application/octet-stream")})
        assert answer.status_code == 422, answer.text
        assert "gene index 100,000,000" in answer.json()["error"]
        assert str(tmp_path) not in answer.text
        assert client.get("/health").status_code == 200


def test_a_server_process_answers_a_malformed_upload_and_keeps_answering(atlas, tmp_path):
    """Once a segfault in the sparse arithmetic: in a process of its own, the server must survive it."""
    from serving import serve_process

    path = tmp_path / "query.h5ad"
    out_of_range_column(path)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with serve_process(atlas, temp=uploads) as (url, process), httpx.Client(timeout=60) as client:
        with open(path, "rb") as handle:
            answer = client.post(f"{url}/annotate", files={"file": ("query.h5ad", handle, "application/octet-stream")})
        assert answer.status_code == 422, answer.text
        assert "gene index 100,000,000" in answer.json()["error"]
        assert client.get(f"{url}/health").status_code == 200
        assert process.poll() is None
        assert not list(uploads.iterdir()), "the upload was removed"
