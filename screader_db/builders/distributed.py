"""The cell-embedding pass of a build fanned out over a Dask cluster, chunk by chunk.

Each task opens the reference file itself (so the file and the atlas folder must be on storage
every worker can read and write), embeds one chunk of cells with the fitted embedder, writes
that chunk as a Parquet part of the new version and returns the vectors. Chunks have the same
boundaries as in a single-machine build, so the vectors are byte-identical.

    screader-db build --reference ref.h5ad ... --dask local              # a LocalCluster here
    screader-db build --reference ref.h5ad ... --dask tcp://sched:8786   # an existing cluster
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from screader_db.builders.writer import CellSlice, cell_slice, write_part
from screader_db.errors import ScreaderError
from screader_db.expression_stream import ExpressionStream
from screader_db.extras import require
from screader_db.inputs import GenePlan, open_expression, read_h5ad
from screader_db.progress import SILENT, Reporter

DASK = "building with --dask"


@dataclass
class PartTask:
    """Everything one worker needs to embed and write one chunk (all picklable).

    Parameters
    ----------
    path, layer, use_raw, gene_key
        The reference .h5ad and where its expression is read.
    rows
        The chunk's rows in the file.
    kind
        The reference's input scale.
    plan
        How the file's genes map onto the atlas genes.
    embedder, mean
        The fitted cell embedder and its centring vector.
    cells, ids
        The chunk's cell records and atlas cell ids.
    folder, provenance, number
        Where the part is written, what it records, and its number.
    """

    path: str
    layer: str | None
    use_raw: bool
    gene_key: str | None
    rows: np.ndarray
    kind: str
    plan: GenePlan
    embedder: Any
    mean: np.ndarray
    cells: CellSlice
    ids: np.ndarray
    folder: str
    provenance: str
    number: int


def embed_part(task: PartTask) -> tuple[int, np.ndarray]:
    """Run on a worker: read the chunk's rows, normalise, embed and write the part.

    Parameters
    ----------
    task
        The chunk.

    Returns
    -------
    number : int
        The part's number.
    vectors : numpy.ndarray
        The chunk's cell vectors.
    """
    adata = read_h5ad(task.path, backed=True)
    try:
        full = open_expression(adata, layer=task.layer, use_raw=task.use_raw, gene_key=task.gene_key)
        block = ExpressionStream(full.subset(task.rows), task.plan, task.kind).rows(0, len(task.rows))
    finally:
        if getattr(adata, "file", None) is not None:
            adata.file.close()
    vectors = task.embedder.transform(block, mean=task.mean)
    write_part(Path(task.folder), task.cells, task.ids, vectors, task.provenance, task.number)
    return task.number, vectors


@contextmanager
def connect(address: str, *, n_workers: int = 2) -> Iterator[Any]:
    """A Dask client, closed (with its local cluster) on leaving.

    Parameters
    ----------
    address
        ``local`` starts a LocalCluster of ``n_workers`` processes; else a scheduler address.
    n_workers
        Worker processes of a local cluster.

    Yields
    ------
    distributed.Client

    Raises
    ------
    MissingExtraError
        When dask.distributed (the ``dask`` extra) is not installed.
    ScreaderError
        When the scheduler cannot be reached.
    """
    distributed = require("dask.distributed", extra="dask", purpose=DASK)
    if address == "local":
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    else:
        try:
            client = distributed.Client(address, timeout="20s")
        except (OSError, TimeoutError) as err:
            message = f"cannot reach the Dask scheduler at {address}: {err}"
            raise ScreaderError(message) from err
        try:
            yield client
        finally:
            client.close()


def embed_with_dask(ref: Any, *, address: str, path: str, layer: str | None, use_raw: bool, gene_key: str | None,
                    embedder: Any, mean: np.ndarray, ids: np.ndarray, folder: Path, provenance: str, chunk: int,
                    reporter: Reporter = SILENT) -> np.ndarray:
    """Vectors of every cell of a reference, computed and written as parts by Dask workers.

    Chunks have the same boundaries as in a single-machine build, so the vectors are byte-identical.

    Parameters
    ----------
    ref
        The opened reference.
    address
        ``local`` or a Dask scheduler address.
    path, layer, use_raw, gene_key
        The reference .h5ad (readable by every worker) and where its expression is read.
    embedder, mean
        The fitted cell embedder and its centring vector.
    ids
        The atlas cell ids of the reference's cells.
    folder
        The draft version's folder (writable by every worker).
    provenance
        What every part records (JSON).
    chunk
        Cells per task.
    reporter
        Progress reporting.

    Returns
    -------
    numpy.ndarray
        Cells × dim float32 vectors, in the reference's order.

    Raises
    ------
    MissingExtraError
        When dask.distributed (the ``dask`` extra) is not installed.
    """
    as_completed = require("dask.distributed", extra="dask", purpose=DASK).as_completed
    plan = ref.plan(embedder.genes)
    keep = ref.source.keep if ref.source.keep is not None else np.arange(ref.n_cells)
    tasks = []
    for number, start in enumerate(range(0, ref.n_cells, chunk)):
        stop = min(start + chunk, ref.n_cells)
        tasks.append(PartTask(path=path, layer=layer, use_raw=use_raw, gene_key=gene_key, rows=keep[start:stop],
                              kind=ref.kind, plan=plan, embedder=embedder, mean=mean, cells=cell_slice(ref, start, stop),
                              ids=ids[start:stop], folder=str(folder), provenance=provenance, number=number))
    vectors = np.empty((ref.n_cells, embedder.dim), dtype=np.float32)
    with connect(address) as client, reporter.task(f"Embedding {ref.name} on Dask", ref.n_cells, "cells") as advance:
        futures = client.map(embed_part, tasks, pure=False)
        for future in as_completed(futures):
            number, block = future.result()
            start = number * chunk
            vectors[start : start + len(block)] = block
            advance(len(block))
    return vectors
