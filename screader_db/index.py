"""FAISS indexes over cell vectors: inner product on unit vectors, ids are the atlas cell ids.

Small atlases get an exact ``Flat`` index; large ones an IVF index whose ``nprobe`` is chosen
at build time to reach a recall target against exact search on a sample. Search runs on a GPU
when faiss was built with CUDA and one is present, otherwise on the CPU.
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


def choose_kind(n: int, requested: str = "auto") -> str:
    if requested not in INDEX_KINDS:
        message = f"unknown index kind {requested!r}; choose one of {', '.join(INDEX_KINDS)}"
        raise ScreaderError(message)
    if requested != "auto":
        return requested
    return "flat" if n < FLAT_LIMIT else "ivf-sq8"


def build_index(vectors: np.ndarray, ids: np.ndarray, *, kind: str = "auto", recall_target: float = 0.95,
                seed: int = 0) -> tuple[Any, IndexInfo]:
    """Build an index over ``vectors`` (unit rows) with the given int64 ``ids``."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    chosen = choose_kind(n, kind)
    if chosen == "flat" or n < 1000:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(vectors, ids)
        return index, IndexInfo("flat", n, dim)
    nlist = int(min(max(4 * math.sqrt(n), 16), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    if chosen == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif chosen == "ivf-sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        m = max(d for d in range(1, min(dim, 64) + 1) if dim % d == 0)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = vectors[rng.choice(n, size=min(n, max(nlist * 64, 50_000)), replace=False)]
    index.train(train)
    index.add_with_ids(vectors, ids)
    nprobe, recall = tune_nprobe(index, vectors, ids, recall_target=recall_target, seed=seed)
    index.nprobe = nprobe
    return index, IndexInfo(chosen, n, dim, nlist=nlist, nprobe=nprobe, recall_at_10=recall)


def tune_nprobe(index: Any, vectors: np.ndarray, ids: np.ndarray, *, recall_target: float, seed: int = 0,
                sample: int = 1000, k: int = 10) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall@k against exact search reaches the target."""
    faiss = _faiss()
    rng = np.random.default_rng(seed + 1)
    queries = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth_pos = exact.search(queries, k)
    truth = ids[truth_pos]
    recall = 0.0
    nprobe = 1
    while nprobe <= index.nlist:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
        if recall >= recall_target:
            break
        nprobe *= 2
    return min(nprobe, index.nlist), recall


def save_index(index: Any, info: IndexInfo, path: str | Path, provenance: dict[str, Any]) -> None:
    """Write the index and a JSON sidecar (``<path>.json``) with its provenance and checksum."""
    from screader_db.checksums import sha256_file

    faiss = _faiss()
    target = Path(path)
    faiss.write_index(index, str(target))
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
        index.nprobe = int(nprobe)
    return index, sidecar


def search(index: Any, queries: np.ndarray, k: int, *, use_gpu: bool | None = None,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (similarities, ids) for each query row.

    ``allowed`` restricts the search to those cell ids (exactly, through a FAISS id selector;
    such searches run on the CPU). Otherwise a GPU is used when present unless told not to.
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
    if (use_gpu is None or use_gpu) and gpu_count() > 0:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    sims, ids = index.search(queries, k)
    return sims, ids
