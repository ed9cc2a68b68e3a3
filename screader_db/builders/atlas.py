"""Build a reference atlas from a labelled AnnData: genes, gene vectors, cell vectors, index.

Steps: read and check the reference, map genes to human symbols, log-normalise, pick the
highly variable genes, embed their descriptions (through the gene-embedding cache), fit the
cell embedding method, embed every reference cell, then write a new atlas version (Parquet,
DuckDB catalogue, FAISS index) and switch the atlas to it atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from screader_db import store
from screader_db.builders.writer import drafting, finish, write_dataset
from screader_db.cell_embedding import TEXT_METHODS, CellEmbedder, fit_embedder
from screader_db.checksums import sha256_file, sha256_text
from screader_db.errors import InputDataError, OutputExistsError
from screader_db.features import highly_variable
from screader_db.gene_vectors import GeneEmbeddings, write_gene_embeddings
from screader_db.genes import GeneResolver
from screader_db.inputs import Expression, load_expression, read_h5ad
from screader_db.progress import SILENT, Reporter
from screader_db.provenance import describe

BUILDER_VERSION = "atlas-1"
DEFAULT_METHOD = "genept"


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
                   resolver: GeneResolver | None = None, target: list[str] | None = None) -> Reference:
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
    expr = load_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species, resolver=resolver,
                           target=target)
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
                overwrite: bool = False, device: str | None = None, wait: float = 0.0,
                reporter: Reporter = SILENT) -> store.Atlas:
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
    if root.exists() and not store.is_atlas(root) and any(p.name not in (store.VERSIONS, store.LOCK) for p in root.iterdir()):
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
    return write_version(root, [(ref, vectors)], embedder, emb, settings, reporter=reporter, action="build", wait=wait)


def atlas_provenance(settings: BuildSettings, embedder: CellEmbedder, emb: GeneEmbeddings | None) -> dict[str, Any]:
    """What every file of the atlas records: model, text hash, method, parameters, versions."""
    return describe({
        "builder_version": BUILDER_VERSION,
        "model_id": emb.model_id if emb is not None else "none",
        "model_spec": settings.model if emb is not None else "none",
        "model_sha": emb.model_sha if emb is not None else "",
        "encoder_key": emb.key if emb is not None else "",
        "encoder_settings": emb.settings if emb is not None else {},
        "text_sha256": sha256_text("".join(emb.text_sha256)) if emb is not None else "",
        "genes_embedded": emb.n_embedded if emb is not None else 0,
        "method": embedder.method,
        "parameters": asdict(settings),
    })


def write_version(root: Path, refs: list[tuple[Reference, np.ndarray]], embedder: CellEmbedder,
                  emb: GeneEmbeddings | None, settings: BuildSettings, *, reporter: Reporter, action: str,
                  wait: float = 0.0) -> store.Atlas:
    """Write a complete new version from the given data sets and publish it."""
    from screader_db.index import build_index, save_index

    with drafting(root, action=action, provenance=atlas_provenance(settings, embedder, emb), wait=wait) as draft:
        provenance = draft.provenance
        reporter.message("Writing the atlas")
        layout = _layout(np.concatenate([v for _, v in refs]), settings, reporter)
        all_ids, cell_frames, dataset_rows = [], [], []
        offset = 0
        for dataset_id, (ref, vectors) in enumerate(refs, start=1):
            part = None if layout is None else layout[offset : offset + len(vectors)]
            offset += len(vectors)
            ids, frame, row = write_dataset(draft, ref, dataset_id, vectors, part)
            all_ids.append(ids)
            cell_frames.append(frame)
            dataset_rows.append(row)
        genes_frame = pd.DataFrame({"gene": embedder.genes, "position": np.arange(len(embedder.genes)),
                                    "reference_mean": embedder.mean,
                                    "text_sha256": emb.text_sha256 if emb is not None else [""] * len(embedder.genes),
                                    "build_id": draft.build_id})
        draft.write_parquet(pa.Table.from_pandas(genes_frame, preserve_index=False), "genes.parquet")
        if emb is not None:
            emb.extra["build_id"] = draft.build_id
            write_gene_embeddings(emb, draft.staging / "gene_embeddings.parquet")
        embedder.save(draft.staging / "embedder.safetensors", provenance)
        ids = np.concatenate(all_ids)
        vecs = np.concatenate([v for _, v in refs])
        with reporter.task("Building the FAISS index", len(ids), "cells") as advance:
            index, info = build_index(vecs, ids, kind=settings.index, seed=settings.seed)
            save_index(index, info, draft.staging / "index.faiss", provenance)
            advance(len(ids))
        tables = {"datasets": pd.DataFrame(dataset_rows), "cells": pd.concat(cell_frames, ignore_index=True),
                  "genes": genes_frame, "gene_embeddings": _gene_embedding_frame(emb, draft.build_id)}
        finish(draft, tables, atlas_provenance=provenance, index_info=info.to_dict(), datasets=dataset_rows, history=[],
               reporter=reporter)
    reporter.message(f"Atlas version {draft.number} written to {root}")
    return store.open_atlas(root, version=draft.number)


def _layout(vectors: np.ndarray, settings: BuildSettings, reporter: Reporter) -> np.ndarray | None:
    if settings.layout == "none":
        return None
    from screader_db.layout import reference_layout

    with reporter.task("Laying out the reference (UMAP)", len(vectors), "cells") as advance:
        coords = reference_layout(vectors, seed=settings.seed)
        advance(len(vectors))
    return coords


def _gene_embedding_frame(emb: GeneEmbeddings | None, build_id: str) -> pd.DataFrame:
    if emb is None:
        return pd.DataFrame()
    return pd.DataFrame({"gene": emb.genes, "model_id": emb.model_id, "model_sha": emb.model_sha,
                         "text_sha256": emb.text_sha256, "vector": list(emb.vectors.astype(np.float32)),
                         "build_id": build_id})
