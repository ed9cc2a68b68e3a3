"""The web page's JSON and files, in process, on a real pbmc3k atlas: an upload annotated as annotate()
annotates it, its downloads, kept results and their expiry, errors as one line, and no page that
reaches outside the server. The browser itself drives the pages in test_web_browser.py."""

import io
import json
import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from serving import all_finished, in_process

from screader_db.server import create_app
from screader_db.server_limits import ServerLimits
from screader_db.web.jobs import truth_columns
from screader_db.web.result_store import DOWNLOADS, JOB, ResultStore, write_json
from screader_db.web.routes import STATIC

pytestmark = pytest.mark.data("pbmc3k")
EXTERNAL = re.compile(r"https?://|(?:src|href|action)\s*=\s*[\"']?//|url\(\s*[\"']?//|@import")


@pytest.fixture(scope="module")
def web(pbmc_split, tmp_path_factory):
    root, _, _ = pbmc_split
    results = ResultStore(tmp_path_factory.mktemp("results"))
    with in_process(create_app(root, results=results)) as client:
        yield client
        all_finished(results)


def finished(client, job_id: str, timeout: float = 300.0) -> dict:
    """Poll a job until it failed or wrote every download; its last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/ui/api/jobs/{job_id}").json()
        if status["state"] == "failed" or all(status["downloads"].values()):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def submit(client, name: str, content: bytes, **fields):
    return client.post("/ui/api/jobs", files={"file": (name, content)}, data=fields)


@pytest.fixture(scope="module")
def job(web, pbmc_split):
    _, _, path = pbmc_split
    response = submit(web, "query.h5ad", path.read_bytes(), level="label", majority_voting="false")
    assert response.status_code == 202, response.text
    found = response.json()
    assert found["page"] == f"/ui/results/{found['id']}"
    status = finished(web, found["id"])
    assert status["state"] == "done", status
    return found["id"]


def test_an_upload_is_annotated_as_annotate_does(web, job, pbmc_result):
    shown = web.get(f"/ui/api/results/{job}").json()
    table = pbmc_result.table
    assert shown["n_cells"] == 400 and shown["filename"] == "query.h5ad"
    columns = shown["columns"]
    assert columns["cell"] == list(table.index)
    assert columns["label"] == list(table["label"])
    assert np.allclose(columns["score"], table["score"].round(4))
    assert shown["info"]["second_opinion"]["used"]
    assert np.allclose(columns["second_opinion"], table["second_opinion"].round(4))
    assert all(np.isfinite(columns["x"])) and all(np.isfinite(columns["y"]))
    assert sum(row["cells"] for row in shown["summary"]) == 400
    assert {row["label"] for row in shown["summary"]} == set(table["label"])
    reference = shown["reference_map"]
    assert len(reference["x"]) == len(reference["label"]) == len(reference["dataset"]) > 2000
    assert set(reference["dataset"]) == {"pbmc3k"}
    assert "celltype" in shown["truth_columns"] and len(shown["truth_columns"]["celltype"]) == 400
    assert shown["info"]["genes_matched"] > 0 and shown["info"]["seconds"] > 0


def test_the_downloads_are_the_results_files(web, job, pbmc_result):
    csv = web.get(f"/ui/results/{job}/labels.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert 'filename="query_labels.csv"' in csv.headers["content-disposition"]
    frame = pd.read_csv(io.StringIO(csv.text), index_col=0)
    assert list(frame.index.astype(str)) == list(pbmc_result.table.index)
    assert list(frame["label"]) == list(pbmc_result.table["label"])
    h5ad = web.get(f"/ui/results/{job}/annotated.h5ad")
    annotated = ad.read_h5ad(io.BytesIO(h5ad.content))
    assert list(annotated.obs["screader_label"].astype(str)) == list(pbmc_result.table["label"])
    report = web.get(f"/ui/results/{job}/report.html").text
    assert report.startswith("<!doctype html>") and "data:image/png;base64," in report
    missing = web.get(f"/ui/results/{job}/secrets.txt")
    assert missing.status_code == 404 and "labels.csv" in missing.json()["error"]


def test_a_result_has_a_stable_url_until_it_expires(web, job):
    page = web.get(f"/ui/results/{job}")
    assert page.status_code == 200 and 'id="annotate-form"' in page.text
    for gone in ("AAAAAAAAAAAAAAAA", "not-an-id", "x"):
        status = web.get(f"/ui/api/jobs/{gone}")
        assert status.status_code == 404
        assert status.json()["error"].startswith(f"no result {gone!r} on this server: results are kept for 24 hours")


def test_a_damaged_upload_fails_with_one_line(web):
    response = submit(web, "damaged.h5ad", b"\x89HDF\r\n\x1a\n" + b"\x00" * 4000)
    assert response.status_code == 202
    status = finished(web, response.json()["id"])
    assert status["state"] == "failed"
    error = status["error"]
    assert "\n" not in error and "Traceback" not in error and "damaged.h5ad" in error, error
    assert "/tmp" not in error and "upload.h5ad" not in error, error


def test_files_of_no_known_format_and_bad_options_are_refused_at_once(web, pbmc_split):
    unknown = submit(web, "cells.pdf", b"%PDF-1.4")
    assert unknown.status_code == 422
    assert unknown.json()["error"].startswith("the uploaded file 'cells.pdf' is of no format the web page reads; upload .h5ad")
    folder_format = submit(web, "matrix.mtx", b"%%MatrixMarket matrix coordinate real general\n1 1 1\n1 1 1\n")
    assert folder_format.status_code == 422
    assert folder_format.json()["error"].endswith("a Matrix Market or zarr folder is several files: save it as one .h5ad first")
    _, _, path = pbmc_split
    level = submit(web, "query.h5ad", path.read_bytes(), level="species")
    assert level.status_code == 400 and "level" in level.json()["error"]
    datasets = submit(web, "query.h5ad", path.read_bytes(), datasets="elsewhere")
    assert datasets.status_code == 202  # which data sets the atlas has is the annotation's to check
    status = finished(web, datasets.json()["id"])
    assert status["state"] == "failed" and "'elsewhere'" in status["error"] and "pbmc3k" in status["error"], status


def test_large_uploads_are_refused_with_the_limit(pbmc_split, tmp_path):
    root, _, path = pbmc_split
    app = create_app(root, limits=ServerLimits(max_upload_bytes=100_000), results=ResultStore(tmp_path))
    with in_process(app) as client:
        refused = submit(client, "query.h5ad", path.read_bytes())
    assert refused.status_code == 413
    assert "larger than this server's limit of 0.1 MB" in refused.json()["error"]
    assert not list(tmp_path.iterdir())


def test_the_atlas_page_data(web, pbmc_split):
    shown = web.get("/ui/api/atlas").json()
    assert [d["name"] for d in shown["datasets"]] == ["pbmc3k"]
    counts = shown["label_counts"]
    assert counts["datasets"] == ["pbmc3k"]
    assert sum(row["counts"][0] for row in counts["rows"]) == shown["datasets"][0]["n_cells"] == 2300
    assert [v["version"] for v in shown["versions"]] == [1] and shown["versions"][0]["current"]
    assert len(shown["reference_map"]["x"]) == 2300 and shown["writing"] is False
    info = web.get("/ui/api/info").json()
    assert info["datasets"] == ["pbmc3k"] and "CD4 T" in info["labels"] and ".h5ad" in info["formats"]


def test_no_page_or_file_reaches_outside_the_server(web):
    served = ["/ui/", "/ui/atlas", *(f"/ui/static/{p.name}" for p in sorted(STATIC.iterdir()) if p.is_file())]
    assert len(served) >= 6
    for path in served:
        response = web.get(path)
        assert response.status_code == 200, path
        found = EXTERNAL.search(response.text)
        assert found is None, f"{path}: {response.text[max(0, found.start() - 60):found.end() + 60]}"
    assert web.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_results_are_pruned_by_age_and_then_size(tmp_path):
    store = ResultStore(tmp_path, max_age=3600, max_bytes=7_000)
    running = store.create("running.h5ad")
    jobs = [store.create(f"q{i}.h5ad") for i in range(3)]
    for n, job in enumerate(jobs):
        for name in DOWNLOADS.values():
            (job.folder / name).write_bytes(b"x" * 1_000)
        write_json(job.folder / JOB, {"filename": "q.h5ad", "created": time.time() - 100 + n})
    assert store.prune() == [jobs[0].id]  # 9 kB over 7 kB: the oldest finished result goes
    write_json(jobs[1].folder / JOB, {"filename": "q.h5ad", "created": time.time() - 7200})
    assert store.prune() == [jobs[1].id]  # older than an hour
    assert store.get(jobs[2].id) is not None and store.get(running.id) is not None
    assert store.get(jobs[0].id) is None and store.get("../" + jobs[2].id) is None
    assert json.loads((running.folder / JOB).read_text())["filename"] == "running.h5ad"


def test_truth_columns_are_the_label_like_obs_columns():
    obs = pd.DataFrame({"cell_type": pd.Categorical(["a", "b", None, "a"]), "donor": ["d1", "d1", "d1", "d1"],
                        "barcode": ["w", "x", "y", "z"], "n_genes": [1, 2, 3, 4]})
    assert truth_columns(obs) == {"cell_type": ["a", "b", "", "a"]}


def test_serve_refuses_a_result_store_that_keeps_nothing(pbmc_split):
    from typer.testing import CliRunner

    from screader_db.cli import app

    root, _, _ = pbmc_split
    refused = CliRunner().invoke(app, ["serve", "--atlas", str(root), "--workers", "1", "--keep-results-hours", "0"])
    assert refused.exit_code == 1
    assert "Error: --keep-results-hours must be above 0; got 0" in refused.output
