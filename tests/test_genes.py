"""Gene identifiers: species from symbol case, symbol/alias/Ensembl lookup, mouse orthologs, descriptions."""

import pytest

from screader_db.genes import GeneResolver, detect_species, entrez_like, looks_like_ensembl, plain_names


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


@pytest.mark.data("orthologs_human_mouse_all", "baron_mouse")
def test_mouse_symbols_that_lost_their_case_are_read_as_mouse(data_path):
    from screader_db.inputs import read_h5ad

    data_path("orthologs_human_mouse_all")
    resolver = GeneResolver()
    names = [str(n) for n in read_h5ad(data_path("baron_mouse"), backed=True).var_names]
    as_written = resolver.map(names)
    for cased in ([n.upper() for n in names], [n.lower() for n in names]):
        mapped = resolver.map(cased)
        assert mapped.species == "mouse"
        same = sum(a == b for a, b in zip(as_written.symbols, mapped.symbols, strict=True) if a)
        assert same >= 0.999 * as_written.n_mapped and mapped.n_mapped >= as_written.n_mapped
    small = resolver.map(["INS1", "INS2", "GCG", "GM42418", "1700001C19RIK"])
    assert small.species == "mouse" and small.symbols[:3] == ["INS", "INS", "GCG"]
    for human in (["INS", "GCG", "CD3E", "SST", "PPY"], ["ins", "gcg", "cd3e", "sst", "ppy"]):
        mapped = resolver.map(human)
        assert mapped.species == "human" and mapped.symbols == ["INS", "GCG", "CD3E", "SST", "PPY"]


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


def test_decorated_names_map_once_their_decorations_are_set_aside():
    assert plain_names("GRCh38_CD3E") == ("CD3E",)
    assert plain_names("mm10-Cd3e") == ("Cd3e",)
    assert plain_names("A1BG-AS1__chr19") == ("A1BG-AS1",)
    assert plain_names("ENSG00000198851|CD3E") == ("CD3E", "ENSG00000198851")
    assert plain_names("CD3E_ENSG00000198851") == ("CD3E", "ENSG00000198851")
    assert plain_names("CD3E") == plain_names("HLA-A") == plain_names("ENSG00000141510.17") == ()
    mapped = GeneResolver().map(["GRCh38_CD3E", "INS__chr11", "ENSG00000141510|NOTASYMBOL", "CD3D"])
    assert mapped.species == "human"  # "GRCh38_" and "__chr" do not read as mouse capitalisation
    assert mapped.symbols == ["CD3E", "INS", "TP53", "CD3D"]
    assert mapped.how["decorated"] == 3
    assert detect_species([f"{g}__chr1" for g in ["GCG", "INS", "SST", "PPY"]]) == "human"


@pytest.mark.data("orthologs_human_mouse_all")
def test_decorated_mouse_names_map_through_orthologs(data_path):
    data_path("orthologs_human_mouse_all")
    mapped = GeneResolver().map(["mm10_Gcg", "Ins1__chr19", "Cd3e"])
    assert mapped.species == "mouse"
    assert mapped.symbols == ["GCG", "INS", "CD3E"]


def test_entrez_ids_map_unless_the_names_are_row_positions():
    resolver = GeneResolver()
    mapped = resolver.map(["916", "3630", "7157", "100126572"])  # CD3E, INS, TP53 and a microRNA
    assert mapped.symbols[:3] == ["CD3E", "INS", "TP53"] and mapped.symbols[3]
    assert mapped.how == {"entrez": 4}
    positions = [str(i) for i in range(0, 30000, 7)]  # a subset of a var index of row numbers
    assert not entrez_like(positions) and resolver.map(positions).n_mapped == 0
