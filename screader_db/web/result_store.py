"""The web page's annotations, kept on disk for a while: one folder per upload.

A job's folder holds the upload (``upload`` with the file's own suffixes), ``job.json`` (its name
and when it was sent), then what the annotation writes: ``stage.json`` (what is running now),
``result.json`` (what the page shows: the job is done), the downloads (:data:`DOWNLOADS`), or
``error.json`` (the one-line reason it failed). Every file is written under a temporary name and
renamed, so a reader sees it whole or not at all. A result is kept for ``max_age`` seconds; past
``max_bytes`` on disk the oldest finished ones go first.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from screader_db.outputs import atomic_write

JOB = "job.json"
STAGE = "stage.json"
RESULT = "result.json"
ERROR = "error.json"
UPLOAD = "upload"
DOWNLOADS = {"csv": "labels.csv", "h5ad": "annotated.h5ad", "report": "report.html"}
MAX_AGE = 24 * 3600.0
MAX_BYTES = 2_000_000_000
_ID = re.compile(r"[A-Za-z0-9_-]{16}")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,8}){1,2}$")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path``, whole or not at all.

    Parameters
    ----------
    path : Path
        The file (replaced when it exists).
    data : Any
        JSON values (no NaN).
    """
    with atomic_write(path, tag=f".{threading.get_ident()}") as temporary:
        temporary.write_text(json.dumps(data, allow_nan=False))


def read_json(path: Path) -> Any:
    """The JSON at ``path``.

    Parameters
    ----------
    path : Path
        A file :func:`write_json` wrote.

    Returns
    -------
    Any
        Its values, or None when there is no such file yet.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def upload_name(filename: str) -> str:
    """The name an upload is saved under.

    Parameters
    ----------
    filename : str
        The name the browser sent.

    Returns
    -------
    str
        ``upload`` and the file's own suffixes, lower case (``upload.h5ad``, ``upload.csv.gz``): the
        readers tell the format from them.
    """
    found = _SUFFIX.search(Path(filename).name)
    return UPLOAD + (found.group(0).lower() if found else "")


@dataclass(frozen=True)
class Job:
    """One upload's folder."""

    id: str
    folder: Path

    @property
    def upload(self) -> Path:
        """The uploaded file (its name per :func:`upload_name`)."""
        found = sorted(self.folder.glob(UPLOAD + "*"))
        return found[0] if found else self.folder / UPLOAD

    def status(self) -> dict[str, Any]:
        """What the page polls: state, stage, progress, seconds, error, and which downloads are ready.

        Returns
        -------
        dict
            ``state`` is ``queued`` (no stage yet), ``running``, ``done`` (the result is written) or
            ``failed`` (``error`` says why).
        """
        job = read_json(self.folder / JOB) or {}
        stage = read_json(self.folder / STAGE)
        error = read_json(self.folder / ERROR)
        result = (self.folder / RESULT).is_file()
        state = "failed" if error else "done" if result else "running" if stage else "queued"
        finished = (error or {}).get("at") or (stage or {}).get("finished")
        started = float(job.get("created", time.time()))
        return {"id": self.id, "state": state, "filename": job.get("filename", ""),
                "stage": "" if stage is None else stage.get("stage", ""),
                "done": None if stage is None else stage.get("done"), "total": None if stage is None else stage.get("total"),
                "seconds": round((finished or time.time()) - started, 2), "error": None if error is None else error["error"],
                "downloads": {kind: (self.folder / name).is_file() for kind, name in DOWNLOADS.items()}}

    def finished(self) -> bool:
        """Whether the annotation has stopped.

        Returns
        -------
        bool
            True when every download is written or the job failed.
        """
        return (self.folder / ERROR).is_file() or all((self.folder / name).is_file() for name in DOWNLOADS.values())


class ResultStore:
    """The folders of the page's jobs, under ``root`` (a new temporary folder, removed on :meth:`close`, when None).

    Parameters
    ----------
    root : str, Path or None
        Where results are kept.
    max_age : float
        Seconds a result is kept.
    max_bytes : int
        Bytes all results may take; the oldest finished ones are removed past it.
    """

    def __init__(self, root: str | Path | None = None, *, max_age: float = MAX_AGE, max_bytes: int = MAX_BYTES) -> None:
        self.owned = root is None
        self._root = None if root is None else Path(root)
        self.max_age, self.max_bytes = max_age, max_bytes
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The results' folder (a temporary one is made on first use when none was given)."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="screader-db-results-"))
            return self._root

    def create(self, filename: str) -> Job:
        """A new job's folder (older results are pruned first).

        Parameters
        ----------
        filename : str
            The upload's name, as the browser sent it.

        Returns
        -------
        Job
            The job, its folder holding ``job.json``.
        """
        self.prune()
        self.root.mkdir(parents=True, exist_ok=True)
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        folder.mkdir()
        write_json(folder / JOB, {"filename": Path(filename).name, "created": time.time()})
        return Job(job_id, folder)

    def get(self, job_id: str) -> Job | None:
        """A kept job.

        Parameters
        ----------
        job_id : str
            Its id (from the page's address).

        Returns
        -------
        Job or None
            None when the id is malformed, unknown or no longer kept.
        """
        if not _ID.fullmatch(job_id):
            return None
        folder = self.root / job_id
        return Job(job_id, folder) if (folder / JOB).is_file() else None

    def prune(self) -> list[str]:
        """Remove results older than ``max_age``, then the oldest finished ones while all exceed ``max_bytes``.

        Returns
        -------
        list of str
            The ids removed.
        """
        if self._root is None:
            return []
        with self._lock:
            if not self._root.is_dir():
                return []
            jobs = []
            for folder in self._root.iterdir():
                job = read_json(folder / JOB) if folder.is_dir() else None
                if job is not None:
                    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
                    jobs.append((float(job.get("created", 0.0)), folder, size))
            jobs.sort(key=lambda row: row[0])
            total, removed, now = sum(row[2] for row in jobs), [], time.time()
            for created, folder, size in jobs:
                done = Job(folder.name, folder).finished()
                if (done or now - created > 2 * self.max_age) and (now - created > self.max_age or total > self.max_bytes):
                    shutil.rmtree(folder, ignore_errors=True)
                    total -= size
                    removed.append(folder.name)
            return removed

    def close(self) -> None:
        """Remove the results' folder when the store made it."""
        if self.owned and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
