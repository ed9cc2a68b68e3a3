"""One stream of expression chunks, for reference and query alike: read, check, normalise, embed.

Every pass over a data set's cells goes through :class:`ExpressionStream`. Rows come in chunks
of the source (a backed file is never loaded whole); each raw block is checked
(:func:`~screader_db.inputs.check_values`), brought from its input scale (decided once, by
:func:`~screader_db.inputs.input_scale_of`) to log1p(counts per 10,000) over the plan's genes, and
handed on in row order. :class:`GeneMoments` is the one place per-gene moments of a stream are
summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.errors import ScreaderError
from screader_db.inputs import CHUNK, ExpressionSource, GenePlan, check_values, normalise, unlog
from screader_db.progress import SILENT, Reporter

# Stored values (about 8 bytes each) a small stream keeps in memory between passes.
HELD_VALUES = 25_000_000


@dataclass(frozen=True)
class ExpressionStream:
    """The cells of a source as log-normalised row chunks over a plan's genes.

    Parameters
    ----------
    source : ExpressionSource
        The matrix the rows are read from (all of it, or the rows it keeps).
    plan : GenePlan
        How input genes become the stream's columns.
    scale : str
        The scale of the source's values (:data:`screader_db.inputs.SCALES`), as
        :func:`screader_db.inputs.input_scale_of` told it.
    library : GenePlan or None
        Genes the library sizes are taken over (a panel); None takes every input gene.
    evidence : str
        Why the scale is what it is, in one line.
    """

    source: ExpressionSource
    plan: GenePlan
    scale: str
    library: GenePlan | None = None
    evidence: str = ""

    @property
    def n_cells(self) -> int:
        """Number of cells the stream yields."""
        return self.source.n_cells

    @property
    def genes(self) -> list[str]:
        """The stream's columns."""
        return self.plan.genes

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop``, checked and log-normalised.

        Parameters
        ----------
        start, stop : int
            Row positions in the stream.

        Returns
        -------
        scipy.sparse.csr_matrix
            float32 log1p(counts per 10,000), columns following :attr:`genes`.

        Raises
        ------
        InputDataError
            The rows hold NaN, infinite or negative values, or the matrix is damaged.
        """
        block = self.source.rows(start, stop)
        check_values(block, self.source.others)
        return normalise(block, self.scale, self.plan, library=self.library)

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Every cell, ``size`` rows at a time, in row order.

        Parameters
        ----------
        size : int
            Rows per chunk.

        Returns
        -------
        Iterator of (int, scipy.sparse.csr_matrix)
            The first row of each chunk and its rows (see :meth:`rows`).
        """
        for start in range(0, self.n_cells, size):
            yield start, self.rows(start, min(start + size, self.n_cells))

    def replayable(self, size: int = CHUNK, *, max_values: int = HELD_VALUES) -> Callable[[], Iterator[tuple[int, sp.csr_matrix]]]:
        """Passes over the stream that read and normalise it once when it is small.

        Parameters
        ----------
        size : int
            Rows per chunk.
        max_values : int
            Most stored values held in memory; a larger stream is read again on every pass.

        Returns
        -------
        callable
            Called with no argument, yields what :meth:`chunks` yields.
        """
        held: list[tuple[int, sp.csr_matrix]] = []
        values = 0
        for start, block in self.chunks(size):
            values += block.nnz
            if values > max_values:
                return lambda: self.chunks(size)
            held.append((start, block))
        return lambda: iter(held)

    def over(self, plan: GenePlan, *, library: GenePlan | None = None) -> ExpressionStream:
        """The same cells over other genes.

        Parameters
        ----------
        plan : GenePlan
            The new columns.
        library : GenePlan or None
            Genes the library sizes are taken over; None (also when this stream had some) takes
            every input gene.

        Returns
        -------
        ExpressionStream
        """
        return replace(self, plan=plan, library=library)

    def subset(self, keep: np.ndarray) -> ExpressionStream:
        """The same stream restricted to the rows ``keep`` (sorted positions in this stream).

        Parameters
        ----------
        keep : numpy.ndarray
            Sorted row positions.

        Returns
        -------
        ExpressionStream
        """
        return replace(self, source=self.source.subset(keep))

    def centre(self, embedder: Any, *, center: str | None = None, chunk: int = CHUNK,
               passes: Callable[[], Iterator[tuple[int, sp.csr_matrix]]] | None = None,
               fits: list[Any] | None = None) -> np.ndarray:
        """The vector the embedder centres these cells on (an extra pass when they centre themselves).

        Parameters
        ----------
        embedder : CellEmbedder
            The fitted embedder; its ``centre_mode`` decides the centring.
        center : str or None
            ``query``, ``balanced``, ``reference`` or ``auto``; None takes the embedder's own.
        chunk : int
            Rows per chunk.
        passes : callable or None
            Yields this stream's chunks on each call (:meth:`replayable`); None reads the stream.
        fits : list or None
            Receives how the cells' clusters matched the labels, when they were
            (:class:`screader_db.centring.OffsetFit`).

        Returns
        -------
        numpy.ndarray
            float32, one value per embedder gene.
        """
        from screader_db.centring import stream_centre

        mode = embedder.centre_mode(self.n_cells, center)
        return stream_centre(embedder, mode, passes or (lambda: self.chunks(chunk)), self.n_cells,
                             seed=int(embedder.params.get("seed", 0)), fits=fits)

    def embed(self, embedder: Any, *, mean: np.ndarray | None = None, center: str | None = None, chunk: int = CHUNK,
              description: str = "Embedding cells", reporter: Reporter = SILENT,
              fits: list[Any] | None = None,
              passes: Callable[[], Iterator[tuple[int, sp.csr_matrix]]] | None = None) -> np.ndarray:
        """Vectors of every cell, chunk by chunk.

        Parameters
        ----------
        embedder : CellEmbedder
            The fitted embedder; the stream's genes must be its genes.
        mean : numpy.ndarray or None
            The centring vector; None centres the way :meth:`centre` says.
        center : str or None
            Passed to :meth:`centre` when ``mean`` is None.
        chunk : int
            Rows per chunk.
        description : str
            The progress task's name.
        reporter : Reporter
            Receives the progress.
        fits : list or None
            Passed to :meth:`centre` when ``mean`` is None.
        passes : callable or None
            Yields this stream's chunks on each call (:meth:`replayable`), for a caller that reads them
            again; None reads the stream (held in memory when it is small and must be centred first).

        Returns
        -------
        numpy.ndarray
            float32, cells × ``embedder.dim``, in row order.

        Raises
        ------
        ScreaderError
            The stream's genes are not the embedder's.
        """
        if self.plan.genes != list(embedder.genes):
            message = (f"the expression has {len(self.plan.genes):,} columns but the embedder was fitted on "
                       f"{len(embedder.genes):,} other genes; map the cells onto the embedder's genes first")
            raise ScreaderError(message)
        if passes is None:
            passes = self.replayable(chunk) if mean is None else lambda: self.chunks(chunk)
        if mean is None:
            mean = self.centre(embedder, center=center, passes=passes, fits=fits)
        vectors = np.empty((self.n_cells, embedder.dim), dtype=np.float32)
        with reporter.task(description, self.n_cells, "cells") as advance:
            for start, block in passes():
                vectors[start : start + block.shape[0]] = embedder.transform(block, mean=mean)
                advance(block.shape[0])
        return vectors

    def moments(self, *, chunk: int = CHUNK, sum_dtype: Any = np.float64) -> GeneMoments:
        """Per-gene moments of the linear values over every cell (see :class:`GeneMoments`).

        Parameters
        ----------
        chunk : int
            Rows per chunk.
        sum_dtype : numpy dtype
            What each chunk's linear values are summed in (see :class:`GeneMoments`).

        Returns
        -------
        GeneMoments
        """
        found = GeneMoments(len(self.plan.genes), sum_dtype=sum_dtype)
        found.add_all(block for _, block in self.chunks(chunk))
        return found


@dataclass
class GeneMoments:
    """Per-gene sums of linear values (counts per 10,000), added block by block from log-normalised rows.

    Parameters
    ----------
    n_genes : int
        Columns of the blocks.
    sum_dtype : numpy dtype
        What each block's linear values are summed in before they join the float64 totals: the
        reference statistics use float32 and the novelty check float64, as atlases and calls were
        always made (squares are summed in float64 either way).

    Attributes
    ----------
    n_cells : int
        Rows added so far.
    linear_sum, linear_sumsq : numpy.ndarray
        float64 sums of the linear values and of their squares.
    detected : numpy.ndarray
        float64 count of stored (nonzero) values per gene.
    """

    n_genes: int
    sum_dtype: Any = np.float64
    n_cells: int = 0
    linear_sum: np.ndarray = field(init=False, repr=False)
    linear_sumsq: np.ndarray = field(init=False, repr=False)
    detected: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.linear_sum = np.zeros(self.n_genes)
        self.linear_sumsq = np.zeros(self.n_genes)
        self.detected = np.zeros(self.n_genes)

    def add(self, block: sp.csr_matrix) -> None:
        """Add the rows of one log-normalised block.

        Parameters
        ----------
        block : scipy.sparse.csr_matrix
            log1p(counts per 10,000), ``n_genes`` columns.
        """
        linear = block.copy()
        linear.data = unlog(linear.data, "ln").astype(self.sum_dtype, copy=False)
        self.linear_sum += np.asarray(linear.sum(axis=0)).ravel()
        linear.data = linear.data.astype(np.float64) ** 2
        self.linear_sumsq += np.asarray(linear.sum(axis=0)).ravel()
        self.detected += np.bincount(block.indices[: block.indptr[-1]], minlength=self.n_genes)
        self.n_cells += int(block.shape[0])

    def add_all(self, blocks: Iterable[sp.csr_matrix]) -> GeneMoments:
        """Add every block of ``blocks``.

        Parameters
        ----------
        blocks : iterable of scipy.sparse.csr_matrix
            Log-normalised blocks.

        Returns
        -------
        GeneMoments
            This object, for chaining.
        """
        for block in blocks:
            self.add(block)
        return self

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and unbiased variance of the linear values (variance clipped at 0).

        Returns
        -------
        tuple of numpy.ndarray
            (mean, variance), float64.
        """
        n = max(self.n_cells, 1)
        mean = self.linear_sum / n
        var = (self.linear_sumsq / n - mean**2) * n / max(n - 1, 1)
        return mean, np.maximum(var, 0.0)
