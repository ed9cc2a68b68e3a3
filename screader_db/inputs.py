"""Reading and checking expression data: h5ad files, layers, value checks and gene mapping.

Everything here turns a user's AnnData into one well-defined thing: log1p(counts per 10,000)
over human gene symbols, or raises an :class:`InputDataError` that says what was wrong and how
to fix it. Matrices are read in row chunks, so a file opened in backed mode is never loaded
whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.errors import InputDataError
from screader_db.genes import GeneMapping, GeneResolver, default_resolver, looks_like_ensembl

TARGET_SUM = 1e4
LOG_MAX = 30.0
CHUNK = 10_000
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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
    if magic != HDF5_SIGNATURE:
        message = f"{file} is not an .h5ad file (no HDF5 signature); save it with AnnData's write_h5ad"
        raise InputDataError(message)
    try:
        return ad.read_h5ad(file, backed="r" if backed else None)
    except Exception as err:  # h5py and anndata raise many kinds for damaged files
        message = f"{file} could not be read as AnnData ({type(err).__name__}: {err}); the file is damaged or not an h5ad"
        raise InputDataError(message) from err


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    dup: dict[str, None] = {}
    for n in names:
        if n in seen:
            dup[n] = None
        seen.add(n)
    return list(dup)


@dataclass
class ExpressionSource:
    """The chosen matrix of an AnnData (in memory or backed), read in row chunks.

    ``keep`` (sorted row positions) restricts the source to some of the matrix's rows.
    """

    matrix: Any
    names: list[str]
    obs: pd.DataFrame
    keep: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return int(self.matrix.shape[0] if self.keep is None else len(self.keep))

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1])

    def subset(self, keep: np.ndarray) -> ExpressionSource:
        """The same source restricted to the rows ``keep`` (positions in this source)."""
        rows = keep if self.keep is None else self.keep[keep]
        return ExpressionSource(matrix=self.matrix, names=self.names, obs=self.obs.iloc[keep], keep=np.asarray(rows))

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        if self.keep is None:
            block = self.matrix[start:stop]
        else:
            wanted = self.keep[start:stop]
            low = int(wanted[0]) if len(wanted) else 0
            high = int(wanted[-1]) + 1 if len(wanted) else 0
            block = self.matrix[low:high]
            if hasattr(block, "to_memory"):
                block = block.to_memory()
            block = sp.csr_matrix(block)[wanted - low]
        if hasattr(block, "to_memory"):
            block = block.to_memory()
        return sp.csr_matrix(block, dtype=np.float32)

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, sp.csr_matrix]]:
        for start in range(0, self.n_cells, size):
            yield start, self.rows(start, min(start + size, self.n_cells))


def open_expression(adata: Any, *, layer: str | None = None, use_raw: bool = False,
                    gene_key: str | None = None) -> ExpressionSource:
    """Choose ``.X``, a layer or ``.raw`` and the gene names; checks shape and unique names."""
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
    if matrix.shape[0] == 0:
        raise InputDataError("the data has zero cells")
    if matrix.shape[1] == 0:
        raise InputDataError("the data has zero genes")
    names = [str(v) for v in var.index]
    if gene_key is not None:
        if gene_key not in var.columns:
            known = ", ".join(map(str, var.columns)) or "none"
            message = f"--gene-key {gene_key!r} is not a var column; columns present: {known}"
            raise InputDataError(message)
        names = [str(v) for v in var[gene_key].astype(str)]
    duplicated = _duplicates(names)
    if duplicated:
        shown = ", ".join(duplicated[:5])
        message = (
            f"{len(duplicated)} gene names occur more than once ({shown}...); make them unique "
            "(adata.var_names_make_unique()) or pass --gene-key with a column of unique names"
        )
        raise InputDataError(message)
    return ExpressionSource(matrix=matrix, names=names, obs=adata.obs)


def check_values(X: sp.csr_matrix) -> str:
    """``counts`` or ``lognorm`` for usable data; raises for NaN, inf, negative or scaled values."""
    if X.shape[0] == 0:
        raise InputDataError("the data has zero cells")
    if X.shape[1] == 0:
        raise InputDataError("the data has zero genes")
    data = X.data
    if not np.all(np.isfinite(data)):
        bad = int(np.sum(~np.isfinite(data)))
        message = f"the matrix has {bad} NaN or infinite values; remove or impute them before annotating"
        raise InputDataError(message)
    if data.size and data.min() < 0:
        message = (
            f"the matrix has negative values (minimum {data.min():.3g}): it looks scaled or z-scored. "
            "Pass raw counts or log-normalised data instead (--layer counts, or --use-raw)"
        )
        raise InputDataError(message)
    if data.size == 0 or np.all(data == np.round(data)):
        return "counts"
    if data.max() <= LOG_MAX:
        return "lognorm"
    message = (
        f"the matrix has non-integer values up to {data.max():.3g}: neither raw counts nor log-normalised data. "
        "Pass raw counts (--layer counts) or log1p-normalised data"
    )
    raise InputDataError(message)


def rows_in_block(rows: np.ndarray, start: int, size: int) -> np.ndarray:
    """The sorted global ``rows`` that fall in the block starting at ``start``, as block-local rows."""
    return rows[(rows >= start) & (rows < start + size)] - start


def sample_chunks(chunks: Callable[[], Iterator[tuple[int, sp.csr_matrix]]], n_cells: int, *, sample_cells: int,
                  seed: int = 0) -> sp.csr_matrix:
    """A seeded sample of at most ``sample_cells`` cells (in row order) of a batch read in chunks."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_cells, size=min(n_cells, sample_cells), replace=False))
    picked = []
    for start, block in chunks():
        local = rows_in_block(rows, start, block.shape[0])
        if len(local):
            picked.append(block[local])
    return sp.csr_matrix(sp.vstack(picked))


@dataclass
class GenePlan:
    """How input genes become target columns: ``assign`` sums input genes into target genes."""

    genes: list[str]
    assign: sp.csr_matrix
    matched: int


def plan_genes(symbols: list[str], target: list[str] | None = None) -> GenePlan:
    """Map input columns (by human symbol, '' = unmapped) to ``target`` genes (default: all mapped)."""
    genes = sorted({s for s in symbols if s}) if target is None else list(target)
    column = {g: i for i, g in enumerate(genes)}
    rows = [i for i, s in enumerate(symbols) if s in column]
    cols = [column[symbols[i]] for i in rows]
    assign = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(symbols), len(genes)))
    return GenePlan(genes=genes, assign=assign, matched=len(set(cols)))


def normalise(X: sp.csr_matrix, kind: str, plan: GenePlan) -> sp.csr_matrix:
    """log1p of counts per 10,000 over the plan's genes.

    Genes mapping to one symbol are summed in linear space; library sizes are taken over all
    input genes, mapped or not, so normalisation matches what the cell was measured with.
    Log-normalised input is un-logged first, so any earlier scale factor is replaced by 10,000.
    """
    linear = X.copy()
    if kind == "lognorm":
        linear.data = np.expm1(linear.data)
    library = np.asarray(linear.sum(axis=1)).ravel()
    library[library == 0] = 1.0
    summed = sp.csr_matrix(linear @ plan.assign)
    out = sp.csr_matrix(sp.diags((TARGET_SUM / library).astype(np.float32)) @ summed, dtype=np.float32)
    out.data = np.log1p(out.data)
    out.sort_indices()
    return out


def map_genes(source: ExpressionSource, *, species: str = "auto", resolver: GeneResolver | None = None) -> GeneMapping:
    """Human symbols for the source's genes; refuses when none maps."""
    mapping = (resolver or default_resolver()).map(source.names, species=species)
    if mapping.n_mapped == 0:
        hint = ""
        if looks_like_ensembl(source.names) > 0.5:
            hint = " The names look like Ensembl ids."
        message = (
            f"none of the {len(source.names)} gene names could be mapped to human gene symbols "
            f"(first names: {', '.join(source.names[:5])}).{hint} Pass --gene-key with a var column of symbols, "
            "or --species if the guess was wrong"
        )
        raise InputDataError(message)
    return mapping


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


def load_expression(adata: Any, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                    species: str = "auto", resolver: GeneResolver | None = None, target: list[str] | None = None,
                    chunk: int = CHUNK) -> Expression:
    """Check, map and log-normalise a whole AnnData (which is not changed) into memory."""
    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key)
    mapping = map_genes(source, species=species, resolver=resolver)
    plan = plan_genes(mapping.symbols, target)
    kind = ""
    blocks = []
    for _, block in source.chunks(chunk):
        found = check_values(block)
        kind = kind or found
        blocks.append(normalise(block, kind, plan))
    X = sp.csr_matrix(sp.vstack(blocks), dtype=np.float32)
    return Expression(X=X, genes=plan.genes, obs=source.obs.copy(), kind=kind, mapping=mapping)
