"""Label maps: reading and checking the CSV (exact error messages), and harmonising one data set's labels."""

import numpy as np
import pandas as pd
import pytest

from screader_db.errors import InputDataError
from screader_db.labelmap import harmonise, read_label_map


def _refused(path) -> str:
    with pytest.raises(InputDataError) as caught:
        read_label_map(path)
    return str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    assert _refused(tmp_path / "map.csv") == f"label map {tmp_path / 'map.csv'} does not exist"


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "No columns to parse from file"),
    (b"\xff\xfe\x00d", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    (b"dataset,label,harmonised_label\na,b,c\nd,e,f,g\n", "Error tokenizing data. C error: Expected 3 fields in line 3, saw 4\n"),
], ids=["empty", "not-utf8", "ragged"])
def test_a_file_that_is_not_a_csv_is_refused_with_the_readers_reason(tmp_path, content, reason):
    path = tmp_path / "map.csv"
    path.write_bytes(content)
    assert _refused(path) == f"label map {path} is not a readable CSV: {reason}"


def test_missing_columns_are_listed_with_what_was_found(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("dataset,label,name\npbmc,B,B cell\n")
    assert _refused(path) == (f"label map {path} lacks the column(s) harmonised_label; expected dataset, label, "
                              "harmonised_label and optionally ontology_id; found dataset, label, name")
    path.write_text("cell_type\nB\n")
    assert _refused(path) == (f"label map {path} lacks the column(s) dataset, label, harmonised_label; expected dataset, "
                              "label, harmonised_label and optionally ontology_id; found cell_type")


def test_a_label_mapped_twice_for_one_data_set_is_refused(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("dataset,label,harmonised_label\npbmc,B,B cell\n*,B,B lymphocyte\npbmc,NK,NK cell\npbmc,B,B\n")
    assert _refused(path) == f"label map {path} maps (pbmc, B) more than once"


def test_a_map_is_read_as_text_with_an_empty_ontology_id_when_absent(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("harmonised_label,label,dataset,note\nnot available,NA,pbmc,x\n01,1,pbmc,y\n")
    frame = read_label_map(path)
    assert list(frame.columns) == ["dataset", "label", "harmonised_label", "ontology_id"]
    assert frame.values.tolist() == [["pbmc", "NA", "not available", ""], ["pbmc", "1", "01", ""]]


LABEL_MAP = pd.DataFrame({"dataset": ["pbmc", "*", "*", "kidney"],
                          "label": ["B", "B", "NK", "NK"],
                          "harmonised_label": ["B cell", "B lymphocyte", "natural killer cell", "kidney NK"],
                          "ontology_id": ["CL:0000236", "CL:0000945", "CL:0000623", ""]})


def test_harmonise_prefers_the_data_sets_own_row_and_keeps_unmapped_labels():
    labels = np.array(["B", "NK", "T", "B"])
    harmonised, ontology = harmonise(labels, "pbmc", LABEL_MAP)
    assert harmonised.tolist() == ["B cell", "natural killer cell", "T", "B cell"]
    assert ontology.tolist() == ["CL:0000236", "CL:0000623", "", "CL:0000236"]
    harmonised, ontology = harmonise(labels, "lung", LABEL_MAP)
    assert harmonised.tolist() == ["B lymphocyte", "natural killer cell", "T", "B lymphocyte"]
    assert ontology.tolist() == ["CL:0000945", "CL:0000623", "", "CL:0000945"]
    assert harmonise(labels, "kidney", LABEL_MAP)[0].tolist() == ["B lymphocyte", "kidney NK", "T", "B lymphocyte"]


@pytest.mark.parametrize("label_map", [None, LABEL_MAP.iloc[:0]], ids=["none", "empty"])
def test_without_a_map_labels_stay_and_have_no_ontology_id(label_map):
    harmonised, ontology = harmonise(np.array(["B", "NK"]), "pbmc", label_map)
    assert harmonised.dtype == object and harmonised.tolist() == ["B", "NK"]
    assert ontology.tolist() == ["", ""]
