"""Read-only SQL over an atlas version: the views, what is refused, file access, output files, the CLI."""

import hashlib
import re
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_counts
from serving import small_atlas
from typer.testing import CliRunner

from screader_db import store
from screader_db.catalogue import SCHEMA
from screader_db.cli import app
from screader_db.errors import InputDataError, OutputExistsError, SqlError
from screader_db.sql import VIEWS, AtlasSQL, head, run_sql, write_result

runner = CliRunner()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return small_atlas(tmp_path_factory.mktemp("sql") / "atlas")


def test_queries_over_the_catalogue_and_the_vectors(atlas):
    counts = run_sql(atlas, "SELECT label, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1")
    expected = make_counts(n_cells=200).obs["cell_type"].value_counts().sort_index()
    assert list(counts["label"]) == list(expected.index)
    assert list(counts["n"]) == list(expected)
    with AtlasSQL(atlas) as db:
        vectors = db.frame("SELECT cell_id, dataset, embedding FROM cell_vectors ORDER BY cell_id")
        joined = db.frame("SELECT c.label, v.embedding FROM cells c JOIN cell_vectors v USING (cell_id)")
        assert db.frame("SELECT name, n_cells FROM datasets").to_dict("records") == [{"name": "synthetic", "n_cells": 200}]
    ids, expected_vectors = store.open_atlas(atlas).embeddings()
    order = np.argsort(ids)
    assert list(vectors["cell_id"]) == list(ids[order])
    assert np.array_equal(np.stack(vectors["embedding"].to_numpy()), expected_vectors[order])
    assert len(joined) == 200


def test_every_view_has_the_documented_columns(atlas):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## SQL", 1)[1].split("\n## ", 1)[0]
    with AtlasSQL(atlas) as db:
        for view in VIEWS:
            columns = list(db.frame(f"DESCRIBE {view}")["column_name"])
            documented = re.search(rf"^\| `{view}` \| (.*?) \|", section, re.M)
            assert documented, f"README's SQL section does not describe {view}"
            assert [c.strip(" `") for c in documented.group(1).split(",")] == columns, view
            if view in SCHEMA:
                assert columns == [c.split()[0] for c in SCHEMA[view].split(", ")]


def test_reading_statements_run(atlas):
    with AtlasSQL(atlas) as db:
        for statement in ("WITH t AS (SELECT * FROM genes) SELECT count(*) FROM t", "FROM builds", "VALUES (1, 2)",
                          "DESCRIBE cells", "SHOW TABLES", "SUMMARIZE genes", "EXPLAIN SELECT * FROM cells",
                          "/* why */ EXPLAIN ANALYZE SELECT count(*) FROM cells", "PRAGMA table_info('cells')",
                          "SELECT 1;"):
            assert len(db.frame(statement)) >= 1, statement


REFUSED = [
    ("DELETE FROM cells", "DELETE statement", "DELETE"),
    ("INSERT INTO cells SELECT * FROM cells", "INSERT statement", "INSERT"),
    ("UPDATE cells SET label = 'x'", "UPDATE statement", "UPDATE"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statement", "CREATE"),
    ("CREATE MACRO m() AS 1", "CREATE statement", "CREATE"),
    ("DROP VIEW cells", "DROP statement", "DROP"),
    ("ALTER VIEW cells RENAME TO c", "ALTER statement", "ALTER"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH statement", "ATTACH"),
    ("DETACH atlas", "DETACH statement", "DETACH"),
    ("COPY cells TO '/tmp/cells.csv'", "COPY statement", "COPY"),
    ("COPY (SELECT 1) TO '/tmp/one.parquet' (FORMAT parquet)", "COPY statement", "COPY"),
    ("EXPORT DATABASE '/tmp/exported'", "EXPORT statement", "EXPORT"),
    ("INSTALL httpfs", "INSTALL statement", "LOAD"),
    ("LOAD httpfs", "LOAD statement", "LOAD"),
    ("SET threads = 1", "SET statement", "SET"),
    ("RESET enable_external_access", "RESET statement", "SET"),
    ("PRAGMA threads = 1", "PRAGMA statement", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA enable_profiling statement", "PRAGMA"),
    ("USE atlas", "USE statement", "SET"),
    ("BEGIN TRANSACTION", "BEGIN statement", "TRANSACTION"),
    ("CHECKPOINT", "CHECKPOINT statement", "CALL"),
    ("CALL pragma_version()", "CALL statement", "CALL"),
    ("VACUUM", "VACUUM statement", "VACUUM"),
    ("SET VARIABLE x = 1", "SET statement", "SET"),
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "EXPLAIN of a CREATE statement", "CREATE"),
    ("EXPLAIN ANALYZE COPY cells TO '/tmp/cells.csv'", "EXPLAIN of a COPY statement", "COPY"),
]


@pytest.mark.parametrize(("statement", "what", "kind"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_statements_that_are_not_reads_are_refused(atlas, statement, what, kind):
    with AtlasSQL(atlas) as db, pytest.raises(SqlError) as caught:
        db.frame(statement)
    assert str(caught.value).startswith(f"`sql` is read-only: refused the {what} (DuckDB statement type {kind}); "
                                        "it runs one SELECT-type statement")


def test_one_statement_at_a_time_and_parse_errors(atlas):
    with AtlasSQL(atlas) as db:
        with pytest.raises(SqlError, match="`sql` runs exactly one statement; found 2"):
            db.frame("SELECT 1; DELETE FROM cells")
        with pytest.raises(SqlError, match=r"found 0 \(the text is empty or only comments\)"):
            db.frame("-- nothing")
        with pytest.raises(SqlError, match='cannot parse the SQL: Parser Error: syntax error at or near "SELEC"'):
            db.frame("SELEC 1")
        with pytest.raises(SqlError, match="the query failed: Catalog Error: Table with name nope does not exist"):
            db.frame("SELECT * FROM nope")


def test_files_outside_the_atlas_cannot_be_read_and_settings_are_locked(atlas, tmp_path):
    outside = tmp_path / "secret.csv"
    outside.write_text("a,b\n1,2\n")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "other.parquet")
    cells_part = store.open_atlas(atlas).path / "cells" / "synthetic.parquet"
    before = hashlib.sha256((atlas / "atlas.duckdb").read_bytes()).hexdigest()
    with AtlasSQL(atlas) as db:
        for statement in (f"SELECT * FROM read_csv('{outside}')", f"SELECT * FROM '{outside}'",
                          f"SELECT * FROM read_parquet('{tmp_path / 'other.parquet'}')",
                          f"SELECT * FROM read_parquet('{cells_part}')", "SELECT * FROM read_text('/etc/passwd')",
                          "SELECT * FROM glob('/*')"):
            with pytest.raises(SqlError, match="the query tried to reach something outside the atlas .*file system "
                                               "operations are disabled"):
                db.frame(statement)
        settings = db.frame("SELECT current_setting('enable_external_access') AS e, "
                            "current_setting('lock_configuration') AS l")
        assert settings.to_dict("records") == [{"e": False, "l": True}]
        with pytest.raises(duckdb.Error, match="the configuration has been locked"):
            db.con.execute("SET enable_external_access = true")
        assert len(db.frame("SELECT * FROM cell_vectors")) == 200
    assert hashlib.sha256((atlas / "atlas.duckdb").read_bytes()).hexdigest() == before


def test_results_written_to_csv_tsv_and_parquet(atlas, tmp_path):
    query = "SELECT cell_id, label FROM cells ORDER BY cell_id"
    with AtlasSQL(atlas) as db:
        assert write_result(db.reader(query), tmp_path / "cells.csv") == 200
        assert write_result(db.reader(query, batch_size=64), tmp_path / "cells.tsv") == 200
        assert write_result(db.reader("SELECT * FROM cell_vectors"), tmp_path / "vectors.parquet") == 200
        assert write_result(db.reader("SELECT * FROM cells WHERE false"), tmp_path / "empty.parquet") == 0
        with pytest.raises(OutputExistsError, match="cells.csv exists; pass --overwrite to replace it"):
            write_result(db.reader(query), tmp_path / "cells.csv")
        assert write_result(db.reader(f"{query} LIMIT 5"), tmp_path / "cells.csv", overwrite=True) == 5
        with pytest.raises(SqlError, match="CSV cannot hold list columns such as embedding; cast them to text"):
            write_result(db.reader("SELECT * FROM cell_vectors"), tmp_path / "vectors.csv")
        with pytest.raises(InputDataError, match="unknown output format '.json'"):
            write_result(db.reader(query), tmp_path / "cells.json")
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 5
    assert list(pd.read_csv(tmp_path / "cells.tsv", sep="\t").columns) == ["cell_id", "label"]
    assert pq.read_table(tmp_path / "vectors.parquet").schema.field("embedding").type.list_size == 16
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
    assert not (tmp_path / "vectors.csv").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_head_counts_every_row(atlas):
    with AtlasSQL(atlas) as db:
        shown, total = head(db.reader("SELECT * FROM cells", batch_size=30), 7)
    assert (shown.num_rows, total) == (7, 200)


def test_older_versions_can_be_queried(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    small_atlas(root, n_cells=120, seed=1, overwrite=True)
    assert run_sql(root, "SELECT count(*) AS n FROM cells")["n"][0] == 120
    assert run_sql(root, "SELECT count(*) AS n FROM cells", version=1)["n"][0] == 200


def test_sql_command(atlas, tmp_path):
    result = runner.invoke(app, ["sql", "SELECT label, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1",
                                 "--atlas", str(atlas)])
    assert result.exit_code == 0, result.output
    assert "3 rows from" in result.output and "type0" in result.output
    capped = runner.invoke(app, ["sql", "SELECT * FROM cell_vectors", "--atlas", str(atlas), "--max-rows", "5"])
    assert capped.exit_code == 0, capped.output
    assert "195 more rows not shown" in capped.output
    refused = runner.invoke(app, ["sql", "DROP VIEW cells", "--atlas", str(atlas)])
    assert refused.exit_code == 1
    assert "Error: `sql` is read-only: refused the DROP statement" in " ".join(refused.output.split())
    out = tmp_path / "labels.parquet"
    written = runner.invoke(app, ["sql", "SELECT * FROM cells", "--atlas", str(atlas), "--out", str(out)])
    assert written.exit_code == 0 and "200 rows written" in written.output
    again = runner.invoke(app, ["sql", "SELECT * FROM cells", "--atlas", str(atlas), "--out", str(out)])
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output
    missing = runner.invoke(app, ["sql", "SELECT 1", "--atlas", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "Error: no atlas at" in missing.output
    helped = runner.invoke(app, ["sql", "--help"])
    assert helped.exit_code == 0 and "Example:" in helped.output


CROSS_JOIN = "SELECT sum(hash(a.barcode || b.barcode || c.barcode || d.barcode)) FROM cells a, cells b, cells c, cells d"


def test_a_statement_past_its_time_limit_is_stopped(atlas):
    began = time.monotonic()
    with pytest.raises(SqlError, match=r"the statement ran past its time limit of 1 s and was stopped; narrow it"):
        run_sql(atlas, CROSS_JOIN, timeout=1)
    assert time.monotonic() - began < 10
    result = runner.invoke(app, ["sql", CROSS_JOIN, "--atlas", str(atlas), "--timeout", "0.5"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Error: the statement ran past its time limit of 0.5 s" in text
    assert run_sql(atlas, "SELECT count(*) AS n FROM cells", timeout=1)["n"].tolist() == [200]


def test_spills_go_to_the_atlas_scratch_area_with_a_cap(atlas, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with AtlasSQL(atlas, max_spill_bytes=50_000_000) as db:
        folder, cap = db.con.execute("SELECT current_setting('temp_directory'), "
                                     "current_setting('max_temp_directory_size')").fetchone()
        assert Path(folder).parent == atlas / ".tmp" and Path(folder).name.startswith("sql-")
        assert Path(folder).is_dir() and cap in ("47.6 MiB", "50.0 MB")
    assert not Path(folder).exists()
    assert not (tmp_path / ".tmp").exists()
