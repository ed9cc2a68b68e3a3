"""Helpers for the server and client tests: small atlases, the application in this process (no
socket), uvicorn on 127.0.0.1 in a thread, and `screader-db serve` as a process of its own.

Server logic is tested in process; uvicorn is kept for what lives on the socket or in the
process: connection caps, header timeouts, ports, the command's own start-up and memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import make_counts

from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.http_connections import server_config
from screader_db.server_limits import ServerLimits

SETTINGS = BuildSettings(model="random:16", method="genept", n_genes=50, layout="none")
TOKEN = "test-token-0123456789"


def small_atlas(root: Path, *, n_cells: int = 200, seed: int = 0, overwrite: bool = False) -> Path:
    build_atlas(make_counts(n_cells=n_cells, seed=seed), root, label_key="cell_type", dataset_name="synthetic",
                settings=SETTINGS, overwrite=overwrite)
    return root


@contextmanager
def in_process(app: Any) -> Iterator[Any]:
    """Serve an application in this process, without a socket.

    Parameters
    ----------
    app
        An ASGI application, such as :func:`screader_db.server.create_app` returns.

    Returns
    -------
    Iterator
        Yields Starlette's TestClient (an ``httpx.Client`` with base URL ``http://testserver``);
        an exception the application does not turn into a response is raised in the test.
    """
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        yield client


@contextmanager
def in_process_client(app: Any, *, token: str | None = None) -> Iterator[Any]:
    """A :class:`screader_db.Client` whose requests reach an application in this process.

    The client is built while ``httpx.Client`` stands for the TestClient of :func:`in_process`.

    Parameters
    ----------
    app
        The ASGI application.
    token
        The client's token, for adding and removing data sets.

    Returns
    -------
    Iterator
        Yields the connected client.
    """
    import httpx
    import pytest

    from screader_db import Client

    with in_process(app) as http:

        def connect(*, headers: dict[str, str], **_: Any) -> Any:
            http.headers.update(headers)
            return http

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(httpx, "Client", connect)
            client = Client(str(http.base_url), token=token)
        with client:
            yield client


@contextmanager
def running(app: object, *, limits: ServerLimits | None = None, start_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a background thread, configured as ``serve`` does;
    yields the base URL."""
    import uvicorn

    config = server_config(app, host="127.0.0.1", port=0, limits=limits or ServerLimits(), log_level="warning")
    config.lifespan = "off"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_process(atlas: Path, *options: str, timeout: float = 60.0,
                  temp: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``screader-db serve --atlas ATLAS --port 0 OPTIONS`` in a process of its own (``temp``: its
    TMPDIR; ``--workers 1`` unless OPTIONS name it); yields the base URL uvicorn reports on stderr and
    the process, which is stopped on exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **({"TMPDIR": str(temp)} if temp else {})}
    env.pop("SCREADER_DB_TOKEN", None)
    # One process unless a test asks for workers: each worker process would load the atlas again.
    workers = () if "--workers" in options else ("--workers", "1")
    command = [sys.executable, "-c", "from screader_db.cli import app; app()", "serve", "--atlas", str(atlas),
               "--port", "0", *workers, *options]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    found: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not found:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield found[0], process
    finally:
        process.terminate()
        process.wait(timeout=20)


def all_finished(results: Any, timeout: float = 300.0) -> None:
    """Wait until every job has written all its files (a job still running when the server stops
    would be cut off in the middle of native code)."""
    deadline = time.monotonic() + timeout
    jobs = [results.get(folder.name) for folder in results.root.iterdir()]
    while not all(job is None or job.finished() for job in jobs):
        assert time.monotonic() < deadline, "a job did not finish"
        time.sleep(0.1)
