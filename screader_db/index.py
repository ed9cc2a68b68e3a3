"""FAISS indexes over cell vectors: inner product on unit vectors, ids are the atlas cell ids.

Small atlases get an exact ``Flat`` index; large ones an IVF index (with an HNSW coarse quantiser
once it has 2,048 lists or more) whose ``nprobe`` is chosen at build time to reach a recall target
against exact search on a sample. Wide vectors (more than twice ``PCA_DIM``) get ``ivf-pca``: the
IVF lists hold the vectors' top ``PCA_DIM`` principal components, and the best ``k_factor × k``
candidates they give are re-ranked exactly on the full vectors, kept beside them; ``nprobe`` and
``k_factor`` are chosen together, the cheapest pair that reaches the recall target. Search runs
on a GPU when faiss was built with CUDA and one is present, otherwise on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from screader_db.errors import AtlasError, ScreaderError

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


def _faiss() -> Any:
    import faiss

    return faiss


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


@dataclass
class IndexInfo:
    """What kind of index was built, and how well it recalls exact search."""

    kind: str
    n: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "dim": self.dim, "nlist": self.nlist, "nprobe": self.nprobe,
                "recall_at_10": self.recall_at_10, **self.extra}


def memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def choose_kind(n: int, requested: str = "auto", *, dim: int = 384) -> str:
    """Exact Flat below ``FLAT_LIMIT`` cells; IVF above, with 8-bit codes once raw vectors would
    take more than a quarter of the machine's memory, and PQ codes beyond twice that; otherwise
    principal-component lists with exact re-ranking (``ivf-pca``) for vectors wider than
    2 × ``PCA_DIM``."""
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
    """IVF lists: about 8·√N, at least 16, and at least 39 training points per list."""
    return int(max(16, min(8 * math.sqrt(n), n // 39)))


def build_index(vectors: np.ndarray, ids: np.ndarray, *, kind: str = "auto", recall_target: float = 0.95,
                seed: int = 0) -> tuple[Any, IndexInfo]:
    """Build an index over ``vectors`` (unit rows) with the given int64 ``ids``."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    chosen = choose_kind(n, kind, dim=dim)
    if chosen == "flat" or n < 1000:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(vectors, ids)
        return index, IndexInfo("flat", n, dim)
    nlist = n_lists(n)
    hnsw = nlist >= HNSW_QUANTIZER_LISTS
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, size=min(n, max(nlist * 40, 50_000)), replace=False))]
    extra: dict[str, Any] = {"quantizer": "hnsw" if hnsw else "flat", "recall_target": recall_target}
    if chosen == "ivf-pca" and dim > PCA_DIM:
        index = _pca_refined(dim, nlist, hnsw)
        _train_and_add(index, train, vectors, ids, extra)
        del train
        began = time.perf_counter()
        nprobe, factor, recall = tune_refined(index, vectors, recall_target=recall_target, seed=seed)
        extra["tune_seconds"] = round(time.perf_counter() - began, 1)
        set_nprobe(index, nprobe, k_factor=factor)
        extra.update({"pca_dim": PCA_DIM, "k_factor": factor, "target_met": bool(recall >= recall_target)})
        return index, IndexInfo("ivf-pca", n, dim, nlist=nlist, nprobe=nprobe, recall_at_10=recall, extra=extra)
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
    _train_and_add(index, train, vectors, ids, extra)
    del train
    began = time.perf_counter()
    nprobe, recall = tune_nprobe(index, vectors, ids, recall_target=recall_target, seed=seed)
    extra["tune_seconds"] = round(time.perf_counter() - began, 1)
    set_nprobe(index, nprobe)
    return index, IndexInfo(chosen, n, dim, nlist=nlist, nprobe=nprobe, recall_at_10=recall, extra=extra)


def _train_and_add(index: Any, train: np.ndarray, vectors: np.ndarray, ids: np.ndarray, extra: dict[str, Any]) -> None:
    """Train on ``train``, then add the vectors (in blocks, for lists of codes: a block's encoded
    copy is all the extra memory adding takes). An HNSW coarse quantiser places each vector with ``ADD_EF_SEARCH``:
    faiss's default (16) puts a share of them in the wrong list, which costs recall at every nprobe."""
    began = time.perf_counter()
    index.train(train)
    extra["train_seconds"] = round(time.perf_counter() - began, 1)
    parts = refined_parts(index)
    ivf = parts[1] if parts is not None else index
    quantizer = _faiss().downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(int(quantizer.hnsw.efSearch), ADD_EF_SEARCH)
    began = time.perf_counter()
    # A re-ranking store grows one flat buffer: adding in blocks would copy it whenever it outgrew
    # its capacity (twice its size for a moment), so it takes every vector at once.
    block = len(vectors) if parts is not None else ADD_BLOCK
    for start in range(0, len(vectors), block):
        index.add_with_ids(vectors[start : start + block], ids[start : start + block])
    extra["add_seconds"] = round(time.perf_counter() - began, 1)


def _pca_refined(dim: int, nlist: int, hnsw: bool) -> Any:
    """IDMap2 → RefineFlat (full vectors) → PCA to ``PCA_DIM`` → IVF lists of 8-bit codes, all under
    L2, which ranks unit vectors as inner product does (|x − q|² = 2 − 2 x·q); a centred PCA would
    not. The 8-bit codes find the candidates as well as float ones and are four times faster to scan."""
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    return _faiss().index_factory(dim, f"IDMap2,PCA{PCA_DIM},{coarse},SQ8,RFlat", _faiss().METRIC_L2)


def refined_parts(index: Any) -> tuple[Any, Any] | None:
    """(the IndexRefine, its IVF) of an ``ivf-pca`` index; None for other kinds."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if not isinstance(inner, faiss.IndexRefine):
        return None
    return inner, faiss.extract_index_ivf(inner.base_index)


def set_nprobe(index: Any, nprobe: int, *, k_factor: int | None = None) -> None:
    """Probe ``nprobe`` lists (and re-rank ``k_factor × k`` candidates, for ``ivf-pca``); an HNSW
    coarse quantiser searches at least that wide (``efSearch``), since it returns only about
    ``efSearch`` good lists however many are asked for."""
    parts = refined_parts(index)
    if parts is not None:
        refine, index = parts
        if k_factor is not None:
            refine.k_factor = float(k_factor)
    index.nprobe = int(nprobe)
    quantizer = getattr(index, "quantizer", None)
    if quantizer is not None:
        found = _faiss().downcast_index(quantizer)
        if hasattr(found, "hnsw"):
            found.hnsw.efSearch = max(int(found.hnsw.efSearch), int(nprobe))


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int, *, block: int = 65_536,
                 query_block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (inner products, row positions) of each query over ``vectors``, exactly.

    One matrix product per block of queries and rows (torch's when it is installed: its top-k
    is several times faster than a partition in numpy), so no second copy of the vectors is made.
    """
    torch: Any
    try:
        import torch
    except ImportError:
        torch = None
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    rows_out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), query_block):
        part = queries[q0 : q0 + query_block]
        best_sims = np.full((len(part), 0), -np.inf, dtype=np.float32)
        best_rows = np.zeros((len(part), 0), dtype=np.int64)
        for start in range(0, len(vectors), block):
            rows = vectors[start : start + block]
            take = min(k, len(rows))
            if torch is not None:
                top = torch.topk(torch.from_numpy(part) @ torch.from_numpy(np.ascontiguousarray(rows)).T, take, dim=1)
                top_sims, top_rows = top.values.numpy(), top.indices.numpy().astype(np.int64)
            else:
                sims = part @ rows.T
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
    """Mean share of each row of ``truth`` (the exact top k) that the same row of ``found`` holds."""
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


def tune_nprobe(index: Any, vectors: np.ndarray, ids: np.ndarray, *, recall_target: float, seed: int = 0,
                sample: int = 1000, k: int = 10) -> tuple[int, float]:
    """Smallest power-of-two nprobe (or every list) whose recall@k against exact search reaches the target,
    and the recall measured with it."""
    queries, rows, truth_pos = _tuning_queries(vectors, k, seed, sample)
    truth = ids[truth_pos]
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        _, found = index.search(queries, k + 1)
        recall = recall_at_k(_without_self(found, ids[rows], k), truth)
        if recall >= recall_target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


def _next_nprobe(nprobe: int) -> int:
    """The step after ``nprobe`` in 1, 2, 3, 4, 6, 8, 12, 16, …: powers of two and 1.5 × them."""
    if nprobe >= 2 and nprobe & (nprobe - 1) == 0:
        return nprobe * 3 // 2
    return 1 << nprobe.bit_length()


def tune_refined(index: Any, vectors: np.ndarray, *, recall_target: float, seed: int = 0, sample: int = 1000,
                 k: int = TUNE_K) -> tuple[int, int, float]:
    """The cheapest (nprobe, k_factor) of an ``ivf-pca`` index whose recall@k against exact search
    reaches the target, and the recall the index measures with it.

    Cost per query, in bytes read: ``nprobe`` lists of ``PCA_DIM`` 8-bit codes a cell plus
    ``k_factor × k`` float32 vectors re-ranked (at twice the price: they are read at random); it
    tracks the measured search time. Every factor is tried from one base search per nprobe; nprobe
    grows by steps of about ×1.4 (powers of two and 1.5 × them) until scanning alone costs more than
    the best pair found. Where no pair reaches the target (cells whose nearest neighbours are
    near-ties), nprobe stops growing once the largest pool's recall has gained less than
    ``PLATEAU`` over two steps, and the largest pool at the first nprobe within ``PLATEAU`` of
    the best recall seen is kept: more probing would cost much and find little.
    """
    parts = refined_parts(index)
    if parts is None:
        message = "tune_refined needs an ivf-pca index"
        raise ScreaderError(message)
    refine, ivf = parts
    n, dim = vectors.shape
    queries, rows, truth = _tuning_queries(vectors, k, seed, sample)
    per_list = n / ivf.nlist
    best: tuple[float, int, int] | None = None
    widest: list[tuple[int, float]] = []  # (nprobe, recall with the largest pool)
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        scan = nprobe * per_list * PCA_DIM
        if best is not None and scan >= best[0]:
            break
        _, candidates = refine.base_index.search(queries, k * REFINE_FACTORS[-1] + 1)
        candidates = _without_self(candidates, rows, k * REFINE_FACTORS[-1])
        sims = np.full(candidates.shape, -np.inf, dtype=np.float32)
        for row, found in enumerate(candidates):
            valid = found >= 0
            sims[row, valid] = vectors[found[valid]] @ queries[row]
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
        _, nprobe, factor = best
    else:
        top_recall = max(r for _, r in widest)
        nprobe, factor = next(p for p, r in widest if r >= top_recall - PLATEAU), REFINE_FACTORS[-1]
    set_nprobe(index, nprobe, k_factor=factor)
    _, found = refine.search(queries, k + 1)
    return nprobe, factor, recall_at_k(_without_self(found, rows, k), truth)


def save_index(index: Any, info: IndexInfo, path: str | Path, provenance: dict[str, Any]) -> None:
    """Write the index and a JSON sidecar (``<path>.json``) with its provenance and checksum."""
    from screader_db.checksums import sha256_file

    faiss = _faiss()
    target = Path(path)
    faiss.write_index(index, str(target))
    info.extra["bytes_per_cell"] = round(target.stat().st_size / max(info.n, 1), 1)
    sidecar = {"index": info.to_dict(), "provenance": provenance, "sha256": sha256_file(target),
               "faiss_version": faiss.__version__}
    Path(str(target) + ".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True))


def load_index(path: str | Path, *, verify: bool = False) -> tuple[Any, dict[str, Any]]:
    """Read an index and its sidecar; ``verify`` checks the file's sha256 first."""
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
    nprobe = recorded.get("nprobe")
    if nprobe and (hasattr(index, "nprobe") or refined_parts(index) is not None):
        factor = recorded.get("k_factor")
        set_nprobe(index, int(nprobe), k_factor=None if factor is None else int(factor))
    return index, sidecar


_GPU_SEARCHERS: dict[int, tuple[Any, Any]] = {}


def torch_cuda() -> bool:
    """True when torch sees a CUDA GPU; torch is imported only on machines with an NVIDIA driver."""
    import os

    if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchFlatSearcher:
    """Exact inner-product search on a CUDA GPU with torch, for Flat indexes when faiss has no GPU support.

    The atlas vectors are copied to the GPU once (fp16 by default) and queries are searched in
    batches; results match the CPU Flat index up to fp16 rounding of near ties.
    """

    def __init__(self, index: Any, *, dtype: str = "float16", device: str = "cuda") -> None:
        import torch

        faiss = _faiss()
        flat = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        vectors = flat.reconstruct_n(0, flat.ntotal)
        self.ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else np.arange(flat.ntotal)
        self.device = device
        self.vectors = torch.from_numpy(vectors).to(device=device, dtype=getattr(torch, dtype))

    def search(self, queries: np.ndarray, k: int, *, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
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


def gpu_searcher(index: Any) -> Any | None:
    """A GPU copy of ``index`` (faiss-gpu, or torch for Flat indexes), cached per index; None without a GPU."""
    key = id(index)
    if key in _GPU_SEARCHERS:
        return _GPU_SEARCHERS[key][1]
    faiss = _faiss()
    searcher: Any = None
    if refined_parts(index) is not None:
        return None  # re-ranking indexes stay on the CPU
    if gpu_count() > 0:
        searcher = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    elif torch_cuda() and not hasattr(faiss.downcast_index(getattr(index, "index", index)), "nlist"):
        searcher = TorchFlatSearcher(index)
    if searcher is not None:
        _GPU_SEARCHERS[key] = (index, searcher)
    return searcher


def search(index: Any, queries: np.ndarray, k: int, *, use_gpu: bool | None = None,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities, ids) for each query row.

    ``allowed`` restricts the search to those cell ids (exactly, through a FAISS id selector;
    such searches run on the CPU). Otherwise a GPU is used when present (faiss-gpu, or torch
    for exact Flat indexes) unless ``use_gpu`` is False. Queries are unit rows, as the atlas's
    own vectors are.
    """
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    parts = refined_parts(index)
    if parts is not None:
        return _search_refined(index, parts, queries, k, allowed)
    if allowed is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        k = min(k, len(allowed))
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=int(index.nprobe)) if hasattr(index, "nprobe")
                  else faiss.SearchParameters(sel=selector))
        return index.search(queries, k, params=params)
    k = min(k, index.ntotal)
    if use_gpu is None or use_gpu:
        searcher = gpu_searcher(index)
        if searcher is not None:
            return searcher.search(queries, k)
    flat = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(flat, faiss.IndexFlatIP) and len(queries) * flat.ntotal >= BLAS_SEARCH_WORK:
        stored = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
        sims, rows = exact_search(queries, stored, k)
        return sims, faiss.vector_to_array(index.id_map)[rows] if hasattr(index, "id_map") else rows
    sims, ids = index.search(queries, k)
    return sims, ids


def _search_refined(index: Any, parts: tuple[Any, Any], queries: np.ndarray, k: int,
                    allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Search an ``ivf-pca`` index: its L2 distances between unit rows become inner products, and
    an ``allowed`` set of ids becomes a selector over the IVF's own row positions.

    The re-ranking pool is the one tuned for recall@``TUNE_K`` (``k_factor × TUNE_K`` candidates)
    whatever ``k``: the first ``TUNE_K`` of a larger ``k`` are then exactly as good, at the tuned cost.
    """
    faiss = _faiss()
    refine, ivf = parts
    id_map = faiss.vector_to_array(index.id_map)
    k = min(k, index.ntotal)
    lists = faiss.SearchParametersIVF(nprobe=int(ivf.nprobe))
    if allowed is not None:
        positions = np.flatnonzero(np.isin(id_map, allowed))
        k = min(k, len(positions))
        selector = faiss.IDSelectorBatch(positions)
        lists.sel = selector
    reduced = faiss.SearchParametersPreTransform(index_params=lists)
    factor = max(1.0, (float(refine.k_factor) * TUNE_K + 0.5) / max(k, 1))  # + 0.5: faiss truncates k × factor
    params = faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=reduced)
    distances, rows = refine.search(queries, k, params=params)
    found = rows >= 0
    ids = np.where(found, id_map[np.where(found, rows, 0)], -1)
    sims = np.where(found, 1.0 - distances / 2.0, -np.inf).astype(np.float32)
    return sims, ids


def remove_id_range(index: Any, low: int, high: int) -> None:
    """Remove the cells with ids in [low, high); an ``ivf-pca`` index (whose re-ranking store
    cannot drop rows in place) is refilled with the rest, keeping its trained PCA and lists."""
    faiss = _faiss()
    parts = refined_parts(index)
    if parts is None:
        index.remove_ids(faiss.IDSelectorRange(low, high))
        return
    refine, _ = parts
    ids = faiss.vector_to_array(index.id_map)
    keep = np.flatnonzero((ids < low) | (ids >= high))
    store = faiss.downcast_index(refine.refine_index)
    vectors = store.reconstruct_batch(keep) if len(keep) else np.zeros((0, index.d), dtype=np.float32)
    index.reset()
    if len(keep):
        index.add_with_ids(np.ascontiguousarray(vectors), ids[keep])
