"""Realistic synthetic counts for scale tests and benchmarks, written to .h5ad chunk by chunk.

Each cell type has its own expression profile: a shared gamma-distributed baseline with a
block of marker genes raised 5-30 fold. Counts are negative binomial (dispersion 2) around the
profile times a log-normal library size, over real human gene symbols, so the data passes the
same checks and gene mapping as real data. Files are written with anndata's on-disk sparse
append, so a million-cell file never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class SyntheticDesign:
    """Profiles (types × genes, rows sum to 1), gene symbols and type names of a synthetic data set."""

    genes: list[str]
    types: list[str]
    profiles: np.ndarray


def design(*, n_types: int = 20, n_genes: int = 5000, n_markers: int = 30, seed: int = 0) -> SyntheticDesign:
    """A seeded design over real protein-coding symbols from the shipped gene table."""
    from screader_db.genes import load_gene_table

    rng = np.random.default_rng(seed)
    table = load_gene_table()
    coding = np.sort(table.loc[table["gene_type"] == "protein-coding", "symbol"].to_numpy())
    genes = sorted(rng.choice(coding, size=min(n_genes, len(coding)), replace=False).tolist())
    base = rng.gamma(0.35, 1.0, size=len(genes))
    profiles = np.tile(base, (n_types, 1))
    for t in range(n_types):
        markers = rng.choice(len(genes), size=n_markers, replace=False)
        profiles[t, markers] *= rng.uniform(5, 30, size=n_markers)
    profiles /= profiles.sum(axis=1, keepdims=True)
    return SyntheticDesign(genes=genes, types=[f"type{t:02d}" for t in range(n_types)], profiles=profiles)


def chunks(spec: SyntheticDesign, n_cells: int, *, chunk: int = 20_000, depth: float = 2500.0,
           seed: int = 0) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """(counts, type index) blocks of up to ``chunk`` cells."""
    rng = np.random.default_rng(seed + 1)
    weights = rng.dirichlet(np.full(len(spec.types), 2.0))
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        kinds = rng.choice(len(spec.types), size=n, p=weights)
        library = rng.lognormal(np.log(depth), 0.4, size=n)
        mu = spec.profiles[kinds] * library[:, None]
        counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)
        yield sp.csr_matrix(counts), kinds


def write_h5ad(path: str | Path, n_cells: int, *, n_types: int = 20, n_genes: int = 5000, chunk: int = 20_000,
               depth: float = 2500.0, seed: int = 0, design_seed: int | None = None) -> Path:
    """Write a synthetic labelled data set (obs ``cell_type``) without holding it in memory.

    ``design_seed`` (default: ``seed``) fixes the profiles; a query drawn from a reference's
    design passes the reference's seed here and its own ``seed`` for the cells.
    """
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    target = Path(path)
    spec = design(n_types=n_types, n_genes=n_genes, seed=seed if design_seed is None else design_seed)
    labels: list[np.ndarray] = []
    tmp = target.with_name(f".{target.name}.tmp")
    with h5py.File(tmp, "w") as handle:
        first = True
        for block, kinds in chunks(spec, n_cells, chunk=chunk, depth=depth, seed=seed):
            if first:
                write_elem(handle, "X", block)
                first = False
            else:
                sparse_dataset(handle["X"]).append(block)
            labels.append(kinds)
        kinds_all = np.concatenate(labels)
        obs = pd.DataFrame({"cell_type": pd.Categorical(np.asarray(spec.types)[kinds_all])},
                           index=[f"cell{i}" for i in range(n_cells)])
        write_elem(handle, "obs", obs)
        write_elem(handle, "var", pd.DataFrame(index=spec.genes))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(handle, key, {})
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
    tmp.replace(target)
    ad.read_h5ad(target, backed="r").file.close()
    return target


def random_llama(folder: str | Path, words: list[str], *, seed: int = 0, **shape: Any) -> Path:
    """A randomly initialised LLaMA with a word-level tokenizer over ``words``, saved as a local
    model folder: real decoder arithmetic without a download (``shape``: LlamaConfig sizes)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(sorted(set(words)))}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), pad_token_id=3, bos_token_id=1, eos_token_id=2, **shape)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
