"""A labelled reference data set, opened for streaming: labels, gene mapping and chunked reads.

Nothing here loads the whole expression matrix: an .h5ad path is opened in backed mode and read
in row chunks for the statistics pass and again for the embedding pass.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.checksums import sha256_file
from screader_db.errors import AtlasError, InputDataError, ScreaderWarning
from screader_db.genes import GeneMapping, GeneResolver
from screader_db.inputs import (
    CHUNK,
    ExpressionSource,
    GenePlan,
    check_values,
    input_scale_of,
    map_genes,
    normalise,
    open_expression,
    plan_genes,
    read_h5ad,
)
from screader_db.progress import SILENT, Reporter

# A data set's name is a folder name in the atlas and a word in commands: ASCII letters, digits, '-', '_', '.'.
NAME_RULE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}")
RESERVED_NAMES = (".", "..")


def check_dataset_name(name: str, *, hint: str = "") -> None:
    """Refuse a data set name that is not 1 to 100 letters, digits, '-', '_' or '.' (not starting with '-')."""
    if NAME_RULE.fullmatch(name) and name not in RESERVED_NAMES:
        return
    shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
    message = (f"{shown!r} cannot name a data set: use 1 to 100 letters, digits, '-', '_' or '.' (ASCII), "
               f"not starting with '-'{hint}")
    raise AtlasError(message)


@dataclass
class ReferenceSource:
    """A labelled data set: its cells' labels and metadata, and its expression as a chunked source."""

    name: str
    label_key: str
    labels: np.ndarray
    source: ExpressionSource
    mapping: GeneMapping
    kind: str
    source_file: str
    source_sha256: str
    harmonised: np.ndarray | None = None
    ontology: np.ndarray | None = None
    evidence: str = ""

    @property
    def n_cells(self) -> int:
        return self.source.n_cells

    @property
    def obs(self) -> pd.DataFrame:
        return self.source.obs

    def harmonise(self, label_map: pd.DataFrame | None) -> None:
        """Fill the harmonised labels and ontology ids from a label map (identity without one)."""
        from screader_db.labelmap import harmonise

        self.harmonised, self.ontology = harmonise(self.labels, self.name, label_map)

    def plan(self, target: list[str] | None = None) -> GenePlan:
        return plan_genes(self.mapping.symbols, target)

    def chunks(self, plan: GenePlan, chunk: int = CHUNK) -> Any:
        """(start, log-normalised block over the plan's genes) for every chunk of cells."""
        for start, block in self.source.chunks(chunk):
            check_values(block)
            yield start, normalise(block, self.kind, plan)

    def embed(self, embedder: Any, *, mean: np.ndarray | None = None, chunk: int = CHUNK,
              reporter: Reporter = SILENT) -> np.ndarray:
        """Vectors of every cell, centred on ``mean`` or on this data set's own centre (the
        embedder's way: its mean or its composition-balanced mean)."""
        from screader_db.centring import stream_centre

        plan = self.plan(embedder.genes)
        if mean is None:
            mode = embedder.centre_mode(self.n_cells)
            mean = stream_centre(embedder, mode, lambda: self.chunks(plan, chunk), self.n_cells,
                                 seed=int(embedder.params.get("seed", 0)))
        centre = mean
        vectors = np.empty((self.n_cells, embedder.dim), dtype=np.float32)
        with reporter.task(f"Embedding {self.name}", self.n_cells, "cells") as advance:
            for start, block in self.chunks(plan, chunk):
                vectors[start : start + block.shape[0]] = embedder.transform(block, mean=centre)
                advance(block.shape[0])
        return vectors


def open_reference(reference: Any, *, label_key: str, name: str | None = None, layer: str | None = None,
                   use_raw: bool = False, gene_key: str | None = None, species: str = "auto",
                   resolver: GeneResolver | None = None, input_scale: str | None = None) -> ReferenceSource:
    """Open a reference (an .h5ad path, read in backed mode, or an AnnData) and check its labels.

    ``input_scale`` names the scale of the values (:data:`screader_db.inputs.SCALES`); ``auto`` or
    None detects it from the first cells."""
    source_file, digest = "<AnnData>", ""
    hint = ""
    if name is None:
        name = Path(reference).stem if isinstance(reference, str | Path) else "reference"
        hint = "; the name comes from the file name, so give one"
    check_dataset_name(name, hint=hint)
    if isinstance(reference, str | Path):
        path = Path(reference)
        adata = read_h5ad(path, backed=True)
        source_file, digest = str(path.resolve()), sha256_file(path)
    else:
        adata = reference
    if label_key not in adata.obs.columns:
        known = ", ".join(map(str, adata.obs.columns)) or "none"
        message = f"--label-key {label_key!r} is not an obs column of the reference; columns present: {known}"
        raise InputDataError(message)
    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key)
    labels = adata.obs[label_key].astype("string").fillna("").to_numpy(dtype=object)
    keep = np.array([bool(str(v).strip()) for v in labels])
    if not keep.any():
        message = f"every cell's {label_key!r} is empty; choose another --label-key"
        raise InputDataError(message)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum()):,} of {len(keep):,} cells have no {label_key!r} label (NaN or empty) and "
                      "were left out of the atlas", ScreaderWarning, stacklevel=2)
        source = source.subset(np.flatnonzero(keep))
        labels = labels[keep]
    mapping = map_genes(source, species=species, resolver=resolver)
    scale = input_scale_of(source, input_scale)
    return ReferenceSource(name=name, label_key=label_key, labels=labels.astype(str), source=source,
                           mapping=mapping, kind=scale.scale, source_file=source_file, source_sha256=digest,
                           evidence=scale.evidence)
