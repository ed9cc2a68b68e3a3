"""Gene embedding tables: one float32 vector per gene, with the model and text they came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db.atlas_format import PROVENANCE_KEY, gene_embeddings_schema, parquet_metadata
from screader_db.errors import AtlasError
from screader_db.outputs import atomic_write


@dataclass
class GeneEmbeddings:
    """Vectors for a list of genes, and the provenance that says how they were made.

    Parameters
    ----------
    genes
        Gene symbols.
    vectors
        One float32 row per gene.
    text_sha256
        The sha256 of each gene's description.
    model_id, model_sha
        The model the vectors came from.
    settings
        The encoder's settings.
    key
        The encoder's cache key.
    n_embedded
        How many descriptions this run embedded (the rest came from the cache).
    extra
        More provenance (the build id).
    """

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
        """The width of the vectors."""
        return int(self.vectors.shape[1])

    def provenance(self) -> dict[str, Any]:
        """Where the vectors came from.

        Returns
        -------
        dict
            Model id and sha, encoder settings and key, gene count, width and any ``extra``.
        """
        return {"model_id": self.model_id, "model_sha": self.model_sha, "settings": self.settings,
                "key": self.key, "n_genes": len(self.genes), "dim": self.dim, **self.extra}

    def subset(self, genes: list[str]) -> np.ndarray:
        """The vectors of some genes.

        Parameters
        ----------
        genes
            Genes, all present in :attr:`genes`.

        Returns
        -------
        numpy.ndarray
            One row per gene, in the order of ``genes``.
        """
        index = {g: i for i, g in enumerate(self.genes)}
        return self.vectors[[index[g] for g in genes]]

    def to_table(self) -> pa.Table:
        """The embeddings as an Arrow table of the atlas's ``gene_embeddings`` format.

        Returns
        -------
        pyarrow.Table
            Columns and metadata as :func:`screader_db.atlas_format.gene_embeddings_schema` gives.
        """
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
        }, schema=gene_embeddings_schema(self.dim))
        provenance = json.dumps(self.provenance(), sort_keys=True)
        return table.replace_schema_metadata(parquet_metadata("gene_embeddings", provenance))


def write_gene_embeddings(emb: GeneEmbeddings, path: str | Path) -> Path:
    """Write gene embeddings to Parquet through a temporary file beside the target.

    Parameters
    ----------
    emb
        The embeddings.
    path
        The file to write (replaced when it exists).

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    with atomic_write(target) as tmp:
        pq.write_table(emb.to_table(), tmp, compression="zstd")
    return target


def read_gene_embeddings(path: str | Path) -> GeneEmbeddings:
    """Read a gene embedding Parquet file written by :func:`write_gene_embeddings`.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    GeneEmbeddings
        Genes, float32 vectors, text hashes and the model they came from.

    Raises
    ------
    AtlasError
        The file cannot be read.
    """
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
