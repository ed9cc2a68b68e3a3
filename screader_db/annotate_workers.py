"""Annotation in worker processes, so that a server answers on every core.

An annotation is mostly Python and numpy work that holds the interpreter lock, so threads of one
process take turns on one core. :class:`Workers` runs each call in one of ``n`` processes
(started fresh, not forked, so no thread or OpenMP state is copied), each keeping its own
:class:`~screader_db.atlas_cache.AtlasCache` of the atlas: a call names the atlas version the
server chose, and the worker opens and loads that version once. With ``n`` of 1 the call runs in
the calling thread, as before. Errors cross back with their type and message.

Each worker holds the atlas's loaded index and vectors, so memory grows with ``n`` by about the
size of the atlas version's index (:func:`auto_workers` keeps one process for large atlases).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from screader_db import store
from screader_db.atlas_cache import AtlasCache
from screader_db.errors import WorkerLostError

MAX_WORKERS = 8
# Above this many bytes of index per version, one process serves (each worker would hold a copy).
LARGE_INDEX_BYTES = 1 << 30

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_CACHE: AtlasCache | None = None


def auto_workers(atlas: store.Atlas) -> int:
    """Processes to annotate in: one per CPU core (at most :data:`MAX_WORKERS`), one for a large index.

    Parameters
    ----------
    atlas : Atlas
        The version served now.

    Returns
    -------
    int
        1 on a one-core machine or when the version's index files exceed :data:`LARGE_INDEX_BYTES`.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    index_bytes = sum(p.stat().st_size for p in Path(atlas.path).glob("index*") if p.is_file())
    return 1 if index_bytes > LARGE_INDEX_BYTES else max(1, min(cores, MAX_WORKERS))


def _start(root: str, verify: bool) -> None:
    """Worker initialiser: the process's own cache of the atlas, and one thread for its numerics.

    The workers share the machine's cores between them; FAISS's OpenMP and the BLAS threads of
    each would otherwise claim every core in every worker and spin against each other.
    """
    global _CACHE
    for name in THREAD_VARIABLES:  # for thread pools loaded later in this process
        os.environ[name] = "1"
    import scipy.linalg  # noqa: F401  (each of these loads a thread pool of its own: limit them all)
    import sklearn.utils.extmath  # noqa: F401
    from threadpoolctl import threadpool_limits

    import screader_db.annotation  # noqa: F401
    from screader_db.index import search_threads

    search_threads()  # loads FAISS and its OpenMP runtime
    threadpool_limits(limits=1)
    _CACHE = AtlasCache(root, verify=verify)


def _call(task: Callable[..., Any], version: int, args: tuple[Any, ...]) -> Any:
    """In a worker: ``task(cache, atlas, *args)`` on version ``version``, loaded once per process."""
    assert _CACHE is not None
    return task(_CACHE, _CACHE.version(version), *args)


def _warm(version: int) -> int:
    """In a worker: open and load a version ahead of the first request."""
    assert _CACHE is not None
    _CACHE.ready(_CACHE.version(version))
    return os.getpid()


class Workers:
    """Where the server's annotations run: the calling thread (``n`` = 1) or ``n`` worker processes.

    Parameters
    ----------
    cache : AtlasCache
        The server's own cache (used when ``n`` is 1; its root and ``verify`` setting start the workers).
    n : int
        Processes; 1 runs calls in the calling thread.
    """

    def __init__(self, cache: AtlasCache, n: int = 1) -> None:
        self.cache = cache
        self.n = max(1, int(n))
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = self._started() if self.n > 1 else None

    def _started(self) -> ProcessPoolExecutor:
        import multiprocessing

        return ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                   initargs=(str(self.cache.root), self.cache.verify))

    def warm(self, atlas: store.Atlas) -> list[int]:
        """Start every worker and have it load ``atlas`` (no-op in one process).

        Parameters
        ----------
        atlas : Atlas
            The version to load.

        Returns
        -------
        list of int
            The process ids that answered (empty in one process).
        """
        if self._pool is None:
            return []
        return [future.result() for future in [self._pool.submit(_warm, atlas.version) for _ in range(self.n)]]

    def pids(self) -> list[int]:
        """The process ids of the running workers (empty in one process, or before any has started).

        Returns
        -------
        list of int
            One per live worker process; :meth:`warm` starts all ``n`` of them.
        """
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}  # the executor keeps no public list of them
        return sorted(int(pid) for pid in processes)

    def call(self, task: Callable[..., Any], atlas: store.Atlas, *args: Any) -> Any:
        """``task(cache, atlas, *args)``, in a worker process when there are several; blocks until done.

        Parameters
        ----------
        task : callable
            A module-level function taking the atlas cache and the atlas first; its arguments and
            answer must pickle when workers run it.
        atlas : Atlas
            The version to run on (a worker opens the same version number).
        *args
            The rest of ``task``'s arguments.

        Returns
        -------
        Any
            What ``task`` returned.

        Raises
        ------
        WorkerLostError
            The worker stopped before it answered (the pool is started again for the next call).
        """
        pool = self._pool
        if pool is None:
            return task(self.cache, atlas, *args)
        try:
            return pool.submit(_call, task, atlas.version, args).result()
        except BrokenProcessPool as err:
            with self._lock:
                if self._pool is pool:  # the first caller to notice starts new workers
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._started()
            message = ("the process annotating this request stopped before it answered (killed, or out of memory); "
                       "new worker processes were started: send the request again, or fewer cells at a time")
            raise WorkerLostError(message) from err

    def close(self) -> None:
        """Stop the worker processes (no-op in one process)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
