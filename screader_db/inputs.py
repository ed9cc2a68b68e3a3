"""Reading and checking expression data: h5ad files, layers, value checks and gene mapping.

Everything here turns a user's AnnData into one well-defined thing: log1p(counts per 10,000)
over human gene symbols, or raises an :class:`InputDataError` that says what was wrong and how
to fix it. Matrices are read in row chunks, so a file opened in backed mode is never loaded
whole.
"""

from __future__ import annotations

import functools
import shlex
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.errors import InputDataError, ScreaderWarning
from screader_db.genes import GeneMapping, GeneResolver, default_resolver, looks_like_ensembl
from screader_db.matrix_rows import check_structure, read_rows

TARGET_SUM = 1e4
CHUNK = 10_000
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_h5ad(path: str | Path, *, backed: bool = False) -> Any:
    """Open an ``.h5ad`` file with a clear error for each way it can be wrong.

    Parameters
    ----------
    path : str or Path
        The file.
    backed : bool
        Open it read-only in backed mode (matrices stay on disk).

    Returns
    -------
    AnnData

    Raises
    ------
    InputDataError
        The file is missing, a folder, empty, not HDF5 or not readable as AnnData.
    """
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
    """The chosen matrix of an AnnData (in memory or backed), read in raw row chunks.

    Every block's structure is checked as it is read (:mod:`screader_db.matrix_rows`); values are
    checked and normalised by :class:`screader_db.expression_stream.ExpressionStream`.

    Parameters
    ----------
    matrix : array, sparse matrix or backed dataset
        The values, cells × genes.
    names : list of str
        The gene names.
    obs : pandas.DataFrame
        The cells' metadata (of the kept rows).
    keep : numpy.ndarray or None
        Sorted row positions the source is restricted to; None keeps every row.
    where, origin : str
        The matrix's name (``X``, ``layers/NAME``, ``raw/X``) and its file, when known, for messages.
    others : tuple of str
        The file's other matrices as options that would read them (``--use-raw``, ``--layer counts``),
        offered when this one's values cannot be used.
    held : bool
        Whether the matrix, stored on disk dense or by column, was read into memory (:func:`held_in_memory`).
    gene_key : str or None
        The var column the names come from; None for the var index.
    columns_hint : str
        When the names map poorly: the var columns whose names would map, for messages; else empty.
    first : scipy.sparse.csr_matrix or None
        The first rows once read (:meth:`head`); None until then.
    """

    matrix: Any
    names: list[str]
    obs: pd.DataFrame
    keep: np.ndarray | None = None
    where: str = "X"
    origin: str | None = None
    others: tuple[str, ...] = ()
    held: bool = False
    gene_key: str | None = None
    columns_hint: str = ""
    checked: bool = field(default=False, repr=False)
    first: sp.csr_matrix | None = field(default=None, repr=False, compare=False)

    @property
    def n_cells(self) -> int:
        """Number of (kept) cells."""
        return int(self.matrix.shape[0] if self.keep is None else len(self.keep))

    @property
    def n_genes(self) -> int:
        """Number of genes (columns)."""
        return int(self.matrix.shape[1])

    def subset(self, keep: np.ndarray) -> ExpressionSource:
        """The same source restricted to the rows ``keep`` (sorted positions in this source).

        Parameters
        ----------
        keep : numpy.ndarray
            Sorted int row positions in this source (after any earlier restriction).

        Returns
        -------
        ExpressionSource
            Sharing the matrix; ``obs`` and ``keep`` restricted.
        """
        rows = keep if self.keep is None else self.keep[keep]
        return replace(self, obs=self.obs.iloc[keep], keep=np.asarray(rows), first=None)

    def head(self) -> sp.csr_matrix:
        """The first :data:`SCALE_SAMPLE` rows (:meth:`rows`), read once: the checks of a scaled ``.X``
        (:func:`open_expression`) and of the input scale (:func:`input_scale_of`) both read them.

        Returns
        -------
        scipy.sparse.csr_matrix
            As :meth:`rows` returns them.

        Raises
        ------
        InputDataError
            As :meth:`rows`.
        """
        if self.first is None:
            self.first = self.rows(0, min(self.n_cells, SCALE_SAMPLE))
        return self.first

    def _block(self, start: int, stop: int) -> sp.csr_matrix:
        if not self.checked:
            check_structure(self.matrix, where=self.where, origin=self.origin)
            self.checked = True
        return read_rows(self.matrix, start, stop, where=self.where, origin=self.origin)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Raw rows ``start:stop`` (positions in this source) as CSR.

        The matrix's structure is checked on the first read (:func:`screader_db.matrix_rows.check_structure`).

        Parameters
        ----------
        start, stop : int
            The rows, ``stop`` exclusive, counted among the kept rows; clipped to them, as a slice is.

        Returns
        -------
        scipy.sparse.csr_matrix
            float32, (stop - start) × :attr:`n_genes` after clipping, values as stored (not checked or normalised).

        Raises
        ------
        InputDataError
            The matrix's structure is malformed or its values are not numbers.
        """
        start, stop = min(max(start, 0), self.n_cells), min(max(stop, 0), self.n_cells)  # as a slice would
        if self.keep is None:
            return self._block(start, max(start, stop))
        wanted = self.keep[start:stop]
        if not len(wanted):
            return sp.csr_matrix((0, self.n_genes), dtype=np.float32)
        low, high = int(wanted[0]), int(wanted[-1]) + 1
        return sp.csr_matrix(self._block(low, high)[wanted - low])

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(start, raw rows) for every ``size`` cells, in row order (unchecked values, input scale).

        Parameters
        ----------
        size : int
            Rows per chunk (default :data:`CHUNK`).

        Yields
        ------
        tuple of (int, scipy.sparse.csr_matrix)
            The chunk's first row and its rows, as :meth:`rows` reads them.

        Raises
        ------
        InputDataError
            The matrix's structure is malformed or its values are not numbers.
        """
        for start in range(0, self.n_cells, size):
            yield start, self.rows(start, min(start + size, self.n_cells))


# When the var index maps fewer than this share of its names to human symbols, a var column that maps
# at least this share, and more than twice as many names as the index, names the genes
# instead (files whose index holds internal ids or row numbers and a column the symbols).
NAMES_SHARE = 0.5


def _text_columns(var: pd.DataFrame) -> Iterator[tuple[str, list[str]]]:
    """(name, values as text) for each var column of text without missing values."""
    for column in var.columns:
        values = var[column]
        text = pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)
        if not (text or isinstance(values.dtype, pd.CategoricalDtype)) or values.isna().any():
            continue
        yield str(column), [str(v) for v in values]


def gene_column(var: pd.DataFrame, species: str = "auto") -> tuple[str, list[str]] | None:
    """The var column to read gene names from when the var index does not name the genes.

    Parameters
    ----------
    var : pandas.DataFrame
        The matrix's gene metadata; its index is the var names.
    species : str
        ``human``, ``mouse`` or ``auto``, as the names will be mapped.

    Returns
    -------
    tuple of (str, list of str) or None
        The column and its names, when the index maps fewer than :data:`NAMES_SHARE` of its names
        to human symbols and a column maps at least that share and more than twice as many; None
        otherwise (the index names the genes).
    """
    resolver = default_resolver()
    index = resolver.map([str(v) for v in var.index], species=species).n_mapped
    if index >= NAMES_SHARE * len(var.index):
        return None
    best: tuple[str, list[str]] | None = None
    most = max(2 * index, int(NAMES_SHARE * len(var.index)) - 1)
    for column, names in _text_columns(var):
        mapped = resolver.map(names, species=species).n_mapped
        if mapped > most:
            best, most = (column, names), mapped
    return best


def _columns_hint(var: pd.DataFrame, species: str) -> str:
    """The var columns whose names map to human symbols, for a message about unmapped names."""
    resolver = default_resolver()
    found = []
    for column, names in _text_columns(var):
        mapped = resolver.map(names, species=species).n_mapped
        if mapped:
            found.append(f"{column!r} ({mapped:,} map)")
    return f" Var columns whose names map: {', '.join(found)}." if found else ""


def open_expression(adata: Any, *, layer: str | None = None, use_raw: bool = False,
                    gene_key: str | None = None, species: str = "auto") -> ExpressionSource:
    """Choose ``.X``, a layer or ``.raw`` and the gene names; checks the shape.

    Without ``gene_key``, the names are the var index, or, where the index does not name the genes
    and a var column does (:func:`gene_column`), that column, with a warning.

    Parameters
    ----------
    adata : AnnData
        In memory or backed; not changed.
    layer : str or None
        Read this layer instead of ``.X``.
    use_raw : bool
        Read ``.raw.X`` (and ``.raw.var``) instead of ``.X``. Without it or ``layer``, when ``.X``'s
        first rows hold negative values (scaled or centred data, which would be refused), ``.raw`` is
        read all the same, with a warning, when its first rows hold none; else a layer named for
        counts (``counts``, ``raw_counts``) that holds none.
    gene_key : str or None
        A var column of gene names to use instead of the var index.
    species : str
        ``human``, ``mouse`` or ``auto``: how names are read when a column is chosen for them.

    Returns
    -------
    ExpressionSource

    Raises
    ------
    InputDataError
        The matrix is missing or empty, the layer or column is unknown, or no gene name maps to a human
        symbol (with the var columns whose names would).
    """
    if use_raw and layer:
        raise InputDataError("choose either a layer or .raw, not both")
    source = _chosen_matrix(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species)
    if use_raw or layer or not _negative(_first_rows(source)):
        return source
    for name, option, how in _in_place_of_scaled(adata):
        try:
            other = _chosen_matrix(adata, gene_key=gene_key, species=species, **how)
        except InputDataError:
            continue
        first = _first_rows(other)
        if first is not None and not _negative(first):
            warnings.warn(f"the data's .X holds negative values, as scaled or centred data does; its {name} "
                          f"({other.n_genes:,} genes) was read instead. Pass {option} to say so, or --layer to read "
                          "another matrix", ScreaderWarning, stacklevel=3)
            return other
    return source


def _chosen_matrix(adata: Any, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                   species: str = "auto") -> ExpressionSource:
    """:func:`open_expression` of the matrix asked for, as it is."""
    if use_raw:
        if adata.raw is None:
            raise InputDataError("the file has no .raw; leave out --use-raw to read .X")
        matrix, var, where = adata.raw.X, adata.raw.var, "raw/X"
    elif layer:
        if layer not in adata.layers:
            known = ", ".join(adata.layers.keys()) or "none"
            message = f"layer {layer!r} is not in the file; layers present: {known}"
            raise InputDataError(message)
        matrix, var, where = adata.layers[layer], adata.var, f"layers/{layer}"
    else:
        matrix, var, where = adata.X, adata.var, "X"
    if matrix is None:
        raise InputDataError("the file has no expression matrix in .X; pass --layer or --use-raw")
    if matrix.shape[0] == 0:
        raise InputDataError("the data has zero cells")
    if matrix.shape[1] == 0:
        raise InputDataError("the data has zero genes")
    names, columns = [str(v) for v in var.index], ""
    if gene_key is not None:
        if gene_key not in var.columns:
            known = ", ".join(map(str, var.columns)) or "none"
            message = f"--gene-key {gene_key!r} is not a var column; columns present: {known}"
            raise InputDataError(message)
        names = [str(v) for v in var[gene_key].astype(str)]
    else:
        column = gene_column(var, species)
        mapped = default_resolver().map(names, species=species).n_mapped
        columns = _columns_hint(var, species) if column is None and mapped < NAMES_SHARE * len(names) else ""
        if not mapped and column is None:
            raise InputDataError(_unmapped_message(names, columns))
        if column is not None:
            gene_key, names = column
            warnings.warn(f"the var names ({', '.join(map(str, var.index[:3]))}, ...) do not name genes; gene names "
                          f"were read from var column {gene_key!r} ({', '.join(names[:3])}, ...); pass --gene-key to "
                          "read another column", ScreaderWarning, stacklevel=4)
    duplicated = _duplicates(names)
    if duplicated:
        warnings.warn(f"{len(duplicated):,} gene names occur more than once ({', '.join(duplicated[:5])}, ...): the "
                      "values of each name are summed, as those of genes that map to one symbol are", ScreaderWarning,
                      stacklevel=4)
    origin = getattr(adata, "filename", None)
    return ExpressionSource(matrix=matrix, names=names, obs=adata.obs, where=where, gene_key=gene_key, columns_hint=columns,
                            origin=None if origin is None else str(origin), others=_other_matrices(adata, where))


# A matrix stored on disk in a form that is not read by rows cheaply (dense and compressed, as many
# older .h5ad files hold X, or by column) is read into memory as CSR once, when its estimated CSR
# size is at most this: a query reads its matrix several times (centring, embedding, the novelty
# check, the second opinion, the marker evidence). Kang's 13,576 x 14,053 dense gzip X (9.5 million
# values, 76 MB as CSR): a query against pbmc3k took 26.6 s read backed, 15.7 s held (the one read included).
HOLD_BYTES = 2 * 1024**3
HOLD_SAMPLE = 500


def held_in_memory(source: ExpressionSource) -> ExpressionSource:
    """``source`` with its matrix read once into memory as CSR when it lies on disk dense or by
    column and would take at most :data:`HOLD_BYTES` so (estimated from its first
    :data:`HOLD_SAMPLE` rows); ``source`` itself otherwise (in memory already, stored by row, or too large).

    Parameters
    ----------
    source : ExpressionSource
        The chosen matrix of a query, every row kept.

    Returns
    -------
    ExpressionSource
        The same cells, genes and names; ``held`` says whether the matrix was read into memory.

    Raises
    ------
    InputDataError
        The matrix's structure is malformed or its values are not numbers.
    """
    matrix = source.matrix
    in_memory = sp.issparse(matrix) or isinstance(matrix, np.ndarray)
    by_row = getattr(matrix, "format", None) == "csr"
    if in_memory or by_row or source.keep is not None or not source.n_cells:
        return source
    first = source.rows(0, min(source.n_cells, HOLD_SAMPLE))
    estimate = first.nnz / first.shape[0] * source.n_cells * (np.dtype(np.float32).itemsize + np.dtype(np.int32).itemsize)
    if estimate > HOLD_BYTES:
        return source
    blocks = [source.rows(start, min(start + CHUNK, source.n_cells)) for start in range(0, source.n_cells, CHUNK)]
    return replace(source, matrix=sp.csr_matrix(sp.vstack(blocks, format="csr")), held=True, checked=False)


def _in_place_of_scaled(adata: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """What may be read in place of a scaled ``.X``, in order: ``.raw``, then the layers whose name says
    they hold counts (``counts``, ``raw_counts``); each as (its name, the option that reads it, the
    arguments of :func:`_chosen_matrix`)."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    if getattr(adata, "raw", None) is not None:
        found.append((".raw", "--use-raw", {"use_raw": True}))
    found += [(f"layer {str(name)!r}", f"--layer {shlex.quote(str(name))}", {"layer": str(name)})
              for name in adata.layers if "count" in str(name).lower()]
    return found


def _first_rows(source: ExpressionSource) -> sp.csr_matrix | None:
    """The first :data:`SCALE_SAMPLE` rows of ``source``; None when they cannot be read (a malformed
    matrix, refused later with the file named)."""
    try:
        return source.head()
    except InputDataError:
        return None


def _negative(first: sp.csr_matrix | None) -> bool:
    """Whether rows read by :func:`_first_rows` hold negative values (scaled or centred data)."""
    return first is not None and bool(first.nnz) and bool(np.nanmin(first.data) < 0)


def _other_matrices(adata: Any, where: str) -> tuple[str, ...]:
    """The options that would read each matrix of ``adata`` other than ``where``: ``--layer NAME``,
    ``--use-raw`` and, when a layer or .raw was chosen, ``.X`` (leaving both out)."""
    found = [f"--layer {shlex.quote(str(name))}" for name in adata.layers if f"layers/{name}" != where]
    if adata.raw is not None and where != "raw/X":
        found.append("--use-raw")
    if where != "X" and adata.X is not None:
        found.append("neither --layer nor --use-raw (.X)")
    return tuple(found)


def check_values(X: sp.csr_matrix, others: tuple[str, ...] = ()) -> None:
    """Refuse a matrix with no cells or genes, NaN or infinite values, or negative (scaled) values.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        Raw values.
    others : tuple of str
        The options that would read the file's other matrices (:attr:`ExpressionSource.others`),
        named in the message about scaled values; empty for the generic remedy.

    Raises
    ------
    InputDataError
        Says which of these was found and how to fix it.
    """
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
            f"the matrix has negative values (minimum {data.min():.3g}): it looks scaled or z-scored (centred). "
            + (f"The file holds other matrices: read one of them with {' or '.join(others)}"
               if others else "Pass raw counts or log-normalised data instead (--layer counts, or --use-raw)")
        )
        raise InputDataError(message)


# How a matrix's values relate to counts. ``counts``: integers. ``linear``: counts times a per-cell
# factor (CPM, CP10k, TPM). ``ln``/``log2``/``log10``: log(1 + linear or counts) in that base.
SCALES = ("counts", "ln", "log2", "log10", "linear")
SCALE_ALIASES = {"lognorm": "ln"}
SCALE_SAMPLE = 2_000
LOG_BASE = {"linear": 0.0, "ln": 1.0, "log2": float(np.log(2.0)), "log10": float(np.log(10.0))}
INVERSE_NAME = {"linear": "as they are", "ln": "after expm1", "log2": "after 2**x - 1", "log10": "after 10**x - 1"}
MIN_NONZERO = 5          # cells with fewer nonzero values say nothing about integer ratios
REL_TOL = 1e-3           # a ratio within 0.1% of an integer counts as an integer ...
FLOAT_SLACK = 2.0**-21   # ... plus 4 float32 ulps of x, carried through the inverse
MAX_TOL = 0.1            # ratios so large that chance alone lands within the tolerance > 20% are not scored
MIN_SCORED = 50          # fewer scored values leave the integer-ratio test undecided
WIN_SHARE = 0.9          # the right inverse gives ~1, wrong ones near chance (a few %)
WIN_MARGIN = 0.3
CONSTANT_CV = 1e-3       # library sizes this even were normalised to one total (float32 sums: ~1e-6)
MIN_LIBRARY_CELLS = 10
HUGE_TOTAL = 1e8         # more than any normalisation (CP10k, CPM, TPM) or sequencing depth puts in one cell ...
HUGE_SHARE = 0.1         # ... so an inverse giving it to this share of cells is not the values' own
MAX_VALUES = 500_000     # the tests read the first rows holding this many values (at least MIN_ROWS rows): ~0.3 s
MAX_DECIMALS = 3        # values rounded to at most this many decimal places are read as known to that step
MIN_ROWS = 100
# Log values with neither integer ratios nor equal totals (logs of RPKM, of imputed or ambient-corrected
# values, logs rounded to one decimal) are read in the log base under which the cells' totals are most
# even, when that reading looks like expression: totals that vary as library sizes do (CV at most
# GUESS_CV; 0.01-0.12 under the right base of such values, 7 or more for square roots of counts) and
# cells whose largest value is at least GUESS_RANGE times their median one (57 or more under the right
# base; values drawn uniformly: 6). log10 is taken only when its totals are clearly the most even
# (CV below GUESS_LOG10 of the next base's): reading ln or log2 values as log10 costs far more labels
# than the reverse.
GUESS_CV = 1.0
GUESS_RANGE = 20.0
GUESS_LOG10 = 0.8


@dataclass(frozen=True)
class ScaleEvidence:
    """The scale of an expression matrix and why.

    Parameters
    ----------
    scale : str
        One of :data:`SCALES`.
    evidence : str
        One line a person can check.
    integer_share : dict of str to float
        Per candidate inverse, the share of scored values that are integer multiples of their
        cell's smallest nonzero value (NaN where the test could not be run).
    library_cv : dict of str to float
        Per candidate inverse, the coefficient of variation of the cells' totals.
    guessed : bool
        The scale is the likeliest log base rather than one the data shows outright
        (:func:`detect_scale`); a warning says so when the scale is read.
    """

    scale: str
    evidence: str
    integer_share: dict[str, float] = field(default_factory=dict)
    library_cv: dict[str, float] = field(default_factory=dict)
    guessed: bool = False


def scale_name(name: str) -> str:
    """The canonical name of an input scale (``lognorm`` is ``ln``).

    Parameters
    ----------
    name : str
        A scale name or alias.

    Returns
    -------
    str
        One of :data:`SCALES`.

    Raises
    ------
    InputDataError
        The name is not a known scale.
    """
    canonical = SCALE_ALIASES.get(name, name)
    if canonical not in SCALES:
        message = f"unknown input scale {name!r}; choose one of auto, {', '.join(SCALES)} (lognorm = ln)"
        raise InputDataError(message)
    return canonical


def unlog(values: np.ndarray, scale: str) -> np.ndarray:
    """The linear values (counts times a per-cell factor) behind ``values`` on ``scale``.

    Parameters
    ----------
    values : numpy.ndarray
        Values on ``scale``.
    scale : str
        One of :data:`SCALES` (or an alias).

    Returns
    -------
    numpy.ndarray
        ``values`` itself for ``counts`` and ``linear``, else its inverse log, in the same dtype.
    """
    base = LOG_BASE.get(scale_name(scale), 0.0)
    if base == 0.0:
        return values
    with np.errstate(over="ignore"):
        return np.expm1(values * base) if base != 1.0 else np.expm1(values)


def _float_error(x: np.ndarray, value: np.ndarray, scale: str, step: float = 0.0) -> np.ndarray | float:
    """Relative error of ``value`` = f(x) when x carries float32 rounding, or rounding to a decimal
    ``step`` where that is larger: e·|f'(x)/f(x)| for an absolute error e of x.

    After exp this grows with x (e·ln(base)·(1 + f)/f), which is why the slack is not a constant.
    """
    base = LOG_BASE[scale]
    error = np.maximum(FLOAT_SLACK * np.abs(x), step / 2)
    if base == 0.0:
        return error / np.abs(x)
    return base * error * (1.0 + value) / value


def decimal_step(data: np.ndarray) -> float:
    """The decimal the values were rounded to (0.1, 0.01, ...; :data:`MAX_DECIMALS` places at most),
    0 when they were not: exported tables often keep two or three places.

    Parameters
    ----------
    data : numpy.ndarray
        Nonzero values.

    Returns
    -------
    float
        The step, or 0.0.
    """
    values = np.asarray(data, dtype=np.float64)[:MAX_VALUES]
    for places in range(1, MAX_DECIMALS + 1):
        scaled = values * 10.0**places
        if np.all(np.abs(scaled - np.round(scaled)) <= 4 * FLOAT_SLACK * np.maximum(np.abs(scaled), 1.0)):
            return 10.0**-places
    return 0.0


def _integer_share(X: sp.csr_matrix, scale: str, step: float = 0.0) -> tuple[float, int]:
    """Share of the scored values whose ratio to their cell's smallest value is an integer under ``scale``
    (values known to ``step`` when rounded to a decimal)."""
    nnz = np.diff(X.indptr)
    rows = np.flatnonzero(nnz >= MIN_NONZERO)
    if not len(rows):
        return float("nan"), 0
    sub = X[rows]
    counts = np.diff(sub.indptr)
    x = sub.data.astype(np.float64)
    x_min = np.repeat(np.minimum.reduceat(x, sub.indptr[:-1]), counts)
    above = x > x_min
    x, x_min = x[above], x_min[above]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        value, unit = unlog(x, scale), unlog(x_min, scale)
        ratio = value / unit
        tol = ratio * (REL_TOL + _float_error(x, value, scale, step) + _float_error(x_min, unit, scale, step))
        scored = np.isfinite(ratio) & np.isfinite(tol) & (tol <= MAX_TOL)
    if scored.sum() < MIN_SCORED:
        return float("nan"), int(scored.sum())
    hits = np.abs(ratio[scored] - np.round(ratio[scored])) <= tol[scored]
    return float(hits.mean()), int(scored.sum())


def _totals(X: sp.csr_matrix, scale: str) -> np.ndarray:
    """The cells' totals under ``scale``'s inverse (inf where they overflow), cells with any value only."""
    linear = X.copy()
    linear.data = unlog(linear.data.astype(np.float64), scale)
    with np.errstate(over="ignore", invalid="ignore"):
        totals = np.asarray(linear.sum(axis=1)).ravel()
    return totals[totals > 0]


def _library_cv(totals: np.ndarray) -> float:
    """Coefficient of variation of the cells' totals (0 for a normalised matrix; NaN when too few or not finite)."""
    if len(totals) < MIN_LIBRARY_CELLS or not np.all(np.isfinite(totals)):
        return float("nan")
    return float(np.std(totals) / np.mean(totals))


def _huge_share(totals: np.ndarray) -> float:
    """Share of the cells whose total exceeds :data:`HUGE_TOTAL` (NaN when too few cells)."""
    if len(totals) < MIN_LIBRARY_CELLS:
        return float("nan")
    return float(np.mean(~(totals <= HUGE_TOTAL)))


def _fmt(value: float, pattern: str) -> str:
    return "n/a" if np.isnan(value) else format(value, pattern)


def _undetected(top: float, shares: dict[str, float], cvs: dict[str, float]) -> InputDataError:
    found = "; ".join(f"{s}: {_fmt(shares[s], '.1%')} integer ratios, library CV {_fmt(cvs[s], '.3g')}" for s in shares)
    message = (
        f"the matrix has non-integer values up to {top:.3g}: neither raw counts nor log-normalised data "
        f"of a scale that could be recognised. Under each inverse, the share of values that are integer multiples "
        f"of their cell's smallest value (about 100% for the right one) and the spread of library sizes (0 when "
        f"normalised): {found}. Pass --input-scale counts|ln|log2|log10|linear to say what it is, "
        "or pass raw counts (--layer counts)"
    )
    return InputDataError(message)


def _by_integer_ratios(shares: dict[str, float], scored: dict[str, int], cvs: dict[str, float]) -> ScaleEvidence | None:
    """The one inverse under which values are integer multiples per cell; None when none wins clearly."""
    ranked = sorted(shares, key=lambda s: -np.nan_to_num(shares[s], nan=-1.0))
    best, runner = ranked[0], ranked[1]
    if not shares[best] >= WIN_SHARE or shares[best] - np.nan_to_num(shares[runner]) < WIN_MARGIN:
        return None
    others = ", ".join(f"{s} {_fmt(shares[s], '.1%')}" for s in ranked[1:])
    text = (f"{best}: {shares[best]:.1%} of {scored[best]:,} values are integer multiples of their cell's "
            f"smallest value {INVERSE_NAME[best]} (other scales: {others})")
    return ScaleEvidence(scale=best, evidence=text, integer_share=shares, library_cv=cvs)


def _by_library(shares: dict[str, float], cvs: dict[str, float]) -> ScaleEvidence | None:
    """The one inverse under which every cell has the same total; None when not exactly one."""
    constant = [s for s in cvs if cvs[s] < CONSTANT_CV]
    if len(constant) != 1:
        return None
    chosen = constant[0]
    spread = ", ".join(f"{s} {_fmt(cvs[s], '.3g')}" for s in cvs if s != chosen)
    best = max(shares, key=lambda s: np.nan_to_num(shares[s], nan=-1.0))
    text = (f"{chosen}: every cell's values {INVERSE_NAME[chosen]} sum to the same total (library CV "
            f"{cvs[chosen]:.2g}; other scales: {spread}); integer ratios do not decide (best share "
            f"{_fmt(shares[best], '.1%')} under {best})")
    return ScaleEvidence(scale=chosen, evidence=text, integer_share=shares, library_cv=cvs)


def _by_totals(shares: dict[str, float], cvs: dict[str, float], huge: dict[str, float]) -> ScaleEvidence | None:
    """Linear when every log inverse would give many cells more than any cell holds; None otherwise.

    Counts with fractional parts (expected counts, ambient-corrected counts), RPKM, or TPM over some
    of the genes have neither integer ratios nor equal totals; their values are far too large to
    be logarithms of expression.
    """
    logs = [s for s in huge if s != "linear"]
    if not all(huge[s] > HUGE_SHARE for s in logs) or not huge["linear"] <= HUGE_SHARE:
        return None
    beyond = ", ".join(f"{s} {huge[s]:.0%}" for s in logs)
    text = (f"linear: values without integer ratios or equal totals (library CV {_fmt(cvs['linear'], '.3g')}), too "
            f"large to be logarithms: under each log inverse this share of cells would hold more than {HUGE_TOTAL:.0e} "
            f"({beyond}); read as counts with fractional parts, RPKM or TPM of some genes, and normalised per cell")
    return ScaleEvidence(scale="linear", evidence=text, integer_share=shares, library_cv=cvs)


def _cell_range(X: sp.csr_matrix, scale: str) -> float:
    """Median over cells (of :data:`MIN_NONZERO` values or more) of their largest value under ``scale``'s
    inverse divided by their median one; NaN when too few cells have that many values."""
    nnz = np.diff(X.indptr)
    sub = X[np.flatnonzero(nnz >= MIN_NONZERO)]
    if sub.shape[0] < MIN_LIBRARY_CELLS:
        return float("nan")
    with np.errstate(over="ignore"):
        values = unlog(sub.data.astype(np.float64), scale)
    counts = np.diff(sub.indptr)
    rows = np.repeat(np.arange(sub.shape[0]), counts)
    ordered = values[np.lexsort((values, rows))]
    top = ordered[sub.indptr[1:] - 1]
    middle = ordered[sub.indptr[:-1] + (counts - 1) // 2]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return float(np.median(top / middle))


def _by_likeliest_log(X: sp.csr_matrix, shares: dict[str, float], cvs: dict[str, float],
                      huge: dict[str, float]) -> ScaleEvidence | None:
    """The log base under which the cells' totals are most even, when that reading looks like expression
    (see :data:`GUESS_CV`); None otherwise."""
    logs = sorted((s for s in LOG_BASE if s != "linear" and huge[s] <= HUGE_SHARE and np.isfinite(cvs[s])),
                  key=lambda s: cvs[s])
    if logs and logs[0] == "log10" and len(logs) > 1 and not cvs["log10"] < GUESS_LOG10 * cvs[logs[1]]:
        logs = logs[1:]
    if not logs or not cvs[logs[0]] <= GUESS_CV:
        return None
    chosen = logs[0]
    spread = _cell_range(X, chosen)
    if not spread >= GUESS_RANGE:
        return None
    others = ", ".join(f"{s} {_fmt(cvs[s], '.3g')}" for s in cvs if s != chosen)
    text = (f"{chosen} (likeliest): values with neither integer ratios nor equal totals (best integer share "
            f"{_fmt(max(np.nan_to_num(v, nan=0.0) for v in shares.values()), '.1%')}); {INVERSE_NAME[chosen]} the "
            f"cells' totals are the most even (library CV {cvs[chosen]:.3g}; other scales: {others}) and a cell's "
            f"largest value is typically {spread:,.0f} times its median one, as in expression data. Pass "
            "--input-scale to say what the values are if this is wrong")
    return ScaleEvidence(scale=chosen, evidence=text, integer_share=shares, library_cv=cvs, guessed=True)


def detect_scale(X: sp.csr_matrix) -> ScaleEvidence:
    """Tell counts, ln/log2/log10(1 + x) and linear normalised values apart from a sample of rows.

    Counts are integers. Normalised values are counts times a per-cell factor, so under the
    right inverse each cell's values are integer multiples of its smallest one; the wrong
    inverses give a share of integer ratios near chance. Values rounded to a few decimals (an
    exported table) are read as known to half that step (:func:`decimal_step`), which widens the
    tolerance of each ratio accordingly. Values with no integer structure
    (TPM, log-normalised ambient-corrected counts) are told by the inverse under which every
    cell has the same total; failing that, values that every log inverse would turn into more
    than :data:`HUGE_TOTAL` in over :data:`HUGE_SHARE` of the cells (fractional counts, RPKM,
    TPM of some genes) are linear. Log values with neither structure (logs of RPKM, of imputed
    or ambient-corrected values, logs rounded to one decimal) are read in the log base under which
    the cells' totals are most even, when that reading looks like expression (``guessed``; see
    :data:`GUESS_CV`): on three suite directions, log2(1 + RPKM) read as ln cost at most 0.022
    accuracy against its own base; a refusal costs every label. Anything else is refused.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        Checked values (see :func:`check_values`), rows are cells.

    Returns
    -------
    ScaleEvidence

    Raises
    ------
    InputDataError
        No scale fits clearly; the message gives the evidence.
    """
    data = X.data
    if data.size == 0 or np.all(data == np.round(data)):
        text = f"counts: all {data.size:,} nonzero values of {X.shape[0]:,} cells are integers"
        return ScaleEvidence(scale="counts", evidence=text)
    stop = max(int(np.searchsorted(X.indptr, MAX_VALUES, side="right")) - 1, MIN_ROWS)
    head = X[:stop]
    step = decimal_step(head.data)
    found = {s: _integer_share(head, s, step) for s in LOG_BASE}
    shares = {s: share for s, (share, _) in found.items()}
    scored = {s: n for s, (_, n) in found.items()}
    totals = {s: _totals(head, s) for s in LOG_BASE}
    cvs = {s: _library_cv(t) for s, t in totals.items()}
    huge = {s: _huge_share(t) for s, t in totals.items()}
    found_scale = (_by_integer_ratios(shares, scored, cvs) or _by_library(shares, cvs) or _by_totals(shares, cvs, huge)
                   or _by_likeliest_log(head, shares, cvs, huge))
    if found_scale is None:
        raise _undetected(float(data.max()), shares, cvs)
    if step:
        found_scale = replace(found_scale, evidence=f"{found_scale.evidence}; every value is rounded to {step:g}, so each "
                                                    f"is read as known to within {step / 2:g}")
    return found_scale


def input_scale_of(source: ExpressionSource, override: str | None = None) -> ScaleEvidence:
    """The one input-scale rule: check the first :data:`SCALE_SAMPLE` rows of ``source`` and tell their scale.

    Parameters
    ----------
    source : ExpressionSource
        The matrix.
    override : str or None
        A scale given by the user; ``auto`` or None detects it (:func:`detect_scale`).

    Returns
    -------
    ScaleEvidence

    Raises
    ------
    InputDataError
        The first rows hold bad values, the override is unknown, or no scale fits.
    """
    wanted = None if override in (None, "auto") else scale_name(str(override))
    sample = source.head()
    check_values(sample, source.others)
    if wanted is None:
        found = detect_scale(sample)
        if found.guessed:
            warnings.warn(f"the input scale was guessed, not shown by the data: {found.evidence}", ScreaderWarning,
                          stacklevel=2)
        return found
    return ScaleEvidence(scale=wanted, evidence=f"{wanted}: given as --input-scale {override}")


def rows_in_block(rows: np.ndarray, start: int, size: int) -> np.ndarray:
    """The sorted global ``rows`` that fall in the block starting at ``start``, as block-local rows.

    Parameters
    ----------
    rows : numpy.ndarray
        Sorted global row positions.
    start, size : int
        The block's first row and its number of rows.

    Returns
    -------
    numpy.ndarray
        Positions within the block.
    """
    return rows[(rows >= start) & (rows < start + size)] - start


def sample_rows(n_cells: int, sample_cells: int, *, seed: int = 0) -> np.ndarray:
    """A seeded draw of at most ``sample_cells`` of ``n_cells`` row positions, sorted.

    Parameters
    ----------
    n_cells : int
        Rows to draw from.
    sample_cells : int
        Most rows drawn.
    seed : int
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        Sorted int64 positions (every row when ``n_cells <= sample_cells``).
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_cells, size=min(n_cells, sample_cells), replace=False))


def sample_chunks(chunks: Callable[[], Iterator[tuple[int, sp.csr_matrix]]], n_cells: int, *, sample_cells: int,
                  seed: int = 0) -> sp.csr_matrix:
    """A seeded sample of at most ``sample_cells`` cells (in row order) of a batch read in chunks.

    Parameters
    ----------
    chunks : callable
        Returns a fresh iterator of (start, block), such as :meth:`ExpressionStream.chunks`.
    n_cells : int
        Cells in the batch.
    sample_cells : int
        Most cells to sample.
    seed : int
        Seed of the draw.

    Returns
    -------
    scipy.sparse.csr_matrix
        The sampled rows.
    """
    rows = sample_rows(n_cells, sample_cells, seed=seed)
    picked = []
    for start, block in chunks():
        local = rows_in_block(rows, start, block.shape[0])
        if len(local):
            picked.append(block[local])
    return sp.csr_matrix(sp.vstack(picked))


@dataclass
class GenePlan:
    """How input genes become target columns.

    Parameters
    ----------
    genes : list of str
        The target genes (columns).
    assign : scipy.sparse.csr_matrix
        Input genes × target genes, ones where an input gene is summed into a target gene.
    matched : int
        Target genes at least one input gene maps to.
    """

    genes: list[str]
    assign: sp.csr_matrix
    matched: int

    @functools.cached_property
    def inputs(self) -> np.ndarray:
        """Bool mask of the input genes that map to some target gene."""
        return np.asarray(self.assign.getnnz(axis=1) > 0)

    @functools.cached_property
    def assign_columns(self) -> sp.csc_matrix:
        """``assign`` in CSC form."""
        return sp.csc_matrix(self.assign)

    @functools.cached_property
    def selection(self) -> tuple[np.ndarray, np.ndarray] | None:
        """When no two input genes share a target: (input columns, their target columns); else None."""
        assign = self.assign.tocsc()
        if (np.diff(assign.indptr) > 1).any():
            return None
        coo = self.assign.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)

    @functools.cached_property
    def identity(self) -> bool:
        """Every input column is the target column of the same position."""
        found = self.selection
        n = len(self.genes)
        return (found is not None and self.assign.shape[0] == n and len(found[0]) == n
                and bool((found[0] == np.arange(n)).all() and (found[1] == np.arange(n)).all()))

    def apply(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """The target columns of ``X`` (input genes summed into their targets; a column selection when 1:1).

        Parameters
        ----------
        X : scipy.sparse.csr_matrix
            Cells × input genes.

        Returns
        -------
        scipy.sparse.csr_matrix
            Cells × target genes, sorted within each row (``X`` itself when its columns are the
            targets in order and already sorted).
        """
        if self.selection is None:
            # as a product of CSC forms turned back into rows: sorted within each row, with no sort
            return (sp.csc_matrix(X) @ self.assign_columns).tocsr()
        rows, cols = self.selection
        if self.identity:  # the input's columns are the targets, in order
            return X if X.has_sorted_indices else X.sorted_indices()
        order = np.argsort(cols, kind="stable")
        # The columns of the CSC form, taken in target order and turned back into rows, come out
        # sorted within each row: two linear passes, faster than a column index and a sort per row.
        picked = sp.csc_matrix(X)[:, rows[order]].tocsr()
        return sp.csr_matrix((picked.data, cols[order][picked.indices], picked.indptr),
                             shape=(X.shape[0], len(self.genes)))


def plan_genes(symbols: list[str], target: list[str] | None = None) -> GenePlan:
    """Map input columns (by human symbol, '' = unmapped) to ``target`` genes.

    Parameters
    ----------
    symbols : list of str
        Each input column's human symbol ('' when unmapped).
    target : list of str or None
        The target genes; None takes every mapped symbol, sorted.

    Returns
    -------
    GenePlan
    """
    genes = sorted({s for s in symbols if s}) if target is None else list(target)
    column = {g: i for i, g in enumerate(genes)}
    rows = [i for i, s in enumerate(symbols) if s in column]
    cols = [column[symbols[i]] for i in rows]
    assign = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(symbols), len(genes)))
    return GenePlan(genes=genes, assign=assign, matched=len(set(cols)))


def normalise(X: sp.csr_matrix, kind: str, plan: GenePlan, *, library: GenePlan | None = None) -> sp.csr_matrix:
    """log1p of counts per 10,000 over the plan's genes, from values on scale ``kind`` (see :data:`SCALES`).

    Genes mapping to one symbol are summed in linear space; library sizes are taken over all
    input genes, mapped or not, so normalisation matches what the cell was measured with, or over
    the genes of ``library`` when given (a panel: both sides normalised over the genes they share).
    Logged input is un-logged first (in its own base), so any earlier scale factor is replaced by 10,000.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        Raw values on scale ``kind``.
    kind : str
        One of :data:`SCALES`.
    plan : GenePlan
        The output columns.
    library : GenePlan or None
        Genes the library sizes are taken over; None takes every input gene.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, sorted indices.
    """
    linear = sp.csr_matrix(X, dtype=np.result_type(X.dtype, np.float32), copy=True)
    linear.data = unlog(linear.data, kind)
    totals = linear if library is None else linear[:, library.inputs]
    sizes = np.asarray(totals.sum(axis=1)).ravel()
    sizes[sizes == 0] = 1.0
    summed = plan.apply(linear)
    summed.data = summed.data * np.repeat((TARGET_SUM / sizes).astype(np.float32), np.diff(summed.indptr))
    out = sp.csr_matrix(summed, dtype=np.float32)
    out.data = np.log1p(out.data)
    out.sort_indices()
    return out


def map_genes(source: ExpressionSource, *, species: str = "auto", resolver: GeneResolver | None = None) -> GeneMapping:
    """Human symbols for the source's genes.

    Parameters
    ----------
    source : ExpressionSource
        Its ``names`` are mapped.
    species : str
        ``human``, ``mouse`` or ``auto``.
    resolver : GeneResolver or None
        The resolver; None takes the default one.

    Returns
    -------
    GeneMapping

    Raises
    ------
    InputDataError
        None of the names maps to a human symbol.
    """
    mapping = (resolver or default_resolver()).map(source.names, species=species)
    if mapping.n_mapped == 0:
        raise InputDataError(_unmapped_message(source.names))
    return mapping


def _unmapped_message(names: list[str], columns: str = "") -> str:
    """Why no gene name maps, and how to fix it; ``columns`` names the var columns that would map."""
    hint = " The names look like Ensembl ids." if looks_like_ensembl(names) > 0.5 else ""
    return (f"none of the {len(names)} gene names could be mapped to human gene symbols "
            f"(first names: {', '.join(names[:5])}).{hint}{columns} Pass --gene-key with a var column of symbols, "
            "or --species if the guess was wrong")


@dataclass
class Expression:
    """Log-normalised expression over human gene symbols, with how it was made.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        float32 log1p(counts per 10,000), cells × ``genes``.
    genes : list of str
        The columns.
    obs : pandas.DataFrame
        The cells' metadata (a copy).
    kind, evidence : str
        The input scale and why.
    mapping : GeneMapping
        How the input genes mapped to symbols.
    """

    X: sp.csr_matrix
    genes: list[str]
    obs: pd.DataFrame
    kind: str
    mapping: GeneMapping
    evidence: str = ""

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.X.shape[0])


def load_expression(adata: Any, *, layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                    species: str = "auto", resolver: GeneResolver | None = None, target: list[str] | None = None,
                    chunk: int = CHUNK, input_scale: str | None = None) -> Expression:
    """Check, map and log-normalise a whole AnnData (which is not changed) into memory.

    Parameters
    ----------
    adata : AnnData
        In memory or backed.
    layer, use_raw, gene_key, species, resolver
        Which matrix and gene names are read, and how they map (:func:`open_expression`,
        :func:`map_genes`).
    target : list of str or None
        The output genes; None takes every mapped gene.
    chunk : int
        Rows read at a time.
    input_scale : str or None
        The scale of the values (:data:`SCALES`); ``auto`` or None tells it (:func:`input_scale_of`).

    Returns
    -------
    Expression

    Raises
    ------
    InputDataError
        The matrix, the genes or the values are not usable; the message says why.
    """
    from screader_db.expression_stream import ExpressionStream

    source = open_expression(adata, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species)
    mapping = map_genes(source, species=species, resolver=resolver)
    plan = plan_genes(mapping.symbols, target)
    scale = input_scale_of(source, input_scale)
    stream = ExpressionStream(source, plan, scale.scale, evidence=scale.evidence)
    X = sp.csr_matrix(sp.vstack([block for _, block in stream.chunks(chunk)]), dtype=np.float32)
    return Expression(X=X, genes=plan.genes, obs=source.obs.copy(), kind=scale.scale, mapping=mapping,
                      evidence=scale.evidence)
