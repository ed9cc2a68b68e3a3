"""The atlas directory's format: every file name, schema and metadata key, with a version per file kind.

docs/FORMAT.md is the written spec; this module is its code. Writers take names, schemas and keys
from here. Readers open every earlier version of each kind: a file's version is the one it records
(``screader_db.format`` in a Parquet file's schema metadata, ``formats`` in ``VERSION.json``) or,
for files written before versions were recorded, the one its contents show, and an explicit
``upgrade from version N`` step brings what was read up to the current version. A version newer
than this module knows is refused: it comes from a newer screader-db.

``FORMATS["version_info"]`` (the version of ``VERSION.json``) is bumped together with any other
kind, so it names the whole set; ``tests/fixtures/atlas_v<N>`` keeps an atlas of each.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from screader_db.errors import AtlasError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from screader_db.novelty import LabelProfiles

# The directory layout (pointer, versions folder, the files of a version). Readers refuse any other.
LAYOUT_FORMAT = "screader-atlas-1"

# Atlas root.
CURRENT = "current"  # symlink -> versions/NNNNNN, switched atomically
VERSIONS = "versions"
CATALOGUE = "atlas.duckdb"  # in each version; at the root a symlink -> current/atlas.duckdb
LOCK = ".lock"  # the writer lock (readers never take it)
TMP = ".tmp"  # readers' scratch area
VERIFIED = "verified.json"  # in TMP: files whose sha256 checked out
STAGING_PREFIX = ".staging-"  # in versions/ and panels/: a version or panel being written
TRASH_PREFIX = ".trash-"  # in versions/: a version being deleted

# One version's folder.
VERSION_FILE = "VERSION.json"
CELLS = "cells"
GENES = "genes.parquet"
GENE_EMBEDDINGS = "gene_embeddings.parquet"
EMBEDDER = "embedder.safetensors"
INDEX = "index.faiss"
INDEX_SIDECAR = "index.faiss.json"
LAYOUT = "layout.parquet"
LABEL_PROFILES = "label_profiles.parquet"
EXPRESSION = "expression"
PANELS = "panels"
PANEL_FILE = "PANEL.json"
CLASSIFIER = "classifier.safetensors"  # in a second opinion's panel folder (classifier.py)

# Parquet schema metadata keys.
PROVENANCE_KEY = b"screader_db.provenance"  # every Parquet file: JSON provenance of the build
FORMAT_KEY = b"screader_db.format"  # JSON {"kind": ..., "version": ...}
GENES_KEY = b"screader_db.genes"  # label profiles and expression parts: JSON list of their genes
NOVELTY_KEY = b"screader_db.novelty"  # label profiles: JSON novelty and score calibration
EXPRESSION_KEY = b"screader_db.expression"  # expression parts: JSON {"format": "expression-1", "values": ...}
ONTOLOGY_KEY = b"screader_db.ontology"  # cells parts: JSON source of the Cell Ontology labels were matched to ({} for none)

ID_SHIFT = 32  # cell id = data set id << ID_SHIFT | row within the data set
DEFAULT_K = 15  # neighbours for atlases whose parameters predate a recorded k

FORMATS: dict[str, int] = {
    "version_info": 4,  # 1 first release; 2 last_step, history; 3 formats; 4 with cells 4 and catalogue 3
    "cells": 4,  # 1 no label_harmonised, ontology_id; 2 one file per data set, map in a umap column; 3 parts;
    # 4 label_ontology, label_broad, ontology_match
    "layout": 1,
    "label_profiles": 2,  # 1 novelty calibration without scores
    "genes": 1,
    "gene_embeddings": 1,
    "embedder": 2,  # cell_embedding.FORMAT "cell-embedder-2"
    "index": 1,
    "expression": 1,  # EXPRESSION_FORMAT
    "catalogue": 3,  # 1 cells table without label_harmonised, ontology_id; 2 without label_ontology, label_broad,
    # ontology_match
    "panel": 1,  # PANEL_FORMAT; added by queries, not part of a version's write
}
# The kinds that carry their own tag instead of a version under FORMAT_KEY (tests check they follow FORMATS).
EXPRESSION_FORMAT = "expression-1"  # expression parts, under EXPRESSION_KEY
EXPRESSION_VALUES = "log1p counts per 10,000"  # what expression parts hold, under EXPRESSION_KEY
PANEL_FORMAT = "panel-1"  # PANEL.json, its "format"
CELLS_V2_MAP = "umap"  # cells version 2: the reference map as a column of two floats

_NAMED = {VERSION_FILE: "version_info", GENES: "genes", GENE_EMBEDDINGS: "gene_embeddings", EMBEDDER: "embedder",
          INDEX: "index", INDEX_SIDECAR: "index", LAYOUT: "layout", LABEL_PROFILES: "label_profiles",
          CATALOGUE: "catalogue"}
_FOLDERS = {CELLS: "cells", EXPRESSION: "expression", PANELS: "panel"}


def version_name(number: int) -> str:
    """The folder name of version ``number`` inside ``versions/`` (six digits).

    Parameters
    ----------
    number
        The version number.

    Returns
    -------
    str
        ``"000003"`` for 3.
    """
    return f"{number:06d}"


def cell_part_path(dataset: str, number: int) -> str:
    """Where part ``number`` of a data set's cells goes, relative to the version folder.

    Parameters
    ----------
    dataset
        The data set's name.
    number
        The part's number (0, 1, ...).

    Returns
    -------
    str
        ``cells/<dataset>/part-NNNNN.parquet``.
    """
    return f"{CELLS}/{dataset}/part-{number:05d}.parquet"


def expression_part_path(dataset: str, number: int) -> str:
    """Where part ``number`` of a data set's stored expression goes, relative to the version folder.

    Parameters
    ----------
    dataset
        The data set's name.
    number
        The part's number (0, 1, ...).

    Returns
    -------
    str
        ``expression/<dataset>/part-NNNNN.parquet``.
    """
    return f"{EXPRESSION}/{dataset}/part-{number:05d}.parquet"


def expression_metadata(provenance: str, genes: list[str]) -> dict[bytes, str]:
    """The schema metadata of an expression part: provenance, gene list and the part's format tag.

    Parameters
    ----------
    provenance
        The build's provenance, as JSON.
    genes
        The part's columns, in order.

    Returns
    -------
    dict
        :data:`PROVENANCE_KEY`, :data:`GENES_KEY` and :data:`EXPRESSION_KEY` with their JSON values.
    """
    return {PROVENANCE_KEY: provenance, GENES_KEY: json.dumps(genes),
            EXPRESSION_KEY: json.dumps({"format": EXPRESSION_FORMAT, "values": EXPRESSION_VALUES})}


def part_dataset(relative: str) -> str:
    """The data set a cells or expression file holds, from its path in any version.

    Parameters
    ----------
    relative
        ``cells/<dataset>/part-NNNNN.parquet``, ``expression/<dataset>/part-NNNNN.parquet``, or
        ``cells/<dataset>.parquet`` (cells versions 1 and 2), relative to the version folder.

    Returns
    -------
    str
        The data set's name.
    """
    parts = PurePosixPath(relative).parts
    return parts[1] if len(parts) > 2 else PurePosixPath(parts[1]).stem


def kind_of(relative: str) -> str | None:
    """The file kind (a key of :data:`FORMATS`) of a path inside a version folder.

    Parameters
    ----------
    relative
        The path relative to the version folder, with ``/`` separators.

    Returns
    -------
    str or None
        The kind, or None for a file that is not part of the format.
    """
    parts = PurePosixPath(relative).parts
    if len(parts) > 1 and parts[0] in _FOLDERS:
        return _FOLDERS[parts[0]]
    return _NAMED.get(relative)


def written_formats() -> dict[str, int]:
    """The version of each kind this screader-db writes with a version (panels are added later).

    Returns
    -------
    dict
        Kind -> version, as recorded under ``formats`` in ``VERSION.json``.
    """
    return {kind: version for kind, version in FORMATS.items() if kind != "panel"}


def write_tensors(path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """Write arrays (as contiguous float32) and string metadata as one safetensors file.

    Parameters
    ----------
    path : str or Path
        The file written (replaced if it exists).
    tensors : dict
        Name -> array.
    meta : dict
        Name -> string, with the file's ``format``.
    """
    import numpy as np
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path), metadata=meta)


def read_tensors(path: str | Path, what: str, expected: str, fix: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and arrays of a safetensors file of the atlas (an embedder, a classifier), checked for its format.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What it holds, for the messages (``cell embedder``, ``classifier``).
    expected : str
        The ``format`` its metadata must name.
    fix : str
        What to do when it names another, for the message.

    Returns
    -------
    tuple of (dict, dict)
        The metadata, and every tensor as a numpy array.

    Raises
    ------
    AtlasError
        The file is unreadable or of another format.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError, SafetensorError) as err:
        message = f"cannot read the {what} {path}: {err}"
        raise AtlasError(message) from err
    if meta.get("format") != expected:
        message = f"{path} has {what} format {meta.get('format')!r}, this version reads {expected!r}; {fix}"
        raise AtlasError(message)
    return meta, arrays


def parquet_metadata(kind: str | None, provenance: str, extra: dict[bytes, str] | None = None) -> dict[bytes, str]:
    """The schema metadata of a Parquet file of the atlas: its provenance, its kind's version and ``extra``.

    Parameters
    ----------
    kind
        The file's kind (a key of :data:`FORMATS`); None for a file outside the format (no version recorded).
    provenance
        The build's provenance, as JSON.
    extra
        Further keys (:data:`GENES_KEY`, :data:`NOVELTY_KEY`) and their JSON values.

    Returns
    -------
    dict
        Keys and values for ``pyarrow.Table.replace_schema_metadata``.
    """
    meta = {PROVENANCE_KEY: provenance}
    if kind is not None:
        meta[FORMAT_KEY] = json.dumps({"kind": kind, "version": FORMATS[kind]})
    meta.update(extra or {})
    return meta


def recorded_version(metadata: dict[bytes, bytes] | None, kind: str, where: Path | str) -> int | None:
    """The version a Parquet file records under :data:`FORMAT_KEY` (None when it records none).

    Parameters
    ----------
    metadata
        The file's schema metadata.
    kind
        The kind the file must be.
    where
        The file, for messages.

    Returns
    -------
    int or None
        The recorded version.

    Raises
    ------
    AtlasError
        The file records another kind, or a version newer than this screader-db reads.
    """
    raw = (metadata or {}).get(FORMAT_KEY)
    if raw is None:
        return None
    found = json.loads(raw)
    if found.get("kind") != kind:
        message = f"{where} records format kind {found.get('kind')!r}, not {kind!r}; the atlas is damaged, rebuild it"
        raise AtlasError(message)
    return check_version(kind, int(found["version"]), where)


def check_version(kind: str, version: int, where: Path | str) -> int:
    """Refuse a version of ``kind`` newer than this screader-db reads.

    Parameters
    ----------
    kind
        A key of :data:`FORMATS`.
    version
        The version found.
    where
        The file or atlas, for the message.

    Returns
    -------
    int
        ``version``.

    Raises
    ------
    AtlasError
        ``version`` is newer than :data:`FORMATS` knows.
    """
    if version > FORMATS[kind]:
        message = (f"{where} holds {kind} files of format version {version}; this screader-db reads up to version "
                   f"{FORMATS[kind]}. It was written by a newer screader-db: upgrade screader-db to read it")
        raise AtlasError(message)
    return version


# VERSION.json ---------------------------------------------------------------------------------------

# A history step's ``change``: the kind of change that made the version. Steps also record
# ``fitted_on`` (build and refits: the data sets the embedder was fitted on) and ``reason`` (refits).
CHANGES = ("build", "add", "remove", "refit", "add+refit", "remove+refit")


def _version_info_version(meta: dict[str, Any]) -> int:
    """The version of a parsed ``VERSION.json``: recorded, else told from its keys."""
    recorded = meta.get("formats", {}).get("version_info")
    if recorded is not None:
        return int(recorded)
    return 2 if "history" in meta else 1


def upgrade_version_info(meta: dict[str, Any]) -> dict[str, Any]:
    """A parsed ``VERSION.json`` of any version, with the keys of the current one.

    Version 1 (the first release) has no ``last_step`` or ``history``: its one step was the build
    that made it, rebuilt from its provenance. Versions 1 and 2 have no ``formats``: left out, as
    their files' versions are told file by file.

    Parameters
    ----------
    meta
        The parsed file.

    Returns
    -------
    dict
        A new dict; ``meta`` is not changed.
    """
    out = dict(meta)
    if _version_info_version(meta) < 2:
        step = {"build_id": meta.get("provenance", {}).get("build_id", ""), "action": "build",
                "created_at": meta.get("created_at", "")}
        out["last_step"], out["history"] = step, [step]
    return out


def read_version_info(folder: Path) -> dict[str, Any]:
    """Read, check and upgrade the ``VERSION.json`` of one version folder.

    Parameters
    ----------
    folder
        ``ATLAS/versions/NNNNNN``.

    Returns
    -------
    dict
        The version's metadata, upgraded to the current version (:func:`upgrade_version_info`).

    Raises
    ------
    AtlasError
        The file cannot be read, names another directory layout, or records a kind newer than
        this screader-db reads.
    """
    path = folder / VERSION_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        message = f"cannot read {path}: {err}"
        raise AtlasError(message) from err
    root = folder.parent.parent
    if meta.get("format") != LAYOUT_FORMAT:
        message = (
            f"the atlas at {root} has format {meta.get('format')!r}; this screader-db reads {LAYOUT_FORMAT!r}. "
            "Rebuild the atlas with this version of screader-db"
        )
        raise AtlasError(message)
    for kind, version in meta.get("formats", {}).items():
        if kind in FORMATS:
            check_version(kind, int(version), f"the atlas at {root}")
    return upgrade_version_info(meta)


# cells ------------------------------------------------------------------------------------------------


def cells_schema(dim: int) -> pa.Schema:
    """The schema of a cells part (version 4) whose vectors have ``dim`` values.

    Parameters
    ----------
    dim
        The width of the cell vectors.

    Returns
    -------
    pyarrow.Schema
        cell_id int64, dataset, barcode, label, label_harmonised, ontology_id, label_ontology,
        label_broad, ontology_match, metadata (a JSON object of the cell's obs values but the label)
        as strings, embedding fixed_size_list<float32>[dim].
    """
    import pyarrow as pa

    return pa.schema([("cell_id", pa.int64()), ("dataset", pa.string()), ("barcode", pa.string()),
                      ("label", pa.string()), ("label_harmonised", pa.string()), ("ontology_id", pa.string()),
                      ("label_ontology", pa.string()), ("label_broad", pa.string()), ("ontology_match", pa.string()),
                      ("metadata", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


CELL_FRAME_COLUMNS = ("cell_id", "dataset", "barcode", "label", "label_harmonised", "ontology_id", "label_ontology",
                      "label_broad", "ontology_match")


def cells_metadata(provenance: str, ontology: dict[str, str]) -> dict[bytes, str]:
    """The schema metadata of a cells part: provenance, version and the Cell Ontology its labels were matched to.

    Parameters
    ----------
    provenance
        The build's provenance, as JSON.
    ontology
        The ontology's source (:attr:`screader_db.ontology.Ontology.source`); {} when none was used.

    Returns
    -------
    dict
        :data:`PROVENANCE_KEY`, :data:`FORMAT_KEY` and :data:`ONTOLOGY_KEY` with their JSON values.
    """
    return parquet_metadata("cells", provenance, {ONTOLOGY_KEY: json.dumps(ontology, sort_keys=True)})


def cells_ontology(path: Path) -> dict[str, str]:
    """The Cell Ontology source a cells file records (cells version 4).

    Parameters
    ----------
    path
        A cells file of any version.

    Returns
    -------
    dict
        ``entry``, ``package``, ``file``, ``release``, ``sha256``; {} when the labels were not matched or the
        file predates version 4.
    """
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(ONTOLOGY_KEY)
    return dict(json.loads(raw)) if raw else {}


def cells_version(schema: pa.Schema, path: Path) -> int:
    """The version of a cells file: recorded, else told from its columns and place.

    Parameters
    ----------
    schema
        The file's Arrow schema (with its metadata).
    path
        The file; a file right inside ``cells/`` holds a whole data set (versions 1 and 2).

    Returns
    -------
    int
        The version.
    """
    recorded = recorded_version(schema.metadata, "cells", path)
    if recorded is not None:
        return recorded
    if "label_harmonised" not in schema.names:
        return 1
    return 2 if path.parent.name == CELLS else 3


def upgrade_cells(frame: pd.DataFrame, version: int) -> pd.DataFrame:
    """Cell rows read from a cells file of ``version``, with the columns of the current version.

    From version 1: ``label_harmonised`` is the data set's own label and ``ontology_id`` is ""
    (what a build without a label map writes). Versions 2 and 3 hold the same columns; version 2's
    map column is read by :meth:`screader_db.store.Atlas.layout`. Before version 4:
    ``label_ontology`` and ``label_broad`` are the harmonised label and ``ontology_match`` is ""
    (what a build writes when its labels were not matched to the Cell Ontology).

    Parameters
    ----------
    frame
        Rows read from the file.
    version
        The file's version.

    Returns
    -------
    pandas.DataFrame
        ``frame`` with the missing columns added, in :data:`CELL_FRAME_COLUMNS` order.
    """
    if version < 2:
        frame["label_harmonised"] = frame["label"]
        frame["ontology_id"] = ""
    if version < 4 and "label_ontology" not in frame.columns:
        frame["label_ontology"] = frame["label_harmonised"]
        frame["label_broad"] = frame["label_harmonised"]
        frame["ontology_match"] = ""
    return frame[[c for c in CELL_FRAME_COLUMNS if c in frame.columns]]


def read_cells(path: Path) -> pd.DataFrame:
    """The cell rows of one cells file (no vectors, no metadata), upgraded to the current version.

    Parameters
    ----------
    path
        A cells file of any version.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`CELL_FRAME_COLUMNS`, cell_id included, one row per cell.
    """
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    version = cells_version(schema, path)
    frame = pq.read_table(path, columns=[c for c in CELL_FRAME_COLUMNS if c in schema.names]).to_pandas()
    return upgrade_cells(frame, version)


# genes and gene embeddings --------------------------------------------------------------------------------


def genes_schema() -> pa.Schema:
    """The schema of ``genes.parquet``: the genes cells are embedded over, in embedding order.

    Returns
    -------
    pyarrow.Schema
        gene string, position int64, reference_mean float32, text_sha256 string, build_id string.
    """
    import pyarrow as pa

    return pa.schema([("gene", pa.string()), ("position", pa.int64()), ("reference_mean", pa.float32()),
                      ("text_sha256", pa.string()), ("build_id", pa.string())])


def gene_embeddings_schema(dim: int) -> pa.Schema:
    """The schema of ``gene_embeddings.parquet`` (and of gene embedding files outside an atlas).

    Parameters
    ----------
    dim
        The width of the gene vectors.

    Returns
    -------
    pyarrow.Schema
        gene, model_id, model_sha, pooling, text_sha256 strings, vector fixed_size_list<float32>[dim].
    """
    import pyarrow as pa

    return pa.schema([("gene", pa.string()), ("model_id", pa.string()), ("model_sha", pa.string()),
                      ("pooling", pa.string()), ("text_sha256", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


# layout ------------------------------------------------------------------------------------------------


def layout_schema() -> pa.Schema:
    """The schema of ``layout.parquet``: cell_id int64, x float32, y float32.

    Returns
    -------
    pyarrow.Schema
        The schema.
    """
    import pyarrow as pa

    return pa.schema([("cell_id", pa.int64()), ("x", pa.float32()), ("y", pa.float32())])


def read_layout(path: Path) -> pd.DataFrame:
    """The reference map from ``layout.parquet``.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    pandas.DataFrame
        Columns x, y, indexed by cell id.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    recorded_version(table.schema.metadata, "layout", path)
    return table.to_pandas().set_index("cell_id")


def layout_from_cells(ids: Any, coords: Any) -> pd.DataFrame:
    """The reference map of cells version 2, from its map column (upgrade to ``layout.parquet``).

    Parameters
    ----------
    ids
        The cell ids.
    coords
        The map column's values, one (x, y) row per cell.

    Returns
    -------
    pandas.DataFrame
        As :func:`read_layout` returns.
    """
    import numpy as np
    import pandas as pd

    return pd.DataFrame(np.asarray(coords, dtype=np.float32), index=pd.Index(ids, name="cell_id"), columns=["x", "y"])


# label profiles ----------------------------------------------------------------------------------------


def profiles_schema(n_genes: int) -> pa.Schema:
    """The schema of ``label_profiles.parquet`` over ``n_genes`` genes.

    Parameters
    ----------
    n_genes
        How many genes each profile spans (listed under :data:`GENES_KEY`).

    Returns
    -------
    pyarrow.Schema
        dataset, label strings, n_cells int64, profile fixed_size_list<float32>[n_genes].
    """
    import pyarrow as pa

    return pa.schema([("dataset", pa.string()), ("label", pa.string()), ("n_cells", pa.int64()),
                      ("profile", pa.list_(pa.float32(), n_genes))])


def read_label_profiles(path: Path) -> tuple[LabelProfiles, dict[str, Any]]:
    """Reference label profiles and the novelty calibration from ``label_profiles.parquet``.

    Version 1's calibration has no ``scores``; it is returned as stored, and
    :func:`annotation_defaults` reads a missing ``scores`` as an uncalibrated atlas.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    (LabelProfiles, dict)
        The profiles (means as float64) and the calibration stored under :data:`NOVELTY_KEY`.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from screader_db.novelty import LabelProfiles

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    recorded_version(meta, "label_profiles", path)
    column = table.column("profile").combine_chunks()
    means = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
    profiles = LabelProfiles(labels=table.column("label").to_pylist(), genes=json.loads(meta[GENES_KEY]),
                             means=means.astype(np.float64), counts=table.column("n_cells").to_numpy(),
                             datasets=table.column("dataset").to_pylist())
    return profiles, json.loads(meta.get(NOVELTY_KEY, b"{}"))


def annotation_defaults(parameters: dict[str, Any], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The query settings an atlas was built with, from its recorded build parameters and calibration.

    Atlases from before a parameter was recorded get the value queries used then: ``k`` 15, the
    vote's default power and propagation, no score cut-off (``min_score`` 0).

    Parameters
    ----------
    parameters
        ``provenance["parameters"]`` of ``VERSION.json``.
    calibration
        The label profiles' calibration (None for an atlas without profiles).

    Returns
    -------
    dict
        ``k``, ``power``, ``propagation``, ``min_score`` and ``scores`` (the score calibration, {} when none).
    """
    from screader_db.vote import DEFAULT_POWER, DEFAULT_PROPAGATION

    scores = calibration.get("scores", {}) if calibration is not None else {}
    return {"k": int(parameters.get("k", DEFAULT_K)), "power": float(parameters.get("vote_power", DEFAULT_POWER)),
            "propagation": float(parameters.get("propagation", DEFAULT_PROPAGATION)),
            "min_score": float(scores.get("min_score", 0.0)), "scores": scores}


# catalogue (atlas.duckdb) -------------------------------------------------------------------------------

CATALOGUE_SCHEMA = {
    "builds": "build_id VARCHAR, version INTEGER, created_at TIMESTAMP, action VARCHAR, builder_version VARCHAR, "
              "screader_db_version VARCHAR, model_id VARCHAR, model_sha VARCHAR, encoder_key VARCHAR, method VARCHAR, "
              "gene_embedding_sha256 VARCHAR, text_sha256 VARCHAR, parameters JSON, package_versions JSON",
    "datasets": "dataset_id INTEGER, name VARCHAR, label_key VARCHAR, n_cells BIGINT, n_labels INTEGER, species VARCHAR, "
                "source_file VARCHAR, source_sha256 VARCHAR, added_at TIMESTAMP, added_by VARCHAR, build_id VARCHAR, "
                "parameters JSON",
    "cells": "cell_id BIGINT, dataset VARCHAR, barcode VARCHAR, label VARCHAR, label_harmonised VARCHAR, ontology_id VARCHAR, "
             "label_ontology VARCHAR, label_broad VARCHAR, ontology_match VARCHAR, metadata JSON, build_id VARCHAR",
    "genes": "gene VARCHAR, position INTEGER, reference_mean FLOAT, text_sha256 VARCHAR, build_id VARCHAR",
    "gene_embeddings": "gene VARCHAR, model_id VARCHAR, model_sha VARCHAR, text_sha256 VARCHAR, vector FLOAT[], "
                       "build_id VARCHAR",
    "files": "path VARCHAR, sha256 VARCHAR, size BIGINT, kind VARCHAR, build_id VARCHAR",
    "provenance": "table_name VARCHAR, build_id VARCHAR, description VARCHAR, details JSON",
}

CATALOGUE_DESCRIPTIONS = {
    "builds": "one row per build step that made this version",
    "datasets": "reference data sets in the atlas",
    "cells": "reference cells: id, data set, label, obs metadata (vectors are in cells/*.parquet and the FAISS index)",
    "genes": "genes the cell embeddings are computed over",
    "gene_embeddings": "language-model vectors of the atlas genes",
    "files": "every file of this version with its sha256",
    "provenance": "which build wrote each table",
}


def upgrade_catalogue_table(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """A catalogue table read from a catalogue of any version, with the current version's columns.

    From version 1: the ``cells`` table gains ``label_harmonised`` (the label) and ``ontology_id``
    (""); from versions 1 and 2, ``label_ontology`` and ``label_broad`` (the harmonised label) and
    ``ontology_match`` (""), as :func:`upgrade_cells` does for the cells files.

    Parameters
    ----------
    name
        The table's name.
    frame
        Its rows.

    Returns
    -------
    pandas.DataFrame
        ``frame``, with missing columns added in place (in the schema's order).
    """
    if name == "cells" and "label_harmonised" not in frame.columns:
        at = frame.columns.get_loc("label") + 1
        frame.insert(at, "label_harmonised", frame["label"])
        frame.insert(at + 1, "ontology_id", "")
    if name == "cells" and "label_ontology" not in frame.columns:
        at = frame.columns.get_loc("ontology_id") + 1
        frame.insert(at, "label_ontology", frame["label_harmonised"])
        frame.insert(at + 1, "label_broad", frame["label_harmonised"])
        frame.insert(at + 2, "ontology_match", "")
    return frame
