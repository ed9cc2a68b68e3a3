"""Scale benchmark: build an atlas of N synthetic cells and annotate a large query, on one machine.

    python benchmarks/scale.py --cells 100000 --queries 20000 --workdir /tmp/scale --out scale-100k.json
    python benchmarks/scale.py --cells 1000000 --queries 100000 --workdir /tmp/scale --out scale-1m.json
    python benchmarks/scale.py --cells 1000000 --queries 20000 --recall-queries 500 --layout none \
        --workdir /tmp/scale --out scale-1m.json                      # no UMAP layout; fewer exact searches

One run, one data set: a synthetic reference of ``--cells`` cells (20 cell types over 5,000 real
gene symbols, negative-binomial counts, cells varying within a type along gene programs and by
donor, see :mod:`screader_db.synthetic`; ``--no-programs`` for types that differ only by sampling
noise) and a query of ``--queries`` cells drawn from the same design with another seed. Both are
written to ``--workdir`` once and reused by later runs with the same sizes.

Measured, each against a baseline measured in the same run:

- the atlas build with the default settings (``build_atlas`` on the backed .h5ad): wall time,
  cells/s and peak resident memory, against CellTypist trained on a ``--celltypist-cells``
  subsample of the same reference;
- ``annotate(path, atlas)`` on the backed query file, end to end: wall time, cells/s and peak
  memory, against CellTypist reading, normalising and labelling the same query;
- recall@10 and search time of the atlas's own FAISS index against an exact ``IndexFlatIP`` over
  the same stored vectors, on ``--recall-queries`` query vectors;
- bytes per cell of the atlas folder (against the .h5ad counts it was built from) and of its
  index (against the exact Flat index's float32 vectors and ids);
- accuracy and macro-F1 against the synthetic truth, ours beside CellTypist's.

Every step runs in its own child process, and its peak resident set size is that process's
``ru_maxrss`` as returned by ``os.wait4`` (the largest of it and its own children). Prints a
Markdown table; ``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from screader_db.progress import Advance, Reporter

HERE = Path(__file__).resolve()
N_TYPES = 20
N_GENES = 5000
REFERENCE_SEED = 0
QUERY_SEED = 1
LABEL_KEY = "cell_type"
MEMORY_TARGET_GB = 8.0
QUERY_TARGET_S_PER_100K = 120.0
RECALL_TARGET = 0.95
LABELS_TARGET = 0.995
# --resample-from: manifest data sets whose real cells are resampled, and their label column
RESAMPLED_LABELS = {"kang": "cell_type", "baron_human": "cell_ontology_class", "pbmc3k": "celltype"}
QUERY_SHARE = 0.2


def resident_bytes() -> int:
    """This process's resident set size now (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class StageClock(Reporter):
    """A reporter that prints each stage with the time since the start and the peak resident memory
    seen while it was the latest stage (sampled four times a second), and keeps both."""

    def __init__(self) -> None:
        import threading

        self.start = time.perf_counter()
        self.stages: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.current = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), resident_bytes())

    def _note(self, text: str) -> None:
        seen = self.peaks.get(self.current, 0)
        line = f"[{time.perf_counter() - self.start:8.1f} s] {text}  (peak RSS so far in '{self.current[:40]}': {seen / 2**30:.2f} GiB)"
        self.current = text
        self.log.append(line)
        print(line, flush=True)

    def message(self, text: str) -> None:
        self._note(text)

    @contextmanager
    def task(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        began = time.perf_counter()
        self._note(f"{description} ({total:,} {unit}) ...")
        yield lambda n: None
        seconds = time.perf_counter() - began
        self.stages.append({"stage": description, "seconds": round(seconds, 2)})
        self._note(f"{description}: {seconds:.1f} s")


# ---------------------------------------------------------------- steps, each run in a child process


def step_build(cfg: dict[str, Any]) -> dict[str, Any]:
    from screader_db.builders.atlas import BuildSettings, build_atlas

    atlas = Path(cfg["atlas"])
    if atlas.exists():
        shutil.rmtree(atlas)
    clock = StageClock()
    began = time.perf_counter()
    opened = build_atlas(cfg["reference"], atlas, label_key=LABEL_KEY, dataset_name="synthetic",
                         settings=BuildSettings(layout=cfg["layout"]), reporter=clock)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "stages": clock.stages, "log": clock.log, "index": opened.info["index"], "dim": opened.info["dim"],
            "method": opened.embedder.method, "peak_rss_by_stage": clock.peaks}


def step_annotate(cfg: dict[str, Any]) -> dict[str, Any]:
    import anndata as ad

    from screader_db.annotation import annotate
    from screader_db.metrics import UNASSIGNED, agreement

    clock = StageClock()
    began = time.perf_counter()
    result = annotate(cfg["query"], cfg["atlas"], reporter=clock)
    seconds = time.perf_counter() - began
    backed = ad.read_h5ad(cfg["query"], backed="r")
    truth = backed.obs[LABEL_KEY].astype(str).to_numpy()
    backed.file.close()
    labels = result.table["label"].to_numpy()
    score = agreement(labels, truth)
    raw = agreement(result.table["raw_label"].to_numpy(), truth)
    rng = np.random.default_rng(cfg["seed"])
    rows = np.sort(rng.choice(len(labels), size=min(cfg["recall_queries"], len(labels)), replace=False))
    np.save(cfg["query_vectors"], result.embeddings[rows])
    return {"seconds": seconds, "stages": clock.stages, "log": clock.log, "accuracy": score.accuracy, "macro_f1": score.macro_f1,
            "unassigned": float(np.mean(labels == UNASSIGNED)), "assigned_precision": score.assigned_precision,
            "raw_accuracy": raw.accuracy, "novelty": result.info.get("novelty", {}).get("novel_cells", 0),
            "search_probes": result.info.get("search_probes", {})}


def _exact(found: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact search's (similarities, rows) as (similarities, atlas ids)."""
    return found[0], ids[found[1]]


def step_recall(cfg: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from screader_db import store
    from screader_db.index import knn, recall_at_k, search_threads
    from screader_db.vote import tally

    opened = store.open_atlas(cfg["atlas"])
    recorded = opened.info["index"]
    queries = np.ascontiguousarray(np.load(cfg["query_vectors"]), dtype=np.float32)
    began = time.perf_counter()
    ids, vectors = opened.embeddings()
    read_seconds = time.perf_counter() - began
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = opened.index
    checked = cfg.get("search_probes") or {}
    probes = (checked["nprobe"], checked["k_factor"]) if checked else None  # as the annotation searched
    by_list = True if checked.get("search") == "exact within the probed lists" else None
    k = 10
    index.search(queries[:10], k, use_gpu=False, probes=probes, by_list=by_list)  # warm-up
    began = time.perf_counter()
    _, found = index.search(queries, k, use_gpu=False, probes=probes, by_list=by_list)
    index_seconds = time.perf_counter() - began
    # The same cells as a query of their own size: checked on its own sample, then searched as the size chooses.
    alone = store.open_atlas(cfg["atlas"]).index
    began = time.perf_counter()
    alone_check = alone.check_probes(queries)
    _, alone_found = alone.search(queries, k, use_gpu=False)
    alone_seconds = time.perf_counter() - began
    began = time.perf_counter()
    _, truth_rows = knn(queries, vectors, k)
    exact_seconds = time.perf_counter() - began
    truth = ids[truth_rows]
    recall = recall_at_k(found, truth)
    # the labels the annotation's vote gives from the index's neighbours and from the exact ones
    defaults = opened.annotation_defaults()
    vote_k = int(defaults["k"])
    labels = opened.cells(["label"])["label"]
    vocabulary = sorted(labels.unique())
    codes = pd.Series(pd.Categorical(labels, categories=vocabulary).codes.astype(np.int64), index=labels.index)
    called = []
    for sims, found_ids in (index.search(queries, vote_k, use_gpu=False, probes=probes, by_list=by_list),
                            _exact(knn(queries, vectors, vote_k), ids), alone.search(queries, vote_k, use_gpu=False)):
        shares = tally(sims, codes.reindex(found_ids.ravel()).to_numpy().reshape(found_ids.shape), len(vocabulary),
                       power=float(defaults["power"]))
        called.append(shares.argmax(axis=1))
    del vectors
    nprobe, k_factor = probes if probes else (int(recorded.get("nprobe", 0)), recorded.get("k_factor"))
    return {"recall_at_10": recall, "labels_as_exact": float(np.mean(called[0] == called[1])), "vote_k": vote_k,
            "alone": {"recall_at_10": recall_at_k(alone_found, truth), "labels_as_exact": float(np.mean(called[2] == called[1])),
                      "seconds": alone_seconds, "nprobe": alone_check.get("nprobe"), "k_factor": alone_check.get("k_factor")},
            "checked_on_query": bool(checked), "nprobe": nprobe, "k_factor": k_factor,
            "queries": len(queries), "index_seconds": index_seconds,
            "exact_seconds": exact_seconds, "read_vectors_seconds": read_seconds, "threads": search_threads()}


def _alone_rows(recall: dict[str, Any]) -> list[tuple[str, ...]]:
    """The recall rows of the same cells searched as a query of their own size (its own probe check)."""
    alone = recall.get("alone")
    if not alone:
        return []
    how = f"nprobe {alone['nprobe']}" + (f", k_factor {alone['k_factor']}" if alone.get("k_factor") else "")
    return [
        (f"recall@10, the {recall['queries']:,} cells as a query alone ({how})", f"{alone['recall_at_10']:.4f}", "1.0000",
         ratio(alone["recall_at_10"], 1.0), f"exact IndexFlatIP; target ≥ {RECALL_TARGET}"),
        ("labels as from exact search, as a query alone", f"{alone['labels_as_exact']:.4f}", "1.0000",
         ratio(alone["labels_as_exact"], 1.0), f"exact IndexFlatIP; target ≥ {LABELS_TARGET}"),
        ("probe check and search time, as a query alone", f"{alone['seconds']:.2f} s", f"{recall['exact_seconds']:.2f} s",
         ratio(alone["seconds"], recall["exact_seconds"]), "exact IndexFlatIP"),
    ]


def step_celltypist(cfg: dict[str, Any]) -> dict[str, Any]:
    import anndata as ad
    import pandas as pd

    from screader_db.inputs import load_expression
    from screader_db.metrics import agreement
    from screader_db.peers import celltypist_label, celltypist_train

    began = time.perf_counter()
    backed = ad.read_h5ad(cfg["reference"], backed="r")
    rng = np.random.default_rng(cfg["seed"])
    rows = np.sort(rng.choice(backed.n_obs, size=min(cfg["celltypist_cells"], backed.n_obs), replace=False))
    subset = backed[rows].to_memory()
    backed.file.close()
    reference = load_expression(subset)
    reference_ad = ad.AnnData(X=reference.X, obs=reference.obs[[LABEL_KEY]],
                              var=pd.DataFrame(index=reference.genes))
    read_seconds = time.perf_counter() - began
    began = time.perf_counter()
    model = celltypist_train(reference_ad, label_key=LABEL_KEY, seed=cfg["seed"])
    train_seconds = time.perf_counter() - began
    del reference, reference_ad, subset
    began = time.perf_counter()
    query = load_expression(ad.read_h5ad(cfg["query"], backed="r"))
    query_ad = ad.AnnData(X=query.X, obs=query.obs[[]], var=pd.DataFrame(index=query.genes))
    predicted = celltypist_label(model, query_ad)
    predict_seconds = time.perf_counter() - began
    truth = query.obs[LABEL_KEY].astype(str).to_numpy()
    score = agreement(predicted, truth)
    return {"train_cells": len(rows), "read_seconds": read_seconds, "train_seconds": train_seconds,
            "predict_seconds": predict_seconds, "accuracy": score.accuracy, "macro_f1": score.macro_f1}


def run_step(name: str, cfg: dict[str, Any], folder: Path, *, tag: str | None = None) -> dict[str, Any]:
    """Run one step in a child process; its result plus wall time and peak RSS (bytes).

    The parent stays small: a forked child starts from the parent's peak RSS, so anything
    large (writing the data included) runs in a child of its own.
    """
    config = folder / f"step-{tag or name}.config.json"
    output = folder / f"step-{tag or name}.result.json"
    config.write_text(json.dumps(cfg))
    output.unlink(missing_ok=True)
    print(f"\n== {name}", flush=True)
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(HERE), "--step", name, "--config", str(config), "--result", str(output)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    if child.returncode != 0:
        message = f"step {name} failed with exit code {child.returncode}"
        raise SystemExit(message)
    result = json.loads(output.read_text())
    result["wall_seconds"] = wall
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    print(f"== {name}: {wall:.1f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB", flush=True)
    return result


# ---------------------------------------------------------------- data and sizes


def step_generate(cfg: dict[str, Any]) -> dict[str, Any]:
    from screader_db.synthetic import write_h5ad, write_resampled_h5ad

    began = time.perf_counter()
    if cfg.get("resample"):
        from screader_db.fetch import resolve_dataset
        from screader_db.inputs import read_h5ad

        source = read_h5ad(resolve_dataset(cfg["resample"]))
        # the reference is resampled from 80% of the real cells, the query from the other 20%
        in_query = np.random.default_rng(REFERENCE_SEED).random(source.n_obs) < QUERY_SHARE
        part = source[in_query if cfg["seed"] == QUERY_SEED else ~in_query]
        write_resampled_h5ad(cfg["path"], part, RESAMPLED_LABELS[cfg["resample"]], cfg["cells"], seed=cfg["seed"])
    else:
        write_h5ad(cfg["path"], cfg["cells"], n_types=N_TYPES, n_genes=N_GENES, seed=cfg["seed"],
                   design_seed=REFERENCE_SEED, programs=cfg["programs"])
    return {"seconds": time.perf_counter() - began}


def synthetic_files(workdir: Path, cells: int, queries: int, *, programs: bool = True,
                    resample: str | None = None) -> tuple[Path, Path, dict[str, float]]:
    """The reference and query files, written (each in a child process) unless already there."""
    if resample:
        reference = workdir / f"reference-{cells}c-resampled-{resample}-s{REFERENCE_SEED}.h5ad"
        query = workdir / f"query-{queries}c-resampled-{resample}-s{QUERY_SEED}.h5ad"
    else:
        kind = "programs" if programs else "noise"
        reference = workdir / f"reference-{cells}c-{N_TYPES}t-{N_GENES}g-{kind}-s{REFERENCE_SEED}.h5ad"
        query = workdir / f"query-{queries}c-{N_TYPES}t-{N_GENES}g-{kind}-s{QUERY_SEED}-d{REFERENCE_SEED}.h5ad"
    seconds: dict[str, float] = {}
    for path, n, seed in ((reference, cells, REFERENCE_SEED), (query, queries, QUERY_SEED)):
        if path.exists():
            print(f"reusing {path}", flush=True)
            continue
        done = run_step("generate", {"path": str(path), "cells": n, "seed": seed, "programs": programs,
                                     "resample": resample}, workdir, tag=path.stem)
        seconds[path.name] = done["seconds"]
    return reference, query, seconds


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed, each hard-linked file once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for item in path.rglob("*"):
        if item.is_symlink() or not item.is_file():
            continue
        stat = item.stat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


# ---------------------------------------------------------------- report


def ratio(ours: float, baseline: float) -> str:
    return f"{ours / baseline:.2f}×" if baseline else "-"


def table(results: dict[str, Any]) -> str:
    n, q = results["cells"], results["queries"]
    build, annot, recall, ct, size = (results[key] for key in ("build", "annotate", "recall", "celltypist", "sizes"))
    gib = 2**30
    ct_cells = ct["train_cells"]
    ct_query_rate = q / ct["predict_seconds"]
    rows = [
        ("reference cells", f"{n:,}", f"{ct_cells:,}", ratio(n, ct_cells), "cells CellTypist was trained on"),
        ("build wall time", f"{build['seconds']:.0f} s", f"{ct['train_seconds']:.0f} s",
         ratio(build["seconds"], ct["train_seconds"]), "CellTypist training (its subsample, in memory)"),
        ("build cells/s", f"{n / build['seconds']:,.0f}", f"{ct_cells / ct['train_seconds']:,.0f}",
         ratio(n / build["seconds"], ct_cells / ct["train_seconds"]), "CellTypist training"),
        ("build peak RSS", f"{build['peak_rss_bytes'] / gib:.2f} GiB", f"{MEMORY_TARGET_GB:.0f} GiB",
         ratio(build["peak_rss_bytes"] / gib, MEMORY_TARGET_GB), "target"),
        ("CellTypist peak RSS", "", f"{ct['peak_rss_bytes'] / gib:.2f} GiB", "", "CellTypist train + predict"),
        (f"query wall time ({q:,} cells)", f"{annot['seconds']:.0f} s", f"{ct['predict_seconds']:.0f} s",
         ratio(annot["seconds"], ct["predict_seconds"]), "CellTypist read + normalise + predict"),
        ("query time per 100k cells", f"{annot['seconds'] * 1e5 / q:.0f} s", f"{QUERY_TARGET_S_PER_100K:.0f} s",
         ratio(annot["seconds"] * 1e5 / q, QUERY_TARGET_S_PER_100K), "target"),
        ("query cells/s", f"{q / annot['seconds']:,.0f}", f"{ct_query_rate:,.0f}",
         ratio(q / annot["seconds"], ct_query_rate), "CellTypist"),
        ("query peak RSS", f"{annot['peak_rss_bytes'] / gib:.2f} GiB", f"{ct['peak_rss_bytes'] / gib:.2f} GiB",
         ratio(annot["peak_rss_bytes"], ct["peak_rss_bytes"]), "CellTypist train + predict"),
        (f"recall@10 ({build['index']['kind']}, nprobe {recall['nprobe']}"
         + (f", k_factor {recall['k_factor']})" if recall.get("k_factor") else ")"), f"{recall['recall_at_10']:.4f}", "1.0000",
         ratio(recall["recall_at_10"], 1.0), f"exact IndexFlatIP; target ≥ {RECALL_TARGET}"),
        (f"labels as from exact search (k {recall.get('vote_k', '')} vote)", f"{recall.get('labels_as_exact', float('nan')):.4f}",
         "1.0000", ratio(recall.get("labels_as_exact", float("nan")), 1.0), f"exact IndexFlatIP; target ≥ {LABELS_TARGET}"),
        (f"search time, {recall['queries']:,} queries, k=10", f"{recall['index_seconds']:.2f} s",
         f"{recall['exact_seconds']:.2f} s", ratio(recall["index_seconds"], recall["exact_seconds"]), "exact IndexFlatIP"),
        *_alone_rows(recall),
        ("atlas bytes/cell on disk", f"{size['atlas_per_cell']:,.0f}", f"{size['reference_per_cell']:,.0f}",
         ratio(size["atlas_per_cell"], size["reference_per_cell"]), "reference .h5ad (counts)"),
        ("index bytes/cell", f"{size['index_per_cell']:,.0f}", f"{size['flat_per_cell']:,.0f}",
         ratio(size["index_per_cell"], size["flat_per_cell"]), f"Flat index (float32 × {build['dim']} + id)"),
        ("accuracy vs truth", f"{annot['accuracy']:.4f}", f"{ct['accuracy']:.4f}", ratio(annot["accuracy"], ct["accuracy"]),
         "CellTypist"),
        ("macro-F1 vs truth", f"{annot['macro_f1']:.4f}", f"{ct['macro_f1']:.4f}", ratio(annot["macro_f1"], ct["macro_f1"]),
         "CellTypist"),
        ("Unassigned share", f"{annot['unassigned']:.4f}", "0", "", "CellTypist always assigns"),
    ]
    lines = ["| metric | ours | baseline | ratio | baseline is |", "|---|---:|---:|---:|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


STEPS = {"generate": step_generate, "build": step_build, "annotate": step_annotate, "recall": step_recall,
         "celltypist": step_celltypist}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000, help="reference cells (default 100,000)")
    parser.add_argument("--queries", type=int, default=100_000, help="query cells (default 100,000)")
    parser.add_argument("--workdir", type=Path, default=Path("scale-work"), help="where data and the atlas are kept")
    parser.add_argument("--layout", choices=("umap", "none"), default="umap",
                        help="the reference UMAP layout (the build default) or none")
    parser.add_argument("--no-programs", action="store_true",
                        help="cells of a type differ only by sampling noise (no gene programs, no donors): "
                             "near-tie neighbours, the hardest case for approximate search")
    parser.add_argument("--resample-from", choices=sorted(RESAMPLED_LABELS), default=None,
                        help="instead of the synthetic design, resample real cells of this data set (each thinned "
                             "binomially and shifted by a donor's gene offsets; the query from 20%% of the real cells "
                             "the reference is not drawn from)")
    parser.add_argument("--generate-only", action="store_true", help="write the data files and stop")
    parser.add_argument("--reuse-atlas", action="store_true", help="keep the atlas (and build figures) of an earlier run")
    parser.add_argument("--celltypist-cells", type=int, default=20_000, help="reference cells CellTypist trains on")
    parser.add_argument("--recall-queries", type=int, default=2000, help="query vectors for recall@10 and search time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        cfg = json.loads(args.config.read_text())
        args.result.write_text(json.dumps(STEPS[args.step](cfg), default=float))
        return

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    reference, query, generated = synthetic_files(workdir, args.cells, args.queries, programs=not args.no_programs,
                                                  resample=args.resample_from)
    if args.generate_only:
        return
    kind = f"resampled-{args.resample_from}" if args.resample_from else "noise" if args.no_programs else "programs"
    run = workdir / f"run-{args.cells}c-{args.queries}q-{kind}"
    run.mkdir(exist_ok=True)
    atlas = run / "atlas"
    cfg = {"reference": str(reference), "query": str(query), "atlas": str(atlas), "layout": args.layout,
           "seed": args.seed, "recall_queries": args.recall_queries, "celltypist_cells": args.celltypist_cells,
           "query_vectors": str(run / "query-vectors.npy")}
    with h5py.File(reference, "r") as handle:
        genes, types = len(handle["var"]["_index"]), len(handle["obs"][LABEL_KEY]["categories"])
    results: dict[str, Any] = {"cells": args.cells, "queries": args.queries, "genes": genes, "types": types,
                               "programs": not args.no_programs, "data": kind,
                               "layout": args.layout, "cpus": os.cpu_count(), "generated_seconds": generated}
    kept = run / "build.json"  # the build's figures, kept for --reuse-atlas
    if args.reuse_atlas and atlas.exists() and kept.exists():
        results["build"] = json.loads(kept.read_text())
    else:
        results["build"] = run_step("build", cfg, run)
        kept.write_text(json.dumps(results["build"], default=float))
    results["annotate"] = run_step("annotate", cfg, run)
    results["recall"] = run_step("recall", {**cfg, "search_probes": results["annotate"].get("search_probes", {})}, run)
    version = atlas / "current"
    index_bytes = (version / "index.faiss").stat().st_size
    dim = int(results["build"]["dim"])
    results["sizes"] = {"atlas_bytes": folder_bytes(atlas), "index_bytes": index_bytes,
                        "reference_bytes": reference.stat().st_size}
    results["sizes"].update({"atlas_per_cell": results["sizes"]["atlas_bytes"] / args.cells,
                             "index_per_cell": index_bytes / args.cells,
                             "reference_per_cell": results["sizes"]["reference_bytes"] / args.cells,
                             "flat_per_cell": dim * 4 + 8})
    results["celltypist"] = run_step("celltypist", cfg, run)
    markdown = table(results)
    results["table"] = markdown
    print(f"\n{args.cells:,} reference cells, {args.queries:,} query cells, {genes:,} genes, {types} types ({kind}); "
          f"layout {args.layout}; {os.cpu_count()} CPUs\n")
    print(markdown)
    for step in ("build", "annotate"):
        stages = ", ".join(f"{stage['stage'].lower()} {stage['seconds']:.0f} s" for stage in results[step]["stages"])
        print(f"\n{step} stages: {stages}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
