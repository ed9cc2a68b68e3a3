"""Gene identifiers: the shipped human gene table, symbol/alias/Ensembl lookup and orthologs."""

from __future__ import annotations

import functools
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
# Decorations that tools add to gene names: a reference genome's prefix (Cell Ranger's multi-genome
# references: GRCh38_CD3E, mm10-Cd3e), a chromosome suffix (CEL-seq tables: A1BG-AS1__chr19), and an
# Ensembl id joined to the symbol (ENSG00000121410|A1BG, A1BG_ENSG00000121410).
GENOME_PREFIX_RE = re.compile(r"^(?:GRCh3[78]|hg19|hg38|GRCm3[89]|mm10|mm39)[_-]+(?=.)", re.IGNORECASE)
CHROMOSOME_SUFFIX_RE = re.compile(r"(?<=.)__chr[0-9A-Za-z._]*$")
JOINED_RE = re.compile(r"^(?P<a>[^|]+?)[|:_](?P<b>ENS[A-Z]*G\d{6,}(?:\.\d+)?)$|^(?P<c>ENS[A-Z]*G\d{6,}(?:\.\d+)?)[|:_](?P<d>.+)$")
SPECIES = ("human", "mouse")
# Mouse nomenclature that no human symbol follows: predicted genes (Gm12345) and RIKEN clones (1700001C19Rik).
MOUSE_FORM_RE = re.compile(r"^(?:GM\d+|[0-9A-Z]+RIK\d*)$")
SPECIES_SAMPLE = 5000  # names looked at to tell the species
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


@lru_cache(maxsize=1)
def load_mouse_symbols() -> frozenset[str]:
    """Every mouse symbol of the ortholog table, upper-cased (genes of every homology type).

    Returns
    -------
    frozenset of str

    Raises
    ------
    FetchError
        The ortholog table is not cached and cannot be downloaded.
    """
    from screader_db.fetch import ensure

    names = pd.read_csv(ensure(ORTHOLOG_ENTRY), usecols=["gene.name"])["gene.name"].dropna().astype(str)
    return frozenset(names.str.upper())


def plain_names(name: str) -> tuple[str, ...]:
    """The forms a decorated gene name may be known by, the symbol first; empty when it is not decorated.

    Parameters
    ----------
    name
        A gene name as a data set gives it.

    Returns
    -------
    tuple of str
        ``("CD3E",)`` for ``GRCh38_CD3E`` or ``CD3E__chr11``; ``("A1BG", "ENSG00000121410")`` for
        ``ENSG00000121410|A1BG``; ``()`` for a plain name.
    """
    plain = CHROMOSOME_SUFFIX_RE.sub("", GENOME_PREFIX_RE.sub("", name))
    joined = JOINED_RE.match(plain)
    if joined is not None:
        symbol, ensembl = (joined["a"], joined["b"]) if joined["a"] is not None else (joined["d"], joined["c"])
        return tuple(dict.fromkeys([*plain_names(symbol), symbol, ensembl]))
    if "|" in plain:
        return tuple(part for part in plain.split("|") if part)
    return (plain,) if plain != name else ()


# Numeric names are read as Entrez gene ids only when at least this share of them are above ENTREZ_BEYOND:
# no matrix has that many genes, so such numbers are not row positions. Of the human Entrez ids in the
# gene table, 78% are above it (31% of the protein-coding ones); a list of positions, or of a subset of
# them, has none.
ENTREZ_BEYOND = 100_000
ENTREZ_SHARE = 0.1


def entrez_like(names: Sequence[str]) -> bool:
    """Whether the numeric names among ``names`` are Entrez gene ids rather than row positions.

    Parameters
    ----------
    names
        Gene names.

    Returns
    -------
    bool
        True when at least :data:`ENTREZ_SHARE` of the numeric names are above :data:`ENTREZ_BEYOND`.
    """
    numbers = [int(n) for n in map(str, names) if n.isdigit()]
    return bool(numbers) and sum(n > ENTREZ_BEYOND for n in numbers) >= ENTREZ_SHARE * len(numbers)


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
        are capitalised (Gcg); ``human`` otherwise (GCG). Decorations (:func:`plain_names`) are set aside.
    """
    names = _plain_sample(names)
    if looks_like_ensembl(names) > 0.5:
        return "mouse" if sum(str(n).startswith("ENSMUSG") for n in names[:2000]) > len(names[:2000]) / 2 else "human"
    return "mouse" if _capitalised(names) else "human"


def _plain_sample(names: Sequence[str]) -> list[str]:
    return [(plain_names(str(n)) or (str(n),))[0] for n in names[:SPECIES_SAMPLE]]


def _capitalised(names: list[str]) -> bool:
    """Whether most names with letters are capitalised as mouse symbols are (Gcg, not GCG or gcg)."""
    letters = [n for n in names if re.search("[A-Za-z]{2}", n)]
    capitalised = sum(n[0].isupper() and any(c.islower() for c in n[1:]) for n in letters)
    return bool(letters) and capitalised > 0.5 * len(letters)


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
        Names per way of mapping: ``symbol``, ``alias``, ``ensembl``, ``entrez``, ``ortholog``,
        ``same-name``, ``unmapped``; ``decorated`` counts, besides, the names mapped once their
        decorations were set aside (:func:`plain_names`).
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
        self._given_orthologs = orthologs is not None
        self._mapped: OrderedDict[tuple[str, str], GeneMapping] = OrderedDict()

    @property
    def orthologs(self) -> dict[str, str]:
        """Mouse symbol -> human symbol, read on first use."""
        if self._orthologs is None:
            self._orthologs = load_orthologs()
        return self._orthologs

    @functools.cached_property
    def folded_orthologs(self) -> dict[str, str]:
        """Upper-cased mouse symbol -> human symbol, for the upper-case forms only one mouse symbol has."""
        forms: dict[str, list[str]] = {}
        for mouse, human in self.orthologs.items():
            forms.setdefault(mouse.upper(), []).append(human)
        return {form: humans[0] for form, humans in forms.items() if len(set(humans)) == 1}

    def species_of(self, names: Sequence[str]) -> tuple[str, bool]:
        """The species of ``names`` and whether they are mouse symbols with their case lost.

        Names of one case (GCG, gcg) are read by their form as human (:func:`detect_species`), unless
        more of them are mouse symbols that no human symbol matches (INS1, GM42418, 1700001C19RIK)
        than human symbols that no mouse symbol matches: then they are mouse symbols upper- or
        lower-cased by the tool that wrote them. Without the ortholog table they are read as human.

        Parameters
        ----------
        names
            Gene names.

        Returns
        -------
        species, folded
            ``human`` or ``mouse``, and True for mouse symbols without their case.
        """
        form = detect_species(names)
        sample = _plain_sample(names)
        if form == "mouse" or looks_like_ensembl(sample) > 0.5 or not any(re.search("[A-Za-z]{2}", n) for n in sample):
            return form, False
        from screader_db.errors import ScreaderError

        try:
            mouse = frozenset(m.upper() for m in self.orthologs) if self._given_orthologs else load_mouse_symbols()
        except ScreaderError:
            return form, False
        upper = [n.upper() for n in sample]
        mouse_only = sum(n not in self.upper and (n in mouse or bool(MOUSE_FORM_RE.match(n))) for n in upper)
        human_only = sum(n in self.upper and n not in mouse for n in upper)
        return ("mouse", True) if mouse_only > human_only else (form, False)

    @functools.cached_property
    def entrez(self) -> dict[str, str]:
        """Entrez gene id (as text) -> human symbol."""
        return {str(e): s for e, s in zip(self.table["entrez_id"], self.table["symbol"], strict=True)}

    def _human(self, name: str, numbers: bool = True) -> tuple[str, str]:
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
        if numbers and name.isdigit() and name in self.entrez:
            return self.entrez[name], "entrez"
        return "", "unmapped"

    def _one(self, name: str, species: str, numbers: bool, folded: bool = False) -> tuple[str, str]:
        """One name's human symbol and how it was found, as :meth:`map` reads names of ``species``
        (mouse symbols without their case when ``folded``)."""
        if species == "mouse" and not ENSEMBL_RE.match(name):
            human = self.orthologs.get(name, "") or (self.folded_orthologs.get(name.upper(), "") if folded else "")
            if human:
                return human, "ortholog"
            if name.upper() in self.upper and (folded or not name.isupper()):
                return self.upper[name.upper()], "same-name"
            return "", "unmapped"
        return self._human(name, numbers)

    def map(self, names: Sequence[str], *, species: str = "auto") -> GeneMapping:
        """Human symbols for ``names``.

        Human names are matched as symbols (in any case), then Ensembl ids (version dropped), then
        aliases that name a single gene, then Entrez ids (when the numbers are not row positions,
        :func:`entrez_like`); mouse symbols through :attr:`orthologs` (in any case when the names
        have lost theirs, :meth:`species_of`), else a human symbol of the same name. A name that
        maps to nothing is tried again without its decorations (:func:`plain_names`: ``GRCh38_CD3E``,
        ``CD3E__chr11``, ``ENSG00000198851|CD3E``).

        Parameters
        ----------
        names
            Gene names of one species.
        species
            ``human``, ``mouse`` or ``auto`` (:meth:`species_of`).

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
        if species == "auto":
            chosen, folded = self.species_of(names)
        else:
            chosen, folded = species, species == "mouse" and not _capitalised(_plain_sample(names))
        if chosen not in SPECIES:
            message = f"species must be one of {', '.join(SPECIES)} or auto, got {species!r}"
            raise InputDataError(message)
        how: dict[str, int] = {}
        out: list[str] = []
        numbers = entrez_like(names)
        for name in names:
            human, kind = self._one(name, chosen, numbers, folded)
            for plain in () if human else plain_names(name):
                human, kind = self._one(plain, chosen, numbers, folded)
                if human:
                    how["decorated"] = how.get("decorated", 0) + 1
                    break
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
