"""Gene embedding tables: one float32 vector per gene, with the model and text they came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db.errors import AtlasError

PROVENANCE_KEY = b"screader_db.provenance"


@dataclass
class GeneEmbeddings:
    """Vectors for a list of genes, and the provenance that says how they were made."""

    genes: list[str]
    vectors: np.ndarray
    text_sha256: list[str]
    model_id: str
    model_sha: str
    settings: dict[str, Any]
    key: str
    n_embedded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_sha": self.model_sha, "settings": self.settings,
                "key": self.key, "n_genes": len(self.genes), "dim": self.dim, **self.extra}

    def subset(self, genes: list[str]) -> np.ndarray:
        """Vectors in the order of ``genes`` (all must be present)."""
        index = {g: i for i, g in enumerate(self.genes)}
        return self.vectors[[index[g] for g in genes]]

    def to_table(self) -> pa.Table:
        n = len(self.genes)
        flat = pa.array(self.vectors.astype(np.float32).ravel(), type=pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        pooling = str(self.settings.get("pooling", "model"))
        table = pa.table({
            "gene": pa.array(self.genes, pa.string()),
            "model_id": pa.array([self.model_id] * n, pa.string()),
            "model_sha": pa.array([self.model_sha] * n, pa.string()),
            "pooling": pa.array([pooling] * n, pa.string()),
            "text_sha256": pa.array(self.text_sha256, pa.string()),
            "vector": vectors,
        })
        return table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(self.provenance(), sort_keys=True)})


def write_gene_embeddings(emb: GeneEmbeddings, path: str | Path) -> Path:
    """Write the table to Parquet through a temporary file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(emb.to_table(), tmp, compression="zstd")
    tmp.replace(target)
    return target


def read_gene_embeddings(path: str | Path) -> GeneEmbeddings:
    """Read a gene embedding Parquet file written by :func:`write_gene_embeddings`."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        message = f"cannot read gene embeddings {path}: {err}"
        raise AtlasError(message) from err
    meta = json.loads((table.schema.metadata or {}).get(PROVENANCE_KEY, b"{}"))
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return GeneEmbeddings(
        genes=table.column("gene").to_pylist(), vectors=vectors, text_sha256=table.column("text_sha256").to_pylist(),
        model_id=meta.get("model_id", ""), model_sha=meta.get("model_sha", ""), settings=meta.get("settings", {}),
        key=meta.get("key", ""),
    )
