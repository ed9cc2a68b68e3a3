"""FAISS indexes over cell vectors: inner product on unit vectors, ids are the atlas cell ids.

:class:`CellIndex` owns the atlas's FAISS object: it builds, searches, grows, shrinks, saves and
loads it, and knows its kind from the moment it is made. :func:`knn` answers the one-off
neighbour searches over vectors held in memory (the query's own graph, the reference map, the
calibration split). No other module calls FAISS.

Small atlases get an exact ``Flat`` index; large ones an IVF index (with an HNSW coarse quantiser
once it has 2,048 lists or more) whose ``nprobe`` is chosen at build time to reach a recall target
against exact search on a sample. Wide vectors (more than twice ``PCA_DIM``) get ``ivf-pca``: the
IVF lists hold the vectors' top ``PCA_DIM`` principal components, and the best ``k_factor × k``
candidates they give are re-ranked on the full vectors, kept beside them in float16; ``nprobe`` and
``k_factor`` are chosen together, the cheapest pair that reaches the recall target. A large query
(``LIST_SEARCH_MIN`` cells or more) of an ``ivf-pca`` index is instead scored exactly on the full
vectors of the lists it probes, grouped by list as matrix products (:mod:`screader_db.list_search`),
with its nprobe checked on a sample of the query. Search runs on a GPU when faiss was built with
CUDA and one is present, otherwise on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from screader_db import list_search
from screader_db.devices import cuda_available
from screader_db.errors import AtlasError, ScreaderError
from screader_db.extras import optional, require

FLAT_LIMIT = 200_000
# Coarse quantiser: exact below this many lists, HNSW from it on. Training (k-means over 40 points a
# list) and adding cost cells × lists × dim with an exact one: hours at a million cells on two cores.
HNSW_QUANTIZER_LISTS = 2048
RAM_SHARE = 0.25
INDEX_KINDS = ("auto", "flat", "ivf", "ivf-pca", "ivf-sq8", "ivf-pq")
PCA_DIM = 128
ADD_EF_SEARCH = 64
TUNE_K = 10  # recall@10 is what the index is tuned and reported for
PLATEAU = 0.01
ADD_BLOCK = 100_000
# Exact searches of at least this many query × atlas pairs run as blocked matrix products
# (``exact_search``), several times faster than a Flat index's own search for large queries.
BLAS_SEARCH_WORK = 200_000_000
REFINE_FACTORS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# An ivf-pca search of at least QUERY_CHECK_MIN queries, and the first search of an opened index
# whatever its size, first checks its probes on QUERY_CHECK_CELLS of them against exact search
# (CellIndex.check_probes): the build tunes on atlas cells, whose nearest neighbours can be far
# easier to find than those of cells from another study.
QUERY_CHECK_MIN = 1000
QUERY_CHECK_CELLS = 200
# An ivf-pca search of at least this many queries (with no id filter) scores the lists they probe
# exactly, grouped by list as matrix products (``list_search``), exact within the probed lists.
# One query at a time through the codes and re-ranking searches 1,000 queries faster (a million
# cells: 0.9 s against 4.2 s), but their probe check, which has to try re-ranking pools, is what
# costs: checked and searched, 1,000 resampled Kang cells took 13.7 s that way and 6.6 s by list,
# whose check needs only a coarse search a step.
LIST_SEARCH_MIN = 1000
# knn(..., approximate=True): IVF lists per √n and lists probed.
APPROXIMATE_LISTS = 4
APPROXIMATE_NPROBE = 8
# ApproximateKnn's lists are trained on this many sampled rows a list, for this many k-means steps
# (FAISS's own defaults for an IVF)...
TRAIN_ROWS = 40
TRAIN_STEPS = 10
# ...and knn(..., approximate=True)'s, a query's own graph, on fewer: 100,000 rows 574 wide, 1,264
# lists, 40 rows and 10 steps trained in 4.5 s of the graph's 8-10 s, 20 rows and 6 steps in 1.3 s,
# and the graph found as many of the exact 16 nearest (0.862 against 0.846 on 2,000 of the rows).
# The reference map's placement keeps the defaults: placing 950,000 cells among 50,000 laid out,
# its lists trained the faster way placed fewer cells among their own sub-state (0.791 against
# 0.819, benchmarks/reference_map.py).
GRAPH_TRAIN_ROWS = 20
GRAPH_TRAIN_STEPS = 6
# Queries an ApproximateKnn scores together (list_search's block): gathering each list's probing
# queries reads a block's rows at random, and in blocks of 20,000 they are read from a smaller
# matrix. 100,000 queries probing 37 of 894 lists of 50,000 rows 280 wide: 4.1 s against 6.8 s in
# one block; 3,000 wide, 42 lists: 36.6-38.9 s against 61.5 s; a query's own graph (8 lists):
# 4.9 s against 5.5-6.9 s. The same rows either way.
APPROXIMATE_BLOCK = 20_000
# CellIndex.search_checked's lists per √n. Training 4 √n lists on 40 rows each costs 160 n rows x
# width x 10 k-means steps whatever the query's size (50,000 rows 3,000 wide: 12.8 s), and the search
# within the probed lists took as long with √n lists (the same recall checked: 16 of 223 lists
# against 42 of 894; 3,000 wide: 31-35 s, trained in 1.6 s; 280 wide: 4.3-4.8 s against 4.1 s,
# trained in 0.2 s against 2.1 s).
CHECKED_LISTS = 1
# recall@10 against exact search that IVF indexes are tuned to, and that a query's probes are checked to reach.
RECALL_TARGET = 0.95
# A Flat index is searched exactly, at a cost of queries x cells x width; once that reaches LIST_WORK
# (about 10 s on two cores) and the index holds LIST_CELLS cells or more, CellIndex.search_checked
# searches it by lists trained for the query instead (ApproximateKnn.checked_search), exact within the
# probed lists, with nprobe checked on a sample of the queries to reach RECALL_TARGET. 100,000
# synthetic query cells against a 50,000-cell atlas (575 wide): 31 s exact; lists trained in 1.7 s,
# nprobe 16 of 894 (recall@10 0.969 on the checked cells), searched in 4.1 s, every majority label of
# the 15 nearest that of exact search (first 20,000 cells; 4 √n lists then, √n now: CHECKED_LISTS).
# No suite task comes near it (6.5e10 at most).
LIST_WORK = 1e12
LIST_CELLS = 20_000


def _faiss() -> Any:
    import faiss

    return faiss


def gpu_count() -> int:
    """Number of GPUs faiss can use.

    Returns
    -------
    int
        0 with faiss-cpu or without a GPU.
    """
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def search_threads() -> int:
    """Number of threads a FAISS search runs on.

    Returns
    -------
    int
        FAISS's OpenMP thread count.
    """
    return int(_faiss().omp_get_max_threads())


@dataclass
class IndexInfo:
    """What kind of index was built, and how well it recalls exact search.

    Attributes
    ----------
    kind
        One of ``INDEX_KINDS`` but ``auto``.
    n, dim
        Cells and vector width.
    nlist, nprobe
        IVF lists, and lists probed per query (0 for ``flat``).
    recall_at_10
        recall@10 against exact search measured at build time (1 for ``flat``).
    extra
        Everything else recorded (quantiser, timings, ``k_factor``, ``bytes_per_cell``, ...).
    """

    kind: str
    n: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as one flat dict (``extra``'s keys beside the named ones), as the sidecar keeps them.

        Returns
        -------
        dict
            kind, n, dim, nlist, nprobe, recall_at_10 and every key of ``extra``.
        """
        return {"kind": self.kind, "n": self.n, "dim": self.dim, "nlist": self.nlist, "nprobe": self.nprobe,
                "recall_at_10": self.recall_at_10, **self.extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IndexInfo:
        """The inverse of :meth:`to_dict`.

        Parameters
        ----------
        values
            A flat dict with at least ``kind``, ``n`` and ``dim``; keys other than the named fields go to ``extra``.

        Returns
        -------
        IndexInfo
        """
        known = {k: values[k] for k in ("kind", "n", "dim", "nlist", "nprobe", "recall_at_10") if k in values}
        return cls(**known, extra={k: v for k, v in values.items() if k not in known})


def memory_bytes() -> int:
    """Physical memory of this machine.

    Returns
    -------
    int
        Bytes; 0 when unknown.
    """
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def choose_kind(n: int, requested: str = "auto", *, dim: int = 384) -> str:
    """The index kind for ``n`` vectors of width ``dim``.

    Exact Flat below ``FLAT_LIMIT`` cells; IVF above, with 8-bit codes once raw vectors would take
    more than a quarter of the machine's memory, and PQ codes beyond twice that; otherwise
    principal-component lists with exact re-ranking (``ivf-pca``) for vectors wider than
    2 × ``PCA_DIM``.

    Parameters
    ----------
    n, dim
        Number and width of the vectors.
    requested
        One of ``INDEX_KINDS``; anything but ``auto`` is returned as it is.

    Returns
    -------
    str
        The kind.

    Raises
    ------
    ScreaderError
        ``requested`` is not a known kind.
    """
    if requested not in INDEX_KINDS:
        message = f"unknown index kind {requested!r}; choose one of {', '.join(INDEX_KINDS)}"
        raise ScreaderError(message)
    if requested != "auto":
        return requested
    if n < FLAT_LIMIT:
        return "flat"
    raw = n * dim * 4
    ram = memory_bytes() or 16 << 30
    if raw > 2 * RAM_SHARE * ram:
        return "ivf-pq"
    if raw > RAM_SHARE * ram:
        return "ivf-sq8"
    return "ivf-pca" if dim > 2 * PCA_DIM else "ivf"


def n_lists(n: int) -> int:
    """IVF lists for ``n`` cells: about 8·√N, at least 16, and at least 39 training points per list.

    Parameters
    ----------
    n
        Cells in the index.

    Returns
    -------
    int
    """
    return int(max(16, min(8 * math.sqrt(n), n // 39)))


def knn(queries: np.ndarray, vectors: np.ndarray, k: int, *, metric: str = "ip", approximate: bool = False,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of each query among the rows of ``vectors``, held in memory.

    Parameters
    ----------
    queries, vectors
        Float arrays of the same width (converted to contiguous float32).
    k
        Neighbours per query (at most ``len(vectors)``).
    metric
        ``"ip"`` (inner product, best first) or ``"l2"`` (squared Euclidean distance, nearest first).
    approximate
        Search an IVF index of ``APPROXIMATE_LISTS × √n`` lists, trained on a seeded sample of
        ``vectors`` (``GRAPH_TRAIN_ROWS`` a list, ``GRAPH_TRAIN_STEPS`` steps) and probing
        ``APPROXIMATE_NPROBE`` of them, instead of every row (inner product only).
    seed
        Seed of the training sample.

    Returns
    -------
    scores, rows
        Arrays of shape (queries, k): similarities or distances, and row positions in ``vectors``
        (-1 where an approximate search found fewer than ``k``).

    Raises
    ------
    ScreaderError
        An unknown ``metric``, or ``approximate`` with another metric than ``"ip"``.
    """
    faiss = _faiss()
    metrics = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
    if metric not in metrics or (approximate and metric != "ip"):
        message = f"unknown metric {metric!r} for knn; choose 'ip' or 'l2' ('ip' only when approximate)"
        raise ScreaderError(message)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not approximate:
        return faiss.knn(queries, vectors, k, metric=metrics[metric])
    return ApproximateKnn(vectors, seed=seed, train_rows=GRAPH_TRAIN_ROWS, train_steps=GRAPH_TRAIN_STEPS).search(queries, k)


class ApproximateKnn:
    """Approximate inner-product neighbours among rows held in memory, for many searches of the same rows.

    An IVF of ``APPROXIMATE_LISTS × √n`` lists is trained once on a seeded sample of the rows
    (``train_rows`` a list, ``train_steps`` k-means steps); each
    search scores the ``APPROXIMATE_NPROBE`` lists nearest each query exactly, batched by list
    (:mod:`screader_db.list_search`), which is what an IVF-Flat search answers, without copying the
    rows into an index.

    Parameters
    ----------
    vectors
        The rows searched (kept, not copied, when already contiguous float32).
    seed
        Seed of the training sample.
    lists_per_root
        Lists per √n (``APPROXIMATE_LISTS``; ``CHECKED_LISTS`` for :meth:`CellIndex.search_checked`).
    train_rows, train_steps
        Sampled rows a list the lists are trained on, and k-means steps (``TRAIN_ROWS``, ``TRAIN_STEPS``).
    """

    def __init__(self, vectors: np.ndarray, *, seed: int = 0, lists_per_root: float = APPROXIMATE_LISTS,
                 train_rows: int = TRAIN_ROWS, train_steps: int = TRAIN_STEPS) -> None:
        faiss = _faiss()
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = self._vectors.shape
        self._nlist = max(1, int(lists_per_root * np.sqrt(n)))
        self._seed = seed
        self._ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self._nlist, faiss.METRIC_INNER_PRODUCT)
        self._ivf.cp.niter = train_steps
        self._ivf.cp.min_points_per_centroid = min(train_rows, TRAIN_ROWS)  # FAISS warns on stderr below it
        rng = np.random.default_rng(seed)
        rows = min(n, self._nlist * train_rows)
        self._ivf.train(self._vectors[np.sort(rng.choice(n, size=rows, replace=False))])
        self._lists: list_search.Lists | None = None

    def _row_lists(self) -> list_search.Lists:
        """Each list's rows: every row in the list of its nearest centroid."""
        if self._lists is None:
            owner = self._ivf.quantizer.search(self._vectors, 1)[1][:, 0]
            self._lists = list_search.Lists.of_owners(owner, self._nlist)
        return self._lists

    def checked_search(self, queries: np.ndarray, k: int, *, target: float = RECALL_TARGET,
                       sample: int = QUERY_CHECK_CELLS) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Top-``k`` of each query within the fewest lists that hold ``target`` of a sample's exact ten nearest.

        A seeded sample of the queries is searched exactly; nprobe grows as an ``ivf-pca`` index's
        query check grows it (:func:`smallest_nprobe`) until the sample's exact neighbours lie in its
        first nprobe lists at that share; every query is then scored exactly within that many lists.

        Parameters
        ----------
        queries
            Float rows of the rows' width.
        k
            Neighbours per query.
        target
            recall@10 the checked sample must reach.
        sample
            Queries checked.

        Returns
        -------
        sims, rows, checked
            Arrays of shape (queries, min(k, rows searched)), best first (-1 where the probed lists
            hold fewer), and what the check found: ``nprobe``, ``nlist``, ``recall_at_10``,
            ``checked``, ``target`` and ``search``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rng = np.random.default_rng(self._seed)
        picked = np.ascontiguousarray(queries[np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))])
        truth = exact_search(picked, self._vectors, TUNE_K)[1]
        lists = self._row_lists()
        quantizer = self._ivf.quantizer
        nprobe, recall = smallest_nprobe(lambda p: quantizer.search(picked, p)[1], truth,
                                         lists.list_of_rows(len(self._vectors)), self._nlist, target=target)
        probes = quantizer.search(queries, nprobe)[1]
        sims, rows = list_search.search(queries, self._vectors, lists, probes, min(k, len(self._vectors)),
                                        block=APPROXIMATE_BLOCK)
        checked = {"nprobe": nprobe, "nlist": self._nlist, "k_factor": None, "recall_at_10": round(float(recall), 4),
                   "checked": len(picked), "widened": False, "target": target,
                   "search": "exact within the probed lists of lists trained for the query"}
        return sims, rows, checked

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (inner products, row positions) of each query, -1 where the probed lists hold fewer.

        Parameters
        ----------
        queries
            Float rows of the same width (the searched rows themselves for their own graph).
        k
            Neighbours per query.

        Returns
        -------
        sims, rows
            Arrays of shape (queries, min(k, rows searched)), best first.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        quantizer = self._ivf.quantizer
        probes = quantizer.search(queries, min(APPROXIMATE_NPROBE, self._nlist))[1]
        if self._lists is None and queries is self._vectors:  # the rows' own graph: each row's list is its first probe
            self._lists = list_search.Lists.of_owners(probes[:, 0], self._nlist)
        return list_search.search(queries, self._vectors, self._row_lists(), probes, min(k, len(self._vectors)),
                                  block=APPROXIMATE_BLOCK)


def pca_reduce(vectors: np.ndarray, dim: int, *, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top ``dim`` principal components of ``vectors`` (FAISS's PCA, as ``ivf-pca`` uses).

    Parameters
    ----------
    vectors
        The rows the components are fitted on.
    dim
        Components kept.
    queries
        Further rows projected on the same components.

    Returns
    -------
    reduced, reduced_queries
        ``vectors`` and ``queries`` in the component space.
    """
    pca = _faiss().PCAMatrix(vectors.shape[1], dim)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    pca.train(vectors)
    return pca.apply(vectors), pca.apply(np.ascontiguousarray(queries, dtype=np.float32))


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int, *, block: int = 65_536,
                 query_block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (inner products, row positions) of each query over ``vectors``, exactly.

    One matrix product per block of queries and rows (torch's when it is installed: its top-k
    is several times faster than a partition in numpy), so no second copy of the vectors is made.

    Parameters
    ----------
    queries, vectors
        Float rows of the same width (float16 vectors are widened a block at a time).
    k
        Neighbours per query.
    block, query_block
        Rows of ``vectors`` and of ``queries`` per matrix product.

    Returns
    -------
    sims, rows
        Arrays of shape (queries, min(k, len(vectors))), best first.
    """
    torch = optional("torch")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    rows_out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), query_block):
        part = queries[q0 : q0 + query_block]
        best_sims = np.full((len(part), 0), -np.inf, dtype=np.float32)
        best_rows = np.zeros((len(part), 0), dtype=np.int64)
        for start in range(0, len(vectors), block):
            rows = np.ascontiguousarray(vectors[start : start + block])
            take = min(k, len(rows))
            if torch is not None:  # torch also widens float16 about twice as fast as numpy
                top = torch.topk(torch.from_numpy(part) @ torch.from_numpy(rows).float().T, take, dim=1)
                top_sims, top_rows = top.values.numpy(), top.indices.numpy().astype(np.int64)
            else:
                sims = part @ rows.astype(np.float32, copy=False).T
                top_rows = np.argpartition(-sims, take - 1, axis=1)[:, :take]
                top_sims = np.take_along_axis(sims, top_rows, axis=1)
            best_sims = np.hstack([best_sims, top_sims])
            best_rows = np.hstack([best_rows, top_rows + start])
            if best_sims.shape[1] > k:
                keep = np.argpartition(-best_sims, k - 1, axis=1)[:, :k]
                best_sims = np.take_along_axis(best_sims, keep, axis=1)
                best_rows = np.take_along_axis(best_rows, keep, axis=1)
        order = np.argsort(-best_sims, axis=1, kind="stable")
        sims_out[q0 : q0 + len(part)] = np.take_along_axis(best_sims, order, axis=1)
        rows_out[q0 : q0 + len(part)] = np.take_along_axis(best_rows, order, axis=1)
    return sims_out, rows_out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (the exact top k) that the same row of ``found`` holds.

    Parameters
    ----------
    found
        Ids (or positions) found per query, any number of columns.
    truth
        The exact top-k ids (or positions) per query.

    Returns
    -------
    float
    """
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def _tuning_queries(vectors: np.ndarray, k: int, seed: int, sample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled atlas rows as queries, their row positions, and each one's exact top ``k`` other rows
    (a query's own row is always found, so counting it would flatter the recall)."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    queries = np.ascontiguousarray(vectors[rows])
    return queries, rows, _without_self(exact_search(queries, vectors, k + 1)[1], rows, k)


def _without_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` entries of each row of ``found`` that are not the row's own id (or position)."""
    keep = found != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, order, axis=1)


def describe_search(checked: dict[str, Any]) -> str:
    """One line on how a query's probes were checked and searched (:meth:`CellIndex.search_checked`'s figures).

    Parameters
    ----------
    checked : dict
        The figures: ``nprobe``, ``recall_at_10``, ``checked`` and ``target``; ``nlist`` for lists
        trained for the query; ``k_factor`` for a search through the codes.

    Returns
    -------
    str
        Empty when no check ran.
    """
    if not checked:
        return ""
    found = (f"recall@10 {checked['recall_at_10']:.3f} on {checked['checked']} query cells searched exactly, "
             f"target {checked['target']:.2f}")
    if "nlist" in checked:
        return f"exact within {checked['nprobe']} of {checked['nlist']:,} lists trained for the query ({found})"
    if checked.get("k_factor") is None:
        return f"exact within the index's {checked['nprobe']} nearest lists ({found})"
    return (f"8-bit codes in the index's {checked['nprobe']} nearest lists, the best {checked['k_factor']}×k re-ranked "
            f"({found})")


def smallest_nprobe(coarse: Callable[[int], np.ndarray], truth: np.ndarray, owner: np.ndarray, nlist: int, *,
                    target: float, start: int = 1) -> tuple[int, float]:
    """The fewest lists a search exact within its probed lists needs for ``target`` recall@10 on checked queries.

    nprobe grows from ``start`` (1, 2, 3, 4, 6, 8, …) and stops at the target, at every list, or
    where two steps gain less than ``PLATEAU``; the smallest nprobe since the last step short of the
    target that reaches it is kept (the first lists of the last coarse search are the lists a search
    at that nprobe probes). Short of the target, the smallest nprobe within ``PLATEAU`` of the best
    recall seen.

    Parameters
    ----------
    coarse
        nprobe -> the checked queries' nprobe nearest lists, nearest first.
    truth
        Each checked query's exact ten nearest, as row positions.
    owner
        The list of each stored row (-1 for none).
    nlist
        Lists in all.
    target
        recall@10 to reach.
    start
        The first nprobe tried.

    Returns
    -------
    nprobe, recall
        The lists to probe and the checked queries' recall at them.
    """
    nprobe, tried = start, []
    while True:
        probes = coarse(nprobe)
        recall = list_search.probe_recall(probes, truth, owner, nprobe)
        tried.append((nprobe, recall))
        plateau = len(tried) >= 3 and tried[-1][1] - tried[-3][1] < PLATEAU
        if recall >= target or nprobe >= nlist or plateau:
            break
        nprobe = min(_next_nprobe(nprobe), nlist)
    if recall >= target and len(tried) > 1:
        fewer = range(tried[-2][0] + 1, nprobe)
        nprobe, recall = next(((p, r) for p in fewer if (r := list_search.probe_recall(probes, truth, owner, p)) >= target),
                              (nprobe, recall))
    if recall < target:
        top_recall = max(r for _, r in tried)
        nprobe, recall = next((p, r) for p, r in tried if r >= top_recall - PLATEAU)
    return nprobe, recall


def _next_nprobe(nprobe: int) -> int:
    """The step after ``nprobe`` in 1, 2, 3, 4, 6, 8, 12, 16, …: powers of two and 1.5 × them."""
    if nprobe >= 2 and nprobe & (nprobe - 1) == 0:
        return nprobe * 3 // 2
    return 1 << nprobe.bit_length()


def _pca_refined(dim: int, nlist: int, hnsw: bool) -> Any:
    """IDMap2 → Refine (the full vectors in float16) → PCA to ``PCA_DIM`` → IVF lists of 8-bit codes,
    all under L2, which ranks unit vectors as inner product does (|x − q|² = 2 − 2 x·q); a centred PCA
    would not. The 8-bit codes find the candidates as well as float ones and are four times faster to
    scan. Float16 halves the store, the bulk of the index's memory, and its rounding (a few parts in
    10,000 of a similarity) is below the gaps that decide neighbours; an index saved with a float32
    store (``RFlat``) is read as it is."""
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    return _faiss().index_factory(dim, f"IDMap2,PCA{PCA_DIM},{coarse},SQ8,Refine(SQfp16)", _faiss().METRIC_L2)


class CellIndex:
    """The atlas's FAISS index over unit cell vectors, whose ids are the cell ids.

    Made by :meth:`build` or :meth:`load`; its parts (the Flat store, the IVF lists, the
    re-ranking stage of ``ivf-pca``) are found once, when it is made.

    Parameters
    ----------
    index
        The FAISS index object (``IndexIDMap2`` over a Flat or ``ivf-pca`` stack, or an IVF index).
    info
        What was built (kind, size, lists, probes, recall).
    provenance
        The provenance it was saved with, if any.
    """

    def __init__(self, index: Any, info: IndexInfo, *, provenance: dict[str, Any] | None = None) -> None:
        faiss = _faiss()
        self._index = index
        self._info = info
        self._provenance = dict(provenance or {})
        self._id_map = hasattr(index, "id_map")
        inner = faiss.downcast_index(index.index) if self._id_map else index
        self._refine: Any = None
        self._ivf: Any = None
        if isinstance(inner, faiss.IndexRefine):
            self._refine, self._ivf = inner, faiss.extract_index_ivf(inner.base_index)
        elif isinstance(inner, faiss.IndexIVF):
            self._ivf = inner
        self._flat = inner if isinstance(inner, faiss.IndexFlatIP) else None
        if not info.kind:  # a sidecar that did not record it
            info.kind = "ivf-pca" if self._refine is not None else "ivf" if self._ivf is not None else "flat"
        self._gpu: Any = None  # the GPU searcher once asked for; False when there is none
        self._widest: tuple[int, int] | None = None  # the widest probes a query check needed (check_probes)
        self._widest_lists: int | None = None  # the widest nprobe a check of a batched search needed
        self._checked = False  # whether a query check has run
        self._lists: Any = None  # list_search.Lists, read from the IVF on first use
        self._centroids: np.ndarray | None = None  # the IVF lists' centroids, read on first use

    def __repr__(self) -> str:
        return f"CellIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim})"

    @property
    def kind(self) -> str:
        """``flat``, ``ivf``, ``ivf-pca``, ``ivf-sq8`` or ``ivf-pq``."""
        return self._info.kind

    @property
    def ntotal(self) -> int:
        """Number of cells in the index."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self._index.d)

    @property
    def info(self) -> IndexInfo:
        """What was built, as the sidecar records it."""
        return self._info

    @property
    def provenance(self) -> dict[str, Any]:
        """The provenance the index was saved or loaded with (empty before it is saved)."""
        return dict(self._provenance)

    @property
    def nprobe(self) -> int:
        """IVF lists probed per query (0 for a Flat index); setting it changes later searches and ``info``."""
        return int(self._ivf.nprobe) if self._ivf is not None else 0

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        """Probe ``value`` IVF lists from now on; raises :class:`~screader_db.errors.ScreaderError` for a Flat index."""
        if self._ivf is None:
            message = f"a {self.kind} index has no lists to probe; nprobe applies to IVF indexes"
            raise ScreaderError(message)
        self._set_nprobe(int(value))
        self._info.nprobe = int(value)

    def ids(self) -> np.ndarray:
        """The cell ids, in the order the index stores them.

        Returns
        -------
        numpy.ndarray
            int64 ids.
        """
        if self._id_map:
            return _faiss().vector_to_array(self._index.id_map)
        if self._ivf is not None:
            message = "an IVF index does not list its ids in storage order; search it instead"
            raise ScreaderError(message)
        return np.arange(self.ntotal, dtype=np.int64)

    def stored_vectors(self) -> np.ndarray:
        """The full vectors the index keeps, in the order of :meth:`ids` (a view, not a copy).

        Returns
        -------
        numpy.ndarray
            cells × dim: a Flat index's vectors (float32), or an ``ivf-pca`` index's re-ranking store
            (float16; float32 in an index saved before the store was float16).

        Raises
        ------
        ScreaderError
            The index keeps no full vectors (``ivf``, ``ivf-sq8``, ``ivf-pq``).
        """
        faiss = _faiss()
        store = self._flat if self._refine is None else faiss.downcast_index(self._refine.refine_index)
        if store is None:
            message = f"a {self.kind} index keeps no full vectors; read them from the atlas (Atlas.embeddings)"
            raise ScreaderError(message)
        if isinstance(store, faiss.IndexScalarQuantizer):  # float16 codes: two bytes a value, as numpy keeps them
            codes = faiss.rev_swig_ptr(store.codes.data(), store.ntotal * store.code_size)
            return codes.view(np.float16).reshape(store.ntotal, store.d)
        return faiss.rev_swig_ptr(store.get_xb(), store.ntotal * store.d).reshape(store.ntotal, store.d)

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, *, kind: str = "auto", recall_target: float = RECALL_TARGET,
              seed: int = 0) -> CellIndex:
        """Build an index over ``vectors`` with the given cell ids.

        Parameters
        ----------
        vectors
            Unit rows (cells × dim).
        ids
            int64 cell id of each row.
        kind
            One of ``INDEX_KINDS``; ``auto`` chooses by size, width and memory (:func:`choose_kind`).
        recall_target
            recall@10 against exact search the IVF kinds are tuned to reach.
        seed
            Seed of the training and tuning samples.

        Returns
        -------
        CellIndex

        Raises
        ------
        ScreaderError
            An unknown ``kind``.
        """
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n, dim = vectors.shape
        chosen = choose_kind(n, kind, dim=dim)
        if chosen == "flat" or n < 1000:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            index.add_with_ids(vectors, ids)
            return cls(index, IndexInfo("flat", n, dim))
        nlist = n_lists(n)
        hnsw = nlist >= HNSW_QUANTIZER_LISTS
        rng = np.random.default_rng(seed)
        train = vectors[np.sort(rng.choice(n, size=min(n, max(nlist * 40, 50_000)), replace=False))]
        extra: dict[str, Any] = {"quantizer": "hnsw" if hnsw else "flat", "recall_target": recall_target}
        if chosen == "ivf-pca" and dim > PCA_DIM:
            built = cls(_pca_refined(dim, nlist, hnsw), IndexInfo("ivf-pca", n, dim, nlist=nlist, extra=extra))
            built._train_and_add(train, vectors, ids)
            del train
            began = time.perf_counter()
            nprobe, factor, recall = built._tune_refined(vectors, recall_target=recall_target, seed=seed)
            extra["tune_seconds"] = round(time.perf_counter() - began, 1)
            built._set_nprobe(nprobe, k_factor=factor)
            extra.update({"pca_dim": PCA_DIM, "k_factor": factor, "target_met": bool(recall >= recall_target)})
            built._info.nprobe, built._info.recall_at_10 = nprobe, recall
            return built
        if chosen == "ivf-pca":
            chosen = "ivf"  # vectors no wider than PCA_DIM: nothing to reduce, so a plain IVF
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT) if hnsw else faiss.IndexFlatIP(dim)
        if chosen == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif chosen == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            m = max(d for d in range(1, min(dim, 64) + 1) if dim % d == 0)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        built = cls(index, IndexInfo(chosen, n, dim, nlist=nlist, extra=extra))
        built._train_and_add(train, vectors, ids)
        del train
        began = time.perf_counter()
        nprobe, recall = built._tune_nprobe(vectors, ids, recall_target=recall_target, seed=seed)
        extra["tune_seconds"] = round(time.perf_counter() - began, 1)
        built._set_nprobe(nprobe)
        built._info.nprobe, built._info.recall_at_10 = nprobe, recall
        return built

    def _train_and_add(self, train: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Train on ``train``, then add the vectors (in blocks, for lists of codes: a block's encoded
        copy is all the extra memory adding takes). An HNSW coarse quantiser places each vector with ``ADD_EF_SEARCH``:
        faiss's default (16) puts a share of them in the wrong list, which costs recall at every nprobe."""
        extra = self._info.extra
        began = time.perf_counter()
        self._index.train(train)
        extra["train_seconds"] = round(time.perf_counter() - began, 1)
        quantizer = _faiss().downcast_index(self._ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = max(int(quantizer.hnsw.efSearch), ADD_EF_SEARCH)
        began = time.perf_counter()
        # A re-ranking store grows one flat buffer: adding in blocks would copy it whenever it outgrew
        # its capacity (twice its size for a moment), so it takes every vector at once.
        block = len(vectors) if self._refine is not None else ADD_BLOCK
        for start in range(0, len(vectors), block):
            self._index.add_with_ids(vectors[start : start + block], ids[start : start + block])
        extra["add_seconds"] = round(time.perf_counter() - began, 1)

    def _set_nprobe(self, nprobe: int, *, k_factor: int | None = None) -> None:
        """Probe ``nprobe`` lists (and re-rank ``k_factor × k`` candidates, for ``ivf-pca``); an HNSW
        coarse quantiser searches at least that wide (``efSearch``), since it returns only about
        ``efSearch`` good lists however many are asked for."""
        if self._refine is not None and k_factor is not None:
            self._refine.k_factor = float(k_factor)
        self._ivf.nprobe = int(nprobe)
        self._widen_quantizer(nprobe)
        self._gpu = None  # a GPU copy would keep the old setting

    def _widen_quantizer(self, nprobe: int) -> None:
        """Let an HNSW coarse quantiser search at least ``nprobe`` wide (``efSearch``, never narrowed)."""
        found = _faiss().downcast_index(self._ivf.quantizer)
        if hasattr(found, "hnsw"):
            found.hnsw.efSearch = max(int(found.hnsw.efSearch), int(nprobe))

    def _list_params(self, nprobe: int) -> Any:
        """FAISS search parameters probing ``nprobe`` lists, for one search (the index's own setting
        stays); the coarse quantiser is widened as :meth:`_set_nprobe` widens it."""
        self._widen_quantizer(nprobe)
        return _faiss().SearchParametersIVF(nprobe=int(nprobe))

    def _tune_nprobe(self, vectors: np.ndarray, ids: np.ndarray, *, recall_target: float, seed: int = 0,
                     sample: int = 1000, k: int = TUNE_K) -> tuple[int, float]:
        """Smallest power-of-two nprobe (or every list) whose recall@k against exact search reaches the target,
        and the recall measured with it."""
        queries, rows, truth_pos = _tuning_queries(vectors, k, seed, sample)
        truth = ids[truth_pos]
        nlist = int(self._ivf.nlist)
        nprobe = 1
        while True:
            self._set_nprobe(nprobe)
            recall = self.recall(queries, truth, own=ids[rows])
            if recall >= recall_target or nprobe >= nlist:
                return nprobe, recall
            nprobe = min(nprobe * 2, nlist)

    def _tune_refined(self, vectors: np.ndarray, *, recall_target: float, seed: int = 0, sample: int = 1000,
                      k: int = TUNE_K) -> tuple[int, int, float]:
        """The cheapest (nprobe, k_factor) of an ``ivf-pca`` index whose recall@k against exact search
        on a sample of its own cells (each one's own row left out) reaches the target, set on the
        index, and the recall the index measures with it (:meth:`_cheapest_probes`)."""
        queries, rows, truth = _tuning_queries(vectors, k, seed, sample)
        nprobe, factor = self._cheapest_probes(queries, truth, vectors, recall_target=recall_target, rows=rows, k=k)
        self._set_nprobe(nprobe, k_factor=factor)
        _, found = self._refine.search(queries, k + 1)
        return nprobe, factor, recall_at_k(_without_self(found, rows, k), truth)

    def _cheapest_probes(self, queries: np.ndarray, truth: np.ndarray, vectors: np.ndarray, *, recall_target: float,
                         rows: np.ndarray | None = None, k: int = TUNE_K, start: int = 1) -> tuple[int, int]:
        """The cheapest (nprobe, k_factor) of an ``ivf-pca`` index at which ``queries`` find ``recall_target`` of ``truth``.

        Cost per query, in bytes read: ``nprobe`` lists of ``PCA_DIM`` 8-bit codes a cell plus
        ``k_factor × k`` full vectors re-ranked (four bytes a value at twice the price: they are read at
        random, and float16 ones are widened); it tracks the measured search time. Every factor is tried
        from one base search per nprobe; nprobe grows from ``start`` by steps of about ×1.4 (powers of
        two and 1.5 × them) until scanning alone costs more than the best pair found. Where no pair
        reaches the target (cells whose nearest neighbours are near-ties), nprobe stops growing once
        the largest pool's recall has gained less than ``PLATEAU`` over two steps, and the largest pool
        at the first nprobe within ``PLATEAU`` of the best recall seen is kept: more probing would cost
        much and find little.

        ``truth`` and ``rows`` (the queries' own rows, left out, when they are cells of the index) are
        row positions of ``vectors``, the stored vectors in the index's order.
        """
        refine, ivf = self._refine, self._ivf
        n, dim = vectors.shape
        per_list = n / ivf.nlist
        pool_most = k * REFINE_FACTORS[-1]
        best: tuple[float, int, int] | None = None
        widest: list[tuple[int, float]] = []  # (nprobe, recall with the largest pool)
        nprobe = max(1, min(start, int(ivf.nlist)))
        while True:
            scan = nprobe * per_list * PCA_DIM
            if best is not None and scan >= best[0]:
                break
            params = _faiss().SearchParametersPreTransform(index_params=self._list_params(nprobe))
            _, candidates = refine.base_index.search(queries, pool_most + (rows is not None), params=params)
            candidates = candidates[:, :pool_most] if rows is None else _without_self(candidates, rows, pool_most)
            sims = np.full(candidates.shape, -np.inf, dtype=np.float32)
            for row, found in enumerate(candidates):
                valid = found >= 0
                sims[row, valid] = vectors[found[valid]].astype(np.float32, copy=False) @ queries[row]
            recall = 0.0
            for factor in REFINE_FACTORS:
                pool = k * factor
                top = np.argsort(-sims[:, :pool], axis=1, kind="stable")[:, :k]
                recall = recall_at_k(np.take_along_axis(candidates[:, :pool], top, axis=1), truth)
                if recall >= recall_target:
                    cost = scan + 2 * pool * dim * 4
                    if best is None or cost < best[0]:
                        best = (cost, nprobe, factor)
                    break
            widest.append((nprobe, recall))
            plateau = best is None and len(widest) >= 3 and widest[-1][1] - widest[-3][1] < PLATEAU
            if nprobe >= ivf.nlist or plateau:
                break
            nprobe = min(_next_nprobe(nprobe), ivf.nlist)
        if best is not None:
            return best[1], best[2]
        top_recall = max(r for _, r in widest)
        return next(p for p, r in widest if r >= top_recall - PLATEAU), REFINE_FACTORS[-1]

    def recall(self, queries: np.ndarray, truth: np.ndarray, *, own: np.ndarray | None = None) -> float:
        """Recall of the index's own CPU search, with its current probes, against exact neighbours.

        Parameters
        ----------
        queries
            Unit query rows.
        truth
            The exact top-k cell ids of each query (k = its number of columns).
        own
            For queries that are cells of the index: their ids, which are not counted as found.

        Returns
        -------
        float
            Mean share of each row of ``truth`` that the search finds.
        """
        k = truth.shape[1]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if own is None:
            _, found = self._index.search(queries, k)
        else:
            _, found = self._index.search(queries, k + 1)
            found = _without_self(found, np.asarray(own), k)
        return recall_at_k(found, truth)

    def check_probes(self, queries: np.ndarray, *, target: float | None = None, sample: int = QUERY_CHECK_CELLS,
                     seed: int = 0) -> dict[str, Any]:
        """Widen an ``ivf-pca`` index's probes until a sample of ``queries`` finds ``target`` of its exact ten nearest.

        The build tunes nprobe and the re-ranking pool on atlas cells (:meth:`build`); a query from
        another study can sit farther from every atlas cell, where the same probes find fewer of its
        true neighbours. A seeded sample of the queries is searched exactly over the stored vectors
        and approximately at the index's probes; short of the target, the cheapest wider probes that
        reach it on the sample are found the way the build tunes (:meth:`_cheapest_probes`, from the
        current nprobe up). The widest probes an index has needed are remembered and are the floor of
        later checks and searches.

        Parameters
        ----------
        queries : numpy.ndarray
            Unit query rows.
        target : float or None
            Recall@10 to reach; None takes the build's target (``info.extra["recall_target"]``, 0.95).
        sample : int
            Queries checked.
        seed : int
            Seed of the sample.

        Returns
        -------
        dict
            ``nprobe``, ``k_factor``, ``recall_at_10`` (on the sample, at those probes),
            ``checked`` (queries in the sample), ``widened`` and ``target``; empty for other kinds of index.
        """
        if self._refine is None:
            return {}
        target = float(self._info.extra.get("recall_target", RECALL_TARGET) if target is None else target)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
        checked = np.ascontiguousarray(queries[rows], dtype=np.float32)
        stored = self.stored_vectors()
        truth = exact_search(checked, stored, TUNE_K)[1]  # row positions
        if len(queries) >= LIST_SEARCH_MIN:  # searched by list, not through the probes smaller queries use
            return self._check_lists(checked, truth, target)
        truth_ids = self.ids()[truth]
        self._checked = True
        current = self._probes()
        probes = current
        recall = recall_at_k(self._search_refined(checked, TUNE_K, None, probes=current)[1], truth_ids)
        if recall < target:
            cheapest = self._cheapest_probes(checked, truth, stored, recall_target=target, start=current[0])
            probes = (max(current[0], cheapest[0]), max(current[1], cheapest[1]))
            recall = recall_at_k(self._search_refined(checked, TUNE_K, None, probes=probes)[1], truth_ids)
            self._widest = probes
        return {"nprobe": probes[0], "k_factor": probes[1], "recall_at_10": round(float(recall), 4), "checked": len(rows),
                "widened": probes != current, "target": target}

    def _check_lists(self, checked: np.ndarray, truth: np.ndarray, target: float) -> dict[str, Any]:
        """:meth:`check_probes` for a search batched by list (:meth:`_search_lists`), exact within the
        lists it probes: its recall at an nprobe is the share of each checked query's exact neighbours
        (``truth``, row positions) that lie in its first nprobe lists, so each step costs one coarse
        search of the sample (:func:`smallest_nprobe`, from the widest an earlier check needed)."""
        owner = self._list_rows().list_of_rows(self.ntotal)
        start = self._widest_lists or 1
        nprobe, recall = smallest_nprobe(lambda p: self._coarse_probes(checked, p), truth, owner, int(self._ivf.nlist),
                                         target=target, start=start)
        self._widest_lists = nprobe
        return {"nprobe": nprobe, "k_factor": None, "recall_at_10": round(float(recall), 4), "checked": len(checked),
                "widened": nprobe != start, "target": target, "search": "exact within the probed lists"}

    def _list_rows(self) -> list_search.Lists:
        """The stored rows of each IVF list of an ``ivf-pca`` index, read once (until cells are added or removed)."""
        if self._lists is None:
            faiss = _faiss()
            invlists = self._ivf.invlists
            sizes = np.array([invlists.list_size(i) for i in range(int(self._ivf.nlist))], dtype=np.int64)
            parts = [faiss.rev_swig_ptr(invlists.get_ids(i), int(size)).copy() for i, size in enumerate(sizes) if size]
            rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            self._lists = list_search.Lists(rows=rows, starts=np.concatenate([[0], np.cumsum(sizes)]))
        return self._lists

    def _coarse_probes(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` lists nearest each query, nearest first: an exact search of the list
        centroids (a batch of queries is one matrix product; an HNSW coarse quantiser would walk
        its graph once per query, and miss some of the nearest lists)."""
        faiss = _faiss()
        reduced = np.ascontiguousarray(queries, dtype=np.float32)
        chain = faiss.downcast_index(self._refine.base_index).chain
        for step in range(chain.size()):
            reduced = faiss.downcast_VectorTransform(chain.at(step)).apply(reduced)
        if self._centroids is None:
            self._centroids = self._ivf.quantizer.reconstruct_n(0, int(self._ivf.nlist))
        return faiss.knn(reduced, self._centroids, int(nprobe), metric=faiss.METRIC_L2)[1]

    def _search_lists(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Search an ``ivf-pca`` index exactly within the ``nprobe`` lists each query probes, batched by
        list (``list_search``); (similarities, ids) as :meth:`search` returns them."""
        sims, rows = list_search.search(queries, self.stored_vectors(), self._list_rows(),
                                        self._coarse_probes(queries, nprobe), k)
        found = rows >= 0
        return sims, np.where(found, self.ids()[np.where(found, rows, 0)], -1)

    @property
    def checked(self) -> bool:
        """Whether :meth:`check_probes` has checked this index's probes on a query (always False but for ``ivf-pca``)."""
        return self._checked

    def _probes(self) -> tuple[int, int]:
        """The (nprobe, k_factor) searches use: the build's, or the widest a query check has needed."""
        built = (int(self._ivf.nprobe), round(float(self._refine.k_factor)))
        widest = self._widest
        return built if widest is None else (max(built[0], widest[0]), max(built[1], widest[1]))

    def gpu_searcher(self) -> Any | None:
        """A GPU copy of the index (faiss-gpu, or torch for a Flat index), made on first use and kept.

        Returns
        -------
        object or None
            Something with ``search(queries, k)``; None without a GPU, and for ``ivf-pca``
            (re-ranking indexes stay on the CPU).
        """
        if self._gpu is None:
            faiss = _faiss()
            searcher: Any = False  # re-ranking indexes stay on the CPU
            if self._refine is None and gpu_count() > 0:
                searcher = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self._index)
            elif self._refine is None and self._ivf is None and cuda_available():
                searcher = TorchFlatSearcher(self)
            self._gpu = searcher
        return None if self._gpu is False else self._gpu

    def search(self, queries: np.ndarray, k: int, *, use_gpu: bool | None = None, allowed: np.ndarray | None = None,
               probes: tuple[int, int | None] | None = None, by_list: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids) for each query row.

        Parameters
        ----------
        queries
            Unit rows, as the atlas's own vectors are.
        k
            Neighbours per query (at most the cells searched).
        use_gpu
            False keeps the search on the CPU; otherwise a GPU is used when present (faiss-gpu,
            or torch for an exact Flat index).
        allowed
            Restrict the search to these cell ids, exactly (through a FAISS id selector; such
            searches run on the CPU).
        probes
            For an ``ivf-pca`` index: (nprobe, k_factor) of this search; None takes the build's, or
            the widest a query check needed (:meth:`check_probes`). A search of ``LIST_SEARCH_MIN``
            queries or more without ``allowed`` scores the probed lists exactly, batched by list, and
            needs no k_factor (None).
        by_list
            For an ``ivf-pca`` index without ``allowed``: True scores the probed lists batched by list,
            False searches one query at a time through the codes; None chooses by the number of
            queries (``LIST_SEARCH_MIN``).

        Returns
        -------
        sims, ids
            Arrays of shape (queries, k), best first; ids are -1 where fewer were found.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._refine is not None:
            return self._search_refined(queries, k, allowed, probes, by_list)
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            k = min(k, len(allowed))
            params = (faiss.SearchParametersIVF(sel=selector, nprobe=int(self._ivf.nprobe)) if self._ivf is not None
                      else faiss.SearchParameters(sel=selector))
            return self._index.search(queries, k, params=params)
        k = min(k, self.ntotal)
        if use_gpu is None or use_gpu:
            searcher = self.gpu_searcher()
            if searcher is not None:
                return searcher.search(queries, k)
        flat = self._flat
        if flat is not None and len(queries) * flat.ntotal >= BLAS_SEARCH_WORK:
            sims, rows = exact_search(queries, self.stored_vectors(), k)
            return sims, self.ids()[rows] if self._id_map else rows
        sims, ids = self._index.search(queries, k)
        return sims, ids

    def search_checked(self, queries: np.ndarray, k: int, *,
                       allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """:meth:`search` after the checks a query's size calls for, with what they found.

        An ``ivf-pca`` index's probes are checked first (:meth:`check_probes`) for a query of
        ``QUERY_CHECK_MIN`` cells or more, and for the first query of an opened index. A Flat index
        is searched exactly, unless the query's search would cost ``LIST_WORK`` or more (queries ×
        cells × width) on an index of ``LIST_CELLS`` cells or more with no GPU and no id filter: then
        by lists trained for the query, their probes checked on a sample of it
        (:meth:`ApproximateKnn.checked_search`).

        Parameters
        ----------
        queries
            Unit rows, as the atlas's own vectors are.
        k
            Neighbours per query.
        allowed
            Restrict the search to these cell ids (see :meth:`search`).

        Returns
        -------
        sims, ids, checked
            As :meth:`search`, and what the probe check found (empty when none ran).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        work = float(len(queries)) * self.ntotal * self.dim
        if (self.kind == "flat" and allowed is None and work >= LIST_WORK and self.ntotal >= LIST_CELLS
                and self.gpu_searcher() is None):
            sims, rows, checked = ApproximateKnn(self.stored_vectors(), lists_per_root=CHECKED_LISTS).checked_search(
                queries, min(k, self.ntotal))
            found = rows >= 0
            return sims, np.where(found, self.ids()[np.where(found, rows, 0)], -1), checked
        checked = self.check_probes(queries) if len(queries) >= QUERY_CHECK_MIN or not self.checked else {}
        sims, ids = self.search(queries, k, allowed=allowed)
        return sims, ids, checked

    def _search_refined(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                        probes: tuple[int, int | None] | None = None,
                        by_list: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Search an ``ivf-pca`` index: its L2 distances between unit rows become inner products, and
        an ``allowed`` set of ids becomes a selector over the IVF's own row positions.

        The re-ranking pool is the one tuned for recall@``TUNE_K`` (``k_factor × TUNE_K`` candidates)
        whatever ``k``: the first ``TUNE_K`` of a larger ``k`` are then exactly as good, at the tuned cost.
        ``probes`` (nprobe, k_factor) overrides :meth:`_probes` for this search; ``by_list`` is
        :meth:`search`'s.
        """
        faiss = _faiss()
        refine = self._refine
        k = min(k, self.ntotal)
        if allowed is None and (len(queries) >= LIST_SEARCH_MIN if by_list is None else by_list):
            nprobe = probes[0] if probes is not None else self._widest_lists or self._probes()[0]
            return self._search_lists(queries, k, nprobe)
        id_map = self.ids()
        nprobe, k_factor = self._probes() if probes is None else (probes[0], probes[1] or self._probes()[1])
        lists = self._list_params(nprobe)
        if allowed is not None:
            positions = np.flatnonzero(np.isin(id_map, allowed))
            k = min(k, len(positions))
            selector = faiss.IDSelectorBatch(positions)
            lists.sel = selector
        reduced = faiss.SearchParametersPreTransform(index_params=lists)
        factor = max(1.0, (float(k_factor) * TUNE_K + 0.5) / max(k, 1))  # + 0.5: faiss truncates k × factor
        params = faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=reduced)
        distances, rows = refine.search(queries, k, params=params)
        found = rows >= 0
        ids = np.where(found, id_map[np.where(found, rows, 0)], -1)
        sims = np.where(found, 1.0 - distances / 2.0, -np.inf).astype(np.float32)
        return sims, ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add cells to the index (into its trained lists, for the IVF kinds).

        Parameters
        ----------
        vectors
            Unit rows of the new cells.
        ids
            Their int64 cell ids.
        """
        self._index.add_with_ids(np.ascontiguousarray(vectors), ids)
        self._info.n = self.ntotal
        self._gpu = self._lists = None

    def remove(self, low: int, high: int) -> None:
        """Remove the cells with ids in [low, high).

        An ``ivf-pca`` index (whose re-ranking store cannot drop rows in place) is refilled with
        the rest, keeping its trained PCA and lists.

        Parameters
        ----------
        low, high
            The id range removed (``high`` excluded).
        """
        faiss = _faiss()
        if self._refine is None:
            self._index.remove_ids(faiss.IDSelectorRange(low, high))
        else:
            ids = self.ids()
            keep = np.flatnonzero((ids < low) | (ids >= high))
            store = faiss.downcast_index(self._refine.refine_index)
            vectors = store.reconstruct_batch(keep) if len(keep) else np.zeros((0, self.dim), dtype=np.float32)
            self._index.reset()
            if len(keep):
                self._index.add_with_ids(np.ascontiguousarray(vectors), ids[keep])
        self._info.n = self.ntotal
        self._gpu = self._lists = None

    def save(self, path: str | Path, provenance: dict[str, Any]) -> None:
        """Write the index and a JSON sidecar (``<path>.json``) with its info, provenance and checksum.

        Parameters
        ----------
        path
            The index file.
        provenance
            What it was built from (model, parameters, versions), kept in the sidecar.
        """
        from screader_db.checksums import sha256_file

        faiss = _faiss()
        target = Path(path)
        faiss.write_index(self._index, str(target))
        self._info.extra["bytes_per_cell"] = round(target.stat().st_size / max(self._info.n, 1), 1)
        sidecar = {"index": self._info.to_dict(), "provenance": provenance, "sha256": sha256_file(target),
                   "faiss_version": faiss.__version__}
        Path(str(target) + ".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True))
        self._provenance = dict(provenance)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = False) -> CellIndex:
        """Read an index and its sidecar, with the probes it was tuned with.

        Parameters
        ----------
        path
            The index file (its sidecar is ``<path>.json``).
        verify
            Check the file's sha256 against the sidecar's first.

        Returns
        -------
        CellIndex

        Raises
        ------
        AtlasError
            The file or its sidecar cannot be read, or (``verify``) the checksum differs.
        """
        faiss = _faiss()
        target = Path(path)
        try:
            sidecar = json.loads(Path(str(target) + ".json").read_text())
            if verify:
                from screader_db.checksums import sha256_file

                if sha256_file(target) != sidecar["sha256"]:
                    message = f"the index {target} does not match its recorded sha256; rebuild the atlas"
                    raise AtlasError(message)
            index = faiss.read_index(str(target))
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            message = f"cannot read the FAISS index {target}: {err}"
            raise AtlasError(message) from err
        recorded = sidecar.get("index", {})
        info = IndexInfo.from_dict({"kind": "", "n": int(index.ntotal), "dim": int(index.d), **recorded})
        loaded = cls(index, info, provenance=sidecar.get("provenance"))
        nprobe = recorded.get("nprobe")
        if nprobe and loaded._ivf is not None:
            factor = recorded.get("k_factor")
            loaded._set_nprobe(int(nprobe), k_factor=None if factor is None else int(factor))
        return loaded


class TorchFlatSearcher:
    """Exact inner-product search on a CUDA GPU with torch, for Flat indexes when faiss has no GPU support.

    The atlas vectors are copied to the GPU once (fp16 by default) and queries are searched in
    batches; results match the CPU Flat index up to fp16 rounding of near ties.

    Parameters
    ----------
    index
        A Flat :class:`CellIndex`.
    dtype
        torch dtype name of the copy on the GPU.
    device
        torch device.
    """

    def __init__(self, index: CellIndex, *, dtype: str = "float16", device: str = "cuda") -> None:
        torch = require("torch", extra="llm", purpose="exact search on a GPU without faiss-gpu")
        if index._flat is None:
            message = f"the torch searcher copies a flat index; this one is {index.kind}"
            raise ScreaderError(message)
        vectors = index._flat.reconstruct_n(0, index._flat.ntotal)
        self.ids = index.ids()
        self.device = device
        self.vectors = torch.from_numpy(vectors).to(device=device, dtype=getattr(torch, dtype))

    def search(self, queries: np.ndarray, k: int, *, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids) of each query row, as :meth:`CellIndex.search`.

        Parameters
        ----------
        queries
            Unit float32 rows.
        k
            Neighbours per query.
        batch
            Queries per matrix product.

        Returns
        -------
        sims, ids
        """
        import torch

        k = min(k, self.vectors.shape[0])
        sims = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, len(queries), batch):
                block = torch.from_numpy(queries[start : start + batch]).to(self.device, dtype=self.vectors.dtype)
                top = torch.topk(block @ self.vectors.T, k, dim=1)
                sims[start : start + batch] = top.values.float().cpu().numpy()
                rows[start : start + batch] = top.indices.cpu().numpy()
        return sims, self.ids[rows]
