"""One stream for reading, checking, normalising and embedding chunks, for reference and query alike."""

import re

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import HUMAN_GENES, make_counts

from screader_db.builders.reference import open_reference
from screader_db.cell_embedding import CellEmbedder
from screader_db.errors import InputDataError, ScreaderError
from screader_db.expression_stream import ExpressionStream, GeneMoments
from screader_db.inputs import CHUNK, SCALE_SAMPLE, normalise, open_expression, plan_genes
from screader_db.query_input import embed_query, prepare_query
from screader_db.reference_stats import collect


def _embedder(genes, *, dim=8, seed=0, center="auto"):
    rng = np.random.default_rng(seed)
    return CellEmbedder(method="genept", genes=list(genes), mean=rng.random(len(genes)).astype(np.float32),
                        projection=rng.normal(size=(len(genes), dim)).astype(np.float32), params={"center": center})


def _stream(adata, genes=None, scale="counts", library=None):
    source = open_expression(adata)
    return ExpressionStream(source, plan_genes(source.names, genes), scale,
                            library=None if library is None else plan_genes(source.names, library))


def test_chunks_are_the_checked_normalised_rows_in_row_order():
    adata = make_counts(n_cells=250, seed=1)
    genes, shared = HUMAN_GENES[5:40], HUMAN_GENES[:30]
    stream = _stream(adata, genes, library=shared)
    chunks = list(stream.chunks(64))
    assert [start for start, _ in chunks] == [0, 64, 128, 192]
    raw = sp.csr_matrix(adata.X)
    for start, block in chunks:
        expected = normalise(raw[start : start + 64], "counts", stream.plan, library=stream.library)
        assert block.dtype == np.float32 and block.shape == (min(64, 250 - start), len(genes))
        assert (block != expected).nnz == 0
    assert stream.genes == genes and stream.n_cells == 250


def test_a_bad_value_past_the_scale_sample_is_refused_in_its_chunk():
    adata = make_counts(n_cells=SCALE_SAMPLE + 50, seed=2)
    X = sp.csr_matrix(adata.X)
    X[SCALE_SAMPLE + 10, 3] = np.nan
    adata.X = X
    stream = _stream(adata)
    first = next(stream.chunks(SCALE_SAMPLE))
    assert first[0] == 0
    message = "the matrix has 1 NaN or infinite values; remove or impute them before annotating"
    with pytest.raises(InputDataError, match=re.escape(message)):
        list(stream.chunks(SCALE_SAMPLE))


def test_over_drops_the_library_and_subset_keeps_the_rows():
    adata = make_counts(n_cells=120, seed=3)
    stream = _stream(adata, HUMAN_GENES[:20], library=HUMAN_GENES[:25])
    other = stream.over(plan_genes(stream.source.names, HUMAN_GENES[10:30]))
    assert other.library is None and other.genes == HUMAN_GENES[10:30] and other.scale == stream.scale
    keep = np.array([3, 4, 50, 119])
    part = stream.subset(keep)
    assert part.n_cells == 4
    whole = next(stream.chunks(CHUNK))[1]
    assert (next(part.chunks(2))[1] != whole[keep[:2]]).nnz == 0


def test_reference_and_query_read_and_embed_alike(tmp_path):
    adata = make_counts(n_cells=200, seed=4)
    ref = open_reference(adata, label_key="cell_type", name="ref")
    query = prepare_query(adata, HUMAN_GENES)
    embedder = _embedder(HUMAN_GENES)
    plan = ref.plan(embedder.genes)
    for (a, x), (b, y) in zip(ref.chunks(plan, 70), query.chunks(70), strict=True):
        assert a == b and (x != y).nnz == 0
    by_reference = ref.embed(embedder, chunk=70)
    by_query = embed_query(query, embedder, chunk=70)
    assert by_reference.dtype == np.float32 and by_reference.tobytes() == by_query.tobytes()
    # self-centred: the mean of every cell, taken in one extra pass, then each chunk embedded on it
    mean = query.stream.centre(embedder, chunk=70)
    whole = sp.vstack([b for _, b in query.chunks(70)])
    np.testing.assert_allclose(mean, np.asarray(whole.mean(axis=0)).ravel(), rtol=1e-5)
    for start, block in query.chunks(70):
        assert by_query[start : start + 70].tobytes() == embedder.transform(block, mean=mean).tobytes()
    given = ref.embed(embedder, mean=embedder.mean, chunk=70)
    assert given.tobytes() == embed_query(query, embedder, center="reference", chunk=70).tobytes()


def test_embedding_on_other_genes_is_refused():
    stream = _stream(make_counts(n_cells=60, seed=5), HUMAN_GENES[:20])
    message = ("the expression has 20 columns but the embedder was fitted on 30 other genes; map the cells onto the "
               "embedder's genes first")
    with pytest.raises(ScreaderError, match=re.escape(message)):
        stream.embed(_embedder(HUMAN_GENES[:30]))


def _old_reference_sums(blocks):
    """How the reference statistics summed linear values before there was one moments function."""
    total, total_sq, detected = (np.zeros(blocks[0].shape[1]) for _ in range(3))
    for X in blocks:
        linear = X.copy()
        linear.data = np.expm1(linear.data)
        total += np.asarray(linear.sum(axis=0)).ravel()
        linear.data = linear.data.astype(np.float64) ** 2
        total_sq += np.asarray(linear.sum(axis=0)).ravel()
        binary = X.copy()
        binary.data = np.ones_like(binary.data)
        detected += np.asarray(binary.sum(axis=0)).ravel()
    return total, total_sq, detected


def test_gene_moments_are_the_linear_mean_and_variance():
    adata = make_counts(n_cells=300, seed=6)
    stream = _stream(adata)
    blocks = [b for _, b in stream.chunks(90)]
    dense = np.expm1(np.asarray(sp.vstack(blocks).todense(), dtype=np.float64))
    moments = stream.moments(chunk=90)
    mean, var = moments.mean_var()
    np.testing.assert_allclose(mean, dense.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, dense.var(axis=0, ddof=1), rtol=1e-5, atol=1e-6)
    assert moments.n_cells == 300
    np.testing.assert_array_equal(moments.detected, (dense > 0).sum(axis=0))
    # float32 sums per block, as the reference statistics have always taken them
    old = _old_reference_sums(blocks)
    kept = GeneMoments(len(stream.genes), sum_dtype=np.float32).add_all(blocks)
    for new, before in zip((kept.linear_sum, kept.linear_sumsq, kept.detected), old, strict=True):
        assert new.tobytes() == before.tobytes()
    # float64 sums, as the novelty check has always taken them
    total = sum(np.asarray(sp.csr_matrix((np.expm1(b.data).astype(np.float64), b.indices, b.indptr),
                                         shape=b.shape).sum(axis=0)).ravel() for b in blocks)
    before_mean = total / 300
    assert mean.tobytes() == before_mean.tobytes()


def test_reference_statistics_take_the_stream_moments():
    adata = make_counts(n_cells=180, seed=7)
    source = open_expression(adata)
    plan = plan_genes(source.names)
    stats = collect(source, plan, adata.obs["cell_type"].astype(str).to_numpy(), chunk=50, sample_cells=0)
    moments = ExpressionStream(source, plan, stats.kind).moments(chunk=50, sum_dtype=np.float32)
    for a, b in zip(stats.linear_moments(), moments.mean_var(), strict=True):
        assert a.tobytes() == b.tobytes()
    assert stats.detected.tobytes() == moments.detected.tobytes()


def test_a_dask_part_is_the_stream_chunk_of_its_rows(tmp_path, monkeypatch):
    from screader_db.builders import distributed

    adata = make_counts(n_cells=150, seed=8)
    path = tmp_path / "ref.h5ad"
    adata.write_h5ad(path)
    ref = open_reference(path, label_key="cell_type")
    embedder = _embedder(HUMAN_GENES)
    plan = ref.plan(embedder.genes)
    monkeypatch.setattr(distributed, "write_part", lambda *args: None)
    rows = np.arange(40, 90)
    task = distributed.PartTask(path=str(path), layer=None, use_raw=False, gene_key=None, rows=rows, kind=ref.kind,
                                plan=plan, embedder=embedder, mean=embedder.mean, cells=None, ids=rows,
                                folder=str(tmp_path), provenance="{}", number=1)
    number, vectors = distributed.embed_part(task)
    expected = ref.stream(plan).subset(rows).embed(embedder, mean=embedder.mean)
    assert number == 1 and vectors.tobytes() == expected.tobytes()
