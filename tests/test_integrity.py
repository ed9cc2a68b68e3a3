"""Every file of an atlas version is checked against its recorded sha256; damage is one `Error:` line."""

import json
import os
import re
import shutil

import pytest
from conftest import make_counts
from typer.testing import CliRunner

from screader_db import integrity, store
from screader_db.builders.atlas import BuildSettings, build_atlas
from screader_db.cli import app
from screader_db.errors import AtlasDamagedError

runner = CliRunner()
# every kind of file a version is written with (layout and label profiles included)
FILES = ["cells/synthetic/part-00000.parquet", "embedder.safetensors", "index.faiss", "index.faiss.json", "genes.parquet",
         "gene_embeddings.parquet", "label_profiles.parquet", "layout.parquet", "expression/synthetic/part-00000.parquet"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity") / "atlas"
    build_atlas(make_counts(n_cells=200), root, label_key="cell_type", dataset_name="synthetic",
                settings=BuildSettings(model="random:16", method="genept", n_genes=50))
    return root


@pytest.fixture(scope="module")
def query(tmp_path_factory):
    path = tmp_path_factory.mktemp("query") / "q.h5ad"
    make_counts(n_cells=40, seed=5).write_h5ad(path)
    return path


def _copy(built, tmp_path):
    """A copy of the atlas (new inodes, so nothing verified before counts for it)."""
    return shutil.copytree(built, tmp_path / "atlas", symlinks=True, ignore=shutil.ignore_patterns(".tmp"))


def _flip(path, count=16):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _query(root, query, tmp_path, *extra):
    out = tmp_path / "out.h5ad"
    result = runner.invoke(app, ["query", str(query), "--atlas", str(root), "--out", str(out), "--quiet", *extra])
    return result, out


@pytest.mark.parametrize("name", FILES)
def test_flipped_bytes_in_any_file_are_refused_with_the_file_named(built, query, tmp_path, name):
    root = _copy(built, tmp_path)
    _flip(root / "current" / name)
    result, out = _query(root, query, tmp_path)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert f"Error: the atlas file 000001/{name} does not match the sha256 recorded when it was written" in text
    assert "--no-verify" in text and "Traceback" not in text
    assert not out.exists()
    info = runner.invoke(app, ["info", "--atlas", str(root)])
    assert info.exit_code == 1 and f"000001/{name} does not match" in " ".join(info.output.split())


def test_missing_and_unlisted_files_are_refused(built, tmp_path):
    root = _copy(built, tmp_path)
    version = root / "current"
    shutil.copy(version / "cells/synthetic/part-00000.parquet", version / "cells/synthetic/part-00001.parquet")
    with pytest.raises(AtlasDamagedError, match=r"000001/cells/synthetic/part-00001.parquet was not written with this "
                                                r"version \(it is not in its VERSION.json\)") as found:
        store.open_atlas(root)
    assert found.value.file == "000001/cells/synthetic/part-00001.parquet"
    (version / "cells/synthetic/part-00001.parquet").unlink()
    (version / "layout.parquet").unlink()
    with pytest.raises(AtlasDamagedError, match=r"the atlas file 000001/layout.parquet is missing"):
        store.open_atlas(root)


def test_a_verified_file_is_hashed_once_until_it_changes(built, tmp_path, monkeypatch):
    root = _copy(built, tmp_path)
    hashed = []
    real = integrity.sha256_file

    def counting(path):
        hashed.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    listed = json.loads((root / "current" / "VERSION.json").read_text())["files"]
    store.open_atlas(root)
    assert len(hashed) == len(listed)
    cached = json.loads((root / ".tmp" / "verified.json").read_text())
    assert sorted(cached.values()) == sorted([digest, f"versions/000001/{name}"] for name, digest in listed.items())
    hashed.clear()
    store.open_atlas(root)
    monkeypatch.setattr(integrity, "_hashed", {})  # a new process: only the atlas's own cache is left
    store.open_atlas(root)
    assert hashed == []
    embedder = root / "current" / "embedder.safetensors"
    embedder.write_bytes(embedder.read_bytes())
    store.open_atlas(root)
    assert hashed == ["embedder.safetensors"]


def test_without_verification_a_damaged_file_is_still_one_error_line(built, query, tmp_path):
    root = _copy(built, tmp_path)
    for name in ("cells/synthetic/part-00000.parquet", "label_profiles.parquet", "layout.parquet", "index.faiss"):
        path = root / "current" / name
        original = path.read_bytes()
        path.write_bytes(original[: len(original) // 3])
        result, out = _query(root, query, tmp_path, "--no-verify")
        text = " ".join(result.output.split())
        assert result.exit_code == 1, text
        assert re.search(rf"Error: cannot read (the atlas file 000001/{name}|the FAISS index \S*{name})", text), text
        assert "Traceback" not in text and not out.exists()
        path.write_bytes(original)
    catalogue = root / "current" / "atlas.duckdb"
    data = bytearray(catalogue.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    data[:4096] = bytes(4096)
    catalogue.write_bytes(bytes(data))
    result = runner.invoke(app, ["sql", "SELECT count(*) FROM cells", "--atlas", str(root)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Error: cannot read the atlas file 000001/atlas.duckdb (the catalogue)" in text, text
