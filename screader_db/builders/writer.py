"""Writing one atlas version: the pieces a full build and an incremental change share.

A :class:`Draft` is a staging folder under the writer lock. Pieces are written into it
(cells Parquet, gene tables, embedder, index, catalogue, VERSION.json) and :func:`drafting`
publishes it as the next version when the block ends without error, or discards it. File names,
schemas and metadata keys are :mod:`screader_db.atlas_format`'s (docs/FORMAT.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db import atlas_format, store
from screader_db.catalogue import write_catalogue
from screader_db.checksums import sha256_file
from screader_db.errors import AtlasError, OutputExistsError
from screader_db.progress import Reporter
from screader_db.provenance import new_build_id, now, user

if TYPE_CHECKING:
    from screader_db.labelmap import LabelTerms


@dataclass
class Draft:
    """A version being written: its staging folder, build id and provenance.

    Parameters
    ----------
    root
        The atlas folder.
    staging
        The staging folder the version is written to.
    build_id
        The id of this step.
    action
        The change, as the history records it.
    provenance
        The provenance every file records.
    number
        The version number it will get.
    extra
        More keys for this step's history entry.
    """

    root: Path
    staging: Path
    build_id: str
    action: str
    provenance: dict[str, Any]
    number: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def provenance_json(self) -> str:
        """The provenance as the JSON every file of the version records.

        Returns
        -------
        str
            :attr:`provenance` as JSON with sorted keys.
        """
        return json.dumps(self.provenance, sort_keys=True)

    def write_parquet(self, table: pa.Table, relative: str) -> Path:
        """Write a Parquet file of the version with its provenance and its kind's format version.

        Parameters
        ----------
        table
            The rows (their schema metadata is replaced).
        relative
            The path inside the version (the kind follows from it, see
            :func:`screader_db.atlas_format.kind_of`).

        Returns
        -------
        Path
            The file written.
        """
        path = self.staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = atlas_format.parquet_metadata(atlas_format.kind_of(relative), self.provenance_json())
        pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd")
        return path

    def link(self, source: Path, relative: str) -> None:
        """Reuse an unchanged file of the previous version (hard link; a copy where links fail).

        Parameters
        ----------
        source
            The file in the previous version.
        relative
            Its path inside the new version.

        Returns
        -------
        None
        """
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            import shutil

            shutil.copy2(source, target)


def refuse_existing(root: Path) -> None:
    """Refuse to build into a folder that holds an atlas, or anything but an atlas's lock and versions.

    Parameters
    ----------
    root
        The atlas folder a build would write.

    Returns
    -------
    None

    Raises
    ------
    OutputExistsError
        The folder holds an atlas or other files.
    """
    if store.is_atlas(root):
        message = (
            f"an atlas already exists at {root}; pass --overwrite to replace it with a new version "
            "(old versions are kept), or choose another --atlas folder"
        )
        raise OutputExistsError(message)
    if root.exists() and any(p.name not in (atlas_format.VERSIONS, atlas_format.LOCK) for p in root.iterdir()):
        message = f"{root} exists and is not an atlas; choose an empty or new folder for --atlas"
        raise OutputExistsError(message)


@contextmanager
def drafting(root: Path, *, action: str, provenance: dict[str, Any], wait: float = 0.0,
             new: bool = False) -> Iterator[Draft]:
    """Hold the writer lock, give a fresh staging folder, publish it at the end (or discard it).

    Parameters
    ----------
    root
        The atlas folder (created when missing).
    action
        The change, as the version's history records it ("build", "add NAME", ...).
    provenance
        The provenance every file records; a build id and time are added.
    wait
        Seconds to wait for another writer's lock.
    new
        The folder must not hold an atlas yet (:func:`refuse_existing`, checked under the lock,
        so of two builds into one new folder only the first succeeds).

    Returns
    -------
    Iterator[Draft]
        The draft, yielded once; published as the next version when the block ends without error.

    Raises
    ------
    AtlasError
        The version could not be written (disk full, permissions): the atlas did not change.
    """
    root.mkdir(parents=True, exist_ok=True)
    build_id = new_build_id()
    stamped = {**provenance, "build_id": build_id, "created_at": now()}
    with store.writer_lock(root, wait=wait):
        if new:
            refuse_existing(root)
        store.clean_staging(root)
        staging = store.staging_dir(root)
        draft = Draft(root=root, staging=staging, build_id=build_id, action=action, provenance=stamped,
                      number=store.next_version(root))
        try:
            yield draft
            store.publish(root, staging, draft.number)
        except BaseException as exc:
            store.discard(staging)
            failure = _write_failure(exc, draft.number)
            if failure is not None:
                raise failure from exc
            raise


def _write_failure(exc: BaseException, number: int) -> AtlasError | None:
    """A version that could not be written (disk full, file size limit, I/O error: an OSError, or
    FAISS's or DuckDB's report of one) as an error saying that the atlas did not change."""
    reported = type(exc).__module__.split(".")[0].lstrip("_") == "duckdb" or (
        isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in ("write error", "fwrite", "read error")))
    if not isinstance(exc, OSError) and not reported:
        return None
    reason = " ".join(str(exc).split()) or type(exc).__name__
    before = f"the atlas stays at version {number - 1}" if number > 1 else "no atlas was made"
    message = (f"could not write version {number} of the atlas ({reason}); nothing changed: {before}. "
               "Free some disk space or fix the folder's permissions, then run the command again.")
    return AtlasError(message)


def _metadata(obs: pd.DataFrame, label_key: str) -> list[str]:
    rest = obs.drop(columns=[label_key], errors="ignore")
    if not len(rest.columns):
        return ["{}"] * len(obs)
    return [json.dumps(row, default=str) for row in rest.astype(str).to_dict("records")]


@dataclass
class CellSlice:
    """Labels and metadata of a run of cells of one data set (picklable, for Dask workers too).

    Parameters
    ----------
    name
        The data set.
    label_key
        The obs column of the labels (left out of ``metadata``).
    obs
        The cells' obs rows.
    labels, harmonised, ontology
        Their labels, harmonised labels and ontology ids.
    ontology_name, broad, match
        Their Cell Ontology term names, broad classes and how the terms were found
        (:class:`~screader_db.labelmap.LabelTerms`).
    ontology_source
        The Cell Ontology the labels were matched to ({} for none).
    """

    name: str
    label_key: str
    obs: pd.DataFrame
    labels: np.ndarray
    harmonised: np.ndarray
    ontology: np.ndarray
    ontology_name: np.ndarray
    broad: np.ndarray
    match: np.ndarray
    ontology_source: dict[str, str] = field(default_factory=dict)


def label_terms(ref: Any, start: int = 0, stop: int | None = None) -> tuple[LabelTerms, dict[str, str]]:
    """The Cell Ontology terms of cells ``start:stop`` of a reference, and the source of the ontology.

    Parameters
    ----------
    ref
        The reference; labels are harmonised with no label map when they were not yet. The label
        map's ontology ids win over matching (:func:`screader_db.labelmap.ontology_terms`).
    start, stop
        The rows (default: every cell).

    Returns
    -------
    (LabelTerms, dict)
        One value per cell, and :attr:`screader_db.ontology.Ontology.source` ({} when the ontology
        could not be fetched: the levels then repeat the harmonised labels).

    Raises
    ------
    ChecksumError, InputDataError
        The Cell Ontology file is not the one the manifest records, or cannot be read.
    """
    from screader_db.labelmap import ontology_terms
    from screader_db.ontology import available_ontology

    if ref.harmonised is None or ref.ontology is None:
        ref.harmonise(None)
    ontology, _ = available_ontology()
    rows = slice(start, stop)
    terms = ontology_terms(ref.labels[rows], ref.harmonised[rows], ref.ontology[rows], ontology)
    return terms, dict(ontology.source) if ontology is not None else {}


def cell_slice(ref: Any, start: int, stop: int) -> CellSlice:
    """Cells ``start:stop`` of a reference source.

    Parameters
    ----------
    ref
        The reference (:class:`~screader_db.builders.reference.Reference`); labels are harmonised
        with no label map when they were not yet, and matched to the Cell Ontology (:func:`label_terms`).
    start, stop
        The rows.

    Returns
    -------
    CellSlice
        Their obs, labels, harmonised labels, ontology ids, term names, broad classes and how the terms were found.
    """
    terms, source = label_terms(ref, start, stop)
    return CellSlice(name=ref.name, label_key=ref.label_key, obs=ref.obs.iloc[start:stop], labels=ref.labels[start:stop],
                     harmonised=ref.harmonised[start:stop], ontology=terms.ontology_id, ontology_name=terms.ontology_name,
                     broad=terms.broad, match=terms.match, ontology_source=source)


def cells_table(cells: CellSlice, ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """Cells as a table of the cells format: ids, data set, barcode, labels, metadata (JSON) and vectors.

    Parameters
    ----------
    cells
        The cells.
    ids
        Their cell ids.
    vectors
        Their unit vectors, one row per cell.

    Returns
    -------
    pyarrow.Table
        Of :func:`screader_db.atlas_format.cells_schema`.
    """
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    return pa.table({
        "cell_id": pa.array(ids, pa.int64()),
        "dataset": pa.array([cells.name] * len(ids), pa.string()),
        "barcode": pa.array([str(b) for b in cells.obs.index], pa.string()),
        "label": pa.array(list(cells.labels), pa.string()),
        "label_harmonised": pa.array(list(cells.harmonised), pa.string()),
        "ontology_id": pa.array(list(cells.ontology), pa.string()),
        "label_ontology": pa.array(list(cells.ontology_name), pa.string()),
        "label_broad": pa.array(list(cells.broad), pa.string()),
        "ontology_match": pa.array(list(cells.match), pa.string()),
        "metadata": pa.array(_metadata(cells.obs, cells.label_key), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    }, schema=atlas_format.cells_schema(vectors.shape[1]))


def write_part(folder: Path, cells: CellSlice, ids: np.ndarray, vectors: np.ndarray, provenance: str,
               number: int) -> Path:
    """Write one Parquet part of a data set's cells (used by local and Dask builds).

    Parameters
    ----------
    folder
        The version's staging folder.
    cells, ids, vectors
        As :func:`cells_table` takes them.
    provenance
        The build's provenance, as JSON.
    number
        The part's number within the data set.

    Returns
    -------
    Path
        The file written (:func:`screader_db.atlas_format.cell_part_path`).
    """
    path = folder / atlas_format.cell_part_path(cells.name, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = cells_table(cells, ids, vectors)
    pq.write_table(table.replace_schema_metadata(atlas_format.cells_metadata(provenance, cells.ontology_source)), path,
                   compression="zstd")
    return path


def dataset_records(draft: Draft, ref: Any, dataset_id: int) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """A data set's cell ids, catalogue cell rows and catalogue data set row.

    Parameters
    ----------
    draft
        The version being written.
    ref
        The reference data set.
    dataset_id
        Its id in the atlas (the high bits of its cell ids).

    Returns
    -------
    (numpy.ndarray, pandas.DataFrame, dict)
        Cell ids, ``cells`` rows and the ``datasets`` row of the catalogue.
    """
    terms, _ = label_terms(ref)
    ids = store.cell_ids(dataset_id, ref.n_cells)
    frame = pd.DataFrame({
        "cell_id": ids, "dataset": ref.name, "barcode": [str(b) for b in ref.obs.index], "label": ref.labels,
        "label_harmonised": ref.harmonised, "ontology_id": terms.ontology_id, "label_ontology": terms.ontology_name,
        "label_broad": terms.broad, "ontology_match": terms.match, "metadata": _metadata(ref.obs, ref.label_key),
        "build_id": draft.build_id,
    })
    row = {
        "dataset_id": dataset_id, "name": ref.name, "label_key": ref.label_key, "n_cells": int(ref.n_cells),
        "n_labels": len(set(ref.labels)), "species": ref.mapping.species, "source_file": ref.source_file,
        "source_sha256": ref.source_sha256, "added_at": now(), "added_by": user(), "build_id": draft.build_id,
        "parameters": json.dumps({"gene_mapping": ref.mapping.how, "input_kind": ref.kind,
                                  "gene_key": ref.source.gene_key or ""}),
    }
    return ids, frame, row


def write_dataset(draft: Draft, ref: Any, dataset_id: int, vectors: np.ndarray, *,
                  part_rows: int = 10_000) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Write one data set's cells as Parquet parts.

    Parameters
    ----------
    draft
        The version being written.
    ref
        The reference data set.
    dataset_id
        Its id in the atlas.
    vectors
        Its cells' unit vectors.
    part_rows
        Cells per part.

    Returns
    -------
    (numpy.ndarray, pandas.DataFrame, dict)
        As :func:`dataset_records` returns.
    """
    ids = store.cell_ids(dataset_id, ref.n_cells)
    for start in range(0, ref.n_cells, part_rows):
        stop = min(start + part_rows, ref.n_cells)
        write_part(draft.staging, cell_slice(ref, start, stop), ids[start:stop], vectors[start:stop],
                   draft.provenance_json(), start // part_rows)
    return dataset_records(draft, ref, dataset_id)


def write_expression(draft: Draft, ref: Any, dataset_id: int, *, part_rows: int = 10_000) -> None:
    """Keep a data set's log-normalised expression over every gene it maps to (for panel re-fits).

    Parameters
    ----------
    draft
        The version being written.
    ref
        The reference data set.
    dataset_id
        Its id in the atlas.
    part_rows
        Cells per part.

    Returns
    -------
    None
    """
    from screader_db import stored_expression

    plan = ref.plan()
    ids = store.cell_ids(dataset_id, ref.n_cells)
    for start, block in ref.chunks(plan, part_rows):
        path = draft.staging / atlas_format.expression_part_path(ref.name, start // part_rows)
        stored_expression.write_part(path, block, ids=ids[start : start + block.shape[0]], genes=plan.genes,
                                     provenance=draft.provenance_json())


def write_layout(draft: Draft, ids: np.ndarray, coords: np.ndarray) -> None:
    """Write the reference map, one (x, y) per cell id.

    Parameters
    ----------
    draft
        The version being written.
    ids
        Cell ids.
    coords
        Their positions, one (x, y) row per cell.

    Returns
    -------
    None
    """
    table = pa.table({"cell_id": pa.array(ids, pa.int64()), "x": pa.array(coords[:, 0], pa.float32()),
                      "y": pa.array(coords[:, 1], pa.float32())}, schema=atlas_format.layout_schema())
    draft.write_parquet(table, atlas_format.LAYOUT)


def build_row(draft: Draft, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``builds`` catalogue row of this step.

    Parameters
    ----------
    draft
        The version being written.
    files
        Its files, as :func:`file_rows` lists them.

    Returns
    -------
    dict
        The row.
    """
    prov = draft.provenance
    return {
        "build_id": draft.build_id, "version": draft.number, "created_at": prov["created_at"], "action": draft.action,
        "builder_version": prov.get("builder_version", ""),
        "screader_db_version": prov.get("package_versions", {}).get("screader-db", ""),
        "model_id": prov.get("model_id", ""), "model_sha": prov.get("model_sha", ""),
        "encoder_key": prov.get("encoder_key", ""), "method": prov.get("method", ""),
        "gene_embedding_sha256": next((f["sha256"] for f in files if f["path"] == atlas_format.GENE_EMBEDDINGS), ""),
        "text_sha256": prov.get("text_sha256", ""), "parameters": json.dumps(prov.get("parameters", {})),
        "package_versions": json.dumps(prov.get("package_versions", {})),
    }


def file_rows(folder: Path, build_id: str) -> list[dict[str, Any]]:
    """Every file of a staging folder with its sha256.

    Parameters
    ----------
    folder
        The staging folder.
    build_id
        The build writing it.

    Returns
    -------
    list of dict
        ``files`` catalogue rows: path (relative, ``/``), sha256, size, kind (the file's suffix), build_id.
    """
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rows.append({"path": path.relative_to(folder).as_posix(), "sha256": sha256_file(path), "size": path.stat().st_size,
                     "kind": path.suffix.lstrip(".") or "file", "build_id": build_id})
    return rows


def finish(draft: Draft, tables: dict[str, pd.DataFrame], *, atlas_provenance: dict[str, Any], index_info: dict[str, Any],
           datasets: list[dict[str, Any]], history: list[dict[str, Any]], reporter: Reporter) -> None:
    """Write the catalogue and VERSION.json; the draft is then complete and ready to publish.

    Parameters
    ----------
    draft
        The version being written.
    tables
        Catalogue rows by table (``builds`` gains this step's row, ``files`` is made here).
    atlas_provenance
        The atlas's provenance, as VERSION.json records it.
    index_info
        The FAISS index's description.
    datasets
        The ``datasets`` rows of every data set of the version.
    history
        The previous version's steps.
    reporter
        Progress messages.

    Returns
    -------
    None
    """
    files = file_rows(draft.staging, draft.build_id)
    builds = tables.get("builds")
    new_row = pd.DataFrame([build_row(draft, files)])
    tables = {**tables, "builds": new_row if builds is None or builds.empty else pd.concat([builds, new_row]),
              "files": pd.DataFrame(files)}
    reporter.message("Writing the catalogue")
    write_catalogue(draft.staging / atlas_format.CATALOGUE, tables, build_id=draft.build_id, details=draft.provenance)
    n_cells = int(sum(int(d["n_cells"]) for d in datasets))
    step = {"build_id": draft.build_id, "action": draft.action, "created_at": draft.provenance["created_at"],
            **draft.extra}
    meta = {
        "format": atlas_format.LAYOUT_FORMAT, "formats": atlas_format.written_formats(), "version": draft.number,
        "created_at": draft.provenance["created_at"],
        "provenance": atlas_provenance, "last_step": step, "history": [*history, step],
        "datasets": [{k: v for k, v in d.items() if k != "parameters"} for d in datasets],
        "index": index_info, "n_cells": n_cells, "dim": int(index_info.get("dim", 0)),
        "files": {f["path"]: f["sha256"] for f in files},
    }
    (draft.staging / atlas_format.VERSION_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def write_profiles(draft: Draft, profiles: Any, calibration: dict[str, Any]) -> None:
    """Write the reference label profiles (mean log expression over every reference gene) and the novelty calibration.

    Parameters
    ----------
    draft
        The version being written.
    profiles
        The :class:`~screader_db.novelty.LabelProfiles`.
    calibration
        The novelty and score calibration.

    Returns
    -------
    None
    """
    flat = pa.array(np.asarray(profiles.means, dtype=np.float32).ravel(), pa.float32())
    table = pa.table({
        "dataset": pa.array(profiles.datasets or [""] * len(profiles.labels), pa.string()),
        "label": pa.array(profiles.labels, pa.string()),
        "n_cells": pa.array(np.asarray(profiles.counts, dtype=np.int64), pa.int64()),
        "profile": pa.FixedSizeListArray.from_arrays(flat, len(profiles.genes)),
    }, schema=atlas_format.profiles_schema(len(profiles.genes)))
    meta = atlas_format.parquet_metadata("label_profiles", draft.provenance_json(),
                                         {atlas_format.GENES_KEY: json.dumps(profiles.genes),
                                          atlas_format.NOVELTY_KEY: json.dumps(calibration)})
    path = draft.staging / atlas_format.LABEL_PROFILES
    pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd")
