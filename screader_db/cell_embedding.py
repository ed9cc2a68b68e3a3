"""Cell embeddings: from log-normalised expression over the atlas genes to one vector per cell.

A fitted :class:`CellEmbedder` holds everything needed to embed a new cell the way the atlas
cells were embedded: the gene list, the reference gene means and a projection matrix. Methods:

- ``genept``: expression-weighted sum of gene text vectors (GenePT-w). The gene vectors are
  centred and whitened across genes first, since small text encoders are very anisotropic.
- ``expression``: the centred expression itself (a baseline, no language model involved).
- ``pca``: principal components of the reference expression (a baseline).

Each cell vector is centred (on the query's own gene means when the query is large enough,
otherwise on the reference's), projected and L2-normalised, so inner product is cosine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.errors import AtlasError, ScreaderError

METHODS = ("genept", "expression", "pca")
TEXT_METHODS = ("genept",)
MIN_CELLS_SELF_CENTRE = 50
FORMAT = "cell-embedder-1"


def l2_normalise(V: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (V / norms).astype(np.float32)


def whiten(E: np.ndarray, *, eps: float = 1e-3) -> np.ndarray:
    """Gene vectors centred across genes and whitened (each direction gets equal variance)."""
    centred = E - E.mean(axis=0, keepdims=True)
    U, S, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    keep = eps * S.max() < S
    return (U[:, keep] * np.sqrt(E.shape[0])).astype(np.float32)


@dataclass
class CellEmbedder:
    """A fitted embedding method (genes, centring vector, projection) that embeds any cell."""

    method: str
    genes: list[str]
    mean: np.ndarray
    projection: np.ndarray | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.genes) if self.projection is None else int(self.projection.shape[1])

    def centre_mode(self, n_cells: int, center: str | None = None) -> str:
        """``query`` (centre on the cells' own gene means) or ``reference``."""
        mode = center or self.params.get("center", "auto")
        if mode == "auto":
            return "query" if n_cells >= MIN_CELLS_SELF_CENTRE else "reference"
        if mode in ("query", "reference"):
            return str(mode)
        message = f"center must be auto, query or reference, got {mode!r}"
        raise ScreaderError(message)

    def transform(self, X: sp.csr_matrix, *, center: str | None = None, mean: np.ndarray | None = None,
                  batch: int = 4096) -> np.ndarray:
        """Embed cells whose columns follow ``self.genes``; returns unit-length float32 rows.

        ``mean`` is the centring vector to use (for chunked queries centred on their own
        means); otherwise it follows ``center``.
        """
        if X.shape[1] != len(self.genes):
            message = f"expression has {X.shape[1]} columns, the embedder expects {len(self.genes)} genes"
            raise ScreaderError(message)
        if mean is None:
            mode = self.centre_mode(X.shape[0], center)
            mean = np.asarray(X.mean(axis=0)).ravel().astype(np.float32) if mode == "query" else self.mean
        out = np.empty((X.shape[0], self.dim), dtype=np.float32)
        for start in range(0, X.shape[0], batch):
            block = np.asarray(X[start : start + batch].todense(), dtype=np.float32) - mean
            out[start : start + batch] = block if self.projection is None else block @ self.projection
        return l2_normalise(out)

    def save(self, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
        """Write as safetensors: arrays as tensors, genes and parameters as JSON metadata."""
        from safetensors.numpy import save_file

        tensors = {"mean": np.ascontiguousarray(self.mean, dtype=np.float32)}
        if self.projection is not None:
            tensors["projection"] = np.ascontiguousarray(self.projection, dtype=np.float32)
        meta = {
            "format": FORMAT,
            "method": self.method,
            "genes": json.dumps(self.genes),
            "params": json.dumps(self.params, sort_keys=True),
            "provenance": json.dumps(provenance or {}, sort_keys=True),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> CellEmbedder:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                meta = handle.metadata() or {}
                arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        except (OSError, ValueError, SafetensorError) as err:
            message = f"cannot read the cell embedder {path}: {err}"
            raise AtlasError(message) from err
        if meta.get("format") != FORMAT:
            message = f"{path} has embedder format {meta.get('format')!r}, this version reads {FORMAT!r}"
            raise AtlasError(message)
        return cls(method=meta["method"], genes=json.loads(meta["genes"]), mean=arrays["mean"],
                   projection=arrays.get("projection"), params=json.loads(meta["params"]))


def fit_embedder(method: str, X: sp.csr_matrix, genes: list[str], *, gene_vectors: np.ndarray | None = None,
                 mean: np.ndarray | None = None, params: dict[str, Any] | None = None, n_components: int = 50,
                 seed: int = 0) -> CellEmbedder:
    """Fit ``method`` on reference expression ``X`` (columns follow ``genes``; a sample of cells is
    enough). ``mean`` is the reference's gene means when ``X`` is only a sample."""
    if method not in METHODS:
        message = f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
        raise ScreaderError(message)
    settings = {"center": "auto", **(params or {})}
    mean = (np.asarray(X.mean(axis=0)).ravel() if mean is None else np.asarray(mean)).astype(np.float32)
    if method == "expression":
        return CellEmbedder(method, list(genes), mean, None, settings)
    if method == "pca":
        from sklearn.utils.extmath import randomized_svd

        dense = np.asarray(X.todense(), dtype=np.float32) - mean
        k = min(n_components, min(dense.shape) - 1)
        _, _, Vt = randomized_svd(dense, n_components=k, random_state=seed)
        settings["n_components"] = k
        return CellEmbedder(method, list(genes), mean, Vt.T.astype(np.float32), settings)
    if gene_vectors is None or gene_vectors.shape[0] != len(genes):
        raise ScreaderError("the genept method needs one gene vector per atlas gene")
    return CellEmbedder(method, list(genes), mean, whiten(gene_vectors), settings)
