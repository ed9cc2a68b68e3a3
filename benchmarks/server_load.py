"""Load test of `screader-db serve`: concurrent annotate requests against a server on 127.0.0.1.

    python benchmarks/server_load.py                                  # synthetic atlas (5,000 cells) and query
    python benchmarks/server_load.py --atlas atlases/baron_human --query baron_mouse --cells 200

Starts the server as a subprocess listening on 127.0.0.1 only (a free port), sends one warm-up
request, then ``--requests`` annotate requests (an .h5ad upload of ``--cells`` cells each) from
``--concurrency`` client threads, and prints latency percentiles, throughput and errors. It stops
after the last request or at ``--time-limit`` seconds, whichever comes first, and always stops
the server.

Then responsiveness: the median ``/health`` latency of an idle server beside the slowest
``/health`` answer while the server parses an 8 MB JSON body (990 cells × 4,000 unknown genes,
answered 422): the body is parsed off the event loop, so the ratio stays small.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"


def synthetic(folder: Path, n_cells: int, *, reference_cells: int = 5000) -> tuple[Path, Path]:
    """A synthetic atlas (20 cell types over 5,000 real gene symbols, random 384-d gene vectors: the
    size of MiniLM's) and a query of ``n_cells`` other cells drawn from the same profiles."""
    import anndata as ad
    import pandas as pd

    from screader_db import synthetic as synth
    from screader_db.builders.atlas import BuildSettings, build_atlas

    reference = synth.write_h5ad(folder / "reference.h5ad", reference_cells, seed=0)
    atlas = folder / "atlas"
    build_atlas(reference, atlas, label_key="cell_type", dataset_name="synthetic",
                settings=BuildSettings(model="random:384", n_genes=3000, layout="none"))
    spec = synth.design(seed=0)
    counts, _ = next(synth.chunks(spec, n_cells, seed=99))
    query = folder / "query.h5ad"
    ad.AnnData(X=counts, obs=pd.DataFrame(index=[f"query{i}" for i in range(n_cells)]),
               var=pd.DataFrame(index=spec.genes)).write_h5ad(query)
    return atlas, query


def query_file(value: str, n_cells: int, folder: Path) -> Path:
    """The first ``n_cells`` cells of a query (.h5ad path or manifest name) as an .h5ad file."""
    from screader_db.fetch import ensure
    from screader_db.inputs import read_h5ad

    source = Path(value) if Path(value).exists() else ensure(value)
    adata = read_h5ad(source)
    path = folder / "query.h5ad"
    adata[: min(n_cells, adata.n_obs)].copy().write_h5ad(path)
    return path


def start_server(atlas: Path, timeout: float = 120.0, workers: int = 0) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-c", "from screader_db.cli import app; app()", "serve", "--atlas", str(atlas),
               "--host", HOST, "--port", "0", "--log-level", "info", "--workers", str(workers)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(rf"running on (http://{re.escape(HOST)}:\d+)", line)
            if match:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return process, found[0]


def run(url: str, body: bytes, *, requests: int, concurrency: int, time_limit: float, k: int) -> dict:
    deadline = time.monotonic() + time_limit
    client = httpx.Client(base_url=url, timeout=min(time_limit, 120.0))
    warm = client.post("/annotate", params={"k": k}, files={"file": ("query.h5ad", body)})
    warm.raise_for_status()
    n_cells = len(warm.json()["cells"])
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    tickets = iter(range(requests))

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if next(tickets, None) is None:
                    return
            start = time.perf_counter()
            try:
                response = client.post("/annotate", params={"k": k}, files={"file": ("query.h5ad", body)})
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as err:
                problem = type(err).__name__
            elapsed = time.perf_counter() - start
            with lock:
                if problem is None:
                    latencies.append(elapsed)
                else:
                    errors[problem] = errors.get(problem, 0) + 1

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - began
    client.close()
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": requests, "ok": len(latencies), "errors": errors, "concurrency": concurrency,
        "cells_per_request": n_cells, "body_bytes": len(body), "wall_s": round(wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(np.max(ms)), 1),
        "requests_per_s": round(len(latencies) / wall, 2), "cells_per_s": round(len(latencies) * n_cells / wall, 1),
    }


def health_during_parse(url: str) -> dict:
    """Idle /health latency (median of 20) beside the slowest /health while an 8 MB JSON body is parsed."""
    client = httpx.Client(base_url=url, timeout=120.0)
    idle = []
    for _ in range(20):
        began = time.perf_counter()
        client.get("/health").raise_for_status()
        idle.append(time.perf_counter() - began)
    genes = [f"GENE{i}" for i in range(4000)]
    body = json.dumps({"genes": genes, "counts": [[0] * 4000] * 990}, separators=(",", ":")).encode()
    sent = ThreadPoolExecutor(1).submit(client.post, "/annotate", content=body,
                                        headers={"content-type": "application/json"})
    slowest, posted = 0.0, time.perf_counter()
    while not sent.done():
        began = time.perf_counter()
        client.get("/health").raise_for_status()
        slowest = max(slowest, time.perf_counter() - began)
        time.sleep(0.05)
    status, took = sent.result().status_code, time.perf_counter() - posted
    client.close()
    median = float(np.median(idle))
    return {"json_body_bytes": len(body), "json_status": status, "json_request_s": round(took, 2),
            "health_idle_ms": round(median * 1000, 1), "health_during_parse_max_ms": round(slowest * 1000, 1),
            "health_ratio": round(slowest / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", type=Path, default=None, help="atlas to serve (default: a synthetic one)")
    parser.add_argument("--query", default=None, help=".h5ad path or manifest name (default: synthetic)")
    parser.add_argument("--cells", type=int, default=200, help="cells per request")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds; unsent requests are dropped after")
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--workers", type=int, default=0, help="serve --workers (0: one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="screader-load-") as scratch:
        folder = Path(scratch)
        atlas, query = synthetic(folder, args.cells) if args.atlas is None else (args.atlas, None)
        if args.query is not None:
            query = query_file(args.query, args.cells, folder)
        if query is None:
            raise SystemExit("--atlas needs --query too")
        server, url = start_server(atlas, workers=args.workers)
        try:
            figures = run(url, query.read_bytes(), requests=args.requests, concurrency=args.concurrency,
                          time_limit=args.time_limit, k=args.k)
            figures.update(health_during_parse(url))
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    figures["atlas"] = "synthetic" if args.atlas is None else str(args.atlas)
    figures["workers"] = args.workers
    print(f"{figures['ok']}/{figures['requests']} requests ok, errors: {figures['errors'] or 'none'}; "
          f"{figures['concurrency']} clients, {figures['cells_per_request']} cells per request, "
          f"--workers {figures['workers']}")
    print(f"latency ms: p50 {figures['p50_ms']}  p90 {figures['p90_ms']}  p99 {figures['p99_ms']}  max {figures['max_ms']}")
    print(f"throughput: {figures['requests_per_s']} requests/s, {figures['cells_per_s']} cells/s "
          f"over {figures['wall_s']} s")
    print(f"/health while a {figures['json_body_bytes']:,}-byte JSON body is parsed (HTTP {figures['json_status']}, "
          f"{figures['json_request_s']} s): slowest {figures['health_during_parse_max_ms']} ms against "
          f"{figures['health_idle_ms']} ms idle ({figures['health_ratio']}×)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
