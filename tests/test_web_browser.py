"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
server on 127.0.0.1 serving a pbmc3k atlas: upload, result, table, CSV download, errors, the atlas
page and its admin form. Skipped where chromium is missing, except in CI (``.ci/run`` installs it)."""

import os
import shutil

import pandas as pd
import pytest
from serving import TOKEN, all_finished, running

from screader_db.server import create_app
from screader_db.web.result_store import ResultStore

CHROMIUM = shutil.which("chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WAIT_MS = 300_000

pytestmark = [
    pytest.mark.data("pbmc3k"),
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                       reason="needs Debian's chromium (make browser installs it)"),
]


@pytest.fixture(scope="module")
def server(pbmc_split, tmp_path_factory):
    root, _, _ = pbmc_split
    results = ResultStore(tmp_path_factory.mktemp("results"))
    with running(create_app(root, token=TOKEN, results=results)) as url:
        yield url
        all_finished(results)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "chromium is not installed: run `make browser` (CI runs it in .ci/run)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    yield opened
    context.close()


def test_an_upload_shows_its_labels_and_downloads_the_csv_of_annotate(server, page, pbmc_split, pbmc_result):
    _, _, path = pbmc_split
    page.goto(f"{server}/ui/")
    page.wait_for_selector("#datasets option")
    page.set_input_files("#file", str(path))
    page.click("#submit")
    page.wait_for_selector('body[data-state="done"]', timeout=WAIT_MS)
    assert "/ui/results/" in page.url

    summary = page.locator("#summary tbody tr")
    expected = pbmc_result.summary()
    assert summary.count() == len(expected)
    first = summary.nth(0).locator("td")
    assert first.nth(0).inner_text() == str(expected.index[0])
    assert first.nth(1).inner_text().replace(",", "") == str(int(expected["cells"].iloc[0]))
    assert page.locator("#cells tbody tr").count() == 400
    headers = page.locator("#cells thead th").all_inner_texts()
    assert [h.strip() for h in headers[2:5]] == ["score", "confidence", "second opinion"], headers

    page.fill("#cell-filter", "B")
    assert 0 < page.locator("#cells tbody tr").count() < 400
    page.fill("#cell-filter", "")
    assert page.locator("#cells tbody tr").count() == 400

    page.wait_for_selector("#download-csv[aria-disabled='false']", timeout=WAIT_MS)
    with page.expect_download() as caught:
        page.click("#download-csv")
    frame = pd.read_csv(caught.value.path(), index_col=0)
    assert list(frame.index.astype(str)) == list(pbmc_result.table.index)
    assert list(frame["label"]) == list(pbmc_result.table["label"])
    assert frame["score"].to_numpy() == pytest.approx(pbmc_result.table["score"].to_numpy(), abs=1e-6)

    page.select_option("#truth", "celltype")
    page.wait_for_selector("#confusion tbody tr")
    agreement = pbmc_result.agreement(pbmc_split[1].obs["celltype"])
    assert f"{agreement.accuracy:.3f}" in page.inner_text("#truth-accuracy")

    result_url = page.url
    again = page.context.new_page()
    again.goto(result_url)
    again.wait_for_selector('body[data-state="done"]', timeout=WAIT_MS)
    assert again.locator("#cells tbody tr").count() == 400


def test_a_damaged_file_shows_the_one_line_error(server, page):
    page.goto(f"{server}/ui/")
    page.wait_for_selector("#datasets option")
    page.set_input_files("#file", files=[{"name": "damaged.h5ad", "mimeType": "application/octet-stream",
                                          "buffer": b"\x89HDF\r\n\x1a\n" + b"\x00" * 4000}])
    page.click("#submit")
    page.wait_for_selector('body[data-state="failed"]', timeout=WAIT_MS)
    shown = page.inner_text("#error").strip()
    assert "damaged.h5ad" in shown and "\n" not in shown and "Traceback" not in shown, shown
    assert page.locator("#error").is_visible()


def test_the_atlas_page_and_its_admin_form_without_a_token(server, page, pbmc_split, tmp_path):
    _, query, _ = pbmc_split
    page.goto(f"{server}/ui/atlas")
    page.wait_for_selector("#datasets tbody tr")
    assert page.locator("#datasets tbody tr").count() == 1
    assert "pbmc3k" in page.inner_text("#datasets")
    assert page.locator("#label-counts tbody tr").count() >= 8
    assert page.locator("#versions tbody tr").count() == 1

    query.write_h5ad(tmp_path / "more.h5ad")
    page.set_input_files("#add-file", str(tmp_path / "more.h5ad"))
    page.fill("#add-name", "more")
    page.fill("#add-label-key", "celltype")
    page.click("#add-submit")
    page.wait_for_function("document.querySelector('#admin-error').textContent.trim().length > 0")
    assert page.inner_text("#admin-error").strip() == ("no token was sent; send the header "
                                                       "'Authorization: Bearer <token>'")
    page.reload()
    page.wait_for_selector("#datasets tbody tr")
    assert page.locator("#datasets tbody tr").count() == 1


def test_the_admin_form_with_the_token_adds_and_removes_a_data_set(page, tmp_path):
    from conftest import make_counts
    from serving import small_atlas

    root = small_atlas(tmp_path / "atlas")
    make_counts(n_cells=80, seed=5).write_h5ad(tmp_path / "more.h5ad")
    with running(create_app(root, token=TOKEN, results=ResultStore(tmp_path / "results"))) as url:
        page.goto(f"{url}/ui/atlas")
        page.wait_for_selector("#datasets tbody tr")
        assert page.locator("#atlas-map-note").is_visible()  # built without a map: the page says so
        page.fill("#token", TOKEN)
        page.set_input_files("#add-file", str(tmp_path / "more.h5ad"))
        page.fill("#add-name", "more")
        page.fill("#add-label-key", "cell_type")
        page.click("#add-submit")
        page.wait_for_function("document.querySelectorAll('#datasets tbody tr').length === 2", timeout=WAIT_MS)
        assert "more" in page.inner_text("#admin-message") and not page.inner_text("#admin-error").strip()
        assert page.locator("#versions tbody tr").count() == 2

        page.once("dialog", lambda dialog: dialog.accept())
        page.select_option("#remove-name", "more")
        page.click("#remove-submit")
        page.wait_for_function("document.querySelectorAll('#datasets tbody tr').length === 1", timeout=WAIT_MS)
        assert page.locator("#versions tbody tr").count() == 3
        assert "synthetic" in page.inner_text("#datasets") and "more" not in page.inner_text("#datasets")


def test_majority_voting_adds_the_clusters_and_their_labels_to_the_table(server, page, pbmc_split):
    _, _, path = pbmc_split
    page.goto(f"{server}/ui/")
    page.wait_for_selector("#datasets option")
    page.set_input_files("#file", str(path))
    page.check("#majority-voting")
    page.click("#submit")
    page.wait_for_selector('body[data-state="done"]', timeout=WAIT_MS)
    headers = page.locator("#cells thead th").all_inner_texts()
    assert [h.strip() for h in headers[-2:]] == ["cluster", "majority label"]
    majority = page.locator("#cells tbody tr td:last-child").all_inner_texts()
    assert len(majority) == 400 and all(text.strip() for text in majority)
