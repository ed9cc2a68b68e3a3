"""The Cell Ontology: matching labels to terms, broad classes, the atlas's ontology levels and the parent fallback.

Fast tests use a small CL fragment written here in the real file's structure; the real-data
tests check every label of the manifest's data sets against the real CL release (the table in
the README) and the parent fallback of a pbmc3k atlas on Kang cells.
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts

from screader_db import annotate, ontology
from screader_db.annotation import CALL_PARENT, label_parents, parent_labels
from screader_db.errors import FetchError, InputDataError, ScreaderWarning
from screader_db.label_families import most_common
from screader_db.labelmap import LABEL_TABLE_COLUMNS, label_table, ontology_terms, read_label_map
from screader_db.ontology import Match, Ontology, normalise


def _term(name, ancestors, synonyms=None, deprecated=False):
    record = {"ancestors": ancestors, "label": name, "description": "", "deprecated": deprecated}
    if synonyms:
        record["synonyms"] = synonyms
    return record


LEUKOCYTE = {"CL:0000738": 1, "CL:0000000": 2}
LYMPHOCYTE = {"CL:0000542": 1, "CL:0000738": 2, "CL:0000000": 3}
T_CELL = {"CL:0000084": 3, "CL:0000542": 4, "CL:0000738": 5, "CL:0000000": 6}
MONOCYTE = {"CL:0000576": 1, "CL:0000738": 2, "CL:0000000": 3}
# A fragment of CL, shaped as cellxgene-ontology-guide's file: id -> label, synonyms, ancestors (id -> is_a steps up).
FRAGMENT = {
    "CL:0000000": _term("cell", {}),
    "CL:0000738": _term("leukocyte", {"CL:0000000": 1}, ["white blood cell"]),
    "CL:0000542": _term("lymphocyte", LEUKOCYTE),
    "CL:0000084": _term("T cell", LYMPHOCYTE, ["T lymphocyte", "T-cell"]),
    "CL:0000791": _term("mature alpha-beta T cell", {"CL:0000084": 1, "CL:0000542": 2, "CL:0000738": 3, "CL:0000000": 4}),
    "CL:0000624": _term("CD4-positive, alpha-beta T cell", {"CL:0000791": 1, **T_CELL}),
    "CL:0000625": _term("CD8-positive, alpha-beta T cell", {"CL:0000791": 1, **T_CELL}),
    "CL:0000623": _term("natural killer cell", {"CL:0000542": 2, "CL:0000738": 3, "CL:0000000": 4}, ["NK cell"]),
    "CL:0000236": _term("B cell", LYMPHOCYTE, ["B lymphocyte"]),
    "CL:0000576": _term("monocyte", LEUKOCYTE),
    "CL:0001054": _term("CD14-positive monocyte", MONOCYTE),
    "CL:0002396": _term("CD14-low, CD16-positive monocyte", {"CL:0001054": 1, "CL:0000576": 2, "CL:0000738": 3,
                                                             "CL:0000000": 4}),
    "CL:0002397": _term("CD14-positive, CD16-positive monocyte", MONOCYTE, ["CD16+ monocyte"]),
    "CL:0002057": _term("CD14-positive, CD16-negative classical monocyte", MONOCYTE, ["CD16- monocyte"]),
    "CL:0000451": _term("dendritic cell", LEUKOCYTE),
    "CL:0000099": _term("interneuron", {"CL:0000000": 1}, ["shared name"]),
    "CL:0000100": _term("motor neuron", {"CL:0000000": 1}, ["shared name"]),
    "CL:0000101": _term("sensory neuron", {"CL:0000000": 1}, ["old sensory cell"], deprecated=True),
}


@pytest.fixture(scope="module")
def fragment():
    return Ontology.from_records(FRAGMENT, source={"release": "fragment"})


@pytest.mark.parametrize(("text", "normal"), [
    ("CD14+ Monocytes", "cd14 positive monocyte"),
    ("CD14-positive monocyte", "cd14 positive monocyte"),
    ("CD14 Monocytes", "cd14 positive monocyte"),
    ("CD16- monocyte", "cd16 negative monocyte"),
    ("CD14-low, CD16-positive monocyte", "cd14 low cd16 positive monocyte"),
    ("NK cells", "nk cell"),
    ("T-cell", "t cell"),
    ("  B   ", "b"),
    ("Megakaryocytes", "megakaryocyte"),
    ("pancreatic stellate cells", "pancreatic stellate cell"),
    ("glass", "glass"),
])
def test_normalise(text, normal):
    assert normalise(text) == normal


@pytest.mark.parametrize(("label", "term", "how"), [
    ("T cell", "CL:0000084", "name"),
    ("t  CELL", "CL:0000084", "name"),
    ("T lymphocyte", "CL:0000084", "synonym"),
    ("CD4 T", "CL:0000624", "curated"),
    ("CD16+ Monocytes", "CL:0002396", "curated"),  # curated wins over the normalised synonym of CL:0002397
    ("CD14+ Monocytes", "CL:0001054", "normalised name"),
    ("B", "CL:0000236", "normalised name"),
    ("Dendritic", "CL:0000451", "normalised name"),
    ("NK cells", "CL:0000623", "normalised synonym"),
    ("NK", "CL:0000623", "normalised synonym"),
    ("CD16- monocytes", "CL:0002057", "normalised synonym"),
    ("White-blood cells", "CL:0000738", "normalised synonym"),
    ("shared name", "", "none"),  # a synonym of two terms matches neither
    ("old sensory cell", "", "none"),  # deprecated terms are never matched
    ("sensory neuron", "", "none"),
    ("ependymal cell", "", "none"),
])
def test_labels_match_by_name_then_synonym_then_curated_then_normalised(fragment, label, term, how):
    assert fragment.match(label) == Match(term, how)


def test_the_curated_table_names_only_labels_that_names_and_synonyms_miss(fragment):
    for label, (term, why) in ontology.CURATED.items():
        assert term.startswith("CL:") and why
        found = fragment.match(label)
        assert found.how in ("curated", "none") or found.id != term, label


@pytest.mark.parametrize(("term", "broad"), [
    ("CL:0000624", "CL:0000084"),  # three steps up to T cell, beating lymphocyte's leukocyte (five)
    ("CL:0000084", "CL:0000084"),  # a broad class is its own
    ("CL:0002396", "CL:0000576"),
    ("CL:0000542", "CL:0000738"),
    ("CL:0000623", "CL:0000623"),
    ("CL:0000000", ""),  # nothing above it
    ("CL:9999999", ""),  # not in the ontology
])
def test_the_broad_class_is_the_nearest_listed_ancestor(fragment, term, broad):
    assert fragment.broad(term) == broad


def test_a_tie_goes_to_the_class_listed_first():
    records = {**FRAGMENT, "CL:0000555": _term("T-like monocyte", {"CL:0000576": 1, "CL:0000084": 1, "CL:0000000": 2})}
    assert Ontology.from_records(records).broad("CL:0000555") == "CL:0000084"  # T cell is listed before monocyte
    assert [name for _, name in ontology.BROAD_CLASSES].index("T cell") < [
        name for _, name in ontology.BROAD_CLASSES].index("monocyte")


def test_a_cl_file_is_read_compressed_or_plain_and_its_release_recorded(tmp_path):
    import zstandard

    packed = tmp_path / "CL-ontology-v2026-03-26.json.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(FRAGMENT).encode()))
    plain = tmp_path / "cl.json"
    plain.write_text(json.dumps(FRAGMENT))
    read = ontology.load_ontology(packed)
    assert len(read) == len(FRAGMENT) and read.name("CL:0000084") == "T cell"
    assert read.terms["CL:0000624"].parents == ("CL:0000791",)
    assert read.source["release"] == "2026-03-26" and len(read.source["sha256"]) == 64
    assert ontology.read_records(plain) == FRAGMENT
    broken = tmp_path / "broken.json.zst"
    broken.write_bytes(b"not zstd")
    with pytest.raises(InputDataError, match=rf"^cannot read the Cell Ontology file {broken}: .*; run `screader-db "
                                             r"fetch cell_ontology --force`$"):
        ontology.read_records(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InputDataError, match=r"holds a JSON list, not an object of terms$"):
        ontology.read_records(listed)
    with pytest.raises(InputDataError, match=r"^the Cell Ontology record CL:1 has no 'label' or 'ancestors'"):
        Ontology.from_records({"CL:1": {"label": "x"}})


def test_a_label_map_id_wins_and_unmatched_labels_repeat_their_harmonised_label(fragment):
    labels = np.array(["CD4 T", "B", "x", "CD4 T", "y", "z"], dtype=object)
    harmonised = np.array(["CD4 T", "B", "x", "CD4 T", "T cell", "zeta"], dtype=object)
    given = np.array(["", "CL:0000542", "CL:1", "", "", ""], dtype=object)
    terms = ontology_terms(labels, harmonised, given, fragment)
    assert terms.ontology_id.tolist() == ["CL:0000624", "CL:0000542", "CL:1", "CL:0000624", "CL:0000084", ""]
    assert terms.ontology_name.tolist() == ["CD4-positive, alpha-beta T cell", "lymphocyte", "x",
                                            "CD4-positive, alpha-beta T cell", "T cell", "zeta"]
    assert terms.broad.tolist() == ["T cell", "leukocyte", "x", "T cell", "T cell", "zeta"]
    assert terms.match.tolist() == ["curated", "label map", "label map", "curated", "name", "none"]
    without = ontology_terms(labels, harmonised, given, None)
    assert without.ontology_id.tolist() == given.tolist()
    assert without.ontology_name.tolist() == without.broad.tolist() == harmonised.tolist()
    assert without.match.tolist() == ["", "label map", "label map", "", "", ""]


def test_the_label_table_reads_back_as_a_label_map(tmp_path):
    cells = pd.DataFrame({"dataset": ["a", "a", "a", "b"], "label": ["CD4 T", "CD4 T", "x", "CD4 T"],
                          "label_harmonised": ["CD4 T", "CD4 T", "x", "T4"], "ontology_id": ["CL:0000624"] * 2 + ["", "CL:2"],
                          "label_ontology": ["CD4-positive, alpha-beta T cell"] * 2 + ["x", "T4"],
                          "ontology_match": ["curated", "curated", "none", "label map"],
                          "label_broad": ["T cell", "T cell", "x", "T4"]})
    frame = label_table(cells)
    assert list(frame.columns) == list(LABEL_TABLE_COLUMNS)
    assert frame.values.tolist() == [
        ["a", "CD4 T", "CD4 T", "CL:0000624", "CD4-positive, alpha-beta T cell", "curated", "T cell", 2],
        ["a", "x", "x", "", "", "none", "x", 1],
        ["b", "CD4 T", "T4", "CL:2", "T4", "label map", "T4", 1]]
    path = tmp_path / "labels.csv"
    frame.to_csv(path, index=False)
    back = read_label_map(path)
    assert back[["dataset", "label", "ontology_id"]].values.tolist() == [["a", "CD4 T", "CL:0000624"], ["a", "x", ""],
                                                                         ["b", "CD4 T", "CL:2"]]


def test_parents_pass_the_cut_offs_a_label_must():
    # labels: CD4 T, CD8 T (both under T cell), B, NK
    parents = ["T cell", "T cell", "B cell", "natural killer cell"]
    shares = np.array([[0.45, 0.40, 0.10, 0.05],   # T cell: 0.85
                       [0.30, 0.20, 0.45, 0.05],   # T cell 0.50 against B 0.45: passes 0.5, margin 0.05
                       [0.30, 0.15, 0.40, 0.15],   # T cell 0.45 < 0.5
                       [0.10, 0.05, 0.05, 0.80]])  # NK alone: its own label's share
    found = parent_labels(shares, parents, min_score=0.5, min_margin=0.0)
    assert found.tolist() == ["T cell", "T cell", "", "natural killer cell"]
    assert parent_labels(shares, parents, min_score=0.5, min_margin=0.1).tolist() == ["T cell", "", "",
                                                                                    "natural killer cell"]
    assert parent_labels(shares, ["a", "b", "c", "d"], min_score=0.0, min_margin=0.0).tolist() == [""] * 4
    cells = pd.DataFrame({"label": ["CD4 T", "CD4 T", "CD4 T", "B"], "label_broad": ["T cell", "T cell", "x", "B cell"]})
    classes = dict(zip(["B", "CD4 T"], most_common(cells, "label", "label_broad", ["B", "CD4 T"]), strict=True))
    assert label_parents(classes, ["B", "CD4 T", "NK"]) == ["B cell", "T cell", "NK"]  # NK has no cells
    broad = {"B cell": "B cell", "T cell": "T cell"}  # Atlas.label_classes at the broad level
    assert label_parents(broad, ["B cell", "T cell"]) == ["B cell", "T cell"]


NAMES = {"type0": "CD4 T", "type1": "CD8 T", "type2": "B"}


def _named(adata):
    out = adata.copy()
    out.obs["cell_type"] = out.obs["cell_type"].astype(str).map(NAMES).astype("category")
    return out


@pytest.fixture(scope="module")
def named_atlas(tmp_path_factory, fragment):
    """An atlas of generated cells labelled CD4 T, CD8 T and B, matched against the fragment."""
    from screader_db.builders.atlas import BuildSettings, build_atlas

    root = tmp_path_factory.mktemp("named") / "atlas"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ontology, "available_ontology", lambda warn=False: (fragment, ""))
        build_atlas(_named(make_counts(n_cells=300)), root, label_key="cell_type", dataset_name="synthetic",
                    settings=BuildSettings(model="random:32", method="genept", n_genes=50, layout="none"))
    return root


def test_the_atlas_stores_terms_broad_classes_and_the_ontology_used(named_atlas):
    from screader_db import atlas_format
    from screader_db.store import open_atlas

    opened = open_atlas(named_atlas)
    cells = opened.cells()
    by_label = cells.drop_duplicates("label").set_index("label")
    assert by_label.loc[["B", "CD4 T", "CD8 T"], "ontology_id"].tolist() == ["CL:0000236", "CL:0000624", "CL:0000625"]
    assert by_label.loc[["B", "CD4 T", "CD8 T"], "label_broad"].tolist() == ["B cell", "T cell", "T cell"]
    assert by_label.loc[["B", "CD4 T"], "ontology_match"].tolist() == ["normalised name", "curated"]
    assert by_label.loc["CD8 T", "label_ontology"] == "CD8-positive, alpha-beta T cell"
    assert {atlas_format.cells_ontology(p)["release"] for p in opened.cell_parts()} == {"fragment"}
    from screader_db.sql import run_sql

    found = run_sql(opened, "SELECT DISTINCT label, label_broad FROM cells ORDER BY label")
    assert found.values.tolist() == [["B", "B cell"], ["CD4 T", "T cell"], ["CD8 T", "T cell"]]


def test_queries_vote_at_every_level(named_atlas):
    query = _named(make_counts(n_cells=90, seed=9))
    fine = annotate(query, named_atlas, level="fine")
    assert fine.labels.equals(annotate(query, named_atlas, level="label").labels)
    broad = annotate(query, named_atlas, level="broad")
    assert broad.atlas_labels == ["B cell", "T cell"] and set(broad.labels) <= {"B cell", "T cell", "Unassigned"}
    truth = query.obs["cell_type"].map({"CD4 T": "T cell", "CD8 T": "T cell", "B": "B cell"})
    assert broad.agreement(truth).accuracy > 0.9
    terms = annotate(query, named_atlas, level="ontology")
    assert terms.atlas_labels == ["B cell", "CD4-positive, alpha-beta T cell", "CD8-positive, alpha-beta T cell"]
    assert broad.info["level"] == "broad"


def test_a_cell_split_between_cd4_and_cd8_gets_their_parent(named_atlas):
    import scipy.sparse as sp

    base = _named(make_counts(n_cells=120, seed=11))
    types = base.obs["cell_type"].astype(str).to_numpy()
    cd4, cd8, b = (np.flatnonzero(types == name)[:20] for name in ("CD4 T", "CD8 T", "B"))
    mixed = sp.vstack([base.X[cd4] + base.X[cd8], base.X[cd4] + base.X[b]]).tocsr()  # 20 T doublets, 20 T/B doublets
    query = base[:40].copy()
    query.X = mixed
    result = annotate(query, named_atlas, min_score=0.9, novelty=False)
    table = result.table
    parent = table["call_level"] == CALL_PARENT
    assert set(table.loc[parent, "label"]) == {"T cell"}
    assert parent[:20].sum() >= 5, "CD4/CD8 doublets below the cut-off get T cell"
    assert not parent[20:].any(), "a T/B doublet has no shared parent above the cut-off"
    assert (table.loc[parent, "score"] < 0.9).all()
    assert set(table.loc[parent, "raw_label"]) | set(table.loc[parent, "second_label"]) <= {"CD4 T", "CD8 T"}
    assert (table.loc[parent, "unassigned_reason"] == "").all()
    unassigned = table["label"] == "Unassigned"
    assert (table.loc[unassigned, "call_level"] == "unassigned").all()
    assert (table.loc[~unassigned & ~parent, "call_level"] == "fine").all()
    assert set(table.loc[~unassigned & ~parent, "label"]) <= {"CD4 T", "CD8 T", "B"}
    assert "screader_call_level" in result.to_adata(query).obs


def test_the_labels_command_shows_and_writes_the_mapping(named_atlas, tmp_path):
    from typer.testing import CliRunner

    from screader_db.cli import app

    out = tmp_path / "labels.csv"
    shown = CliRunner().invoke(app, ["labels", "--atlas", str(named_atlas), "--out", str(out)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "CL:0000624" in shown.output and "curated" in shown.output and "Cell Ontology fragment" in shown.output
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["label"].tolist() == ["B", "CD4 T", "CD8 T"]
    assert written["broad"].tolist() == ["B cell", "T cell", "T cell"]
    again = CliRunner().invoke(app, ["labels", "--atlas", str(named_atlas), "--out", str(out)])
    assert again.exit_code == 1 and f"{out} exists; pass --overwrite to replace it" in again.output


def test_a_label_map_overrides_a_match(tmp_path, fragment):
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.store import open_atlas

    label_map = pd.DataFrame({"dataset": ["*"], "label": ["CD8 T"], "harmonised_label": ["CD8 T"],
                              "ontology_id": ["CL:0000084"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ontology, "available_ontology", lambda warn=False: (fragment, ""))
        build_atlas(_named(make_counts(n_cells=120)), tmp_path / "atlas", label_key="cell_type", label_map=label_map,
                    settings=BuildSettings(model="random:16", method="genept", n_genes=40, layout="none"))
    cells = open_atlas(tmp_path / "atlas").cells().drop_duplicates("label").set_index("label")
    assert cells.loc["CD8 T", ["ontology_id", "label_ontology", "ontology_match", "label_broad"]].tolist() == [
        "CL:0000084", "T cell", "label map", "T cell"]
    assert cells.loc["CD4 T", "ontology_match"] == "curated"


def test_without_the_ontology_a_build_warns_once_and_the_levels_repeat_the_labels(tmp_path, monkeypatch):
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.store import open_atlas

    monkeypatch.setenv("SCREADER_DB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ontology, "_UNFETCHED", {})
    tries = []

    def offline(path=None):
        tries.append(path)
        raise FetchError("pip could not download cellxgene-ontology-guide==1.11.1 for cell_ontology: no network")

    monkeypatch.setattr(ontology, "load_ontology", offline)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScreaderWarning)
        build_atlas(_named(make_counts(n_cells=120)), tmp_path / "atlas", label_key="cell_type",
                    settings=BuildSettings(model="random:16", method="genept", n_genes=40, layout="none"))
    said = [str(w.message) for w in caught if issubclass(w.category, ScreaderWarning) and "Cell Ontology" in str(w.message)]
    assert said == ["labels were not matched to the Cell Ontology (pip could not download cellxgene-ontology-guide==1.11.1 "
                    "for cell_ontology: no network); the atlas's ontology and broad levels repeat its labels. Run "
                    "`screader-db fetch cell_ontology` and build again"]
    assert len(tries) == 1, "a failed fetch is not tried again in the same process"
    cells = open_atlas(tmp_path / "atlas").cells()
    assert (cells["label_broad"] == cells["label"]).all() and (cells["label_ontology"] == cells["label"]).all()
    assert (cells["ontology_match"] == "").all() and (cells["ontology_id"] == "").all()


def test_an_atlas_of_cells_format_3_reads_its_labels_as_every_level(tmp_path):
    import gzip

    from typer.testing import CliRunner

    from screader_db import atlas_format
    from screader_db.cli import app
    from screader_db.store import open_atlas

    root = shutil.copytree(Path(__file__).parent / "fixtures" / "atlas_v3", tmp_path / "atlas_v3", symlinks=True)
    packed = root / "current" / f"{atlas_format.CATALOGUE}.gz"
    with gzip.open(packed, "rb") as source, (root / "current" / atlas_format.CATALOGUE).open("wb") as target:
        shutil.copyfileobj(source, target)
    packed.unlink()
    cells = open_atlas(root).cells()
    assert list(cells.columns) == list(atlas_format.CELL_FRAME_COLUMNS[1:])
    assert (cells["label_ontology"] == cells["label_harmonised"]).all() and (cells["label_broad"] == cells["label"]).all()
    assert (cells["ontology_match"] == "").all()
    from screader_db.catalogue import SCHEMA, read_tables

    table = read_tables(root / "current" / atlas_format.CATALOGUE)["cells"]
    assert list(table.columns) == [c.split()[0] for c in SCHEMA["cells"].split(", ")]
    assert (table["label_broad"] == table["label"]).all() and (table["ontology_match"] == "").all()
    query = make_counts(n_cells=12, seed=0)
    assert annotate(query, root, level="broad").labels.equals(annotate(query, root).labels)
    shown = CliRunner().invoke(app, ["labels", "--atlas", str(root)], terminal_width=200)
    assert shown.exit_code == 0 and "were not matched to the Cell Ontology" in shown.output


# Real data: every label of the manifest's labelled data sets, its CL term and how it is matched (the README table).
EXPECTED = {
    "baron_human": {
        "Schwann cell": ("CL:0002573", "name", "glial cell"),
        "T cell": ("CL:0000084", "name", "T cell"),
        "endothelial cell": ("CL:0000115", "name", "endothelial cell"),
        "macrophage": ("CL:0000235", "name", "macrophage"),
        "mast cell": ("CL:0000097", "name", "mast cell"),
        "pancreatic A cell": ("CL:0000171", "name", "endocrine cell"),
        "pancreatic D cell": ("CL:0000173", "name", "endocrine cell"),
        "pancreatic PP cell": ("CL:0002275", "name", "endocrine cell"),
        "pancreatic acinar cell": ("CL:0002064", "name", "epithelial cell"),
        "pancreatic ductal cell": ("CL:0002079", "name", "epithelial cell"),
        "pancreatic epsilon cell": ("CL:0005019", "name", "endocrine cell"),
        "pancreatic stellate cell": ("CL:0002410", "name", "fibroblast"),
        "type B pancreatic cell": ("CL:0000169", "name", "endocrine cell"),
    },
    "baron_mouse": {
        "B cell": ("CL:0000236", "name", "B cell"),
        "Schwann cell": ("CL:0002573", "name", "glial cell"),
        "T cell": ("CL:0000084", "name", "T cell"),
        "endothelial cell": ("CL:0000115", "name", "endothelial cell"),
        "leukocyte": ("CL:0000738", "name", "leukocyte"),
        "macrophage": ("CL:0000235", "name", "macrophage"),
        "pancreatic A cell": ("CL:0000171", "name", "endocrine cell"),
        "pancreatic D cell": ("CL:0000173", "name", "endocrine cell"),
        "pancreatic PP cell": ("CL:0002275", "name", "endocrine cell"),
        "pancreatic ductal cell": ("CL:0002079", "name", "epithelial cell"),
        "pancreatic stellate cell": ("CL:0002410", "name", "fibroblast"),
        "type B pancreatic cell": ("CL:0000169", "name", "endocrine cell"),
    },
    "pbmc3k": {
        "B": ("CL:0000236", "normalised name", "B cell"),
        "CD14 Monocytes": ("CL:0001054", "normalised name", "monocyte"),
        "CD4 T": ("CL:0000624", "curated", "T cell"),
        "CD8 T": ("CL:0000625", "curated", "T cell"),
        "Dendritic": ("CL:0000451", "normalised name", "dendritic cell"),
        "FCGR3A Monocytes": ("CL:0002396", "curated", "monocyte"),
        "Megakaryocytes": ("CL:0000556", "normalised name", "megakaryocyte"),
        "NK": ("CL:0000623", "normalised synonym", "natural killer cell"),
    },
    "kang": {
        "B": ("CL:0000236", "normalised name", "B cell"),
        "CD14+ Monocytes": ("CL:0001054", "normalised name", "monocyte"),
        "CD16+ Monocytes": ("CL:0002396", "curated", "monocyte"),
        "CD4+ T cells": ("CL:0000624", "curated", "T cell"),
        "CD8+ T cells": ("CL:0000625", "curated", "T cell"),
        "DC": ("CL:0000451", "curated", "dendritic cell"),
        "NK cells": ("CL:0000623", "normalised synonym", "natural killer cell"),
        "T": ("CL:0000084", "normalised name", "T cell"),
    },
    "pbmc68k_reduced": {
        "CD14+ Monocyte": ("CL:0001054", "normalised name", "monocyte"),
        "CD19+ B": ("CL:0001201", "normalised synonym", "B cell"),
        "CD34+": ("CL:0008001", "curated", "hematopoietic precursor cell"),
        "CD4+/CD25 T Reg": ("CL:0000792", "curated", "T cell"),
        "CD4+/CD45RA+/CD25- Naive T": ("CL:0000895", "curated", "T cell"),
        "CD4+/CD45RO+ Memory": ("CL:0000897", "curated", "T cell"),
        "CD56+ NK": ("CL:0000623", "curated", "natural killer cell"),
        "CD8+ Cytotoxic T": ("CL:0000794", "curated", "T cell"),
        "CD8+/CD45RA+ Naive Cytotoxic": ("CL:0000900", "curated", "T cell"),
        "Dendritic": ("CL:0000451", "normalised name", "dendritic cell"),
    },
}


@pytest.mark.data("cell_ontology", "baron_human", "baron_mouse", "pbmc3k", "kang", "pbmc68k_reduced")
def test_every_label_of_the_manifests_data_sets_maps_to_a_cl_term(data_path):
    from screader_db.inputs import read_h5ad
    from screader_db.manifest import get_entry

    cl = ontology.load_ontology()
    assert cl.source["release"] == "2026-03-26" and cl.source["package"] == "cellxgene-ontology-guide==1.11.1"
    for _, name in ontology.BROAD_CLASSES:
        assert name in {t.name for t in cl.terms.values() if not t.deprecated}, name
    assert [cl.name(term) for term, _ in ontology.BROAD_CLASSES] == [name for _, name in ontology.BROAD_CLASSES]
    for label, (term, _) in ontology.CURATED.items():
        assert term in cl and not cl.terms[term].deprecated, label
    for dataset, expected in EXPECTED.items():
        adata = read_h5ad(data_path(dataset), backed=True)
        try:
            obs = adata.obs.copy()
        finally:
            adata.file.close()
        labels = sorted(obs[get_entry(dataset).extra["label_key"]].astype(str).unique())
        found = {}
        for label in labels:
            match = cl.match(label)
            found[label] = (match.id, match.how, cl.name(cl.broad(match.id)))
        assert found == expected, dataset
        if "cell_ontology_id" in obs:  # Baron records CL ids itself: the names match them
            own = obs.groupby(obs["cell_ontology_class"].astype(str), observed=True)["cell_ontology_id"].first()
            assert {label: term for label, (term, _, _) in found.items()} == own.astype(str).to_dict()


@pytest.mark.data("cell_ontology", "pbmc3k", "kang")
def test_kang_t_cells_uncertain_between_cd4_and_cd8_get_t_cell_from_a_pbmc3k_atlas(pbmc_split, data_path):
    from screader_db.inputs import read_h5ad
    from screader_db.store import open_atlas

    root, _, _ = pbmc_split
    kang = read_h5ad(data_path("kang"))
    control = (kang.obs["stim"].astype(str) == "CTRL").to_numpy()
    query = kang[control & kang.obs["cell_type"].astype(str).isin(["CD4+ T cells", "CD8+ T cells"]).to_numpy()].copy()
    result = annotate(query, root)  # the atlas's calibrated cut-off, novelty check on
    table = result.table
    parent = table["call_level"] == CALL_PARENT
    split = table["raw_label"].isin(["CD4 T", "CD8 T"]) & table["second_label"].isin(["CD4 T", "CD8 T"])
    print(f"\n{int(parent.sum())} of {len(table):,} Kang T cells answered by a parent, {int((parent & split).sum())} "
          f"of them split between CD4 T and CD8 T; {int((table['label'] == 'Unassigned').sum())} Unassigned")
    assert (parent & split).sum() >= 3
    assert set(table.loc[parent & split, "label"]) == {"T cell"}
    below = (table["score"] < result.info["min_score"]) | (table["margin"] < result.info["min_margin"])
    assert below[parent].all(), "a parent answers only cells the cut-offs set aside"
    broad = open_atlas(root).cells().drop_duplicates("label").set_index("label")["label_broad"]
    assert set(table.loc[parent, "label"]) <= set(broad) and not set(table.loc[parent, "label"]) & set(broad.index)
    assert (table.loc[table["unassigned_reason"] == "novel population", "call_level"] == "unassigned").all()
