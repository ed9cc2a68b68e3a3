"""The HTTP server in process through its ASGI app: annotation equals annotate(), auth, limits, version
switches; and `screader-db serve` as a process over real HTTP on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_counts
from serving import TOKEN, in_process, serve_process, small_atlas
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.cli import app as cli_app
from screader_db.errors import AtlasError
from screader_db.server import create_app
from screader_db.server_limits import ServerLimits
from screader_db.store import open_atlas

LIMIT = 400_000
http = httpx.Client(timeout=120)
ROW_COLUMNS = ["cell", "label", "score", "confidence", "vote_confidence", "marker_evidence", "margin", "second_label",
               "mean_similarity", "raw_label", "knn_label", "unassigned_reason", "call_level", "score_type0", "score_type1",
               "score_type2"]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return small_atlas(tmp_path_factory.mktemp("served") / "atlas")


@pytest.fixture(scope="module")
def api(atlas):
    """The atlas's application, with a token and body limits, answering in this process."""
    limits = ServerLimits(max_upload_bytes=LIMIT, max_json_bytes=LIMIT)
    with in_process(create_app(atlas, token=TOKEN, limits=limits)) as client:
        yield client


@pytest.fixture(scope="module")
def query(tmp_path_factory):
    adata = make_counts(n_cells=60, seed=3)
    path = tmp_path_factory.mktemp("query") / "query.h5ad"
    adata.write_h5ad(path)
    return adata, path


def _same_as_local(rows, local):
    assert [r["cell"] for r in rows] == list(local.table.index)
    for column in ("label", "second_label", "raw_label", "knn_label"):
        assert [r[column] for r in rows] == list(local.table[column]), column
    for column in ("score", "margin", "mean_similarity"):
        assert np.array_equal(np.array([r[column] for r in rows]), local.table[column].to_numpy(dtype=float)), column


def test_health_datasets_versions(api, atlas):
    health = api.get("/health").json()
    assert health["status"] == "ok" and health["version"] == 1 and health["model_id"] == "random:16:0"
    assert health["cells"] == 200 and health["datasets"] == 1
    datasets = api.get("/datasets").json()
    assert datasets["version"] == 1
    assert [(d["name"], d["n_cells"], d["label_key"]) for d in datasets["datasets"]] == [("synthetic", 200, "cell_type")]
    versions = api.get("/versions").json()
    assert versions["current"] == 1
    assert [(v["version"], v["current"], v["n_cells"], v["datasets"], v["action"]) for v in versions["versions"]] == \
        [(1, True, 200, 1, "build")]
    assert api.get("/docs").status_code == 200
    assert "/annotate" in api.get("/openapi.json").json()["paths"]


def test_annotate_h5ad_upload_equals_local_annotate(api, atlas, query):
    adata, path = query
    with open(path, "rb") as handle:
        response = api.post("/annotate", params={"k": 10, "min_score": 0.5},
                            files={"file": ("query.h5ad", handle)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["cells"][0]) == ROW_COLUMNS
    _same_as_local(body["cells"], annotate(adata, atlas, k=10, min_score=0.5))
    assert body["info"]["atlas_version"] == 1 and body["info"]["k"] == 10
    assert body["labels"] == ["type0", "type1", "type2"]


def test_annotate_json_counts_equals_local_annotate(api, atlas, query):
    adata, _ = query
    payload = {"genes": list(adata.var_names), "cells": list(adata.obs_names), "counts": adata.X.toarray().tolist()}
    response = api.post("/annotate", json=payload, params={"k": 7, "level": "harmonised"})
    assert response.status_code == 200, response.text
    _same_as_local(response.json()["cells"], annotate(adata, atlas, k=7, level="harmonised"))
    assert response.json()["info"]["level"] == "harmonised"
    logged = adata.copy()
    logged.X = np.log1p(logged.X.toarray() / logged.X.sum(axis=1).A * 1e4)
    payload["counts"] = logged.X.tolist()
    response = api.post("/annotate", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["info"]["input_kind"] != "counts"


def test_annotate_restricted_to_some_atlas_cells(api, atlas, query):
    adata, path = query
    params = {"datasets": ["synthetic"], "exclude_labels": ["type0"]}
    with open(path, "rb") as handle:
        response = api.post("/annotate", params=params, files={"file": ("query.h5ad", handle)})
    assert response.status_code == 200, response.text
    assert {r["label"] for r in response.json()["cells"]} <= {"type1", "type2"}
    _same_as_local(response.json()["cells"], annotate(adata, atlas, datasets=["synthetic"], exclude_labels=["type0"]))
    unknown = api.post("/annotate", params={"datasets": "nope"}, files={"file": ("query.h5ad", path.read_bytes())})
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "the atlas has no data set 'nope'; known: synthetic"


def test_worker_processes_answer_like_the_server_process(atlas, query):
    """With workers, annotations run in other processes: same rows, same one-line errors, the upload named."""
    adata, path = query
    app = create_app(atlas, preload=True, workers=2)
    try:
        assert app.state.workers.n == 2
        with in_process(app) as client:
            with open(path, "rb") as handle:
                uploaded = client.post("/annotate", params={"k": 10}, files={"file": ("query.h5ad", handle)})
            assert uploaded.status_code == 200, uploaded.text
            _same_as_local(uploaded.json()["cells"], annotate(adata, atlas, k=10))
            payload = {"genes": list(adata.var_names), "counts": adata.X.toarray().tolist()}
            counted = client.post("/annotate", json=payload)
            assert counted.status_code == 200, counted.text
            _same_as_local(counted.json()["cells"], annotate(adata, atlas))
            damaged = client.post("/annotate", files={"file": ("bad.h5ad", b"not an h5ad")})
            assert damaged.status_code == 422
            assert damaged.json()["error"].startswith("the uploaded file 'bad.h5ad' is not an .h5ad file")
            few = client.post("/annotate", json={"genes": ["INS", "GCG"], "counts": [[1, 2]]})
            assert few.status_code == 422 and "shares only 2 genes" in few.json()["error"]
            app.state.workers.warm(open_atlas(atlas))
            pids = app.state.workers.pids()
            assert len(pids) == 2
            for pid in pids:  # every worker: one left alive could answer the next request
                os.kill(pid, signal.SIGKILL)
            lost = client.post("/annotate", json=payload)
            assert lost.status_code == 503, lost.text
            assert lost.json()["error"].startswith("the process annotating this request stopped before it answered")
            again = client.post("/annotate", json=payload)  # new workers answer
            assert again.status_code == 200, again.text
            _same_as_local(again.json()["cells"], annotate(adata, atlas))
    finally:
        app.state.workers.close()


@pytest.mark.parametrize(("request_kw", "status", "message"), [
    ({"json": {"genes": ["INS"], "counts": [[1, 2]]}}, 422,
     "row 0 of counts has 2 values for 1 genes; each row needs one value per gene"),
    ({"json": {"genes": ["INS", "GCG"], "cells": ["a"], "counts": [[1, 2], [3, 4]]}}, 422,
     "1 cell names for 2 rows of counts; send one name per row"),
    ({"json": {"counts": [[1]]}}, 422, 'the JSON body is not {"genes": [...], "cells": [...], "counts": [[...], ...]}: '
     "genes: Field required"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "the JSON body is not"),
    ({"json": {"genes": ["INS", "GCG"], "counts": [[1, 2]]}}, 422,
     "the query shares only 2 genes with the atlas's reference (50 genes); at least"),
    ({"json": {"genes": ["NOTAGENE1"], "counts": [[1]]}}, 422,
     "none of the 1 gene names could be mapped to human gene symbols"),
    ({"files": {"file": ("bad.h5ad", b"not an h5ad")}}, 422,
     "the uploaded file 'bad.h5ad' is not an .h5ad file (no HDF5 signature); save it with AnnData's write_h5ad"),
    ({"files": {"other": ("x.h5ad", b"x")}}, 422, "no file in the form: send the .h5ad as multipart/form-data field 'file'"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type 'text/plain'"),
    ({"params": {"k": 0}, "json": {"genes": ["INS"], "counts": [[1]]}}, 400,
     "invalid request: query.k: Input should be greater than or equal to 1"),
    ({"params": {"level": "cluster"}, "json": {"genes": ["INS"], "counts": [[1]]}}, 400,
     "level must be one of label, fine, harmonised, ontology, broad, got 'cluster'"),
    ({"params": {"model": "minilm"}, "json": {"genes": ["INS"], "counts": [[1]]}}, 409,
     "was built with gene-embedding model 'random:16:0', not 'minilm'"),
], ids=["row-length", "cell-names", "no-genes", "bad-json", "small-overlap", "no-symbols", "bad-h5ad", "no-file",
        "content-type", "k", "level", "model"])
def test_annotate_input_errors_are_json(api, request_kw, status, message):
    response = api.post("/annotate", **request_kw)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "screader-upload" not in response.json()["error"]


def test_write_endpoints_need_the_token(api, atlas):
    files = {"file": ("ref.h5ad", b"x")}
    missing = api.post("/datasets", files=files, data={"name": "x", "label_key": "cell_type"})
    assert missing.status_code == 401
    assert missing.json() == {"error": "no token was sent; send the header 'Authorization: Bearer <token>'"}
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = api.delete("/datasets/synthetic", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"].startswith("a wrong token was sent")
    assert api.get("/health").json()["version"] == 1
    with in_process(create_app(atlas)) as read_only:
        refused = read_only.delete("/datasets/synthetic", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("writing is disabled on this server: its operator can start it with "
                                              "SCREADER_DB_TOKEN set or with a token file")


def test_oversized_bodies_are_refused_with_413(api, query):
    big = b"x" * (LIMIT + 1)
    declared = api.post("/annotate", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"] == ("the JSON body is larger than this server's limit of 0.4 MB (it has 0.4 MB); "
                                        "send fewer cells per request, or send them as an .h5ad upload")

    def chunks():
        for _ in range(LIMIT // 50_000 + 2):
            yield b"x" * 50_000

    streamed = api.post("/annotate", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.request.headers.get("content-length") is None
    assert streamed.status_code == 413
    assert streamed.json()["error"].startswith("the JSON body is larger than this server's limit of 0.4 MB;")
    upload = api.post("/annotate", files={"file": ("big.h5ad", big)})
    assert upload.status_code == 413
    _, path = query
    with open(path, "rb") as handle:
        assert api.post("/annotate", files={"file": ("query.h5ad", handle)}).status_code == 200


def test_concurrent_requests_are_served(api, query):
    _, path = query
    content = path.read_bytes()

    def one(_):
        return api.post("/annotate", files={"file": ("q.h5ad", content)}).json()["cells"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(12)))
    assert all(r == results[0] for r in results)


def test_a_new_version_is_served_without_restart(tmp_path, query):
    root = small_atlas(tmp_path / "atlas")
    adata, _ = query
    payload = {"genes": list(adata.var_names), "counts": adata.X.toarray().tolist()}
    with in_process(create_app(root)) as server:
        assert server.get("/health").json()["version"] == 1
        first = server.post("/annotate", json=payload).json()
        small_atlas(root, n_cells=150, seed=7, overwrite=True)
        health = server.get("/health").json()
        assert (health["version"], health["cells"]) == (2, 150)
        second = server.post("/annotate", json=payload).json()
        assert first["info"]["atlas_version"] == 1 and second["info"]["atlas_version"] == 2
        versions = server.get("/versions").json()
        assert [(v["version"], v["current"]) for v in versions["versions"]] == [(1, False), (2, True)]


def test_missing_atlas_is_503(tmp_path):
    with in_process(create_app(tmp_path / "none")) as server:
        response = server.get("/health")
    assert response.status_code == 503
    assert response.json()["error"].startswith("no atlas at")


def test_add_and_remove_datasets(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    extra = tmp_path / "extra.h5ad"
    make_counts(n_cells=80, seed=11).write_h5ad(extra)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = {"name": "extra", "label_key": "cell_type"}
    with in_process(create_app(root, token=TOKEN)) as server:
        added = server.post("/datasets", headers=auth, files={"file": ("extra.h5ad", extra.read_bytes())}, data=form)
        assert added.status_code == 201, added.text
        assert added.json() == {"dataset": "extra", "version": 2, "cells": 280}
        assert server.get("/health").json()["cells"] == 280
        names = [d["name"] for d in server.get("/datasets").json()["datasets"]]
        assert sorted(names) == ["extra", "synthetic"]
        again = server.post("/datasets", headers=auth, files={"file": ("extra.h5ad", extra.read_bytes())}, data=form)
        assert again.status_code == 409
        assert again.json()["error"].startswith("the atlas already has a data set named 'extra'")
        removed = server.delete("/datasets/extra", headers=auth)
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"removed": "extra", "version": 3, "cells": 200}
        assert [d["name"] for d in server.get("/datasets").json()["datasets"]] == ["synthetic"]
        unknown = server.delete("/datasets/extra", headers=auth)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "the atlas has no data set named 'extra'; data sets: synthetic"
        last = server.delete("/datasets/synthetic", headers=auth)
        assert last.status_code == 409 and "is the atlas's only data set" in last.json()["error"]
        incomplete = server.post("/datasets", headers=auth, files={"file": ("extra.h5ad", b"x")})
        assert incomplete.status_code == 422 and "send the form fields 'name'" in incomplete.json()["error"]
        actions = [v["action"] for v in server.get("/versions").json()["versions"]]
        assert actions == ["build", "add extra", "remove extra"]


def test_serve_command(atlas, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli_app, ["serve", "--atlas", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "Error: no atlas at" in missing.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    no_token = runner.invoke(cli_app, ["serve", "--atlas", str(atlas), "--token-file", str(empty)])
    assert no_token.exit_code == 1 and "is empty; write the token into it" in " ".join(no_token.output.split())
    assert "Example:" in runner.invoke(cli_app, ["serve", "--help"]).output
    empty.write_text(TOKEN + "\n")
    with serve_process(atlas, "--token-file", str(empty), "--max-upload-mb", "0.2") as (base, _):
        assert http.get(f"{base}/health").json()["status"] == "ok"
        assert http.post(f"{base}/annotate", content=b"x" * 200_001).status_code == 413
        unauthorised = http.delete(f"{base}/datasets/x", headers={"Authorization": "Bearer nope"})
        assert unauthorised.status_code == 401


def test_sql_and_serve_help_import_nothing_heavy():
    code = ("import sys; from typer.testing import CliRunner; from screader_db.cli import app; "
            "[CliRunner().invoke(app, [c, '--help']) for c in ('sql', 'serve')]; "
            "print(json.dumps([m for m in ('duckdb', 'fastapi', 'uvicorn', 'httpx', 'anndata') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _h5py_query(path, n_obs, n_vars, *, nnz=10):
    """An .h5ad written with h5py whose CSR X declares ``n_obs`` × ``n_vars`` but holds a few values."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = handle.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_obs, n_vars)})
        X.create_dataset("data", data=np.ones(nnz, dtype=np.float32))
        X.create_dataset("indices", data=np.arange(nnz, dtype=np.int32))
        X.create_dataset("indptr", data=np.concatenate([[0], np.full(n_obs, nnz)]).astype(np.int64))
        for name, n in (("obs", n_obs), ("var", n_vars)):
            group = handle.create_group(name)
            group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
            group.attrs.create("column-order", np.array([], dtype=h5py.string_dtype()))
            group.create_dataset("_index", data=np.array([f"{name}{i}" for i in range(n)], dtype=object),
                                 dtype=h5py.string_dtype())
    return path


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """The folder the in-thread server's uploads (and Starlette's spooled form files) go to."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_requests_declaring_more_than_the_limits_are_refused_with_413(atlas, query, tmp_path, uploads):
    limits = ServerLimits(max_cells=1000, max_values=1000 * 60)
    adata, path = query
    with in_process(create_app(atlas, limits=limits)) as server:
        huge = _h5py_query(tmp_path / "huge.h5ad", 100_000, 14_877)
        began = time.monotonic()
        response = server.post("/annotate", files={"file": ("huge.h5ad", huge.read_bytes())})
        assert response.status_code == 413 and time.monotonic() - began < 5
        assert response.json()["error"] == ("the uploaded file 'huge.h5ad' declares 100,000 cells; this server annotates "
                                            "at most 1,000 cells per request. Send the cells in several requests")
        wide = _h5py_query(tmp_path / "wide.h5ad", 500, 200)
        response = server.post("/annotate", files={"file": ("wide.h5ad", wide.read_bytes())})
        assert response.status_code == 413
        assert response.json()["error"].startswith("the uploaded file 'wide.h5ad' declares 500 cells × 200 genes = "
                                                   "100,000 values; this server accepts at most 60,000 per request")
        many = {"genes": list(adata.var_names), "counts": [[0] * adata.n_vars] * 1500}
        response = server.post("/annotate", json=many)
        assert response.status_code == 413
        assert response.json()["error"].startswith("the JSON body holds about 75,")
        fits = {"genes": list(adata.var_names), "counts": adata.X.toarray().tolist()}
        assert server.post("/annotate", json=fits).status_code == 200
        with open(path, "rb") as handle:
            assert server.post("/annotate", files={"file": ("query.h5ad", handle)}).status_code == 200
    assert list(uploads.iterdir()) == []


def test_failed_requests_leave_no_upload_behind(atlas, query, tmp_path, uploads):
    adata, _ = query
    few = adata[:, :2].copy()
    few.write_h5ad(tmp_path / "few.h5ad")
    with in_process(create_app(atlas, token=TOKEN)) as server:
        failing = [
            server.post("/annotate", files={"file": ("bad.h5ad", b"\x89HDF\r\n\x1a\n" + b"x" * 5000)}),
            server.post("/annotate", files={"file": ("few.h5ad", (tmp_path / "few.h5ad").read_bytes())}),
            server.post("/annotate", params={"model": "minilm"},
                        files={"file": ("few.h5ad", (tmp_path / "few.h5ad").read_bytes())}),
            server.post("/datasets", headers={"Authorization": f"Bearer {TOKEN}"}, data={"name": "x", "label_key": "nope"},
                        files={"file": ("few.h5ad", (tmp_path / "few.h5ad").read_bytes())}),
        ]
    assert [r.status_code for r in failing] == [422, 422, 409, 422], [r.text for r in failing]
    assert all("screader-upload" not in r.text and str(tmp_path) not in r.text for r in failing)
    assert list(uploads.iterdir()) == []


@pytest.fixture(scope="module")
def wide_atlas(tmp_path_factory):
    """Enough cells that pandas takes a while to build a cell index's hash table."""
    return small_atlas(tmp_path_factory.mktemp("wide") / "atlas", n_cells=20_000, seed=4)


def test_fresh_servers_answer_simultaneous_uploads_without_errors(wide_atlas, tmp_path):
    make_counts(n_cells=20, seed=6).write_h5ad(tmp_path / "q.h5ad")
    content = (tmp_path / "q.h5ad").read_bytes()
    start = threading.Barrier(16)

    def one(server):
        start.wait()
        return server.post("/annotate", files={"file": ("q.h5ad", content)})

    answers = []
    for _ in range(10):
        with in_process(create_app(wide_atlas)) as server, ThreadPoolExecutor(16) as pool:
            answers += list(pool.map(one, [server] * 16))
    assert [r.status_code for r in answers] == [200] * 160, next(r.text for r in answers if r.status_code != 200)
    assert len({json.dumps(r.json()["cells"]) for r in answers}) == 1
    make_counts(n_cells=50, seed=12).write_h5ad(tmp_path / "extra.h5ad")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with in_process(create_app(wide_atlas, token=TOKEN)) as server, ThreadPoolExecutor(16) as pool:
        added = server.post("/datasets", headers=auth, data={"name": "extra", "label_key": "cell_type"},
                            files={"file": ("extra.h5ad", (tmp_path / "extra.h5ad").read_bytes())})
        assert added.status_code == 201, added.text
        after_add = list(pool.map(one, [server] * 16))
        assert server.delete("/datasets/extra", headers=auth).status_code == 200
        after_remove = list(pool.map(one, [server] * 16))
    assert [r.status_code for r in after_add + after_remove] == [200] * 32
    assert {r.json()["info"]["atlas_version"] for r in after_add} == {2}
    assert {r.json()["info"]["atlas_version"] for r in after_remove} == {3}



def test_options_are_400_and_data_is_422_in_api_words(api):
    payload = {"genes": ["INS"], "counts": [[1]]}
    cases = [({"level": "bogus"}, 400, "level must be one of label, fine, harmonised, ontology, broad, got 'bogus'"),
             ({"species": "klingon"}, 400, "species must be one of human, mouse or auto, got 'klingon'"),
             ({"input_scale": "bogus"}, 400, "unknown input scale 'bogus'; choose one of auto, counts, ln, log2, log10, linear"),
             ({"k": 0}, 400, "invalid request: query.k:"),
             ({"min_score": "nan"}, 400, "invalid request: query.min_score:"),
             ({"datasets": "nope"}, 400, "the atlas has no data set 'nope'; known: synthetic"),
             ({"exclude_labels": ["type0", "type1", "type2"]}, 400,
              "no atlas cells are left after datasets/labels/exclude_labels; loosen the filters")]
    for params, status, message in cases:
        response = api.post("/annotate", params=params, json=payload)
        assert (response.status_code, response.json()["error"][: len(message)]) == (status, message), response.text
    ensembl = {"genes": [f"ENSG{i:011d}" for i in range(60)], "counts": [[1] * 60]}
    response = api.post("/annotate", json=ensembl, params={"species": "human"})
    assert response.status_code == 422
    assert "--" not in response.json()["error"] and "gene_key" in response.json()["error"], response.text


def test_anonymous_callers_see_no_server_paths(tmp_path, query):
    root = small_atlas(tmp_path / "lab")
    extra = tmp_path / "cells from a lab.h5ad"
    make_counts(n_cells=80, seed=11).write_h5ad(extra)
    _, path = query
    with in_process(create_app(root, token={"alice": TOKEN, "bob": "another-token-9876543210"})) as server:
        health = server.get("/health").json()
        assert health["atlas"] == "lab"
        added = server.post("/datasets", headers={"Authorization": f"Bearer {TOKEN}"},
                            files={"file": (extra.name, extra.read_bytes())}, data={"name": "extra", "label_key": "cell_type"})
        assert added.status_code == 201, added.text
        shown = {d["name"]: d for d in server.get("/datasets").json()["datasets"]}
        assert shown["extra"]["source_file"] == "cells from a lab.h5ad" and shown["extra"]["added_by"] == "alice"
        recorded = {d["name"]: d for d in open_atlas(root).datasets}["extra"]
        assert recorded["source_file"] == "cells from a lab.h5ad", "the atlas records the upload's name, not a temporary path"
        with open(path, "rb") as handle:
            answer = server.post("/annotate", files={"file": ("query.h5ad", handle)}).json()
        assert answer["info"]["atlas"] == "lab"
        texts = [server.get(f"/{p}").text for p in ("health", "datasets", "versions", "openapi.json")]
        assert all(str(tmp_path) not in text for text in [*texts, json.dumps(answer)])
    with in_process(create_app(tmp_path / "gone")) as server:
        missing = server.get("/health")
    assert missing.status_code == 503
    assert missing.json()["error"] == "no atlas at gone: the folder does not exist"


def test_a_damaged_atlas_is_refused_at_start_and_answered_503_after(tmp_path, query):
    root = small_atlas(tmp_path / "atlas")
    index = next((root / "versions").glob("*/index.faiss"))
    data = bytearray(index.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    index.write_bytes(bytes(data))
    started = CliRunner().invoke(cli_app, ["serve", "--atlas", str(root), "--port", "0"])
    text = " ".join(started.output.split())
    assert started.exit_code == 1 and "Error: the atlas file 000001/index.faiss does not match the sha256" in text
    with pytest.raises(AtlasError, match="000001/index.faiss does not match"):
        create_app(root, preload=True)
    _, path = query
    with in_process(create_app(root)) as server:
        response = server.post("/annotate", files={"file": ("q.h5ad", path.read_bytes())})
        health = server.get("/health")
    assert response.status_code == health.status_code == 503
    assert response.json()["error"].startswith("the atlas served here is damaged (the atlas file 000001/index.faiss does "
                                               "not match the sha256 recorded when it was written")
    assert str(tmp_path) not in response.text and "--" not in response.text
    with in_process(create_app(root, verify=False, preload=True)) as server:
        assert server.get("/health").status_code == 200


def test_a_json_body_at_the_limit_is_parsed_within_its_memory_bound_while_health_answers(atlas):
    """How quickly /health answers meanwhile is a figure of benchmarks/server_load.py, not asserted here."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs /proc to read the server's peak memory")
    with serve_process(atlas, "--max-json-mb", "8") as (base, server):
        warm = make_counts(n_cells=20, seed=1)
        warm_up = {"genes": list(warm.var_names), "counts": warm.X.toarray().tolist()}
        assert http.post(f"{base}/annotate", json=warm_up).status_code == 200
        genes = [f"GENE{i}" for i in range(4000)]
        body = json.dumps({"genes": genes, "counts": [[0] * 4000] * 990}, separators=(",", ":")).encode()
        assert 7_900_000 < len(body) < 8_000_000
        before = _memory(server.pid)
        sent = ThreadPoolExecutor(1).submit(http.post, f"{base}/annotate", content=body,
                                            headers={"content-type": "application/json"})
        while not sent.done():
            assert http.get(f"{base}/health").status_code == 200
            time.sleep(0.05)
        assert sent.result().status_code == 422
        assert _memory(server.pid)["VmHWM"] - before["VmRSS"] < 47 * len(body)


def _memory(pid):
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def test_serving_on_a_port_in_use_is_one_error_line(tmp_path):
    import socket

    root = small_atlas(tmp_path / "atlas")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--atlas", str(root), "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port" in " ".join(result.output.split())
