"""The web page's answer to a large upload beside ``annotate()`` on the same cells, same run.

    python benchmarks/web_upload.py --workdir results/web-upload

Set up once in ``--workdir`` (not timed): an atlas of the whole of pbmc3k (default settings), and a
query of the first ``--cells`` cells of the Kang data set (raw counts) as a sparse, gzip-compressed .h5ad.

Timed, ``--repeats`` times each, after one warm-up of each:

- ``annotate(query.h5ad, atlas)`` in this process, on an opened atlas;
- the page's path: ``screader-db serve --workers 1`` in a process of its own, the file sent to
  ``POST /ui/api/jobs`` as the page sends it, then ``GET /ui/api/jobs/{id}`` polled every 50 ms
  until the result is there (what the page then draws), and on until every download (CSV,
  annotated .h5ad, report) is written.

Prints a Markdown table with medians and the ratios to ``annotate()``; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPEATS = 3


def prepare(workdir: Path, cells: int) -> tuple[Path, Path]:
    """The pbmc3k atlas and the Kang query file, made once."""
    import anndata as ad

    from screader_db.builders.atlas import build_atlas
    from screader_db.fetch import ensure
    from screader_db.store import is_atlas

    workdir.mkdir(parents=True, exist_ok=True)
    atlas, query = workdir / "pbmc3k_atlas", workdir / f"kang_{cells}.h5ad"
    if not is_atlas(atlas):
        build_atlas(ad.read_h5ad(ensure("pbmc3k")), atlas, label_key="celltype", dataset_name="pbmc3k", overwrite=True)
    if not query.exists():
        import scipy.sparse as sp

        part = ad.read_h5ad(ensure("kang"))[:cells].copy()
        part.X = sp.csr_matrix(part.X, dtype="float32")  # the file is dense; a lab's file would be sparse
        part.write_h5ad(query, compression="gzip")
    return atlas, query


def time_annotate(atlas: Path, query: Path, repeats: int) -> list[float]:
    from screader_db import annotate
    from screader_db.store import open_atlas

    opened = open_atlas(atlas)
    annotate(query, opened)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        annotate(query, opened)
        times.append(time.perf_counter() - start)
    return times


def serve(atlas: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``screader-db serve`` on a free port, its log in ``log``; the process and its URL."""
    import re

    command = [sys.executable, "-c", "from screader_db.cli import app; app()", "serve", "--atlas", str(atlas),
               "--port", "0", "--workers", "1"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stderr=handle)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start; see {log}")


def page_once(client: Any, query: Path) -> tuple[float, float]:
    """Seconds from sending the file to the result, and to every download."""
    start = time.perf_counter()
    with open(query, "rb") as handle:
        sent = client.post("/ui/api/jobs", files={"file": (query.name, handle)}, data={"level": "label"})
    sent.raise_for_status()
    job, answered = sent.json()["id"], None
    while True:
        status = client.get(f"/ui/api/jobs/{job}").json()
        if status["state"] == "failed":
            raise RuntimeError(status["error"])
        if answered is None and status["state"] == "done":
            client.get(f"/ui/api/results/{job}").raise_for_status()
            answered = time.perf_counter() - start
        if all(status["downloads"].values()):
            assert answered is not None
            return answered, time.perf_counter() - start
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("results/web-upload"))
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import httpx

    atlas, query = prepare(args.workdir, args.cells)
    annotate_times = time_annotate(atlas, query, args.repeats)
    process, url = serve(atlas, args.workdir / "serve.log")
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            page_once(client, query)
            page = [page_once(client, query) for _ in range(args.repeats)]
    finally:
        process.terminate()
        process.wait(timeout=30)
    base = statistics.median(annotate_times)
    answered, everything = statistics.median(p[0] for p in page), statistics.median(p[1] for p in page)
    rows = [("annotate() in process", base, 1.0), ("the page: upload to result", answered, answered / base),
            ("the page: upload to every download", everything, everything / base)]
    print(f"{args.cells:,} Kang cells against a pbmc3k atlas, median of {args.repeats}\n")
    print("| path | seconds | × annotate() |\n|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.2f} | {ratio:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"cells": args.cells, "annotate": annotate_times, "page": page}, indent=1))


if __name__ == "__main__":
    main()
