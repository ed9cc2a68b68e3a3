"""FAISS indexes over cell vectors: inner product on unit vectors, ids are the atlas cell ids.

Small atlases get an exact ``Flat`` index; large ones an IVF index (with an HNSW coarse quantiser
once it has 2,048 lists or more) whose ``nprobe`` is chosen at build time to reach a recall target
against exact search on a sample. Search runs on a GPU when faiss was built with CUDA and one is
present, otherwise on the CPU.
"""

from __future__ import annotations

import json
import math
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
INDEX_KINDS = ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq")


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
    take more than a quarter of the machine's memory, and PQ codes beyond twice that."""
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
    return "ivf"


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
    quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT) if hnsw else faiss.IndexFlatIP(dim)
    if chosen == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif chosen == "ivf-sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        m = max(d for d in range(1, min(dim, 64) + 1) if dim % d == 0)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, size=min(n, max(nlist * 40, 50_000)), replace=False))]
    index.train(train)
    index.add_with_ids(vectors, ids)
    nprobe, recall = tune_nprobe(index, vectors, ids, recall_target=recall_target, seed=seed)
    set_nprobe(index, nprobe)
    extra = {"quantizer": "hnsw" if hnsw else "flat", "recall_target": recall_target}
    return index, IndexInfo(chosen, n, dim, nlist=nlist, nprobe=nprobe, recall_at_10=recall, extra=extra)


def set_nprobe(index: Any, nprobe: int) -> None:
    """Probe ``nprobe`` lists; an HNSW coarse quantiser searches at least that wide (``efSearch``),
    since it returns only about ``efSearch`` good lists however many are asked for."""
    index.nprobe = int(nprobe)
    quantizer = getattr(index, "quantizer", None)
    if quantizer is not None:
        found = _faiss().downcast_index(quantizer)
        if hasattr(found, "hnsw"):
            found.hnsw.efSearch = max(int(found.hnsw.efSearch), int(nprobe))


def tune_nprobe(index: Any, vectors: np.ndarray, ids: np.ndarray, *, recall_target: float, seed: int = 0,
                sample: int = 1000, k: int = 10) -> tuple[int, float]:
    """Smallest power-of-two nprobe (or every list) whose recall@k against exact search reaches the target,
    and the recall measured with it."""
    faiss = _faiss()
    rng = np.random.default_rng(seed + 1)
    queries = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
    # Exact search straight over the vectors: the same result as an IndexFlatIP, without a second copy of them.
    _, truth_pos = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[truth_pos]
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        _, found = index.search(queries, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
        if recall >= recall_target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


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
    nprobe = sidecar.get("index", {}).get("nprobe")
    if nprobe and hasattr(index, "nprobe"):
        set_nprobe(index, int(nprobe))
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
    for exact Flat indexes) unless ``use_gpu`` is False.
    """
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
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
    sims, ids = index.search(queries, k)
    return sims, ids
