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


@contextmanager
def drafting(root: Path, *, action: str, provenance: dict[str, Any], wait: float = 0.0) -> Iterator[Draft]:
    """Hold the writer lock, give a fresh staging folder, publish it at the end (or discard it)."""
    root.mkdir(parents=True, exist_ok=True)
    build_id = new_build_id()
    stamped = {**provenance, "build_id": build_id, "created_at": now()}
    with store.writer_lock(root, wait=wait):
        store.clean_staging(root)
        staging = store.staging_dir(root)
        draft = Draft(root=root, staging=staging, build_id=build_id, action=action, provenance=stamped,
                      number=store.next_version(root))
        try:
            yield draft
            store.publish(root, staging, draft.number)
        except BaseException:
            store.discard(staging)
            raise


def cells_table(ref: Any, ids: np.ndarray, vectors: np.ndarray, layout: np.ndarray | None) -> pa.Table:
    """The cells Parquet table of one data set (metadata as JSON, vectors, optional 2-D map)."""
    obs = ref.expr.obs.drop(columns=[ref.label_key], errors="ignore")
    metadata = [json.dumps(row, default=str) for row in obs.astype(str).to_dict("records")] if len(obs.columns) else \
        ["{}"] * len(ids)
    if ref.harmonised is None or ref.ontology is None:
        ref.harmonise(None)
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    columns = {
        "cell_id": pa.array(ids, pa.int64()),
        "dataset": pa.array([ref.name] * len(ids), pa.string()),
        "barcode": pa.array([str(b) for b in ref.expr.obs.index], pa.string()),
        "label": pa.array(list(ref.labels), pa.string()),
        "label_harmonised": pa.array(list(ref.harmonised), pa.string()),
        "ontology_id": pa.array(list(ref.ontology), pa.string()),
        "metadata": pa.array(metadata, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    }
    if layout is not None:
        columns["umap"] = pa.FixedSizeListArray.from_arrays(pa.array(layout.astype(np.float32).ravel(), pa.float32()), 2)
    return pa.table(columns)


def write_dataset(draft: Draft, ref: Any, dataset_id: int, vectors: np.ndarray,
                  layout: np.ndarray | None) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Write one data set's cells; returns its ids, catalogue cell rows and data set row."""
    ids = store.cell_ids(dataset_id, ref.expr.n_cells)
    table = cells_table(ref, ids, vectors, layout)
    draft.write_parquet(table, f"cells/{ref.name}.parquet")
    keep = [c for c in table.column_names if c not in ("embedding", "umap")]
    frame = table.select(keep).to_pandas().assign(build_id=draft.build_id)
    row = {
        "dataset_id": dataset_id, "name": ref.name, "label_key": ref.label_key, "n_cells": int(ref.expr.n_cells),
        "n_labels": len(set(ref.labels)), "species": ref.expr.mapping.species, "source_file": ref.source_file,
        "source_sha256": ref.source_sha256, "added_at": now(), "added_by": user(), "build_id": draft.build_id,
        "parameters": json.dumps({"gene_mapping": ref.expr.mapping.how, "input_kind": ref.expr.kind}),
    }
    return ids, frame, row


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
