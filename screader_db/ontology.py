"""The Cell Ontology (CL): its terms, how a data set's label is matched to one, and the broad class above it.

The CL release is the one ``cellxgene-ontology-guide`` ships on PyPI, fetched and verified as the
manifest entry :data:`ENTRY` (zstd-compressed JSON: each term's name, synonyms, and its ancestors
with how many steps up the hierarchy each is). A label is matched, in this order:

1. ``name``: the label is a term's name (ignoring case and runs of spaces);
2. ``synonym``: the label is a synonym of exactly one term;
3. ``curated``: the label is in :data:`CURATED`, a hand-made table for the labels of the manifest's
   data sets that 1 and 2 do not match (checked before step 4, so it also corrects a normalised
   match that is wrong for the data set);
4. ``normalised name``, ``normalised synonym``: label and CL text, both put through
   :func:`normalise` (lower case; a marker's ``+`` read as ``positive`` and a trailing ``-`` as
   ``negative``; hyphens, commas and slashes as spaces; a bare ``CD`` marker read as
   ``CD..-positive``; ``cells`` as ``cell``; a plural last word made singular), are equal; a label
   that does not end in ``cell`` is also tried with ``cell`` added (``B`` → ``b cell``, ``NK`` →
   ``nk cell``).

Deprecated terms are never matched, and text that names several terms matches none of them.
A label map (:mod:`screader_db.labelmap`) overrides all of it.

The broad class of a term is its nearest ancestor (the term itself included) among
:data:`BROAD_CLASSES`, by steps up the hierarchy, the earlier class in the list winning a tie: a fixed
list of classes a reader knows (T cell, monocyte, endocrine cell, epithelial cell, ...), rather
than a depth in the ontology, because CL's depth differs from branch to branch (a CD4-positive
alpha-beta T cell is three steps below T cell, a macrophage two below leukocyte).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from screader_db.errors import FetchError, InputDataError, ScreaderWarning

ENTRY = "cell_ontology"  # the data manifest entry of the CL release

# Broad classes, in the order that breaks a tie between two at the same distance.
BROAD_CLASSES: tuple[tuple[str, str], ...] = (
    ("CL:0000084", "T cell"),
    ("CL:0000236", "B cell"),
    ("CL:0000786", "plasma cell"),
    ("CL:0000623", "natural killer cell"),
    ("CL:0000576", "monocyte"),
    ("CL:0000235", "macrophage"),
    ("CL:0000451", "dendritic cell"),
    ("CL:0000097", "mast cell"),
    ("CL:0000094", "granulocyte"),
    ("CL:0000556", "megakaryocyte"),
    ("CL:0000233", "platelet"),
    ("CL:0000232", "erythrocyte"),
    ("CL:0008001", "hematopoietic precursor cell"),
    ("CL:0000738", "leukocyte"),
    ("CL:0000163", "endocrine cell"),
    ("CL:0000115", "endothelial cell"),
    ("CL:0000669", "pericyte"),
    ("CL:0000057", "fibroblast"),
    ("CL:0000499", "stromal cell"),
    ("CL:0000192", "smooth muscle cell"),
    ("CL:0000187", "muscle cell"),
    ("CL:0000136", "adipocyte"),
    ("CL:0000182", "hepatocyte"),
    ("CL:0000148", "melanocyte"),
    ("CL:0000125", "glial cell"),
    ("CL:0000540", "neuron"),
    ("CL:0000066", "epithelial cell"),
    ("CL:0000034", "stem cell"),
)

# Labels of the manifest's data sets that CL's names and synonyms do not match (or match wrongly):
# label -> (CL id, why). Compared ignoring case.
CURATED: dict[str, tuple[str, str]] = {
    "CD4 T": ("CL:0000624", "pbmc3k; CL has no plain CD4-positive T cell, its CD4 T cells are alpha-beta"),
    "CD4+ T cells": ("CL:0000624", "Kang; as CD4 T"),
    "CD8 T": ("CL:0000625", "pbmc3k; CL has no plain CD8-positive T cell, its CD8 T cells are alpha-beta"),
    "CD8+ T cells": ("CL:0000625", "Kang; as CD8 T"),
    "FCGR3A Monocytes": ("CL:0002396", "pbmc3k; FCGR3A is CD16: the CD14-low, CD16-positive (non-classical) monocytes"),
    "CD16+ Monocytes": ("CL:0002396", "Kang; CL's synonym 'CD16+ monocyte' names the CD14-positive, CD16-positive "
                                      "(intermediate) monocyte, but these are the FCGR3A+ non-classical monocytes"),
    "DC": ("CL:0000451", "Kang; the abbreviation of dendritic cell"),
    "CD56+ NK": ("CL:0000623", "pbmc68k_reduced; NK cells sorted on CD56"),
    "CD4+/CD25 T Reg": ("CL:0000792", "pbmc68k_reduced; CD4+ CD25+ regulatory T cells"),
    "CD4+/CD45RO+ Memory": ("CL:0000897", "pbmc68k_reduced; CD45RO marks memory CD4 T cells"),
    "CD4+/CD45RA+/CD25- Naive T": ("CL:0000895", "pbmc68k_reduced; CD45RA+ CD25- naive CD4 T cells"),
    "CD8+ Cytotoxic T": ("CL:0000794", "pbmc68k_reduced"),
    "CD8+/CD45RA+ Naive Cytotoxic": ("CL:0000900", "pbmc68k_reduced; CD45RA+ naive CD8 T cells"),
    "CD34+": ("CL:0008001", "pbmc68k_reduced; CD34-sorted hematopoietic stem and progenitor cells"),
}

# How a label was matched (the ``ontology_match`` of the atlas's cells); "" when no ontology was used.
LABEL_MAP, NAME, SYNONYM, CURATED_MATCH = "label map", "name", "synonym", "curated"
NORMALISED_NAME, NORMALISED_SYNONYM, NONE = "normalised name", "normalised synonym", "none"
MATCHES = (LABEL_MAP, NAME, SYNONYM, CURATED_MATCH, NORMALISED_NAME, NORMALISED_SYNONYM, NONE)

_MARKER = re.compile(r"^cd\d+[a-z]*$")
_STATES = frozenset({"positive", "negative", "low", "high", "dim", "bright"})
_PLURAL_EXCEPTIONS = ("ss", "us", "is")


@dataclass(frozen=True)
class Term:
    """One CL term.

    Parameters
    ----------
    id
        The CL id (``CL:0000084``).
    name
        Its name (``T cell``).
    synonyms
        Its exact and related synonyms.
    ancestors
        Every ancestor's id and how many steps up it is.
    deprecated
        Whether CL has retired the term.
    """

    id: str
    name: str
    synonyms: tuple[str, ...] = ()
    ancestors: Mapping[str, int] = field(default_factory=dict, compare=False)
    deprecated: bool = False

    @property
    def parents(self) -> tuple[str, ...]:
        """The parents' ids (one step up), sorted."""
        return tuple(sorted(a for a, steps in self.ancestors.items() if steps == 1))


@dataclass(frozen=True)
class Match:
    """A label's CL term and how it was found.

    Parameters
    ----------
    id
        The term's id; "" when nothing matched.
    how
        One of :data:`MATCHES`.
    """

    id: str
    how: str


def normalise(text: str) -> str:
    """The text a label and CL's names and synonyms are compared as in the normalised steps.

    Parameters
    ----------
    text
        A label, name or synonym.

    Returns
    -------
    str
        Lower case; ``+`` after a letter or digit becomes ``positive``, ``-`` after a digit and before
        no letter or digit ``negative``; other hyphens, underscores, commas,
        slashes and brackets become spaces; a ``CD`` marker not followed by ``positive``, ``negative``,
        ``low``, ``high``, ``dim`` or ``bright`` gets ``positive``; ``cells`` becomes ``cell`` and a
        plural last word (ending in ``s``, not ``ss``, ``us`` or ``is``, over three letters) loses its
        ``s``; single spaces. ``"CD14+ Monocytes"`` and ``"CD14-positive monocyte"`` both give
        ``"cd14 positive monocyte"``.
    """
    lowered = re.sub(r"(?<=[0-9a-z])\+", " positive ", text.casefold())
    lowered = re.sub(r"(?<=\d)-(?![0-9a-z])", " negative ", lowered)
    words = re.sub(r"[-_,/()]", " ", lowered).split()
    out: list[str] = []
    for i, word in enumerate(words):
        out.append("cell" if word == "cells" else word)
        following = words[i + 1] if i + 1 < len(words) else ""
        if _MARKER.match(word) and following not in _STATES:
            out.append("positive")
    if out and len(out[-1]) > 3 and out[-1].endswith("s") and not out[-1].endswith(_PLURAL_EXCEPTIONS):
        out[-1] = out[-1][:-1]
    return " ".join(out)


def variants(label: str) -> tuple[str, ...]:
    """The normalised forms of a label tried in the normalised steps, in order.

    Parameters
    ----------
    label
        A data set's label.

    Returns
    -------
    tuple of str
        :func:`normalise`'s form, then that form with ``cell`` added when it does not end in ``cell``.
    """
    base = normalise(label)
    if not base or base.endswith("cell"):
        return (base,) if base else ()
    return base, f"{base} cell"


def _plain(text: str) -> str:
    return " ".join(text.casefold().split())


class Ontology:
    """The CL terms, with indexes to match labels by name and synonym.

    Parameters
    ----------
    terms
        The terms by id.
    source
        Where the terms came from (entry, package, release, sha256), as stored in an atlas.
    """

    def __init__(self, terms: Mapping[str, Term], *, source: Mapping[str, str] | None = None) -> None:
        self.terms = dict(terms)
        self.source = dict(source or {})
        live = [t for t in self.terms.values() if not t.deprecated]
        self._name = _index((_plain(t.name), t.id) for t in live)
        self._synonym = _index((_plain(s), t.id) for t in live for s in t.synonyms)
        self._normal_name = _index((normalise(t.name), t.id) for t in live)
        self._normal_synonym = _index((normalise(s), t.id) for t in live for s in t.synonyms)
        self._curated = {_plain(label): term for label, (term, _) in CURATED.items()}

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping[str, Any]], *,
                     source: Mapping[str, str] | None = None) -> Ontology:
        """An ontology from records shaped as the CL file's (id -> ``label``, ``synonyms``, ``ancestors``, ``deprecated``).

        Parameters
        ----------
        records
            Term id to its record; ids not starting with ``CL:`` are left out.
        source
            Where the records came from.

        Returns
        -------
        Ontology

        Raises
        ------
        InputDataError
            A record lacks ``label`` or ``ancestors``.
        """
        terms = {}
        for term_id, record in records.items():
            if not term_id.startswith("CL:"):
                continue
            if "label" not in record or "ancestors" not in record:
                message = (f"the Cell Ontology record {term_id} has no 'label' or 'ancestors'; expected the CL JSON of "
                           f"cellxgene-ontology-guide (run `screader-db fetch {ENTRY} --force`)")
                raise InputDataError(message)
            terms[term_id] = Term(id=term_id, name=str(record["label"]),
                                  synonyms=tuple(str(s) for s in record.get("synonyms") or ()),
                                  ancestors={str(a): int(n) for a, n in record["ancestors"].items()},
                                  deprecated=bool(record.get("deprecated", False)))
        return cls(terms, source=source)

    def __contains__(self, term_id: object) -> bool:
        return term_id in self.terms

    def __len__(self) -> int:
        return len(self.terms)

    def name(self, term_id: str) -> str:
        """A term's name, "" for an id the ontology does not have.

        Parameters
        ----------
        term_id
            A CL id.

        Returns
        -------
        str
        """
        term = self.terms.get(term_id)
        return term.name if term is not None else ""

    def match(self, label: str) -> Match:
        """The CL term of a label, by the steps in the module's description.

        Parameters
        ----------
        label
            A data set's label.

        Returns
        -------
        Match
            The term and how it was found; ``Match("", "none")`` when no step finds exactly one term.
        """
        plain = _plain(label)
        for index, how in ((self._name, NAME), (self._synonym, SYNONYM)):
            found = index.get(plain, ())
            if len(found) == 1:
                return Match(found[0], how)
        curated = self._curated.get(plain)
        if curated is not None and curated in self.terms:
            return Match(curated, CURATED_MATCH)
        for form in variants(label):
            for index, how in ((self._normal_name, NORMALISED_NAME), (self._normal_synonym, NORMALISED_SYNONYM)):
                found = index.get(form, ())
                if len(found) == 1:
                    return Match(found[0], how)
        return Match("", NONE)

    def broad(self, term_id: str) -> str:
        """The broad class of a term: its nearest ancestor (itself included) in :data:`BROAD_CLASSES`.

        Parameters
        ----------
        term_id
            A CL id.

        Returns
        -------
        str
            The broad class's id; "" for an id the ontology does not have, or with no broad class above it.
        """
        term = self.terms.get(term_id)
        if term is None:
            return ""
        steps = {**term.ancestors, term_id: 0}
        found = [(steps[b], rank, b) for rank, (b, _) in enumerate(BROAD_CLASSES) if b in steps]
        return min(found)[2] if found else ""


def _index(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Text -> the ids it names (each once, sorted)."""
    found: dict[str, set[str]] = {}
    for text, term_id in pairs:
        if text:
            found.setdefault(text, set()).add(term_id)
    return {text: tuple(sorted(ids)) for text, ids in found.items()}


def read_records(path: str | Path) -> dict[str, Any]:
    """The term records of a CL file: zstd-compressed JSON (``.json.zst``) or plain JSON.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    dict
        Term id to record.

    Raises
    ------
    InputDataError
        The file cannot be read, decompressed or parsed, or is not a JSON object.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
        if file.name.endswith(".zst"):
            import zstandard

            try:
                with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                    raw = reader.read()
            except zstandard.ZstdError as err:
                raise ValueError(f"not zstd data: {err}") from err
        records = json.loads(raw)
    except (OSError, ValueError, ImportError) as err:
        message = f"cannot read the Cell Ontology file {file}: {err}; run `screader-db fetch {ENTRY} --force`"
        raise InputDataError(message) from err
    if not isinstance(records, dict):
        message = f"the Cell Ontology file {file} holds a JSON {type(records).__name__}, not an object of terms"
        raise InputDataError(message)
    return records


@functools.lru_cache(maxsize=4)
def _load(path: str, sha256: str, entry: str = "", package: str = "") -> Ontology:
    release = re.search(r"v?(\d{4}-\d{2}-\d{2})", Path(path).name)
    source = {"file": Path(path).name, "release": release.group(1) if release else "", "sha256": sha256}
    if entry:
        source.update(entry=entry, package=package)
    return Ontology.from_records(read_records(path), source=source)


def load_ontology(path: str | Path | None = None) -> Ontology:
    """The Cell Ontology, read once per process.

    Parameters
    ----------
    path
        A CL file (:func:`read_records`); None takes the manifest entry :data:`ENTRY`, fetched and
        verified on first use (:func:`screader_db.fetch.ensure`).

    Returns
    -------
    Ontology
        Its ``source`` names the file, the CL release and the file's sha256 (and the manifest entry
        and package when it came from the manifest).

    Raises
    ------
    FetchError, ChecksumError
        The manifest entry could not be fetched or verified.
    InputDataError
        The file cannot be read.
    """
    if path is not None:
        from screader_db.checksums import sha256_file

        return _load(str(path), sha256_file(Path(path)))
    from screader_db.fetch import ensure
    from screader_db.manifest import get_entry

    entry = get_entry(ENTRY)
    return _load(str(ensure(ENTRY)), entry.sha256, ENTRY, entry.requirement)


_UNFETCHED: dict[str, str] = {}  # the manifest's sha256 of the CL file -> why fetching it failed in this process


def available_ontology(*, warn: bool = False) -> tuple[Ontology | None, str]:
    """The manifest's Cell Ontology, or why it cannot be fetched (a build goes on without it).

    A failed fetch is not tried again in the same process until the file is in the cache
    (``screader-db fetch cell_ontology``).

    Parameters
    ----------
    warn
        Warn (:class:`~screader_db.errors.ScreaderWarning`) with the reason when it cannot be fetched.

    Returns
    -------
    (Ontology or None, str)
        The ontology and "", or None and a sentence saying why and how to fix it.

    Raises
    ------
    ChecksumError
        The downloaded file is not the one the manifest records.
    InputDataError
        The verified file cannot be read.
    """
    from screader_db.fetch import cached_path
    from screader_db.manifest import get_entry

    entry = get_entry(ENTRY)
    reason = "" if cached_path(entry).exists() else _UNFETCHED.get(entry.sha256, "")
    if not reason:
        try:
            return load_ontology(), ""
        except FetchError as err:
            reason = (f"labels were not matched to the Cell Ontology ({err}); the atlas's ontology and broad levels "
                      f"repeat its labels. Run `screader-db fetch {ENTRY}` and build again")
            _UNFETCHED[entry.sha256] = reason
    if warn:
        import warnings

        warnings.warn(reason, ScreaderWarning, stacklevel=2)
    return None, reason
