"""Crash safety and concurrent use with real processes: kill -9 a writer, readers during writes."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import make_counts

from screader_db import annotate, store
from screader_db.builders.atlas import BuildSettings, build_atlas

SETTINGS = BuildSettings(model="random:16", method="genept", n_genes=50, layout="none")

WRITER = textwrap.dedent("""
    import os, random, signal, sys, threading, time
    from contextlib import contextmanager
    import anndata as ad
    from screader_db.builders.datasets import add_dataset
    from screader_db.progress import Reporter

    root, data, stage, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

    def die():
        if delay:
            time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    class Killer(Reporter):
        def message(self, text):
            if text.startswith(stage):
                die()

        @contextmanager
        def task(self, description, total, unit="items"):
            if description.startswith(stage):
                threading.Thread(target=die, daemon=True).start()
            yield lambda n: None

    add_dataset(root, ad.read_h5ad(data), label_key="cell_type", name="extra", reporter=Killer())
    print("finished without being killed")
""")

KILL_POINTS = [("Reading the data set", 0.0), ("Embedding extra", 0.0), ("Adding to the FAISS index", 0.0),
               ("Adding to the FAISS index", 0.002), ("Adding to the FAISS index", 0.02), ("Writing the catalogue", 0.0),
               ("Writing the catalogue", 0.01)]


def _answers(root, query, version=None):
    result = annotate(query, root, version=version)
    return hashlib.sha256(json.dumps([list(result.labels), result.neighbour_ids.tolist()]).encode()).hexdigest()


@pytest.fixture
def atlas(tmp_path):
    root = tmp_path / "atlas"
    build_atlas(make_counts(n_cells=300, seed=1), root, label_key="cell_type", dataset_name="base", settings=SETTINGS)
    return root


def test_killed_writer_leaves_the_previous_version(atlas, tmp_path):
    extra = tmp_path / "extra.h5ad"
    make_counts(n_cells=5000, seed=2).write_h5ad(extra)
    query = make_counts(n_cells=80, seed=3)
    before = _answers(atlas, query)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for stage, delay in KILL_POINTS:
        proc = subprocess.run([sys.executable, "-c", WRITER, str(atlas), str(extra), stage, str(delay)], env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            assert "finished" in proc.stdout
            pytest.fail(f"the writer was not killed at {stage!r}")
        assert proc.returncode == -9, proc.stderr
        assert store.current_version(atlas) == 1, (stage, delay)
        assert _answers(atlas, query) == before, (stage, delay)
    from screader_db.builders.datasets import add_dataset

    after = add_dataset(atlas, extra, label_key="cell_type", name="extra")
    assert after.version == 2
    assert not list((atlas / "versions").glob(".staging-*"))
    assert len(after.cells()) == 5300


READER = textwrap.dedent("""
    import hashlib, json, os, sys
    import anndata as ad
    from screader_db import annotate, store

    root, query_path, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    query = ad.read_h5ad(query_path)
    seen = []
    finished = False
    while not finished:  # the last pass starts after the writers finished, so it reads their last version
        finished = os.path.exists(stop)
        atlas = store.open_atlas(root)
        result = annotate(query, atlas)
        digest = hashlib.sha256(json.dumps([list(result.labels), result.neighbour_ids.tolist()]).encode()).hexdigest()
        seen.append([atlas.version, digest])
        if len(seen) == 1:
            print("answered", file=sys.stderr, flush=True)
    print(json.dumps(seen))
""")


def test_readers_see_only_complete_versions_while_writers_write(atlas, tmp_path):
    from screader_db.builders.datasets import add_dataset, remove_dataset

    query_path = tmp_path / "query.h5ad"
    query = make_counts(n_cells=60, seed=5)
    query.write_h5ad(query_path)
    extras = []
    for i in range(2):
        path = tmp_path / f"extra{i}.h5ad"
        make_counts(n_cells=400, seed=10 + i).write_h5ad(path)
        extras.append(path)
    stop = tmp_path / "writers-finished"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(atlas), str(query_path), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    for reader in readers:  # every reader has answered from version 1 before the writers start
        assert reader.stderr is not None
        while (line := reader.stderr.readline()) and line.strip() != "answered":
            pass
    try:
        add_dataset(atlas, extras[0], label_key="cell_type", name="extra0")
        remove_dataset(atlas, "base")
        add_dataset(atlas, extras[1], label_key="cell_type", name="extra1")
    finally:
        stop.touch()
    outputs = [r.communicate(timeout=600) for r in readers]
    for reader, (_, err) in zip(readers, outputs, strict=True):
        assert reader.returncode == 0, err
    expected = {v: _answers(atlas, query, version=v) for v in store.list_versions(atlas)}
    assert sorted(expected) == [1, 2, 3, 4]
    for out, _ in outputs:
        seen = json.loads(out)
        for version, digest in seen:
            assert digest == expected[version], f"a reader saw an answer that matches no complete version {version}"
        assert (seen[0][0], seen[-1][0]) == (1, 4), "each reader starts on the first version and ends on the last"
