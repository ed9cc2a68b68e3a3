"""The reference map at scale: time, and how well it keeps each cell's neighbourhood.

    python benchmarks/reference_map.py --cells 200000 --samples 20000,50000
    python benchmarks/reference_map.py --cells 1000000 --samples 50000

Cells are unit vectors drawn around ``--types`` cell-type centres, each type with three distinct
sub-states (so a map has structure within types as well as between them), in ``--dim``
dimensions. For each sample size, :func:`screader_db.layout.reference_layout` lays out that many
cells with UMAP and places the rest from their nearest laid-out cells; printed: seconds, and for
2,000 placed cells (not in the sample) the share of their 15 nearest cells on the map that are of
their own type, and of their own sub-state (purity), beside the same for 2,000 laid-out cells.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, types: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around type centres with three distinct sub-states each; each cell's type and state."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((types, dim)).astype(np.float32)
    states = centres[:, None, :] + 0.14 * rng.standard_normal((types, 3, dim)).astype(np.float32)
    kind = rng.integers(0, types, n)
    state = kind * 3 + rng.integers(0, 3, n)
    vectors = states.reshape(types * 3, dim)[state] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, kind, state


def purity(coords: np.ndarray, groups: list[np.ndarray], cells: np.ndarray, k: int = 15) -> list[float]:
    """For each grouping, the share of the ``k`` nearest cells on the map of ``cells`` in their own group."""
    from screader_db.index import knn

    _, near = knn(coords[cells].astype(np.float32), coords.astype(np.float32), k + 1, metric="l2")
    others = np.array([[c for c in row if c != cell][:k] for row, cell in zip(near, cells, strict=True)])
    return [float((group[others] == group[cells][:, None]).mean()) for group in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--samples", default="20000,50000", help="UMAP sample sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--types", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from screader_db.layout import reference_layout

    vectors, kind, state = clustered(args.cells, args.dim, args.types)
    rng = np.random.default_rng(1)
    rows = []
    for sample in (int(s) for s in args.samples.split(",")):
        start = time.perf_counter()
        coords = reference_layout(vectors, sample=sample)
        seconds = time.perf_counter() - start
        chosen = np.sort(np.random.default_rng(0).choice(args.cells, size=min(sample, args.cells), replace=False))
        placed = np.setdiff1d(np.arange(args.cells), chosen)
        row = {"cells": args.cells, "sample": sample, "seconds": round(seconds, 1)}
        for name, pool in (("placed", placed), ("laid_out", chosen)):
            if len(pool):
                found = purity(coords, [kind, state], rng.choice(pool, size=min(2000, len(pool)), replace=False))
                row[f"{name}_type"], row[f"{name}_state"] = round(found[0], 3), round(found[1], 3)
        rows.append(row)
        print(row, flush=True)
    print("\n| cells | UMAP sample | seconds | placed: type purity | placed: state purity | laid out: type purity | "
          "laid out: state purity |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cells']:,} | {r['sample']:,} | {r['seconds']} | {r.get('placed_type', '')} | {r.get('placed_state', '')} | "
              f"{r.get('laid_out_type', '')} | {r.get('laid_out_state', '')} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
