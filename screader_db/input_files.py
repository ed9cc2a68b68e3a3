"""The input files labs hold, opened as the AnnData the rest of the pipeline reads.

:func:`detect_format` tells a path's format from its suffix and, for a folder, from what it holds;
:func:`open_input` opens it. What stays on disk and what is read into memory:

==========  ==================================================  =================================================
format      told by                                             read
==========  ==================================================  =================================================
``h5ad``    the suffix ``.h5ad``                                backed: rows read from the file in chunks
``zarr``    a folder holding ``.zgroup`` or ``zarr.json``       lazily: X, layers and raw X stay on disk
``10x-h5``  ``.h5`` holding ``matrix/`` (Cell Ranger 3 and      lazily: a 10x matrix is genes × cells CSC, so
            later) or one genome group (Cell Ranger 2)          each cell's values lie together on disk; with
                                                                other feature types than Gene Expression, the
                                                                Gene Expression ones are read whole
``mtx``     a folder holding ``matrix.mtx[.gz]`` beside         whole (``scipy.io.mmread``), as a sparse matrix
            ``features.tsv[.gz]`` (or ``genes``) and
            ``barcodes.tsv[.gz]``, or the ``.mtx`` file itself
``loom``    the suffix ``.loom``                                in chunks of cells, into a sparse matrix
``csv``,    ``.csv``, ``.tsv`` or ``.txt``, optionally ``.gz``  in chunks of rows, into a sparse matrix; which
``tsv``                                                         axis holds genes is told from the names
==========  ==================================================  =================================================

Every format but ``h5ad``, ``zarr`` and a Gene Expression ``10x-h5`` ends up in memory as a
float32 sparse matrix (never as a dense one).
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.errors import InputDataError, ScreaderWarning
from screader_db.genes import ENSEMBL_RE, GeneResolver, default_resolver
from screader_db.inputs import HDF5_SIGNATURE, read_h5ad
from screader_db.matrix_rows import check_structure, read_rows

FORMATS = ("h5ad", "zarr", "10x-h5", "mtx", "loom", "csv", "tsv")
LABELLED = ("h5ad", "zarr", "loom")  # the formats that hold cell metadata, and so a reference's labels
ORIENTATIONS = ("auto", "cells-by-genes", "genes-by-cells")
SHOWN = {"cells-by-genes": "cells × genes", "genes-by-cells": "genes × cells"}
SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
ZARR_MARKERS = (".zgroup", "zarr.json")
MTX_NAMES = ("matrix.mtx.gz", "matrix.mtx")
FEATURE_STEMS = ("features", "genes")
GENE_EXPRESSION = "Gene Expression"
LOOM_GENES = ("Gene", "var_names", "gene_symbols", "gene", "Accession")
LOOM_CELLS = ("CellID", "obs_names", "cell_id", "cell")
CHUNK_VALUES = 20_000_000  # values of a loom matrix read per chunk of cells (80 MB as float32)
TABLE_BLOCK = 1 << 26      # bytes of a text table parsed per block of rows (64 MB)
NAME_SAMPLE = 2_000        # names per axis looked up to tell which axis of a table holds genes
GENE_SHARE_GAP = 0.2       # one axis's share of gene-like names must exceed the other's by this much to decide
ACCEPTED = ("an .h5ad file, a zarr AnnData store, a 10x .h5 file, a 10x Matrix Market folder (matrix.mtx.gz, "
            "features.tsv.gz, barcodes.tsv.gz), a .loom file, or a .csv/.tsv table (optionally .gz)")


@dataclass(frozen=True)
class InputFile:
    """A data file or folder: its format, and how the format (and a table's orientation) was told.

    Parameters
    ----------
    path : Path
        The path as given.
    format : str
        One of :data:`FORMATS`.
    evidence : str
        One line a person can check: what told the format, how the matrix lies, how it was read.
    orientation : str
        How the stored matrix lies, ``cells-by-genes`` or ``genes-by-cells``; empty until a table is read.
    lazy : bool
        Whether the matrix stays on disk and is read in row chunks.
    """

    path: Path
    format: str
    evidence: str
    orientation: str = ""
    lazy: bool = False

    def info(self) -> dict[str, str]:
        """The record a query's info keeps of how its file was read.

        Returns
        -------
        dict of str to str
            ``input_format`` and ``input_format_evidence``.
        """
        return {"input_format": self.format, "input_format_evidence": self.evidence}

    def labels_note(self) -> str:
        """What to do about labels, for a format that holds no cell metadata.

        Returns
        -------
        str
            Empty for a format of :data:`LABELLED`; else a clause, starting with ``;``, that says how
            to give a reference its labels.
        """
        if self.format in LABELLED:
            return ""
        return (f"; a {self.format} file holds no cell labels: give the reference as .h5ad, a zarr folder or .loom "
                "with the labels in obs (loom: col_attrs), or add them in Python "
                "(open_input(path).adata, set obs, then build_atlas on that AnnData)")


@dataclass
class OpenedInput:
    """An input opened as an AnnData; close it (or use it in a ``with`` block) to release its file.

    Parameters
    ----------
    adata : AnnData
        The data: backed or lazy when :attr:`InputFile.lazy`, else in memory.
    file : InputFile
        The format and how it was read.
    closer : callable or None
        Releases the file; None when nothing stays open.
    """

    adata: Any
    file: InputFile
    closer: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        """Release the file a backed or lazy AnnData reads from (nothing to do for one in memory)."""
        if self.closer is not None:
            closer, self.closer = self.closer, None
            closer()

    def __enter__(self) -> OpenedInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _suffixes(path: Path) -> tuple[str, bool]:
    """The lower-case suffix under any ``.gz``, and whether there was one."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[: -len(".gz")]
    return Path(name).suffix, compressed


def _hdf5_kind(file: Path) -> str | None:
    """``h5ad``, ``10x-h5`` or ``loom`` by what an HDF5 file holds; None when it is none of them or not HDF5."""
    with open(file, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            return None
    import h5py

    try:
        with h5py.File(file, "r") as handle:
            keys = set(handle)
            if handle.attrs.get("encoding-type") == "anndata" or {"X", "obs"} <= keys:
                return "h5ad"
            if isinstance(handle.get("matrix"), h5py.Group) or _genome_group(handle) is not None:
                return "10x-h5"
            if isinstance(handle.get("matrix"), h5py.Dataset) and "row_attrs" in keys:
                return "loom"
    except OSError:
        return None
    return None


def _genome_group(handle: Any) -> Any:
    """The one top-level group of a Cell Ranger 2 file (named for its genome), or None."""
    groups = [handle[key] for key in handle if hasattr(handle[key], "keys") and "gene_names" in handle[key]]
    return groups[0] if len(groups) == 1 else None


def _matrix_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(MTX_NAMES))


def _folder_format(folder: Path) -> InputFile:
    names = {p.name for p in folder.iterdir()}
    markers = [m for m in ZARR_MARKERS if m in names]
    if markers:
        return InputFile(folder, "zarr", f"zarr AnnData store: the folder holds {markers[0]}")
    matrices = _matrix_files(folder)
    if len(matrices) == 1:
        return InputFile(folder, "mtx", f"Matrix Market folder: the folder holds {matrices[0].name}")
    if matrices:
        shown = ", ".join(p.name for p in matrices)
        message = f"the folder {folder} holds {len(matrices)} Matrix Market files ({shown}); pass the one to read"
        raise InputDataError(message)
    message = (f"{folder} is a folder but neither a zarr AnnData store (no .zgroup or zarr.json in it) nor a 10x "
               f"Matrix Market folder (no matrix.mtx.gz in it); pass {ACCEPTED}")
    raise InputDataError(message)


def detect_format(path: str | Path) -> InputFile:
    """Tell the format of a data file or folder from its suffix or, for a folder, from what it holds.

    An ``.h5`` file (or one of unknown suffix) is told by what it holds, as HDF5: AnnData, a 10x
    matrix or a loom file. Nothing beyond names and HDF5 keys is read.

    Parameters
    ----------
    path : str or Path
        The file or folder.

    Returns
    -------
    InputFile
        Its format and what told it (``orientation`` and ``lazy`` are set by :func:`open_input`).

    Raises
    ------
    InputDataError
        The path does not exist or is of no format listed in :data:`FORMATS`.
    """
    file = Path(path)
    if not file.exists():
        message = f"{file} does not exist; check the path"
        raise InputDataError(message)
    if file.is_dir():
        return _folder_format(file)
    suffix, compressed = _suffixes(file)
    if suffix in SEPARATORS:
        kind = "csv" if suffix == ".csv" else "tsv"
        return InputFile(file, kind, f"{kind.upper()} table: the suffix {suffix}{'.gz' if compressed else ''}")
    if suffix == ".mtx":
        return InputFile(file, "mtx", f"Matrix Market file: the suffix {suffix}{'.gz' if compressed else ''}")
    if compressed:
        message = (f"{file} is compressed (.gz) but is not a .csv, .tsv or .mtx file; decompress it first "
                   f"(gunzip {file.name}), then pass {ACCEPTED}")
        raise InputDataError(message)
    if suffix == ".h5ad":
        return InputFile(file, "h5ad", "h5ad: the suffix .h5ad")
    if suffix == ".loom":
        return InputFile(file, "loom", "loom: the suffix .loom")
    if suffix == ".zarr":
        message = f"{file} is a file, but a zarr AnnData store is a folder; unzip it, or write it with AnnData's write_zarr"
        raise InputDataError(message)
    held = _hdf5_kind(file) if file.stat().st_size else None
    if held is not None:
        told = "10x HDF5" if held == "10x-h5" else held
        return InputFile(file, held, f"{told}: an HDF5 file ({suffix or 'no suffix'}) holding the {held} layout")
    if suffix in (".h5", ".hdf5"):
        message = (f"{file} is not a 10x .h5 file: it is empty, not HDF5, or holds neither matrix/ (Cell Ranger 3 "
                   "and later) nor a genome group with gene_names (Cell Ranger 2); pass the filtered_feature_bc_matrix.h5 "
                   "Cell Ranger wrote, or an .h5ad file")
        raise InputDataError(message)
    message = f"{file} has the suffix {suffix or '(none)'}, which screader-db does not read; pass {ACCEPTED}"
    raise InputDataError(message)


def input_name(path: str | Path) -> str:
    """The name a data set read from ``path`` gets by default: the file or folder name without its suffixes.

    Parameters
    ----------
    path : str or Path
        The file or folder.

    Returns
    -------
    str
        ``pbmc`` for ``pbmc.h5ad``, ``pbmc.csv.gz`` or ``pbmc.zarr``; for a Matrix Market file, its
        name's prefix (``GSM1_`` of ``GSM1_matrix.mtx.gz``, without the separator) or its folder's name.
    """
    file = Path(path)
    suffix, compressed = _suffixes(file)
    if suffix == ".mtx":
        lower = file.name.lower()
        matched = next((n for n in MTX_NAMES if lower.endswith(n)), "")
        prefix = file.name[: len(file.name) - len(matched)].rstrip("_.-") if matched else ""
        return prefix or file.resolve().parent.name
    name = file.name[: -len(".gz")] if compressed else file.name
    return Path(name).stem


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def _unique(names: list[str]) -> tuple[pd.Index, str]:
    """Names made unique the way ``AnnData.var_names_make_unique`` does, and a note saying so (empty when no change)."""
    from anndata.utils import make_index_unique

    index = pd.Index(names)
    if index.is_unique:
        return index, ""
    unique = make_index_unique(index)
    changed = [str(new) for old, new in zip(index, unique, strict=True) if str(old) != str(new)]
    note = (f"; {len(changed):,} repeated gene names made unique ({', '.join(changed[:3])}...), "
            "--gene-key gene_ids reads the Ensembl ids instead")
    return unique, note


@lru_cache(maxsize=1)
def _tenx_rows() -> Callable[..., Any]:
    """The lazy cells × genes matrix of a 10x .h5 file (defined on first use, so anndata is imported only then)."""
    from anndata.abc import CSRDataset

    class TenXRows(CSRDataset):
        """A 10x matrix (genes × cells CSC on disk) read as cells × genes CSR straight from its arrays."""

        format = "csr"
        backend = "hdf5"

        def __init__(self, group: Any, shape: tuple[int, int], origin: str) -> None:
            self.group = group
            self.shape = shape
            self.dtype = group["data"].dtype
            self.origin = origin

        def __getitem__(self, index: Any) -> Any:
            if isinstance(index, slice) and index.step in (None, 1):
                start, stop, _ = index.indices(self.shape[0])
                return read_rows(self, start, stop, where="matrix", origin=self.origin)
            return self.to_memory()[index]

        def to_memory(self) -> sp.csr_matrix:
            check_structure(self, where="matrix", origin=self.origin)
            return read_rows(self, 0, self.shape[0], where="matrix", origin=self.origin)

        def copy(self) -> sp.csr_matrix:
            return self.to_memory()

    return TenXRows


def _open_10x_h5(file: Path, *, backed: bool) -> OpenedInput:
    import anndata as ad
    import h5py

    try:
        handle = h5py.File(file, "r")
    except OSError as err:
        message = f"{file} could not be read as HDF5 ({err}); the file is damaged, write or download it again"
        raise InputDataError(message) from err
    try:
        if isinstance(handle.get("matrix"), h5py.Group):
            group, layout = handle["matrix"], "Cell Ranger 3 layout, matrix/"
            features = group.get("features")
            ids_key, names_key, types = "features/id", "features/name", None
            if features is not None and "feature_type" in features:
                types = np.array(_strings(features["feature_type"][:]))
        else:
            group = _genome_group(handle)
            if group is None:
                raise KeyError("matrix")
            layout, ids_key, names_key, types = f"Cell Ranger 2 layout, genome {group.name.strip('/')}", "genes", "gene_names", None
        missing = [k for k in ("data", "indices", "indptr", "shape", "barcodes", ids_key, names_key) if k not in group]
        if missing:
            where = group.name.strip("/")
            message = (f"{file} is a 10x .h5 file without {', '.join(f'{where}/{k}' for k in missing)}; "
                       "it is damaged or not written by Cell Ranger: pass the filtered_feature_bc_matrix.h5 Cell Ranger "
                       "wrote, or convert the data to .h5ad")
            raise InputDataError(message)
        n_genes, n_cells = (int(v) for v in group["shape"][:2])
        barcodes, ids, names = (_strings(group[k][:]) for k in ("barcodes", ids_key, names_key))
        if len(barcodes) != n_cells or len(names) != n_genes or len(ids) != n_genes:
            message = (f"{file} is a 10x .h5 file whose matrix is {n_genes:,} genes × {n_cells:,} cells but which lists "
                       f"{len(names):,} gene names, {len(ids):,} gene ids and {len(barcodes):,} barcodes; it is damaged: "
                       "write or download it again")
            raise InputDataError(message)
        index, note = _unique(names)
        var = pd.DataFrame({"gene_ids": ids}, index=index)
        if types is not None:
            var["feature_types"] = types
        obs = pd.DataFrame(index=pd.Index(barcodes))
        matrix = _tenx_rows()(group, (n_cells, n_genes), str(file))
        gex = None if types is None or bool((types == GENE_EXPRESSION).all()) else np.asarray(types == GENE_EXPRESSION)
        if backed and gex is None:
            evidence = f"10x HDF5 ({layout}): {n_cells:,} cells × {n_genes:,} genes, read lazily{note}"
            return OpenedInput(ad.AnnData(X=matrix, obs=obs, var=var), InputFile(file, "10x-h5", evidence,
                               "genes-by-cells", lazy=True), handle.close)
        X = matrix.to_memory()
        kept = ""
        if gex is not None:
            X, var = sp.csr_matrix(X[:, np.flatnonzero(gex)]), var.iloc[np.flatnonzero(gex)]
            left = pd.Series(np.asarray(types)[~gex]).value_counts()
            kept = (f"; kept the {int(gex.sum()):,} Gene Expression features of {n_genes:,} (left out: "
                    f"{', '.join(f'{n:,} {t}' for t, n in left.items())})")
        handle.close()
        evidence = f"10x HDF5 ({layout}): {n_cells:,} cells × {n_genes:,} features, read whole{kept}{note}"
        return OpenedInput(ad.AnnData(X=X, obs=obs, var=var), InputFile(file, "10x-h5", evidence, "genes-by-cells"))
    except InputDataError:
        handle.close()
        raise
    except KeyError as err:
        handle.close()
        message = (f"{file} is HDF5 but holds no 10x matrix ({err}); pass the filtered_feature_bc_matrix.h5 Cell Ranger "
                   "wrote, or an .h5ad file")
        raise InputDataError(message) from err


def _sibling(folder: Path, prefix: str, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for ending in (".tsv.gz", ".tsv"):
            candidate = folder / f"{prefix}{stem}{ending}"
            if candidate.is_file():
                return candidate
    return None


def _mtx_parts(path: Path) -> tuple[Path, Path, Path]:
    """The matrix, features and barcodes files of a Matrix Market folder (or of the matrix file given)."""
    matrix = _matrix_files(path)[0] if path.is_dir() else path
    folder = matrix.parent
    lower = matrix.name.lower()
    matched = next((n for n in MTX_NAMES if lower.endswith(n)), "")
    prefix = matrix.name[: len(matrix.name) - len(matched)] if matched else ""
    features = _sibling(folder, prefix, FEATURE_STEMS)
    barcodes = _sibling(folder, prefix, ("barcodes",))
    if features is not None and barcodes is not None:
        return matrix, features, barcodes
    present = " and ".join([matrix.name, *(p.name for p in (barcodes, features) if p is not None)])
    absent = []
    if features is None:
        absent.append(f"{prefix}features.tsv.gz (or {prefix}genes.tsv.gz)")
    if barcodes is None:
        absent.append(f"{prefix}barcodes.tsv.gz")
    message = (f"the 10x folder {folder} has {present} but no {' and no '.join(absent)}; a Matrix Market matrix "
               "needs its gene and barcode lists beside it: copy them from the same Cell Ranger output "
               "(outs/filtered_feature_bc_matrix/), or pass the run's filtered_feature_bc_matrix.h5")
    raise InputDataError(message)


def _read_list(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    except pd.errors.EmptyDataError as err:
        message = f"{path} is empty; copy it again from the Cell Ranger output it came from"
        raise InputDataError(message) from err
    except (OSError, ValueError, pd.errors.ParserError) as err:
        message = f"{path} could not be read as a tab-separated list ({type(err).__name__}: {err}); copy it again"
        raise InputDataError(message) from err
    return table


def _open_mtx(path: Path) -> OpenedInput:
    import anndata as ad
    import scipy.io

    matrix_file, features_file, barcodes_file = _mtx_parts(path)
    features, barcodes = _read_list(features_file), _read_list(barcodes_file)
    try:
        stored = sp.csr_matrix(scipy.io.mmread(matrix_file), dtype=np.float32)
    except Exception as err:  # the Matrix Market readers raise many kinds for damaged files
        message = (f"{matrix_file} could not be read as a Matrix Market matrix ({type(err).__name__}: {err}); the file "
                   "is damaged or incomplete: copy it again from the Cell Ranger output")
        raise InputDataError(message) from err
    n_features, n_barcodes = len(features), len(barcodes)
    rows, cols = stored.shape
    if (rows, cols) == (n_features, n_barcodes):
        orientation, X = "genes-by-cells", sp.csr_matrix(stored.T)
    elif (rows, cols) == (n_barcodes, n_features):
        orientation, X = "cells-by-genes", stored
    else:
        message = (f"{matrix_file.name} is {rows:,} × {cols:,}, but {features_file.name} lists {n_features:,} genes and "
                   f"{barcodes_file.name} {n_barcodes:,} barcodes; the three files must come from the same run")
        raise InputDataError(message)
    ids = features[0].tolist()
    names = features[1].tolist() if features.shape[1] > 1 else ids
    index, note = _unique(names)
    var = pd.DataFrame({"gene_ids": ids}, index=index)
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    obs = pd.DataFrame(index=pd.Index(barcodes[0].tolist()))
    evidence = (f"Matrix Market: {matrix_file.name} is {rows:,} × {cols:,} = {SHOWN[orientation]} "
                f"({features_file.name} lists {n_features:,} genes, {barcodes_file.name} {n_barcodes:,} barcodes), "
                f"read whole{note}")
    return OpenedInput(ad.AnnData(X=X, obs=obs, var=var), InputFile(path, "mtx", evidence, orientation))


def _numeric_dataset(dataset: Any, file: Path, name: str) -> None:
    if np.dtype(dataset.dtype).kind not in "biuf":
        message = f"{file}: /{name} holds values of type {dataset.dtype}, not numbers; store counts or normalised values"
        raise InputDataError(message)


def _columns_as_rows(dataset: Any) -> sp.csr_matrix:
    """A genes × cells dense dataset as cells × genes float32 CSR, read a chunk of cells at a time."""
    n_genes, n_cells = dataset.shape
    step = max(1, CHUNK_VALUES // max(n_genes, 1))
    blocks = [sp.csr_matrix(np.asarray(dataset[:, start : start + step], dtype=np.float32).T)
              for start in range(0, n_cells, step)]
    return sp.csr_matrix(sp.vstack(blocks, format="csr")) if blocks else sp.csr_matrix((0, n_genes), dtype=np.float32)


def _attributes(group: Any, n: int) -> dict[str, np.ndarray]:
    """The one-dimensional attributes of length ``n`` of a loom attribute group, strings decoded."""
    found: dict[str, np.ndarray] = {}
    for key in group or ():
        item = group[key]
        if getattr(item, "ndim", 0) != 1 or item.shape[0] != n:
            continue
        values = item[:]
        found[key] = np.array(_strings(values), dtype=object) if values.dtype.kind in "SOU" else values
    return found


def _open_loom(file: Path) -> OpenedInput:
    import anndata as ad
    import h5py

    try:
        handle = h5py.File(file, "r")
    except OSError as err:
        message = f"{file} could not be read as HDF5 ({err}); it is empty, damaged or not a loom file: write it again"
        raise InputDataError(message) from err
    with handle:
        matrix = handle.get("matrix")
        if not isinstance(matrix, h5py.Dataset) or matrix.ndim != 2:
            message = f"{file} is not a loom file (no two-dimensional /matrix); write it with loompy or convert it to .h5ad"
            raise InputDataError(message)
        _numeric_dataset(matrix, file, "matrix")
        n_genes, n_cells = matrix.shape
        rows, cols = _attributes(handle.get("row_attrs"), n_genes), _attributes(handle.get("col_attrs"), n_cells)
        gene_key = next((k for k in LOOM_GENES if k in rows), None)
        if gene_key is None:
            message = (f"{file} has no gene names: none of row_attrs/{', row_attrs/'.join(LOOM_GENES)} holds "
                       f"{n_genes:,} names; add them (loompy: ds.ra.Gene = names) or convert the data to .h5ad")
            raise InputDataError(message)
        cell_key = next((k for k in LOOM_CELLS if k in cols), None)
        X = _columns_as_rows(matrix)
        layers = {}
        for name, layer in (handle.get("layers") or {}).items():
            if isinstance(layer, h5py.Dataset) and layer.shape == matrix.shape:
                _numeric_dataset(layer, file, f"layers/{name}")
                layers[name] = _columns_as_rows(layer)
    genes = [str(v) for v in rows.pop(gene_key)]
    cells = [str(v) for v in cols.pop(cell_key)] if cell_key else [str(i) for i in range(n_cells)]
    var = pd.DataFrame(rows, index=pd.Index(genes))
    obs = pd.DataFrame(cols, index=pd.Index(cells))
    named = f"cell ids from col_attrs/{cell_key}" if cell_key else "cells numbered (no col_attrs/CellID)"
    shown_layers = f", layers {', '.join(layers)}" if layers else ""
    evidence = (f"loom: /matrix is {n_genes:,} genes × {n_cells:,} cells, gene names from row_attrs/{gene_key}, {named}"
                f"{shown_layers}; read in chunks of cells")
    return OpenedInput(ad.AnnData(X=X, obs=obs, var=var, layers=layers),
                       InputFile(file, "loom", evidence, "genes-by-cells"))


def _gene_like(names: list[str], resolver: GeneResolver) -> float:
    """Share of (the first :data:`NAME_SAMPLE`) names that are gene symbols (in any case, so mouse ones too) or
    Ensembl ids. Aliases are left out: cell names such as ``cell1`` are aliases of genes."""
    sample = [str(n) for n in names[:NAME_SAMPLE]]
    if not sample:
        return 0.0
    return sum(n.upper() in resolver.upper or bool(ENSEMBL_RE.match(n)) for n in sample) / len(sample)


def table_orientation(row_names: list[str], column_names: list[str], *,
                      resolver: GeneResolver | None = None) -> tuple[str, str, bool]:
    """Which axis of a table holds genes: the one whose names look like genes, else the longer one.

    Parameters
    ----------
    row_names, column_names : list of str
        The table's row names (its first column) and column names (its header).
    resolver : GeneResolver or None
        Tells gene names; None takes the default one.

    Returns
    -------
    tuple of (str, str, bool)
        ``cells-by-genes`` or ``genes-by-cells``; the evidence, one line; and whether the names
        decided it (False: the longer axis was taken as genes).
    """
    resolver = resolver or default_resolver()
    by_rows, by_columns = _gene_like(row_names, resolver), _gene_like(column_names, resolver)
    shares = (f"{by_rows:.0%} of the {len(row_names):,} row names and {by_columns:.0%} of the {len(column_names):,} "
              "column names are gene symbols or Ensembl ids")
    if by_rows - by_columns >= GENE_SHARE_GAP:
        return "genes-by-cells", f"genes × cells: {shares}", True
    if by_columns - by_rows >= GENE_SHARE_GAP:
        return "cells-by-genes", f"cells × genes: {shares}", True
    orientation = "genes-by-cells" if len(row_names) > len(column_names) else "cells-by-genes"
    axis = "rows" if orientation == "genes-by-cells" else "columns"
    text = f"{SHOWN[orientation]}: the names do not tell ({shares}), so the longer axis, the {axis}, was taken as genes"
    return orientation, text, False


def _open_text(file: Path) -> Any:
    opener: Any = gzip.open if file.name.lower().endswith(".gz") else open
    return opener(file, "rt", newline="")


def _head(file: Path, sep: str) -> tuple[list[str], list[str] | None]:
    """The header row and the first row of a table."""
    try:
        with _open_text(file) as handle:
            reader = csv.reader(handle, delimiter=sep)
            header, first = next(reader, None), next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        message = f"{file} could not be read as a text table ({type(err).__name__}: {err}); it is damaged or not text"
        raise InputDataError(message) from err
    if header is None:
        message = f"{file} is empty; it was probably not written completely. Write it again"
        raise InputDataError(message)
    return header, first


CONVERSION = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to float: invalid value (.*)$", re.S)


def _table_error(file: Path, err: Exception, sep: str, n_columns: int, column_names: list[str]) -> InputDataError:
    """The error for a table pyarrow could not parse: a value that is not a number, or a row of the wrong length."""
    text = " ".join(str(err).split())
    found = CONVERSION.search(text)
    if found is not None and 1 <= int(found.group(1)) <= len(column_names):
        column, row, value = column_names[int(found.group(1)) - 1], found.group(2), found.group(3)
        where = f" in row {int(row):,} of the file" if row else ""
        message = (f"{file}: the column {column!r} holds {value}{where}, not a number; every field but the row names "
                   "(first column) and the header must be a number")
        return InputDataError(message)
    separator = "tabs" if sep == "\t" else "commas"
    message = (f"{file} could not be read as a table ({type(err).__name__}: {text}); every row needs its name and "
               f"{n_columns:,} values, separated by {separator}")
    return InputDataError(message)


def _read_table(file: Path, sep: str, column_names: list[str], row_bytes: int) -> tuple[sp.csr_matrix, list[str]]:
    """The values of a table as float32 CSR (rows as in the file) and its row names, parsed in blocks of rows.

    pyarrow's streaming CSV reader parses one block of :data:`TABLE_BLOCK` bytes (or four rows,
    when rows are longer) at a time; each block becomes sparse before the next is read.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    keys = [str(i) for i in range(len(column_names) + 1)]
    types = {key: pa.float32() for key in keys[1:]}
    types[keys[0]] = pa.string()
    blocks: list[sp.csr_matrix] = []
    names: list[str] = []
    try:
        reader = pcsv.open_csv(
            file, read_options=pcsv.ReadOptions(skip_rows=1, column_names=keys, block_size=max(TABLE_BLOCK, 4 * row_bytes)),
            parse_options=pcsv.ParseOptions(delimiter=sep), convert_options=pcsv.ConvertOptions(column_types=types))
        for batch in reader:
            names.extend(str(n) for n in batch.column(0).to_pylist())
            values = batch.drop_columns([keys[0]]).to_tensor(null_to_nan=True).to_numpy()
            blocks.append(sp.csr_matrix(values, dtype=np.float32))
    except (pa.ArrowException, OSError, EOFError) as err:
        raise _table_error(file, err, sep, len(column_names), column_names) from err
    return sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32), names


def _open_table(file: Path, kind: str, *, orientation: str, resolver: GeneResolver | None) -> OpenedInput:
    import anndata as ad

    sep = SEPARATORS[_suffixes(file)[0]]
    header, first = _head(file, sep)
    if first is None:
        message = f"{file} has a header but no rows of values; write the table again with its values"
        raise InputDataError(message)
    n_fields = len(first)
    if len(header) == n_fields:
        column_names = header[1:]
    elif len(header) == n_fields - 1:  # no name above the row names (R's write.table)
        column_names = header
    else:
        message = (f"{file}: its header has {len(header):,} names but its first row {n_fields:,} fields; the first "
                   "column must hold the row names and every other column one value per row")
        raise InputDataError(message)
    if not column_names:
        other = "," if sep == "\t" else "\t"
        hint = (f"; it looks {'comma' if other == ',' else 'tab'}-separated: name it "
                f"{'.csv' if other == ',' else '.tsv'}") if other in header[0] else ""
        message = f"{file} has no columns of values; the first column holds row names, the others the values{hint}"
        raise InputDataError(message)
    row_bytes = sum(len(v) + 1 for v in first)
    values, row_names = _read_table(file, sep, column_names, row_bytes)
    if orientation == "auto":
        orientation, told, decided = table_orientation(row_names, column_names, resolver=resolver)
        if not decided:
            warnings.warn(f"{file}: {told}; if that is wrong, transpose the table (cells as rows and genes as columns, "
                          "or the reverse)", ScreaderWarning, stacklevel=3)
    else:
        told = f"{SHOWN[orientation]}: given"
    X, cells, genes = ((sp.csr_matrix(values.T), column_names, row_names) if orientation == "genes-by-cells"
                       else (values, row_names, column_names))
    evidence = f"{kind.upper()} table, {told}; {len(cells):,} cells × {len(genes):,} genes, parsed in chunks of rows"
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(cells)), var=pd.DataFrame(index=pd.Index(genes)))
    return OpenedInput(adata, InputFile(file, kind, evidence, orientation))


def _open_zarr(folder: Path, *, backed: bool) -> OpenedInput:
    import anndata as ad

    try:
        if not backed:
            adata = ad.read_zarr(folder)
            return OpenedInput(adata, InputFile(folder, "zarr", "zarr AnnData store, read whole", "cells-by-genes"))
        import zarr
        from anndata.io import read_elem, sparse_dataset

        store: Any = zarr.open_group(folder, mode="r")

        def lazy(group: Any, key: str) -> Any:
            item = group[key]
            if str(item.attrs.get("encoding-type", "")) in ("csr_matrix", "csc_matrix"):
                return sparse_dataset(item)
            return item if isinstance(item, zarr.Array) else read_elem(item)

        layers = {key: lazy(store["layers"], key) for key in store["layers"]} if "layers" in store else {}
        adata = ad.AnnData(X=lazy(store, "X") if "X" in store else None, obs=read_elem(store["obs"]),
                           var=read_elem(store["var"]), layers=layers)
        if "raw" in store and "X" in store["raw"]:
            adata.raw = ad.AnnData(X=lazy(store["raw"], "X"), obs=adata.obs, var=read_elem(store["raw"]["var"]))
    except InputDataError:
        raise
    except Exception as err:  # zarr and anndata raise many kinds for damaged stores
        message = (f"{folder} could not be read as a zarr AnnData store ({type(err).__name__}: {err}); it is damaged "
                   "or not AnnData: write it again with AnnData's write_zarr")
        raise InputDataError(message) from err
    evidence = "zarr AnnData store: X, layers and raw X read lazily (obsm, uns and the rest left out)"
    return OpenedInput(adata, InputFile(folder, "zarr", evidence, "cells-by-genes", lazy=True))


def open_input(path: str | Path, *, backed: bool = True, orientation: str = "auto",
               resolver: GeneResolver | None = None) -> OpenedInput:
    """Open a data file or folder of any format in :data:`FORMATS` as an AnnData, cells × genes.

    Parameters
    ----------
    path : str or Path
        The file or folder (see :func:`detect_format`).
    backed : bool
        Keep the matrix on disk where the format allows (``h5ad`` backed, ``zarr`` and a Gene
        Expression ``10x-h5`` lazily); False reads everything into memory.
    orientation : str
        For a table: ``auto`` tells which axis holds genes (:func:`table_orientation`), or
        ``cells-by-genes`` / ``genes-by-cells`` says it.
    resolver : GeneResolver or None
        Tells gene names for a table's orientation; None takes the default one.

    Returns
    -------
    OpenedInput
        The AnnData and how it was read (``file.evidence``); close it when done.

    Raises
    ------
    InputDataError
        The path is missing, of no known format, damaged, or not laid out as its format requires
        (a Matrix Market matrix without its gene or barcode list, a table with values that are not
        numbers); the message says what was wrong and how to fix it.
    """
    if orientation not in ORIENTATIONS:
        message = f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}"
        raise InputDataError(message)
    found = detect_format(path)
    file = found.path
    if found.format == "h5ad":
        adata = read_h5ad(file, backed=backed)
        how = "read backed, in row chunks" if backed else "read whole"
        told = InputFile(file, "h5ad", f"{found.evidence}; {how}", "cells-by-genes", lazy=backed)
        return OpenedInput(adata, told, adata.file.close if backed else None)
    if found.format == "zarr":
        return _open_zarr(file, backed=backed)
    if found.format == "10x-h5":
        return _open_10x_h5(file, backed=backed)
    if found.format == "mtx":
        return _open_mtx(file)
    if found.format == "loom":
        return _open_loom(file)
    return _open_table(file, found.format, orientation=orientation, resolver=resolver)
