"""The output files of a command: checked before the work starts, written beside their targets, moved together.

A command that writes several outputs (an annotated .h5ad, a table, a report, plots) checks every
path first, so a wrong one fails in a second instead of after the whole run. Each output is then
written under a temporary name in its target's folder and, only when every one of them was
written, all are renamed into place; when one fails, the temporary files are removed and no
output is left (the renames themselves cannot fail half-way on one file system, short of a crash).
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
    """One output: its path, the option that named it (for messages), whether it is a folder of
    files (created when missing, its files replaced) and the file name endings it accepts."""

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
    """Refuse to replace an existing file unless ``overwrite`` (the one message for every output)."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def check_output(output: Output, *, overwrite: bool) -> None:
    """Refuse an output whose folder is missing or not writable, a file where a folder is meant (or
    the reverse), an unknown file format, or an existing file without ``overwrite``."""
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
    """:func:`check_output` for each output, and no two of them at the same path."""
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
    """Temporary paths to write the outputs to (by target path); moved into place when the block
    ends without error, removed when it raises."""
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
