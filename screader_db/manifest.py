"""The data manifest: every external file the project uses, with its source and checksum.

``data_manifest.yaml`` sits at the repository top and is shipped inside the wheel. Each entry
names a package on PyPI or Debian, the file (or folder) inside it, and its sha256 and size.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from screader_db.errors import ScreaderError

MANIFEST_NAME = "data_manifest.yaml"
KINDS = ("pypi", "debian", "bundled")


@dataclass(frozen=True)
class Entry:
    """One external input: where it comes from and what it must hash to."""

    name: str
    kind: str
    package: str
    version: str
    member: tuple[str, ...]
    sha256: str
    size: int
    license: str
    role: str
    description: str = ""
    archive_sha256: str = ""
    archive_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def basename(self) -> str:
        """Name of the file or folder once it is in the cache."""
        return self.member[-1].rstrip("/").rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        """The package pin as the package client spells it."""
        return f"{self.package}=={self.version}" if self.kind == "pypi" else f"{self.package}={self.version}"


def manifest_path() -> Path:
    """Where the manifest is read from: the installed package, else the source tree.

    Returns
    -------
    Path
        ``data_manifest.yaml`` inside the installed ``screader_db`` package if it is there, else at the repository
        top (which may not exist).
    """
    packaged = importlib.resources.files("screader_db").joinpath(MANIFEST_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / MANIFEST_NAME


def _entry(name: str, raw: dict[str, Any]) -> Entry:
    known = {f for f in Entry.__dataclass_fields__ if f not in ("name", "member", "extra")}
    missing = [k for k in ("kind", "package", "version", "member", "sha256", "size", "license", "role") if k not in raw]
    if missing:
        message = f"manifest entry {name!r} lacks {', '.join(missing)}; fix {MANIFEST_NAME}"
        raise ScreaderError(message)
    if raw["kind"] not in KINDS:
        message = f"manifest entry {name!r} has kind {raw['kind']!r}; expected one of {', '.join(KINDS)}"
        raise ScreaderError(message)
    member = raw["member"]
    members = tuple(member) if isinstance(member, list) else (str(member),)
    values = {k: raw[k] for k in known if k in raw}
    values["version"] = str(values["version"])
    extra = {k: v for k, v in raw.items() if k not in known and k != "member"}
    return Entry(name=name, member=members, extra=extra, **values)


@functools.lru_cache(maxsize=4)
def _parsed(text: str) -> Any:
    """The YAML of a manifest's text, parsed once (a build reads the manifest dozens of times)."""
    import yaml

    return yaml.safe_load(text)


def load_manifest(path: str | Path | None = None) -> dict[str, Entry]:
    """Read the manifest into entries keyed by name.

    Parameters
    ----------
    path : str, Path or None
        A manifest YAML file; None reads :func:`manifest_path`.

    Returns
    -------
    dict of str to Entry
        In file order; keys an entry does not define as fields go to its ``extra``.

    Raises
    ------
    ScreaderError
        The file is unreadable or not YAML, has no ``entries`` mapping, or an entry lacks a required key or has
        an unknown ``kind``.
    """
    import yaml

    source = Path(path) if path else manifest_path()
    try:
        raw = copy.deepcopy(_parsed(source.read_text()))  # a copy: callers may change what they are given
    except (OSError, yaml.YAMLError) as err:
        message = f"cannot read the data manifest {source}: {err}"
        raise ScreaderError(message) from err
    entries = raw.get("entries") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        message = f"{source} has no 'entries' mapping"
        raise ScreaderError(message)
    return {name: _entry(name, spec) for name, spec in entries.items()}


def get_entry(name: str, manifest: dict[str, Entry] | None = None) -> Entry:
    """One entry by name, with the list of known names when it is not there.

    Parameters
    ----------
    name : str
        The entry's name.
    manifest : dict of str to Entry or None
        Entries already loaded; None loads the default manifest (:func:`load_manifest`).

    Returns
    -------
    Entry

    Raises
    ------
    ScreaderError
        ``name`` is not in the manifest (the message lists the known names), or the manifest cannot be read.
    """
    entries = manifest if manifest is not None else load_manifest()
    if name not in entries:
        message = f"{name!r} is not in the data manifest; known names: {', '.join(sorted(entries))}"
        raise ScreaderError(message)
    return entries[name]


def record_entry(name: str, values: dict[str, Any], path: str | Path | None = None) -> None:
    """Write measured hashes and sizes of one entry back into the manifest file.

    The file is rewritten whole (through a ``.tmp`` file beside it, then renamed): its ``#`` comment lines
    are kept at the top, other formatting is YAML's.

    Parameters
    ----------
    name : str
        The entry to update.
    values : dict
        Keys to set on the entry (``sha256``, ``size``, ``archive_sha256``...), replacing any it has.
    path : str, Path or None
        The manifest file; None writes :func:`manifest_path`.

    Raises
    ------
    ScreaderError
        ``name`` is not an entry of the file.
    """
    import yaml

    source = Path(path) if path else manifest_path()
    text = source.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    raw = yaml.safe_load(text)
    if name not in raw.get("entries", {}):
        message = f"{name!r} is not in {source}"
        raise ScreaderError(message)
    raw["entries"][name].update(values)
    body = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=200, default_flow_style=None)
    tmp = source.with_name(source.name + ".tmp")
    tmp.write_text(header + body)
    tmp.replace(source)
