"""Data sets added to and removed from an atlas, versions, garbage collection and query filters."""

import numpy as np
import pytest
from conftest import make_counts

from screader_db import annotate, store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.builders.datasets import add_dataset, remove_dataset
from screader_db.errors import AtlasError, OutputExistsError, ScreaderError

SETTINGS = BuildSettings(model="random:16", method="genept", n_genes=50, layout="none")


@pytest.fixture
def two_sets(tmp_path):
    first = make_counts(n_cells=150, seed=1)
    second = make_counts(n_cells=120, seed=2)
    second.obs["cell_type"] = second.obs["cell_type"].astype(str).str.replace("type", "kind")
    root = tmp_path / "atlas"
    build_atlas(first, root, label_key="cell_type", dataset_name="first", settings=SETTINGS)
    add_dataset(root, second, label_key="cell_type", name="second")
    return root, first, second


def test_add_makes_a_new_version_with_new_ids(two_sets):
    root, _first, _second = two_sets
    atlas = store.open_atlas(root)
    assert atlas.version == 2
    assert [d["name"] for d in atlas.datasets] == ["first", "second"]
    cells = atlas.cells()
    assert len(cells) == 270
    assert set(store.dataset_of(cells.index.to_numpy())) == {1, 2}
    assert atlas.index.ntotal == 270
    old = store.open_atlas(root, version=1)
    assert len(old.cells()) == 150 and old.index.ntotal == 150
    assert (atlas.path / "embedder.safetensors").stat().st_ino == (old.path / "embedder.safetensors").stat().st_ino
    history = store.version_history(root)
    assert [h["action"] for h in history] == ["build", "add second"]
    import duckdb

    con = duckdb.connect(str(root / "atlas.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM cells").fetchone()[0] == 270
    assert [r[0] for r in con.execute("SELECT action FROM builds ORDER BY version").fetchall()] == ["build", "add second"]
    con.close()


def test_queries_can_be_restricted(two_sets):
    root, _, _ = two_sets
    query = make_counts(n_cells=60, seed=3)
    only_second = annotate(query, root, datasets=["second"])
    assert set(only_second.labels) <= {"kind0", "kind1", "kind2"}
    assert (store.dataset_of(only_second.neighbour_ids) == 2).all()
    no_kind = annotate(query, root, exclude_labels=["kind0", "kind1", "kind2"])
    assert set(no_kind.labels) <= {"type0", "type1", "type2"}
    picked = annotate(query, root, labels=["type1"])
    assert set(picked.labels) == {"type1"}
    with pytest.raises(ScreaderError, match="the atlas has no data set 'third'; known: first, second"):
        annotate(query, root, datasets=["third"])


def test_remove_gives_back_the_single_data_set_atlas(two_sets, tmp_path):
    root, first, _ = two_sets
    remove_dataset(root, "second")
    alone = tmp_path / "alone"
    build_atlas(first, alone, label_key="cell_type", dataset_name="first", settings=SETTINGS)
    query = make_counts(n_cells=60, seed=4)
    a, b = annotate(query, root), annotate(query, alone)
    np.testing.assert_array_equal(a.neighbour_ids, b.neighbour_ids)
    np.testing.assert_allclose(a.neighbour_similarities, b.neighbour_similarities, rtol=1e-6)
    assert a.labels.equals(b.labels)
    assert store.open_atlas(root).version == 3


def test_add_and_remove_errors(two_sets):
    root, first, _ = two_sets
    with pytest.raises(OutputExistsError, match="already has a data set named 'first'; remove it first"):
        add_dataset(root, first, label_key="cell_type", name="first")
    with pytest.raises(AtlasError, match="the atlas has no data set named 'nope'; data sets: first, second"):
        remove_dataset(root, "nope")
    remove_dataset(root, "second")
    with pytest.raises(AtlasError, match="'first' is the atlas's only data set"):
        remove_dataset(root, "first")


def test_gc_keeps_the_newest_and_the_current(two_sets):
    root, _, _ = two_sets
    remove_dataset(root, "second")
    assert store.list_versions(root) == [1, 2, 3]
    assert store.collect_garbage(root, keep=1) == [1, 2]
    assert store.list_versions(root) == [3]
    assert len(store.open_atlas(root).cells()) == 150


def _old_layout(version) -> None:
    """Rewrite a version as cells version 2 lays it out: one cells file per data set right in ``cells/``,
    no format tag, no stored expression (docs/FORMAT.md), with VERSION.json's file list to match."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from screader_db import atlas_format
    from screader_db.checksums import sha256_file

    info = json.loads((version / atlas_format.VERSION_FILE).read_text())
    files = {path: digest for path, digest in info["files"].items()
             if atlas_format.kind_of(path) not in ("cells", "expression")}
    for folder in sorted(p for p in (version / atlas_format.CELLS).iterdir() if p.is_dir()):
        table = pa.concat_tables([pq.read_table(part) for part in sorted(folder.glob("*.parquet"))])
        meta = {k: v for k, v in table.schema.metadata.items() if k != atlas_format.FORMAT_KEY}
        target = version / atlas_format.CELLS / f"{folder.name}.parquet"
        pq.write_table(table.replace_schema_metadata(meta), target)
        shutil.rmtree(folder)  # the version's own links; the earlier version keeps its files
        files[target.relative_to(version).as_posix()] = sha256_file(target)
    shutil.rmtree(version / atlas_format.EXPRESSION, ignore_errors=True)
    info["files"] = files
    info.pop("formats", None)
    (version / atlas_format.VERSION_FILE).write_text(json.dumps(info))


def test_removing_a_data_set_from_an_atlas_of_the_old_layout_drops_its_cells(two_sets):
    from screader_db import atlas_format

    root, _, _ = two_sets
    previous = store.open_atlas(root)
    _old_layout(previous.path)
    old = store.open_atlas(root)
    assert [p.name for p in old.cell_parts()] == ["first.parquet", "second.parquet"]
    assert len(old.cells()) == 270
    removed = remove_dataset(root, "second")
    assert [p.relative_to(removed.path).as_posix() for p in removed.cell_parts()] == ["cells/first.parquet"]
    assert (removed.path / "cells" / "first.parquet").stat().st_ino == (old.path / "cells" / "first.parquet").stat().st_ino
    cells = removed.cells()
    assert len(cells) == 150 and set(cells["dataset"]) == {"first"}
    assert removed.index.ntotal == 150
    assert sorted(p for p in removed.info["files"] if atlas_format.kind_of(p) == "cells") == ["cells/first.parquet"]


def test_second_writer_is_refused_while_the_lock_is_held(two_sets):
    root, _, _second = two_sets
    with store.writer_lock(root), pytest.raises(AtlasError, match="another process is writing to the atlas"):
        remove_dataset(root, "second", wait=0.1)


@pytest.mark.parametrize("name", ["-rf", "naïve", "a" * 101, "x" * 300, "a/b", "..", "with space", ""])
def test_data_set_names_follow_the_rule_the_message_states(two_sets, name):
    root, _, second = two_sets
    shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
    rule = f"{shown!r} cannot name a data set: use 1 to 100 letters, digits, '-', '_' or '.' (ASCII), not starting with '-'"
    with pytest.raises(AtlasError) as raised:
        add_dataset(root, second, label_key="cell_type", name=name)
    assert str(raised.value) == rule
    assert store.open_atlas(root).version == 2


def test_good_names_and_build_names(tmp_path):
    with pytest.raises(AtlasError, match=r"'-rf' cannot name a data set"):
        build_atlas(make_counts(n_cells=60), tmp_path / "a", label_key="cell_type", dataset_name="-rf", settings=SETTINGS)
    odd = tmp_path / "my data.h5ad"
    make_counts(n_cells=60).write_h5ad(odd)
    with pytest.raises(AtlasError, match=r"'my data' cannot name a data set.*; the name comes from the file name, so give one"):
        build_atlas(odd, tmp_path / "b", label_key="cell_type", settings=SETTINGS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    built = build_atlas(odd, tmp_path / "c", label_key="cell_type", dataset_name="My-data_v1.2", settings=SETTINGS)
    assert [d["name"] for d in built.datasets] == ["My-data_v1.2"]


def _every_sixth_unlabelled():
    """300 generated cells, every sixth (50) without a label."""
    reference = make_counts(n_cells=300, seed=3)
    labels = reference.obs["cell_type"].astype(object)
    labels.iloc[::6] = np.nan
    reference.obs["cell_type"] = labels
    return reference


def test_cells_without_a_label_are_counted_in_a_warning(tmp_path):
    from screader_db.errors import ScreaderWarning

    reference = _every_sixth_unlabelled()
    root = tmp_path / "atlas"
    with pytest.warns(ScreaderWarning, match=r"^50 of 300 cells have no 'cell_type' label \(NaN or empty\) and were left "
                                             r"out of the atlas$"):
        built = build_atlas(reference, root, label_key="cell_type", dataset_name="first", settings=SETTINGS)
    assert built.info["n_cells"] == 250
    extra = make_counts(n_cells=60, seed=4)
    extra.obs["cell_type"] = extra.obs["cell_type"].astype(object)
    extra.obs.iloc[:7, extra.obs.columns.get_loc("cell_type")] = ""
    with pytest.warns(ScreaderWarning, match=r"^7 of 60 cells have no 'cell_type' label"):
        add_dataset(root, extra, label_key="cell_type", name="extra")


def test_build_and_add_on_the_command_line_warn_about_missing_labels(tmp_path):
    from typer.testing import CliRunner

    from screader_db.cli import app

    reference = _every_sixth_unlabelled()
    path = tmp_path / "ref.h5ad"
    reference.write_h5ad(path)
    result = CliRunner().invoke(app, ["build", "--reference", str(path), "--label-key", "cell_type", "--atlas",
                                      str(tmp_path / "atlas"), "--model", "random:16", "--method", "genept", "--n-genes", "50",
                                      "--layout", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Warning: 50 of 300 cells have no 'cell_type' label (NaN or empty)" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["add", str(path), "--atlas", str(tmp_path / "atlas"), "--name", "-rf",
                                      "--label-key", "cell_type", "--quiet"])
    assert result.exit_code == 1
    assert " ".join(result.output.split()).startswith("Error: '-rf' cannot name a data set")
