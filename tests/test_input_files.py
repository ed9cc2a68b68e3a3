"""Input files in every format labs hold: detection, reading, the errors, and the same labels as .h5ad."""

import gzip
import re
import shutil
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import make_counts
from typer.testing import CliRunner

from screader_db import annotate
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.cli import app
from screader_db.errors import InputDataError, ScreaderWarning
from screader_db.input_files import detect_format, input_name, open_input, table_orientation

SMALL = BuildSettings(model="random:32", method="genept", n_genes=50, layout="none")


# Writers: the layouts other tools write, made with h5py, scipy and plain text.

def gz(path):
    with open(path, "rb") as plain, gzip.open(f"{path}.gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    path.unlink()
    return path.with_name(path.name + ".gz")


def write_10x_h5(adata, path, *, feature_types=None):
    """Cell Ranger 3's layout: matrix/ holds genes × cells CSC and features/."""
    X = sp.csr_matrix(adata.X)
    ids = adata.var["gene_ids"] if "gene_ids" in adata.var else [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with h5py.File(path, "w") as file:
        matrix = file.create_group("matrix")
        matrix["data"] = X.data.astype(np.int32)
        matrix["indices"] = X.indices.astype(np.int64)
        matrix["indptr"] = X.indptr.astype(np.int64)
        matrix["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        matrix["barcodes"] = np.array(adata.obs_names, dtype="S")
        features = matrix.create_group("features")
        features["id"] = np.array(ids, dtype="S")
        features["name"] = np.array(adata.var_names, dtype="S")
        features["feature_type"] = np.array(feature_types or ["Gene Expression"] * adata.n_vars, dtype="S")
        features["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
    return path


def write_mtx(adata, folder, *, prefix="", features=True, barcodes=True):
    """A Matrix Market folder as Cell Ranger writes it: genes × cells, gzipped, with its two lists."""
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.mmwrite(folder / f"{prefix}matrix.mtx", sp.csr_matrix(adata.X).T.astype(np.int64))
    gz(folder / f"{prefix}matrix.mtx")
    ids = adata.var["gene_ids"] if "gene_ids" in adata.var else [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    if features:
        pd.DataFrame({"id": ids, "name": adata.var_names, "type": "Gene Expression"}).to_csv(
            folder / f"{prefix}features.tsv", sep="\t", header=False, index=False)
        gz(folder / f"{prefix}features.tsv")
    if barcodes:
        pd.Series(adata.obs_names).to_csv(folder / f"{prefix}barcodes.tsv", sep="\t", header=False, index=False)
        gz(folder / f"{prefix}barcodes.tsv")
    return folder


def write_loom(adata, path, *, layers=None):
    """Loom's layout: /matrix genes × cells, names in row_attrs/Gene and col_attrs/CellID."""
    with h5py.File(path, "w") as file:
        file.create_dataset("matrix", data=sp.csr_matrix(adata.X).T.toarray(), chunks=True, compression="gzip")
        rows, cols = file.create_group("row_attrs"), file.create_group("col_attrs")
        rows["Gene"] = np.array(adata.var_names, dtype="S")
        cols["CellID"] = np.array(adata.obs_names, dtype="S")
        for column in adata.obs.columns:
            cols[column] = np.array(adata.obs[column].astype(str), dtype="S")
        group = file.create_group("layers")
        for name, values in (layers or {}).items():
            group[name] = sp.csr_matrix(values).T.toarray()
        file.attrs["LOOM_SPEC_VERSION"] = "3.0.0"
    return path


def write_table(adata, path, *, genes_as_rows):
    """A counts table with names in the first column and the header; .tsv or .csv, gzipped when the name says."""
    sep = "\t" if ".tsv" in path.name else ","
    X = sp.csr_matrix(adata.X).toarray().astype(np.int64)
    values, rows, columns = (X.T, adata.var_names, adata.obs_names) if genes_as_rows else (X, adata.obs_names, adata.var_names)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as handle:
        handle.write(sep.join(["", *map(str, columns)]) + "\n")
        for name, row in zip(rows, values, strict=True):
            handle.write(f"{name}{sep}{sep.join(map(str, row.tolist()))}\n")
    return path


def write_every_format(adata, folder):
    """``adata`` (counts) in every format, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(folder / "cells.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's note that zarr v3 will be its default
        adata.write_zarr(folder / "cells.zarr")
    return {
        "h5ad": folder / "cells.h5ad",
        "zarr": folder / "cells.zarr",
        "10x-h5": write_10x_h5(adata, folder / "cells.h5"),
        "mtx": write_mtx(adata, folder / "filtered_feature_bc_matrix"),
        "loom": write_loom(adata, folder / "cells.loom"),
        "csv": write_table(adata, folder / "cells.csv", genes_as_rows=False),
        "tsv": write_table(adata, folder / "genes.tsv.gz", genes_as_rows=True),
    }


def _dense(adata):
    X = adata.X
    X = X.to_memory() if hasattr(X, "to_memory") else X
    return np.asarray(sp.csr_matrix(X).toarray())


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    adata = make_counts(n_cells=60, seed=4)
    return adata, write_every_format(adata, tmp_path_factory.mktemp("formats"))


# Detection and reading, on small generated matrices.

@pytest.mark.parametrize("kind", ["h5ad", "zarr", "10x-h5", "mtx", "loom", "csv", "tsv"])
def test_every_format_opens_to_the_same_cells_genes_and_values(small_files, kind):
    adata, paths = small_files
    assert detect_format(paths[kind]).format == kind
    with open_input(paths[kind]) as opened:
        assert opened.file.format == kind
        assert list(opened.adata.obs_names) == list(adata.obs_names)
        assert list(opened.adata.var_names) == list(adata.var_names)
        np.testing.assert_array_equal(_dense(opened.adata), adata.X.toarray())
        assert opened.file.lazy == (kind in ("h5ad", "zarr", "10x-h5"))
    with open_input(paths[kind], backed=False) as whole:
        assert not whole.file.lazy
        np.testing.assert_array_equal(np.asarray(sp.csr_matrix(whole.adata.X).toarray()), adata.X.toarray())


def test_the_evidence_says_how_each_file_was_read(small_files):
    _, paths = small_files
    said = {kind: open_input(path).file for kind, path in paths.items()}
    assert said["h5ad"].evidence == "h5ad: the suffix .h5ad; read backed, in row chunks"
    assert said["10x-h5"].evidence == "10x HDF5 (Cell Ranger 3 layout, matrix/): 60 cells × 50 genes, read lazily"
    assert said["mtx"].evidence.startswith("Matrix Market: matrix.mtx.gz is 50 × 60 = genes × cells (features.tsv.gz "
                                           "lists 50 genes, barcodes.tsv.gz 60 barcodes), read whole")
    assert said["loom"].evidence.startswith("loom: /matrix is 50 genes × 60 cells, gene names from row_attrs/Gene, "
                                            "cell ids from col_attrs/CellID")
    assert said["csv"].evidence.startswith("CSV table, cells × genes: 0% of the 60 row names and 100% of the 50 column names")
    assert said["tsv"].evidence.startswith("TSV table, genes × cells: 100% of the 50 row names and 0% of the 60 column names")
    assert (said["csv"].orientation, said["tsv"].orientation) == ("cells-by-genes", "genes-by-cells")
    assert said["csv"].info() == {"input_format": "csv", "input_format_evidence": said["csv"].evidence}


def test_loom_and_zarr_keep_cell_metadata_and_layers(tmp_path):
    adata = make_counts(n_cells=40, seed=1)
    doubled = adata.X.toarray() * 2
    path = write_loom(adata, tmp_path / "cells.loom", layers={"doubled": doubled})
    loom = open_input(path).adata
    assert list(loom.obs["cell_type"]) == list(adata.obs["cell_type"].astype(str))
    np.testing.assert_array_equal(loom.layers["doubled"].toarray(), doubled)
    adata.layers["doubled"] = sp.csr_matrix(doubled)
    adata.raw = adata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(tmp_path / "cells.zarr")
    with open_input(tmp_path / "cells.zarr") as opened:
        lazy = opened.adata
        assert list(lazy.obs["cell_type"]) == list(adata.obs["cell_type"])
        np.testing.assert_array_equal(lazy.layers["doubled"].to_memory().toarray(), doubled)
        np.testing.assert_array_equal(lazy.raw.X.to_memory().toarray(), adata.X.toarray())


def test_mtx_given_as_a_file_with_prefixed_siblings(tmp_path):
    adata = make_counts(n_cells=30, seed=2)
    folder = write_mtx(adata, tmp_path / "GSE1", prefix="GSM7_")
    opened = open_input(folder / "GSM7_matrix.mtx.gz")
    np.testing.assert_array_equal(_dense(opened.adata), adata.X.toarray())
    assert input_name(folder / "GSM7_matrix.mtx.gz") == "GSM7"
    assert open_input(folder).file.format == "mtx"


def test_a_cells_by_genes_mtx_is_told_by_its_lists(tmp_path):
    adata = make_counts(n_cells=30, seed=2)
    folder = write_mtx(adata, tmp_path / "m")
    (folder / "matrix.mtx.gz").unlink()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csr_matrix(adata.X))
    opened = open_input(folder)
    assert opened.file.orientation == "cells-by-genes"
    np.testing.assert_array_equal(_dense(opened.adata), adata.X.toarray())


def test_10x_h5_keeps_the_gene_expression_features_and_makes_repeated_names_unique(tmp_path):
    adata = make_counts(n_cells=20, seed=3)
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    types = ["Gene Expression"] * (adata.n_vars - 2) + ["Antibody Capture"] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = open_input(write_10x_h5(adata, tmp_path / "multi.h5", feature_types=types))
    assert not opened.file.lazy and opened.adata.n_vars == adata.n_vars - 2
    np.testing.assert_array_equal(_dense(opened.adata), adata.X.toarray()[:, :-2])
    assert opened.adata.var_names[1] == f"{names[0]}-1"
    assert "kept the 48 Gene Expression features of 50 (left out: 2 Antibody Capture)" in opened.file.evidence
    assert f"1 repeated gene names made unique ({names[0]}-1...), --gene-key gene_ids reads the Ensembl ids" in \
        opened.file.evidence


def test_an_h5ad_saved_as_h5_is_read_as_h5ad(tmp_path):
    make_counts(n_cells=10).write_h5ad(tmp_path / "cells.h5")
    assert detect_format(tmp_path / "cells.h5").format == "h5ad"
    assert open_input(tmp_path / "cells.h5").adata.n_obs == 10


def test_input_names():
    assert input_name("a/pbmc.h5ad") == "pbmc"
    assert input_name("a/pbmc.csv.gz") == "pbmc"
    assert input_name("a/pbmc.zarr") == "pbmc"
    assert input_name("a/filtered_feature_bc_matrix") == "filtered_feature_bc_matrix"
    assert input_name("runs/donor7/matrix.mtx.gz") == "donor7"


# Tables: which axis holds genes, stated.

def test_orientation_is_told_by_the_names_else_by_the_longer_axis():
    genes, cells = ["CD3E", "LYZ", "MS4A1", "NKG7"], ["AAAC-1", "AAAG-1"]
    assert table_orientation(genes, cells)[:2] == (
        "genes-by-cells", "genes × cells: 100% of the 4 row names and 0% of the 2 column names are gene symbols or "
                          "Ensembl ids")
    assert table_orientation(cells, genes)[0] == "cells-by-genes"
    assert table_orientation(["ENSMUSG00000000001", "ENSG00000139618"], ["c1", "c2", "c3"])[0] == "genes-by-cells"
    orientation, text, decided = table_orientation(["row_a", "row_b", "row_c"], ["col_a", "col_b"])
    assert (orientation, decided) == ("genes-by-cells", False)
    assert text.endswith("so the longer axis, the rows, was taken as genes")


def test_a_table_whose_names_do_not_tell_is_read_with_a_warning(tmp_path):
    adata = make_counts(n_cells=12, seed=5)
    adata.var_names = [f"feature{i}" for i in range(adata.n_vars)]
    path = write_table(adata, tmp_path / "t.csv", genes_as_rows=True)
    with pytest.warns(ScreaderWarning, match=r"so the longer axis, the rows, was taken as genes; if that is wrong, "
                                              r"transpose the table"):
        opened = open_input(path)
    assert opened.adata.shape == (12, 50)
    given = open_input(path, orientation="cells-by-genes")
    assert given.adata.shape == (50, 12) and "cells × genes: given" in given.file.evidence


def test_a_header_without_a_name_above_the_row_names(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("CD3E\tLYZ\tMS4A1\ncell1\t1\t0\t2\ncell2\t0\t3\t0\n")
    opened = open_input(path)
    assert list(opened.adata.var_names) == ["CD3E", "LYZ", "MS4A1"]
    np.testing.assert_array_equal(opened.adata.X.toarray(), [[1, 0, 2], [0, 3, 0]])


def test_missing_values_reach_the_usual_value_check(tmp_path):
    from screader_db.inputs import load_expression

    path = tmp_path / "nan.csv"
    path.write_text(",CD3E,LYZ,MS4A1\ncell1,1,,2\ncell2,0,3,0\n")
    with pytest.raises(InputDataError, match="the matrix has 1 NaN or infinite values"):
        load_expression(open_input(path).adata)


# Every way a file can be wrong, with its message.

def _refused(path, **options):
    with pytest.raises(InputDataError) as caught:
        open_input(path, **options)
    return str(caught.value)


def test_a_10x_folder_without_features_is_refused(tmp_path):
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "filtered_feature_bc_matrix", features=False)
    assert _refused(folder) == (
        f"the 10x folder {folder} has matrix.mtx.gz and barcodes.tsv.gz but no features.tsv.gz (or genes.tsv.gz); "
        "a Matrix Market matrix needs its gene and barcode lists beside it: copy them from the same Cell Ranger "
        "output (outs/filtered_feature_bc_matrix/), or pass the run's filtered_feature_bc_matrix.h5")


def test_a_10x_folder_without_barcodes_or_either_list(tmp_path):
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "a", barcodes=False)
    assert _refused(folder).startswith(f"the 10x folder {folder} has matrix.mtx.gz and features.tsv.gz but no "
                                       "barcodes.tsv.gz; ")
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "b", prefix="GSM1_", features=False, barcodes=False)
    assert _refused(folder).startswith(f"the 10x folder {folder} has GSM1_matrix.mtx.gz but no GSM1_features.tsv.gz "
                                       "(or GSM1_genes.tsv.gz) and no GSM1_barcodes.tsv.gz; ")


def test_mtx_lists_that_do_not_fit_the_matrix(tmp_path):
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "m")
    pd.Series([f"b{i}" for i in range(7)]).to_csv(folder / "barcodes.tsv.gz", header=False, index=False)
    assert _refused(folder) == ("matrix.mtx.gz is 50 × 10, but features.tsv.gz lists 50 genes and barcodes.tsv.gz "
                                "7 barcodes; the three files must come from the same run")


def test_damaged_and_empty_mtx_parts(tmp_path):
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "m")
    with gzip.open(folder / "matrix.mtx.gz", "wt") as handle:
        handle.write("%%MatrixMarket matrix coordinate integer general\n50 10 3\n1 1\n")
    assert re.match(rf"{folder}/matrix.mtx.gz could not be read as a Matrix Market matrix \(.*\); the file is damaged "
                    r"or incomplete: copy it again", _refused(folder))
    folder = write_mtx(make_counts(n_cells=10), tmp_path / "e")
    (folder / "barcodes.tsv.gz").unlink()
    (folder / "barcodes.tsv").write_text("")
    assert _refused(folder) == f"{folder}/barcodes.tsv is empty; copy it again from the Cell Ranger output it came from"


def test_folders_and_suffixes_that_are_no_format(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _refused(empty).startswith(f"{empty} is a folder but neither a zarr AnnData store (no .zgroup or zarr.json "
                                      "in it) nor a 10x Matrix Market folder (no matrix.mtx.gz in it); pass an .h5ad file")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a_matrix.mtx", "b_matrix.mtx"):
        (two / name).write_text("")
    assert _refused(two) == f"the folder {two} holds 2 Matrix Market files (a_matrix.mtx, b_matrix.mtx); pass the one to read"
    (tmp_path / "x.rds").write_text("x")
    assert _refused(tmp_path / "x.rds").startswith(f"{tmp_path}/x.rds has the suffix .rds, which screader-db does not "
                                                   "read; pass an .h5ad file, a zarr AnnData store, a 10x .h5 file")
    (tmp_path / "x.h5ad.gz").write_bytes(b"x")
    assert _refused(tmp_path / "x.h5ad.gz").startswith(f"{tmp_path}/x.h5ad.gz is compressed (.gz) but is not a .csv, "
                                                       ".tsv or .mtx file; decompress it first (gunzip x.h5ad.gz)")
    (tmp_path / "x.zarr").write_bytes(b"x")
    assert _refused(tmp_path / "x.zarr").startswith(f"{tmp_path}/x.zarr is a file, but a zarr AnnData store is a folder")
    assert _refused(tmp_path / "absent.csv") == f"{tmp_path}/absent.csv does not exist; check the path"
    assert _refused(tmp_path / "x.rds", orientation="sideways") == (
        "orientation must be one of auto, cells-by-genes, genes-by-cells, got 'sideways'")


def test_h5_files_that_are_not_10x(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    assert _refused(tmp_path / "text.h5").startswith(f"{tmp_path}/text.h5 is not a 10x .h5 file: it is empty, not HDF5, "
                                                     "or holds neither matrix/")
    with h5py.File(tmp_path / "broken.h5", "w") as file:
        file.create_group("matrix")["data"] = np.arange(3)
    assert _refused(tmp_path / "broken.h5").startswith(
        f"{tmp_path}/broken.h5 is a 10x .h5 file without matrix/indices, matrix/indptr, matrix/shape, matrix/barcodes, "
        "matrix/features/id, matrix/features/name; it is damaged or not written by Cell Ranger")


def test_a_10x_h5_with_lists_that_do_not_fit(tmp_path):
    adata = make_counts(n_cells=10)
    path = write_10x_h5(adata, tmp_path / "c.h5")
    with h5py.File(path, "r+") as file:
        del file["matrix/barcodes"]
        file["matrix/barcodes"] = np.array(["a", "b"], dtype="S")
    assert _refused(path).startswith(f"{path} is a 10x .h5 file whose matrix is 50 genes × 10 cells but which lists "
                                     "50 gene names, 50 gene ids and 2 barcodes; it is damaged")


def test_a_malformed_10x_matrix_is_refused_before_it_is_read(tmp_path):
    from screader_db.inputs import load_expression

    path = write_10x_h5(make_counts(n_cells=10), tmp_path / "c.h5")
    with h5py.File(path, "r+") as file:
        indices = file["matrix/indices"][:]
        indices[0] = 999
        file["matrix/indices"][:] = indices
    with open_input(path) as opened, pytest.raises(InputDataError, match=r"holds gene index 999 \(in cell 0\), but "
                                                                          r"there are 50 genes"):
        load_expression(opened.adata)


def test_loom_files_without_a_matrix_or_gene_names(tmp_path):
    with h5py.File(tmp_path / "a.loom", "w") as file:
        file["row_attrs/Gene"] = np.array([b"CD3E"])
    assert _refused(tmp_path / "a.loom") == (f"{tmp_path}/a.loom is not a loom file (no two-dimensional /matrix); write "
                                             "it with loompy or convert it to .h5ad")
    with h5py.File(tmp_path / "b.loom", "w") as file:
        file["matrix"] = np.ones((3, 2))
        file["row_attrs/Other"] = np.array([1, 2])
    assert _refused(tmp_path / "b.loom").startswith(f"{tmp_path}/b.loom has no gene names: none of row_attrs/Gene, "
                                                    "row_attrs/var_names")
    with h5py.File(tmp_path / "c.loom", "w") as file:
        file["matrix"] = np.array([[b"a", b"b"]])
    assert _refused(tmp_path / "c.loom").startswith(f"{tmp_path}/c.loom: /matrix holds values of type |S1, not numbers")
    (tmp_path / "d.loom").write_bytes(b"")
    assert _refused(tmp_path / "d.loom").startswith(f"{tmp_path}/d.loom could not be read as HDF5")


def test_damaged_zarr_store(tmp_path):
    store = tmp_path / "cells.zarr"
    store.mkdir()
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    assert re.match(rf"{store} could not be read as a zarr AnnData store \(.*\); it is damaged or not AnnData: write it "
                    r"again with AnnData's write_zarr", _refused(store))


@pytest.mark.parametrize(("text", "message"), [
    ("", "{path} is empty; it was probably not written completely. Write it again"),
    (",CD3E,LYZ\n", "{path} has a header but no rows of values; write the table again with its values"),
    ("cell\ncell1\n", "{path} has no columns of values; the first column holds row names, the others the values"),
    (",CD3E,LYZ,MS4A1,NKG7\ncell1,1,2\n", "{path}: its header has 5 names but its first row 3 fields; the first column "
                                          "must hold the row names and every other column one value per row"),
    (",CD3E,LYZ\ncell1,1,2\ncell2,3,lots\n", "{path}: the column 'LYZ' holds 'lots', not a number; every field but the "
                                             "row names (first column) and the header must be a number"),
])
def test_bad_tables(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert _refused(path) == message.format(path=path)


def test_a_comma_separated_txt_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(",CD3E,LYZ\ncell1,1,2\n")
    assert _refused(path) == (f"{path} has no columns of values; the first column holds row names, the others the "
                              "values; it looks comma-separated: name it .csv")


def test_a_ragged_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(",CD3E,LYZ\ncell1,1,2\ncell2,3,4,5\n")
    assert re.match(rf"{path} could not be read as a table \(ArrowInvalid: .*Expected 3 columns, got 4.*\); every row "
                    r"needs its name and 2 values, separated by commas", _refused(path))


# Annotating and building from every format.

@pytest.fixture(scope="module")
def small_atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas") / "atlas"
    build_atlas(make_counts(n_cells=300), root, label_key="cell_type", dataset_name="synthetic", settings=SMALL)
    return root


def test_every_format_annotates_to_the_same_labels(small_files, small_atlas):
    _, paths = small_files
    expected = annotate(paths["h5ad"], small_atlas)
    assert expected.info["input_format"] == "h5ad"
    for kind, path in paths.items():
        result = annotate(path, small_atlas)
        assert result.info["input_format"] == kind
        assert result.info["input_format_evidence"] == open_input(path).file.evidence
        pd.testing.assert_series_equal(result.table["label"], expected.table["label"], check_names=False)
        np.testing.assert_allclose(result.table["score"], expected.table["score"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["zarr", "loom"])
def test_a_reference_in_another_format_builds_the_same_atlas(tmp_path, small_files, kind):
    paths = write_every_format(make_counts(n_cells=120, seed=7), tmp_path / "ref")
    query = small_files[1]["h5ad"]
    results = [annotate(query, build_atlas(paths[name], tmp_path / name, label_key="cell_type", settings=SMALL))
               for name in ("h5ad", kind)]
    pd.testing.assert_series_equal(results[0].table["label"], results[1].table["label"])
    np.testing.assert_allclose(results[0].table["score"], results[1].table["score"], rtol=1e-6)


def test_a_reference_in_a_format_without_labels_is_refused_with_what_to_do(tmp_path, small_files):
    _, paths = small_files
    with pytest.raises(InputDataError) as caught:
        build_atlas(paths["csv"], tmp_path / "atlas", label_key="cell_type", settings=SMALL)
    assert str(caught.value) == (
        "--label-key 'cell_type' is not an obs column of the reference; columns present: none; a csv file holds no "
        "cell labels: give the reference as .h5ad, a zarr folder or .loom with the labels in obs (loom: col_attrs), "
        "or add them in Python (open_input(path).adata, set obs, then build_atlas on that AnnData)")


def test_the_query_command_reads_a_table_and_says_how(tmp_path, small_files, small_atlas):
    _, paths = small_files
    out = tmp_path / "annotated.h5ad"
    result = CliRunner().invoke(app, ["query", str(paths["tsv"]), "--atlas", str(small_atlas), "--out", str(out),
                                      "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "Input file: TSV table, genes × cells: 100% of the 50 row names and 0% of the 60 column names" in text
    annotated = ad.read_h5ad(out)
    assert annotated.n_obs == 60 and "screader_label" in annotated.obs
    assert annotated.uns["screader"]["input_format"] == "tsv"


def test_the_build_command_reads_a_loom_reference(tmp_path):
    path = write_loom(make_counts(n_cells=120, seed=7), tmp_path / "ref.loom")
    result = CliRunner().invoke(app, ["build", "--reference", str(path), "--label-key", "cell_type", "--atlas",
                                      str(tmp_path / "atlas"), "--model", "random:32", "--method", "genept",
                                      "--n-genes", "50", "--layout", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    from screader_db.store import open_atlas

    assert [d["name"] for d in open_atlas(tmp_path / "atlas").datasets] == ["ref"]


# pbmc3k in every format, against an atlas of another part of pbmc3k.

@pytest.fixture(scope="module")
def pbmc_formats(data_path, tmp_path_factory):
    from screader_db.inputs import read_h5ad

    adata = read_h5ad(data_path("pbmc3k"))
    rng = np.random.default_rng(0)
    query = np.sort(rng.choice(adata.n_obs, 300, replace=False))
    rest = np.setdiff1d(np.arange(adata.n_obs), query)
    folder = tmp_path_factory.mktemp("pbmc_formats")
    build_atlas(adata[np.sort(rng.choice(rest, 1000, replace=False))].copy(), folder / "atlas", label_key="celltype",
                dataset_name="pbmc3k", settings=BuildSettings(layout="none", keep_expression=False))
    return folder / "atlas", write_every_format(adata[query].copy(), folder / "query")


@pytest.mark.data("pbmc3k")
def test_pbmc3k_in_every_format_gets_the_labels_of_its_h5ad(pbmc_formats):
    atlas, paths = pbmc_formats
    expected = annotate(paths["h5ad"], atlas)
    assert expected.table["label"].nunique() >= 5
    evidence = {}
    for kind, path in paths.items():
        result = annotate(path, atlas)
        assert result.info["input_format"] == kind
        evidence[kind] = result.info["input_format_evidence"]
        pd.testing.assert_series_equal(result.table["label"], expected.table["label"], check_names=False)
        np.testing.assert_allclose(result.table["score"], expected.table["score"], rtol=1e-6)
    assert re.match(r"CSV table, cells × genes: 0% of the 300 row names and \d+% of the 32,738 column names", evidence["csv"])
    assert re.match(r"TSV table, genes × cells: \d+% of the 32,738 row names and 0% of the 300 column names", evidence["tsv"])
