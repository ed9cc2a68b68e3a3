"""Every bad input to `screader-db query` gets one clear message, exit code 1 and no output file."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import HUMAN_GENES, make_counts
from typer.testing import CliRunner

from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors") / "atlas"
    build_atlas(make_counts(n_cells=200), root, label_key="cell_type", dataset_name="synthetic",
                settings=BuildSettings(model="random:16", method="genept", n_genes=50, layout="none"))
    return root


def _write(adata, path):
    adata.write_h5ad(path)
    return path


def _with_values(tmp_path, values):
    adata = make_counts(n_cells=30, seed=2)
    X = adata.X.toarray()
    X[0, :3] = values
    adata.X = sp.csr_matrix(X)
    return _write(adata, tmp_path / "q.h5ad")


def case_missing(tmp_path):
    return tmp_path / "absent.h5ad", r"Error: .*absent.h5ad does not exist; check the path"


def case_empty(tmp_path):
    (tmp_path / "q.h5ad").write_bytes(b"")
    return tmp_path / "q.h5ad", r"is empty \(0 bytes\); it was probably not written completely"


def case_not_h5ad(tmp_path):
    (tmp_path / "q.h5ad").write_text("gene,cell\nINS,3\n")
    return tmp_path / "q.h5ad", r"is not an .h5ad file \(no HDF5 signature\); save it with AnnData's write_h5ad"


def case_corrupt(tmp_path):
    good = _write(make_counts(n_cells=30), tmp_path / "good.h5ad")
    (tmp_path / "q.h5ad").write_bytes(good.read_bytes()[:3000])
    return tmp_path / "q.h5ad", r"could not be read as AnnData .*the file is damaged or not an h5ad"


def case_zero_cells(tmp_path):
    adata = ad.AnnData(X=sp.csr_matrix((0, len(HUMAN_GENES)), dtype=np.float32), var=pd.DataFrame(index=HUMAN_GENES))
    return _write(adata, tmp_path / "q.h5ad"), r"Error: the data has zero cells"


def case_zero_genes(tmp_path):
    adata = ad.AnnData(X=sp.csr_matrix((5, 0), dtype=np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]))
    return _write(adata, tmp_path / "q.h5ad"), r"Error: the data has zero genes"


def case_low_overlap(tmp_path):
    genes = ["INS", "GCG"] + [f"LOC1000{i:04d}" for i in range(60)]
    adata = make_counts(n_cells=30, genes=genes, n_types=1)
    return _write(adata, tmp_path / "q.h5ad"), (r"Error: the query shares only 2 genes with the atlas's reference \(50 genes\); "
                                                r"at least \d+ are needed")


def case_ensembl_without_mapping(tmp_path):
    adata = make_counts(n_cells=30, genes=[f"ENSG9{i:010d}" for i in range(50)])
    return _write(adata, tmp_path / "q.h5ad"), r"none of the 50 gene names could be mapped .* The names look like Ensembl ids"


def case_nan(tmp_path):
    return _with_values(tmp_path, [np.nan, 1, 1]), r"the matrix has 1 NaN or infinite values"


def case_inf(tmp_path):
    return _with_values(tmp_path, [np.inf, 1, 1]), r"the matrix has 1 NaN or infinite values"


def case_negative(tmp_path):
    return _with_values(tmp_path, [-2.0, 1, 1]), r"the matrix has negative values \(minimum -2\): it looks scaled or z-scored"


def case_scaled(tmp_path):
    adata = make_counts(n_cells=30)
    adata.X = sp.csr_matrix(np.random.default_rng(0).uniform(0.0, 5.0, size=adata.shape).astype(np.float32))
    return _write(adata, tmp_path / "q.h5ad"), r"non-integer values up to [\d.e+]+: neither raw counts nor log-normalised data"


CASES = [case_missing, case_empty, case_not_h5ad, case_corrupt, case_zero_cells, case_zero_genes, case_low_overlap,
         case_ensembl_without_mapping, case_nan, case_inf, case_negative, case_scaled]


def _run(args, tmp_path):
    out, table = tmp_path / "result.h5ad", tmp_path / "result.csv"
    result = runner.invoke(app, ["query", *args, "--out", str(out), "--table", str(table), "--quiet"])
    return result, out, table


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_bad_query_files(case, atlas, tmp_path):
    path, pattern = case(tmp_path)
    result, out, table = _run([str(path), "--atlas", str(atlas)], tmp_path)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert text.startswith("Error: ") or "\nError: " in result.output
    import re

    assert re.search(pattern, text), text
    assert not out.exists() and not table.exists()


def test_missing_atlas(tmp_path):
    query = _write(make_counts(n_cells=20), tmp_path / "q.h5ad")
    result, out, table = _run([str(query), "--atlas", str(tmp_path / "nowhere")], tmp_path)
    assert result.exit_code == 1
    assert "Error: no atlas at" in result.output and "the folder does not exist" in result.output
    assert not out.exists() and not table.exists()


def test_atlas_from_another_model(atlas, tmp_path):
    query = _write(make_counts(n_cells=20), tmp_path / "q.h5ad")
    result, out, _ = _run([str(query), "--atlas", str(atlas), "--model", "minilm"], tmp_path)
    assert result.exit_code == 1
    assert "built with gene-embedding model 'random:16:0', not 'minilm'" in " ".join(result.output.split())
    assert not out.exists()


def test_atlas_of_an_older_format(tmp_path):
    root = tmp_path / "old"
    built = build_atlas(make_counts(n_cells=100), root, label_key="cell_type",
                        settings=BuildSettings(model="random:16", method="genept", n_genes=50, layout="none"))
    meta = json.loads((built.path / "VERSION.json").read_text())
    meta["format"] = "screader-atlas-0"
    (built.path / "VERSION.json").write_text(json.dumps(meta))
    query = _write(make_counts(n_cells=20), tmp_path / "q.h5ad")
    result, out, _ = _run([str(query), "--atlas", str(root)], tmp_path)
    assert result.exit_code == 1
    assert "has format 'screader-atlas-0'; this screader-db reads 'screader-atlas-1'. Rebuild the atlas" in \
        " ".join(result.output.split())
    assert not out.exists()


def test_existing_output_needs_overwrite(atlas, tmp_path):
    query = _write(make_counts(n_cells=20), tmp_path / "q.h5ad")
    out = tmp_path / "result.h5ad"
    out.write_text("keep me")
    result = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    assert f"Error: {out} exists; pass --overwrite to replace it" in " ".join(result.output.split())
    assert out.read_text() == "keep me"


def test_a_partial_panel_is_answered_with_a_warning(tmp_path):
    from conftest import panel_genes

    genes = panel_genes(120)
    root = tmp_path / "atlas"
    build_atlas(make_counts(n_cells=200, genes=genes), root, label_key="cell_type", settings=BuildSettings(layout="none"))
    query = _write(make_counts(n_cells=40, genes=genes)[:, 30:].copy(), tmp_path / "q.h5ad")
    result, out, _ = _run([str(query), "--atlas", str(root)], tmp_path)
    assert result.exit_code == 0, result.output
    assert "Warning: the query has" in result.output and "panel index" in " ".join(result.output.split())
    assert out.exists()


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


OPTION_CASES = [
    (["--k", "0"], "Error: --k must be at least 1; got 0"),
    (["--k", "-5"], "Error: --k must be at least 1; got -5"),
    (["--min-score", "-1"], "Error: --min-score must be from 0 to 1; got -1"),
    (["--min-score", "1.5"], "Error: --min-score must be from 0 to 1; got 1.5"),
    (["--min-margin", "2"], "Error: --min-margin must be from 0 to 1; got 2"),
    (["--min-margin", "nan"], "Error: --min-margin must be from 0 to 1; got nan"),
    (["--novelty-cutoff", "nan"], "Error: --novelty-cutoff must be a finite number; got nan"),
    (["--novelty-cutoff", "inf"], "Error: --novelty-cutoff must be a finite number; got inf"),
]


@pytest.mark.parametrize(("args", "message"), OPTION_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_option_values_are_checked_before_anything_is_read(args, message, tmp_path):
    # neither the query nor the atlas exists: the option is refused first
    result = runner.invoke(app, ["query", str(tmp_path / "absent.h5ad"), "--atlas", str(tmp_path / "nowhere"), *args,
                                 "--table", str(tmp_path / "t.csv"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()) == message
    assert _files(tmp_path) == []


def test_library_options_that_cannot_work_are_refused(atlas):
    from screader_db import annotate
    from screader_db.errors import ScreaderError

    query = make_counts(n_cells=20)
    with pytest.raises(ScreaderError, match=r"^k must be at least 1; got 0$"):
        annotate(query, atlas, k=0)
    with pytest.raises(ScreaderError, match=r"^novelty_cutoff must be a finite number; got nan$"):
        annotate(query, atlas, novelty_cutoff=float("nan"))


def test_serve_port_out_of_range(tmp_path):
    result = runner.invoke(app, ["serve", "--atlas", str(tmp_path / "nowhere"), "--port", "99999"])
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()) == "Error: --port must be from 0 to 65535; got 99999"


def _output_cases(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain.txt").write_text("a file")
    missing = tmp_path / "missing"
    return [
        (["--out", str(missing / "a.h5ad")], f"Error: --out {missing}/a.h5ad: the folder {missing} does not exist"),
        (["--table", str(missing / "t.csv")], f"Error: --table {missing}/t.csv: the folder {missing} does not exist"),
        (["--report", str(missing / "r.html")], f"Error: --report {missing}/r.html: the folder {missing} does not exist"),
        (["--plots", str(missing / "deeper" / "plots")], f"Error: --plots {missing}/deeper/plots: the folder "
                                                         f"{missing}/deeper does not exist"),
        (["--plots", str(tmp_path / "plain.txt")], f"Error: --plots {tmp_path}/plain.txt is a file; --plots takes a folder"),
        (["--out", str(tmp_path / "folder")], f"Error: --out {tmp_path}/folder is a folder; --out takes a file name"),
        (["--out", str(tmp_path / "folder"), "--overwrite"], f"Error: --out {tmp_path}/folder is a folder"),
        (["--table", str(tmp_path / "t.xlsx")], "Error: --table " f"{tmp_path}/t.xlsx: unknown format '.xlsx'; use .csv"),
        (["--out", str(tmp_path / "same.h5ad"), "--report", str(tmp_path / "same.h5ad")],
         f"Error: --out and --report both name {tmp_path}/same.h5ad"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_output_paths_are_checked_before_the_query_is_read(case, tmp_path):
    args, message = _output_cases(tmp_path)[case]
    before = _files(tmp_path)
    # the query does not exist: the output path is refused before it would be read
    result = runner.invoke(app, ["query", str(tmp_path / "absent.h5ad"), "--atlas", str(tmp_path / "nowhere"), *args,
                                 "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert text.startswith(message), text
    assert _files(tmp_path) == before


def test_a_failing_output_leaves_no_other_output(atlas, tmp_path):
    query = _write(make_counts(n_cells=30, seed=2), tmp_path / "q.h5ad")
    (tmp_path / "plots" / "scores.png").mkdir(parents=True)  # a folder where a plot is to go
    result = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--table", str(tmp_path / "t.csv"),
                                 "--out", str(tmp_path / "a.h5ad"), "--plots", str(tmp_path / "plots"), "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert f"Error: --plots: {tmp_path}/plots/scores.png is a folder" in text
    assert _files(tmp_path) == ["plots", "plots/scores.png", "q.h5ad"]


def test_outputs_are_written_together(atlas, tmp_path):
    query = _write(make_counts(n_cells=30, seed=2), tmp_path / "q.h5ad")
    result = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--table", str(tmp_path / "t.csv"),
                                 "--out", str(tmp_path / "a.h5ad"), "--plots", str(tmp_path / "plots"),
                                 "--report", str(tmp_path / "r.html"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"Plots: {tmp_path}/plots/" in result.output
    assert [p for p in _files(tmp_path) if not p.startswith("plots/")] == ["a.h5ad", "plots", "q.h5ad", "r.html", "t.csv"]
    assert ad.read_h5ad(tmp_path / "a.h5ad").n_obs == 30


def test_sql_out_into_a_missing_folder(atlas, tmp_path):
    target = tmp_path / "missing" / "rows.csv"
    result = runner.invoke(app, ["sql", "SELECT * FROM cells", "--atlas", str(atlas), "--out", str(target)])
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()).startswith(f"Error: --out {target}: the folder {tmp_path}/missing does not exist")
    assert _files(tmp_path) == []
