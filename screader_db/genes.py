"""Gene identifiers: the shipped human gene table, symbol/alias/Ensembl lookup and orthologs."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from screader_db.errors import InputDataError

GENE_TABLE_ENTRY = "gene_table_human"
ORTHOLOG_ENTRY = "orthologs_human_mouse_all"
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
SPECIES = ("human", "mouse")
MAPPINGS_KEPT = 8  # gene-name lists whose mapping a resolver keeps


@lru_cache(maxsize=1)
def load_gene_table() -> pd.DataFrame:
    """The human gene description table shipped with the package, checked against its sha256.

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``symbol``, ``entrez_id``, ``gene_type``, ``full_name``, ``aliases``,
        ``ensembl_ids``, ``go_mf``, ``go_bp``, ``go_cc``, ``description`` and ``text_sha256``.

    Raises
    ------
    ChecksumError
        The shipped file does not hash to the manifest's sha256.
    """
    import pyarrow.parquet as pq

    from screader_db.fetch import ensure

    return pq.read_table(ensure(GENE_TABLE_ENTRY)).to_pandas()


@lru_cache(maxsize=1)
def load_orthologs() -> dict[str, str]:
    """Mouse symbol -> human symbol for every mouse gene with exactly one human ortholog.

    That is the 1:1 orthologs plus the one-to-many ones seen from the mouse side (mouse Ins1 and
    Ins2 both map to human INS, and their counts are summed); mouse genes with several human
    orthologs are left unmapped.

    Returns
    -------
    dict
        Mouse symbol -> human symbol.

    Raises
    ------
    FetchError
        The ortholog table is not cached and cannot be downloaded.
    ChecksumError
        The downloaded table does not hash to the manifest's sha256.
    """
    from screader_db.fetch import ensure

    table = pd.read_csv(ensure(ORTHOLOG_ENTRY), usecols=["human.gene.name", "gene.name"]).dropna().astype(str)
    unique = table.drop_duplicates().groupby("gene.name")["human.gene.name"].agg(["first", "nunique"])
    single = unique[unique["nunique"] == 1]
    return dict(zip(single.index, single["first"], strict=True))


def looks_like_ensembl(names: Sequence[str]) -> float:
    """Share of names that look like Ensembl gene ids (ENSG..., ENSMUSG..., with or without a version).

    Parameters
    ----------
    names
        Gene names; the first 2,000 are looked at.

    Returns
    -------
    float
        Between 0 and 1; 0 for no names.
    """
    if len(names) == 0:
        return 0.0
    sample = list(names[:2000])
    return sum(bool(ENSEMBL_RE.match(str(n))) for n in sample) / len(sample)


def detect_species(names: Sequence[str]) -> str:
    """The species gene names come from, by their form.

    Parameters
    ----------
    names
        Gene names: symbols or Ensembl ids.

    Returns
    -------
    str
        ``mouse`` when most Ensembl ids are ENSMUSG or, for symbols, when most of the first 5,000
        are capitalised (Gcg); ``human`` otherwise (GCG).
    """
    letters = [str(n) for n in names[:5000] if re.search("[A-Za-z]{2}", str(n))]
    if looks_like_ensembl(names) > 0.5:
        return "mouse" if sum(str(n).startswith("ENSMUSG") for n in names[:2000]) > len(names[:2000]) / 2 else "human"
    if not letters:
        return "human"
    capitalised = sum(n[0].isupper() and any(c.islower() for c in n[1:]) for n in letters)
    return "mouse" if capitalised > 0.5 * len(letters) else "human"


@dataclass(frozen=True)
class GeneMapping:
    """How a data set's gene names were turned into human symbols.

    Parameters
    ----------
    symbols
        The human symbol of each input name, ``""`` where none is known.
    species
        The species the names were read as: ``human`` or ``mouse``.
    n_input
        Number of input names.
    n_mapped
        Number of names with a human symbol.
    how
        Names per way of mapping: ``symbol``, ``alias``, ``ensembl``, ``ortholog``, ``same-name``, ``unmapped``.
    """

    symbols: list[str]
    species: str
    n_input: int
    n_mapped: int
    how: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        """Share of the input names that map to a human symbol (0 for no names)."""
        return self.n_mapped / self.n_input if self.n_input else 0.0


class GeneResolver:
    """Map gene names (symbols, aliases, Ensembl ids, mouse symbols) to human symbols.

    Parameters
    ----------
    table
        The gene table (default: :func:`load_gene_table`).
    orthologs
        Mouse symbol -> human symbol (default: :func:`load_orthologs`, read on first use).
    """

    def __init__(self, table: pd.DataFrame | None = None, orthologs: dict[str, str] | None = None) -> None:
        self.table = table if table is not None else load_gene_table()
        self._orthologs = orthologs
        self.symbols = set(self.table["symbol"])
        self.upper = {s.upper(): s for s in self.symbols}
        alias_pairs = [(a, s) for s, aliases in zip(self.table["symbol"], self.table["aliases"], strict=True)
                       for a in aliases]
        counts: dict[str, int] = {}
        for alias, _ in alias_pairs:
            counts[alias.upper()] = counts.get(alias.upper(), 0) + 1
        self.alias = {a.upper(): s for a, s in alias_pairs if counts[a.upper()] == 1 and a.upper() not in self.upper}
        self.ensembl = {e: s for s, ids in zip(self.table["symbol"], self.table["ensembl_ids"], strict=True) for e in ids}
        self._mapped: OrderedDict[tuple[str, str], GeneMapping] = OrderedDict()

    @property
    def orthologs(self) -> dict[str, str]:
        """Mouse symbol -> human symbol, read on first use."""
        if self._orthologs is None:
            self._orthologs = load_orthologs()
        return self._orthologs

    def _human(self, name: str) -> tuple[str, str]:
        if name in self.symbols:
            return name, "symbol"
        key = name.upper()
        if key in self.upper:
            return self.upper[key], "symbol"
        if ENSEMBL_RE.match(name):
            hit = self.ensembl.get(name.split(".")[0], "")
            return hit, "ensembl" if hit else "unmapped"
        if key in self.alias:
            return self.alias[key], "alias"
        return "", "unmapped"

    def map(self, names: Sequence[str], *, species: str = "auto") -> GeneMapping:
        """Human symbols for ``names``.

        Human names are matched as symbols (in any case), then Ensembl ids (version dropped), then
        aliases that name a single gene; mouse symbols through :attr:`orthologs`, else a human
        symbol of the same name.

        Parameters
        ----------
        names
            Gene names of one species.
        species
            ``human``, ``mouse`` or ``auto`` (:func:`detect_species`).

        Returns
        -------
        GeneMapping
            The symbols (``""`` where none is known) and how each was found; the last
            :data:`MAPPINGS_KEPT` mappings are kept, so a repeated gene list (a server's uploads
            from one platform) is mapped once.

        Raises
        ------
        InputDataError
            ``species`` is not human, mouse or auto.
        """
        names = [str(n) for n in names]
        key = (species, hashlib.sha1("\0".join(names).encode()).hexdigest())
        if key in self._mapped:
            self._mapped.move_to_end(key)
            return self._mapped[key]
        mapping = self._map(names, species)
        self._mapped[key] = mapping
        while len(self._mapped) > MAPPINGS_KEPT:
            self._mapped.popitem(last=False)
        return mapping

    def _map(self, names: list[str], species: str) -> GeneMapping:
        chosen = detect_species(names) if species == "auto" else species
        if chosen not in SPECIES:
            message = f"species must be one of {', '.join(SPECIES)} or auto, got {species!r}"
            raise InputDataError(message)
        how: dict[str, int] = {}
        out: list[str] = []
        for name in names:
            if chosen == "mouse" and not ENSEMBL_RE.match(name):
                human = self.orthologs.get(name, "")
                kind = "ortholog" if human else "unmapped"
                if not human and name.upper() in self.upper and not name.isupper():
                    human, kind = self.upper[name.upper()], "same-name"
            else:
                human, kind = self._human(name)
            how[kind] = how.get(kind, 0) + 1
            out.append(human)
        mapped = sum(1 for s in out if s)
        return GeneMapping(symbols=out, species=chosen, n_input=len(names), n_mapped=mapped, how=how)

    def descriptions(self, symbols: Sequence[str]) -> tuple[list[str], list[str]]:
        """The description text of each human symbol and its sha256.

        Parameters
        ----------
        symbols
            Human gene symbols.

        Returns
        -------
        tuple of list
            The texts (``"SYMBOL: gene."`` for a symbol the table lacks) and their sha256 hex digests.
        """
        indexed = self.table.set_index("symbol")
        texts, shas = [], []
        from screader_db.checksums import sha256_text

        for symbol in symbols:
            if symbol in indexed.index:
                row = indexed.loc[symbol]
                texts.append(str(row["description"]))
                shas.append(str(row["text_sha256"]))
            else:
                text = f"{symbol}: gene."
                texts.append(text)
                shas.append(sha256_text(text))
        return texts, shas


@lru_cache(maxsize=1)
def default_resolver() -> GeneResolver:
    """One resolver over the shipped tables, shared: its lookups are built once per process.

    Returns
    -------
    GeneResolver
        The same object on every call.
    """
    return GeneResolver()
