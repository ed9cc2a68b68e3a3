"""Cell search: every kind of query and filter on a small generated atlas, the refusals, the options on
every surface, the server and client in process, the CLI, and the acceptance checks on pbmc3k."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts
from serving import in_process, in_process_client, small_atlas
from typer.testing import CliRunner

from screader_db.builders.datasets import add_dataset
from screader_db.cell_embedding import l2_normalise
from screader_db.cell_search import (
    HIT_COLUMNS,
    SearchResult,
    filtered_search,
    search,
    where_cells,
)
from screader_db.cli import app as cli_app
from screader_db.client import search_params
from screader_db.errors import GeneOverlapError, InputDataError, ScreaderError, ScreaderWarning, SqlError
from screader_db.gene_signatures import parse_signature, read_signature, signature_vector
from screader_db.options import SEARCH_OPTIONS, SearchOptions, search_option_fields, search_option_help
from screader_db.server import MAX_K, create_app
from screader_db.sql import run_sql
from screader_db.store import open_atlas

runner = CliRunner()
QUERY_INPUTS = {"cells", "ids", "centroid_of_ids", "centroid_of_label", "signature"}
CLI_ONLY = {"atlas", "out_path", "verify", "overwrite", "quiet"}
EXAMPLE = {"k": 7, "datasets": ["a"], "labels": ["x", "y"], "where": "label = 'x'", "timeout": 5.0, "center": "reference",
           "layer": "counts", "use_raw": True, "gene_key": "symbol", "species": "mouse", "input_scale": "ln",
           "batch_key": "sample"}
D1 = "metadata->>'donor' = 'd1'"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """The small atlas (200 cells of data set 'synthetic') with a second data set of 120 cells ('second')."""
    root = small_atlas(tmp_path_factory.mktemp("search") / "atlas")
    add_dataset(root, make_counts(n_cells=120, seed=5), label_key="cell_type", name="second")
    return root


@pytest.fixture(scope="module")
def opened(atlas):
    return open_atlas(atlas)


@pytest.fixture(scope="module")
def vectors(opened):
    ids, rows = opened.embeddings()
    return pd.DataFrame(rows, index=ids)


def _exact(vectors, query, allowed, k):
    """The exact top k of ``query`` among the ``allowed`` ids, by brute force."""
    sims = vectors.loc[allowed].to_numpy() @ np.asarray(query, dtype=np.float32).ravel()
    order = np.argsort(-sims, kind="stable")[:k]
    return np.asarray(allowed)[order], sims[order]


def test_ids_find_themselves_first_with_their_metadata(opened):
    cells = opened.cells()
    ids = cells.index[[0, 7, 250]].tolist()  # two of 'synthetic', one of 'second'
    result = search(opened, ids=ids, k=5)
    hits = result.hits
    assert list(hits.columns) == list(HIT_COLUMNS)
    assert list(hits["query"]) == [str(i) for i in ids for _ in range(5)]
    assert list(hits["rank"]) == [1, 2, 3, 4, 5] * 3
    first = hits[hits["rank"] == 1]
    assert list(first["cell_id"]) == ids
    np.testing.assert_allclose(first["similarity"], 1.0, atol=1e-5)
    assert (hits.groupby("query", sort=False)["similarity"].apply(lambda s: s.is_monotonic_decreasing)).all()
    expected = cells.loc[hits["cell_id"]]
    for column in ("dataset", "barcode", "label", "label_harmonised"):
        assert list(hits[column]) == list(expected[column].astype(str)), column
    donors = [json.loads(text)["donor"] for text in hits["metadata"]]
    assert list(hits["donor"]) == donors and set(donors) <= {"d1", "d2"}
    assert result.info["query"] == "ids" and result.info["queries"] == 3 and result.info["searched_cells"] == 320
    again = opened.search(ids=ids, k=5)  # Atlas.search delegates
    assert again.hits.equals(hits)


def test_centroid_is_the_normalised_mean_of_stored_vectors(opened, vectors):
    cells = opened.cells()
    members = cells.index[(cells["label"] == "type1").to_numpy()].to_numpy()
    centroid = l2_normalise(vectors.loc[members].to_numpy().astype(np.float64).mean(axis=0, keepdims=True))
    by_ids = search(opened, centroid_of=members.tolist(), k=10)
    by_label = search(opened, centroid_of="type1", k=10)
    ids, sims = _exact(vectors, centroid, vectors.index.to_numpy(), 10)
    for result in (by_ids, by_label):
        assert list(result.hits["cell_id"]) == list(ids)
        np.testing.assert_allclose(result.hits["similarity"], sims, rtol=1e-5)
        assert set(result.hits["query"]) == {"centroid"}
        assert (result.hits["label"] == "type1").all()
    assert by_label.info["centroid_cells"] == len(members) and by_label.info["centroid_of_label"] == "type1"


def test_a_signature_is_the_reference_centre_plus_its_weights(opened):
    embedder = opened.embedder
    genes = ["CD19", "MS4A1", "LYZ"]
    assert all(g in embedder.genes for g in genes)
    vector, used, missing = signature_vector(embedder, {"CD19": 1.0, "MS4A1": 2.0, "LYZ": -0.5, "NOTAGENE": 1.0})
    weights = np.zeros(len(embedder.genes), dtype=np.float32)
    for gene, weight in used.items():
        weights[embedder.genes.index(gene)] = weight
    # genept centres a single cell on the reference's centre: the pseudo-cell centred is the weights alone
    expected = l2_normalise((weights @ embedder.projection)[None, :])
    np.testing.assert_allclose(vector, expected, atol=1e-5)
    assert used == {"CD19": 1.0, "MS4A1": 2.0, "LYZ": -0.5} and missing == ["NOTAGENE"]
    scaled, _, _ = signature_vector(embedder, {"CD19": 3.0, "MS4A1": 6.0, "LYZ": -1.5})
    np.testing.assert_allclose(scaled, vector, atol=1e-5)
    lower, _, _ = signature_vector(embedder, {"cd19": 1.0, "ms4a1": 2.0, "lyz": -0.5})  # names mapped as queries' are
    np.testing.assert_allclose(lower, vector, atol=1e-5)


def test_signature_genes_missing_from_the_atlas_are_reported(opened, vectors):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = search(opened, signature={"INS": 1, "GCG": 1, "NOTAGENE": 1, "ALSONOT": 2}, k=8)
    assert [str(w.message) for w in caught if issubclass(w.category, ScreaderWarning)] == [
        "2 of the signature's 4 genes are not among the 50 genes the atlas embeds cells over and were left out: NOTAGENE, ALSONOT"]
    assert result.info["signature_genes"] == {"INS": 1.0, "GCG": 1.0}
    assert result.info["signature_missing"] == ["NOTAGENE", "ALSONOT"]
    vector, _, _ = signature_vector(opened.embedder, {"INS": 1, "GCG": 1})
    assert list(result.hits["cell_id"]) == list(_exact(vectors, vector, vectors.index.to_numpy(), 8)[0])
    with pytest.raises(GeneOverlapError) as caught_error:
        search(opened, signature="NOTAGENE:1,ALSONOT")
    assert str(caught_error.value) == ("none of the signature's 2 genes (NOTAGENE, ALSONOT) is among the 50 genes the atlas "
                                       "embeds cells over. List them with `screader-db sql \"SELECT gene FROM genes\"`")


def test_a_signature_reads_every_form_alike(tmp_path):
    expected = {"CD19": 1.0, "MS4A1": 2.5, "LYZ": -1.0}
    table = tmp_path / "signature.tsv"
    table.write_text("gene\tweight\nCD19\t1\nMS4A1\t2.5\n# a comment\nLYZ\t-1\n")
    bare = tmp_path / "genes.txt"
    bare.write_text("CD19\nMS4A1\n")
    assert read_signature(expected) == expected
    assert read_signature("CD19:1,MS4A1:2.5, LYZ:-1") == expected == parse_signature("CD19:1 MS4A1:2.5;LYZ:-1")
    assert read_signature(str(table)) == expected == read_signature(table)
    assert read_signature(pd.DataFrame({"gene": list(expected), "w": list(expected.values())})) == expected
    assert read_signature(pd.Series(expected)) == expected
    assert read_signature(bare) == {"CD19": 1.0, "MS4A1": 1.0} == read_signature(["CD19", "MS4A1"]) == read_signature("CD19,MS4A1")


@pytest.mark.parametrize(("signature", "message"), [
    ("", "the signature names no genes; give genes with weights, as 'CD19:1,MS4A1:1' or a file of gene and weight columns"),
    ("CD19:x", "the signature's weight of CD19 is 'x', not a number; write genes with weights as 'CD19:1,MS4A1:1'"),
    ({"CD19": float("nan")}, "the signature's weight of CD19 is nan; weights are finite numbers"),
    ("CD19:1,CD19:2", "the signature names CD19 twice; name each gene once"),
    ("CD19:0,MS4A1:0", "every weight of the signature is 0; give the genes that mark the cells a weight above 0"),
    (pd.DataFrame({"a": ["CD19"], "b": [1], "c": [2]}), "a signature table has two columns, gene and weight; this one has 3"),
    ("missing.tsv", "the signature file missing.tsv does not exist; give a file of gene and weight columns, or genes with "
                    "weights as 'CD19:1,MS4A1:1'"),
], ids=["empty", "not-a-number", "nan", "twice", "all-zero", "three-columns", "no-file"])
def test_bad_signatures_are_refused(signature, message):
    with pytest.raises(InputDataError) as caught:
        read_signature(signature)
    assert str(caught.value) == message


def test_two_names_of_one_gene_are_refused(opened):
    with pytest.raises(InputDataError, match=r"^the signature names CD19 twice \(as CD19 and cd19\); name each gene once$"):
        search(opened, signature={"CD19": 1, "cd19": 2})


def test_query_cells_find_themselves(atlas, opened, tmp_path):
    adata = make_counts(n_cells=200, seed=0)  # the atlas's own 'synthetic' cells
    path = tmp_path / "query.h5ad"
    adata.write_h5ad(path)
    from_memory = search(opened, cells=adata, k=3, datasets=["synthetic"])
    from_file = search(atlas, cells=path, k=3, datasets=["synthetic"])
    assert from_memory.hits.equals(from_file.hits)
    first = from_file.hits[from_file.hits["rank"] == 1]
    assert list(first["query"]) == list(adata.obs_names) == list(first["barcode"])
    np.testing.assert_allclose(first["similarity"], 1.0, atol=1e-4)
    info = from_file.info
    assert (info["query"], info["queries"], info["empty_cells"], info["genes_matched"]) == ("cells", 200, 0, 50)
    assert info["panel"] == {"used": False}


def test_empty_query_cells_get_no_hits(opened):
    adata = make_counts(n_cells=60, seed=8)
    counts = adata.X.tolil()
    counts[:2] = 0
    adata.X = counts.tocsr()
    result = search(opened, cells=adata, k=4)
    assert result.info["empty_cells"] == 2 and result.info["queries"] == 58
    assert set(result.hits["query"]) == set(adata.obs_names[2:]) and len(result.hits) == 58 * 4


@pytest.mark.parametrize("filters", [
    {"where": D1},
    {"datasets": ["second"]},
    {"labels": ["type0", "type2"]},
    {"where": "metadata->>'donor' = 'd2' AND label <> 'type1'", "datasets": ["synthetic"]},
    {"where": "cell_id % 7 = 0"},
], ids=["donor", "dataset", "labels", "combined", "sparse"])
def test_filters_restrict_the_search_itself(opened, vectors, filters):
    ids = opened.cells().index[[0, 1, 2, 210]].tolist()
    result = search(opened, ids=ids, k=12, **filters)
    cells = opened.cells()
    keep = pd.Series(True, index=cells.index)
    if "where" in filters:
        keep &= cells.index.isin(run_sql(opened, f"SELECT cell_id FROM cells WHERE {filters['where']}")["cell_id"])
    if "datasets" in filters:
        keep &= cells["dataset"].isin(filters["datasets"])
    if "labels" in filters:
        keep &= cells["label"].isin(filters["labels"])
    allowed = cells.index[keep.to_numpy()].to_numpy()
    assert 12 < len(allowed) < len(cells)
    assert result.hits["cell_id"].isin(allowed).all()  # never a cell outside the filters
    assert result.info["searched_cells"] == len(allowed)
    for query in ids:  # and the hits are the nearest allowed cells, not what survived an unfiltered top k
        hits = result.hits[result.hits["query"] == str(query)]
        exact, sims = _exact(vectors, vectors.loc[query], allowed, 12)
        assert list(hits["cell_id"]) == list(exact)
        np.testing.assert_allclose(hits["similarity"], sims, rtol=1e-5, atol=1e-6)


class _Stored:
    """Stored vectors by id, as :class:`~screader_db.cell_search.StoredVectors` gives them."""

    def __init__(self, ids, vectors):
        self.index, self.vectors, self.read = pd.Index(ids), vectors, 0

    def of(self, wanted, *, flag="--ids"):
        self.read += 1
        return self.vectors[self.index.get_indexer(wanted)]


@pytest.fixture(scope="module")
def ivf():
    """An IVF index over 20 groups of 300 clustered vectors, and the vectors by id."""
    from screader_db.index import CellIndex

    rng = np.random.default_rng(0)
    centres = l2_normalise(rng.normal(size=(20, 32)))
    group = np.repeat(np.arange(20), 300)
    vectors = l2_normalise(centres[group] + 0.15 * rng.normal(size=(len(group), 32)))
    ids = np.arange(len(group), dtype=np.int64) + 1000
    index = CellIndex.build(vectors, ids, kind="ivf")
    assert index.kind == "ivf" and index.nprobe < index.info.nlist
    return index, pd.DataFrame(vectors, index=ids), group


@pytest.mark.parametrize("exact_allowed", [100_000, 0], ids=["exact-over-allowed", "selector-then-exact"])
def test_an_approximate_index_never_leaves_a_filtered_query_short(ivf, exact_allowed, monkeypatch):
    import screader_db.cell_search as cell_search

    monkeypatch.setattr(cell_search, "EXACT_ALLOWED", exact_allowed)
    index, vectors, group = ivf
    ids = vectors.index.to_numpy()
    allowed = ids[group == 3]  # one group of 20, searched from cells of the others
    queries = vectors.to_numpy()[group != 3][::50]
    _, alone = index.search(queries, 10, allowed=allowed)
    short = (alone < 0).any(axis=1)
    assert short.sum() > len(queries) // 2, "the selector alone finds them: filter more tightly"
    stored = _Stored(ids, vectors.to_numpy())
    sims, found, again = filtered_search(index, queries, 10, allowed, stored)
    assert again == (len(queries) if exact_allowed else short.sum()) and stored.read == 1
    assert (found >= 0).all() and np.isin(found, allowed).all()
    for row in np.flatnonzero(short) if not exact_allowed else range(len(queries)):
        exact, exact_sims = _exact(vectors, queries[row], allowed, 10)
        assert list(found[row]) == list(exact)
        np.testing.assert_allclose(sims[row], exact_sims, rtol=1e-5, atol=1e-6)
    unfiltered = filtered_search(index, queries, 10, None, stored)
    assert unfiltered[2] == 0 and stored.read == 1


def test_where_runs_over_the_cells_view(opened):
    expected = run_sql(opened, f"SELECT cell_id FROM cells WHERE {D1} ORDER BY cell_id")["cell_id"].to_numpy()
    assert np.array_equal(where_cells(opened, D1), expected)
    assert len(expected) and np.array_equal(where_cells(opened, f"{D1} -- a comment"), expected)


@pytest.mark.parametrize(("where", "message"), [
    ("1=1; DROP VIEW cells", r"^--where takes one SQL condition over the columns of the cells view \(cell_id, dataset, "
                             r".*\), such as \"metadata->>'donor' = 'D3'\"; '1=1; DROP VIEW cells' is not one \(Parser Error: "),
    ("label = 'type0') UNION SELECT 1 --", r"^--where takes one SQL condition .* is not one \(Parser Error: syntax error"),
    ("nope = 1", r"^the --where condition 'nope = 1' failed: Binder Error: Referenced column \"nope\" not found"),
    ("cell_id IN (SELECT 1 FROM read_csv('/etc/passwd'))",
     r"^the --where condition .* failed: the query tried to reach something outside the atlas \(.*\); `sql` reads only the atlas"),
], ids=["two-statements", "injection", "unknown-column", "file"])
def test_where_conditions_that_are_not_read_only_or_fail_are_refused(opened, where, message):
    with pytest.raises(SqlError, match=message):
        search(opened, ids=[int(opened.cells().index[0])], where=where)


def test_filters_that_leave_no_cell_are_refused(opened):
    first = [int(opened.cells().index[0])]
    with pytest.raises(ScreaderError) as caught:
        search(opened, ids=first, where="label = 'nothing'")
    assert str(caught.value) == ("no atlas cell meets --where \"label = 'nothing'\"; loosen it. Count the cells it keeps with "
                                 "`screader-db sql \"SELECT count(*) FROM cells WHERE label = 'nothing'\"`")
    with pytest.raises(ScreaderError) as caught:
        search(opened, ids=first, where="dataset = 'second'", datasets=["synthetic"])
    assert str(caught.value) == ("no atlas cells are left: 120 meet --where and 200 --datasets/--labels, but none meets both; "
                                 "loosen the filters")
    with pytest.raises(ScreaderError, match=r"^the atlas has no data set 'third'; known: second, synthetic$"):
        search(opened, ids=first, datasets=["third"])


def test_bad_queries_are_refused(opened):
    with pytest.raises(ScreaderError) as caught:
        search(opened, ids=[5, 4294967296, 7])
    assert str(caught.value) == ("--ids: version 2 of the atlas has no cells with ids 5, 7 (2 of the 3 ids given). Look ids up "
                                 "in the cell_id column of `screader-db sql \"SELECT cell_id, dataset, label FROM cells\"`")
    for kwargs, message in [
        ({}, "give exactly one query: --cells, --ids, --centroid-of-ids, --centroid-of-label or --signature; got none"),
        ({"ids": [1], "signature": "CD19"}, "give exactly one query: --cells, --ids, --centroid-of-ids, --centroid-of-label or "
                                            "--signature; got --ids and --signature"),
        ({"ids": ["x"]}, "--ids takes atlas cell ids (whole numbers, the cell_id column of the cells view); got 'x'"),
        ({"ids": []}, "--ids names no cells; give atlas cell ids (the cell_id column of the cells view)"),
        ({"centroid_of": "type9"}, "--centroid-of-label: the atlas has no cells labelled 'type9'; its labels: type0, type1, "
                                   "type2"),
        ({"ids": [4294967296], "k": 0}, "k must be at least 1; got 0"),
        ({"ids": [4294967296], "kk": 3}, "'kk' is not a search option (did you mean 'k'?); the options are "
                                         + ", ".join(SEARCH_OPTIONS)),
    ]:
        with pytest.raises(ScreaderError) as caught:
            search(opened, **kwargs)
        assert str(caught.value) == message, kwargs


def test_the_result_writes_flattens_and_travels_as_json(opened, tmp_path):
    result = search(opened, centroid_of="type2", k=6, where=D1)
    flat = result.to_frame(flatten=True)
    assert "metadata" not in flat and (flat["metadata.donor"] == "d1").all() and (flat["donor"] == "d1").all()
    summary = result.summary()
    assert summary.loc["type2", "hits"] == 6 and summary.loc["type2", "share"] == 1.0
    for name in ("hits.csv", "hits.tsv", "hits.parquet"):
        path = result.write(tmp_path / name)
        read = pd.read_parquet(path) if name.endswith("parquet") else pd.read_csv(path, sep="\t" if name.endswith("tsv") else ",",
                                                                                  keep_default_na=False)
        assert list(read["cell_id"]) == list(result.hits["cell_id"]) and list(read["metadata"]) == list(result.hits["metadata"])
    with pytest.raises(ScreaderError, match="exists; pass --overwrite"):
        result.write(tmp_path / "hits.csv")
    payload = json.loads(json.dumps(result.to_payload()))
    assert payload["hits"][0]["metadata"]["donor"] == "d1"
    back = SearchResult.from_payload(payload)
    pd.testing.assert_frame_equal(back.hits, result.hits)


# ---------------------------------------------------------------- options on every surface


def _cli_params():
    import typer.main

    return {p.name: p for p in typer.main.get_command(cli_app).commands["search"].params
            if p.name not in CLI_ONLY | QUERY_INPUTS}


def _server_params(tmp_path):
    schema = create_app(tmp_path / "no-atlas").openapi()
    paths = schema["paths"]["/search"]
    post = {p["name"]: p for p in paths["post"]["parameters"]}
    get = {p["name"]: p for p in paths["get"]["parameters"] if p["name"] not in QUERY_INPUTS}
    return post, get


def test_every_surface_takes_every_search_option(tmp_path):
    assert set(EXAMPLE) == set(SEARCH_OPTIONS)
    assert set(_cli_params()) == set(SEARCH_OPTIONS)
    post, get = _server_params(tmp_path)
    assert set(post) == set(get) == set(SEARCH_OPTIONS) and {p["in"] for p in post.values()} == {"query"}
    assert set(search_params(**EXAMPLE)) == set(SEARCH_OPTIONS)
    assert set(SearchOptions.from_flat(**EXAMPLE).flat()) == set(SEARCH_OPTIONS)
    assert search_params() == {} and search_params(k=50, datasets=["a", "b"], use_raw=True) == \
        {"k": "50", "datasets": ["a", "b"], "use_raw": "true"}


def test_search_help_defaults_and_bounds_come_from_the_options(tmp_path):
    cli, (server, _) = _cli_params(), _server_params(tmp_path)
    defaults = SearchOptions().flat()
    for field in search_option_fields():
        name = field.name
        assert cli[name].help.startswith(search_option_help(name)), name
        assert server[name]["description"] == search_option_help(name), name
        assert cli[name].default == defaults[name] == field.default, name
        schema = server[name]["schema"]
        assert schema.get("default") == field.default, name
        low, high = field.spec.low, MAX_K if name == "k" else field.spec.high
        bounds = next(b for b in schema.get("anyOf", [schema]) if "type" in b and b["type"] != "null")
        assert (bounds.get("minimum"), bounds.get("maximum")) == (low, high), name


def test_a_search_option_means_the_same_on_every_surface(atlas, opened, tmp_path):
    options = {"k": 9, "where": D1, "labels": ["type0", "type1"]}
    local = search(opened, centroid_of="type0", **options)
    with in_process_client(create_app(atlas)) as client:
        remote = client.search(centroid_of="type0", **options)
    out = tmp_path / "hits.csv"
    result = runner.invoke(cli_app, ["search", "--atlas", str(atlas), "--centroid-of-label", "type0", "--k", "9", "--where", D1,
                                     "--labels", "type0,type1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    cli = pd.read_csv(out, keep_default_na=False)
    for other in (remote.hits, cli):
        assert list(other["cell_id"]) == list(local.hits["cell_id"])
        np.testing.assert_allclose(other["similarity"].to_numpy(dtype=float), local.hits["similarity"], rtol=1e-6)
    assert len(local.hits) == 9 and (local.hits["donor"] == "d1").all()


# ---------------------------------------------------------------- server and client


def test_the_server_answers_every_query_as_the_library(atlas, opened, tmp_path):
    ids = opened.cells().index[[3, 4]].tolist()
    adata = make_counts(n_cells=40, seed=0)
    with in_process(create_app(atlas)) as http:
        by_get = http.get("/search", params={"ids": f"{ids[0]},{ids[1]}", "k": 4, "where": D1})
        by_post = http.post("/search", params={"k": 4, "where": D1}, json={"ids": ids})
        centroid = http.get("/search", params=[("centroid_of_ids", str(ids[0])), ("centroid_of_ids", str(ids[1]))])
        signature = http.get("/search", params={"signature": "INS:1,GCG:1", "k": 5})
        signature_json = http.post("/search", params={"k": 5}, json={"signature": {"INS": 1, "GCG": 1}})
        path = tmp_path / "query.h5ad"
        adata.write_h5ad(path)
        upload = http.post("/search", params={"k": 2}, files={"file": ("query.h5ad", path.read_bytes())})
    local = search(opened, ids=ids, k=4, where=D1)
    for response in (by_get, by_post):
        assert response.status_code == 200, response.text
        assert SearchResult.from_payload(response.json()).hits.equals(local.hits)
        assert response.json()["info"]["atlas"] == "atlas"
    assert [h["cell_id"] for h in centroid.json()["hits"]] == list(search(opened, centroid_of=ids).hits["cell_id"])
    expected = list(search(opened, signature="INS:1,GCG:1", k=5).hits["cell_id"])
    assert [h["cell_id"] for h in signature.json()["hits"]] == expected == [h["cell_id"] for h in signature_json.json()["hits"]]
    assert upload.status_code == 200, upload.text
    assert SearchResult.from_payload(upload.json()).hits.equals(search(opened, cells=adata, k=2).hits)


def test_the_client_sends_every_query(atlas, opened, tmp_path):
    signature = tmp_path / "signature.tsv"
    signature.write_text("INS\t1\nGCG\t2\n")
    with in_process_client(create_app(atlas)) as client:
        for query in ({"ids": opened.cells().index[:2].tolist()}, {"centroid_of": "type1"},
                      {"centroid_of": opened.cells().index[:5].tolist()}, {"signature": signature},
                      {"cells": make_counts(n_cells=30, seed=2)}):
            remote = client.search(k=3, **query)
            assert remote.hits.equals(search(opened, k=3, **query).hits), list(query)
        with pytest.raises(ScreaderError, match=r"^give exactly one query: .*; got ids and signature$"):
            client.search(ids=[1], signature="INS")


@pytest.mark.parametrize(("request_args", "status", "error"), [
    ({"params": {"ids": "5"}}, 400, "ids: version 2 of the atlas has no cells with ids 5 (1 of the 1 ids given)"),
    ({"params": {"ids": "x"}}, 400, "ids takes atlas cell ids (whole numbers); got 'x'"),
    ({"params": {}}, 400, "give exactly one query: ids, centroid_of_ids, centroid_of_label, signature, or query cells as "
                          "an .h5ad (POST, multipart field 'file'); got none"),
    ({"params": {"centroid_of_label": "type0", "k": "0"}}, 400, "invalid request: query.k: Input should be greater than or "
                                                                "equal to 1"),
    ({"params": {"centroid_of_label": "type0", "where": "nope = 1"}}, 400,
     "the where condition 'nope = 1' failed: Binder Error: Referenced column \"nope\" not found"),
    ({"params": {"signature": "NOTAGENE:1"}}, 422, "none of the signature's 1 genes (NOTAGENE) is among the 50 genes"),
    ({"params": {"signature": "/etc/hostname"}}, 422, "none of the signature's 1 genes (/etc/hostname) is among"),
    ({"json": {"idz": [1]}}, 422, "the JSON body is not one query: "),
    ({"json": {"ids": list(range(2000))}, "params": {"k": 1000}}, 413,
     "the request asks for 2,000 queries × k = 1,000, 2,000,000 hits; this server returns at most 1,000,000 per request"),
    ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type 'text/plain'"),
], ids=["unknown-id", "bad-id", "no-query", "k", "where", "no-overlap", "signature-never-a-file", "bad-json", "too-many",
        "content-type"])
def test_the_server_refuses_with_api_statuses(atlas, request_args, status, error):
    with in_process(create_app(atlas)) as http:
        method = "POST" if set(request_args) & {"json", "content"} else "GET"
        response = http.request(method, "/search", **request_args)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error), response.json()["error"]
    assert "--" not in response.json()["error"]


# ---------------------------------------------------------------- command line


def test_the_cli_searches_and_writes_the_hits(atlas, opened, tmp_path):
    signature = tmp_path / "b.tsv"
    signature.write_text("gene\tweight\nINS\t1\nGCG\t1\nNOTAGENE\t1\n")
    out = tmp_path / "hits.parquet"
    result = runner.invoke(cli_app, ["search", "--atlas", str(atlas), "--signature", str(signature), "--k", "15",
                                     "--datasets", "synthetic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "15 hits for 1 query (signature)" in result.output and "Signature genes used: INS, GCG" in result.output
    assert "Warning: 1 of the signature's 3 genes are not among the 50 genes" in " ".join(result.output.split())
    with pytest.warns(ScreaderWarning, match="left out: NOTAGENE$"):
        local = search(opened, signature=signature, k=15, datasets=["synthetic"])
    assert list(pd.read_parquet(out)["cell_id"]) == list(local.hits["cell_id"])
    ids = opened.cells().index[:2].astype(str).tolist()
    shown = runner.invoke(cli_app, ["search", "--atlas", str(atlas), "--ids", ",".join(ids), "--k", "12", "--quiet"])
    assert shown.exit_code == 0 and "4 more hits not shown; write them all with --out hits.csv" in shown.output
    for args, message in [
        (["--ids", "5"], "Error: --ids: version 2 of the atlas has no cells with ids 5"),
        (["--ids", "1", "--signature", "INS"], "Error: give exactly one query: --cells, --ids, --centroid-of-ids, "
                                               "--centroid-of-label or --signature; got --ids and --signature"),
        (["--centroid-of-ids", "1", "--centroid-of-label", "type0"], "Error: give --centroid-of-ids or --centroid-of-label, not both"),
        (["--ids", ids[0], "--k", "0"], "Error: --k must be at least 1; got 0"),
        (["--ids", ids[0], "--where", "1=1; DROP VIEW cells"], "Error: --where takes one SQL condition"),
        (["--ids", ids[0], "--out", str(out)], f"Error: {out} exists; pass --overwrite to replace it"),
    ]:
        refused = runner.invoke(cli_app, ["search", "--atlas", str(atlas), *args, "--quiet"])
        assert refused.exit_code == 1 and " ".join(refused.output.split()).startswith(message), refused.output


# ---------------------------------------------------------------- acceptance on pbmc3k


@pytest.mark.data("pbmc3k")
def test_pbmc3k_ids_and_query_cells_find_themselves_first(pbmc_split, pbmc_parts, tmp_path):
    root, _, _ = pbmc_split
    reference, _ = pbmc_parts
    opened = open_atlas(root)
    cells = opened.cells()
    ids = cells.index[:: max(1, len(cells) // 40)].tolist()
    by_id = search(opened, ids=ids, k=5).hits
    assert list(by_id[by_id["rank"] == 1]["cell_id"]) == ids
    path = tmp_path / "reference_cells.h5ad"
    reference.write_h5ad(path)
    found = search(root, cells=path, k=3)
    first = found.hits[found.hits["rank"] == 1]
    assert found.info["queries"] == reference.n_obs - found.info["empty_cells"]
    assert (first["barcode"].to_numpy() == first["query"].to_numpy()).mean() == 1.0


@pytest.mark.data("pbmc3k")
def test_pbmc3k_b_cells_are_found_by_centroid_and_signature(pbmc_split):
    root, _, _ = pbmc_split
    opened = open_atlas(root)
    centroid = search(opened, centroid_of="B", k=50)
    assert (centroid.hits["label"] == "B").mean() >= 0.95
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScreaderWarning)  # CD19 is not among the atlas's genes
        signature = search(opened, signature={"MS4A1": 1, "CD79A": 1, "CD79B": 1, "CD19": 1}, k=50)
    assert (signature.hits["label"] == "B").mean() >= 0.9
    assert set(signature.info["signature_genes"]) >= {"MS4A1", "CD79A"}
    donors = search(opened, centroid_of="B", k=50, where="label <> 'B'")
    assert len(donors.hits) == 50 and not (donors.hits["label"] == "B").any()
