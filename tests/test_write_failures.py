"""A version that cannot be written (here: past the process's file size limit, as on a full disk)
is one error line, and the atlas stays as it was."""

import os
import subprocess
import sys
import textwrap

from conftest import make_counts
from serving import small_atlas

from screader_db import store

ADD = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
    from screader_db.cli import app
    sys.argv = ["screader-db", "add", sys.argv[1], "--atlas", sys.argv[2], "--name", "extra", "--label-key", "cell_type", "-q"]
    app()
""")


def test_an_add_that_cannot_be_written_is_one_error_line_and_changes_nothing(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    before = store.open_atlas(root)
    extra = tmp_path / "extra.h5ad"
    make_counts(n_cells=400, seed=5).write_h5ad(extra)
    done = subprocess.run([sys.executable, "-c", ADD, str(extra), str(root)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("Error: could not write version 2 of the atlas ("), output
    assert "nothing changed: the atlas stays at version 1" in " ".join(output.split())
    assert store.current_version(root) == 1 and store.list_versions(root) == [1]
    assert not [p for p in root.iterdir() if p.name.startswith(".staging") or "staging" in p.name], list(root.iterdir())
    after = store.open_atlas(root)
    assert [d["name"] for d in after.datasets] == [d["name"] for d in before.datasets]
