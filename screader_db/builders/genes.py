"""Build the gene description table from Bioconductor's org.Hs.eg.db and GO.db (SQLite).

One row per human gene symbol: identifiers, aliases, full name, GO term names and the
description a language model reads. The output is deterministic: the same sources give the
same Parquet bytes, so the table shipped inside the package can be checked against a rebuild.

Description template (sections without terms are left out)::

    SYMBOL: full name. Molecular function: t1; t2. Biological process: t1; t2. Cellular component: t1.

Each GO section holds at most ``MAX_TERMS`` distinct term names: terms with experimental or
traceable evidence first (EXP, IDA, IPI, IMP, IGI, IEP, HTP, HDA, HMP, HGI, HEP, TAS, IC), then
the rest, each group alphabetical. Annotations with evidence ND (no data) are dropped.
Mitochondrial genes, which Entrez names ND1, COX1..., also get their HGNC names (MT-ND1) as aliases.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from screader_db.atlas_format import PROVENANCE_KEY
from screader_db.checksums import sha256_file, sha256_text
from screader_db.errors import InputDataError
from screader_db.outputs import atomic_write

BUILDER_VERSION = "genes-1"
MAX_TERMS = 12
STRONG_EVIDENCE = frozenset({"EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HTP", "HDA", "HMP", "HGI", "HEP", "TAS", "IC"})
SECTIONS = (("go_mf", "Molecular function"), ("go_bp", "Biological process"), ("go_cc", "Cellular component"))
TEMPLATE = "{symbol}: {full_name}. Molecular function: ... Biological process: ... Cellular component: ..."
TYPE_RANK = {"protein-coding": 0}

SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("entrez_id", pa.int64()),
        ("gene_type", pa.string()),
        ("full_name", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("ensembl_ids", pa.list_(pa.string())),
        ("go_mf", pa.list_(pa.string())),
        ("go_bp", pa.list_(pa.string())),
        ("go_cc", pa.list_(pa.string())),
        ("description", pa.string()),
        ("text_sha256", pa.string()),
    ]
)


def _pick_terms(rows: list[tuple[str, str]]) -> list[str]:
    """Distinct term names, strong evidence first, alphabetical within each group, capped."""
    best: dict[str, int] = {}
    for term, evidence in rows:
        rank = 0 if evidence in STRONG_EVIDENCE else 1
        best[term] = min(rank, best.get(term, rank))
    ordered = sorted(best, key=lambda t: (best[t], t.lower(), t))
    return ordered[:MAX_TERMS]


def describe(symbol: str, full_name: str, terms: dict[str, list[str]]) -> str:
    """The description text of one gene.

    Parameters
    ----------
    symbol : str
        The gene symbol.
    full_name : str
        Its full name.
    terms : dict of str to list of str
        GO term names under ``go_mf``, ``go_bp`` and ``go_cc``; a missing or empty section is left out.

    Returns
    -------
    str
        ``SYMBOL: full name. Molecular function: t1; t2. ...`` (the module's template).
    """
    parts = [f"{symbol}: {full_name}."]
    for key, title in SECTIONS:
        if terms.get(key):
            parts.append(f"{title}: {'; '.join(terms[key])}.")
    return " ".join(parts)


def build_gene_table(org_db: str | Path, go_db: str | Path, *, sources: dict[str, str] | None = None) -> pa.Table:
    """Read both SQLite databases and return the gene table (one row per symbol).

    A symbol shared by several Entrez genes keeps one: protein-coding first, then the one with the
    most GO annotations, then the lowest Entrez id.

    Parameters
    ----------
    org_db : str or Path
        org.Hs.eg.db's SQLite file.
    go_db : str or Path
        GO.db's SQLite file.
    sources : dict of str to str or None
        What the sources are (:func:`source_provenance`), recorded in the provenance; None records ``{}``.

    Returns
    -------
    pyarrow.Table
        Rows sorted by symbol, columns of :data:`SCHEMA`, provenance JSON under the schema metadata key
        ``screader_db.provenance``.

    Raises
    ------
    InputDataError
        Either database file does not exist.
    """
    for path in (org_db, go_db):
        if not Path(path).is_file():
            message = f"{path} does not exist; run `screader-db fetch org_hs_eg_db go_db` first"
            raise InputDataError(message)
    con = sqlite3.connect(f"file:{org_db}?mode=ro", uri=True)
    try:
        con.execute("ATTACH DATABASE ? AS go", (f"file:{go_db}?mode=ro",))
    except sqlite3.OperationalError:
        con.close()
        con = sqlite3.connect(str(org_db))
        con.execute("ATTACH DATABASE ? AS go", (str(go_db),))
    with con:
        genes = con.execute(
            "SELECT g._id, CAST(g.gene_id AS INTEGER), i.symbol, i.gene_name, COALESCE(t.gene_type, 'unknown') "
            "FROM genes g JOIN gene_info i ON i._id = g._id LEFT JOIN genetype t ON t._id = g._id"
        ).fetchall()
        mito = {row[0] for row in con.execute("SELECT _id FROM chromosomes WHERE chromosome = 'MT'")}
        multi: dict[str, dict[int, list[str]]] = {}
        for table, column in (("alias", "alias_symbol"), ("ensembl", "ensembl_id")):
            grouped: dict[int, list[str]] = defaultdict(list)
            for _id, value in con.execute(f"SELECT _id, {column} FROM {table}"):
                grouped[_id].append(value)
            multi[table] = grouped
        go_rows: dict[str, dict[int, list[tuple[str, str]]]] = {}
        for key, _ in SECTIONS:
            grouped_terms: dict[int, list[tuple[str, str]]] = defaultdict(list)
            query = f"SELECT a._id, t.term, a.evidence FROM {key} a JOIN go.go_term t ON t.go_id = a.go_id WHERE a.evidence != 'ND'"
            for _id, term, evidence in con.execute(query):
                grouped_terms[_id].append((term, evidence))
            go_rows[key] = grouped_terms
    con.close()

    by_symbol: dict[str, tuple] = {}
    for _id, entrez, symbol, name, gene_type in genes:
        terms = {key: _pick_terms(go_rows[key].get(_id, [])) for key, _ in SECTIONS}
        n_terms = sum(len(go_rows[key].get(_id, [])) for key, _ in SECTIONS)
        rank = (TYPE_RANK.get(gene_type, 1), -n_terms, entrez)
        current = by_symbol.get(symbol)
        if current is None or rank < current[0]:
            by_symbol[symbol] = (rank, _id, entrez, name, gene_type, terms)

    columns: dict[str, list] = {field.name: [] for field in SCHEMA}
    for symbol in sorted(by_symbol):
        _, _id, entrez, name, gene_type, terms = by_symbol[symbol]
        text = describe(symbol, name, terms)
        columns["symbol"].append(symbol)
        columns["entrez_id"].append(entrez)
        columns["gene_type"].append(gene_type)
        columns["full_name"].append(name)
        aliases = set(multi["alias"].get(_id, [])) | ({f"MT-{symbol}"} if _id in mito else set())
        columns["aliases"].append(sorted(aliases - {symbol}))
        columns["ensembl_ids"].append(sorted(set(multi["ensembl"].get(_id, []))))
        for key, _ in SECTIONS:
            columns[key].append(terms[key])
        columns["description"].append(text)
        columns["text_sha256"].append(sha256_text(text))
    provenance = {
        "builder_version": BUILDER_VERSION,
        "template": TEMPLATE,
        "max_terms": MAX_TERMS,
        "strong_evidence": sorted(STRONG_EVIDENCE),
        "sources": sources or {},
        "n_genes": len(columns["symbol"]),
    }
    schema = SCHEMA.with_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})
    return pa.Table.from_pydict(columns, schema=schema)


def write_gene_table(table: pa.Table, path: str | Path) -> Path:
    """Write the table deterministically (zstd, fixed row groups) via a temporary file.

    Parameters
    ----------
    table : pyarrow.Table
        The gene table (:func:`build_gene_table`).
    path : str or Path
        The Parquet file written (replaced if it exists; its folder is made).

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        pq.write_table(
            table, tmp, compression="zstd", compression_level=19, row_group_size=1 << 17,
            use_dictionary=["gene_type"], write_statistics=False, store_schema=True,
        )
    return target


def source_provenance(org_db: str | Path, go_db: str | Path) -> dict[str, str]:
    """Package versions and sha256 of the two SQLite sources, as recorded in the table.

    Parameters
    ----------
    org_db : str or Path
        org.Hs.eg.db's SQLite file (hashed).
    go_db : str or Path
        GO.db's SQLite file (hashed).

    Returns
    -------
    dict of str to str
        ``org_hs_eg_db`` and ``go_db`` as ``package=version sha256:HEX`` (versions from the manifest),
        and the ``entrez_gene`` and ``gene_ontology`` snapshot dates.
    """
    from screader_db.manifest import get_entry

    org, go = get_entry("org_hs_eg_db"), get_entry("go_db")
    return {
        "org_hs_eg_db": f"{org.package}={org.version} sha256:{sha256_file(org_db)}",
        "go_db": f"{go.package}={go.version} sha256:{sha256_file(go_db)}",
        "entrez_gene": "2022-09-12",
        "gene_ontology": "2022-07-01",
    }
