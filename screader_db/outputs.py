"""The output files of a command: checked before the work starts, written beside their targets, moved together.

A command that writes several outputs (an annotated .h5ad, a table, a report, plots) checks every
path first, so a wrong one fails in a second instead of after the whole run. Each output is then
written under a temporary name in its target's folder and, only when every one of them was
written, all are renamed into place; when one fails, the temporary files are removed and no
output is left (the renames themselves cannot fail half-way on one file system, short of a crash).
:func:`atomic_write` does the same for one file or folder that a library function writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from screader_db.errors import OutputExistsError, OutputPathError


@dataclass(frozen=True)
class Output:
    """One output file or folder of a command.

    Parameters
    ----------
    path
        Where it goes.
    option
        The option that named it, for messages.
    folder
        A folder of files (created when missing, its files replaced) rather than one file.
    suffixes
        The file name endings it accepts (any when empty).
    """

    path: Path
    option: str
    folder: bool = False
    suffixes: tuple[str, ...] = ()


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one sure test that it can be written."""
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        message = f"{option} {path}: cannot write into the folder {folder} ({err.strerror}); choose another path"
        raise OutputPathError(message) from err
    os.close(handle)
    os.unlink(name)


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing file unless ``overwrite`` (the one message for every output).

    Parameters
    ----------
    path
        The output.
    overwrite
        Whether replacing is allowed.

    Returns
    -------
    None

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def check_output(output: Output, *, overwrite: bool) -> None:
    """Refuse an output that cannot be written where it is meant to go.

    Parameters
    ----------
    output
        The output.
    overwrite
        Whether an existing file may be replaced.

    Returns
    -------
    None

    Raises
    ------
    OutputPathError
        Its folder is missing or not writable, a file is where a folder is meant (or the
        reverse), or its file format is unknown.
    OutputExistsError
        The file exists and ``overwrite`` is false.
    """
    path, option = output.path, output.option
    parent = path.parent
    if not parent.exists():
        message = f"{option} {path}: the folder {parent} does not exist; create it first or choose another path"
        raise OutputPathError(message)
    if not parent.is_dir():
        message = f"{option} {path}: {parent} is a file, not a folder; choose another path"
        raise OutputPathError(message)
    if output.folder:
        if path.exists() and not path.is_dir():
            message = f"{option} {path} is a file; {option} takes a folder, created when missing"
            raise OutputPathError(message)
    else:
        if path.is_dir():
            message = f"{option} {path} is a folder; {option} takes a file name"
            raise OutputPathError(message)
        if output.suffixes and path.suffix.lower() not in output.suffixes:
            message = f"{option} {path}: unknown format {path.suffix or '(none)'!r}; use {', '.join(output.suffixes)}"
            raise OutputPathError(message)
        refuse_existing(path, overwrite=overwrite)
    _probe(parent, option, path)


def check_outputs(outputs: list[Output], *, overwrite: bool) -> None:
    """:func:`check_output` for each output, and no two of them at the same path.

    Parameters
    ----------
    outputs
        The outputs.
    overwrite
        Whether existing files may be replaced.

    Returns
    -------
    None

    Raises
    ------
    OutputPathError
        As :func:`check_output`, or two outputs name one path.
    OutputExistsError
        As :func:`check_output`.
    """
    seen: dict[Path, str] = {}
    for output in outputs:
        check_output(output, overwrite=overwrite)
        key = output.path.resolve()
        if key in seen:
            message = f"{seen[key]} and {output.option} both name {output.path}; give each output its own path"
            raise OutputPathError(message)
        seen[key] = output.option


def _temporary(output: Output) -> Path:
    prefix, folder = f".{output.path.name}.", output.path.parent
    if output.folder:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{output.path.suffix}", dir=folder)
    os.close(handle)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _targets(temporary: Path, output: Output) -> list[tuple[Path, Path]]:
    """(temporary file, final path) pairs of an output; refuses a final path that is now a folder."""
    pairs = ([(temporary, output.path)] if not output.folder else
             [(item, output.path / item.name) for item in sorted(temporary.iterdir())])
    if output.folder and output.path.exists() and not output.path.is_dir():
        raise OutputPathError(f"{output.option} {output.path} is a file; {output.option} takes a folder")
    for _, target in pairs:
        if target.is_dir():
            raise OutputPathError(f"{output.option}: {target} is a folder; move it away or choose another path")
    return pairs


def _move(temporary: Path, output: Output) -> None:
    if output.folder:
        output.path.mkdir(exist_ok=True)
    for source, target in _targets(temporary, output):
        os.replace(source, target)


@contextmanager
def staged(outputs: list[Output]) -> Iterator[dict[Path, Path]]:
    """Temporary paths to write several outputs to, all moved into place when the block ends
    without error and all removed when it raises.

    Parameters
    ----------
    outputs
        The outputs.

    Returns
    -------
    Iterator[dict]
        Yields once: target path -> temporary path (a file path, or a created folder).

    Raises
    ------
    OutputPathError
        A target became a folder (or, for a folder output, a file) while the block ran; nothing is moved.
    """
    temporary: dict[Path, Path] = {}
    try:
        for output in outputs:
            temporary[output.path] = _temporary(output)
        yield temporary
        for output in outputs:  # every output is checked before any is moved
            _targets(temporary[output.path], output)
        for output in outputs:
            _move(temporary[output.path], output)
    finally:
        for path in temporary.values():
            _remove(path)


@contextmanager
def atomic_write(target: str | Path, *, tag: str = "", keep_existing: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` to write a file or folder to, moved onto ``target`` when
    the block ends without error and removed when it raises.

    Readers of ``target`` see the old file or the whole new one, never a part. Nothing is created
    at the temporary path: the block writes a file there or makes a folder.

    Parameters
    ----------
    target
        The final path; its folder must exist.
    tag
        Inserted in the temporary name ``.<name><tag>.tmp``: a process or thread id where several
        may write the same target at once.
    keep_existing
        When ``target`` exists once the block ends, keep it and drop what the block wrote (a cache
        entry another process finished first).

    Returns
    -------
    Iterator[Path]
        The temporary path, yielded once.
    """
    final = Path(target)
    temporary = final.with_name(f".{final.name}{tag}.tmp")
    try:
        yield temporary
        if not (keep_existing and final.exists()):
            os.replace(temporary, final)
    finally:
        if temporary.exists() or temporary.is_symlink():
            _remove(temporary)
