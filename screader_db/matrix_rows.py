"""Reading blocks of rows of an expression matrix, with its structure checked before any arithmetic.

A sparse matrix from a file can be malformed in ways scipy does not check when it slices: a
column index past the last gene (scipy's compiled routines then read or write out of bounds and
the process crashes), an ``indptr`` that decreases (rows silently scrambled), ``data`` and
``indices`` of different lengths, values that are not numbers. Every block is checked as it is
read; a CSR block is read from the stored arrays themselves, so a backed file is never read
whole. A fault is an :class:`InputDataError` naming the file (when known), the array and the fault.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.errors import InputDataError

COMPRESSED = ("csr", "csc")
SCAN = 10_000_000  # stored entries checked at a time when a CSC matrix is checked whole


def malformed(where: str, origin: str | None, fault: str) -> InputDataError:
    """The error for a matrix whose structure is broken: which matrix, of which file, and what is wrong.

    Parameters
    ----------
    where : str
        The matrix's name in its AnnData (``X``, ``layers/counts``, ``raw/X``).
    origin : str or None
        The file it was read from; None for a matrix in memory (the remedy offered differs).
    fault : str
        What is wrong, as a clause.

    Returns
    -------
    InputDataError
        Not raised here.
    """
    if origin:
        message = (f"the expression matrix {where} of {origin} is malformed: {fault}. The file is damaged or was "
                   "written by a faulty tool; write it again from a good copy (AnnData's write_h5ad)")
    else:
        message = (f"the expression matrix {where} is malformed: {fault}. Check how the matrix was built "
                   "(scipy's check_format(full_check=True) finds such faults)")
    return InputDataError(message)


def _not_numbers(where: str, origin: str | None, array: str, dtype: Any) -> InputDataError:
    of = f" of {origin}" if origin else ""
    message = (f"the expression matrix {where}{of} holds values of type {np.dtype(dtype)} in {array}, not numbers; "
               "store counts (integers) or normalised values (floats)")
    return InputDataError(message)


def _numeric(dtype: Any) -> bool:
    return np.dtype(dtype).kind in "biuf"


def _stored(matrix: Any) -> tuple[str, Any, Any, Any] | None:
    """(format, indptr, indices, data) of a CSR or CSC matrix, in memory or backed; None for others."""
    if sp.issparse(matrix) and matrix.format in COMPRESSED:
        return matrix.format, matrix.indptr, matrix.indices, matrix.data
    group = getattr(matrix, "group", None)
    kind = getattr(matrix, "format", None)
    if group is not None and kind in COMPRESSED:
        return kind, group["indptr"], group["indices"], group["data"]
    return None


def check_structure(matrix: Any, *, where: str, origin: str | None) -> None:
    """Whole-matrix checks: numeric values, index arrays, and ``indptr`` from 0 to the stored values.

    The index arrays must be one-dimensional integer arrays of consistent lengths. A CSC matrix,
    whose row blocks touch every stored value, is checked whole here (bounds and order too), in
    blocks of :data:`SCAN` stored entries; CSR rows are checked as :func:`read_rows` reads them.
    A dense matrix is only checked for a numeric dtype.

    Parameters
    ----------
    matrix : array-like, scipy sparse matrix or backed sparse dataset
        The expression matrix, cells by genes.
    where : str
        Its name in its AnnData (``X``, ``layers/counts``...), for messages.
    origin : str or None
        The file it was read from, for messages; None for a matrix in memory.

    Raises
    ------
    InputDataError
        Values that are not numbers, or a broken sparse structure (a missing array, wrong dimensions or
        lengths, non-integer indices, ``indptr`` not running from 0 to the number of stored values; for CSC
        also a decreasing ``indptr`` or a row index out of range).
    """
    dtype = getattr(matrix, "dtype", None)
    try:
        stored = _stored(matrix)
    except KeyError as err:
        raise malformed(where, origin, f"the sparse group lacks its {err} array") from err
    if stored is None:
        if dtype is not None and not _numeric(dtype):
            raise _not_numbers(where, origin, where, dtype)
        return
    kind, indptr, indices, data = stored
    if not _numeric(data.dtype):
        raise _not_numbers(where, origin, f"{where}/data", data.dtype)
    for name, array in (("indptr", indptr), ("indices", indices), ("data", data)):
        if len(array.shape) != 1:
            raise malformed(where, origin, f"{where}/{name} has {len(array.shape)} dimensions, not 1")
    for name, array in (("indptr", indptr), ("indices", indices)):
        if np.dtype(array.dtype).kind not in "iu":
            raise malformed(where, origin, f"{where}/{name} holds values of type {array.dtype}, not integers")
    n_major, n_minor = (matrix.shape[0], matrix.shape[1]) if kind == "csr" else (matrix.shape[1], matrix.shape[0])
    what = "cells" if kind == "csr" else "genes"
    if indptr.shape[0] != n_major + 1:
        raise malformed(where, origin, f"{where}/indptr has {indptr.shape[0]:,} entries for {n_major:,} {what} "
                                       f"(expected {n_major + 1:,})")
    nnz = indices.shape[0]
    if data.shape[0] != nnz:
        raise malformed(where, origin, f"{where}/data holds {data.shape[0]:,} values but {where}/indices "
                                       f"{nnz:,}; each stored value needs one index")
    first, last = int(indptr[0]), int(indptr[n_major])
    if first != 0 or last != nnz:
        raise malformed(where, origin, f"{where}/indptr runs from {first:,} to {last:,}; it must run from 0 to "
                                       f"the number of stored values, {nnz:,}")
    if kind == "csc":
        pointers = np.asarray(indptr[:], dtype=np.int64)
        _check_order(pointers, 0, where, origin, "gene")
        for low in range(0, nnz, SCAN):
            _check_bounds(np.asarray(indices[low : low + SCAN]), pointers, low, 0, n_minor, where, origin,
                          ("gene", "cell"))


def _check_order(pointers: np.ndarray, offset: int, where: str, origin: str | None, unit: str) -> None:
    steps = np.diff(pointers)
    if len(steps) and steps.min() < 0:
        at = int(np.argmax(steps < 0))
        fault = (f"{where}/indptr decreases at {unit} {offset + at:,} ({int(pointers[at]):,} then "
                 f"{int(pointers[at + 1]):,}); it must never decrease")
        raise malformed(where, origin, fault)


def _check_bounds(indices: np.ndarray, pointers: np.ndarray, start: int, offset: int, n_minor: int, where: str,
                  origin: str | None, units: tuple[str, str]) -> None:
    """Every index in [0, n_minor); ``indices`` are the stored entries from position ``start`` on."""
    if not len(indices):
        return
    bad = (indices < 0) | (indices >= n_minor)
    if not bad.any():
        return
    at = int(np.argmax(bad))
    major = offset + int(np.searchsorted(pointers, start + at, side="right")) - 1
    unit, other = units
    fault = (f"{where}/indices holds {other} index {int(indices[at]):,} (in {unit} {major:,}), but there are "
             f"{n_minor:,} {other}s (indices 0 to {n_minor - 1:,})")
    raise malformed(where, origin, fault)


def read_rows(matrix: Any, start: int, stop: int, *, where: str = "X", origin: str | None = None) -> sp.csr_matrix:
    """Rows ``start:stop`` as a float32 CSR matrix, their structure checked first.

    Call :func:`check_structure` once per matrix before. A CSR matrix (in memory or backed) is read
    from its stored arrays, only the block's slice of them; any other matrix is sliced and converted.

    Parameters
    ----------
    matrix : array-like, scipy sparse matrix or backed sparse dataset
        The expression matrix, cells by genes.
    start, stop : int
        The rows to read, ``stop`` exclusive.
    where : str
        Its name in its AnnData, for messages.
    origin : str or None
        The file it was read from, for messages; None for a matrix in memory.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (stop - start, n_genes)

    Raises
    ------
    InputDataError
        For a CSR matrix: ``indptr`` decreases within the block or points past the stored values, or a
        column index is out of range.
    """
    stored = _stored(matrix)
    if stored is not None and stored[0] == "csr":
        _, indptr, indices, data = stored
        n_genes = int(matrix.shape[1])
        pointers = np.asarray(indptr[start : stop + 1], dtype=np.int64)
        _check_order(pointers, start, where, origin, "cell")
        low, high = int(pointers[0]), int(pointers[-1])
        nnz = indices.shape[0]
        if low < 0 or high > nnz:
            fault = f"{where}/indptr points to stored values {low:,} to {high:,}, past the {nnz:,} there are"
            raise malformed(where, origin, fault)
        columns = np.asarray(indices[low:high])
        _check_bounds(columns, pointers, low, start, n_genes, where, origin, ("cell", "gene"))
        values = np.asarray(data[low:high]).astype(np.float32, copy=False)
        return sp.csr_matrix((values, columns, pointers - low), shape=(stop - start, n_genes))
    block = matrix[start:stop]
    if hasattr(block, "to_memory"):
        block = block.to_memory()
    return sp.csr_matrix(block, dtype=np.float32)
