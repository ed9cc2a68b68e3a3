"""Writing one atlas version: the pieces a full build and an incremental change share.

A :class:`Draft` is a staging folder under the writer lock. Pieces are written into it
(cells Parquet, gene tables, embedder, index, catalogue, VERSION.json) and :func:`drafting`
publishes it as the next version when the block ends without error, or discards it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db import store
from screader_db.catalogue import write_catalogue
from screader_db.checksums import sha256_file
from screader_db.errors import AtlasError, OutputExistsError
from screader_db.progress import Reporter
from screader_db.provenance import new_build_id, now, user

PROVENANCE_KEY = b"screader_db.provenance"


@dataclass
class Draft:
    """A version being written: its staging folder, build id and provenance."""

    root: Path
    staging: Path
    build_id: str
    action: str
    provenance: dict[str, Any]
    number: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def provenance_json(self) -> str:
        return json.dumps(self.provenance, sort_keys=True)

    def write_parquet(self, table: pa.Table, relative: str) -> Path:
        path = self.staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: self.provenance_json()}), path, compression="zstd")
        return path

    def link(self, source: Path, relative: str) -> None:
        """Reuse an unchanged file of the previous version (hard link; a copy where links fail)."""
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            import shutil

            shutil.copy2(source, target)


def refuse_existing(root: Path) -> None:
    """Refuse to build into a folder that holds an atlas, or anything but an atlas's lock and versions."""
    if store.is_atlas(root):
        message = (
            f"an atlas already exists at {root}; pass --overwrite to replace it with a new version "
            "(old versions are kept), or choose another --atlas folder"
        )
        raise OutputExistsError(message)
    if root.exists() and any(p.name not in (store.VERSIONS, store.LOCK) for p in root.iterdir()):
        message = f"{root} exists and is not an atlas; choose an empty or new folder for --atlas"
        raise OutputExistsError(message)


@contextmanager
def drafting(root: Path, *, action: str, provenance: dict[str, Any], wait: float = 0.0,
             new: bool = False) -> Iterator[Draft]:
    """Hold the writer lock, give a fresh staging folder, publish it at the end (or discard it).

    With ``new``, the folder must not hold an atlas yet (:func:`refuse_existing`, checked under the
    lock, so of two builds into one new folder only the first succeeds)."""
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
    """Labels and metadata of a run of cells of one data set (picklable, for Dask workers too)."""

    name: str
    label_key: str
    obs: pd.DataFrame
    labels: np.ndarray
    harmonised: np.ndarray
    ontology: np.ndarray


def cell_slice(ref: Any, start: int, stop: int) -> CellSlice:
    """Cells ``start:stop`` of a reference source."""
    if ref.harmonised is None or ref.ontology is None:
        ref.harmonise(None)
    return CellSlice(name=ref.name, label_key=ref.label_key, obs=ref.obs.iloc[start:stop], labels=ref.labels[start:stop],
                     harmonised=ref.harmonised[start:stop], ontology=ref.ontology[start:stop])


def cells_table(cells: CellSlice, ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """Cells as a Parquet table: ids, data set, barcode, labels, metadata (JSON) and vectors."""
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    return pa.table({
        "cell_id": pa.array(ids, pa.int64()),
        "dataset": pa.array([cells.name] * len(ids), pa.string()),
        "barcode": pa.array([str(b) for b in cells.obs.index], pa.string()),
        "label": pa.array(list(cells.labels), pa.string()),
        "label_harmonised": pa.array(list(cells.harmonised), pa.string()),
        "ontology_id": pa.array(list(cells.ontology), pa.string()),
        "metadata": pa.array(_metadata(cells.obs, cells.label_key), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    })


def part_path(dataset: str, number: int) -> str:
    return f"cells/{dataset}/part-{number:05d}.parquet"


def write_part(folder: Path, cells: CellSlice, ids: np.ndarray, vectors: np.ndarray, provenance: str,
               number: int) -> Path:
    """Write one Parquet part of a data set's cells (used by local and Dask builds)."""
    path = folder / part_path(cells.name, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = cells_table(cells, ids, vectors)
    pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: provenance}), path, compression="zstd")
    return path


def dataset_records(draft: Draft, ref: Any, dataset_id: int) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """A data set's cell ids, catalogue cell rows and catalogue data set row."""
    if ref.harmonised is None or ref.ontology is None:
        ref.harmonise(None)
    ids = store.cell_ids(dataset_id, ref.n_cells)
    frame = pd.DataFrame({
        "cell_id": ids, "dataset": ref.name, "barcode": [str(b) for b in ref.obs.index], "label": ref.labels,
        "label_harmonised": ref.harmonised, "ontology_id": ref.ontology, "metadata": _metadata(ref.obs, ref.label_key),
        "build_id": draft.build_id,
    })
    row = {
        "dataset_id": dataset_id, "name": ref.name, "label_key": ref.label_key, "n_cells": int(ref.n_cells),
        "n_labels": len(set(ref.labels)), "species": ref.mapping.species, "source_file": ref.source_file,
        "source_sha256": ref.source_sha256, "added_at": now(), "added_by": user(), "build_id": draft.build_id,
        "parameters": json.dumps({"gene_mapping": ref.mapping.how, "input_kind": ref.kind}),
    }
    return ids, frame, row


def write_dataset(draft: Draft, ref: Any, dataset_id: int, vectors: np.ndarray, *,
                  part_rows: int = 10_000) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Write one data set's cells as Parquet parts; returns its ids, catalogue cell rows and data set row."""
    ids = store.cell_ids(dataset_id, ref.n_cells)
    for start in range(0, ref.n_cells, part_rows):
        stop = min(start + part_rows, ref.n_cells)
        write_part(draft.staging, cell_slice(ref, start, stop), ids[start:stop], vectors[start:stop],
                   draft.provenance_json(), start // part_rows)
    return dataset_records(draft, ref, dataset_id)


def write_expression(draft: Draft, ref: Any, dataset_id: int, *, part_rows: int = 10_000) -> None:
    """Keep a data set's log-normalised expression over every gene it maps to (for panel re-fits)."""
    from screader_db import stored_expression

    plan = ref.plan()
    ids = store.cell_ids(dataset_id, ref.n_cells)
    for start, block in ref.chunks(plan, part_rows):
        path = draft.staging / stored_expression.part_path(ref.name, start // part_rows)
        stored_expression.write_part(path, ids[start : start + block.shape[0]], block, plan.genes,
                                     draft.provenance_json(), PROVENANCE_KEY)


def write_layout(draft: Draft, ids: np.ndarray, coords: np.ndarray) -> None:
    """The reference map: one (x, y) per cell id."""
    draft.write_parquet(pa.table({"cell_id": pa.array(ids, pa.int64()), "x": pa.array(coords[:, 0], pa.float32()),
                                  "y": pa.array(coords[:, 1], pa.float32())}), "layout.parquet")


def build_row(draft: Draft, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``builds`` catalogue row of this step."""
    prov = draft.provenance
    return {
        "build_id": draft.build_id, "version": draft.number, "created_at": prov["created_at"], "action": draft.action,
        "builder_version": prov.get("builder_version", ""),
        "screader_db_version": prov.get("package_versions", {}).get("screader-db", ""),
        "model_id": prov.get("model_id", ""), "model_sha": prov.get("model_sha", ""),
        "encoder_key": prov.get("encoder_key", ""), "method": prov.get("method", ""),
        "gene_embedding_sha256": next((f["sha256"] for f in files if f["path"] == "gene_embeddings.parquet"), ""),
        "text_sha256": prov.get("text_sha256", ""), "parameters": json.dumps(prov.get("parameters", {})),
        "package_versions": json.dumps(prov.get("package_versions", {})),
    }


def file_rows(folder: Path, build_id: str) -> list[dict[str, Any]]:
    """Every file of the staging folder with its sha256."""
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rows.append({"path": path.relative_to(folder).as_posix(), "sha256": sha256_file(path), "size": path.stat().st_size,
                     "kind": path.suffix.lstrip(".") or "file", "build_id": build_id})
    return rows


def finish(draft: Draft, tables: dict[str, pd.DataFrame], *, atlas_provenance: dict[str, Any], index_info: dict[str, Any],
           datasets: list[dict[str, Any]], history: list[dict[str, Any]], reporter: Reporter) -> None:
    """Write the catalogue and VERSION.json; the draft is then complete and ready to publish."""
    files = file_rows(draft.staging, draft.build_id)
    builds = tables.get("builds")
    new_row = pd.DataFrame([build_row(draft, files)])
    tables = {**tables, "builds": new_row if builds is None or builds.empty else pd.concat([builds, new_row]),
              "files": pd.DataFrame(files)}
    reporter.message("Writing the catalogue")
    write_catalogue(draft.staging / store.CATALOGUE, tables, build_id=draft.build_id, details=draft.provenance)
    n_cells = int(sum(int(d["n_cells"]) for d in datasets))
    step = {"build_id": draft.build_id, "action": draft.action, "created_at": draft.provenance["created_at"],
            **draft.extra}
    meta = {
        "format": store.FORMAT, "version": draft.number, "created_at": draft.provenance["created_at"],
        "provenance": atlas_provenance, "last_step": step, "history": [*history, step],
        "datasets": [{k: v for k, v in d.items() if k != "parameters"} for d in datasets],
        "index": index_info, "n_cells": n_cells, "dim": int(index_info.get("dim", 0)),
        "files": {f["path"]: f["sha256"] for f in files},
    }
    (draft.staging / "VERSION.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def write_profiles(draft: Draft, profiles: Any, calibration: dict[str, Any]) -> None:
    """Reference label profiles (mean log expression over every reference gene) and the novelty calibration."""
    flat = pa.array(np.asarray(profiles.means, dtype=np.float32).ravel(), pa.float32())
    table = pa.table({
        "dataset": pa.array(profiles.datasets or [""] * len(profiles.labels), pa.string()),
        "label": pa.array(profiles.labels, pa.string()),
        "n_cells": pa.array(np.asarray(profiles.counts, dtype=np.int64), pa.int64()),
        "profile": pa.FixedSizeListArray.from_arrays(flat, len(profiles.genes)),
    })
    meta = {PROVENANCE_KEY: draft.provenance_json(), b"screader_db.genes": json.dumps(profiles.genes),
            b"screader_db.novelty": json.dumps(calibration)}
    path = draft.staging / "label_profiles.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path, compression="zstd")
