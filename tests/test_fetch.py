"""Fetching through the real package clients, checksum checks and atomic replacement."""

import os

import pytest

from screader_db import fetch
from screader_db.errors import ChecksumError
from screader_db.manifest import get_entry

SMALL = "pbmc68k_reduced"  # 2 MB scanpy wheel


@pytest.fixture
def private_home(tmp_path, monkeypatch, data_path):
    """A fresh cache that may be damaged; archives come from the shared cache, so no new download."""
    data_path(SMALL)
    from screader_db.cache import cache_dir

    archives = cache_dir("archives")
    monkeypatch.setenv("SCREADER_DB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(fetch.ENV_ARCHIVES, str(archives))
    return tmp_path / "home"


@pytest.mark.data(SMALL)
def test_fetch_verifies_and_caches(private_home):
    path = fetch.ensure(SMALL)
    assert path == fetch.cached_path(get_entry(SMALL))
    fetch.verify(get_entry(SMALL), path)
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.data(SMALL)
def test_flipped_byte_is_detected_and_fetched_again(private_home):
    path = fetch.ensure(SMALL)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"checksum mismatch for {SMALL} .* expected sha256 {get_entry(SMALL).sha256}"):
        fetch.verify(get_entry(SMALL), path)
    notes = []
    again = fetch.ensure(SMALL, progress=notes.append)
    assert any("failed its checksum" in n for n in notes)
    fetch.verify(get_entry(SMALL), again)


@pytest.mark.data(SMALL)
def test_archive_with_wrong_bytes_is_refused_and_nothing_stays(private_home, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    entry = get_entry(SMALL)
    (bad / f"scanpy-{entry.version}-py3-none-any.whl").write_bytes(b"not a wheel")
    monkeypatch.setenv(fetch.ENV_ARCHIVES, str(bad))
    with pytest.raises(ChecksumError) as caught:
        fetch.ensure(SMALL)
    message = str(caught.value)
    assert f"expected sha256 {entry.archive_sha256}" in message
    assert "scanpy-1.11.5-py3-none-any.whl" in message
    data = private_home / "data"
    assert not fetch.cached_path(entry).exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".")]


@pytest.mark.data("minilm")
def test_folder_entry_hash_covers_every_file(data_path):
    model = data_path("minilm")
    assert (model / "config.json").is_file()
    fetch.verify(get_entry("minilm"), model)


def test_bundled_gene_table_is_verified():
    path = fetch.ensure("gene_table_human")
    assert path.name == "genes_human.parquet"
    assert os.path.getsize(path) == get_entry("gene_table_human").size
