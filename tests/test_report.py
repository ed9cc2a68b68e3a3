"""The HTML report: one self-contained file with every section, every figure an embedded PNG and
nothing loaded from elsewhere; a population the atlas lacks is listed under Novel clusters."""

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.cli import app
from screader_db.errors import OutputExistsError
from screader_db.novelty import EXPLAINED_SHARE
from screader_db.report import SECTIONS, write_report
from screader_db.store import open_atlas

B_MARKERS = {"CD79A", "CD79B", "MS4A1", "CD74", "HLA-DRA", "CD19", "TCL1A"}


class Page(HTMLParser):
    """Ids, image sources, links and the table rows under each <h2> of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.section = ""
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if "id" in found:
            self.ids.append(found["id"])
        if tag == "h2":
            self.section = found.get("id", "")
        if tag == "img":
            self.images.append(found.get("src", ""))
        for name in ("src", "href"):
            if name in found:
                self.links.append(found[name])
        if tag == "tr":
            self.row = []
        if tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None:
            self.rows.setdefault(self.section, []).append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_page(path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


@pytest.mark.data("pbmc3k")
def test_report_is_one_self_contained_file(pbmc_split, pbmc_result, tmp_path):
    _, query, _ = pbmc_split
    path = write_report(pbmc_result, query, tmp_path / "report.html", truth=query.obs["celltype"])
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    page = read_page(path)
    for key in SECTIONS:
        assert key in page.ids
    assert len(page.images) >= 4  # Unassigned bars, cluster quality, scores, reference map, confusion matrix
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and image.size[0] >= 300
    assert not [link for link in page.links if link.lower().startswith(("http://", "https://", "//"))]
    assert "<script" not in page.text and "<link" not in page.text
    summary = {row[0]: row[1] for row in page.rows["summary"] if len(row) == 2}
    assert summary["Cells"] == "400" and summary["Unassigned"].startswith(f"{pbmc_result.n_unassigned:,} (")
    assert "version" in summary["Atlas"] and summary["Input scale"].startswith("counts")
    assert summary["Agreement with the given labels"].startswith("accuracy 0.9")
    quality = page.rows["mapping-quality"]
    assert quality[0][:3] == ["cluster", "cells", "majority label"]
    assert sum(int(row[1]) for row in quality[1:]) == 400
    reasons = {row[0]: int(row[1]) for row in page.rows["unassigned"][1:]}
    assert sum(reasons.values()) == pbmc_result.n_unassigned
    with pytest.raises(OutputExistsError, match=r"report.html exists; pass --overwrite to replace it$"):
        write_report(pbmc_result, query, path)
    write_report(pbmc_result, query, path, overwrite=True)


@pytest.mark.data("pbmc3k")
def test_query_command_writes_the_report_and_keeps_an_existing_one(pbmc_split, tmp_path):
    root, _, path = pbmc_split
    report = tmp_path / "report.html"
    args = ["query", str(path), "--atlas", str(root), "--report", str(report), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Report: {report}" in result.output and "Novel clusters" in report.read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    assert f"Error: {report} exists; pass --overwrite to replace it" in " ".join(again.output.split())


@pytest.fixture(scope="module")
def without_b(pbmc_parts, tmp_path_factory):
    """An atlas of the pbmc3k reference without its B cells (no map, no kept expression: quick to build)."""
    reference, _ = pbmc_parts
    root = tmp_path_factory.mktemp("no_b") / "atlas"
    build_atlas(reference[reference.obs["celltype"] != "B"].copy(), root, label_key="celltype", dataset_name="pbmc3k",
                settings=BuildSettings(layout="none", keep_expression=False))
    return root


@pytest.mark.data("pbmc3k")
def test_report_lists_a_population_the_atlas_lacks(pbmc_parts, without_b, tmp_path):
    _, query = pbmc_parts
    # On this small atlas the calibration turns the check off (CD4 and CD8 T cells are too alike to
    # find when hidden); the calibrated cut-off forces it on, as --novelty-cutoff does.
    cutoff = open_atlas(without_b).profiles()[1]["cutoff"]
    result = annotate(query, without_b, novelty_cutoff=cutoff)
    page = read_page(write_report(result, query, tmp_path / "report.html", truth=query.obs["celltype"]))
    table = result.table
    flagged = sorted(set(table.loc[table["novel"], "novelty_cluster"].astype(str)), key=int)
    rows = page.rows.get("novel-clusters", [])
    if not flagged:
        assert not rows and "None: 0 of" in page.text
        return
    assert rows[0] == ["cluster", "cells", "best atlas label", "match score", "genes shared with its voted label",
                       "top genes"]
    assert [row[0] for row in rows[1:]] == flagged
    truth = query.obs["celltype"].astype(str).to_numpy()
    clusters = table["novelty_cluster"].astype(str).to_numpy()
    for row in rows[1:]:
        members = clusters == row[0]
        assert int(row[1]) == members.sum()
        # below the cut-off, and not spared by its voted label's genes
        assert float(row[3]) < cutoff and (not row[4] or float(row[4].rstrip("%")) / 100 < EXPLAINED_SHARE)
        genes = row[5].split(", ")
        assert len(genes) == 10
        if np.mean(truth[members] == "B") > 0.5:  # the B cells the atlas lacks: their markers lead
            assert set(genes) & B_MARKERS
    reasons = {row[0]: int(row[1]) for row in page.rows["unassigned"][1:]}
    assert reasons["novel population"] == int(table["novel"].sum())
    quality = {row[0]: row for row in page.rows["mapping-quality"][1:]}
    assert all(quality[c][-1] == "yes" for c in flagged)
