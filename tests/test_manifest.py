import shutil

import pytest

from screader_db.errors import ScreaderError
from screader_db.manifest import get_entry, load_manifest, manifest_path, record_entry


def test_every_entry_is_complete():
    entries = load_manifest()
    assert {"baron_human", "baron_mouse", "orthologs_human_mouse", "minilm", "smollm2", "org_hs_eg_db", "go_db",
            "gene_table_human", "pbmc3k"} <= set(entries)
    for entry in entries.values():
        assert len(entry.sha256) == 64, entry.name
        assert entry.size > 0, entry.name
        assert entry.license, entry.name
        if entry.kind != "bundled":
            assert len(entry.archive_sha256) == 64, entry.name


def test_unknown_entry_lists_known_names():
    with pytest.raises(ScreaderError, match=r"'nope' is not in the data manifest; known names: .*baron_human"):
        get_entry("nope")


def test_record_entry_rewrites_only_that_entry(tmp_path):
    copy = tmp_path / "data_manifest.yaml"
    shutil.copy(manifest_path(), copy)
    record_entry("kang", {"sha256": "0" * 64, "size": 1}, copy)
    entries = load_manifest(copy)
    assert entries["kang"].sha256 == "0" * 64
    assert entries["baron_human"] == load_manifest()["baron_human"]
    assert copy.read_text().startswith("# Every external input")


def test_malformed_manifest_is_refused(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("entries:\n  x:\n    kind: ftp\n")
    with pytest.raises(ScreaderError, match="manifest entry 'x' lacks"):
        load_manifest(bad)
