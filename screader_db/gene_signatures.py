"""Gene signatures for cell search: genes with weights, read from text or a file, made into a pseudo-cell.

A signature is written ``'CD19:1,MS4A1:1'`` (or one gene per line, with an optional weight, in a
.tsv/.csv/.txt file). :func:`signature_vector` turns it into one cell vector the atlas's embedder
makes, which :func:`screader_db.cell_search.search` then searches with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from screader_db.errors import GeneOverlapError, InputDataError

SIGNATURE_SUFFIXES = (".tsv", ".csv", ".txt", ".tab")
SIGNATURE_EXAMPLE = "'CD19:1,MS4A1:1'"
SHOWN = 5  # genes named in a message


def _is_file_name(text: str) -> bool:
    return Path(text).suffix.lower() in SIGNATURE_SUFFIXES or os.sep in text or Path(text).is_file()


def _weight(gene: str, value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        message = f"the signature's weight of {gene} is {value!r}, not a number; write genes with weights as {SIGNATURE_EXAMPLE}"
        raise InputDataError(message) from None
    if not np.isfinite(weight):
        raise InputDataError(f"the signature's weight of {gene} is {weight}; weights are finite numbers")
    return weight


def _signature_text(text: str) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for item in re.split(r"[,;\s]+", text.strip()):
        if item:
            gene, _, weight = item.partition(":")
            pairs.append((gene, weight if weight else 1.0))
    return pairs


def _signature_file(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        message = (f"the signature file {path} does not exist; give a file of gene and weight columns, or genes with "
                   f"weights as {SIGNATURE_EXAMPLE}")
        raise InputDataError(message)
    pairs: list[tuple[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        fields = [f.strip().strip('"') for f in re.split(r"[\t,;]|\s+", line.strip()) if f.strip()]
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            message = (f"the signature file {path} has a line of {len(fields)} columns ({line.strip()[:60]!r}); it holds "
                       "a gene and a weight per line (or a gene alone, weight 1)")
            raise InputDataError(message)
        pairs.append((fields[0], fields[1] if len(fields) == 2 else 1.0))
    if pairs:
        try:
            float(pairs[0][1])
        except ValueError:
            pairs = pairs[1:]  # a header line: gene, weight
    return pairs


def read_signature(signature: Any) -> dict[str, float]:
    """A gene signature as gene -> weight.

    Parameters
    ----------
    signature : mapping, DataFrame, Series, sequence, str or Path
        A mapping gene -> weight; a DataFrame of two columns (gene, weight); a Series indexed by
        gene; gene names (weight 1 each); a file (a Path, or text ending in .tsv, .csv, .txt or
        .tab) of lines ``gene<TAB or comma>weight`` or ``gene`` (weight 1), a header line allowed;
        or text such as ``'CD19:1,MS4A1:1'`` (``'CD19,MS4A1'``: weight 1 each).

    Returns
    -------
    dict of str to float
        Genes in the order given, with finite weights.

    Raises
    ------
    InputDataError
        A missing file, a table of other than two columns, a weight that is not a finite number,
        a gene named twice, no genes, or every weight 0.
    """
    if isinstance(signature, Mapping):
        pairs = [(str(gene), weight) for gene, weight in signature.items()]
    elif isinstance(signature, pd.DataFrame):
        if signature.shape[1] != 2:
            message = f"a signature table has two columns, gene and weight; this one has {signature.shape[1]}"
            raise InputDataError(message)
        pairs = list(zip(signature.iloc[:, 0].astype(str), signature.iloc[:, 1], strict=True))
    elif isinstance(signature, pd.Series):
        pairs = list(zip(signature.index.astype(str), signature.to_numpy(), strict=True))
    elif isinstance(signature, Path) or (isinstance(signature, str) and _is_file_name(signature)):
        pairs = _signature_file(Path(signature))
    elif isinstance(signature, str):
        pairs = _signature_text(signature)
    else:
        pairs = [(str(gene), 1.0) for gene in signature]
    return _checked(pairs)


def parse_signature(text: str) -> dict[str, float]:
    """A gene signature written as text, never read from a file: ``'CD19:1,MS4A1:1'``.

    Parameters
    ----------
    text : str
        Genes separated by commas, semicolons or blanks, each with ``:weight`` or alone (weight 1).

    Returns
    -------
    dict of str to float
        Genes in the order given, with finite weights.

    Raises
    ------
    InputDataError
        As :func:`read_signature`.
    """
    return _checked(_signature_text(text))


def _checked(pairs: list[tuple[str, Any]]) -> dict[str, float]:
    """(gene, weight) pairs as gene -> weight, refused when empty, all 0, a gene twice or a weight not a finite number."""
    weights: dict[str, float] = {}
    for gene, value in pairs:
        name = gene.strip()
        if not name:
            continue
        if name in weights:
            raise InputDataError(f"the signature names {name} twice; name each gene once")
        weights[name] = _weight(name, value)
    if not weights:
        message = f"the signature names no genes; give genes with weights, as {SIGNATURE_EXAMPLE} or a file of gene and weight columns"
        raise InputDataError(message)
    if not any(weights.values()):
        raise InputDataError("every weight of the signature is 0; give the genes that mark the cells a weight above 0")
    return weights


def signature_vector(embedder: Any, weights: Mapping[str, float], *,
                     species: str = "auto") -> tuple[np.ndarray, dict[str, float], list[str]]:
    """The cell vector of a gene signature: the atlas's embedder applied to one pseudo-cell.

    A single cell is centred on the reference's centring vector ``m`` (``embedder.mean``; fewer
    than :data:`~screader_db.cell_embedding.MIN_CELLS_SELF_CENTRE` cells cannot centre themselves),
    and the linear methods embed ``((x - m) * w) @ P``, scaled to unit length. A pseudo-cell of
    the weights alone (``x = weights``) is dominated by ``-m``, "none of the other genes", the
    same for every signature (on pbmc3k, a B-cell signature found 3 B cells among its nearest 50).
    So the pseudo-cell is the reference's centre with the weights added, ``x = m + weights``
    (log1p counts per 10,000 units): centred, it is the signature alone, and its vector does not
    change when every weight is scaled by the same factor. The learned methods (``hybrid``,
    ``adaptor``) do not centre: they read the pseudo-cell's most expressed genes, so there the
    weights' size against the centre matters.

    Parameters
    ----------
    embedder : CellEmbedder
        The atlas's fitted embedder.
    weights : mapping of str to float
        Genes (symbols, aliases, Ensembl ids or mouse symbols) and their weights; negative
        weights lower a gene below the centre.
    species : str
        How the names are read (:meth:`~screader_db.genes.GeneResolver.map`): ``human``,
        ``mouse`` or ``auto``.

    Returns
    -------
    vector : numpy.ndarray
        float32, shape (1, ``embedder.dim``), unit length.
    used : dict of str to float
        The atlas genes used, with their weights.
    missing : list of str
        The signature's genes that are not atlas genes, as given.

    Raises
    ------
    GeneOverlapError
        None of the genes is an atlas gene.
    InputDataError
        Two names are one atlas gene, or the atlas genes found all have weight 0.
    """
    import scipy.sparse as sp

    from screader_db.genes import default_resolver

    names = list(weights)
    symbols = default_resolver().map(names, species=species).symbols
    position = {gene: i for i, gene in enumerate(embedder.genes)}
    used: dict[str, float] = {}
    given: dict[str, str] = {}
    missing: list[str] = []
    for name, symbol in zip(names, symbols, strict=True):
        if symbol not in position:
            missing.append(name)
            continue
        if symbol in used:
            raise InputDataError(f"the signature names {symbol} twice (as {given[symbol]} and {name}); name each gene once")
        used[symbol], given[symbol] = float(weights[name]), name
    if not used:
        shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
        message = (f"none of the signature's {len(names)} genes ({shown}) is among the {len(position):,} genes the atlas "
                   "embeds cells over. List them with `screader-db sql \"SELECT gene FROM genes\"`")
        raise GeneOverlapError(message)
    if not any(used.values()):
        message = (f"the signature's genes that the atlas has ({', '.join(used)}) all have weight 0; give the genes "
                   "that mark the cells a weight above 0")
        raise InputDataError(message)
    mean = np.asarray(embedder.mean, dtype=np.float32)
    cell = mean.copy()
    for symbol, weight in used.items():
        cell[position[symbol]] += weight
    vector = embedder.transform(sp.csr_matrix(cell[None, :]), mean=mean)
    return vector, used, missing
