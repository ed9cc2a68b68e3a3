"""Gene identifiers: species from symbol case, symbol/alias/Ensembl lookup, mouse orthologs, descriptions."""

import pytest

from screader_db.genes import GeneResolver, detect_species, looks_like_ensembl


def test_species_from_symbol_case():
    assert detect_species(["Gcg", "Ins1", "Sst", "Ppy"]) == "mouse"
    assert detect_species(["GCG", "INS", "SST", "PPY"]) == "human"
    assert detect_species(["ENSMUSG00000000001", "ENSMUSG00000000003"]) == "mouse"
    assert looks_like_ensembl(["ENSG00000198851", "ENSG00000141510.17"]) == 1.0


def test_symbols_aliases_and_ensembl_map_to_symbols():
    resolver = GeneResolver()
    mapped = resolver.map(["CD3E", "MT-ND1", "ENSG00000198851", "ENSG00000141510.17", "NOT_A_GENE"], species="human")
    assert mapped.symbols == ["CD3E", "ND1", "CD3E", "TP53", ""]
    assert mapped.n_mapped == 4
    assert mapped.how["ensembl"] == 2


@pytest.mark.data("orthologs_human_mouse_all")
def test_mouse_symbols_map_through_orthologs(data_path):
    data_path("orthologs_human_mouse_all")
    mapped = GeneResolver().map(["Gcg", "Ins1", "Cd3e", "Zzz3"], species="mouse")
    assert mapped.symbols[0] == "GCG"
    assert mapped.symbols[2] == "CD3E"
    assert mapped.species == "mouse"


def test_descriptions_fall_back_to_the_symbol():
    texts, shas = GeneResolver().descriptions(["INS", "NOT_A_GENE"])
    assert texts[0].startswith("INS: insulin.")
    assert texts[1] == "NOT_A_GENE: gene."
    assert len(shas[0]) == 64


@pytest.mark.data("orthologs_human_mouse_all")
def test_one_to_many_mouse_genes_map_to_their_single_human_ortholog(data_path):
    data_path("orthologs_human_mouse_all")
    mapped = GeneResolver().map(["Ins1", "Ins2", "Gcg"], species="mouse")
    assert mapped.symbols == ["INS", "INS", "GCG"]
