"""The DuckDB catalogue of one atlas version: what is in it and where each part came from.

Tables: ``builds`` (one row per build step, with model, gene-embedding checksum, parameters and
package versions), ``datasets``, ``cells`` (metadata only; vectors live in Parquet and FAISS),
``genes``, ``gene_embeddings``, ``files`` (every file of the version with its sha256) and
``provenance`` (one row per table saying which build wrote it). Every row of ``cells``,
``genes`` and ``gene_embeddings`` carries the ``build_id`` that made it. The schema and its
versions are :mod:`screader_db.atlas_format`'s (see docs/FORMAT.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from screader_db.atlas_format import CATALOGUE_DESCRIPTIONS, CATALOGUE_SCHEMA, upgrade_catalogue_table
from screader_db.integrity import reading

SCHEMA = CATALOGUE_SCHEMA
DESCRIPTIONS = CATALOGUE_DESCRIPTIONS


def write_catalogue(path: str | Path, tables: dict[str, pd.DataFrame], *, build_id: str,
                    details: dict[str, Any]) -> None:
    """Create ``path``, a new DuckDB file holding ``tables`` under :data:`SCHEMA`.

    Parameters
    ----------
    path
        The file to create (an existing one is replaced).
    tables
        Rows by table name; a table missing or empty here is created empty. ``provenance`` is
        written here, one row per table.
    build_id
        The build that writes the catalogue.
    details
        The build's provenance, stored with each ``provenance`` row.

    Returns
    -------
    None
    """
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


def read_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """Every catalogue table but ``files`` and ``provenance`` (which each version writes anew),
    upgraded to the current catalogue version, for the next version to carry over.

    Parameters
    ----------
    path
        The catalogue file, of any version.

    Returns
    -------
    dict
        Table name -> rows, with the columns of the current version.

    Raises
    ------
    AtlasDamagedError
        The file cannot be read.
    """
    import duckdb

    with reading(Path(path), "the catalogue"):
        con = duckdb.connect(str(path), read_only=True)
        try:
            return {name: upgrade_catalogue_table(name, con.execute(f"SELECT * FROM {name}").df()) for name in SCHEMA
                    if name not in ("files", "provenance")}
        finally:
            con.close()
