import hashlib

from screader_db.checksums import sha256_file, sha256_path, sha256_text, sha256_tree, size_of


def test_file_hash_matches_hashlib(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"screader" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"screader" * 1000).hexdigest()
    assert sha256_path(path) == sha256_file(path)
    assert size_of(path) == 8000


def test_tree_hash_changes_with_any_byte_or_name(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("one")
    (tmp_path / "y.txt").write_text("two")
    before = sha256_tree(tmp_path)
    assert sha256_path(tmp_path) == before
    (tmp_path / "y.txt").write_text("twO")
    assert sha256_tree(tmp_path) != before
    (tmp_path / "y.txt").write_text("two")
    assert sha256_tree(tmp_path) == before
    (tmp_path / "y.txt").rename(tmp_path / "z.txt")
    assert sha256_tree(tmp_path) != before
    assert size_of(tmp_path) == 6


def test_text_hash_is_utf8():
    assert sha256_text("β") == hashlib.sha256("β".encode()).hexdigest()
