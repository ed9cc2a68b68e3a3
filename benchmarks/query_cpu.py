"""What a query costs beside CellTypist: whole processes, and annotate() against its own embedding and search.

    python benchmarks/query_cpu.py --atlas atlases/baron_human --workdir results/query-cpu

Set up once in ``--workdir`` (not timed): the Baron mouse query written as raw counts over human
gene symbols (the package's ortholog mapping), the one file both tools read; a CellTypist model
trained on the atlas's reference (Baron human, log1p CP10k over every gene it measures, feature
selection off, one job) and saved. The atlas is ``make run``'s; it is built if missing.

Timed, ``--repeats`` times each, alternating, as child processes (CPU = user + system time the
operating system reports for the child; wall time beside it):

- ``screader-db query FILE --atlas ATLAS --table labels.csv --overwrite``;
- CellTypist as a user runs it: import, load the model, read the file, normalise (scanpy
  ``normalize_total`` to 10,000 and ``log1p``), predict, write the labels as CSV.

In process, on an opened atlas (a second call, as a server makes it): ``annotate()`` wall time,
and the time of its two essential stages (embedding the query cells, searching the index), taken
from the reporter's counted tasks. Prints a Markdown table with the ratios; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPEATS = 3
QUERY = "baron_mouse"
REFERENCE = "baron_human"
LABEL_KEY = "cell_ontology_class"

CELLTYPIST_PROCESS = """
import sys
import anndata as ad
import celltypist
import scanpy as sc
query, model, out = sys.argv[1:4]
adata = ad.read_h5ad(query)
sc.pp.normalize_total(adata, target_sum=1e4)
sc.pp.log1p(adata)
result = celltypist.annotate(adata, model=celltypist.models.Model.load(model))
result.predicted_labels.to_csv(out)
"""


def human_counts(path: Path) -> None:
    """Write the Baron mouse query as raw counts over human symbols (input genes summed per symbol)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from screader_db.fetch import ensure
    from screader_db.genes import default_resolver
    from screader_db.inputs import plan_genes

    mouse = ad.read_h5ad(ensure(QUERY))
    mapping = default_resolver().map(list(map(str, mouse.var_names)), species="mouse")
    plan = plan_genes(mapping.symbols)
    counts = sp.csr_matrix(sp.csr_matrix(mouse.X) @ plan.assign, dtype=np.float32)
    human = ad.AnnData(X=counts, obs=mouse.obs[[LABEL_KEY]].copy(), var=pd.DataFrame(index=plan.genes))
    human.write_h5ad(path)


def train_celltypist(path: Path) -> None:
    """Train CellTypist on the reference (log1p CP10k, every gene) and save it."""
    import anndata as ad
    import pandas as pd

    from screader_db.fetch import ensure
    from screader_db.inputs import load_expression
    from screader_db.peers import celltypist_train

    raw = ad.read_h5ad(ensure(REFERENCE))
    expression = load_expression(raw)
    reference = ad.AnnData(X=expression.X, obs=raw.obs[[LABEL_KEY]].copy(), var=pd.DataFrame(index=expression.genes))
    celltypist_train(reference, label_key=LABEL_KEY).write(str(path))


def child_cost(command: list[str]) -> tuple[float, float]:
    """CPU seconds (user + system) and wall seconds of one child process run to the end."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        error = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{command[0]} failed ({process.returncode}): {error[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def stage_seconds(query: Path, atlas: Path) -> dict[str, float]:
    """annotate() on an opened atlas (second call): its wall time, its stages, and embedding + search.

    Embedding is the ``embed`` stage (centring and projecting the cells); search is the reporter's
    "Searching the atlas" task (the FAISS search; the novelty check runs beside it); the second
    opinion's stage (the expression method's embedding and search) counts as both.
    """
    from screader_db.annotation import annotate
    from screader_db.progress import Reporter
    from screader_db.store import open_atlas

    class Stopwatch(Reporter):
        def __init__(self) -> None:
            self.seconds: dict[str, float] = {}

        @contextmanager
        def task(self, description: str, total: int, unit: str = "items") -> Iterator[Any]:
            began = time.perf_counter()
            yield lambda n: None
            self.seconds[description] = self.seconds.get(description, 0.0) + time.perf_counter() - began

    opened = open_atlas(atlas)
    annotate(str(query), opened)
    watch = Stopwatch()
    began = time.perf_counter()
    result = annotate(str(query), opened, reporter=watch)
    total = time.perf_counter() - began
    stages = result.info["stage_seconds"]
    essential = stages["embed"] + watch.seconds["Searching the atlas"] + stages.get("second opinion", 0.0)
    return {"annotate": total, "embed_and_search": essential, **{f"stage: {k}": v for k, v in stages.items()},
            **{f"task: {k}": v for k, v in watch.seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", type=Path, default=Path("atlases/baron_human"))
    parser.add_argument("--workdir", type=Path, default=Path("results/query-cpu"))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    query, model = args.workdir / "baron_mouse_human_symbols.h5ad", args.workdir / "celltypist_baron_human.pkl"
    if not query.exists():
        human_counts(query)
    if not model.exists():
        train_celltypist(model)
    if not (args.atlas / "current").exists():
        subprocess.run([str(Path(sys.executable).parent / "screader-db"), "build", "--reference", REFERENCE,
                        "--label-key", LABEL_KEY, "--atlas", str(args.atlas), "--dataset-name", REFERENCE], check=True)
    ours_command = [str(Path(sys.executable).parent / "screader-db"), "query", str(query), "--atlas", str(args.atlas),
                    "--table", str(args.workdir / "ours.csv"), "--overwrite"]
    peer_command = [sys.executable, "-c", CELLTYPIST_PROCESS, str(query), str(model), str(args.workdir / "celltypist.csv")]
    runs: dict[str, list[tuple[float, float]]] = {"screader-db query": [], "CellTypist": []}
    for _ in range(args.repeats):
        runs["screader-db query"].append(child_cost(ours_command))
        runs["CellTypist"].append(child_cost(peer_command))
    cost = {name: {"cpu": statistics.median(c for c, _ in r), "wall": statistics.median(w for _, w in r)}
            for name, r in runs.items()}
    stages = stage_seconds(query, args.atlas)
    peer = cost["CellTypist"]
    lines = ["| measure | screader-db | CellTypist | ratio |", "|---|---|---|---|"]
    for what in ("cpu", "wall"):
        ours = cost["screader-db query"][what]
        lines.append(f"| whole process, {what} seconds (median of {args.repeats}) | {ours:.2f} | {peer[what]:.2f} | "
                     f"{ours / peer[what]:.2f} |")
    lines.append(f"| annotate() seconds / embedding + search seconds | {stages['annotate']:.2f} / "
                 f"{stages['embed_and_search']:.2f} | | {stages['annotate'] / stages['embed_and_search']:.2f} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"processes": cost, "runs": runs, "stages": stages}, indent=2))


if __name__ == "__main__":
    main()
