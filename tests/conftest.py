"""Shared fixtures: real data from the manifest (fetched once into the cache) and small generated data.

A test that needs manifest entries says which with ``@pytest.mark.data("pbmc3k", ...)``; they are
fetched before it runs, and it is skipped, naming the entry, when one is not cached and cannot be
fetched (no network, no apt-get). A test that uses the ``data_path`` fixture is marked ``data``
even without the mark.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HUMAN_GENES = [
    "INS", "GCG", "SST", "PPY", "KRT19", "PRSS1", "CPA1", "PECAM1", "VWF", "CD68", "CD3E", "CD19", "MS4A1", "PTPRC",
    "COL1A1", "PDGFRB", "SOX10", "GHRL", "TPSAB1", "LYZ", "NKG7", "GNLY", "CD14", "FCGR3A", "HBB", "ALB", "APOA1",
    "TTR", "MKI67", "TOP2A", "ACTB", "GAPDH", "EEF1A1", "RPL13", "RPS19", "MALAT1", "NEAT1", "FOS", "JUN", "EGR1",
    "KRT8", "KRT18", "EPCAM", "CDH1", "VIM", "ACTA2", "DES", "MYH11", "TAGLN", "SPARC",
]


def make_counts(n_cells: int = 300, genes: list[str] | None = None, n_types: int = 3, seed: int = 0,
                depth: float = 2000.0) -> object:
    """A seeded AnnData of negative-binomial counts with ``n_types`` cell types, each with its own markers."""
    import anndata as ad

    genes = genes or HUMAN_GENES
    rng = np.random.default_rng(seed)
    n_genes = len(genes)
    base = rng.gamma(0.6, 1.0, size=n_genes)
    profiles = np.tile(base, (n_types, 1))
    block = max(n_genes // (n_types + 1), 1)
    for t in range(n_types):
        profiles[t, t * block : (t + 1) * block] *= 25.0
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = rng.integers(0, n_types, size=n_cells)
    lib = rng.lognormal(np.log(depth), 0.3, size=n_cells)
    mu = profiles[types] * lib[:, None]
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types]),
                        "donor": pd.Categorical(rng.choice(["d1", "d2"], size=n_cells))},
                       index=[f"cell{i}" for i in range(n_cells)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=list(genes)))


_FETCHED: dict[str, Path | str] = {}  # entry name -> its verified path, or why it could not be fetched


def fetched(name: str) -> Path:
    """The verified path of a manifest entry, fetched on first use.

    Parameters
    ----------
    name
        The entry's name in ``data_manifest.yaml``.

    Returns
    -------
    Path
        The cached file or folder.

    Raises
    ------
    pytest.skip.Exception
        The entry is not cached and cannot be fetched (no network, no apt-get); the reason names it.
        A checksum mismatch is not skipped: ``ChecksumError`` fails the test.
    """
    from screader_db.errors import FetchError
    from screader_db.fetch import ensure

    if name not in _FETCHED:
        try:
            _FETCHED[name] = ensure(name)
        except FetchError as err:
            _FETCHED[name] = (f"needs the manifest entry {name}, which is not in the cache and could not be fetched "
                              f"({err}); run `screader-db fetch {name}` on a machine that reaches PyPI and Debian")
    found = _FETCHED[name]
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``data`` every test that uses the ``data_path`` fixture, directly or through another fixture."""
    for item in items:
        if "data_path" in getattr(item, "fixturenames", ()) and item.get_closest_marker("data") is None:
            item.add_marker(pytest.mark.data)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fetch the entries a test's ``data`` marks name before its fixtures run, or skip it."""
    for marker in item.iter_markers("data"):
        for name in marker.args:
            fetched(name)


@pytest.fixture(scope="session")
def data_path():
    """Path of a manifest entry, fetched and verified on first use (the test is skipped when it cannot be)."""
    return fetched


@pytest.fixture
def counts_adata():
    return make_counts()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny randomly initialised LLaMA model with a real tokenizer, saved as a local folder."""
    from screader_db.synthetic import random_llama

    words = sorted({w for g in HUMAN_GENES for w in [g, g.lower()]} | {"gene", "protein", "binding", "cell", ":", ".",
                                                                        "activity", "receptor", "process"})
    return random_llama(tmp_path_factory.mktemp("tiny-llama"), words, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def panel_genes(n: int) -> list[str]:
    """``n`` human symbols the gene table knows: HUMAN_GENES first, then protein-coding genes in table order."""
    from screader_db.genes import load_gene_table

    table = load_gene_table()
    coding = table.loc[table["gene_type"] == "protein-coding", "symbol"] if "gene_type" in table else table["symbol"]
    extra = [s for s in coding if s not in HUMAN_GENES and s.isalnum()]
    return (HUMAN_GENES + extra)[:n]


@pytest.fixture(scope="session")
def pbmc_parts(data_path):
    """pbmc3k split into a reference and a stratified 400-cell query (seeded)."""
    from sklearn.model_selection import train_test_split

    from screader_db.inputs import read_h5ad

    adata = read_h5ad(data_path("pbmc3k"))
    labels = adata.obs["celltype"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=400, random_state=0, stratify=labels)
    return adata[np.sort(train)].copy(), adata[np.sort(test)].copy()


@pytest.fixture(scope="session")
def pbmc_split(pbmc_parts, tmp_path_factory):
    """An atlas of the pbmc3k reference part (default settings), the query and the query's .h5ad path."""
    from screader_db.builders.atlas import build_atlas

    reference, query = pbmc_parts
    root = tmp_path_factory.mktemp("pbmc") / "atlas"
    build_atlas(reference, root, label_key="celltype", dataset_name="pbmc3k")
    path = root.parent / "query.h5ad"
    query.write_h5ad(path)
    return root, query, path


@pytest.fixture(scope="session")
def pbmc_result(pbmc_split):
    """The pbmc3k query annotated against the pbmc3k atlas."""
    from screader_db import annotate

    root, query, _ = pbmc_split
    return annotate(query, root)
