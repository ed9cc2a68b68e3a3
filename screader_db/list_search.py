"""Exact search within the IVF lists each query probes, batched by list as matrix products.

A large query probes every list many times over: a million-cell atlas has 8,000 lists, and
100,000 queries probing 128 each visit a list 1,600 times on average. Scoring one query at a time
(FAISS's IVF search) reads the list's codes 1,600 times; grouping the queries by the lists they
probe scores each list's full vectors against all of them in one matrix product (BLAS), several
times faster on the same cores, and exact on the full vectors, so no re-ranking pool is needed.

A query that probes few lists (each list's best ``k`` of every query fit side by side) is answered
in one pass: every probed list's best ``k`` rows are kept and the best ``k`` of them are the answer
(the own neighbour graph of a query or of the reference map's cells, 8 probes). Otherwise its top
``k`` are gathered in two passes. The first scores its first few probed lists and keeps its
``k``-th best similarity as a floor; the second scores every probed list and keeps only the
similarities at or above the floor (about fifty a query at a million cells and 128 probes, of the
tens of thousands scored), whose best ``k`` are the answer. The floor is a similarity the query
already reaches ``k`` times, so nothing in its final top ``k`` falls below it.

The lists (which stored rows each holds) and the probes (which lists each query visits) come from
the index that owns them (:class:`screader_db.index.CellIndex`); this module only multiplies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from screader_db.extras import optional

# Queries searched together: bounds the memory of the probes and of the kept similarities. An
# ivf-pca index's float16 lists are widened once a block, so its search keeps large blocks (400,000
# synthetic rows 574 wide, 100,000 queries probing 16 lists: 6.2-7.2 s against 7.6-8.4 s in blocks of
# 20,000); rows held in float32 are searched in smaller ones (index.APPROXIMATE_BLOCK).
QUERY_BLOCK = 100_000
# Probed lists whose scores set each query's floor in the first pass (at most a quarter of them).
FLOOR_LISTS = 8
FLOOR_SLACK = 1e-5
# Searches probing so few lists that each list's best k of every query fit side by side in this
# many columns are answered in one pass over every probed list.
ONE_PASS_WIDTH = 256


@dataclass(frozen=True)
class Lists:
    """The stored rows of each IVF list, list by list.

    Attributes
    ----------
    rows
        Row positions of the stored vectors, list 0's first.
    starts
        ``nlist + 1`` offsets into ``rows``: list ``i`` is ``rows[starts[i]:starts[i + 1]]``.
    """

    rows: np.ndarray
    starts: np.ndarray

    @classmethod
    def of_owners(cls, owner: np.ndarray, n_lists: int) -> Lists:
        """The lists of rows from the list each row is in (the inverse of :meth:`list_of_rows`).

        Parameters
        ----------
        owner
            The list of each row, 0 to ``n_lists - 1``.
        n_lists
            Number of lists.

        Returns
        -------
        Lists
            Each list's rows in row order.
        """
        order = np.argsort(owner, kind="stable")
        return cls(rows=order.astype(np.int64), starts=np.searchsorted(owner[order], np.arange(n_lists + 1)))

    @property
    def count(self) -> int:
        """Number of lists."""
        return len(self.starts) - 1

    def list_of_rows(self, n_rows: int) -> np.ndarray:
        """The list each stored row is in (-1 for rows in none).

        Parameters
        ----------
        n_rows
            Rows stored.

        Returns
        -------
        numpy.ndarray
            int64 of length ``n_rows``.
        """
        owner = np.full(n_rows, -1, dtype=np.int64)
        owner[self.rows] = np.repeat(np.arange(self.count), np.diff(self.starts))
        return owner


def probe_recall(probes: np.ndarray, truth_rows: np.ndarray, owner: np.ndarray, nprobe: int) -> float:
    """Recall of exact search within the first ``nprobe`` probed lists of each query.

    Parameters
    ----------
    probes
        Lists each query probes, nearest first (queries × at least ``nprobe``).
    truth_rows
        The exact nearest stored rows of each query (queries × k).
    owner
        The list of every stored row (:meth:`Lists.list_of_rows`).
    nprobe
        Lists probed.

    Returns
    -------
    float
        Mean share of each query's exact neighbours that lie in the lists it probes.
    """
    lists = owner[truth_rows]
    probed = probes[:, :nprobe]
    found = (lists[:, :, None] == probed[:, None, :]).any(axis=2)
    return float(found.mean())


def search(queries: np.ndarray, vectors: np.ndarray, lists: Lists, probes: np.ndarray,
           k: int, *, block: int = QUERY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (inner products, stored rows) of each query among the rows of the lists it probes.

    Parameters
    ----------
    queries
        float32 query rows.
    vectors
        The stored rows (float32, or float16: each list's rows are widened as they are scored), of the same width.
    lists
        The rows of each list.
    probes
        Lists each query probes (queries × nprobe; -1 for none).
    k
        Neighbours per query.
    block
        Queries scored together (memory; each list's probing queries are gathered from a block's rows).

    Returns
    -------
    sims, rows
        Arrays of shape (queries, k), best first; rows are -1 (and similarities -inf) where the
        probed lists hold fewer than ``k`` rows.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    one_pass = probes.shape[1] * k <= ONE_PASS_WIDTH
    floor_lists = max(1, min(FLOOR_LISTS, probes.shape[1] // 4))
    for start in range(0, len(queries), block):
        these = slice(start, start + block)
        part = queries[these]
        if one_pass:
            sims[these], rows[these] = _best_of_lists(part, vectors, lists, probes[these], k)
            continue
        floor = _floors(part, vectors, lists, probes[these, :floor_lists], k)
        sims[these], rows[these] = _kept_best(part, vectors, lists, probes[these], floor, k)
    return sims, rows


def _by_list(probes: np.ndarray, n_lists: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The queries probing each list: (query of each probe, grouped by list; offsets of each list's
    group; the lists probed at all)."""
    flat = probes.ravel()
    if n_lists < np.iinfo(np.int16).max:  # numpy sorts 16-bit integers stably by radix, several times faster
        flat = flat.astype(np.int16)
    order = np.argsort(flat, kind="stable")
    queries = (order // probes.shape[1]).astype(np.int64)
    bounds = np.searchsorted(flat[order], np.arange(n_lists + 1))
    return queries, bounds, np.flatnonzero(np.diff(bounds))


def _scored(part: np.ndarray, vectors: np.ndarray, lists: Lists,
            probes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each probed list that holds rows: (the queries probing it, its rows, their similarities,
    queries × rows), one matrix product a list.

    Through torch when it is installed: gathering the probing queries' rows and widening a float16
    list are each about twice as fast as in numpy (100,000 queries probing 69 of 8,000 lists: 8.1 s
    against 10.3 s for the second pass), and the product is the same BLAS call."""
    torch: Any = optional("torch")
    which, bounds, probed = _by_list(probes, lists.count)
    rows = None if torch is None else torch.from_numpy(part)
    for number in probed:
        members = lists.rows[lists.starts[number] : lists.starts[number + 1]]
        if not len(members):
            continue
        asking = which[bounds[number] : bounds[number + 1]]
        if rows is None:
            yield asking, members, part[asking] @ vectors[members].astype(np.float32, copy=False).T
        else:
            stored = torch.from_numpy(vectors[members]).float()
            yield asking, members, (rows.index_select(0, torch.from_numpy(asking)) @ stored.T).numpy()


def _floors(part: np.ndarray, vectors: np.ndarray, lists: Lists, probes: np.ndarray, k: int) -> np.ndarray:
    """Each query's ``k``-th best similarity over the lists in ``probes``, a hair lower (the second
    pass's products may round the same similarity a bit lower); -inf where they hold fewer than ``k`` rows."""
    slots = probes.shape[1]
    best = np.full((len(part), slots * k), -np.inf, dtype=np.float32)
    filled = np.zeros(len(part), dtype=np.int64)
    for asking, members, scores in _scored(part, vectors, lists, probes):
        take = min(k, len(members))
        if take < len(members):  # values only: numpy partitions them several times faster than their positions
            scores = np.partition(scores, len(members) - take, axis=1)[:, len(members) - take :]
        best[asking[:, None], filled[asking][:, None] + np.arange(take)] = scores
        filled[asking] += k
    return np.partition(best, slots * k - k, axis=1)[:, slots * k - k] - FLOOR_SLACK


def _best_of_lists(part: np.ndarray, vectors: np.ndarray, lists: Lists, probes: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``k`` over every list in ``probes``, in one pass: each list's best ``k`` rows
    of every query side by side, then the best ``k`` of those (-1 and -inf where they hold fewer)."""
    slots = probes.shape[1] * k
    best = np.full((len(part), slots), -np.inf, dtype=np.float32)
    found = np.full((len(part), slots), -1, dtype=np.int64)
    filled = np.zeros(len(part), dtype=np.int64)
    for asking, members, scores in _scored(part, vectors, lists, probes):
        take = min(k, len(members))
        if take < len(members):
            at = np.argpartition(scores, len(members) - take, axis=1)[:, len(members) - take :]
            scores = np.take_along_axis(scores, at, axis=1)
        else:
            at = np.broadcast_to(np.arange(take), scores.shape)
        columns = filled[asking][:, None] + np.arange(take)
        best[asking[:, None], columns] = scores
        found[asking[:, None], columns] = members[at]
        filled[asking] += k
    top = np.argpartition(-best, k - 1, axis=1)[:, :k] if slots > k else np.broadcast_to(np.arange(slots), best.shape)
    sims, rows = np.take_along_axis(best, top, axis=1), np.take_along_axis(found, top, axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")
    sims, rows = np.take_along_axis(sims, order, axis=1), np.take_along_axis(rows, order, axis=1)
    rows[~np.isfinite(sims)] = -1
    return sims, rows


def _kept_best(part: np.ndarray, vectors: np.ndarray, lists: Lists, probes: np.ndarray, floor: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score every probed list, keep what reaches each query's floor, and return each query's best ``k``."""
    kept_queries, kept_rows, kept_sims = [], [], []
    for asking, members, scores in _scored(part, vectors, lists, probes):
        kept = np.flatnonzero(scores >= floor[asking][:, None])  # one flat pass: faster than a 2-d nonzero
        kept_queries.append(asking[kept // len(members)])
        kept_rows.append(members[kept % len(members)])
        kept_sims.append(scores.ravel()[kept])
    sims = np.full((len(part), k), -np.inf, dtype=np.float32)
    rows = np.full((len(part), k), -1, dtype=np.int64)
    if not kept_queries:
        return sims, rows
    query, row, sim = np.concatenate(kept_queries), np.concatenate(kept_rows), np.concatenate(kept_sims)
    order = _by_query_best_first(query, sim)
    query, row, sim = query[order], row[order], sim[order]
    rank = np.arange(len(query)) - np.searchsorted(query, query)
    top = rank < k
    sims[query[top], rank[top]] = sim[top]
    rows[query[top], rank[top]] = row[top]
    return sims, rows


def _by_query_best_first(query: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """The order that sorts (query, similarity) pairs by query and, within a query, best first (equal
    pairs in their given order): one stable sort of a 64-bit key, the query above the similarity's
    float32 bits turned to an unsigned integer that falls as the similarity rises (half the time of
    sorting by similarity and then by query)."""
    bits = (sim.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 makes -0.0 equal to 0.0
    rising = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    key = (query.astype(np.uint64) << np.uint64(32)) | (~rising).astype(np.uint64)
    return np.argsort(key, kind="stable")
