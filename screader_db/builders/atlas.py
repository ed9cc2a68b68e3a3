"""Build a reference atlas from a labelled AnnData: genes, gene vectors, cell vectors, index.

Steps: read and check the reference, map genes to human symbols, log-normalise, pick the
highly variable genes, embed their descriptions (through the gene-embedding cache), fit the
cell embedding method, embed every reference cell, then write a new atlas version (Parquet,
DuckDB catalogue, FAISS index) and switch the atlas to it atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db import store
from screader_db.catalogue import write_catalogue
from screader_db.cell_embedding import TEXT_METHODS, CellEmbedder, fit_embedder
from screader_db.checksums import sha256_file, sha256_text
from screader_db.errors import InputDataError, OutputExistsError
from screader_db.features import highly_variable
from screader_db.gene_vectors import GeneEmbeddings, write_gene_embeddings
from screader_db.genes import GeneResolver
from screader_db.inputs import Expression, load_expression, read_h5ad
from screader_db.progress import SILENT, Reporter
from screader_db.provenance import describe, new_build_id, now, user

BUILDER_VERSION = "atlas-1"
DEFAULT_METHOD = "genept"
PROVENANCE_KEY = b"screader_db.provenance"


@dataclass
class BuildSettings:
    """Everything that decides how an atlas's vectors are made (stored as its parameters)."""

    model: str = "minilm"
    method: str = DEFAULT_METHOD
    n_genes: int = 3000
    pooling: str = "mean"
    layer: int = -1
    center: str = "auto"
    index: str = "auto"
    layout: str = "umap"
    seed: int = 0


@dataclass
class Reference:
    """A labelled reference data set, read and log-normalised."""

    name: str
    expr: Expression
    labels: np.ndarray
    label_key: str
    source_file: str
    source_sha256: str
    harmonised: np.ndarray | None = None
    ontology: np.ndarray | None = None

    def harmonise(self, label_map: pd.DataFrame | None) -> None:
        """Fill the harmonised labels and ontology ids from a label map (identity without one)."""
        from screader_db.labelmap import harmonise

        self.harmonised, self.ontology = harmonise(self.labels, self.name, label_map)


def read_reference(reference: Any, *, label_key: str, name: str | None = None, layer: str | None = None,
                   use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                   resolver: GeneResolver | None = None) -> Reference:
    """Read a reference (path or AnnData), check its labels and log-normalise it."""
    source, digest = "<AnnData>", ""
    if isinstance(reference, str | Path):
        source, digest = str(Path(reference).resolve()), sha256_file(reference) if Path(reference).is_file() else ""
        adata = read_h5ad(reference)
        default_name = Path(reference).stem
    else:
        adata = reference
        default_name = "reference"
    if label_key not in adata.obs.columns:
        known = ", ".join(map(str, adata.obs.columns)) or "none"
        message = f"--label-key {label_key!r} is not an obs column of the reference; columns present: {known}"
        raise InputDataError(message)
    expr = load_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species, resolver=resolver)
    labels = adata.obs[label_key].astype("string").fillna("").to_numpy(dtype=object)
    keep = np.array([bool(str(v).strip()) for v in labels])
    if not keep.any():
        message = f"every cell's {label_key!r} is empty; choose another --label-key"
        raise InputDataError(message)
    if not keep.all():
        expr = Expression(X=expr.X[keep], genes=expr.genes, obs=expr.obs.iloc[np.flatnonzero(keep)], kind=expr.kind,
                          mapping=expr.mapping)
        labels = labels[keep]
    return Reference(name=name or default_name, expr=expr, labels=labels.astype(str), label_key=label_key,
                     source_file=source, source_sha256=digest)


def _cells_table(ref: Reference, ids: np.ndarray, vectors: np.ndarray, layout: np.ndarray | None,
                 provenance: dict[str, Any]) -> pa.Table:
    obs = ref.expr.obs.drop(columns=[ref.label_key], errors="ignore")
    metadata = [json.dumps(row, default=str) for row in obs.astype(str).to_dict("records")] if len(obs.columns) else \
        ["{}"] * len(ids)
    if ref.harmonised is None or ref.ontology is None:
        ref.harmonise(None)
    assert ref.harmonised is not None and ref.ontology is not None
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
    table = pa.table(columns)
    return table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _gene_vectors(genes: list[str], settings: BuildSettings, resolver: GeneResolver, reporter: Reporter,
                  device: str | None) -> GeneEmbeddings:
    from screader_db.builders.gene_embeddings import embed_genes
    from screader_db.encoders import resolve_encoder

    encoder = resolve_encoder(settings.model, pooling=settings.pooling, layer=settings.layer, device=device)
    with reporter.task(f"Embedding gene descriptions ({encoder.model_id})", len(genes), "genes") as advance:
        emb = embed_genes(genes, encoder, resolver=resolver, progress=advance)
    emb.extra["model_spec"] = settings.model
    reporter.message(f"{emb.n_embedded:,} of {len(genes):,} gene descriptions embedded, the rest from the cache")
    return emb


def build_atlas(reference: Any, atlas: str | Path, *, label_key: str, dataset_name: str | None = None,
                layer: str | None = None, use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                settings: BuildSettings | None = None, label_map: str | Path | pd.DataFrame | None = None,
                overwrite: bool = False, device: str | None = None, reporter: Reporter = SILENT) -> store.Atlas:
    """Build (or, with ``overwrite``, replace with a new version) an atlas from one reference.

    ``label_map`` (a CSV path or DataFrame, see :mod:`screader_db.labelmap`) adds harmonised
    labels and ontology ids beside the data set's own labels.
    """
    from screader_db.labelmap import read_label_map

    settings = settings or BuildSettings()
    mapping_table = read_label_map(label_map) if isinstance(label_map, str | Path) else label_map
    root = Path(atlas)
    if store.is_atlas(root) and not overwrite:
        message = (
            f"an atlas already exists at {root}; pass --overwrite to replace it with a new version "
            "(old versions are kept), or choose another --atlas folder"
        )
        raise OutputExistsError(message)
    if root.exists() and not store.is_atlas(root) and any(root.iterdir()):
        message = f"{root} exists and is not an atlas; choose an empty or new folder for --atlas"
        raise OutputExistsError(message)
    resolver = GeneResolver()
    reporter.message("Reading the reference")
    ref = read_reference(reference, label_key=label_key, name=dataset_name, layer=layer, use_raw=use_raw,
                         gene_key=gene_key, species=species, resolver=resolver)
    ref.harmonise(mapping_table)
    reporter.message(f"{ref.expr.n_cells:,} cells, {len(ref.expr.genes):,} genes ({ref.expr.kind}), "
                     f"{len(set(ref.labels))} labels")
    chosen = highly_variable(ref.expr.X, settings.n_genes)
    genes = [ref.expr.genes[i] for i in chosen]
    X = ref.expr.X[:, chosen]
    emb: GeneEmbeddings | None = None
    if settings.method in TEXT_METHODS:
        emb = _gene_vectors(genes, settings, resolver, reporter, device)
    embedder = fit_embedder(settings.method, X, genes, gene_vectors=None if emb is None else emb.vectors,
                            params={"center": settings.center}, seed=settings.seed)
    with reporter.task("Embedding reference cells", ref.expr.n_cells, "cells") as advance:
        vectors = embedder.transform(X, center="query")
        advance(ref.expr.n_cells)
    return write_version(root, [(ref, vectors)], embedder, emb, settings, reporter=reporter, action="build")


def write_version(root: Path, refs: list[tuple[Reference, np.ndarray]], embedder: CellEmbedder,
                  emb: GeneEmbeddings | None, settings: BuildSettings, *, reporter: Reporter, action: str) -> store.Atlas:
    """Write a complete new version from the given datasets and publish it."""
    from screader_db.index import build_index, save_index

    build_id = new_build_id()
    text_sha = sha256_text("".join(emb.text_sha256)) if emb is not None else ""
    base = {
        "build_id": build_id,
        "builder_version": BUILDER_VERSION,
        "model_id": emb.model_id if emb is not None else "none",
        "model_spec": settings.model if emb is not None else "none",
        "model_sha": emb.model_sha if emb is not None else "",
        "encoder_key": emb.key if emb is not None else "",
        "encoder_settings": emb.settings if emb is not None else {},
        "text_sha256": text_sha,
        "genes_embedded": emb.n_embedded if emb is not None else 0,
        "method": embedder.method,
        "parameters": asdict(settings),
    }
    provenance = describe(base)
    root.mkdir(parents=True, exist_ok=True)
    with store.lock(root):
        store.clean_staging(root)
        staging = store.staging_dir(root)
        try:
            reporter.message("Writing the atlas")
            all_ids, all_vecs, cell_frames, dataset_rows = [], [], [], []
            layout = _layout(np.concatenate([v for _, v in refs]), settings, reporter)
            offset = 0
            for dataset_id, (ref, vectors) in enumerate(refs, start=1):
                ids = store.cell_ids(dataset_id, ref.expr.n_cells)
                part = None if layout is None else layout[offset : offset + len(ids)]
                offset += len(ids)
                cells = _cells_table(ref, ids, vectors, part, provenance)
                _write_parquet(cells, staging / "cells" / f"{ref.name}.parquet")
                all_ids.append(ids)
                all_vecs.append(vectors)
                cell_frames.append(cells.drop_columns([c for c in ("embedding", "umap") if c in cells.column_names])
                                   .to_pandas().assign(build_id=build_id))
                dataset_rows.append({
                    "dataset_id": dataset_id, "name": ref.name, "label_key": ref.label_key, "n_cells": ref.expr.n_cells,
                    "n_labels": len(set(ref.labels)), "species": ref.expr.mapping.species,
                    "source_file": ref.source_file, "source_sha256": ref.source_sha256, "added_at": now(),
                    "added_by": user(), "build_id": build_id,
                    "parameters": json.dumps({"gene_mapping": ref.expr.mapping.how, "input_kind": ref.expr.kind}),
                })
            genes_frame = pd.DataFrame({"gene": embedder.genes, "position": np.arange(len(embedder.genes)),
                                        "reference_mean": embedder.mean,
                                        "text_sha256": emb.text_sha256 if emb is not None else [""] * len(embedder.genes),
                                        "build_id": build_id})
            genes_table = pa.Table.from_pandas(genes_frame, preserve_index=False)
            _write_parquet(genes_table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}),
                           staging / "genes.parquet")
            if emb is not None:
                emb.extra["build_id"] = build_id
                write_gene_embeddings(emb, staging / "gene_embeddings.parquet")
            embedder.save(staging / "embedder.safetensors", provenance)
            ids = np.concatenate(all_ids)
            vecs = np.concatenate(all_vecs)
            with reporter.task("Building the FAISS index", len(ids), "cells") as advance:
                index, info = build_index(vecs, ids, kind=settings.index, seed=settings.seed)
                save_index(index, info, staging / "index.faiss", provenance)
                advance(len(ids))
            files = _file_rows(staging, build_id)
            tables = {
                "builds": pd.DataFrame([{
                    "build_id": build_id, "version": 0, "created_at": provenance["created_at"], "action": action,
                    "builder_version": BUILDER_VERSION,
                    "screader_db_version": provenance["package_versions"].get("screader-db", ""),
                    "model_id": base["model_id"], "model_sha": base["model_sha"], "encoder_key": base["encoder_key"],
                    "method": embedder.method,
                    "gene_embedding_sha256": next((f["sha256"] for f in files if f["path"] == "gene_embeddings.parquet"), ""),
                    "text_sha256": text_sha, "parameters": json.dumps(asdict(settings)),
                    "package_versions": json.dumps(provenance["package_versions"]),
                }]),
                "datasets": pd.DataFrame(dataset_rows),
                "cells": pd.concat(cell_frames, ignore_index=True),
                "genes": genes_frame,
                "gene_embeddings": _gene_embedding_frame(emb, build_id),
                "files": pd.DataFrame(files),
            }
            write_catalogue(staging / store.CATALOGUE, tables, build_id=build_id, details=provenance)
            meta = {
                "format": store.FORMAT, "version": 0, "created_at": provenance["created_at"], "provenance": provenance,
                "datasets": [{k: v for k, v in row.items() if k != "parameters"} for row in dataset_rows],
                "index": info.to_dict(), "n_cells": len(ids), "dim": int(vecs.shape[1]),
                "files": {f["path"]: f["sha256"] for f in files},
            }
            (staging / "VERSION.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            number = store.publish(root, staging)
        except BaseException:
            store.discard(staging)
            raise
    reporter.message(f"Atlas version {number} written to {root}")
    return store.open_atlas(root, version=number)


def _layout(vectors: np.ndarray, settings: BuildSettings, reporter: Reporter) -> np.ndarray | None:
    if settings.layout == "none":
        return None
    from screader_db.layout import reference_layout

    with reporter.task("Laying out the reference (UMAP)", len(vectors), "cells") as advance:
        coords = reference_layout(vectors, seed=settings.seed)
        advance(len(vectors))
    return coords


def _file_rows(folder: Path, build_id: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        rows.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size,
                     "kind": path.suffix.lstrip(".") or "file", "build_id": build_id})
    return rows


def _gene_embedding_frame(emb: GeneEmbeddings | None, build_id: str) -> pd.DataFrame:
    if emb is None:
        return pd.DataFrame()
    return pd.DataFrame({"gene": emb.genes, "model_id": emb.model_id, "model_sha": emb.model_sha,
                         "text_sha256": emb.text_sha256, "vector": list(emb.vectors.astype(np.float32)),
                         "build_id": build_id})
