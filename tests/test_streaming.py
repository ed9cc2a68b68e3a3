"""Building from a file reads it in chunks: peak memory follows the chunk size, not the file size.

Peak memory is the peak of Python and NumPy allocations during the build (tracemalloc).
"""

import json
import subprocess
import sys
import textwrap

import pytest

from screader_db.synthetic import write_h5ad

PROBE = textwrap.dedent("""
    import json, sys, tracemalloc
    from screader_db.builders.atlas import BuildSettings, build_atlas
    from screader_db.genes import default_resolver
    default_resolver()
    tracemalloc.start()
    build_atlas(sys.argv[1], sys.argv[2], label_key="cell_type", chunk=int(sys.argv[3]),
                settings=BuildSettings(model="random:32", method="genept", n_genes=500, layout="none"))
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"growth_mb": peak / 2**20}))
""")


def _growth(path, atlas, chunk):
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(atlas), str(chunk)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    # Noise-only cells are the densest the generator makes: the chunks' share of memory shows most.
    small = write_h5ad(folder / "small.h5ad", 12_000, n_types=8, n_genes=1500, depth=2000, chunk=4000, seed=2,
                       programs=False)
    large = write_h5ad(folder / "large.h5ad", 48_000, n_types=8, n_genes=1500, depth=2000, chunk=8000, seed=2,
                       programs=False)
    return folder, small, large


def test_memory_grows_with_chunks_not_with_the_file(files):
    import anndata as ad

    folder, small, large = files
    backed = ad.read_h5ad(large, backed="r")
    matrix_mb = backed.X.group["data"].size * 8 / 2**20
    backed.file.close()
    small_growth = _growth(small, folder / "a_small", 2000)
    large_growth = _growth(large, folder / "a_large", 2000)
    # 36,000 more cells: their CSR counts take matrix_mb * 3/4; what may grow is their 32-d vectors and labels.
    print(f"matrix {matrix_mb:.0f} MB; growth {small_growth:.0f} MB (12k cells), {large_growth:.0f} MB (48k cells)")
    assert large_growth - small_growth < 0.25 * matrix_mb * 3 / 4, (small_growth, large_growth, matrix_mb)
    bigger_chunks = _growth(large, folder / "a_chunks", 16_000)
    print(f"48k cells with 16,000-cell chunks: {bigger_chunks:.0f} MB")
    assert bigger_chunks > large_growth, (large_growth, bigger_chunks)


QUERY_PROBE = textwrap.dedent("""
    import json, sys, tracemalloc
    from screader_db import annotate
    from screader_db.cli import app
    from screader_db.genes import default_resolver
    default_resolver()
    tracemalloc.start()
    if sys.argv[3] == "command":
        sys.argv = ["screader-db", "query", sys.argv[1], "--atlas", sys.argv[2], "-q"]
        try:
            app()
        except SystemExit as done:
            assert not done.code, done.code
    else:
        annotate(sys.argv[1], sys.argv[2])
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"peak_mb": peak / 2**20}))
""")


def _query_peak(path, atlas, how):
    out = subprocess.run([sys.executable, "-c", QUERY_PROBE, str(path), str(atlas), how], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def test_the_query_command_reads_the_query_as_annotate_reads_a_path(files):
    import anndata as ad

    folder, small, _ = files
    _growth(small, folder / "a_query", 2000)  # an atlas to query
    backed = ad.read_h5ad(small, backed="r")
    matrix_mb = (backed.X.group["data"].size * 8 + backed.X.group["indices"].size * 4) / 2**20
    backed.file.close()
    command, library = _query_peak(small, folder / "a_query", "command"), _query_peak(small, folder / "a_query", "path")
    # annotate(path) reads the file in chunks (a backed AnnData); the command once read it whole first
    assert command < library + 0.5 * matrix_mb, (command, library, matrix_mb)
