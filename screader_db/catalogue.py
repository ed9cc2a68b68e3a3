"""The DuckDB catalogue of one atlas version: what is in it and where each part came from.

Tables: ``builds`` (one row per build step, with model, gene-embedding checksum, parameters and
package versions), ``datasets``, ``cells`` (metadata only; vectors live in Parquet and FAISS),
``genes``, ``gene_embeddings``, ``files`` (every file of the version with its sha256) and
``provenance`` (one row per table saying which build wrote it). Every row of ``cells``,
``genes`` and ``gene_embeddings`` carries the ``build_id`` that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from screader_db.integrity import reading

SCHEMA = {
    "builds": "build_id VARCHAR, version INTEGER, created_at TIMESTAMP, action VARCHAR, builder_version VARCHAR, "
              "screader_db_version VARCHAR, model_id VARCHAR, model_sha VARCHAR, encoder_key VARCHAR, method VARCHAR, "
              "gene_embedding_sha256 VARCHAR, text_sha256 VARCHAR, parameters JSON, package_versions JSON",
    "datasets": "dataset_id INTEGER, name VARCHAR, label_key VARCHAR, n_cells BIGINT, n_labels INTEGER, species VARCHAR, "
                "source_file VARCHAR, source_sha256 VARCHAR, added_at TIMESTAMP, added_by VARCHAR, build_id VARCHAR, "
                "parameters JSON",
    "cells": "cell_id BIGINT, dataset VARCHAR, barcode VARCHAR, label VARCHAR, label_harmonised VARCHAR, ontology_id VARCHAR, "
             "metadata JSON, build_id VARCHAR",
    "genes": "gene VARCHAR, position INTEGER, reference_mean FLOAT, text_sha256 VARCHAR, build_id VARCHAR",
    "gene_embeddings": "gene VARCHAR, model_id VARCHAR, model_sha VARCHAR, text_sha256 VARCHAR, vector FLOAT[], "
                       "build_id VARCHAR",
    "files": "path VARCHAR, sha256 VARCHAR, size BIGINT, kind VARCHAR, build_id VARCHAR",
    "provenance": "table_name VARCHAR, build_id VARCHAR, description VARCHAR, details JSON",
}

DESCRIPTIONS = {
    "builds": "one row per build step that made this version",
    "datasets": "reference data sets in the atlas",
    "cells": "reference cells: id, data set, label, obs metadata (vectors are in cells/*.parquet and the FAISS index)",
    "genes": "genes the cell embeddings are computed over",
    "gene_embeddings": "language-model vectors of the atlas genes",
    "files": "every file of this version with its sha256",
    "provenance": "which build wrote each table",
}


def write_catalogue(path: str | Path, tables: dict[str, pd.DataFrame], *, build_id: str,
                    details: dict[str, Any]) -> None:
    """Create ``path`` (a new DuckDB file) holding ``tables`` under the fixed schema."""
    import duckdb

    target = Path(path)
    if target.exists():
        target.unlink()
    con = duckdb.connect(str(target))
    try:
        for name, columns in SCHEMA.items():
            con.execute(f"CREATE TABLE {name} ({columns})")
            frame = tables.get(name)
            if frame is not None and len(frame):
                con.register("incoming", frame)
                names = ", ".join(c.split()[0] for c in columns.split(", "))
                con.execute(f"INSERT INTO {name} SELECT {names} FROM incoming")
                con.unregister("incoming")
        rows = [(name, build_id, DESCRIPTIONS[name], json.dumps(details, sort_keys=True)) for name in SCHEMA]
        con.executemany("INSERT INTO provenance VALUES (?, ?, ?, ?)", rows)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def read_table(path: str | Path, name: str) -> pd.DataFrame:
    """One catalogue table as a DataFrame (read-only connection)."""
    import duckdb

    with reading(Path(path), "the catalogue"):
        con = duckdb.connect(str(path), read_only=True)
        try:
            return con.execute(f"SELECT * FROM {name}").df()
        finally:
            con.close()


def read_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """Every catalogue table (except files and provenance, which each version writes anew)."""
    import duckdb

    with reading(Path(path), "the catalogue"):
        con = duckdb.connect(str(path), read_only=True)
        try:
            return {name: con.execute(f"SELECT * FROM {name}").df() for name in SCHEMA
                    if name not in ("files", "provenance")}
        finally:
            con.close()
