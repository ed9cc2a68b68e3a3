"""How much like real data are the synthetic cells, for nearest-neighbour search?

    python benchmarks/realism.py --workdir /tmp/realism --out realism.json

Approximate search is only as hard as the neighbourhoods it searches. This builds an atlas (the
default method) from each real data set of the manifest that has enough cells (Kang PBMC,
Baron human) and from synthetic data sets of the same size (with and without gene programs,
see :mod:`screader_db.synthetic`), and measures on each atlas's own cell vectors:

- the share of within-label variance held by the top 8, 64 and 128 principal directions (real
  cells vary along a few programs; cells that differ only by sampling noise spread it over every
  direction);
- recall@10 of an IVF index (about 39 cells a list) probing 1/32 and 1/16 of its lists;
- recall@10 of exact search in the top 64 principal components, re-ranked in full (top 40 and
  top 160 candidates).

A synthetic set whose figures fall inside the range of the real ones is a fair stand-in for them
in ``benchmarks/scale.py``. Prints a Markdown table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

K = 10
QUERIES = 1000


def atlas_vectors(path: Path, folder: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    from screader_db import store
    from screader_db.builders.atlas import BuildSettings, build_atlas

    if not store.is_atlas(folder):
        build_atlas(path, folder, label_key=label_key, dataset_name=path.stem, settings=BuildSettings(layout="none"))
    opened = store.open_atlas(folder)
    ids, vectors = opened.embeddings()
    labels = opened.cells(["label"]).loc[ids, "label"].astype(str).to_numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32), labels


def measure(vectors: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    from screader_db.index import CellIndex, knn, pca_reduce, recall_at_k

    n, dim = vectors.shape
    within = vectors.astype(np.float64)
    for label in np.unique(labels):
        rows = labels == label
        within[rows] -= within[rows].mean(axis=0)
    spectrum = np.linalg.eigvalsh(within.T @ within)[::-1]
    share = np.cumsum(spectrum) / spectrum.sum()
    out: dict[str, float] = {"cells": n, "dim": dim}
    for top in (8, 64, 128):
        out[f"within_top{top}"] = float(share[min(top, dim) - 1])

    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(QUERIES, n), replace=False)
    queries = vectors[rows]
    _, truth = knn(queries, vectors, K + 1)
    truth = truth[:, 1:]  # each query is an atlas cell: drop itself
    # The atlas's IVF: below about 97,000 cells, n // 39 lists, trained on every cell.
    ivf = CellIndex.build(vectors, np.arange(n, dtype=np.int64), kind="ivf")
    nlist = ivf.info.nlist
    for part in (32, 16):
        ivf.nprobe = max(1, nlist // part)
        _, found = ivf.search(queries, K + 1, use_gpu=False)
        out[f"ivf_1/{part}"] = recall_at_k(np.where(found == rows[:, None], -1, found), truth)
    reduced, reduced_queries = pca_reduce(vectors, min(64, dim), queries=queries)
    for pool in (4 * K, 16 * K):
        _, candidates = knn(reduced_queries, reduced, pool + 1, metric="l2")
        candidates = candidates[:, 1:]
        sims = np.einsum("qd,qkd->qk", queries, vectors[candidates])
        top = np.take_along_axis(candidates, np.argsort(-sims, axis=1)[:, :K], axis=1)
        out[f"pca64_rerank{pool}"] = recall_at_k(top, truth)
    return out


def main() -> None:
    from screader_db.fetch import ensure
    from screader_db.synthetic import write_h5ad

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("realism-work"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    sets: list[tuple[str, Path, str]] = [("Kang PBMC (real)", ensure("kang"), "cell_type"),
                                         ("Baron human (real)", ensure("baron_human"), "cell_ontology_class")]
    size = 13_576  # Kang's cells
    for name, programs in (("synthetic, gene programs", True), ("synthetic, noise only", False)):
        path = work / f"synthetic-{size}-{'programs' if programs else 'noise'}.h5ad"
        if not path.exists():
            write_h5ad(path, size, n_types=20, n_genes=5000, seed=0, programs=programs)
        sets.append((name, path, "cell_type"))
    results: dict[str, Any] = {}
    for name, path, key in sets:
        vectors, labels = atlas_vectors(path, work / f"atlas-{path.stem}", key)
        results[name] = measure(vectors, labels)
        print(f"{name}: {results[name]}", flush=True)
    columns = ["cells", "dim", "within_top8", "within_top64", "within_top128", "ivf_1/32", "ivf_1/16",
               "pca64_rerank40", "pca64_rerank160"]
    lines = ["| data set | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in results.items():
        cells = [f"{row[c]:,.0f}" if c in ("cells", "dim") else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"results": results, "table": "\n".join(lines)}, indent=2))


if __name__ == "__main__":
    main()
