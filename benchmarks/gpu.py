"""GPU against CPU on the same batch: exact search, and the hybrid's training and embedding.

    python benchmarks/gpu.py --out results/gpu.json
    python benchmarks/gpu.py --cells 200000 --queries 2000 --cpu-train-cells 32   # a quick CPU-only look

Search: ``--cells`` unit vectors (``--dim``), ``--queries`` queries, k = 10. Baseline: FAISS's
exact inner-product search on the CPU (every core). GPU: the atlas's torch exact searcher on CUDA
(fp16 scores, ids re-ranked as the library does), with how often its top-10 equals the CPU's.

Hybrid: a LLaMA decoder shaped like SmolLM2-135M (30 layers, width 576, 9 heads) with random
weights and a word-level tokenizer over gene symbols, so the arithmetic per cell is the real
model's while nothing is downloaded. One epoch of training on the same generated cells, then
embedding them, on each device (the CPU on fewer cells); cells/s compared. Without CUDA the GPU rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def search_rows(n: int, q: int, dim: int, cuda: bool) -> list[dict[str, Any]]:
    from screader_db.cell_embedding import l2_normalise
    from screader_db.index import CellIndex, TorchFlatSearcher, knn, recall_at_k

    rng = np.random.default_rng(0)
    vectors = l2_normalise(rng.standard_normal((n, dim)).astype(np.float32))
    queries = l2_normalise(vectors[rng.choice(n, q, replace=False)] + 0.3 * rng.standard_normal((q, dim)).astype(np.float32))
    (cpu_sims, cpu_ids), cpu_s = _timed(lambda: knn(queries, vectors, 10))
    rows = [{"what": f"exact search, {n:,} x {dim}, {q:,} queries", "device": "cpu (faiss Flat)", "seconds": cpu_s,
             "per_second": q / cpu_s, "unit": "queries"}]
    if cuda:
        searcher = TorchFlatSearcher(CellIndex.build(vectors, np.arange(n, dtype=np.int64), kind="flat"))
        searcher.search(queries[:64], 10)  # warm-up: copies the vectors to the GPU, loads kernels
        (gpu_sims, gpu_ids), gpu_s = _timed(lambda: searcher.search(queries, 10))
        same = recall_at_k(gpu_ids, cpu_ids)
        rows.append({"what": rows[0]["what"], "device": "cuda (torch, fp16)", "seconds": gpu_s, "per_second": q / gpu_s,
                     "unit": "queries", "top10_agreement": same,
                     "max_score_difference": float(np.abs(gpu_sims - cpu_sims).max())})
    return rows


SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 2048}


def smollm2_shaped_decoder(folder: Path, genes: list[str]) -> Path:
    """A randomly initialised LLaMA the size of SmolLM2-135M, with a word-level tokenizer."""
    from screader_db.hybrid import DEFAULT_PROMPT
    from screader_db.synthetic import random_llama

    words = set(genes) | set(DEFAULT_PROMPT.replace(",", " ").replace(".", " ").replace(":", " ").split())
    return random_llama(folder, sorted(words), **SMOLLM2_SHAPE)


def hybrid_rows(n_cells: int, n_top: int, devices: dict[str, int]) -> list[dict[str, Any]]:
    """Train and embed on each device (``devices``: device -> cells it trains on; rates are per cell)."""
    import scipy.sparse as sp

    from screader_db.hybrid import train
    from screader_db.synthetic import chunks, design

    plan = design(n_types=8, n_genes=500, seed=0)
    counts, types = next(chunks(plan, n_cells, chunk=n_cells, seed=1))
    X = sp.csr_matrix(sp.diags(1e4 / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)) @ counts, dtype=np.float32)
    X.data = np.log1p(X.data)
    labels = np.asarray(plan.types)[types]
    vectors = np.random.default_rng(2).standard_normal((len(plan.genes), 384)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        decoder = smollm2_shaped_decoder(Path(tmp) / "decoder", plan.genes)
        for device, cells in devices.items():
            part, part_labels = X[:cells], labels[:cells]
            params = {"decoder": str(decoder), "n_top": n_top, "epochs": 1, "train_cells": cells}
            (model, _), train_s = _timed(lambda device=device, params=params, part=part, part_labels=part_labels:
                                         train("hybrid", part, part_labels, vectors, params=params, device=device))
            _, embed_s = _timed(lambda model=model, part=part: model.embed(part))
            what = f"hybrid, SmolLM2-sized decoder, {n_top} gene tokens"
            rows += [{"what": f"{what}: train 1 epoch", "device": device, "seconds": train_s, "per_second": cells / train_s,
                      "unit": "cells", "cells": cells},
                     {"what": f"{what}: embed", "device": device, "seconds": embed_s, "per_second": cells / embed_s,
                      "unit": "cells", "cells": cells}]
    return rows


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000, help="atlas vectors for the search rows")
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--train-cells", type=int, default=1024, help="cells the GPU trains the hybrid on (0: skip)")
    parser.add_argument("--cpu-train-cells", type=int, default=64, help="cells the CPU trains it on (rates are per cell)")
    parser.add_argument("--n-top", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from screader_db.devices import cuda_available

    cuda = cuda_available()
    rows = search_rows(args.cells, args.queries, args.dim, cuda)
    if args.train_cells:
        devices = {"cpu": args.cpu_train_cells, **({"cuda": args.train_cells} if cuda else {})}
        rows += hybrid_rows(max(devices.values()), args.n_top, devices)
    print("| what | device | seconds | per second | GPU / CPU |")
    print("|---|---|---|---|---|")
    cpu_rate = {r["what"]: r["per_second"] for r in rows if r["device"].startswith("cpu")}
    for row in rows:
        ratio = row["per_second"] / cpu_rate[row["what"]]
        print(f"| {row['what']} | {row['device']} | {row['seconds']:.2f} | {_rate(row['per_second'])} {row['unit']} | "
              f"{ratio:.1f}x |")
        row["ratio_to_cpu"] = ratio
    for row in rows:
        if "top10_agreement" in row:
            print(f"GPU top-10 agreement with exact CPU search: {row['top10_agreement']:.4f}; "
                  f"largest score difference {row['max_score_difference']:.2e}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cuda": cuda, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
