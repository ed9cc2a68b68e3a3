"""The gene description builder: template rules, and a byte-for-byte rebuild of the shipped table."""

import pyarrow.parquet as pq
import pytest

from screader_db.builders.genes import MAX_TERMS, _pick_terms, build_gene_table, describe, write_gene_table
from screader_db.checksums import sha256_file
from screader_db.errors import InputDataError
from screader_db.manifest import get_entry


def test_terms_prefer_strong_evidence_then_alphabetical():
    rows = [("zeta process", "IDA"), ("alpha process", "IEA"), ("beta process", "EXP"), ("alpha process", "IEA")]
    assert _pick_terms(rows) == ["beta process", "zeta process", "alpha process"]
    many = [(f"term {i:02d}", "IEA") for i in range(30)]
    assert len(_pick_terms(many)) == MAX_TERMS


def test_description_template():
    text = describe("CD3E", "CD3 epsilon subunit", {"go_mf": ["a"], "go_bp": [], "go_cc": ["b", "c"]})
    assert text == "CD3E: CD3 epsilon subunit. Molecular function: a. Cellular component: b; c."


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(InputDataError, match="run `screader-db fetch org_hs_eg_db go_db` first"):
        build_gene_table(tmp_path / "org.sqlite", tmp_path / "go.sqlite")


def test_shipped_table_has_provenance_and_known_genes():
    from screader_db.fetch import ensure

    table = pq.read_table(ensure("gene_table_human"))
    meta = table.schema.metadata[b"screader_db.provenance"].decode()
    assert "genes-1" in meta and "r-bioc-org.hs.eg.db=3.16.0-1" in meta
    frame = table.to_pandas().set_index("symbol")
    assert frame.loc["CD3E", "description"].startswith("CD3E: CD3 epsilon subunit of T-cell receptor complex.")
    assert "MT-ND1" in frame.loc["ND1", "aliases"]
    assert "ENSG00000198851" in frame.loc["CD3E", "ensembl_ids"]
    assert len(frame) > 77000


@pytest.mark.data("org_hs_eg_db", "go_db")
def test_rebuild_is_byte_identical_to_the_shipped_table(tmp_path, data_path):
    from screader_db.builders.genes import source_provenance

    org, go = data_path("org_hs_eg_db"), data_path("go_db")
    table = build_gene_table(org, go, sources=source_provenance(org, go))
    out = write_gene_table(table, tmp_path / "genes.parquet")
    assert sha256_file(out) == get_entry("gene_table_human").sha256
