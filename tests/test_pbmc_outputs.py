"""pbmc3k against an atlas of other pbmc3k cells: Ensembl ids annotate like symbols, and the
command's outputs (annotated .h5ad, table, PNGs) open in scanpy and an image reader."""

import anndata as ad
import matplotlib
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.cli import app

matplotlib.use("Agg")
pytestmark = pytest.mark.data("pbmc3k")


def test_ensembl_ids_annotate_like_symbols(pbmc_split):
    root, query, _ = pbmc_split
    by_id = query.copy()
    by_id.var_names = pd.Index(by_id.var["gene_ids"].astype(str))
    assert by_id.var_names[0].startswith("ENSG")
    symbols, ensembl = annotate(query, root), annotate(by_id, root)
    # pbmc3k's ids are Ensembl 75; a handful (CCL5, CCL4, NCOA4, ...) were retired since and
    # org.Hs.eg.db no longer knows them, so a few atlas genes are missing from the id version.
    matched = symbols.info["genes_matched"]
    assert matched - 6 <= ensembl.info["genes_matched"] <= matched
    same = (ensembl.labels.to_numpy() == symbols.labels.to_numpy()).mean()
    assert same >= 0.95, same
    truth = query.obs["celltype"]
    assert symbols.agreement(truth).accuracy >= 0.85
    assert abs(ensembl.agreement(truth).accuracy - symbols.agreement(truth).accuracy) <= 0.01


def test_query_outputs_open_in_scanpy_and_as_images(pbmc_split, tmp_path):
    import scanpy as sc

    root, query, path = pbmc_split
    out, table, plots = tmp_path / "annotated.h5ad", tmp_path / "labels.parquet", tmp_path / "plots"
    result = CliRunner().invoke(app, ["query", str(path), "--atlas", str(root), "--out", str(out), "--table", str(table),
                                      "--plots", str(plots), "--truth-key", "celltype"])
    assert result.exit_code == 0, result.output
    annotated = ad.read_h5ad(out)
    assert annotated.n_obs == query.n_obs
    assert {"X_screader_umap", "screader_scores", "screader_neighbours"} <= set(annotated.obsm)
    assert "X_umap" not in annotated.obsm
    assert annotated.obs["screader_label"].notna().all()
    assert isinstance(annotated.uns["screader"]["novelty"], dict)  # nested info stays nested, not a string
    sc.pl.embedding(annotated, basis="screader_umap", color="screader_label", show=False)
    figure = matplotlib.pyplot.gcf()
    figure.savefig(tmp_path / "scanpy_umap.png")
    matplotlib.pyplot.close(figure)
    assert (tmp_path / "scanpy_umap.png").stat().st_size > 10_000
    frame = pd.read_parquet(table)
    assert len(frame) == query.n_obs and {"label", "score", "confidence"} <= set(frame.columns)
    for name in ("umap.png", "scores.png", "confusion.png"):
        with Image.open(plots / name) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300
