"""Annotate options: one definition (screader_db.options) that the library, the CLI, the server and the
client all take, with the same names, help, defaults and bounds, and the same meaning."""

import io

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts
from serving import in_process, in_process_client, small_atlas
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.cli import app as cli_app
from screader_db.client import annotate_params
from screader_db.errors import ScreaderError
from screader_db.options import ANNOTATE_OPTIONS, AnnotateOptions, NeighbourFilter, ReadOptions, option_fields, option_help
from screader_db.server import MAX_K, create_app

runner = CliRunner()
CLI_ONLY = {"query_file", "atlas", "out_path", "table_path", "truth_key", "plots", "report", "verify", "overwrite", "quiet"}
EXAMPLE = {"k": 7, "model": "m", "center": "query", "min_score": 0.5, "min_margin": 0.1, "majority_voting": True,
           "power": 2.0, "propagation": 0.5, "novelty": False, "novelty_cutoff": -1.0, "second_opinion": False,
           "parent_hold": 0.5, "version": 1,
           "layer": "counts",
           "use_raw": True, "gene_key": "symbol", "species": "mouse", "input_scale": "ln", "batch_key": "sample",
           "datasets": ["a", "b"],
           "labels": ["x"], "exclude_labels": ["y"], "level": "harmonised"}


def _cli_params():
    import typer.main

    return {p.name: p for p in typer.main.get_command(cli_app).commands["query"].params if p.name not in CLI_ONLY}


def _server_params(tmp_path):
    schema = create_app(tmp_path / "no-atlas").openapi()  # builds no atlas: the folder is read on requests only
    return {p["name"]: p for p in schema["paths"]["/annotate"]["post"]["parameters"]}


def test_every_surface_takes_every_option(tmp_path):
    assert set(EXAMPLE) == set(ANNOTATE_OPTIONS)
    assert set(_cli_params()) == set(ANNOTATE_OPTIONS)
    server = _server_params(tmp_path)
    assert set(server) == set(ANNOTATE_OPTIONS) and {p["in"] for p in server.values()} == {"query"}
    assert set(annotate_params(**EXAMPLE)) == set(ANNOTATE_OPTIONS)
    assert set(AnnotateOptions.from_flat(**EXAMPLE).flat()) == set(ANNOTATE_OPTIONS)


def test_help_defaults_and_bounds_come_from_the_options(tmp_path):
    cli, server = _cli_params(), _server_params(tmp_path)
    defaults = AnnotateOptions().flat()
    for field in option_fields():
        name = field.name
        assert cli[name].help.startswith(option_help(name)), name
        assert server[name]["description"] == option_help(name), name
        assert cli[name].default == defaults[name] == field.default, name
        schema = server[name]["schema"]
        assert schema.get("default") == (None if field.default is None else field.default), name
        low, high = field.spec.low, MAX_K if name == "k" else field.spec.high
        bounds = next(b for b in schema.get("anyOf", [schema]) if "type" in b and b["type"] != "null")
        assert (bounds.get("minimum"), bounds.get("maximum")) == (low, high), name


def test_flat_values_build_the_groups():
    options = AnnotateOptions.from_flat(**EXAMPLE)
    assert options.read == ReadOptions(layer="counts", use_raw=True, gene_key="symbol", species="mouse", input_scale="ln",
                                        batch_key="sample")
    assert options.neighbours == NeighbourFilter(datasets=("a", "b"), labels=("x",), exclude_labels=("y",), level="harmonised")
    assert options.flat()["datasets"] == ("a", "b") and options.k == 7
    assert AnnotateOptions.from_flat(datasets="a").neighbours.datasets == ("a",)
    assert AnnotateOptions.from_flat(datasets=[], labels=None).neighbours == NeighbourFilter()
    assert options.updated(k=3).k == 3 and options.k == 7
    with pytest.raises(ScreaderError, match=r"^'kk' is not an annotate option \(did you mean 'k'\?\); the options are k, model"):
        AnnotateOptions.from_flat(kk=3)
    with pytest.raises(ScreaderError, match=r"^'nope' is not an annotate option; the options are"):
        annotate_params(nope=1)
    assert annotate_params() == {}
    assert annotate_params(AnnotateOptions.from_flat(k=9), novelty=False, datasets=["a", "b"], min_margin=0) == \
        {"k": "9", "novelty": "false", "datasets": ["a", "b"]}


@pytest.mark.parametrize(("values", "library", "strict"), [
    ({"k": 0}, "k must be at least 1; got 0", "--k must be at least 1; got 0"),
    ({"min_score": 1.5}, None, "--min-score must be from 0 to 1; got 1.5"),
    ({"min_score": float("nan")}, "min_score must be a number; got nan", "--min-score must be from 0 to 1; got nan"),
    ({"min_margin": -0.5}, None, "--min-margin must be from 0 to 1; got -0.5"),
    ({"novelty_cutoff": float("inf")}, "novelty_cutoff must be a finite number; got inf",
     "--novelty-cutoff must be a finite number; got inf"),
    ({"power": -1}, "power must be at least 0; got -1", "--power must be at least 0; got -1"),
    ({"propagation": 2}, None, "--propagation must be from 0 to 1; got 2"),
    ({"propagation": float("nan")}, "propagation must be a finite number; got nan", "--propagation must be from 0 to 1; got nan"),
    ({"level": "cluster"}, "level must be one of label, fine, harmonised, ontology, broad, got 'cluster'",
     "--level must be one of label, fine, harmonised, ontology, broad, got 'cluster'"),
    ({"species": "klingon"}, "species must be one of human, mouse or auto, got 'klingon'",
     "--species must be one of human, mouse or auto, got 'klingon'"),
    ({"center": "middle"}, "center must be one of auto, query, reference, balanced, got 'middle'",
     "--center must be one of auto, query, reference, balanced, got 'middle'"),
    ({"input_scale": "log"}, "unknown input scale 'log'; choose one of auto, counts, ln, log2, log10, linear (lognorm = ln)",
     "unknown input scale 'log'; choose one of auto, counts, ln, log2, log10, linear (lognorm = ln)"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_values_are_checked_in_one_place(values, library, strict):
    options = AnnotateOptions.from_flat(**values)
    if library is None:
        options.check()  # cut-offs outside [0, 1] work in the library: above 1 sets every cell aside
    else:
        with pytest.raises(ScreaderError) as caught:
            options.check()
        assert str(caught.value) == library
    with pytest.raises(ScreaderError) as caught:
        options.check(strict=True, flags=True)
    assert str(caught.value) == strict


def test_the_cli_and_the_server_refuse_the_same_values(tmp_path):
    with in_process(create_app(tmp_path / "no-atlas")) as http:
        for params, cli_message, server_message in [
            ({"power": "-1"}, "Error: --power must be at least 0; got -1", "invalid request: query.power: Input should be "
                                                                            "greater than or equal to 0"),
            ({"propagation": "1.5"}, "Error: --propagation must be from 0 to 1; got 1.5", "invalid request: query.propagation:"),
            ({"power": "inf"}, "Error: --power must be at least 0; got inf", "power must be at least 0; got inf"),
            ({"min_margin": "nan"}, "Error: --min-margin must be from 0 to 1; got nan", "invalid request: query.min_margin:"),
            ({"center": "middle"}, "Error: --center must be one of auto, query, reference, balanced, got 'middle'",
             "center must be one of auto, query, reference, balanced, got 'middle'"),
        ]:
            args = [a for name, value in params.items() for a in ("--" + name.replace("_", "-"), value)]
            result = runner.invoke(cli_app, ["query", str(tmp_path / "absent.h5ad"), "--atlas", str(tmp_path / "no-atlas"),
                                             *args, "--quiet"])
            assert (result.exit_code, " ".join(result.output.split())) == (1, cli_message)
            response = http.post("/annotate", params=params, json={"genes": ["INS"], "counts": [[1]]})
            assert response.status_code == 400 and response.json()["error"].startswith(server_message), response.text


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return small_atlas(tmp_path_factory.mktemp("options") / "atlas")


@pytest.fixture(scope="module")
def query(tmp_path_factory):
    adata = make_counts(n_cells=150, seed=21, depth=2000, n_types=4)  # type3 is not in the atlas
    path = tmp_path_factory.mktemp("query") / "query.h5ad"
    adata.write_h5ad(path)
    return adata, path


# Each changes the labels of this query (asserted), so a surface that dropped it would fail.
CHANGES = [{"min_margin": 0.6}, {"power": 0.0, "k": 60}, {"propagation": 0.9}, {"novelty": False},
           {"novelty_cutoff": -20.0}, {"center": "reference", "k": 3}]


def _cli_table(path, atlas, options, tmp_path):
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        args += [flag if value else "--no-" + name.replace("_", "-")] if isinstance(value, bool) else [flag, str(value)]
    table = tmp_path / "table.csv"
    result = runner.invoke(cli_app, ["query", str(path), "--atlas", str(atlas), "--table", str(table), "--overwrite",
                                     "--quiet", *args])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(table.read_text()), index_col="cell", keep_default_na=False)


@pytest.mark.parametrize("options", CHANGES, ids=lambda o: ",".join(o))
def test_a_value_means_the_same_on_every_surface(options, atlas, query, tmp_path):
    adata, path = query
    base = annotate(adata, atlas)
    local = annotate(adata, atlas, **options)
    assert not local.labels.equals(base.labels), "the option changes nothing here: pick another value"
    with in_process_client(create_app(atlas)) as client:
        remote = client.annotate(adata, **options)
        counted = client.annotate_counts(adata.X, genes=list(adata.var_names), cells=list(adata.obs_names),
                                         options=AnnotateOptions.from_flat(**options))
    cli = _cli_table(path, atlas, options, tmp_path)
    for other in (remote.table, counted.table, cli):
        assert list(other.index) == list(local.table.index)
        for column in ("label", "raw_label", "unassigned_reason"):
            assert list(other[column]) == list(local.table[column]), column
        np.testing.assert_allclose(other["score"].to_numpy(dtype=float), local.table["score"].to_numpy(dtype=float), rtol=1e-6)
    info = remote.info
    assert (info["min_margin"], info["power"], info["propagation"]) == \
        (local.info["min_margin"], local.info["power"], local.info["propagation"])


def test_version_pins_the_atlas_on_every_surface(atlas, query, tmp_path):
    from screader_db.store import open_atlas

    adata, path = query
    opened = open_atlas(atlas)
    assert annotate(adata, opened, version=1, k=5).info["atlas_version"] == 1
    with pytest.raises(ScreaderError, match=r"^version 2 of the atlas at .* was asked for, but the atlas given is version 1; "
                                            r"open version 2, or leave version out$"):
        annotate(adata, opened, version=2)
    with in_process(create_app(atlas)) as http:
        payload = {"genes": list(adata.var_names), "counts": adata.X[:5].toarray().tolist()}
        assert http.post("/annotate", params={"version": 1}, json=payload).status_code == 200
        refused = http.post("/annotate", params={"version": 2}, json=payload)
    assert refused.status_code == 409
    assert refused.json()["error"] == ("this server annotates against the atlas's current version, 1, not version 2; "
                                       "leave version out, or ask for version 1")
    result = runner.invoke(cli_app, ["query", str(path), "--atlas", str(atlas), "--version", "2", "--quiet"])
    assert result.exit_code == 1 and "Error: " in result.output


def test_an_options_object_and_flat_names_are_the_same_call(atlas, query):
    adata, _ = query
    chosen = AnnotateOptions.from_flat(k=5, min_margin=0.2)
    a = annotate(adata, atlas, options=chosen)
    b = annotate(adata, atlas, k=5, min_margin=0.2)
    c = annotate(adata, atlas, options=AnnotateOptions.from_flat(k=9), k=5, min_margin=0.2)  # flat names win
    for other in (b, c):
        assert a.table.equals(other.table)
        np.testing.assert_array_equal(a.neighbour_ids, other.neighbour_ids)
    with pytest.raises(ScreaderError, match=r"'min_scor' is not an annotate option \(did you mean 'min_score'\?\)"):
        annotate(adata, atlas, min_scor=0.5)
