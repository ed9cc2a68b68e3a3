"""The atlas on disk: immutable versions of Parquet files, a DuckDB catalogue and a FAISS index.

Every file, schema, metadata key and format version is written down in ``docs/FORMAT.md`` and
owned by :mod:`screader_db.atlas_format`. In short::

    ATLAS/
      current -> versions/000003        the one pointer, switched atomically by rename
      atlas.duckdb -> current/atlas.duckdb
      .lock                             the writer lock (readers never take it)
      .tmp/                             readers' scratch: the verified-files cache, `sql` spill folders
      versions/000003/
        VERSION.json                    layout format, file format versions, provenance, history,
                                        data sets, index description, every file's sha256
        cells/<dataset>/part-NNNNN.parquet  cell_id, dataset, barcode, label, label_harmonised,
                                        ontology_id, metadata (JSON), embedding
        genes.parquet                   the genes cells are embedded over, with their reference means
        gene_embeddings.parquet         the gene vectors the embedder was fitted with (text methods)
        embedder.safetensors            the fitted cell embedding method
        index.faiss, index.faiss.json   FAISS index whose ids are the cell ids, and its sidecar
        label_profiles.parquet          mean expression per label, novelty and score calibration
        layout.parquet                  the reference map (not with --layout none)
        expression/<dataset>/part-NNNNN.parquet  the reference expression, for panel re-fits
                                        (not with --no-keep-expression)
        atlas.duckdb                    catalogue: builds, datasets, cells, genes, gene_embeddings,
                                        files, provenance
        panels/<key>/                   panel indexes added later by queries (see builders/panel.py)

A writer builds the next version in a temporary folder, then renames it into ``versions/`` and
only then moves the ``current`` pointer, so a crash at any point leaves the last complete
version in place and readers, who never lock, never see a partial one. Files of earlier format
versions are upgraded as they are read (:mod:`screader_db.atlas_format`).

A version's files are checked against the sha256 its ``VERSION.json`` records when it is first
opened in a process (see :mod:`screader_db.integrity`). An opened :class:`Atlas` is shared by
threads: each heavy part is read once, under the atlas's lock, and published only when finished
(a cell table's index with its hash table built), so readers see nothing half-made and never
make pandas build its lazy index structures from several threads at once.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db import atlas_format
from screader_db.atlas_format import CATALOGUE, CURRENT, ID_SHIFT, LOCK, TMP, VERSIONS, version_name
from screader_db.errors import AtlasError, ModelMismatchError
from screader_db.integrity import reading, verify_version

# obs columns of a reference that name the donor a cell came from, the first present one wins
# (the cells' ``metadata`` keeps every obs column but the label; see builders/writer.py).
DONOR_KEYS = ("donor", "donor_id", "individual", "ind", "patient", "subject", "sample", "batch")


def cell_ids(dataset_id: int, n: int) -> np.ndarray:
    """Stable int64 cell ids of a data set: its id in the high bits, the row in the low bits.

    Parameters
    ----------
    dataset_id
        The data set's id in the atlas.
    n
        How many cells it has.

    Returns
    -------
    numpy.ndarray
        ``n`` int64 ids, in row order.
    """
    return (np.int64(dataset_id) << ID_SHIFT) + np.arange(n, dtype=np.int64)


def dataset_of(ids: np.ndarray) -> np.ndarray:
    """The data set id of each cell id.

    Parameters
    ----------
    ids
        Cell ids.

    Returns
    -------
    numpy.ndarray
        int64 data set ids, in the shape of ``ids``.
    """
    return np.asarray(ids, dtype=np.int64) >> ID_SHIFT


def temp_area(path: str | Path) -> Path:
    """The atlas's scratch folder for readers (not created here).

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    Path
        ``ATLAS/.tmp``.
    """
    return Path(path) / TMP


def is_atlas(path: str | Path) -> bool:
    """Whether a folder holds an atlas (a pointer or a versions folder).

    Parameters
    ----------
    path
        The folder.

    Returns
    -------
    bool
        True for an atlas, even one whose first build failed.
    """
    return (Path(path) / CURRENT).exists() or (Path(path) / VERSIONS).is_dir()


def list_versions(path: str | Path) -> list[int]:
    """The complete versions of an atlas.

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    list of int
        Version numbers with a ``VERSION.json``, ascending (empty for a folder without versions).
    """
    folder = Path(path) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / atlas_format.VERSION_FILE).is_file())


def current_version(path: str | Path) -> int:
    """The version the atlas's ``current`` pointer names.

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    int
        The version number.

    Raises
    ------
    AtlasError
        The folder does not exist or holds no atlas.
    """
    root = Path(path)
    pointer = root / CURRENT
    if not pointer.is_symlink() and not pointer.exists():
        if not root.exists():
            message = f"no atlas at {root}: the folder does not exist. Build one with `screader-db build --reference ...`"
        else:
            message = f"{root} is not a screader-db atlas (no '{CURRENT}' pointer); build one with `screader-db build`"
        raise AtlasError(message)
    return int(Path(os.readlink(pointer)).name)


def _settled(index: pd.Index) -> pd.Index:
    """``index`` with pandas's lazy lookup structures built now, in this one thread: its hash table
    (``get_indexer``), uniqueness and monotonicity. Built lazily by several threads at once, the
    hash table can be seen half-filled ("cannot reindex on an axis with duplicate labels")."""
    if len(index):
        index.get_indexer(index[:1])
    _ = index.is_unique, index.is_monotonic_increasing, index.inferred_type
    return index


@dataclass
class Atlas:
    """One version of an atlas, opened for reading (use :func:`open_atlas`). Heavy parts load on
    first use, once, under a lock, and are shared read-only by every thread that uses the atlas.

    Parameters
    ----------
    root
        The atlas folder.
    version
        The version number.
    info
        Its ``VERSION.json``, upgraded to the current version.
    panels
        The panel indexes opened so far, by gene panel (see :mod:`screader_db.builders.panel`).
    """

    root: Path
    version: int
    info: dict[str, Any]
    _cells: pd.DataFrame | None = field(default=None, repr=False)
    _embedder: Any = field(default=None, repr=False)
    _index: Any = field(default=None, repr=False)
    _layout: Any = field(default=None, repr=False)  # the map, False when absent, None unread
    _profiles: Any = field(default=None, repr=False)  # (profiles, calibration), False when absent, None unread
    _expression_genes: dict[tuple[str, ...] | None, list[str]] = field(default_factory=dict, repr=False)
    _per_label: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict, repr=False)
    _labels: dict[str, list[str]] = field(default_factory=dict, repr=False)
    panels: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)  # panel indexes opened so far
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def path(self) -> Path:
        """The version's folder, ``ATLAS/versions/NNNNNN``."""
        return self.root / VERSIONS / version_name(self.version)

    @property
    def model_id(self) -> str:
        """The gene-embedding model the atlas was built with."""
        return str(self.info["provenance"]["model_id"])

    @property
    def provenance(self) -> dict[str, Any]:
        """A copy of the atlas's provenance (model, method, parameters, package versions)."""
        return dict(self.info["provenance"])

    @property
    def datasets(self) -> list[dict[str, Any]]:
        """The version's data sets, as ``VERSION.json`` lists them."""
        return list(self.info.get("datasets", []))

    def cells(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Cell rows (no vectors, no metadata) of every data set, read once.

        Parameters
        ----------
        columns
            The columns wanted (all when None).

        Returns
        -------
        pandas.DataFrame
            Indexed by cell id: dataset, barcode, label, label_harmonised, ontology_id, whatever
            version the cells files are.

        Raises
        ------
        AtlasError
            The version has no cells.
        AtlasDamagedError
            A cells file cannot be read.
        """
        found = self._cells
        if found is None:
            with self._lock:
                if self._cells is None:
                    self._cells = self._read_cells()
                found = self._cells
        return found if columns is None else found[columns]

    def label_terms(self, column: str) -> dict[str, str]:
        """Each label of a level and its Cell Ontology id, worked out once per opened atlas.

        Parameters
        ----------
        column
            The level's column of :meth:`cells`.

        Returns
        -------
        dict
            Label -> the most common ``ontology_id`` of its cells (:func:`screader_db.label_families.label_terms`;
            "" where they have none); empty when the cells have no ``ontology_id``.
        """
        from screader_db.label_families import label_terms

        return self._of_labels(column, "ontology_id", label_terms)

    def label_classes(self, column: str) -> dict[str, str]:
        """Each label of a level and its broad class, worked out once per opened atlas.

        Parameters
        ----------
        column
            The level's column of :meth:`cells`.

        Returns
        -------
        dict
            Label -> the most common ``label_broad`` of its cells (:func:`screader_db.label_families.most_common`;
            each broad class itself at the broad level); empty when the cells have no ``label_broad``.
        """
        from screader_db.label_families import most_common

        def broad(cells: pd.DataFrame, level: str, labels: list[str]) -> list[str]:
            if level == "label_broad":
                return list(labels)
            return [found or "" for found in most_common(cells, level, "label_broad", labels)]

        return self._of_labels(column, "label_broad", broad)

    def labels(self, column: str) -> list[str]:
        """The labels of a level, sorted, worked out once per opened atlas.

        Parameters
        ----------
        column
            The level's column of :meth:`cells`.

        Returns
        -------
        list of str
        """
        with self._lock:
            if column not in self._labels:
                self._labels[column] = sorted(self.cells([column])[column].astype(str).unique())
            return self._labels[column]

    def _of_labels(self, column: str, values: str,
                   compute: Callable[[pd.DataFrame, str, list[str]], list[str]]) -> dict[str, str]:
        """Label -> ``compute(cells, column, labels)`` over every atlas cell, cached per (column, values)."""
        with self._lock:
            if (column, values) not in self._per_label:
                cells = self.cells()
                found: dict[str, str] = {}
                if values in cells.columns:
                    labels = self.labels(column)
                    found = dict(zip(labels, compute(cells[list(dict.fromkeys([column, values]))], column, labels),
                                     strict=True))
                self._per_label[(column, values)] = found
            return self._per_label[(column, values)]

    def _read_cells(self) -> pd.DataFrame:
        frames = []
        for part in self.cell_parts():
            with reading(part, "cells"):
                frames.append(atlas_format.read_cells(part))
        if not frames:
            raise AtlasError(f"atlas version {self.path} has no cells")
        cells = pd.concat(frames, ignore_index=True).set_index("cell_id")
        _settled(cells.index)
        return cells

    @property
    def loaded(self) -> bool:
        """Whether the cells, the embedder and the index have been read (by :meth:`load` or on first use)."""
        return self._cells is not None and self._embedder is not None and self._index is not None

    def load(self) -> Atlas:
        """Read every part a query uses now (cells, map, embedder, index, label profiles), so that
        damage shows at once and the first queries do not wait for it.

        Returns
        -------
        Atlas
            This atlas.

        Raises
        ------
        AtlasDamagedError
            A file cannot be read.
        """
        self.cells()
        self.layout()
        self.embedder  # noqa: B018 - properties that load on first access
        self.index  # noqa: B018
        self.profiles()
        return self

    def cell_metadata(self, ids: Any) -> pd.DataFrame:
        """The reference's own obs columns of some cells. Only the parts whose cell-id range holds
        a wanted id are read, and only the wanted rows of them.

        Parameters
        ----------
        ids
            Cell ids, any shape; negative ids (no neighbour) are skipped.

        Returns
        -------
        pandas.DataFrame
            One row per distinct id found, indexed by cell id: ``metadata`` (a dict of the stored
            values) and ``donor`` (the value of the first of :data:`DONOR_KEYS` recorded, else "").
        """
        import pyarrow.parquet as pq

        wanted = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        wanted = wanted[wanted >= 0]
        found: dict[int, dict[str, Any]] = {}
        for part in self.cell_parts() if len(wanted) else []:
            with reading(part, "cells"):
                file = pq.ParquetFile(part)
                if "metadata" not in file.schema_arrow.names:
                    continue
                low, high = _id_range(file)
                inside = wanted[(wanted >= low) & (wanted <= high)]
                if not len(inside):
                    continue
                table = pq.read_table(part, columns=["cell_id", "metadata"], filters=[("cell_id", "in", inside.tolist())])
                for cell, text in zip(table.column("cell_id").to_pylist(), table.column("metadata").to_pylist(),
                                      strict=True):
                    found[int(cell)] = json.loads(text) if text else {}
        frame = pd.DataFrame({"metadata": pd.Series(found, dtype=object)})
        frame["donor"] = [donor_of(meta) for meta in frame["metadata"]]
        frame.index = frame.index.astype(np.int64).rename("cell_id")
        return frame

    def cell_parts(self) -> list[Path]:
        """The version's cells files, of every format version, in path order.

        Returns
        -------
        list of Path
            ``cells/<dataset>/part-NNNNN.parquet`` (and ``cells/<dataset>.parquet`` in old atlases).
        """
        return sorted((self.path / atlas_format.CELLS).rglob("*.parquet"))

    def _vector_column(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        import pyarrow.parquet as pq

        ids, blocks = [], []
        for part in self.cell_parts():
            with reading(part, "cells"):
                if name not in pq.read_schema(part).names:
                    return None
                table = pq.read_table(part, columns=["cell_id", name])
                column = table.column(name).combine_chunks()
                ids.append(table.column("cell_id").to_numpy())
                blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size))
        if not ids:
            return None
        return np.concatenate(ids), np.concatenate(blocks).astype(np.float32)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The cell vectors of every data set, as the index holds them.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            Cell ids and unit-length float32 vectors, one row per id.

        Raises
        ------
        AtlasError
            The version has no cell vectors.
        """
        found = self._vector_column("embedding")
        if found is None:
            raise AtlasError(f"atlas version {self.path} has no cell embeddings")
        return found

    def layout(self) -> pd.DataFrame | None:
        """The reference cells' 2-D map, if the atlas has one (read once).

        Returns
        -------
        pandas.DataFrame or None
            Columns x, y, indexed by cell id: ``layout.parquet``, or the map column of version 2
            cells files.
        """
        found = self._layout
        if found is None:
            with self._lock:
                if self._layout is None:
                    frame = self._read_layout()
                    self._layout = False if frame is None else frame
                found = self._layout
        return None if found is False else found

    def _read_layout(self) -> pd.DataFrame | None:
        path = self.path / atlas_format.LAYOUT
        if path.is_file():
            with reading(path, "the reference map"):
                frame = atlas_format.read_layout(path)
        else:
            column = self._vector_column(atlas_format.CELLS_V2_MAP)
            if column is None:
                return None
            frame = atlas_format.layout_from_cells(*column)
        _settled(frame.index)
        return frame

    def expression_genes(self, datasets: list[str] | None = None) -> list[str]:
        """The genes of the reference expression the atlas keeps (read once per data set selection).

        Parameters
        ----------
        datasets
            Data set names (all when None).

        Returns
        -------
        list of str
            The genes; empty for atlases that keep no expression.
        """
        key = None if datasets is None else tuple(sorted(datasets))
        if key not in self._expression_genes:
            from screader_db.stored_expression import StoredExpression

            with self._lock:
                if key not in self._expression_genes:
                    self._expression_genes[key] = StoredExpression(self.path, datasets=datasets).genes()
        return self._expression_genes[key]

    @property
    def embedder(self) -> Any:
        """The version's fitted :class:`~screader_db.cell_embedding.CellEmbedder` (read on first use)."""
        if self._embedder is None:
            from screader_db.cell_embedding import CellEmbedder

            path = self.path / atlas_format.EMBEDDER
            with self._lock:
                if self._embedder is None:
                    with reading(path, "the cell embedder"):
                        self._embedder = CellEmbedder.load(path)
        return self._embedder

    @property
    def index(self) -> Any:
        """The version's :class:`~screader_db.index.CellIndex` (read on first use)."""
        if self._index is None:
            from screader_db.index import CellIndex

            path = self.path / atlas_format.INDEX
            with self._lock:
                if self._index is None:
                    with reading(path, "the FAISS index"):
                        self._index = CellIndex.load(path)
        return self._index

    def profiles(self) -> tuple[Any, dict[str, Any]] | None:
        """Reference label profiles and the novelty calibration, if the atlas has them (read once).

        Returns
        -------
        (LabelProfiles, dict) or None
            As :func:`screader_db.atlas_format.read_label_profiles` reads them.
        """
        if self._profiles is None:
            with self._lock:
                if self._profiles is None:
                    self._profiles = self._read_profiles() or False
        return self._profiles or None

    def _read_profiles(self) -> tuple[Any, dict[str, Any]] | None:
        path = self.path / atlas_format.LABEL_PROFILES
        if not path.is_file():
            return None
        with reading(path, "the label profiles"):
            return atlas_format.read_label_profiles(path)

    def annotation_defaults(self) -> dict[str, Any]:
        """The k, vote power, propagation and score cut-off the atlas was built to be queried with.

        Returns
        -------
        dict
            As :func:`screader_db.atlas_format.annotation_defaults` gives them.
        """
        found = self.profiles()
        return atlas_format.annotation_defaults(self.provenance.get("parameters", {}), None if found is None else found[1])

    def search(self, *, cells: Any = None, ids: Any = None, centroid_of: Any = None, signature: Any = None,
               options: Any = None, **flat_options: Any) -> Any:
        """The cells of this version most like a query (:func:`screader_db.cell_search.search`).

        Parameters
        ----------
        cells, ids, centroid_of, signature
            The query, exactly one: query cells (AnnData or .h5ad path), atlas cell ids, the
            centroid of atlas cells (ids or a label), or a gene signature.
        options : SearchOptions or None
            The options; None: every default.
        **flat_options
            Options by their flat names (``k=50``, ``where="label = 'B'"``), and ``reporter``.

        Returns
        -------
        SearchResult
            The hits of every query and what was searched.
        """
        from screader_db.cell_search import search

        return search(self, cells=cells, ids=ids, centroid_of=centroid_of, signature=signature, options=options,
                      **flat_options)

    def check_model(self, model_id: str | None) -> None:
        """Refuse when the caller expects another gene-embedding model than the atlas's.

        Parameters
        ----------
        model_id
            The model the caller expects (its id or the name it was built with); None accepts any.

        Returns
        -------
        None

        Raises
        ------
        ModelMismatchError
            The atlas was built with another model.
        """
        if model_id and model_id not in (self.model_id, self.provenance.get("model_spec")):
            message = (
                f"the atlas at {self.root} was built with gene-embedding model {self.model_id!r}, "
                f"not {model_id!r}; query with the atlas's own model or rebuild the atlas with --model {model_id}"
            )
            raise ModelMismatchError(message)


def _id_range(file: Any) -> tuple[int, int]:
    """The smallest and largest cell id of a cells Parquet file, from its row-group statistics."""
    column = file.schema_arrow.get_field_index("cell_id")
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for group in range(file.metadata.num_row_groups):
        stats = file.metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return np.iinfo(np.int64).min, np.iinfo(np.int64).max
        low, high = min(low, int(stats.min)), max(high, int(stats.max))
    return low, high


def donor_of(metadata: dict[str, Any]) -> str:
    """The donor a reference cell came from.

    Parameters
    ----------
    metadata
        The cell's obs values, as :meth:`Atlas.cell_metadata` returns them.

    Returns
    -------
    str
        The value of the first of :data:`DONOR_KEYS` (any case) with a value, else "".
    """
    lowered = {str(key).lower(): value for key, value in metadata.items()}
    for key in DONOR_KEYS:
        value = str(lowered.get(key, "")).strip()
        if value and value.lower() not in ("nan", "none"):
            return value
    return ""


def open_atlas(path: str | Path, *, version: int | None = None, verify: bool = True) -> Atlas:
    """Open one version of an atlas for reading; atlases written by every earlier screader-db open.

    Parameters
    ----------
    path
        The atlas folder.
    version
        The version to open (the current one when None).
    verify
        Check every file of the version against the sha256 its ``VERSION.json`` records, the
        first time this process opens it (see :mod:`screader_db.integrity`).

    Returns
    -------
    Atlas
        The opened version; its parts are read on first use.

    Raises
    ------
    AtlasError
        No atlas or no such version, or a ``VERSION.json`` that is unreadable, of another layout
        or from a newer screader-db.
    AtlasDamagedError
        With ``verify``: a file is missing, changed or unlisted.
    """
    root = Path(path)
    number = current_version(root) if version is None else version
    folder = root / VERSIONS / version_name(number)
    if not (folder / atlas_format.VERSION_FILE).is_file():
        known = ", ".join(map(str, list_versions(root))) or "none"
        message = f"atlas {root} has no version {number}; versions present: {known}"
        raise AtlasError(message)
    info = atlas_format.read_version_info(folder)
    if verify:
        verify_version(folder, dict(info.get("files", {})), cache_dir=temp_area(root))
    return Atlas(root=root, version=number, info=info)


def version_history(path: str | Path) -> list[dict[str, Any]]:
    """One row per version on disk.

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    list of dict
        ``version``, ``created_at``, ``action`` (the change that made it), ``change`` (its kind,
        :func:`change_of`), ``reason`` (why a refit was made, else ""), ``datasets`` and ``n_cells``.
    """
    rows = []
    for number in list_versions(path):
        text = (Path(path) / VERSIONS / version_name(number) / atlas_format.VERSION_FILE).read_text()
        meta = atlas_format.upgrade_version_info(json.loads(text))
        step = meta.get("last_step", {})
        rows.append({"version": number, "created_at": meta.get("created_at", ""), "action": step.get("action", "build"),
                     "change": change_of(step), "reason": str(step.get("reason", "")),
                     "datasets": len(meta.get("datasets", [])), "n_cells": int(meta.get("n_cells", 0))})
    return rows


def change_of(step: dict[str, Any]) -> str:
    """The kind of change a history step made: one of :data:`screader_db.atlas_format.CHANGES`.

    Parameters
    ----------
    step
        A step of ``VERSION.json``'s ``history``; steps written before the kind was recorded
        give the first word of their ``action`` (``build``, ``add``, ``remove``).

    Returns
    -------
    str
    """
    return str(step.get("change") or str(step.get("action", "build")).split(" ")[0] or "build")


@contextmanager
def writer_lock(path: str | Path, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the atlas's writer lock (readers never lock).

    Parameters
    ----------
    path
        The atlas folder (created when missing).
    wait
        Seconds to wait for another writer.

    Returns
    -------
    Iterator[None]
        Yields once, with the lock held.

    Raises
    ------
    AtlasError
        Another process still holds the lock after ``wait`` seconds.
    """
    from filelock import FileLock, Timeout

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK), timeout=wait)
    try:
        lock.acquire()
    except Timeout as err:
        message = (
            f"another process is writing to the atlas at {root} (lock {root / LOCK}); wait for it to finish, "
            "or pass --wait SECONDS to wait for it"
        )
        raise AtlasError(message) from err
    try:
        yield
    finally:
        lock.release()


def next_version(path: str | Path) -> int:
    """The number the next version will get (call with the writer lock held).

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    int
        One more than the newest version, 1 for a new atlas.
    """
    return max(list_versions(path), default=0) + 1


def staging_dir(path: str | Path) -> Path:
    """A fresh temporary folder inside ``versions/`` for the next version.

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    Path
        The new, empty folder.
    """
    folder = Path(path) / VERSIONS
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{atlas_format.STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
    staging.mkdir()
    return staging


def publish(path: str | Path, staging: Path, number: int) -> int:
    """Move a finished staging folder into place as version ``number`` and point ``current`` at it.

    Parameters
    ----------
    path
        The atlas folder.
    staging
        The finished staging folder (its files are flushed to disk first).
    number
        The version number.

    Returns
    -------
    int
        ``number``.
    """
    root = Path(path)
    final = root / VERSIONS / version_name(number)
    _fsync_tree(staging)
    staging.rename(final)
    _point(root / CURRENT, Path(VERSIONS) / version_name(number))
    catalogue = root / CATALOGUE
    if not catalogue.is_symlink():
        _point(catalogue, Path(CURRENT) / CATALOGUE)
    return number


def collect_garbage(path: str | Path, *, keep: int, wait: float = 0.0) -> list[int]:
    """Delete all but the newest ``keep`` versions (never the current one).

    Parameters
    ----------
    path
        The atlas folder.
    keep
        How many of the newest versions to keep (at least 1).
    wait
        Seconds to wait for another writer's lock.

    Returns
    -------
    list of int
        The versions deleted.

    Raises
    ------
    AtlasError
        ``keep`` is below 1, or another writer holds the lock.
    """
    if keep < 1:
        raise AtlasError("--keep must be at least 1")
    root = Path(path)
    with writer_lock(root, wait=wait):
        current = current_version(root)
        versions = list_versions(root)
        kept = set(versions[-keep:]) | {current}
        doomed = [v for v in versions if v not in kept]
        for number in doomed:
            folder = root / VERSIONS / version_name(number)
            trash = folder.with_name(f"{atlas_format.TRASH_PREFIX}{folder.name}")
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        clean_staging(root)
    return doomed


def _point(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def discard(staging: Path) -> None:
    """Remove a staging folder that will not be published.

    Parameters
    ----------
    staging
        The folder.

    Returns
    -------
    None
    """
    shutil.rmtree(staging, ignore_errors=True)


def clean_staging(path: str | Path) -> None:
    """Remove staging and trash folders that a crashed writer left behind (call with the lock held).

    Parameters
    ----------
    path
        The atlas folder.

    Returns
    -------
    None
    """
    folder = Path(path) / VERSIONS
    if folder.is_dir():
        for leftover in [*folder.glob(f"{atlas_format.STAGING_PREFIX}*"), *folder.glob(f"{atlas_format.TRASH_PREFIX}*")]:
            shutil.rmtree(leftover, ignore_errors=True)
