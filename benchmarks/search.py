"""Cell search benchmark: 100 queries of each kind on a synthetic atlas, against exact search in the same run.

    python benchmarks/search.py --cells 250000 --workdir /tmp/search-bench --out search-250k.json
    python benchmarks/search.py --cells 1000000 --workdir /tmp/scale-work --out search-1m.json

The reference is benchmarks/scale.py's synthetic one (20 cell types over 5,000 genes, gene programs
and donors; written once into ``--workdir`` and reused), and the query cells are drawn from the
same design with another seed. The atlas is built with the default settings (``--layout none``)
unless the run folder already holds one (then its build is not timed again). Above 200,000 cells
the default index is ``ivf-pca``, as at a million.

On one opened and loaded atlas (as a server holds it), each kind of query is timed end to end
through :func:`screader_db.cell_search.search` (reading the stored vectors, embedding query cells,
the ``where`` SQL, the metadata and the hit table) and for the search alone (``info["search_seconds"]``:
the FAISS search, and the exact search over the allowed cells a filter may add), k = 10:

- 100 atlas cells by id, without a filter, with ``--where "label = 'type03'"`` (one type of 20,
  searched exactly over its cells) and with ``--where "label <> 'type03'"`` (the index's selector);
- 100 query cells, as an .h5ad file;
- the centroid of one label, and a gene signature (one query each).

Baseline, in the same run: exact search (blocked matrix products over every stored vector,
:func:`screader_db.index.exact_search`) for the same query vectors, k and allowed cells; the
recall@10 of the search against it; for the filters, also what the index's id selector finds alone.
Prints a Markdown table; ``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

N_QUERIES = 100
K = 10
REPEATS = 3
LABEL = "type03"
SIGNATURE_GENES = 8  # the label's most raised genes, from the atlas's label profiles


def timed(call: Any, repeats: int = REPEATS) -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls, and the last call's answer."""
    seconds, answer = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), answer


def exact(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Seconds and ids of exact search over every stored vector (or the ``rows`` allowed)."""
    from screader_db.index import exact_search

    began = time.perf_counter()
    searched = vectors if rows is None else vectors[rows]
    _, found = exact_search(queries, searched, K)
    seconds = time.perf_counter() - began
    return seconds, (ids if rows is None else ids[rows])[found]


def found_ids(hits: Any, names: list[str]) -> np.ndarray:
    """Queries × K hit ids in the order of ``names``, -1 where a query got fewer than K."""
    found = np.full((len(names), K), -1, dtype=np.int64)
    row = {name: i for i, name in enumerate(names)}
    for query, rank, cell in zip(hits["query"], hits["rank"], hits["cell_id"], strict=True):
        found[row[query], rank - 1] = cell
    return found


def signature_of(opened: Any, label: str) -> dict[str, float]:
    """The label's most raised genes over the other labels (mean log expression), weight 1 each."""
    from screader_db.explain import label_profiles

    profiles = label_profiles(opened)
    assert profiles is not None, "the atlas keeps no label profiles"
    others = profiles.drop(index=label).mean(axis=0)
    raised = (profiles.loc[label] - others).reindex(opened.embedder.genes).dropna().sort_values(ascending=False)
    return dict.fromkeys(raised.index[:SIGNATURE_GENES], 1.0)


def measure(atlas: Path, query_file: Path, seed: int) -> dict[str, Any]:
    import anndata as ad

    from screader_db.cell_search import query_cells, search
    from screader_db.index import recall_at_k, search_threads
    from screader_db.options import SearchOptions
    from screader_db.store import open_atlas

    opened = open_atlas(atlas).load()
    ids, vectors = opened.embeddings()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(ids, size=N_QUERIES, replace=False))
    queries = vectors[np.searchsorted(ids, picked)] if np.all(np.diff(ids) > 0) else vectors[
        np.asarray([np.flatnonzero(ids == i)[0] for i in picked])]
    rows: dict[str, Any] = {}
    exact(queries[:2], ids, vectors)  # warm-up: imports and first-touch of the vectors
    search(opened, ids=picked[:2], k=K)

    # by id, no filter
    seconds, result = timed(lambda: search(opened, ids=picked, k=K))
    found = found_ids(result.hits, [str(i) for i in picked])
    exact_seconds, truth = exact(queries, ids, vectors)
    rows["ids"] = {"seconds": seconds, "search_seconds": result.info["search_seconds"], "exact_seconds": exact_seconds,
                   "recall_at_10": recall_at_k(found, truth), "queries": N_QUERIES}

    # by id, with a where filter: one label of 20 (searched exactly), and every other label (the selector)
    labels = opened.cells()["label"]
    for key, where, keep in (("ids_where", f"label = '{LABEL}'", labels == LABEL),
                             ("ids_where_most", f"label <> '{LABEL}'", labels != LABEL)):
        seconds, result = timed(lambda where=where: search(opened, ids=picked, k=K, where=where))
        allowed = np.flatnonzero(np.isin(ids, labels.index[keep.to_numpy()].to_numpy()))
        exact_seconds, truth = exact(queries, ids, vectors, allowed)
        found = found_ids(result.hits, [str(i) for i in picked])
        _, alone = opened.index.search(queries, K, allowed=ids[allowed])  # the id selector without an exact search
        rows[key] = {"seconds": seconds, "search_seconds": result.info["search_seconds"], "exact_seconds": exact_seconds,
                     "recall_at_10": recall_at_k(found, truth), "queries": N_QUERIES, "allowed": len(allowed),
                     "searched_exactly": result.info["searched_exactly"], "short": int((found < 0).any(axis=1).sum()),
                     "outside": int((~np.isin(found[found >= 0], ids[allowed])).sum()),
                     "selector_alone_hits": int((alone >= 0).sum()), "selector_alone_recall_at_10": recall_at_k(alone, truth)}

    # query cells from a file
    backed = ad.read_h5ad(query_file, backed="r")
    picked_cells = np.sort(rng.choice(backed.n_obs, size=N_QUERIES, replace=False))
    cells_file = query_file.parent / f"{query_file.stem}-{N_QUERIES}cells.h5ad"
    backed[picked_cells].to_memory().write_h5ad(cells_file)
    backed.file.close()
    seconds, result = timed(lambda: search(opened, cells=cells_file, k=K))
    query = query_cells(opened, cells_file, options=SearchOptions())
    exact_seconds, truth = exact(query.vectors, ids, vectors)
    found = found_ids(result.hits, query.names)
    rows["cells"] = {"seconds": seconds, "search_seconds": result.info["search_seconds"], "exact_seconds": exact_seconds,
                     "recall_at_10": recall_at_k(found, truth), "queries": len(query.names)}

    # one centroid, one signature
    for name, kwargs in (("centroid", {"centroid_of": LABEL}), ("signature", {"signature": signature_of(opened, LABEL)})):
        seconds, result = timed(lambda kwargs=kwargs: search(opened, k=K, **kwargs))
        rows[name] = {"seconds": seconds, "search_seconds": result.info["search_seconds"], "queries": 1,
                      "label_share": float((result.hits["label"] == LABEL).mean())}
    return {"index": opened.info.get("index", {}), "dim": int(vectors.shape[1]), "threads": search_threads(),
            "rows": rows}


def table(measured: dict[str, Any]) -> str:
    lines = ["| query | queries | search() end to end | the search alone | exact search | ratio (search / exact) | recall@10 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"ids": "atlas cells by id", "ids_where": f"by id, `--where \"label = '{LABEL}'\"`",
             "ids_where_most": f"by id, `--where \"label <> '{LABEL}'\"`",
             "cells": "query cells (.h5ad)", "centroid": f"centroid of {LABEL}", "signature": f"signature of {LABEL}"}
    for key, row in measured["rows"].items():
        exact_s = row.get("exact_seconds")
        ratio = f"{row['search_seconds'] / exact_s:.3f}×" if exact_s else ""
        recall = f"{row['recall_at_10']:.3f}" if "recall_at_10" in row else f"{row['label_share']:.0%} {LABEL}"
        lines.append(f"| {names[key]} | {row['queries']} | {row['seconds']:.3f} s | {row['search_seconds']:.3f} s | "
                     f"{'' if exact_s is None else f'{exact_s:.3f} s'} | {ratio} | {recall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=250_000, help="reference cells (default 250,000)")
    parser.add_argument("--query-cells", type=int, default=2_000, help="cells in the query file drawn from (default 2,000)")
    parser.add_argument("--workdir", type=Path, default=Path("search-work"), help="where data and the atlas are kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    from scale import synthetic_files

    from screader_db.builders.atlas import BuildSettings, build_atlas

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    reference, query, generated = synthetic_files(workdir, args.cells, args.query_cells)
    atlas = workdir / f"search-atlas-{args.cells}c"
    results: dict[str, Any] = {"cells": args.cells, "cpus": os.cpu_count(), "generated_seconds": generated}
    if not atlas.exists():
        began = time.perf_counter()
        build_atlas(reference, atlas, label_key="cell_type", dataset_name="synthetic", settings=BuildSettings(layout="none"))
        results["build_seconds"] = time.perf_counter() - began
    results.update(measure(atlas, query, args.seed))
    results["table"] = table(results)
    index = results["index"]
    print(f"\n{args.cells:,} atlas cells, {results['dim']}-d, {index.get('kind')} index (nprobe {index.get('nprobe')}, "
          f"k_factor {index.get('k_factor')}); {results['threads']} search threads, {os.cpu_count()} CPUs\n")
    print(results["table"])
    for key in ("ids_where", "ids_where_most"):
        where = results["rows"][key]
        print(f"{key}: {where['allowed']:,} cells allowed; {where['searched_exactly']} of {where['queries']} queries searched "
              f"exactly; {where['short']} got fewer than {K} hits; {where['outside']} hits outside the filter; the id "
              f"selector alone found {where['selector_alone_hits']:,} of {where['queries'] * K:,} hits (recall@10 "
              f"{where['selector_alone_recall_at_10']:.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
