"""Output files: checked before the work, written beside their targets, moved into place only all together."""

import pytest

from screader_db.errors import OutputExistsError, OutputPathError
from screader_db.outputs import Output, atomic_write, check_output, check_outputs, staged


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_paths_are_checked_with_one_message_each(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken.csv").write_text("keep")
    (tmp_path / "plain").write_text("a file")
    cases = [
        (Output(tmp_path / "missing" / "t.csv", "--table"), OutputPathError,
         rf"--table {tmp_path}/missing/t.csv: the folder {tmp_path}/missing does not exist; create it first"),
        (Output(tmp_path / "folder", "--out"), OutputPathError, rf"--out {tmp_path}/folder is a folder; --out takes a file name"),
        (Output(tmp_path / "plain", "--plots", folder=True), OutputPathError,
         rf"--plots {tmp_path}/plain is a file; --plots takes a folder"),
        (Output(tmp_path / "plain" / "x.png", "--report"), OutputPathError, rf"{tmp_path}/plain is a file, not a folder"),
        (Output(tmp_path / "t.xlsx", "--table", suffixes=(".csv", ".parquet")), OutputPathError,
         r"unknown format '.xlsx'; use .csv, .parquet"),
        (Output(tmp_path / "taken.csv", "--table"), OutputExistsError, rf"{tmp_path}/taken.csv exists; pass --overwrite"),
    ]
    for output, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            check_output(output, overwrite=False)
    check_output(Output(tmp_path / "taken.csv", "--table"), overwrite=True)
    check_output(Output(tmp_path / "new-plots", "--plots", folder=True), overwrite=False)
    with pytest.raises(OutputPathError, match=r"--out and --table both name"):
        check_outputs([Output(tmp_path / "a.csv", "--out"), Output(tmp_path / "a.csv", "--table")], overwrite=False)
    assert _files(tmp_path) == ["folder", "plain", "taken.csv"]


def test_outputs_appear_only_when_all_were_written(tmp_path):
    table, out, plots = tmp_path / "t.csv", tmp_path / "a.h5ad", tmp_path / "plots"
    outputs = [Output(table, "--table"), Output(plots, "--plots", folder=True), Output(out, "--out")]
    with pytest.raises(RuntimeError, match="disk full"), staged(outputs) as temporary:
        temporary[table].write_text("cells")
        (temporary[plots] / "umap.png").write_bytes(b"png")
        raise RuntimeError("disk full")  # the --out write fails
    assert _files(tmp_path) == []
    with staged(outputs) as temporary:
        temporary[table].write_text("cells")
        (temporary[plots] / "umap.png").write_bytes(b"png")
        temporary[out].write_bytes(b"h5")
        assert not table.exists()
    assert _files(tmp_path) == ["a.h5ad", "plots", "plots/umap.png", "t.csv"]
    assert table.read_text() == "cells"


def test_a_move_that_cannot_happen_stops_every_move(tmp_path):
    table, plots = tmp_path / "t.csv", tmp_path / "plots"
    (plots / "umap.png").mkdir(parents=True)  # a folder where a plot is to go
    outputs = [Output(table, "--table"), Output(plots, "--plots", folder=True)]
    with pytest.raises(OutputPathError, match=r"--plots: .*plots/umap.png is a folder"), staged(outputs) as temporary:
        temporary[table].write_text("cells")
        (temporary[plots] / "umap.png").write_bytes(b"png")
    assert _files(tmp_path) == ["plots", "plots/umap.png"]


def test_one_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        assert tmp == tmp_path / ".table.csv.tmp"
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert _files(tmp_path) == ["table.csv"] and target.read_text() == "old"
    with atomic_write(target, tag=".7") as tmp:
        assert tmp.name == ".table.csv.7.tmp"
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert _files(tmp_path) == ["table.csv"] and target.read_text() == "new"


def test_a_folder_finished_first_by_another_writer_is_kept(tmp_path):
    target = tmp_path / "model"
    with atomic_write(target, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("first")
    with atomic_write(target, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("second")
    assert _files(tmp_path) == ["model", "model/config.json"]
    assert (target / "config.json").read_text() == "first"
