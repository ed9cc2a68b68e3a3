"""The reference expression an atlas keeps, so it can be re-fitted on the genes a query measures.

Each data set's log1p(counts per 10,000) over every gene it was mapped to is stored as sparse
rows in Parquet parts beside its cells::

    expression/<dataset>/part-NNNNN.parquet   cell_id, gene (list<int32>), value (list<float32>)

The part's schema metadata holds its gene list (``screader_db.genes``), the format and the
provenance, like every other file of the atlas; names, keys and the format tag are
:mod:`screader_db.atlas_format`'s. Parts are read one at a time, so re-fitting reads the
reference out of core.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from screader_db.atlas_format import EXPRESSION, GENES_KEY, expression_metadata, part_dataset
from screader_db.inputs import unlog
from screader_db.integrity import reading


def expression_table(ids: np.ndarray, X: sp.csr_matrix) -> pa.Table:
    """Sparse rows as a Parquet table: one row per cell, its nonzero gene positions and values.

    Parameters
    ----------
    ids : numpy.ndarray
        The cells' ids.
    X : scipy.sparse.csr_matrix
        Their log-normalised rows.

    Returns
    -------
    pyarrow.Table
        Columns ``cell_id`` (int64), ``gene`` (list<int32>), ``value`` (list<float32>).
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    offsets = pa.array(X.indptr.astype(np.int32), pa.int32())
    return pa.table({
        "cell_id": pa.array(np.asarray(ids, dtype=np.int64), pa.int64()),
        "gene": pa.ListArray.from_arrays(offsets, pa.array(X.indices.astype(np.int32), pa.int32())),
        "value": pa.ListArray.from_arrays(offsets, pa.array(X.data, pa.float32())),
    })


def write_part(path: Path, X: sp.csr_matrix, *, ids: np.ndarray, genes: list[str], provenance: str) -> None:
    """Write one part of a data set's log-normalised expression.

    Parameters
    ----------
    path : Path
        The part's file (its folder is made); :func:`~screader_db.atlas_format.expression_part_path` names it.
    X : scipy.sparse.csr_matrix
        The cells' log1p(counts per 10,000), columns following ``genes``.
    ids : numpy.ndarray
        The cells' ids.
    genes : list of str
        The columns, kept in the schema metadata.
    provenance : str
        The version's provenance (JSON).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = expression_metadata(provenance, genes)
    pq.write_table(expression_table(ids, X).replace_schema_metadata(meta), path, compression="zstd")


def parts(version: Path, datasets: list[str] | None = None) -> list[Path]:
    """The expression parts of a version, in order.

    Parameters
    ----------
    version : Path
        The version folder.
    datasets : list of str or None
        Only these data sets' parts; None: every data set's.

    Returns
    -------
    list of Path
    """
    found = sorted((version / EXPRESSION).rglob("*.parquet"))
    return found if datasets is None else [p for p in found if part_dataset(p.relative_to(version).as_posix()) in datasets]


def has_expression(version: Path) -> bool:
    """Whether the version keeps any reference expression.

    Parameters
    ----------
    version : Path
        The version folder.

    Returns
    -------
    bool
        True when ``expression/`` holds at least one Parquet part.
    """
    return bool(parts(version))


def part_genes(path: Path) -> list[str]:
    """The genes (columns) of one part, from its schema metadata.

    Parameters
    ----------
    path : Path
        The part's file.

    Returns
    -------
    list of str

    Raises
    ------
    AtlasDamagedError
        The file is missing or unreadable, or its metadata has no gene list.
    """
    with reading(path, "stored expression"):
        meta = pq.read_schema(path).metadata or {}
        return list(json.loads(meta[GENES_KEY]))


def read_part(path: Path) -> tuple[np.ndarray, sp.csr_matrix, list[str]]:
    """Read one part.

    Parameters
    ----------
    path : Path
        The part's file.

    Returns
    -------
    tuple
        (cell ids, float32 log-normalised rows over the part's genes, the part's genes).

    Raises
    ------
    AtlasDamagedError
        The file is missing or unreadable.
    """
    genes = part_genes(path)
    with reading(path, "stored expression"):
        table = pq.read_table(path)
        gene = table.column("gene").combine_chunks()
        value = table.column("value").combine_chunks()
        indptr = gene.offsets.to_numpy().astype(np.int64)
        indices = gene.flatten().to_numpy().astype(np.int32)
        data = value.flatten().to_numpy().astype(np.float32)
        X = sp.csr_matrix((data, indices, indptr), shape=(len(table), len(genes)))
    return table.column("cell_id").to_numpy(), X, genes


@dataclass
class StoredExpression:
    """The stored expression of one atlas version: every data set's parts, in order.

    Parameters
    ----------
    version : Path
        The version folder.
    datasets : list of str or None
        Only these data sets; None: every one.
    """

    version: Path
    datasets: list[str] | None = None
    files: list[Path] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = parts(self.version, self.datasets)
        self.counts = []
        for path in self.files:
            with reading(path, "stored expression"):
                self.counts.append(pq.read_metadata(path).num_rows)

    @property
    def n_cells(self) -> int:
        """Cells over every part."""
        return int(sum(self.counts))

    def genes(self) -> list[str]:
        """Every gene any data set was stored with (sorted).

        Returns
        -------
        list of str
            The union of the parts' genes.

        Raises
        ------
        AtlasDamagedError
            A part is missing or unreadable.
        """
        found: set[str] = set()
        for path in self.files:
            found.update(part_genes(path))
        return sorted(found)

    def ids(self) -> np.ndarray:
        """Every part's cell ids, in order.

        Returns
        -------
        numpy.ndarray
            int64 atlas cell ids, one per stored cell (empty without parts).

        Raises
        ------
        AtlasDamagedError
            A part is missing or unreadable.
        """
        if not self.files:
            return np.zeros(0, dtype=np.int64)
        found = []
        for path in self.files:
            with reading(path, "stored expression"):
                found.append(pq.read_table(path, columns=["cell_id"]).column("cell_id").to_numpy())
        return np.concatenate(found)

    def blocks(self, target: list[str]) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
        """(cell ids, linear values over ``target``) of every part in order (see :func:`linear_part`).

        Parameters
        ----------
        target : list of str
            The output columns; genes a part lacks are 0.

        Yields
        ------
        tuple of (numpy.ndarray, scipy.sparse.csr_matrix)
            One part's cell ids and its float32 counts per 10,000 over ``target``.

        Raises
        ------
        AtlasDamagedError
            A part is missing or unreadable.
        """
        for path in self.files:
            yield linear_part(path, target)


def linear_part(path: Path, target: list[str]) -> tuple[np.ndarray, sp.csr_matrix]:
    """One part's linear values (counts per 10,000) over ``target`` genes; genes it lacks are 0.

    Parameters
    ----------
    path : Path
        The part's file.
    target : list of str
        The output columns.

    Returns
    -------
    tuple
        (cell ids, float32 CSR rows over ``target``).
    """
    column = {g: i for i, g in enumerate(target)}
    ids, X, genes = read_part(path)
    pairs = np.array([(i, column[g]) for i, g in enumerate(genes) if g in column], dtype=np.int64).reshape(-1, 2)
    pick = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
                         shape=(len(genes), len(target)))
    linear = X.copy()
    linear.data = unlog(linear.data, "ln")
    return ids, sp.csr_matrix(linear @ pick, dtype=np.float32)


class StoredMatrix:
    """Row slices of the stored expression over some genes, as a matrix a chunked reader can slice.

    Values are linear (counts per 10,000 of the whole cell), so the reader re-normalises them
    over the chosen genes (an :class:`~screader_db.inputs.ExpressionSource` of scale ``linear``).
    Slices should follow the parts (the chunk size the atlas was written with); each part is read
    at most once per pass.

    Parameters
    ----------
    stored : StoredExpression
        The parts.
    genes : list of str
        The columns.
    """

    def __init__(self, stored: StoredExpression, genes: list[str]) -> None:
        self.stored = stored
        self.genes = list(genes)
        self.shape = (stored.n_cells, len(self.genes))
        self.starts = np.concatenate([[0], np.cumsum(stored.counts)]).astype(np.int64)
        self._cache: tuple[int, sp.csr_matrix] | None = None

    def _part(self, number: int) -> sp.csr_matrix:
        if self._cache is None or self._cache[0] != number:
            self._cache = (number, linear_part(self.stored.files[number], self.genes)[1])
        return self._cache[1]

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        start, stop, _ = rows.indices(self.shape[0])
        pieces = []
        first = int(np.searchsorted(self.starts, start, side="right") - 1)
        for number in range(max(first, 0), len(self.stored.files)):
            low, high = int(self.starts[number]), int(self.starts[number + 1])
            if low >= stop:
                break
            if high <= start:
                continue
            block = self._part(number)
            pieces.append(block[max(start, low) - low : min(stop, high) - low])
        if not pieces:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        return sp.csr_matrix(sp.vstack(pieces), dtype=np.float32)
