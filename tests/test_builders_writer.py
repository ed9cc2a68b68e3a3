"""Writing atlas versions: the existence check of a new atlas happens under the writer lock; every
file is written in the format atlas_format describes, with its format version recorded."""

import json
import threading

import pyarrow.parquet as pq
import pytest
from conftest import make_counts

from screader_db import atlas_format, store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.errors import OutputExistsError
from screader_db.progress import Reporter

SETTINGS = BuildSettings(model="random:16", method="genept", n_genes=50, layout="none")


class Started(Reporter):
    """Notes the first stage message a build sends: it comes after the build's early existence check."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def message(self, text: str) -> None:
        self.event.set()


def test_two_builds_into_one_new_folder_only_one_succeeds(tmp_path):
    root = tmp_path / "atlas"
    reporters = [Started(), Started()]
    outcomes: list[object] = [None, None]

    def build(i: int) -> None:
        try:
            outcomes[i] = build_atlas(make_counts(n_cells=120, seed=i), root, label_key="cell_type", dataset_name=f"set{i}",
                                      settings=SETTINGS, wait=120, reporter=reporters[i])
        except OutputExistsError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    # Hold the writer lock until both builds have passed their early check, so both reach the
    # lock believing the folder is new: only the check under the lock can stop the second.
    with store.writer_lock(root):
        for thread in threads:
            thread.start()
        for reporter in reporters:
            assert reporter.event.wait(120)
    for thread in threads:
        thread.join(300)
    failed = [o for o in outcomes if isinstance(o, OutputExistsError)]
    built = [o for o in outcomes if isinstance(o, store.Atlas)]
    assert len(failed) == 1 and len(built) == 1, outcomes
    assert str(failed[0]).startswith(f"an atlas already exists at {root}; pass --overwrite")
    assert store.list_versions(root) == [1]
    assert not any(p.name.startswith(".staging") for p in (root / store.VERSIONS).iterdir())


def test_a_second_build_without_overwrite_is_refused_early(tmp_path):
    root = tmp_path / "atlas"
    build_atlas(make_counts(n_cells=80), root, label_key="cell_type", dataset_name="one", settings=SETTINGS)
    with pytest.raises(OutputExistsError, match="an atlas already exists"):
        build_atlas(make_counts(n_cells=80), root, label_key="cell_type", dataset_name="one", settings=SETTINGS)
    assert store.list_versions(root) == [1]


def test_a_version_records_the_format_of_every_file(tmp_path):
    atlas = build_atlas(make_counts(n_cells=80), tmp_path / "atlas", label_key="cell_type", dataset_name="one",
                        settings=BuildSettings(model="random:16", method="genept", n_genes=50))
    info = json.loads((atlas.path / atlas_format.VERSION_FILE).read_text())
    assert info["format"] == atlas_format.LAYOUT_FORMAT and info["formats"] == atlas_format.written_formats()
    kinds = {atlas_format.kind_of(relative) for relative in info["files"]}
    assert kinds == {"cells", "layout", "label_profiles", "genes", "gene_embeddings", "embedder", "index", "expression"}
    schemas = {"cells": atlas_format.cells_schema(info["dim"]), "layout": atlas_format.layout_schema(),
               "genes": atlas_format.genes_schema(), "gene_embeddings": atlas_format.gene_embeddings_schema(16)}
    for relative in info["files"]:
        kind = atlas_format.kind_of(relative)
        if kind in ("cells", "layout", "label_profiles", "genes", "gene_embeddings"):
            schema = pq.read_schema(atlas.path / relative)
            assert atlas_format.recorded_version(schema.metadata, kind, relative) == atlas_format.FORMATS[kind]
            assert atlas_format.PROVENANCE_KEY in schema.metadata
            if kind in schemas:
                assert schema.remove_metadata().equals(schemas[kind]), relative
