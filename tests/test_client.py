"""The Python client against the server application in this process: results equal annotate(), errors are
RemoteError; an address where nothing listens is a RemoteError too."""

import socket

import numpy as np
import pytest
from conftest import make_counts
from serving import TOKEN, in_process_client, small_atlas

import screader_db
from screader_db import annotate
from screader_db.errors import InputDataError, RemoteError
from screader_db.results import AnnotationResult
from screader_db.server import create_app


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return small_atlas(tmp_path_factory.mktemp("client") / "atlas")


@pytest.fixture(scope="module")
def client(atlas):
    with in_process_client(create_app(atlas, token=TOKEN)) as connected:
        yield connected


def _assert_same(remote: AnnotationResult, local: AnnotationResult) -> None:
    assert list(remote.table.columns) == list(local.table.columns)
    assert list(remote.table.index) == list(local.table.index)
    for column in ("label", "second_label", "raw_label", "knn_label"):
        assert list(remote.table[column]) == list(local.table[column]), column
    for column in ("score", "margin", "mean_similarity"):
        assert np.array_equal(remote.table[column].to_numpy(), local.table[column].to_numpy(dtype=float)), column
    assert remote.atlas_labels == local.atlas_labels


def test_annotate_anndata_path_and_counts(client, atlas, tmp_path):
    query = make_counts(n_cells=40, seed=4)
    local = annotate(query, atlas, k=9)
    remote = client.annotate(query, k=9)
    _assert_same(remote, local)
    assert remote.info["atlas_version"] == 1 and remote.info["k"] == 9
    assert remote.embeddings.shape == (40, 0) and remote.neighbour_ids.shape == (40, 0)
    assert remote.summary()["cells"].sum() == 40
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    _assert_same(client.annotate(path, k=9), local)
    counted = client.annotate_counts(query.X, genes=list(query.var_names), cells=list(query.obs_names), k=9)
    _assert_same(counted, local)
    _assert_same(client.annotate(query, k=9, labels=["type1", "type2"]), annotate(query, atlas, k=9, labels=["type1", "type2"]))
    strict = client.annotate(query, min_score=1.0)
    assert strict.n_unassigned == annotate(query, atlas, min_score=1.0).n_unassigned


def test_health_datasets_versions(client):
    assert client.health()["version"] == 1
    assert [d["name"] for d in client.datasets()] == ["synthetic"]
    assert [(v["version"], v["current"]) for v in client.versions()] == [(1, True)]


def test_errors_become_remote_errors(client, atlas, tmp_path):
    with pytest.raises(RemoteError, match="failed with HTTP 401: no token was sent") as caught:
        client.remove_dataset("synthetic")
    assert caught.value.status == 401
    with pytest.raises(RemoteError, match="HTTP 422: the query shares only 2 genes with the atlas's reference"):
        client.annotate_counts([[1, 2]], genes=["INS", "GCG"])
    with pytest.raises(InputDataError, match="does not exist; pass an AnnData or the path of an .h5ad file"):
        client.annotate(tmp_path / "none.h5ad")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(RemoteError, match=f"cannot reach the screader-db server at http://127.0.0.1:{free}"):
        screader_db.Client(f"http://127.0.0.1:{free}", timeout=5).health()


def test_add_and_remove_datasets_with_the_token(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    with in_process_client(create_app(root, token=TOKEN), token=TOKEN) as client:
        added = client.add_dataset(make_counts(n_cells=80, seed=11), name="extra", label_key="cell_type")
        assert added["version"] == 2
        assert sorted(d["name"] for d in client.datasets()) == ["extra", "synthetic"]
        assert client.remove_dataset("extra")["version"] == 3
        assert [d["name"] for d in client.datasets()] == ["synthetic"]
