"""The atlas on disk: immutable versions of Parquet files, a DuckDB catalogue and a FAISS index.

Layout::

    ATLAS/
      current -> versions/000003        the one pointer, switched atomically by rename
      atlas.duckdb -> current/atlas.duckdb
      versions/000003/
        VERSION.json                    version, parent, format, provenance, file checksums
        cells/<dataset>.parquet         cell_id, dataset, barcode, label, metadata, embedding
        genes.parquet                   atlas genes with their reference means and text sha256
        gene_embeddings.parquet         the gene vectors the embedder was fitted with
        embedder.safetensors            the fitted cell embedding method
        index.faiss (+ .json)           FAISS index whose ids are the cell ids
        expression/<dataset>/part-*.parquet   the reference expression, for panel re-fits
        panels/<key>/                   panel indexes added by queries (see builders/panel.py)
        atlas.duckdb                    catalogue: builds, datasets, cells, genes, files, provenance
      .tmp/                             readers' scratch: the verified-files cache, `sql` spill folders

A writer builds the next version in a temporary folder, then renames it into ``versions/`` and
only then moves the ``current`` pointer, so a crash at any point leaves the last complete
version in place and readers, who never lock, never see a partial one.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import AtlasError, ModelMismatchError
from screader_db.integrity import reading, verify_version

FORMAT = "screader-atlas-1"
CURRENT = "current"
VERSIONS = "versions"
CATALOGUE = "atlas.duckdb"
LOCK = ".lock"
TMP = ".tmp"
ID_SHIFT = 32
# obs columns of a reference that name the donor a cell came from, the first present one wins
# (the cells' ``metadata`` keeps every obs column but the label; see builders/writer.py).
DONOR_KEYS = ("donor", "donor_id", "individual", "ind", "patient", "subject", "sample", "batch")


def cell_ids(dataset_id: int, n: int) -> np.ndarray:
    """Stable int64 ids: the dataset id in the high bits, the row in the low bits."""
    return (np.int64(dataset_id) << ID_SHIFT) + np.arange(n, dtype=np.int64)


def dataset_of(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64) >> ID_SHIFT


def version_name(number: int) -> str:
    return f"{number:06d}"


def temp_area(path: str | Path) -> Path:
    """The atlas's scratch folder for readers (not created here)."""
    return Path(path) / TMP


def is_atlas(path: str | Path) -> bool:
    return (Path(path) / CURRENT).exists() or (Path(path) / VERSIONS).is_dir()


def list_versions(path: str | Path) -> list[int]:
    folder = Path(path) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "VERSION.json").is_file())


def current_version(path: str | Path) -> int:
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
    """One version of an atlas, opened for reading. Heavy parts load on first use, once, under a
    lock, and are shared read-only by every thread that uses the atlas."""

    root: Path
    version: int
    info: dict[str, Any]
    _cells: pd.DataFrame | None = field(default=None, repr=False)
    _embedder: Any = field(default=None, repr=False)
    _index: Any = field(default=None, repr=False)
    _layout: pd.DataFrame | None = field(default=None, repr=False)
    _profiles: Any = field(default=None, repr=False)  # (profiles, calibration), False when absent, None unread
    _expression_genes: dict[tuple[str, ...] | None, list[str]] = field(default_factory=dict, repr=False)
    panels: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)  # panel indexes opened so far
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.root / VERSIONS / version_name(self.version)

    @property
    def model_id(self) -> str:
        return str(self.info["provenance"]["model_id"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.info["provenance"])

    @property
    def datasets(self) -> list[dict[str, Any]]:
        return list(self.info.get("datasets", []))

    def cells(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Cell metadata (no embeddings) of every dataset, indexed by cell id."""
        found = self._cells
        if found is None:
            with self._lock:
                if self._cells is None:
                    self._cells = self._read_cells()
                found = self._cells
        return found if columns is None else found[columns]

    def _read_cells(self) -> pd.DataFrame:
        import pyarrow.parquet as pq

        wanted = ["cell_id", "dataset", "barcode", "label", "label_harmonised", "ontology_id"]
        frames = []
        for part in self.cell_parts():
            with reading(part, "cells"):
                present = set(pq.read_schema(part).names)
                frame = pq.read_table(part, columns=[c for c in wanted if c in present]).to_pandas()
            if "label_harmonised" not in frame:
                frame["label_harmonised"] = frame["label"]
            if "ontology_id" not in frame:
                frame["ontology_id"] = ""
            frames.append(frame)
        if not frames:
            raise AtlasError(f"atlas version {self.path} has no cells")
        cells = pd.concat(frames, ignore_index=True).set_index("cell_id")
        _settled(cells.index)
        return cells

    def load(self) -> Atlas:
        """Read every part a query uses now (cells, map, embedder, index, label profiles), so that
        damage shows at once and the first queries do not wait for it."""
        self.cells()
        self.layout()
        self.embedder  # noqa: B018 - properties that load on first access
        self.index  # noqa: B018
        self.profiles()
        return self

    def cell_metadata(self, ids: Any) -> pd.DataFrame:
        """The reference's own obs columns of the cells ``ids`` (index: cell id, one row per distinct
        id found): ``metadata`` (a dict of the stored values) and ``donor`` (the value of the first
        of :data:`DONOR_KEYS` the data set recorded, else ""). Only the parts whose cell-id range holds
        a wanted id are read, and only the wanted rows of them."""
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
        return sorted((self.path / "cells").rglob("*.parquet"))

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
        """(cell ids, unit-length cell vectors) of every dataset."""
        found = self._vector_column("embedding")
        if found is None:
            raise AtlasError(f"atlas version {self.path} has no cell embeddings")
        return found

    def layout(self) -> pd.DataFrame | None:
        """The reference cells' 2-D map (columns x, y; index cell id), if the atlas has one."""
        if self._layout is None:
            path = self.path / "layout.parquet"
            if not path.is_file():
                return None
            import pyarrow.parquet as pq

            with self._lock:
                if self._layout is None:
                    with reading(path, "the reference map"):
                        frame = pq.read_table(path).to_pandas().set_index("cell_id")
                    _settled(frame.index)
                    self._layout = frame
        return self._layout

    def expression_genes(self, datasets: list[str] | None = None) -> list[str]:
        """The genes of the reference expression the atlas keeps for all (or the named) data sets;
        empty for atlases that keep none."""
        key = None if datasets is None else tuple(sorted(datasets))
        if key not in self._expression_genes:
            from screader_db.stored_expression import StoredExpression

            with self._lock:
                if key not in self._expression_genes:
                    self._expression_genes[key] = StoredExpression(self.path, datasets=datasets).genes()
        return self._expression_genes[key]

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from screader_db.cell_embedding import CellEmbedder

            path = self.path / "embedder.safetensors"
            with self._lock:
                if self._embedder is None:
                    with reading(path, "the cell embedder"):
                        self._embedder = CellEmbedder.load(path)
        return self._embedder

    @property
    def index(self) -> Any:
        if self._index is None:
            from screader_db.index import load_index

            path = self.path / "index.faiss"
            with self._lock:
                if self._index is None:
                    with reading(path, "the FAISS index"):
                        self._index, _ = load_index(path)
        return self._index

    def profiles(self) -> tuple[Any, dict[str, Any]] | None:
        """Reference label profiles and the novelty calibration, if the atlas has them (read once)."""
        if self._profiles is None:
            with self._lock:
                if self._profiles is None:
                    self._profiles = self._read_profiles() or False
        return self._profiles or None

    def _read_profiles(self) -> tuple[Any, dict[str, Any]] | None:
        path = self.path / "label_profiles.parquet"
        if not path.is_file():
            return None
        import pyarrow.parquet as pq

        from screader_db.novelty import LabelProfiles

        with reading(path, "the label profiles"):
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            column = table.column("profile").combine_chunks()
            means = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
            profiles = LabelProfiles(labels=table.column("label").to_pylist(), genes=json.loads(meta[b"screader_db.genes"]),
                                     means=means.astype(np.float64), counts=table.column("n_cells").to_numpy(),
                                     datasets=table.column("dataset").to_pylist())
            return profiles, json.loads(meta.get(b"screader_db.novelty", b"{}"))

    def annotation_defaults(self) -> dict[str, Any]:
        """k, vote power and propagation the atlas was built to be queried with."""
        from screader_db.vote import DEFAULT_POWER, DEFAULT_PROPAGATION

        stored = self.provenance.get("parameters", {})
        found = self.profiles()
        scores = found[1].get("scores", {}) if found is not None else {}
        return {"k": int(stored.get("k", 15)), "power": float(stored.get("vote_power", DEFAULT_POWER)),
                "propagation": float(stored.get("propagation", DEFAULT_PROPAGATION)),
                "min_score": float(scores.get("min_score", 0.0)), "scores": scores}

    def check_model(self, model_id: str | None) -> None:
        """Refuse when the caller expects another gene-embedding model than the atlas's."""
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
    """The donor a reference cell came from: the first of :data:`DONOR_KEYS` (any case) with a value, else ""."""
    lowered = {str(key).lower(): value for key, value in metadata.items()}
    for key in DONOR_KEYS:
        value = str(lowered.get(key, "")).strip()
        if value and value.lower() not in ("nan", "none"):
            return value
    return ""


def open_atlas(path: str | Path, *, version: int | None = None, verify: bool = True) -> Atlas:
    """Open an atlas (its current version unless ``version`` is given) for reading.

    With ``verify`` (the default) every file of the version is checked against the sha256 its
    ``VERSION.json`` records, the first time this process opens it (see
    :mod:`screader_db.integrity`); a damaged or changed file is refused with an
    :class:`~screader_db.errors.AtlasDamagedError` naming it."""
    root = Path(path)
    number = current_version(root) if version is None else version
    folder = root / VERSIONS / version_name(number)
    meta_path = folder / "VERSION.json"
    if not meta_path.is_file():
        known = ", ".join(map(str, list_versions(root))) or "none"
        message = f"atlas {root} has no version {number}; versions present: {known}"
        raise AtlasError(message)
    try:
        info = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        message = f"cannot read {meta_path}: {err}"
        raise AtlasError(message) from err
    if info.get("format") != FORMAT:
        message = (
            f"the atlas at {root} has format {info.get('format')!r}; this screader-db reads {FORMAT!r}. "
            "Rebuild the atlas with this version of screader-db"
        )
        raise AtlasError(message)
    if verify:
        verify_version(folder, dict(info.get("files", {})), cache_dir=temp_area(root))
    return Atlas(root=root, version=number, info=info)


def version_history(path: str | Path) -> list[dict[str, Any]]:
    """One row per version on disk: number, time, the change that made it, data sets, cells."""
    rows = []
    for number in list_versions(path):
        meta = json.loads((Path(path) / VERSIONS / version_name(number) / "VERSION.json").read_text())
        step = meta.get("last_step", {})
        rows.append({"version": number, "created_at": meta.get("created_at", ""), "action": step.get("action", "build"),
                     "datasets": len(meta.get("datasets", [])), "n_cells": int(meta.get("n_cells", 0))})
    return rows


@contextmanager
def writer_lock(path: str | Path, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the atlas's writer lock; wait up to ``wait`` seconds for another writer (readers never lock)."""
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
    """The number the next version will get (call with the writer lock held)."""
    return max(list_versions(path), default=0) + 1


def staging_dir(path: str | Path) -> Path:
    """A fresh temporary folder inside ``versions/`` for the next version."""
    folder = Path(path) / VERSIONS
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{os.getpid()}-{time.time_ns()}"
    staging.mkdir()
    return staging


def publish(path: str | Path, staging: Path, number: int) -> int:
    """Move a finished staging folder into place as version ``number`` and point ``current`` at it."""
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
    """Delete all but the newest ``keep`` versions (never the current one); returns those deleted."""
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
            trash = folder.with_name(f".trash-{folder.name}")
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
    shutil.rmtree(staging, ignore_errors=True)


def clean_staging(path: str | Path) -> None:
    """Remove staging and trash folders that a crashed writer left behind (call with the lock held)."""
    folder = Path(path) / VERSIONS
    if folder.is_dir():
        for leftover in [*folder.glob(".staging-*"), *folder.glob(".trash-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
