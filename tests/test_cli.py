"""The command line, through Typer's runner and through the installed console script."""

import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import make_counts
from typer.testing import CliRunner

from screader_db.cli import app

runner = CliRunner()
COMMANDS = [[], ["fetch"], ["build"], ["build", "genes"], ["build", "gene-embeddings"], ["query"], ["info"]]


def _examples(help_text: str) -> list[list[str]]:
    """The command lines a help text shows above its option panels (its Usage line left out), as arguments."""
    head = help_text.split("╭", 1)[0]
    text = " ".join(" ".join(line for line in head.splitlines() if not line.strip().startswith("Usage:")).split())
    return [shlex.split(rest) for rest in text.split("screader-db ")[1:]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_help_has_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    examples = _examples(result.output)
    assert any(example[: len(command)] == command for example in examples), examples
    for example in examples:  # every command and option an example names exists
        parsed = runner.invoke(app, [*example, "--help"])
        assert parsed.exit_code == 0, f"screader-db {' '.join(example)}: {parsed.output}"


def test_help_imports_no_heavy_package():
    code = ("import sys; from typer.testing import CliRunner; from screader_db.cli import app; "
            "r = CliRunner().invoke(app, ['query', '--help']); assert r.exit_code == 0; "
            "heavy = [m for m in ('torch', 'faiss', 'transformers', 'anndata', 'duckdb', 'sentence_transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def synthetic_files(tmp_path):
    ref = tmp_path / "ref.h5ad"
    make_counts(n_cells=200).write_h5ad(ref)
    query = tmp_path / "query.h5ad"
    make_counts(n_cells=50, seed=3).write_h5ad(query)
    return ref, query


def _build_small(ref, atlas):
    """A small atlas of ``ref`` built through the CLI (random 16-d gene vectors, 50 genes, no map)."""
    built = runner.invoke(app, ["build", "--reference", str(ref), "--label-key", "cell_type", "--atlas", str(atlas),
                                "--model", "random:16", "--method", "genept", "--n-genes", "50", "--layout", "none", "--quiet"])
    assert built.exit_code == 0, built.output
    return built


def test_build_query_info_round_trip(tmp_path, synthetic_files):
    ref, query = synthetic_files
    atlas = tmp_path / "atlas"
    built = _build_small(ref, atlas)
    assert "version 1" in built.output
    out = tmp_path / "annotated.h5ad"
    table = tmp_path / "labels.csv"
    queried = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--out", str(out), "--table", str(table),
                                  "--truth-key", "cell_type", "--quiet"])
    assert queried.exit_code == 0, queried.output
    assert "accuracy" in queried.output and out.is_file() and table.is_file()
    assert "Centred on the query's mean" in queried.output  # genept centres a query on its plain mean
    assert "Search:" not in queried.output  # searched exactly: nothing to check
    again = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--out", str(out), "--quiet"])
    assert again.exit_code == 1
    assert f"Error: {out} exists; pass --overwrite to replace it" in again.output.replace("\n", "")
    described = runner.invoke(app, ["info", "--atlas", str(atlas)])
    assert described.exit_code == 0 and "random:16:0" in described.output


def test_a_query_searched_by_lists_says_how(tmp_path, synthetic_files, monkeypatch):
    from screader_db import index

    ref, query = synthetic_files
    atlas = tmp_path / "atlas"
    _build_small(ref, atlas)
    monkeypatch.setattr(index, "LIST_WORK", 1.0)  # 50 query cells against 200 atlas cells
    monkeypatch.setattr(index, "LIST_CELLS", 100)
    queried = runner.invoke(app, ["query", str(query), "--atlas", str(atlas), "--quiet"])
    assert queried.exit_code == 0, queried.output
    line = next(line for line in queried.output.splitlines() if line.startswith("Search: "))
    assert "lists trained for the query (recall@10 " in line and "on 50 query cells searched exactly, target 0.95)" in line


def test_errors_are_one_line_and_exit_one(tmp_path, synthetic_files):
    ref, _ = synthetic_files
    result = runner.invoke(app, ["build", "--reference", str(ref), "--label-key", "celltype", "--atlas",
                                 str(tmp_path / "a"), "--model", "random:16", "--method", "genept"])
    assert result.exit_code == 1
    assert "Error: --label-key 'celltype' is not an obs column of the reference; columns present: cell_type, donor" \
        in " ".join(result.output.split())
    missing = runner.invoke(app, ["query", str(tmp_path / "none.h5ad"), "--atlas", str(tmp_path / "a")])
    assert missing.exit_code == 1
    assert "Error:" in missing.output
    bad_flag = runner.invoke(app, ["query", "--no-such-flag"])
    assert bad_flag.exit_code == 2


def test_installed_console_script(tmp_path, synthetic_files):
    exe = shutil.which("screader-db") or str(__import__("pathlib").Path(sys.executable).with_name("screader-db"))
    ref, query = synthetic_files
    atlas = tmp_path / "atlas"
    subprocess.run([exe, "build", "--reference", str(ref), "--label-key", "cell_type", "--atlas", str(atlas),
                    "--model", "random:16", "--method", "genept", "--n-genes", "50", "--layout", "none", "-q"],
                   check=True, capture_output=True)
    done = subprocess.run([exe, "query", str(query), "--atlas", str(atlas), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cells annotated" in done.stdout
    failed = subprocess.run([exe, "query", str(query), "--atlas", str(tmp_path / "missing")], capture_output=True,
                            text=True)
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: no atlas at")


def test_build_defaults_are_the_library_defaults():
    import inspect

    from screader_db.builders.atlas import BuildSettings
    from screader_db.cli import build

    defaults = {name: p.default for name, p in inspect.signature(build).parameters.items()}
    settings = BuildSettings()
    for name in ("model", "method", "n_genes", "pooling", "index", "layout"):
        assert defaults[name] == getattr(settings, name), name


def _same_anndata(a, b):
    """Two AnnData objects hold the same matrices, annotations and nested uns."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    def same(x, y, what):
        if what.endswith("['stage_seconds']"):  # timings: the same stages, other seconds
            assert x.keys() == y.keys(), what
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), what
            for key in x:
                same(x[key], y[key], f"{what}[{key!r}]")
        elif isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_exact=True, obj=what)
        elif sp.issparse(x):
            assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape and (x != y).nnz == 0, what
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), what
        else:
            assert x == y, what

    for name in ("X", "obs", "var", "uns"):
        same(getattr(a, name), getattr(b, name), name)
    for name in ("obsm", "varm", "obsp", "layers"):
        same(dict(getattr(a, name)), dict(getattr(b, name)), name)
    same(a.raw.X, b.raw.X, "raw.X")
    same(a.raw.var, b.raw.var, "raw.var")


def test_query_out_streams_the_matrices_and_writes_what_to_adata_writes(tmp_path, synthetic_files, monkeypatch):
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from screader_db import annotate
    from screader_db.inputs import read_h5ad

    ref, _ = synthetic_files
    atlas = tmp_path / "atlas"
    _build_small(ref, atlas)
    query = make_counts(n_cells=120, seed=8)
    query.layers["counts"] = query.X.copy()
    query.obs["batch"] = ["b1" if i % 3 else "b2" for i in range(query.n_obs)]
    query.var["kind"] = "gene"
    query.obsm["X_pca"] = np.random.default_rng(0).normal(size=(query.n_obs, 4)).astype(np.float32)
    query.obsp["distances"] = sp.random(query.n_obs, query.n_obs, density=0.02, format="csr", random_state=0)
    query.uns["nested"] = {"a": 1, "b": {"c": "x"}}
    query.raw = query.copy()
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path, compression="gzip")
    expected = tmp_path / "expected.h5ad"
    annotate(path, atlas).to_adata(read_h5ad(path)).write_h5ad(expected)

    def refused(*args, **kwargs):
        raise AssertionError("the query was read into memory")

    monkeypatch.setattr(ad.AnnData, "to_memory", refused)
    out = tmp_path / "annotated.h5ad"
    result = runner.invoke(app, ["query", str(path), "--atlas", str(atlas), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    _same_anndata(ad.read_h5ad(out), ad.read_h5ad(expected))
