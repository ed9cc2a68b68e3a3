"""Embed gene descriptions with a language model, through a cache keyed by model and text.

The cache holds one Parquet file per encoder key (model bytes + pooling settings) with a row
per (gene, text sha256). Asking again for the same genes with the same texts embeds nothing;
a gene whose description changed is embedded again, alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screader_db.cache import cache_dir
from screader_db.encoders import Encoder
from screader_db.gene_vectors import GeneEmbeddings
from screader_db.genes import GeneResolver
from screader_db.outputs import atomic_write

Progress = Callable[[int], None]


def _cache_file(encoder: Encoder) -> Path:
    return cache_dir("gene-embeddings") / f"{encoder.key}.parquet"


def _read_cache(path: Path) -> dict[tuple[str, str], np.ndarray]:
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return {}
    column = table.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    keys = zip(table.column("gene").to_pylist(), table.column("text_sha256").to_pylist(), strict=True)
    return {key: vectors[i] for i, key in enumerate(keys)}


def _write_cache(path: Path, entries: dict[tuple[str, str], np.ndarray]) -> None:
    keys = sorted(entries)
    dim = len(next(iter(entries.values())))
    flat = np.stack([entries[k] for k in keys]).astype(np.float32).ravel()
    table = pa.table({
        "gene": [k[0] for k in keys],
        "text_sha256": [k[1] for k in keys],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim),
    })
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def embed_genes(genes: Sequence[str], encoder: Encoder, *, texts: Sequence[str] | None = None,
                text_sha256: Sequence[str] | None = None, resolver: GeneResolver | None = None,
                progress: Progress | None = None, use_cache: bool = True) -> GeneEmbeddings:
    """Vectors for ``genes`` (human symbols); descriptions come from the gene table unless given.

    Only (gene, text sha256) pairs missing from the encoder's cache file
    (``gene-embeddings/<encoder.key>.parquet`` in the cache folder) are encoded; the cache is read
    and rewritten under a file lock.

    Parameters
    ----------
    genes : sequence of str
        Human gene symbols.
    encoder : Encoder
        The gene-text model (:func:`screader_db.encoders.resolve_encoder`).
    texts : sequence of str or None
        One description per gene; None takes the gene table's (``"SYMBOL: gene."`` for a symbol it lacks).
    text_sha256 : sequence of str or None
        The sha256 of each of ``texts``; None computes them. Ignored when ``texts`` is None.
    resolver : GeneResolver or None
        The gene table descriptions are read from; None loads the packaged one.
    progress : callable or None
        Called with the number of genes done (all at once when every gene is cached).
    use_cache : bool
        Read and update the cache; False encodes every gene and writes nothing.

    Returns
    -------
    GeneEmbeddings
        float32 vectors in the order of ``genes``, with the encoder's provenance and how many were
        encoded now (``n_embedded``).

    Raises
    ------
    ModelError
        The model cannot be loaded.
    MissingExtraError
        A language model needs the ``llm`` extra, which is not installed.
    """
    from filelock import FileLock

    from screader_db.checksums import sha256_text

    genes = list(genes)
    if texts is None:
        texts, text_sha256 = (resolver or GeneResolver()).descriptions(genes)
    elif text_sha256 is None:
        text_sha256 = [sha256_text(t) for t in texts]
    texts, shas = list(texts), list(text_sha256 or [])
    path = _cache_file(encoder)
    with FileLock(str(path) + ".lock"):
        cached = _read_cache(path) if use_cache else {}
        missing = [i for i, key in enumerate(zip(genes, shas, strict=True)) if key not in cached]
        if missing:
            fresh = encoder.encode([genes[i] for i in missing], [texts[i] for i in missing], progress=progress)
            for row, i in enumerate(missing):
                cached[(genes[i], shas[i])] = fresh[row]
            if use_cache:
                _write_cache(path, cached)
        elif progress:
            progress(len(genes))
        vectors = np.stack([cached[(g, s)] for g, s in zip(genes, shas, strict=True)]).astype(np.float32)
    return GeneEmbeddings(genes=genes, vectors=vectors, text_sha256=shas, model_id=encoder.model_id,
                          model_sha=encoder.model_sha, settings=encoder.settings(), key=encoder.key,
                          n_embedded=len(missing))
