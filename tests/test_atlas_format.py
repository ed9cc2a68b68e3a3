"""The atlas format: kept fixture atlases open and answer, and every older version of a file kind is read.

The fixtures under tests/fixtures/atlas_v<N> are written once by make_fixture_atlas.py and never
rebuilt here; each test works on a copy, so opening one writes nothing into the repository.
"""

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_counts

from screader_db import annotate, atlas_format, integrity, store
from screader_db.catalogue import SCHEMA, read_tables
from screader_db.checksums import sha256_file
from screader_db.errors import AtlasError

FIXTURES = Path(__file__).parent / "fixtures"
KEPT = sorted(p.name for p in FIXTURES.glob("atlas_v*") if p.is_dir())
# what each kept fixture records; a new fixture adds its line, none is ever changed
RECORDED = {
    "atlas_v3": {"version_info": 3, "cells": 3, "layout": 1, "label_profiles": 2, "genes": 1, "gene_embeddings": 1,
                 "embedder": 2, "index": 1, "expression": 1, "catalogue": 2},
    "atlas_v4": {"version_info": 4, "cells": 4, "layout": 1, "label_profiles": 2, "genes": 1, "gene_embeddings": 1,
                 "embedder": 2, "index": 1, "expression": 1, "catalogue": 3},
}
PARQUET_KINDS = ("cells", "layout", "label_profiles", "genes", "gene_embeddings")
N_CELLS = 40  # make_fixture_atlas.py: make_counts(n_cells=40, seed=0)


def _copy(name: str, tmp_path: Path) -> Path:
    """A copy of a kept fixture with its catalogue unpacked."""
    root = shutil.copytree(FIXTURES / name, tmp_path / name, symlinks=True)
    version = root / "current"
    packed = version / f"{atlas_format.CATALOGUE}.gz"
    with gzip.open(packed, "rb") as source, (version / atlas_format.CATALOGUE).open("wb") as target:
        shutil.copyfileobj(source, target)
    packed.unlink()
    return root


def _rewrite(version: Path, relative: str, table: pa.Table, *, to: str | None = None) -> None:
    """Replace one file of a version (at ``to`` when given) and record its new sha256."""
    info_path = version / atlas_format.VERSION_FILE
    info = json.loads(info_path.read_text())
    (version / relative).unlink()
    target = to or relative
    pq.write_table(table, version / target)
    del info["files"][relative]
    info["files"][target] = sha256_file(version / target)
    info_path.write_text(json.dumps(info))


def _edit_info(version: Path, change) -> None:
    info_path = version / atlas_format.VERSION_FILE
    info = json.loads(info_path.read_text())
    change(info)
    info_path.write_text(json.dumps(info))


def test_a_fixture_of_the_current_format_is_kept():
    current = f"atlas_v{atlas_format.FORMATS['version_info']}"
    assert current in KEPT, f"run tests/fixtures/make_fixture_atlas.py and commit tests/fixtures/{current}"
    assert RECORDED[current] == atlas_format.written_formats()
    assert set(KEPT) == set(RECORDED)


def test_the_formats_agree_with_the_tags_files_carry():
    from screader_db import cell_embedding

    assert f"cell-embedder-{atlas_format.FORMATS['embedder']}" == cell_embedding.FORMAT
    assert f"expression-{atlas_format.FORMATS['expression']}" == atlas_format.EXPRESSION_FORMAT
    assert f"panel-{atlas_format.FORMATS['panel']}" == atlas_format.PANEL_FORMAT


def test_an_expression_part_is_named_and_tagged_by_the_format(tmp_path):
    import scipy.sparse as sp

    from screader_db.stored_expression import StoredExpression, read_part, write_part

    relative = atlas_format.expression_part_path("pbmc.v2", 3)
    assert relative == "expression/pbmc.v2/part-00003.parquet"
    assert atlas_format.kind_of(relative) == "expression" and atlas_format.part_dataset(relative) == "pbmc.v2"
    X = sp.csr_matrix(np.array([[0.0, 1.5], [2.0, 0.0]], dtype=np.float32))
    write_part(tmp_path / relative, X, ids=np.array([7, 9]), genes=["CD3E", "LYZ"], provenance='{"build_id": "b"}')
    meta = pq.read_schema(tmp_path / relative).metadata
    assert json.loads(meta[atlas_format.EXPRESSION_KEY]) == {"format": "expression-1", "values": "log1p counts per 10,000"}
    assert json.loads(meta[atlas_format.GENES_KEY]) == ["CD3E", "LYZ"]
    assert meta[atlas_format.PROVENANCE_KEY] == b'{"build_id": "b"}'
    ids, read, genes = read_part(tmp_path / relative)
    np.testing.assert_array_equal(ids, [7, 9])
    np.testing.assert_array_equal(read.toarray(), X.toarray())
    assert genes == ["CD3E", "LYZ"]
    assert StoredExpression(tmp_path, datasets=["pbmc.v2"]).files == [tmp_path / relative]
    assert StoredExpression(tmp_path, datasets=["pbmc"]).files == []


@pytest.mark.parametrize("name", KEPT)
def test_a_kept_fixture_opens_verified_and_answers(name, tmp_path):
    root = _copy(name, tmp_path)
    opened = store.open_atlas(root)
    integrity.verify_version(opened.path, opened.info["files"])
    assert len(opened.cells()) == N_CELLS and opened.layout() is not None and opened.profiles() is not None
    reference = make_counts(n_cells=N_CELLS, seed=0)
    query = reference[:12].copy()
    result = annotate(query, opened)
    own = store.cell_ids(1, N_CELLS)[:12]
    np.testing.assert_array_equal(result.neighbour_ids[:, 0], own)
    np.testing.assert_allclose(result.neighbour_similarities[:, 0], 1.0, atol=1e-4)
    assert list(result.table["label"]) == list(query.obs["cell_type"].astype(str))
    from screader_db.sql import run_sql

    counts = run_sql(opened, "SELECT count(*) AS n FROM cells")
    assert int(counts["n"][0]) == N_CELLS


@pytest.mark.parametrize("name", KEPT)
def test_a_kept_fixture_records_its_format_versions(name):
    version = FIXTURES / name / "current"
    info = json.loads((version / atlas_format.VERSION_FILE).read_text())
    recorded = RECORDED[name]
    assert info["format"] == atlas_format.LAYOUT_FORMAT
    assert info["formats"] == recorded
    for relative in info["files"]:
        kind = atlas_format.kind_of(relative)
        assert kind in recorded, relative
        if kind in PARQUET_KINDS:
            found = atlas_format.recorded_version(pq.read_schema(version / relative).metadata, kind, relative)
            assert found == recorded[kind], relative
    from safetensors import safe_open

    with safe_open(str(version / atlas_format.EMBEDDER), framework="numpy") as handle:
        assert handle.metadata()["format"] == f"cell-embedder-{recorded['embedder']}"
    part = next(r for r in info["files"] if atlas_format.kind_of(r) == "expression")
    tag = json.loads(pq.read_schema(version / part).metadata[atlas_format.EXPRESSION_KEY])
    assert tag["format"] == f"expression-{recorded['expression']}"


def test_the_current_fixture_has_the_documented_schemas(tmp_path):
    root = _copy(f"atlas_v{atlas_format.FORMATS['version_info']}", tmp_path)
    version = root / "current"
    dim = json.loads((version / atlas_format.VERSION_FILE).read_text())["dim"]
    profiles = pq.read_schema(version / atlas_format.LABEL_PROFILES)
    n_profile_genes = len(json.loads(profiles.metadata[atlas_format.GENES_KEY]))
    expected = {
        atlas_format.cell_part_path("synthetic", 0): atlas_format.cells_schema(dim),
        atlas_format.LAYOUT: atlas_format.layout_schema(),
        atlas_format.LABEL_PROFILES: atlas_format.profiles_schema(n_profile_genes),
        atlas_format.GENES: atlas_format.genes_schema(),
        atlas_format.GENE_EMBEDDINGS: atlas_format.gene_embeddings_schema(dim),
    }
    for relative, schema in expected.items():
        assert pq.read_schema(version / relative).remove_metadata().equals(schema), relative
    with duckdb.connect(str(version / atlas_format.CATALOGUE), read_only=True) as con:
        for name, columns in SCHEMA.items():
            found = [row[0] for row in con.execute(f"DESCRIBE {name}").fetchall()]
            assert found == [c.split()[0] for c in columns.split(", ")], name


def test_cells_of_version_1_get_their_harmonised_labels_and_ontology_ids(tmp_path):
    root = _copy(KEPT[-1], tmp_path)
    version = root / "current"
    relative = atlas_format.cell_part_path("synthetic", 0)
    table = pq.read_table(version / relative)
    old = table.drop_columns(["label_harmonised", "ontology_id"]).replace_schema_metadata(None)
    _rewrite(version, relative, old, to=f"{atlas_format.CELLS}/synthetic.parquet")
    _edit_info(version, lambda info: info.pop("formats"))
    part = version / atlas_format.CELLS / "synthetic.parquet"
    assert atlas_format.cells_version(pq.read_schema(part), part) == 1
    cells = store.open_atlas(root).cells()
    assert list(cells.columns) == list(atlas_format.CELL_FRAME_COLUMNS[1:])
    assert (cells["label_harmonised"] == cells["label"]).all() and (cells["ontology_id"] == "").all()
    assert len(annotate(make_counts(n_cells=12, seed=0), root).table) == 12


def test_cells_of_version_2_carry_the_map(tmp_path):
    root = _copy(KEPT[-1], tmp_path)
    version = root / "current"
    expected = store.open_atlas(root).layout()
    relative = atlas_format.cell_part_path("synthetic", 0)
    table = pq.read_table(version / relative).replace_schema_metadata(None)
    coords = expected.reindex(table.column("cell_id").to_numpy())[["x", "y"]].to_numpy(dtype=np.float32)
    umap = pa.FixedSizeListArray.from_arrays(pa.array(coords.ravel(), pa.float32()), 2)
    _rewrite(version, relative, table.append_column(atlas_format.CELLS_V2_MAP, umap),
             to=f"{atlas_format.CELLS}/synthetic.parquet")
    (version / atlas_format.LAYOUT).unlink()
    _edit_info(version, lambda info: (info.pop("formats"), info["files"].pop(atlas_format.LAYOUT)))
    part = version / atlas_format.CELLS / "synthetic.parquet"
    assert atlas_format.cells_version(pq.read_schema(part), part) == 2
    found = store.open_atlas(root).layout()
    assert found is not None
    np.testing.assert_array_equal(found.loc[expected.index].to_numpy(), expected.to_numpy())


def test_version_info_of_version_1_gets_its_history(tmp_path):
    root = _copy(KEPT[-1], tmp_path)
    version = root / "current"
    before = json.loads((version / atlas_format.VERSION_FILE).read_text())
    _edit_info(version, lambda info: [info.pop(key) for key in ("formats", "history", "last_step")])
    opened = store.open_atlas(root)
    step = {"build_id": before["provenance"]["build_id"], "action": "build", "created_at": before["created_at"]}
    assert opened.info["last_step"] == step and opened.info["history"] == [step]
    assert store.version_history(root)[0]["action"] == "build"


def test_a_catalogue_of_version_1_is_carried_over_with_the_new_columns(tmp_path):
    root = _copy(KEPT[-1], tmp_path)
    catalogue = root / "current" / atlas_format.CATALOGUE
    with duckdb.connect(str(catalogue)) as con:
        con.execute("ALTER TABLE cells DROP COLUMN label_harmonised")
        con.execute("ALTER TABLE cells DROP COLUMN ontology_id")
    cells = read_tables(catalogue)["cells"]
    assert list(cells.columns) == [c.split()[0] for c in SCHEMA["cells"].split(", ")]
    assert (cells["label_harmonised"] == cells["label"]).all() and (cells["ontology_id"] == "").all()


def test_label_profiles_of_version_1_read_as_uncalibrated():
    from screader_db.vote import DEFAULT_POWER, DEFAULT_PROPAGATION

    found = atlas_format.annotation_defaults({}, {"cutoff": -2.5})
    assert found == {"k": 15, "power": DEFAULT_POWER, "propagation": DEFAULT_PROPAGATION, "min_score": 0.0, "scores": {}}
    assert atlas_format.annotation_defaults({"k": 9, "vote_power": 2}, None)["k"] == 9


def test_files_from_a_newer_screader_db_are_refused(tmp_path):
    root = _copy(KEPT[-1], tmp_path)
    version = root / "current"
    _edit_info(version, lambda info: info["formats"].update(cells=99))
    with pytest.raises(AtlasError, match=r"holds cells files of format version 99; this screader-db reads up to "
                                         r"version 4\. It was written by a newer screader-db: upgrade screader-db"):
        store.open_atlas(root)
    _edit_info(version, lambda info: info["formats"].update(cells=4))
    relative = atlas_format.cell_part_path("synthetic", 0)
    table = pq.read_table(version / relative)
    meta = {**table.schema.metadata, atlas_format.FORMAT_KEY: json.dumps({"kind": "cells", "version": 5})}
    _rewrite(version, relative, table.replace_schema_metadata(meta))
    with pytest.raises(AtlasError, match=r"part-00000.parquet holds cells files of format version 5"):
        store.open_atlas(root).cells()
    _edit_info(version, lambda info: info.update(format="screader-atlas-2"))
    with pytest.raises(AtlasError, match=r"has format 'screader-atlas-2'; this screader-db reads 'screader-atlas-1'"):
        store.open_atlas(root)


def test_a_file_kind_follows_from_the_path():
    assert atlas_format.kind_of("cells/pbmc/part-00003.parquet") == "cells"
    assert atlas_format.kind_of("cells/pbmc.parquet") == "cells"
    assert atlas_format.kind_of("expression/pbmc/part-00000.parquet") == "expression"
    assert atlas_format.kind_of("index.faiss.json") == "index"
    assert atlas_format.kind_of("panels/0123abcd/PANEL.json") == "panel"
    assert atlas_format.kind_of("notes.txt") is None
    assert atlas_format.part_dataset("cells/pbmc/part-00003.parquet") == "pbmc"
    assert atlas_format.part_dataset("cells/pbmc.v2.parquet") == "pbmc.v2"
    assert atlas_format.part_dataset("expression/pbmc/part-00000.parquet") == "pbmc"
