"""Realistic synthetic counts for scale tests and benchmarks, written to .h5ad chunk by chunk.

Each cell type has its own expression profile: a shared gamma-distributed baseline with a
block of marker genes raised 5-30 fold. Cells of one type are not copies of one profile: as in
real tissue, each carries continuous activities of gene programs (a few shared by every type,
such as cycling or stress, and a few of its own, such as activation or maturation gradients)
and comes from one of a few donors with their own gene-level offsets. Counts are negative
binomial (dispersion 2) around that profile times a log-normal library size, over real human
gene symbols, so the data passes the same checks and gene mapping as real data. Files are
written with anndata's on-disk sparse append, so a million-cell file never sits in memory.

Without programs (``programs=False``) a type's cells differ only by sampling noise, which makes
every cell's nearest neighbours near-ties: a harder and less realistic case for approximate
search than real data (``benchmarks/realism.py`` compares both with real atlases).

:func:`write_resampled_h5ad` makes large data sets from real cells instead: each cell resampled
from a real labelled data set, thinned binomially and shifted by a donor's gene offsets, so the
within-type structure is the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from screader_db.extras import require
from screader_db.genes import load_gene_table
from screader_db.outputs import atomic_write

SHARED_PROGRAMS = 6
PROGRAMS_PER_TYPE = 4
PROGRAM_GENES = 60
SHARED_PROGRAM_GENES = 300
PROGRAM_LOG_FOLD = 2.5
DONORS = 4
DONOR_SD = 0.4


@dataclass
class SyntheticDesign:
    """The expression design of a synthetic data set.

    Parameters
    ----------
    genes
        Gene symbols.
    types
        Cell type names.
    profiles
        Types × genes expression profiles (rows sum to 1).
    loadings
        Programs × genes log-fold loadings of the gene programs (None: no programs).
    program_type
        The type each program belongs to (-1: every type).
    donor_offsets
        Donors × genes log offsets.
    """

    genes: list[str]
    types: list[str]
    profiles: np.ndarray
    loadings: np.ndarray | None = None
    program_type: np.ndarray | None = None
    donor_offsets: np.ndarray | None = None


def design(*, n_types: int = 20, n_genes: int = 5000, n_markers: int = 30, seed: int = 0,
           programs: bool = True) -> SyntheticDesign:
    """A seeded design over real protein-coding symbols from the shipped gene table.

    Parameters
    ----------
    n_types
        Cell types.
    n_genes
        Genes (at most the table's protein-coding ones).
    n_markers
        Marker genes raised 5-30 fold per type.
    seed
        The design's seed.
    programs
        Add gene programs and donor offsets (False: a type's cells differ only by sampling noise).

    Returns
    -------
    SyntheticDesign
    """
    rng = np.random.default_rng(seed)
    table = load_gene_table()
    coding = np.sort(table.loc[table["gene_type"] == "protein-coding", "symbol"].to_numpy())
    genes = sorted(rng.choice(coding, size=min(n_genes, len(coding)), replace=False).tolist())
    base = rng.gamma(0.35, 1.0, size=len(genes))
    profiles = np.tile(base, (n_types, 1))
    marker_sets = []
    for t in range(n_types):
        markers = rng.choice(len(genes), size=n_markers, replace=False)
        profiles[t, markers] *= rng.uniform(5, 30, size=n_markers)
        marker_sets.append(markers)
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = [f"type{t:02d}" for t in range(n_types)]
    if not programs:
        return SyntheticDesign(genes=genes, types=types, profiles=profiles)
    owners = np.concatenate([np.full(SHARED_PROGRAMS, -1), np.repeat(np.arange(n_types), PROGRAMS_PER_TYPE)])
    loadings = np.zeros((len(owners), len(genes)))
    for p, owner in enumerate(owners):
        # A type's own programs move some of its markers too (maturation, activation); shared ones
        # touch any gene.
        pool = marker_sets[owner] if owner >= 0 else np.unique(np.concatenate(marker_sets))
        size = PROGRAM_GENES if owner >= 0 else SHARED_PROGRAM_GENES
        own = rng.choice(pool, size=min(size // 2, len(pool)), replace=False)
        other = rng.choice(len(genes), size=min(size - len(own), len(genes)), replace=False)
        members = np.union1d(own, other)
        loadings[p, members] = rng.normal(PROGRAM_LOG_FOLD, 0.4, size=len(members))
    donors = rng.normal(0.0, DONOR_SD, size=(DONORS, len(genes)))
    return SyntheticDesign(genes=genes, types=types, profiles=profiles, loadings=loadings, program_type=owners,
                           donor_offsets=donors)


def _cell_profiles(spec: SyntheticDesign, kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each cell's expression profile (rows sum to 1): its type's, shifted by its program
    activities and its donor's offsets."""
    base = spec.profiles[kinds]
    if spec.loadings is None or spec.program_type is None or spec.donor_offsets is None:
        return base
    owners = spec.program_type
    # Activities in [0, 1]: most cells low on a program, some high (a skewed gradient).
    activity = rng.beta(0.6, 1.4, size=(len(kinds), len(owners)))
    activity *= (owners[None, :] < 0) | (owners[None, :] == kinds[:, None])
    donor = rng.integers(0, len(spec.donor_offsets), size=len(kinds))
    shifted = base * np.exp(activity @ spec.loadings + spec.donor_offsets[donor])
    return shifted / shifted.sum(axis=1, keepdims=True)


def chunks(spec: SyntheticDesign, n_cells: int, *, chunk: int = 20_000, depth: float = 2500.0,
           seed: int = 0) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Cells drawn from a design, block by block.

    Parameters
    ----------
    spec
        The design.
    n_cells
        Cells in all.
    chunk
        Most cells per block.
    depth
        Median library size.
    seed
        The cells' seed.

    Yields
    ------
    counts : scipy.sparse.csr_matrix
        Cells × genes float32 counts.
    kinds : numpy.ndarray
        Each cell's type index.
    """
    rng = np.random.default_rng(seed + 1)
    weights = rng.dirichlet(np.full(len(spec.types), 2.0))
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        kinds = rng.choice(len(spec.types), size=n, p=weights)
        library = rng.lognormal(np.log(depth), 0.4, size=n)
        mu = _cell_profiles(spec, kinds, rng) * library[:, None]
        counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)
        yield sp.csr_matrix(counts), kinds


def resampled_chunks(counts: sp.csr_matrix, kinds: np.ndarray, n_cells: int, *, chunk: int = 20_000,
                     donors: int = DONORS, donor_sd: float = DONOR_SD, keep: tuple[float, float] = (0.5, 1.0),
                     seed: int = 0) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """Real cells resampled, block by block: each a drawn source cell, thinned and shifted by a donor.

    Each new cell copies the counts of a source cell drawn at random, keeps each count's molecules
    with probability ``p · exp(offset)`` (a binomial draw; ``p`` uniform in ``keep`` per cell,
    ``offset`` its donor's normal gene-level log offset, the product clipped to 1), so it keeps the
    source's within-type structure but is never its copy.

    Parameters
    ----------
    counts
        Source cells × genes integer counts.
    kinds
        Each source cell's type index.
    n_cells
        Cells in all.
    chunk
        Most cells per block.
    donors, donor_sd
        Donors, and the standard deviation of their gene-level log offsets.
    keep
        The range of each cell's share of molecules kept.
    seed
        The draws' seed.

    Yields
    ------
    counts : scipy.sparse.csr_matrix
        Cells × genes float32 counts.
    kinds : numpy.ndarray
        Each cell's type index.
    """
    rng = np.random.default_rng(seed)
    source = sp.csr_matrix(counts, dtype=np.float32)
    offsets = np.exp(rng.normal(0.0, donor_sd, size=(donors, source.shape[1])))
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        drawn = rng.integers(source.shape[0], size=n)
        block = sp.csr_matrix(source[drawn])
        rows = np.repeat(np.arange(n), np.diff(block.indptr))
        share = rng.uniform(*keep, size=n)[rows] * offsets[rng.integers(donors, size=n)[rows], block.indices]
        block.data = rng.binomial(block.data.astype(np.int64), np.minimum(share, 1.0)).astype(np.float32)
        block.eliminate_zeros()
        yield block, np.asarray(kinds)[drawn]


def write_h5ad(path: str | Path, n_cells: int, *, n_types: int = 20, n_genes: int = 5000, chunk: int = 20_000,
               depth: float = 2500.0, seed: int = 0, design_seed: int | None = None, programs: bool = True) -> Path:
    """Write a synthetic labelled data set (obs ``cell_type``) without holding it in memory.

    Parameters
    ----------
    path
        The .h5ad file (written beside under a temporary name, then moved into place).
    n_cells
        Cells.
    n_types, n_genes, programs
        The design (see :func:`design`).
    chunk
        Cells written per block.
    depth
        Median library size.
    seed
        The cells' seed.
    design_seed
        The design's seed (default: ``seed``); a query drawn from a reference's design passes
        the reference's seed here and its own ``seed`` for the cells.

    Returns
    -------
    Path
        The file written.
    """
    spec = design(n_types=n_types, n_genes=n_genes, seed=seed if design_seed is None else design_seed, programs=programs)
    blocks = chunks(spec, n_cells, chunk=chunk, depth=depth, seed=seed)
    return write_blocks(path, blocks, genes=spec.genes, types=spec.types, n_cells=n_cells)


def write_resampled_h5ad(path: str | Path, source: Any, label_key: str, n_cells: int, *, chunk: int = 20_000,
                         seed: int = 0) -> Path:
    """Write ``n_cells`` cells resampled from a real labelled data set (:func:`resampled_chunks`), obs ``cell_type``.

    Parameters
    ----------
    path
        The .h5ad file (written beside under a temporary name, then moved into place).
    source
        An AnnData of integer counts (cells × genes) with its labels in ``obs[label_key]``.
    label_key
        The labels' column.
    n_cells
        Cells.
    chunk
        Cells written per block.
    seed
        The draws' seed.

    Returns
    -------
    Path
        The file written.
    """
    labels = pd.Categorical(source.obs[label_key].astype(str))
    blocks = resampled_chunks(sp.csr_matrix(source.X), labels.codes, n_cells, chunk=chunk, seed=seed)
    return write_blocks(path, blocks, genes=[str(g) for g in source.var_names], types=list(labels.categories),
                        n_cells=n_cells)


def write_blocks(path: str | Path, blocks: Iterator[tuple[sp.csr_matrix, np.ndarray]], *, genes: list[str],
                 types: list[str], n_cells: int) -> Path:
    """Write blocks of (counts, type index) as one labelled .h5ad (obs ``cell_type``), appended on disk.

    Parameters
    ----------
    path
        The .h5ad file (written beside under a temporary name, then moved into place).
    blocks
        Cells × genes counts with each cell's index into ``types``.
    genes, types
        Gene names, and type names.
    n_cells
        Cells the blocks hold in all.

    Returns
    -------
    Path
        The file written.
    """
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    target = Path(path)
    labels: list[np.ndarray] = []
    with atomic_write(target) as tmp, h5py.File(tmp, "w") as handle:
        first = True
        for block, kinds in blocks:
            if first:
                write_elem(handle, "X", block)
                first = False
            else:
                sparse_dataset(handle["X"]).append(block)
            labels.append(kinds)
        kinds_all = np.concatenate(labels)
        obs = pd.DataFrame({"cell_type": pd.Categorical(np.asarray(types)[kinds_all])},
                           index=[f"cell{i}" for i in range(n_cells)])
        write_elem(handle, "obs", obs)
        write_elem(handle, "var", pd.DataFrame(index=genes))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(handle, key, {})
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
    ad.read_h5ad(target, backed="r").file.close()
    return target


def random_llama(folder: str | Path, words: list[str], *, seed: int = 0, **shape: Any) -> Path:
    """A randomly initialised LLaMA with a word-level tokenizer, saved as a local model folder.

    Real decoder arithmetic without a download, for tests.

    Parameters
    ----------
    folder
        Where the model is saved.
    words
        The tokenizer's vocabulary (besides ``<unk>``, ``<s>``, ``</s>`` and ``<pad>``).
    seed
        The weights' seed.
    **shape
        ``LlamaConfig`` sizes (hidden_size, num_hidden_layers, ...).

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    MissingExtraError
        When the ``llm`` extra is not installed.
    """
    purpose = "a random LLaMA model"
    torch = require("torch", extra="llm", purpose=purpose)
    tokenizers = require("tokenizers", extra="llm", purpose=purpose)
    transformers = require("transformers", extra="llm", purpose=purpose)
    folder = Path(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(sorted(set(words)))}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(vocab), pad_token_id=3, bos_token_id=1, eos_token_id=2, **shape)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
