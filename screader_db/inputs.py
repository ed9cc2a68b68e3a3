"""Reading and checking expression data: h5ad files, layers, value checks and gene mapping.

Everything here turns a user's AnnData into one well-defined thing: a sparse matrix of
log1p(counts per 10,000) over human gene symbols, or raises an :class:`InputDataError` that
says what was wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.errors import InputDataError
from screader_db.genes import GeneMapping, GeneResolver, looks_like_ensembl

TARGET_SUM = 1e4
LOG_MAX = 30.0
SAMPLE_ROWS = 2000


def read_h5ad(path: str | Path, *, backed: bool = False) -> Any:
    """Open an ``.h5ad`` file with a clear error for each way it can be wrong."""
    import anndata as ad

    file = Path(path)
    if not file.exists():
        message = f"{file} does not exist; check the path"
        raise InputDataError(message)
    if file.is_dir():
        message = f"{file} is a folder, expected an .h5ad file"
        raise InputDataError(message)
    if file.stat().st_size == 0:
        message = f"{file} is empty (0 bytes); it was probably not written completely. Write it again"
        raise InputDataError(message)
    with open(file, "rb") as handle:
        magic = handle.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        message = f"{file} is not an .h5ad file (no HDF5 signature); save it with AnnData's write_h5ad"
        raise InputDataError(message)
    try:
        return ad.read_h5ad(file, backed="r" if backed else None)
    except Exception as err:  # h5py and anndata raise many kinds for damaged files
        message = f"{file} could not be read as AnnData ({type(err).__name__}: {err}); the file is damaged or not an h5ad"
        raise InputDataError(message) from err


def expression(adata: Any, *, layer: str | None = None, use_raw: bool = False) -> tuple[sp.csr_matrix, list[str], Any]:
    """The chosen matrix as float32 CSR with its gene names and var table."""
    if use_raw and layer:
        raise InputDataError("choose either a layer or .raw, not both")
    if use_raw:
        if adata.raw is None:
            raise InputDataError("the file has no .raw; leave out --use-raw to read .X")
        matrix, var = adata.raw.X, adata.raw.var
    elif layer:
        if layer not in adata.layers:
            known = ", ".join(adata.layers.keys()) or "none"
            message = f"layer {layer!r} is not in the file; layers present: {known}"
            raise InputDataError(message)
        matrix, var = adata.layers[layer], adata.var
    else:
        matrix, var = adata.X, adata.var
    if matrix is None:
        raise InputDataError("the file has no expression matrix in .X; pass --layer or --use-raw")
    if hasattr(matrix, "to_memory"):
        matrix = matrix.to_memory()
    elif not isinstance(matrix, np.ndarray) and not sp.issparse(matrix):
        matrix = matrix[:, :]
    X = sp.csr_matrix(matrix, dtype=np.float32)
    return X, [str(v) for v in var.index], var


def check_values(X: sp.csr_matrix) -> str:
    """``counts`` or ``lognorm`` for usable data; raises for NaN, inf, negative or scaled values."""
    n_cells, n_genes = X.shape
    if n_cells == 0:
        raise InputDataError("the data has zero cells")
    if n_genes == 0:
        raise InputDataError("the data has zero genes")
    rows = X[: min(n_cells, SAMPLE_ROWS)].data
    all_data = X.data
    if not np.all(np.isfinite(all_data)):
        bad = int(np.sum(~np.isfinite(all_data)))
        message = f"the matrix has {bad} NaN or infinite values; remove or impute them before annotating"
        raise InputDataError(message)
    if all_data.size and all_data.min() < 0:
        message = (
            f"the matrix has negative values (minimum {all_data.min():.3g}): it looks scaled or z-scored. "
            "Pass raw counts or log-normalised data instead (--layer counts, or --use-raw)"
        )
        raise InputDataError(message)
    if rows.size == 0:
        return "counts"
    if np.all(rows == np.round(rows)):
        return "counts"
    if rows.max() <= LOG_MAX:
        return "lognorm"
    message = (
        f"the matrix has non-integer values up to {rows.max():.3g}: neither raw counts nor log-normalised data. "
        "Pass raw counts (--layer counts) or log1p-normalised data"
    )
    raise InputDataError(message)


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    return dup


@dataclass
class Expression:
    """Log-normalised expression over human gene symbols, with how it was made."""

    X: sp.csr_matrix
    genes: list[str]
    obs: pd.DataFrame
    kind: str
    mapping: GeneMapping

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])


def gene_names(adata: Any, var: pd.DataFrame, gene_key: str | None, names: list[str]) -> list[str]:
    """Gene names from the var index or a var column."""
    if gene_key is None:
        return names
    if gene_key not in var.columns:
        known = ", ".join(map(str, var.columns)) or "none"
        message = f"--gene-key {gene_key!r} is not a var column; columns present: {known}"
        raise InputDataError(message)
    return [str(v) for v in var[gene_key].astype(str)]


def load_expression(adata: Any, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                    species: str = "auto", resolver: GeneResolver | None = None) -> Expression:
    """Check, map and log-normalise an AnnData's expression (the AnnData is not changed)."""
    X, names, var = expression(adata, layer=layer, use_raw=use_raw)
    names = gene_names(adata, var, gene_key, names)
    duplicated = _duplicates(names)
    if duplicated:
        shown = ", ".join(duplicated[:5])
        message = (
            f"{len(duplicated)} gene names occur more than once ({shown}...); make them unique "
            "(adata.var_names_make_unique()) or pass --gene-key with a column of unique names"
        )
        raise InputDataError(message)
    kind = check_values(X)
    mapping = (resolver or GeneResolver()).map(names, species=species)
    if mapping.n_mapped == 0:
        hint = ""
        if looks_like_ensembl(names) > 0.5 and "ensembl" not in mapping.how:
            hint = " The names look like Ensembl ids."
        message = (
            f"none of the {len(names)} gene names could be mapped to human gene symbols "
            f"(first names: {', '.join(names[:5])}).{hint} Pass --gene-key with a var column of symbols, "
            "or --species if the guess was wrong"
        )
        raise InputDataError(message)
    genes, lognorm = aggregate_lognorm(X, mapping.symbols, kind)
    return Expression(X=lognorm, genes=genes, obs=adata.obs.copy(), kind=kind, mapping=mapping)


def aggregate_lognorm(X: sp.csr_matrix, symbols: list[str], kind: str) -> tuple[list[str], sp.csr_matrix]:
    """Sum genes that map to one symbol in linear space, then log1p of counts per 10,000.

    Library sizes are taken over all genes, mapped or not, so normalisation matches what the
    cell was measured with.
    """
    linear = X.copy()
    if kind == "lognorm":
        linear.data = np.expm1(linear.data)
    library = np.asarray(linear.sum(axis=1)).ravel()
    library[library == 0] = 1.0
    genes = sorted({s for s in symbols if s})
    column = {g: i for i, g in enumerate(genes)}
    rows = [i for i, s in enumerate(symbols) if s]
    cols = [column[symbols[i]] for i in rows]
    assign = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(symbols), len(genes)))
    summed = sp.csr_matrix(linear @ assign)
    scaled = sp.diags((TARGET_SUM / library).astype(np.float32)) @ summed
    out = sp.csr_matrix(scaled, dtype=np.float32)
    out.data = np.log1p(out.data)
    out.sort_indices()
    return genes, out


def align(expr: Expression, genes: list[str]) -> tuple[sp.csr_matrix, int]:
    """Columns of ``expr`` in the order of ``genes`` (missing genes are zero) and how many matched."""
    index = {g: i for i, g in enumerate(expr.genes)}
    src = [index.get(g, -1) for g in genes]
    present = [j for j, i in enumerate(src) if i >= 0]
    pick = sp.csr_matrix(
        (np.ones(len(present), dtype=np.float32), ([src[j] for j in present], present)),
        shape=(len(expr.genes), len(genes)),
    )
    return sp.csr_matrix(expr.X @ pick, dtype=np.float32), len(present)
